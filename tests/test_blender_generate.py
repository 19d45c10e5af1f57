"""Generate (Latent-NeRF) from the real add-on in real Blender (the ``bpy`` module) against a real backend process.

Uses the extension install, the ``scene``/``connected`` fixtures and the helpers of ``test_blender_addon.py``.
Blender in background mode runs no timers, so the tests pump ``session.process_events()`` themselves.

Sketch: a Blender blockout of two overlapping primitives (a cube and a cylinder poking out of its top, joined into
one object: self-intersecting, not watertight as a whole), moved off the origin and scaled non-uniformly. Jobs use the
backend's ``tiny-random`` model with few iterations and small grids.
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest

import test_blender_addon as base
from test_blender_addon import fetch_result, loop_uvs, make_active, world_vertices

addon, scene, connected = base.addon, base.scene, base.connected  # the same fixtures (extension install, backend)

pytestmark = [
    pytest.mark.blender,
    pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs the bpy module (Blender as a module)"),
]

PROMPT = "a gingerbread house, highly detailed"
PREVIEW_PREFIX = "LatentForge preview"
JOB_TIMEOUT_S = 300.0
BBOX_TOLERANCE = 0.15
TINY = {"model": "tiny-random", "seed": 7, "texture_size": 64}
FAST_PARAMS = {"render_size": 16, "num_samples": 16, "sketch_grid_resolution": 64, "sketch_init_iterations": 100,
               "sketch_init_points": 4096, "partial_resolution": 16, "preview_every": 1, "vae_preview_every": 0}
"""Backend settings the panel does not show, added to Generate's params for speed on 2 CPU cores (smaller renders
and grids, a shorter sketch initialisation). The shape settings (Sketch-Shape loss weight and sigma) stay the
backend's defaults: the placement check below is about what an artist gets."""
SKETCH_ITERATIONS = 50
SKETCH_MESH_RESOLUTION = 64
SKETCH_PARTIAL_EVERY = 20
TEXT_ITERATIONS = 3
NERF_BOUND = 1.0
FLAT_SKETCH_ERROR = "flat"


# ------------------------------------------------------------------------------------------------- helpers

def preview_objects(bpy) -> list:
    """Every object that is (or looks like) the temporary preview: by name prefix or by the add-on's marker."""
    return [o for o in bpy.data.objects if o.name.startswith(PREVIEW_PREFIX) or "latentforge_preview_job" in o]


def blockout(bpy, name: str = "House blockout"):
    """A cube (side 2) and a cylinder (r 0.6, height 1.6) sticking out of its top, joined into one object, then moved
    to (2.0, -1.5, 0.7) and scaled (0.5, 0.4, 0.3). Its world bounding box: x [1.5, 2.5], y [-1.9, -1.1],
    z [0.4, 1.24] (cylinder top at local z 1.8)."""
    bpy.ops.mesh.primitive_cube_add(size=2.0, location=(0.0, 0.0, 0.0))
    body = bpy.context.active_object
    bpy.ops.mesh.primitive_cylinder_add(vertices=16, radius=0.6, depth=1.6, location=(0.3, 0.0, 1.0))
    tower = bpy.context.active_object
    for o in bpy.context.view_layer.objects:
        o.select_set(False)
    body.select_set(True)
    tower.select_set(True)
    bpy.context.view_layer.objects.active = body
    assert bpy.ops.object.join() == {"FINISHED"}
    body.name = name
    body.location, body.scale = (2.0, -1.5, 0.7), (0.5, 0.4, 0.3)
    bpy.context.view_layer.update()
    return body


def bbox(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centre (3,), size (3,)) of the axis-aligned bounding box of (N,3) points."""
    lo, hi = v.min(axis=0), v.max(axis=0)
    return (lo + hi) / 2.0, hi - lo


def set_generate(addon, sketch_mode: str, iterations: int, mesh_resolution: int = 32, partial_every: int = 0,
                 prompt: str = PROMPT, sketch_object=None) -> None:
    s = addon.settings
    s.prompt, s.model, s.seed, s.texture_size = prompt, TINY["model"], TINY["seed"], TINY["texture_size"]
    s.iterations, s.mesh_resolution, s.partial_every = iterations, mesh_resolution, partial_every
    s.sketch_mode, s.sketch_object, s.guidance_scale = sketch_mode, sketch_object, 100.0
    addon.state.last_error = ""


def pump_counting_previews(addon, until, what: str, timeout_s: float = JOB_TIMEOUT_S) -> int:
    """Pump like the timer until ``until()``; assert that at most one preview object exists after every batch of
    events. Returns the number of batches after which a preview object existed."""
    bpy = addon.bpy
    seen = 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        addon.session.process_events()
        previews = preview_objects(bpy)
        assert len(previews) <= 1, [o.name for o in previews]
        seen += bool(previews)
        if until():
            return seen
        time.sleep(0.02)
    log = "\n".join(f"{lvl}: {text}" for lvl, text in list(addon.session.log)[-20:])
    pytest.fail(f"timed out waiting for {what}; stage={addon.state.stage!r} error={addon.state.last_error!r}\n{log}")


def generated_objects(bpy) -> list:
    return [o for o in bpy.data.objects if o.get("latentforge_pipeline") == "latent_nerf"]


def wait_generated(addon, n_before: int, what: str) -> tuple:
    """Pump until a new latent_nerf object exists and the job is done; returns (object, preview batches seen)."""
    bpy = addon.bpy

    def done():
        assert not addon.state.stage.startswith("failed"), addon.state.last_error
        return len(generated_objects(bpy)) > n_before and addon.state.stage == "done"

    seen = pump_counting_previews(addon, done, what)
    new = [o for o in generated_objects(bpy)][n_before:]
    assert len(new) == 1, [o.name for o in new]
    return new[0], seen


def check_generated(obj, prompt: str, sketch: str, iterations: int, job_id: str | None = None) -> np.ndarray:
    """The object is a generated result: identity transform, triangles, UV map in [0,1] with the texture material,
    colour attribute, custom properties. Returns its world vertices."""
    assert obj.type == "MESH"
    np.testing.assert_allclose(np.array(obj.matrix_world), np.eye(4), atol=0)
    mesh = obj.data
    assert len(mesh.vertices) > 8 and len(mesh.polygons) > 8
    assert all(len(p.vertices) == 3 for p in mesh.polygons[:50])
    uv = loop_uvs(obj, "LatentForge")
    assert np.isfinite(uv).all() and uv.min() >= -1e-4 and uv.max() <= 1 + 1e-4
    assert np.unique(uv.round(4), axis=0).shape[0] > 10, "UVs collapsed"
    mat = obj.material_slots[0].material
    tex = [n for n in mat.node_tree.nodes if n.type == "TEX_IMAGE"]
    assert len(tex) == 1 and tuple(tex[0].image.size) == (TINY["texture_size"],) * 2
    links = {(lk.from_node.type, lk.to_node.type, lk.to_socket.name) for lk in mat.node_tree.links}
    assert ("TEX_IMAGE", "BSDF_PRINCIPLED", "Base Color") in links and ("UVMAP", "TEX_IMAGE", "Vector") in links
    color = mesh.color_attributes.get("LatentForge Color")
    assert color is not None and color.domain == "POINT" and len(color.data) == len(mesh.vertices)
    assert obj["latentforge_prompt"] == prompt
    assert obj["latentforge_seed"] == TINY["seed"]
    assert obj["latentforge_iterations"] == iterations
    assert obj["latentforge_model"] == TINY["model"]
    assert obj["latentforge_pipeline"] == "latent_nerf"
    assert obj["latentforge_sketch"] == sketch
    if job_id is not None:
        assert obj["latentforge_job_id"] == job_id
    return world_vertices(obj)


class LayoutRecorder:
    """Stands in for ``UILayout`` when calling a panel's ``draw``: records every call, checks that drawn properties
    and operators exist."""

    def __init__(self, bpy, calls: list):
        self.__dict__.update(_bpy=bpy, _calls=calls)

    def __setattr__(self, name, value):  # scale_y, enabled, alert
        self._calls.append(("set", name, value))

    def __getattr__(self, name):
        def call(*args, **kw):
            if name == "prop":
                data, prop = args[:2]
                if prop.startswith('["'):  # an ID property (a model setting made from the backend's description)
                    assert prop[2:-2] in data.keys(), prop
                else:
                    assert prop in data.bl_rna.properties, prop
            elif name == "operator":
                module, op = args[0].split(".")
                assert hasattr(self._bpy.types, f"{module.upper()}_OT_{op}"), args[0]
            self._calls.append((name, args, kw))
            return LayoutRecorder(self._bpy, self._calls)
        return call


def draw_panel(bpy, panel: str = "LATENTFORGE_PT_main") -> list:
    """Call a panel's ``draw`` with a :class:`LayoutRecorder`; returns the recorded calls."""
    calls: list = []

    class Panel:
        layout = LayoutRecorder(bpy, calls)

    getattr(bpy.types, panel).draw(Panel(), bpy.context)
    return calls


def panel_labels(calls) -> list[str]:
    return [kw.get("text", "") for name, _args, kw in calls if name == "label"]


class FakeClient:
    """Stands in for ``BackendClient`` so that ``process_events`` handles hand-made (wire-encoded) messages."""

    connected = True
    running = True
    host, port = "127.0.0.1", 0
    welcome = {"device": "fake", "server_version": "0"}

    def __init__(self, protocol):
        self.protocol = protocol
        self.events = []
        self.sent = []

    def push(self, msg_type: str, fields: dict, arrays: dict | None = None) -> None:
        """Queue a server message after a round trip through the real encoder/decoder."""
        frame = self.protocol.encode_message(msg_type, fields, arrays)
        self.events.append(self.protocol.decode_frame(frame, direction=self.protocol.SERVER_TO_CLIENT))

    def poll_events(self, max_events=None):
        out, self.events = self.events, []
        return out

    def send(self, msg_type, fields=None, arrays=None):
        self.sent.append((msg_type, dict(fields or {}), dict(arrays or {})))

    def close(self):
        pass


# --------------------------------------------------------------------------------------------------- tests

@pytest.fixture
def fast_params(scene):
    """Generate's params builder, extended with extra backend params (the operator itself runs unchanged)."""
    operators = scene.module("operators")
    original = operators.generate_params
    extra: dict = dict(FAST_PARAMS)
    mp = pytest.MonkeyPatch()
    mp.setattr(operators, "generate_params", lambda settings: {**original(settings), **extra})
    yield extra
    mp.undo()


def test_operator_panel_and_settings_are_registered(scene):
    addon, bpy = scene, scene.bpy
    assert hasattr(bpy.types, "LATENTFORGE_OT_generate")
    s = addon.settings
    assert (s.sketch_mode, s.sketch_object, s.mesh_resolution) == ("SELECTED", None, 256)
    assert [i.identifier for i in s.bl_rna.properties["sketch_mode"].enum_items] == ["SELECTED", "OBJECT", "NONE"]
    operators = addon.module("operators")
    s.prompt, s.model, s.iterations, s.mesh_resolution, s.texture_size = " a hut ", "", 10, 64, 128
    params = operators.generate_params(s)
    assert params["prompt"] == "a hut" and "model" not in params
    assert (params["iterations"], params["mesh_resolution"], params["texture_size"]) == (10, 64, 128)

    # Which sketch Generate would use, per mode.
    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.active_object
    bpy.ops.object.light_add(type="POINT")
    light = bpy.context.active_object
    make_active(bpy, cube)
    s.sketch_mode = "SELECTED"
    assert operators.sketch_object(bpy.context, s) == cube
    cube.select_set(False)
    assert operators.sketch_object(bpy.context, s) is None  # nothing selected: text only
    make_active(bpy, light)
    with pytest.raises(ValueError, match="is a LIGHT, not a mesh"):
        operators.sketch_object(bpy.context, s)
    s.sketch_mode = "OBJECT"
    with pytest.raises(ValueError, match="no object is picked"):
        operators.sketch_object(bpy.context, s)
    s.sketch_object = cube
    assert operators.sketch_object(bpy.context, s) == cube  # whatever is selected
    s.sketch_mode = "NONE"
    assert operators.sketch_object(bpy.context, s) is None

    # The panel says which it is (and draws only existing properties and operators).
    drawn = {}
    for mode, picked, active in (("SELECTED", None, cube), ("SELECTED", None, None), ("OBJECT", cube, light),
                                 ("OBJECT", None, cube), ("NONE", cube, cube)):
        s.sketch_mode, s.sketch_object = mode, picked
        if active is not None:
            make_active(bpy, active)
        else:
            for o in bpy.data.objects:
                o.select_set(False)
        calls = draw_panel(bpy, "LATENTFORGE_PT_generate")
        assert ("operator", ("latentforge.generate",), {"icon": "PLAY"}) in calls
        assert any(name == "prop" and args[1] == "sketch_mode" and kw.get("expand") for name, args, kw in calls)
        assert any(name == "prop" and args[1] == "sketch_object" for name, args, kw in calls) == (mode == "OBJECT")
        drawn[(mode, picked is not None, active is not None)] = [t for t in panel_labels(calls)
                                                                if "Text only" in t or "Shaped" in t or "picked" in t]
    assert drawn == {("SELECTED", False, True): ["Shaped like 'Cube'"],
                     ("SELECTED", False, False): ["Text only (nothing selected)"],
                     ("OBJECT", True, True): ["Shaped like 'Cube'"],
                     ("OBJECT", False, True): [("Sketch Shape is 'Object' but no object is picked: pick a mesh, "
                                                "or choose 'None' for text only")],
                     ("NONE", True, True): ["Text only (no sketch)"]}
    s.sketch_object = None


def test_object_name_from_prompt(scene):
    name = scene.module("results.common").object_name_from_prompt
    assert name("  a gingerbread house,\n  highly detailed ") == "a gingerbread house, highly detailed"
    assert name("a/b\\c:d") == "a b c d"
    long = name("a castle on a hill with seven towers and a moat full of crocodiles")
    assert long == "a castle on a hill with seven towers and" and len(long) <= 40
    assert name(" \t ") == "LatentForge"
    assert len(name("ä" * 60).encode("utf-8")) <= 60


def test_partials_replace_one_preview_object_and_the_result_replaces_it(scene):
    """Hand-made partial/result messages (wire-encoded) through process_events: one preview object whose mesh
    datablock is updated in place; the result removes it and makes the new object from the exact arrays."""
    addon, bpy = scene, scene.bpy
    sess = addon.session
    fake = FakeClient(addon.module("core.protocol"))
    old_client, sess.connection.client = sess.connection.client, fake
    try:
        job_id = "f" * 32
        sess.jobs.remember_target(job_id, "latent_nerf", addon.module("results").GenerateTarget("Sketchy"))
        addon.state.active_job_id = job_id
        meshes_before = len(bpy.data.meshes)
        rng = np.random.default_rng(0)
        preview_mesh = None
        for step, n in ((10, 4), (20, 7), (30, 5)):
            v_pos = rng.normal(size=(n, 3)).astype(np.float32)
            t_pos_idx = np.array([[0, 1, 2], [0, 2, 3]] + ([[2, 4, 3]] if n > 4 else []), dtype=np.int32)
            v_color = rng.uniform(size=(n, 3)).astype(np.float32)
            fake.push("partial", {"job_id": job_id, "step": step},
                      {"mesh.v_pos": v_pos, "mesh.t_pos_idx": t_pos_idx, "mesh.v_color": v_color})
            sess.process_events()
            previews = preview_objects(bpy)
            assert len(previews) == 1
            obj = previews[0]
            if preview_mesh is None:
                preview_mesh = obj.data.name
            assert obj.data.name == preview_mesh  # same datablock, updated in place
            assert len(bpy.data.meshes) == meshes_before + 1
            np.testing.assert_allclose(world_vertices(obj), v_pos, atol=1e-6)
            assert len(obj.data.polygons) == len(t_pos_idx)
            col = np.empty(n * 4, dtype=np.float32)
            obj.data.color_attributes["LatentForge Color"].data.foreach_get("color", col)
            np.testing.assert_allclose(col.reshape(n, 4)[:, :3], v_color, atol=1e-6)
            assert obj.material_slots[0].material is not None
        # A partial of another job (not the active one) is not shown.
        fake.push("partial", {"job_id": "e" * 32, "step": 5},
                  {"mesh.v_pos": np.eye(3, dtype=np.float32), "mesh.t_pos_idx": np.array([[0, 1, 2]], np.int32)})
        sess.process_events()
        assert len(preview_objects(bpy)[0].data.vertices) == 5

        # The result: a new object named after the prompt, the exact arrays, and no preview any more.
        v_pos = (np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0.5, 0.5, 1]]) + [3, 2, 1]).astype(np.float32)
        t_pos_idx = np.array([[0, 2, 1], [0, 3, 2], [0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]], dtype=np.int32)
        uv = rng.uniform(size=(18, 2)).astype(np.float32)
        uv_idx = np.arange(18, dtype=np.int32).reshape(6, 3)
        v_color = rng.uniform(size=(5, 3)).astype(np.float32)
        texture = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
        metadata = {"pipeline": "latent_nerf", "prompt": "  a tiny\ttent ", "seed": 3, "iterations": 30,
                    "model": "tiny-random", "sketch": True}
        fake.push("result", {"job_id": job_id, "metadata": metadata},
                  {"mesh.v_pos": v_pos, "mesh.t_pos_idx": t_pos_idx, "mesh.uv": uv, "mesh.uv_idx": uv_idx,
                   "mesh.v_color": v_color, "texture": texture})
        sess.process_events()
        assert preview_objects(bpy) == []
        assert preview_mesh not in bpy.data.meshes
        obj = bpy.data.objects["a tiny tent"]
        np.testing.assert_allclose(world_vertices(obj), v_pos, atol=1e-6)
        corner_vert = np.empty(18, dtype=np.int32)
        obj.data.attributes[".corner_vert"].data.foreach_get("value", corner_vert)
        np.testing.assert_array_equal(corner_vert, t_pos_idx.reshape(-1))
        np.testing.assert_allclose(loop_uvs(obj, "LatentForge"), uv, atol=1e-6)
        col = np.empty(20, dtype=np.float32)
        obj.data.color_attributes["LatentForge Color"].data.foreach_get("color", col)
        np.testing.assert_allclose(col.reshape(5, 4), np.c_[v_color, np.ones(5)], atol=1e-6)
        image = next(n for n in obj.material_slots[0].material.node_tree.nodes if n.type == "TEX_IMAGE").image
        pixels = np.empty(64 * 64 * 4, dtype=np.float32)
        image.pixels.foreach_get(pixels)
        np.testing.assert_array_equal(np.rint(pixels.reshape(64, 64, 4)[::-1, :, :3] * 255).astype(np.uint8),
                                      texture)
        assert (obj["latentforge_prompt"], obj["latentforge_seed"], obj["latentforge_iterations"]) == \
            ("  a tiny\ttent ", 3, 30)
        assert (obj["latentforge_job_id"], obj["latentforge_sketch"]) == (job_id, "Sketchy")
        assert addon.state.stage == "done" and addon.state.active_job_id == ""

        # Cancel and error remove the preview of their job only.
        for i, (end_type, fields) in enumerate((("cancelled", {}), ("error", {"code": "job_failed",
                                                                              "message": "boom"}))):
            jid = f"{i}" * 32
            addon.state.active_job_id = jid
            fake.push("partial", {"job_id": jid, "step": 1},
                      {"mesh.v_pos": np.eye(3, dtype=np.float32), "mesh.t_pos_idx": np.array([[0, 1, 2]], np.int32)})
            sess.process_events()
            assert len(preview_objects(bpy)) == 1
            fake.push(end_type, {"job_id": "9" * 32, **fields})  # another job: the preview stays
            sess.process_events()
            assert len(preview_objects(bpy)) == 1
            fake.push(end_type, {"job_id": jid, **fields})
            sess.process_events()
            assert preview_objects(bpy) == []
    finally:
        sess.connection.client = old_client
        addon.state.active_job_id = ""


def test_generate_with_a_sketch_lands_on_the_blockout_and_imports_again(scene, connected, fast_params):
    addon, bpy = scene, scene.bpy
    sketch = blockout(bpy)
    v_sketch = world_vertices(sketch)
    matrix_sketch = np.array(sketch.matrix_world)
    c_sketch, size_sketch = bbox(v_sketch)
    np.testing.assert_allclose(c_sketch, [2.0, -1.5, 0.82], atol=1e-5)  # the blockout is where we put it
    np.testing.assert_allclose(size_sketch, [1.0, 0.8, 0.84], atol=1e-5)
    make_active(bpy, sketch)  # default sketch mode: the active selected mesh
    set_generate(addon, "SELECTED", SKETCH_ITERATIONS, SKETCH_MESH_RESOLUTION, SKETCH_PARTIAL_EVERY)
    n_objects = len(bpy.data.objects)
    assert bpy.ops.latentforge.generate() == {"FINISHED"}
    obj, preview_batches = wait_generated(addon, 0, "the generated mesh")

    assert preview_batches >= 1, "no intermediate mesh was shown"
    assert preview_objects(bpy) == [] and len(bpy.data.objects) == n_objects + 1
    assert obj.name == PROMPT  # 36 characters: kept whole
    v = check_generated(obj, PROMPT, sketch.name, SKETCH_ITERATIONS)
    job_id = obj["latentforge_job_id"]
    assert addon.state.jobs[job_id].status == "done" and addon.state.jobs[job_id].pipeline == "latent_nerf"

    # The object is the backend's result, fetched independently (world frame, no transform).
    result = fetch_result(connected, job_id)
    assert result.fields["metadata"]["sketch"] is True and result.fields["metadata"]["pipeline"] == "latent_nerf"
    np.testing.assert_allclose(v, result.arrays["mesh.v_pos"], atol=1e-5)

    # Where it stands: per axis, centre and size within 15 % of the sketch's size (asserted at the end).
    c, size = bbox(v)
    size_err = np.abs(size - size_sketch) / size_sketch
    centre_err = np.abs(c - c_sketch) / size_sketch
    print(f"sketch bbox centre {c_sketch.round(3)} size {size_sketch.round(3)}; result centre {c.round(3)} "
          f"size {size.round(3)}; relative errors: size {size_err.round(3)}, centre {centre_err.round(3)}")

    # The sketch itself is untouched.
    np.testing.assert_array_equal(np.array(sketch.matrix_world), matrix_sketch)
    np.testing.assert_array_equal(world_vertices(sketch), v_sketch)

    # Import from the job list, as after a restart of Blender (only the scene's saved job record is left): another
    # new object from the same result, still knowing its sketch.
    assert dict(bpy.context.scene["latentforge_jobs"][job_id]) == {"sketch": sketch.name, "pipeline": "latent_nerf"}
    addon.session.jobs.targets.clear()
    addon.session.jobs.pipelines.clear()
    addon.state.jobs.clear()
    assert bpy.ops.latentforge.refresh_jobs() == {"FINISHED"}
    addon.pump(lambda: job_id in addon.state.jobs, 30, "the job list")
    addon.state.jobs_index = list(addon.state.jobs.keys()).index(job_id)
    assert bpy.ops.latentforge.import_job() == {"FINISHED"}
    addon.pump(lambda: len(generated_objects(bpy)) == 2, 30, "the imported object")
    again = next(o for o in generated_objects(bpy) if o != obj)
    assert again.name.startswith(PROMPT) and again.name != obj.name
    np.testing.assert_allclose(check_generated(again, PROMPT, sketch.name, SKETCH_ITERATIONS, job_id), v, atol=1e-6)

    # Last (so that a miss does not hide the checks above): the placement.
    assert (size_err <= BBOX_TOLERANCE).all() and (centre_err <= BBOX_TOLERANCE).all(), \
        (f"result bbox centre {c.round(3)} size {size.round(3)} vs sketch centre {c_sketch.round(3)} "
         f"size {size_sketch.round(3)}: size errors {size_err.round(3)}, centre errors {centre_err.round(3)}")


def test_bad_sketches_are_clear_errors_then_text_only_generate_and_cancel(scene, connected, fast_params):
    addon, bpy = scene, scene.bpy
    sess = addon.session

    # A sketch without faces (vertices and edges only): refused before sending, shown in the panel state.
    mesh = bpy.data.meshes.new("Wire")
    mesh.from_pydata([(0, 0, 0), (1, 0, 0), (1, 1, 0)], [(0, 1), (1, 2)], [])
    wire = bpy.data.objects.new("Wire", mesh)
    bpy.context.collection.objects.link(wire)
    set_generate(addon, "OBJECT", 3, sketch_object=wire)
    with pytest.raises(RuntimeError, match="'Wire' has no faces"):
        bpy.ops.latentforge.generate()
    assert "'Wire' has no faces" in addon.state.last_error and addon.state.stage == "failed"
    assert not sess.jobs.pending

    # "Object" with nothing picked.
    set_generate(addon, "OBJECT", 3, sketch_object=None)
    with pytest.raises(RuntimeError, match="no object is picked"):
        bpy.ops.latentforge.generate()

    # A flat sketch (a plane: no volume) is sent; the backend refuses it with a clear error.
    bpy.ops.mesh.primitive_plane_add(size=2.0, location=(0.0, 0.0, 1.0))
    plane = bpy.context.active_object
    set_generate(addon, "SELECTED", 3)
    assert bpy.ops.latentforge.generate() == {"FINISHED"}
    addon.pump(lambda: addon.state.last_error, 60, "the flat-sketch error")
    assert addon.state.stage == "failed" and FLAT_SKETCH_ERROR in addon.state.last_error.lower(), \
        addon.state.last_error
    assert generated_objects(bpy) == [] and preview_objects(bpy) == []

    # Still usable: text only ("None", even though the plane is selected).
    make_active(bpy, plane)
    set_generate(addon, "NONE", TEXT_ITERATIONS)
    assert bpy.ops.latentforge.generate() == {"FINISHED"}
    obj, _ = wait_generated(addon, 0, "the text-only mesh")
    v = check_generated(obj, PROMPT, "", TEXT_ITERATIONS)
    assert obj.name == PROMPT and addon.state.last_error == ""
    assert np.abs(v).max() <= NERF_BOUND + 1e-3  # text only: the NeRF frame is the world frame around the origin

    # Cancel while the temporary preview object shows an intermediate mesh: the preview goes, nothing is added.
    fast_params["sketch_init_iterations"] = 5
    set_generate(addon, "SELECTED", 100_000, partial_every=1)
    blockout_obj = blockout(bpy, "Tower")
    make_active(bpy, blockout_obj)
    n_objects = len(bpy.data.objects)
    assert bpy.ops.latentforge.generate() == {"FINISHED"}
    pump_counting_previews(addon, lambda: len(preview_objects(bpy)) == 1 and addon.state.active_job_id, "a preview",
                           timeout_s=60)
    assert bpy.ops.latentforge.cancel_job() == {"FINISHED"}
    pump_counting_previews(addon, lambda: addon.state.stage == "cancelled", "the cancellation", timeout_s=30)
    assert preview_objects(bpy) == [] and len(bpy.data.objects) == n_objects
