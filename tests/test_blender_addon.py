"""The real add-on in real Blender (the ``bpy`` module) against a real backend process on loopback.

The extension zip is built with ``install.build_extension_zip`` and installed with
``bpy.ops.extensions.package_install_files`` into a throw-away extension repository; Blender's user folder
(``BLENDER_USER_RESOURCES``) and LatentForge's home (``LATENTFORGE_HOME``) point at temp folders, so nothing of the
user's setup is read or written. Blender in background mode runs no timers, so the tests pump
``session.process_events()`` themselves, as the timer would.

Meshes: Blender's Suzanne and a cube, and ``ant.ply`` from the pyvista wheel (read with zipfile, never imported).
Jobs use the backend's ``tiny-random`` model, 3 iterations, 64x64 textures.
"""

from __future__ import annotations

import importlib.util
import io
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT, start_backend

pytestmark = [
    pytest.mark.blender,
    pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs the bpy module (Blender as a module)"),
]

REPO_MODULE = "latentforge_tests"
ADDON_MODULE = f"bl_ext.{REPO_MODULE}.latentforge"
PROMPT = "a weathered bronze statue"
PYVISTA_VERSION = "0.49.1"
JOB_TIMEOUT_S = 90.0


# ------------------------------------------------------------------------------------------------- helpers

class Addon:
    """Handles to the installed extension's modules and state (looked up fresh: re-enabling may reload them)."""

    def __init__(self, bpy):
        self.bpy = bpy

    def module(self, name: str = ""):
        return sys.modules[ADDON_MODULE + ("." + name if name else "")]

    @property
    def session(self):
        return self.module("session").get_session()

    @property
    def prefs(self):
        return self.bpy.context.preferences.addons[ADDON_MODULE].preferences

    @property
    def state(self):
        return self.bpy.context.window_manager.latentforge

    @property
    def settings(self):
        return self.bpy.context.scene.latentforge

    def pump(self, until, timeout_s: float = JOB_TIMEOUT_S, what: str = "condition"):
        """Call ``process_events`` (what the timer does) until ``until()`` is true."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.session.process_events()
            if until():
                return
            time.sleep(0.02)
        log = "\n".join(f"{lvl}: {text}" for lvl, text in list(self.session.log)[-20:])
        pytest.fail(f"timed out after {timeout_s} s waiting for {what}; stage={self.state.stage!r} "
                    f"error={self.state.last_error!r}\nsession log:\n{log}")


def build_zip(out_dir: Path) -> Path:
    """The extension zip, from install.py when it has ``build_extension_zip``, else packed here."""
    sys.path.insert(0, str(REPO_ROOT))
    try:
        import install

        if hasattr(install, "build_extension_zip"):
            return Path(install.build_extension_zip(out_dir))
    except ImportError:
        pass
    out_dir.mkdir(parents=True, exist_ok=True)
    zip_path = out_dir / "latentforge.zip"
    addon_dir = REPO_ROOT / "blender_addon"
    with zipfile.ZipFile(zip_path, "w") as zf:
        for path in sorted(addon_dir.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                zf.write(path, path.relative_to(addon_dir).as_posix())
    return zip_path


def pyvista_example_bytes(name: str) -> bytes:
    """Bytes of ``pyvista/examples/<name>`` without importing pyvista: from an installed pyvista, else from a
    pyvista wheel ($LATENTFORGE_TEST_WHEELS, <repo>/.whl), else from ``pip download`` into <repo>/.whl.
    Skips the test when none works (no network)."""
    spec = importlib.util.find_spec("pyvista")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "examples" / name
        if path.is_file():
            return path.read_bytes()
    dirs = [Path(p) for p in os.environ.get("LATENTFORGE_TEST_WHEELS", "").split(os.pathsep) if p]
    dirs.append(REPO_ROOT / ".whl")
    wheels = [w for d in dirs if d.is_dir() for w in sorted(d.glob("pyvista-*.whl"))]
    if not wheels:
        cache = REPO_ROOT / ".whl"
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(cache),
                            f"pyvista=={PYVISTA_VERSION}"], check=True, timeout=120, capture_output=True)
        except (subprocess.SubprocessError, OSError) as e:
            pytest.skip(f"no pyvista wheel available ({e})")
        wheels = sorted(cache.glob("pyvista-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as zf:
        return zf.read(f"pyvista/examples/{name}")


def mesh_object_from_arrays(bpy, name: str, v_pos: np.ndarray, faces: np.ndarray):
    """A new object (identity transform) with triangle faces, built with foreach_set."""
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(v_pos))
    mesh.vertices.foreach_set("co", v_pos.astype(np.float32).reshape(-1))
    mesh.loops.add(faces.size)
    mesh.loops.foreach_set("vertex_index", faces.astype(np.int32).reshape(-1))
    mesh.polygons.add(len(faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    mesh.update(calc_edges=True)
    assert not mesh.validate(), "the test mesh is invalid"
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.collection.objects.link(obj)
    return obj


def ant_object(bpy, name: str = "Ant"):
    import trimesh

    tm = trimesh.load(io.BytesIO(pyvista_example_bytes("ant.ply")), file_type="ply", process=False)
    # The ant is ~33 units long: scale to ~1 m so it matches the backend's camera setup.
    return mesh_object_from_arrays(bpy, name, np.asarray(tm.vertices) / 30.0, np.asarray(tm.faces))


def make_active(bpy, obj):
    for o in bpy.context.view_layer.objects:
        o.select_set(False)
    obj.select_set(True)
    bpy.context.view_layer.objects.active = obj


def loop_uvs(obj, uv_map: str) -> np.ndarray:
    out = np.empty(len(obj.data.loops) * 2, dtype=np.float32)
    obj.data.uv_layers[uv_map].uv.foreach_get("vector", out)
    return out.reshape(-1, 2)


def world_vertices(obj) -> np.ndarray:
    co = np.empty(len(obj.data.vertices) * 3, dtype=np.float32)
    obj.data.vertices.foreach_get("co", co)
    m = np.array(obj.matrix_world)
    return co.reshape(-1, 3) @ m[:3, :3].T + m[:3, 3]


def start_job(addon, obj, uv_method: str = "SMART_PROJECT", model: str = "tiny-random", iterations: int = 3,
              prompt: str = PROMPT) -> None:
    settings = addon.settings
    settings.prompt, settings.model, settings.iterations = prompt, model, iterations
    settings.texture_size, settings.seed, settings.uv_method = 64, 11, uv_method
    make_active(addon.bpy, obj)
    addon.state.last_error = ""
    assert addon.bpy.ops.latentforge.texture_selected() == {"FINISHED"}


def texture_and_wait(addon, obj, **kw) -> str:
    """Run Texture Selected on ``obj`` and pump until the result is applied; returns the job id."""
    name = obj.name
    addon.session.log.clear()
    start_job(addon, obj, **kw)
    bpy = addon.bpy

    def applied():
        assert addon.state.stage != "failed", addon.state.last_error
        o = bpy.data.objects.get(name)
        return o is not None and "latentforge_job_id" in o and addon.state.stage == "done"

    addon.pump(applied, what=f"the texture on {name}")
    assert not [text for level, text in addon.session.log if level == "ERROR"]
    return bpy.data.objects[name]["latentforge_job_id"]


def fetch_result(server, job_id: str):
    """The job's result fetched independently of the add-on, with the repo's own client."""
    from blender_addon.core.client import BackendClient

    client = BackendClient(server.host, server.port, server.token, "pytest")
    client.start()
    try:
        deadline = time.monotonic() + 30
        requested = False
        while time.monotonic() < deadline:
            msg = client.wait_event(0.5)
            if msg is None:
                continue
            if msg.type == "client_connected" and not requested:
                client.get_result(job_id)
                requested = True
            elif msg.type == "result" and msg.fields["job_id"] == job_id:
                return msg
            elif msg.type in ("error", "client_error"):
                pytest.fail(f"get_result failed: {msg.fields}")
        pytest.fail("no result within 30 s")
    finally:
        client.close()


def check_textured(obj, uv_map: str, prompt: str = PROMPT, size: int = 64):
    """The object carries the result: UV map in [0,1], one image-texture material of ``size``², custom props."""
    assert obj.data.uv_layers.get(uv_map) is not None, [u.name for u in obj.data.uv_layers]
    uv = loop_uvs(obj, uv_map)
    assert np.isfinite(uv).all()
    assert uv.min() >= -1e-4 and uv.max() <= 1 + 1e-4, (uv.min(), uv.max())
    assert np.unique(uv.round(4), axis=0).shape[0] > 10, "UVs collapsed"
    mat = obj.material_slots[0].material
    assert mat is not None and all(slot.material == mat for slot in obj.material_slots)
    tex_nodes = [n for n in mat.node_tree.nodes if n.type == "TEX_IMAGE"]
    assert len(tex_nodes) == 1
    image = tex_nodes[0].image
    assert tuple(image.size) == (size, size)
    pixels = np.empty(size * size * 4, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    assert pixels.reshape(-1, 4)[:, :3].std() > 1e-3, "constant image"
    links = {(link.from_node.type, link.from_socket.name, link.to_node.type, link.to_socket.name)
             for link in mat.node_tree.links}
    assert ("TEX_IMAGE", "Color", "BSDF_PRINCIPLED", "Base Color") in links
    assert ("UVMAP", "UV", "TEX_IMAGE", "Vector") in links
    assert [n.uv_map for n in mat.node_tree.nodes if n.type == "UVMAP"] == [uv_map]
    assert image.packed_file is not None or Path(image.filepath_raw).name.endswith(".png")
    assert obj["latentforge_prompt"] == prompt
    assert obj["latentforge_seed"] == 11
    assert obj["latentforge_model"] == "tiny-random"
    assert obj["latentforge_pipeline"] == "latent_paint"
    return image, pixels


# ------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def addon(tmp_path_factory):
    root = tmp_path_factory.mktemp("blender")
    mp = pytest.MonkeyPatch()
    mp.setenv("LATENTFORGE_HOME", str(root / "latentforge_home"))
    if "bpy" not in sys.modules:  # Blender reads its user folder once, on import
        mp.setenv("BLENDER_USER_RESOURCES", str(root / "blender_user"))
    import bpy

    zip_path = build_zip(root / "dist")
    repos = bpy.context.preferences.extensions.repos
    repo = repos.new(name="LatentForge tests", module=REPO_MODULE, custom_directory=str(root / "repo"),
                     source="USER")
    result = bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo=REPO_MODULE,
                                                      enable_on_install=True)
    assert result == {"FINISHED"}
    handle = Addon(bpy)
    yield handle
    import addon_utils

    if ADDON_MODULE in bpy.context.preferences.addons:
        addon_utils.disable(ADDON_MODULE)
    repos.remove(repo)
    mp.undo()


@pytest.fixture
def scene(addon):
    """An empty scene and clean add-on state, whatever ran before (any module order): no objects (so no selection),
    the 3D cursor at the origin, ``scene.latentforge`` back to its defaults, the runtime job line and messages
    cleared."""
    bpy = addon.bpy
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    bpy.context.scene.cursor.location = (0.0, 0.0, 0.0)
    properties = addon.module("properties")
    properties.reset_settings(addon.settings)
    properties.reset_runtime(addon.state)
    yield addon


@pytest.fixture
def connected(scene, backend_server):
    """The add-on connected (Remote mode) to a fresh backend process."""
    addon = scene
    prefs = addon.prefs
    prefs.backend_mode = "REMOTE"
    prefs.host, prefs.port, prefs.token_file = backend_server.host, backend_server.port, str(backend_server.token_file)
    assert addon.bpy.ops.latentforge.connect() == {"FINISHED"}
    addon.pump(lambda: addon.state.connected, 30, "the connection")
    yield backend_server
    addon.session.connection.close_client()


# --------------------------------------------------------------------------------------------------- tests

def test_extension_registers_operators_panels_and_settings(scene):
    addon = scene
    bpy = addon.bpy
    for name in ("LATENTFORGE_OT_texture_selected", "LATENTFORGE_OT_cancel_job", "LATENTFORGE_OT_connect",
                 "LATENTFORGE_OT_refresh_jobs", "LATENTFORGE_OT_import_job", "LATENTFORGE_OT_start_backend",
                 "LATENTFORGE_PT_main", "LATENTFORGE_PT_preview", "LATENTFORGE_PT_jobs", "LATENTFORGE_UL_jobs"):
        assert hasattr(bpy.types, name), name
    panel = bpy.types.LATENTFORGE_PT_main
    assert (panel.bl_space_type, panel.bl_region_type, panel.bl_category) == ("VIEW_3D", "UI", "LatentForge")
    s = addon.settings
    assert (s.iterations, s.guidance_scale, s.texture_size, s.model, s.uv_method) == (5000, 100.0, 1024, "",
                                                                                        "SMART_PROJECT")
    from blender_addon.core import paths

    assert addon.prefs.token_file == str(paths.token_path())
    assert str(paths.token_path()).startswith(os.environ["LATENTFORGE_HOME"])
    assert bpy.app.timers.is_registered(addon.module("session")._timer)


def test_settings_follow_the_fields_table_and_the_connected_backends_ranges(scene):
    """The numeric settings are built from core/fields.py (whose ranges test_addon_fields.py checks against the
    backend); one Method choice and one sub-panel per task; a value the connected backend would refuse (its welcome's
    live ranges) is a red line in the panel and a clear error from the operator, and nothing is sent."""
    from test_blender_generate import draw_panel

    addon, bpy = scene, scene.bpy
    fields, tasks = addon.module("core.fields"), addon.module("core.tasks")
    rna = addon.settings.bl_rna.properties
    for setting in fields.SETTING_FIELDS:
        prop = rna[setting.prop]
        if setting.enum_values:
            assert {int(i.identifier) for i in prop.enum_items if i.identifier.isdigit()} == set(setting.enum_values)
            continue
        assert prop.default == pytest.approx(setting.default), setting.prop
        for name, rna_name in (("min", "hard_min"), ("max", "hard_max"), ("soft_min", "soft_min"),
                               ("soft_max", "soft_max")):
            if getattr(setting, name) is not None:
                assert getattr(prop, rna_name) == pytest.approx(getattr(setting, name)), (setting.prop, name)
    numeric = {p.identifier for p in rna if p.type in ("INT", "FLOAT") and p.identifier != "rna_type"}
    assert numeric - set(fields.SETTINGS_BY_PROP) == {"shape_spacing"}  # the only add-on-only number
    for task, methods in tasks.TASKS.items():
        prop = rna[tasks.method_property(task)]
        assert [i.identifier for i in prop.enum_items] == [m.identifier for m in methods]
        panel = getattr(bpy.types, f"LATENTFORGE_PT_{task}")
        assert panel.bl_parent_id == "LATENTFORGE_PT_main" and panel.poll(bpy.context)
        calls = draw_panel(bpy, f"LATENTFORGE_PT_{task}")
        assert calls[0] == ("prop", (addon.settings, tasks.method_property(task)), {})

    class Client:  # connected to a backend whose latent_paint takes textures up to 2048 only
        connected = running = True
        host, port = "127.0.0.1", 0
        welcome = {"device": "fake", "server_version": "0",
                   "pipelines": {"latent_paint": {"params": {"texture_size": {"low": 64, "high": 2048}}}}}
        sent: list = []

        def send(self, *args):
            self.sent.append(args)

        def poll_events(self, max_events=None):
            return []

        def close(self):
            pass

    sess = addon.session
    old_client, sess.connection.client = sess.connection.client, Client()
    try:
        bpy.ops.mesh.primitive_cube_add()
        addon.settings.prompt, addon.settings.texture_size = "a brick", 4096
        expected = ("Texture Size (texture_size = 4096) is outside the range 64–2048 that the backend's "
                    "latent_paint accepts")
        alerts = [kw["text"] for name, _a, kw in draw_panel(bpy, "LATENTFORGE_PT_texture")
                  if name == "label" and kw.get("icon") == "ERROR"]
        assert alerts == [expected]
        with pytest.raises(RuntimeError, match=re.escape(expected)):
            bpy.ops.latentforge.texture_selected()
        assert Client.sent == [] and not sess.jobs.pending
        addon.settings.texture_size = 2048
        assert not [kw for name, _a, kw in draw_panel(bpy, "LATENTFORGE_PT_texture")
                if name == "label" and kw.get("icon") == "ERROR"]
    finally:
        sess.connection.client = old_client


def test_evaluated_mesh_is_world_space_triangulated_with_modifiers(scene):
    addon = scene
    bpy = addon.bpy
    mesh_io = addon.module("mesh_io")
    bpy.ops.mesh.primitive_cube_add(size=2.0)  # corners at +-1
    cube = bpy.context.active_object
    cube.location, cube.rotation_euler, cube.scale = (1.0, 2.0, 3.0), (0.0, 0.0, math.pi / 2), (0.5, 0.5, 0.5)
    plain = mesh_io.evaluated_mesh_arrays(cube, bpy.context.evaluated_depsgraph_get(), "UVMap")
    assert plain.same_loops_as_base and plain.t_pos_idx.shape == (12, 3) and plain.uv.shape == (24, 2)

    mod = cube.modifiers.new("Array", "ARRAY")
    mod.count, mod.relative_offset_displace, mod.use_merge_vertices = 2, (1.0, 0.0, 0.0), False
    arrays = mesh_io.evaluated_mesh_arrays(cube, bpy.context.evaluated_depsgraph_get(), "UVMap")
    # Expected, built by hand: two cubes side by side along local x, then scale 0.5, rotate 90 deg about Z
    # ((x, y) -> (-y, x)), translate (1, 2, 3).
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    local = np.concatenate([corners, corners + [2.0, 0.0, 0.0]]) * 0.5
    expected = np.stack([-local[:, 1], local[:, 0], local[:, 2]], axis=1) + [1.0, 2.0, 3.0]
    assert arrays.v_pos.dtype == np.float32 and arrays.v_pos.shape == (16, 3)
    np.testing.assert_allclose(np.unique(arrays.v_pos.round(5), axis=0), np.unique(expected.round(5), axis=0),
                               atol=1e-5)
    assert arrays.t_pos_idx.shape == (24, 3) and arrays.t_pos_idx.dtype == np.int32
    tri = arrays.v_pos[arrays.t_pos_idx].astype(np.float64)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum()
    assert area == pytest.approx(2 * 6 * 1.0**2, rel=1e-5)  # two cubes of side 1 m after scaling
    assert not arrays.same_loops_as_base
    assert arrays.uv.shape == (arrays.n_loops, 2) and arrays.uv_idx.max() < arrays.n_loops
    assert set(arrays.wire_arrays()) == {"mesh.v_pos", "mesh.t_pos_idx", "mesh.uv", "mesh.uv_idx"}


def test_texture_suzanne_keeps_name_transform_and_uv_map(scene, connected):
    addon, bpy = scene, scene.bpy
    bpy.ops.mesh.primitive_monkey_add()
    suzanne = bpy.context.active_object
    suzanne.location, suzanne.rotation_euler, suzanne.scale = (1.0, -2.0, 0.5), (0.3, 0.0, 1.0), (0.7, 0.7, 0.7)
    bpy.context.view_layer.update()
    matrix_before = np.array(suzanne.matrix_world)
    uv_before = loop_uvs(suzanne, "UVMap")
    n_vertices = len(suzanne.data.vertices)

    job_id = texture_and_wait(addon, suzanne)

    suzanne = bpy.data.objects["Suzanne"]
    assert len(suzanne.data.vertices) == n_vertices and len(bpy.data.objects) == 1
    np.testing.assert_allclose(np.array(suzanne.matrix_world), matrix_before)
    image, pixels = check_textured(suzanne, "UVMap")
    np.testing.assert_array_equal(loop_uvs(suzanne, "UVMap"), uv_before)  # its own UVs were used, untouched
    assert suzanne["latentforge_job_id"] == job_id

    # The image is the backend's texture, flipped to Blender's bottom-up rows.
    result = fetch_result(connected, job_id)
    assert result.fields["metadata"]["uv_source"] == "input"
    texture = np.asarray(result.arrays["texture"])
    assert texture.shape[:2] == (64, 64)
    blender_top_down = np.rint(pixels.reshape(64, 64, 4)[::-1, :, :3] * 255).astype(np.uint8)
    np.testing.assert_array_equal(blender_top_down, texture[..., :3])
    np.testing.assert_allclose(result.arrays["mesh.v_pos"], world_vertices(suzanne), atol=1e-5)


def test_texture_ply_mesh_with_smart_project_and_with_xatlas(scene, connected):
    addon, bpy = scene, scene.bpy
    ant = ant_object(bpy, "Ant")
    assert len(ant.data.uv_layers) == 0
    texture_and_wait(addon, ant, uv_method="SMART_PROJECT")
    ant = bpy.data.objects["Ant"]
    check_textured(ant, "UVMap")  # made by Smart UV Project before sending

    ant2 = ant_object(bpy, "Ant xatlas")
    job_id = texture_and_wait(addon, ant2, uv_method="XATLAS")
    ant2 = bpy.data.objects["Ant xatlas"]
    check_textured(ant2, "LatentForge")
    result = fetch_result(connected, job_id)
    assert result.fields["metadata"]["uv_source"] == "xatlas"
    # A triangle mesh's loops are its triangle corners in order: the UV map must be the result's per-corner UVs.
    corner_uv = np.asarray(result.arrays["mesh.uv"])[np.asarray(result.arrays["mesh.uv_idx"]).reshape(-1)]
    np.testing.assert_allclose(loop_uvs(ant2, "LatentForge"), corner_uv, atol=1e-6)
    assert not [t for lvl, t in addon.session.log if lvl == "WARNING" and "UVs from xatlas" in t]


def test_xatlas_on_quads_reports_conflicting_corners(scene, connected):
    addon, bpy = scene, scene.bpy
    bpy.ops.mesh.primitive_monkey_add()
    suzanne = bpy.context.active_object
    suzanne.data.uv_layers.remove(suzanne.data.uv_layers["UVMap"])
    job_id = texture_and_wait(addon, suzanne, uv_method="XATLAS")
    check_textured(bpy.data.objects["Suzanne"], "LatentForge")

    # Independent count: loops that appear in several triangles with different UVs in the result.
    result = fetch_result(connected, job_id)
    mesh = bpy.data.objects["Suzanne"].data
    mesh.calc_loop_triangles()
    seen: dict[int, set] = {}
    uv, uv_idx = np.asarray(result.arrays["mesh.uv"]), np.asarray(result.arrays["mesh.uv_idx"])
    for f, tri in enumerate(mesh.loop_triangles):
        for k, loop in enumerate(tri.loops):
            seen.setdefault(loop, set()).add(tuple(np.round(uv[uv_idx[f, k]], 5)))
    expected = sum(len(v) > 1 for v in seen.values())
    warnings = [t for lvl, t in addon.session.log if lvl == "WARNING" and "UVs from xatlas" in t]
    if expected:
        assert warnings and warnings[-1].startswith(f"{expected} face corners")
    else:
        assert not warnings


def test_cancel_from_the_addon(scene, connected):
    addon, bpy = scene, scene.bpy
    bpy.ops.mesh.primitive_monkey_add()
    suzanne = bpy.context.active_object
    old_preview = bpy.data.images.get("LatentForge Preview")
    if old_preview is not None:
        bpy.data.images.remove(old_preview)
    start_job(addon, suzanne, iterations=100_000)
    addon.pump(lambda: addon.state.active_job_id and "/" in addon.state.stage
               and bpy.data.images.get("LatentForge Preview") is not None, 60, "the job to run and send a preview")
    job_id = addon.state.active_job_id
    assert 0.0 <= addon.state.progress < 0.5
    preview = bpy.data.images["LatentForge Preview"]
    w, h = preview.size
    assert w >= 8 and h >= 8
    pixels = np.empty(w * h * 4, dtype=np.float32)
    preview.pixels.foreach_get(pixels)
    assert np.isfinite(pixels).all() and pixels.reshape(-1, 4)[:, :3].std() > 0  # a picture, not a blank
    t0 = time.monotonic()
    assert bpy.ops.latentforge.cancel_job() == {"FINISHED"}
    addon.pump(lambda: addon.state.stage == "cancelled", 30, "the cancellation")
    assert time.monotonic() - t0 < 20
    assert addon.state.active_job_id == "" and addon.state.progress == 0.0
    assert addon.state.jobs[job_id].status == "cancelled"
    assert len(suzanne.material_slots) == 0 and "latentforge_job_id" not in suzanne


def test_backend_errors_show_up_and_the_addon_stays_usable(scene, connected):
    addon, bpy = scene, scene.bpy
    bpy.ops.mesh.primitive_monkey_add()
    suzanne = bpy.context.active_object

    addon.settings.prompt = "   "
    with pytest.raises(RuntimeError, match="prompt is empty"):  # the UI check
        bpy.ops.latentforge.texture_selected()

    # Past the UI check: the backend rejects the empty prompt.
    mesh_io = addon.module("mesh_io")
    arrays = mesh_io.evaluated_mesh_arrays(suzanne, bpy.context.evaluated_depsgraph_get(), "UVMap")
    addon.session.submit_job("latent_paint", {"prompt": "", "model": "tiny-random", "iterations": 3},
                             arrays.wire_arrays(), None)
    addon.pump(lambda: addon.state.last_error, 30, "the error")
    assert "prompt must not be empty" in addon.state.last_error and addon.state.stage == "failed"
    assert not addon.session.jobs.pending

    # An unknown model fails the job on the backend.
    start_job(addon, suzanne, model="no-such-org/no-such-model")
    addon.pump(lambda: addon.state.last_error, 60, "the error")
    assert "no-such-org/no-such-model" in addon.state.last_error and addon.state.stage == "failed"
    assert len(suzanne.material_slots) == 0
    # The failed job is reported twice (status "failed", then an error message); both must be in before the log
    # is checked clean for the next job.
    addon.pump(lambda: any(text.startswith("backend: ") and "no-such-org/no-such-model" in text
                           for level, text in addon.session.log if level == "ERROR"), 30, "the job's error message")

    # Still usable.
    texture_and_wait(addon, suzanne)
    check_textured(bpy.data.objects["Suzanne"], "UVMap")
    assert addon.state.last_error == ""


def test_job_list_and_import_onto_object_or_new_object(scene, connected):
    addon, bpy = scene, scene.bpy
    bpy.ops.mesh.primitive_monkey_add(location=(0.0, 0.0, 1.0))
    suzanne = bpy.context.active_object
    job_id = texture_and_wait(addon, suzanne)
    v_world = world_vertices(bpy.data.objects["Suzanne"])

    addon.state.jobs.clear()
    assert bpy.ops.latentforge.refresh_jobs() == {"FINISHED"}
    addon.pump(lambda: len(addon.state.jobs) > 0, 30, "the job list")
    assert addon.state.jobs[job_id].status == "done" and addon.state.jobs[job_id].prompt == PROMPT

    # As after a restart of Blender: only the job -> object mapping saved in the scene is left.
    addon.session.jobs.targets.clear()
    saved = bpy.context.scene["latentforge_jobs"][job_id]
    assert (saved["object"], saved["n_vertices"], saved["uv_map"]) == ("Suzanne", 507, "UVMap")

    # The object is gone: the import builds a new one from the result mesh (world space, identity transform).
    bpy.data.objects.remove(bpy.data.objects["Suzanne"])
    assert bpy.ops.latentforge.import_job(job_id=job_id) == {"FINISHED"}
    addon.pump(lambda: f"LatentForge {job_id[:8]}" in bpy.data.objects, 30, "the imported object")
    new = bpy.data.objects[f"LatentForge {job_id[:8]}"]
    assert len(new.data.polygons) == 968 and len(new.data.vertices) == 507
    np.testing.assert_allclose(world_vertices(new), v_world, atol=1e-5)
    check_textured(new, "LatentForge")

    # An object with the recorded name and vertex count gets the texture instead.
    bpy.ops.mesh.primitive_monkey_add()
    again = bpy.context.active_object
    assert again.name == "Suzanne"
    n_objects = len(bpy.data.objects)
    addon.state.jobs_index = 0
    assert bpy.ops.latentforge.import_job(job_id=job_id) == {"FINISHED"}
    addon.pump(lambda: "latentforge_job_id" in bpy.data.objects["Suzanne"], 30, "the import onto Suzanne")
    assert len(bpy.data.objects) == n_objects
    check_textured(bpy.data.objects["Suzanne"], "UVMap")


def test_unregister_leaves_nothing_behind_and_reregister_works(scene, connected):
    import addon_utils

    addon, bpy = scene, scene.bpy
    timer = addon.module("session")._timer
    assert any(t.name.startswith("latentforge-client") for t in threading.enumerate())

    addon_utils.disable(ADDON_MODULE)
    assert not [name for name in dir(bpy.types) if name.startswith("LATENTFORGE")]
    assert not bpy.app.timers.is_registered(timer)
    assert not hasattr(bpy.types.Scene, "latentforge") and not hasattr(bpy.types.WindowManager, "latentforge")
    deadline = time.monotonic() + 5
    while any(t.name.startswith("latentforge-") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("latentforge-")]

    addon_utils.enable(ADDON_MODULE, default_set=True)
    assert hasattr(bpy.types, "LATENTFORGE_OT_texture_selected") and hasattr(bpy.types, "LATENTFORGE_PT_main")
    assert bpy.app.timers.is_registered(addon.module("session")._timer)
    assert bpy.ops.latentforge.connect() == {"FINISHED"}
    addon.pump(lambda: addon.state.connected, 30, "the connection after re-enabling")


def test_local_mode_starts_the_backend_and_stops_it(scene, tmp_path):
    addon, bpy = scene, scene.bpy
    prefs = addon.prefs
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prefs.backend_mode, prefs.auto_start, prefs.host, prefs.port = "LOCAL", True, "127.0.0.1", port
    prefs.python_path, prefs.repo_root = sys.executable, str(REPO_ROOT)
    prefs.token_file, prefs.data_dir = str(tmp_path / "token"), str(tmp_path / "data")
    try:
        assert bpy.ops.latentforge.connect() == {"FINISHED"}
        backend = addon.session.connection.local_backend
        assert backend is not None and backend.process.poll() is None
        addon.pump(lambda: addon.state.connected, 60, "the local backend")
        assert addon.state.connection_status == f"Connected to 127.0.0.1:{port}"
        assert (tmp_path / "token").is_file()  # the add-on made the secret its backend needs
        assert (tmp_path / "data").is_dir()
        assert bpy.ops.latentforge.stop_backend() == {"FINISHED"}
        assert backend.process.poll() is not None and addon.session.connection.local_backend is None
        assert not addon.state.connected
    finally:
        addon.session.connection.stop_local_backend()
        prefs.backend_mode = "REMOTE"


def test_remote_over_tls_with_the_pinned_fingerprint_and_an_artist_token(scene, tmp_path):
    """The preferences' TLS Fingerprint next to the Token File: the add-on connects over TLS as the artist whose
    token it holds (shown in the backend line) and lists only the artist's jobs; the admin's list names each job's
    owner; a wrong fingerprint stops with a message naming both."""
    from backend.serving.certificates import make_certificate
    from backend.serving.identities import add_identity
    from backend.serving.store import JobStore

    addon, bpy = scene, scene.bpy
    fingerprint = make_certificate(tmp_path / "cert.pem", tmp_path / "key.pem", ["localhost"])
    token_file = tmp_path / "alice.token"
    token_file.write_text(add_identity(tmp_path / "tokens.json", "alice") + "\n")
    store = JobStore(tmp_path / "data")
    for job_id, owner in (("alicejob0001", "alice"), ("bobjob000001", "bob")):
        store.insert(job_id, "latent_paint", {"prompt": f"{owner}'s chair"}, {}, owner=owner)
        store.update(job_id, status="failed", error="seeded")
    store.close()
    server = start_backend(tmp_path / "data", tmp_path / "admin.token", extra_args=(
        "--tls", "--cert", str(tmp_path / "cert.pem"), "--key", str(tmp_path / "key.pem"),
        "--tokens-file", str(tmp_path / "tokens.json")))
    prefs = addon.prefs
    before = (prefs.backend_mode, prefs.host, prefs.port, prefs.token_file)
    try:
        prefs.backend_mode, prefs.host, prefs.port = "REMOTE", server.host, server.port
        prefs.token_file, prefs.tls_fingerprint = str(token_file), fingerprint
        assert bpy.ops.latentforge.connect() == {"FINISHED"}
        addon.pump(lambda: addon.state.connected, 30, "the TLS connection")
        assert addon.state.backend_info.endswith("alice (artist)")
        assert addon.session.connection.client.uses_tls
        addon.state.jobs.clear()
        assert bpy.ops.latentforge.refresh_jobs() == {"FINISHED"}
        addon.pump(lambda: len(addon.state.jobs) > 0, 30, "alice's job list")
        assert [row.job_id for row in addon.state.jobs] == ["alicejob0001"] and addon.state.jobs[0].owner == ""
        prefs.token_file = str(server.token_file)  # the admin
        assert bpy.ops.latentforge.connect() == {"FINISHED"}
        addon.pump(lambda: addon.state.connected, 30, "the admin's TLS connection")
        addon.state.jobs.clear()
        assert bpy.ops.latentforge.refresh_jobs() == {"FINISHED"}
        addon.pump(lambda: len(addon.state.jobs) > 1, 30, "the admin's job list")
        assert {row.job_id: row.owner for row in addon.state.jobs} == {"alicejob0001": "alice", "bobjob000001": "bob"}
        prefs.tls_fingerprint = "00" * 32
        assert bpy.ops.latentforge.connect() == {"FINISHED"}
        addon.pump(lambda: "does not match the pinned fingerprint" in addon.state.last_error, 30, "the refusal")
        assert not addon.state.connected and "00:00:00:00" in addon.state.last_error
    finally:
        addon.session.connection.close_client()
        prefs.tls_fingerprint = ""
        prefs.backend_mode, prefs.host, prefs.port, prefs.token_file = before
        server.stop()
