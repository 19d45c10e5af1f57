"""The methods added beside the first ones, in real Blender (the ``bpy`` module): CLIP-Mesh (Texture and Generate),
Dream Fields (Generate), LION (Shape: Generate Shape, Shapes from Blockout, Denoise Selected) and Refine Selected.

- Without a backend: results applied through the importer table (:func:`results.apply_result`, what the session calls
  for a ``result``), the panels and the operators against a stand-in client whose ``welcome`` describes the new
  pipelines (what is drawn, what is sent).
- With a real backend on loopback (at the end): each new pipeline end to end from its operator, the checks the issues
  ask for in real Blender (CLIP-Mesh's Texture mode keeps the user's mesh exactly on a rotated, scaled object with a
  modifier; Refine Selected lands on its object; LION's results import), and an Import Result after a reconnect.

Test objects: Blender's Suzanne (it has a UV map, "UVMap") moved, rotated, scaled non-uniformly, with a
Subdivision Surface modifier (level 1).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import test_blender_addon as base
from test_blender_addon import fetch_result, loop_uvs, make_active, world_vertices
from test_blender_generate import FakeClient, draw_panel, panel_labels, preview_objects

addon, scene, connected = base.addon, base.scene, base.connected

pytestmark = [
    pytest.mark.blender,
    pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs the bpy module (Blender as a module)"),
]

LOCATION, ROTATION, SCALE = (1.0, -2.0, 0.5), (0.3, -0.5, 1.1), (1.5, 0.8, 1.2)
PROMPT = "a carved wooden mask"


def _d(default, type_, low=None, high=None, choices=None, doc="x") -> dict:
    return {"default": default, "type": type_, "low": low, "high": high, "choices": choices, "doc": doc}


DESCRIPTIONS = {  # what a backend's welcome says of the new pipelines (the shapes of their fields)
    "clip_mesh": {"prompt": _d("", "str"), "model": _d("ViT-B-32", "str"), "seed": _d(99, "int", 0, 2**63 - 1),
                  "mode": _d("shape_texture", "str", choices=["shape_texture", "texture", "shape"]),
                  "iterations": _d(2000, "int", 1, 100_000), "use_prior": _d(True, "bool")},
    "dream_fields": {"prompt": _d("", "str"), "seed": _d(0, "int", 0, 2**63 - 1),
                     "iterations": _d(2000, "int", 1, 100_000)},
    "refine_mesh": {"prompt": _d("", "str"), "negative_prompt": _d("", "str"), "model": _d("sd", "str"),
                    "seed": _d(0, "int", 0, 2**63 - 1), "iterations": _d(5000, "int", 1, 100_000),
                    "dmtet_resolution": _d(64, "int", 8, 256)},
    "lion_generate": {"model": _d("auto", "str"), "seed": _d(0, "int", 0, 2**63 - 1),
                      "num_samples": _d(1, "int", 1, 16), "num_inference_steps": _d(1000, "int", 1, 1000),
                      "sampler": _d("ddpm", "str", choices=["ddpm", "ddim"]), "make_mesh": _d(True, "bool")},
    "lion_from_blockout": {"model": _d("auto", "str"), "seed": _d(0, "int", 0, 2**63 - 1),
                           "num_samples": _d(4, "int", 1, 16), "num_inference_steps": _d(1000, "int", 1, 1000),
                           "sampler": _d("ddpm", "str", choices=["ddpm", "ddim"]), "make_mesh": _d(True, "bool"),
                           "voxel_resolution": _d(32, "int", 8, 128), "tau": _d(0.4, "float", 0.0, 1.0)},
}
DESCRIPTIONS["lion_denoise"] = {k: v for k, v in DESCRIPTIONS["lion_from_blockout"].items() if k != "voxel_resolution"}
DESCRIPTIONS["lion_variations"] = dict(DESCRIPTIONS["lion_denoise"])
DESCRIPTIONS["lion_interpolate"] = {**DESCRIPTIONS["lion_generate"], "num_shapes": _d(3, "int", 1, 32)}


# ------------------------------------------------------------------------------------------------- helpers

def suzanne(bpy, name: str = "Mask", modifier: bool = True):
    """Suzanne (with its UV map "UVMap") moved, rotated, scaled non-uniformly, with a Subdivision Surface (level 1)."""
    bpy.ops.mesh.primitive_monkey_add(size=1.0)
    obj = bpy.context.active_object
    obj.name = name
    obj.location, obj.rotation_euler, obj.scale = LOCATION, ROTATION, SCALE
    if modifier:
        obj.modifiers.new("Subdivision", "SUBSURF").levels = 1
    bpy.context.view_layer.update()
    return obj


def mesh_state(obj) -> dict:
    """Everything of ``obj`` a texture must not change: base vertices, face corners, faces, every UV map, the active
    one, the transform, the modifiers."""
    mesh = obj.data
    co = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
    mesh.vertices.foreach_get("co", co)
    corners = np.empty(len(mesh.loops), dtype=np.int32)
    mesh.loops.foreach_get("vertex_index", corners)
    starts = np.empty(len(mesh.polygons), dtype=np.int32)
    mesh.polygons.foreach_get("loop_start", starts)
    return {"co": co, "corners": corners, "starts": starts,
            "uv_maps": {layer.name: loop_uvs(obj, layer.name) for layer in mesh.uv_layers},
            "active_uv": mesh.uv_layers.active.name, "matrix": np.array(obj.matrix_world),
            "modifiers": [(m.name, m.type) for m in obj.modifiers]}


def assert_same_state(obj, before: dict) -> None:
    after = mesh_state(obj)
    for key in ("co", "corners", "starts", "matrix"):
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    assert after["uv_maps"].keys() == before["uv_maps"].keys() and after["active_uv"] == before["active_uv"]
    for name, uv in before["uv_maps"].items():
        np.testing.assert_array_equal(after["uv_maps"][name], uv, err_msg=name)
    assert after["modifiers"] == before["modifiers"]


def normal_map_texture(h: int = 16, w: int = 24) -> np.ndarray:
    """A tangent-space normal map (H, W, 3) uint8 whose rows and columns differ (row 0 = top): a ramp in red (X)
    along the columns, in green (Y) down the rows, blue (Z) high."""
    out = np.empty((h, w, 3), dtype=np.uint8)
    out[..., 0] = np.linspace(64, 192, w, dtype=np.float32).round().astype(np.uint8)[None, :]
    out[..., 1] = np.linspace(200, 56, h, dtype=np.float32).round().astype(np.uint8)[:, None]
    out[..., 2] = 230
    return out


def image_rows_top_down(image) -> np.ndarray:
    """An image's pixels as (H, W, 4) float32, row 0 = top."""
    w, h = image.size
    px = np.empty(w * h * 4, dtype=np.float32)
    image.pixels.foreach_get(px)
    return px.reshape(h, w, 4)[::-1]


def normal_map_chain(material, uv_map: str):
    """Check the material's normal-map chain — UV Map → Image Texture (Non-Color) → Normal Map (tangent space, the
    mesh's UV map) → Principled BSDF Normal — and the base colour's Image Texture; returns the normal-map image."""
    nodes = material.node_tree.nodes
    bsdf = next(n for n in nodes if n.bl_idname == "ShaderNodeBsdfPrincipled")
    [link] = bsdf.inputs["Normal"].links
    nmap = link.from_node
    assert nmap.bl_idname == "ShaderNodeNormalMap" and link.from_socket.name == "Normal"
    assert nmap.space == "TANGENT" and nmap.uv_map == uv_map
    [link] = nmap.inputs["Color"].links
    tex = link.from_node
    assert tex.bl_idname == "ShaderNodeTexImage" and link.from_socket.name == "Color"
    assert tex.image.colorspace_settings.name == "Non-Color"
    [link] = tex.inputs["Vector"].links
    assert link.from_node.bl_idname == "ShaderNodeUVMap" and link.from_node.uv_map == uv_map
    [link] = bsdf.inputs["Base Color"].links
    assert link.from_node.bl_idname == "ShaderNodeTexImage" and link.from_node.image != tex.image
    assert link.from_node.image.colorspace_settings.name != "Non-Color"
    return tex.image


def fake_backend(addon):
    """A stand-in client whose welcome describes every pipeline of this backend (their real configs) and the new
    pipelines as :data:`DESCRIPTIONS` says; the connection shows it (which makes the model settings)."""
    from backend.params import describe_config
    from backend.pipelines import PIPELINES

    fake = FakeClient(addon.module("core.protocol"))
    pipelines = {name: {"params": describe_config(spec.config_class), "inputs": [], "optional_inputs": []}
                 for name, spec in PIPELINES.items()}
    pipelines.update({name: {"params": params, "inputs": [], "optional_inputs": []}
                      for name, params in DESCRIPTIONS.items()})
    fake.welcome = {"device": "fake", "server_version": "0", "pipelines": pipelines}
    return fake


@pytest.fixture
def fake(scene):
    addon = scene
    sess = addon.session
    client = fake_backend(addon)
    old, sess.connection.client = sess.connection.client, client
    sess.connection.show_connected("127.0.0.1", 0, client.welcome)
    yield client
    sess.connection.client = old
    sess.connection.show_connected("127.0.0.1", 0, {"device": "none", "server_version": "0"})
    for task in ("texture", "generate", "shape", "refine"):
        addon.settings.property_unset(f"{task}_method")


def drawn(calls) -> tuple[list, list]:
    """``(props drawn, operators drawn)`` of recorded panel calls."""
    return ([args[1] for name, args, _kw in calls if name == "prop"],
            [args[0] for name, args, _kw in calls if name == "operator"])


# --------------------------------------------------------------------------------------------------- tests

def test_clip_mesh_texture_result_keeps_the_mesh_and_wires_the_normal_map(scene):
    """The Texture-mode result goes onto the object through the importer table: the object's mesh, UV maps,
    transform and modifier are untouched, its material gets the texture and the normal map (tangent space, the UV
    map that was sent); it is found again from the scene's record (as after a restart)."""
    addon, bpy = scene, scene.bpy
    results, mesh_io = addon.module("results"), addon.module("mesh_io")
    obj = suzanne(bpy)
    before = mesh_state(obj)
    sent = mesh_io.evaluated_mesh_arrays(obj, bpy.context.evaluated_depsgraph_get(), "UVMap")
    assert len(sent.v_pos) > len(obj.data.vertices)  # the modifier's mesh was sent, in world space
    target = results.ClipMeshTarget("texture", obj.name, len(sent.v_pos), "UVMap", True, sent.tri_loops)
    texture = np.zeros((8, 8, 3), dtype=np.uint8)
    texture[:4] = (200, 40, 40)
    normal = normal_map_texture()
    arrays = {**sent.wire_arrays(), "texture": texture, "mesh.normal_map": normal}
    job_id = "c" * 32
    addon.session.jobs.remember_target(job_id, "clip_mesh", target)
    metadata = {"pipeline": "clip_mesh", "prompt": PROMPT, "seed": 3, "model": "tiny-random", "mode": "texture"}
    report = results.apply_result(bpy.context, job_id, "clip_mesh", arrays, metadata,
                                  addon.session.jobs.target_for(job_id, "clip_mesh"))
    assert report.obj == obj and not report.created_object and obj.visible_get()  # Texture mode hides nothing
    assert_same_state(obj, before)
    image = normal_map_chain(obj.material_slots[0].material, "UVMap")
    np.testing.assert_allclose(image_rows_top_down(image)[..., :3] * 255.0, normal, atol=0.51)  # row 0 = top
    assert (obj["latentforge_pipeline"], obj["latentforge_mode"], obj["latentforge_source"]) == \
        ("clip_mesh", "texture", obj.name)
    assert (obj["latentforge_prompt"], obj["latentforge_seed"], obj["latentforge_model"], obj["latentforge_job_id"]) \
        == (PROMPT, 3, "tiny-random", job_id)

    # as after a restart: only the scene's record is left (no loop map); the result goes onto the same object
    assert dict(bpy.context.scene["latentforge_jobs"][job_id]) == {
        "mode": "texture", "source": obj.name, "n_vertices": len(sent.v_pos), "uv_map": "UVMap",
        "hide_source": True, "pipeline": "clip_mesh"}
    addon.session.jobs.targets.clear()
    again = addon.session.jobs.target_for(job_id, "clip_mesh")
    assert again.tri_loops is None and again.mode == "texture"
    report = results.apply_result(bpy.context, job_id, "clip_mesh", arrays, metadata, again)
    assert report.obj == obj and not report.created_object
    assert_same_state(obj, before)
    normal_map_chain(obj.material_slots[0].material, "UVMap")
    # no record at all (a job from elsewhere): a new object with the result's mesh, its UVs and both maps
    report = results.apply_result(bpy.context, job_id, "clip_mesh", arrays, metadata, None)
    assert report.created_object and report.obj != obj
    normal_map_chain(report.obj.material_slots[0].material, mesh_io.UV_MAP_NAME)
    np.testing.assert_allclose(world_vertices(report.obj), sent.v_pos, atol=1e-6)


def test_shape_results_are_new_objects_on_the_source_which_is_hidden_or_kept(scene):
    """CLIP-Mesh's Shape modes and Refine make a new object where the backend put the mesh (identity transform);
    Original = Hide hides the source, Keep Visible leaves it; LION's blockout shapes start where the blockout
    stands and denoised shapes stay in place."""
    addon, bpy = scene, scene.bpy
    results, mesh_io = addon.module("results"), addon.module("mesh_io")
    obj = suzanne(bpy)
    sent = mesh_io.evaluated_mesh_arrays(obj, bpy.context.evaluated_depsgraph_get(), "UVMap")
    shaped = {**sent.wire_arrays(), "texture": np.full((8, 8, 3), 90, np.uint8),
              "mesh.normal_map": normal_map_texture()}
    shaped["mesh.v_pos"] = (sent.v_pos * 1.05).astype(np.float32)
    meta = {"prompt": PROMPT, "seed": 1, "model": "tiny-random"}

    report = results.apply_result(bpy.context, "1" * 32, "clip_mesh", shaped, meta,
                                  results.ClipMeshTarget("shape_texture", obj.name, hide_source=True))
    new = report.obj
    assert report.created_object and new.name == "Mask CLIP-Mesh" and not obj.visible_get() and obj.hide_render
    np.testing.assert_allclose(world_vertices(new), shaped["mesh.v_pos"], atol=1e-6)
    assert (new["latentforge_mode"], new["latentforge_source"]) == ("shape_texture", "Mask")
    normal_map_chain(new.material_slots[0].material, mesh_io.UV_MAP_NAME)
    obj.hide_set(False)
    obj.hide_render = False
    # shape only, without a texture: a plain material; Keep Visible leaves the source alone
    plain = {k: shaped[k] for k in ("mesh.v_pos", "mesh.t_pos_idx")}
    report = results.apply_result(bpy.context, "2" * 32, "clip_mesh", plain, meta,
                                  results.ClipMeshTarget("shape", obj.name, hide_source=False))
    assert obj.visible_get() and report.image is None and len(report.obj.data.uv_layers) == 0
    # CLIP-Mesh from a sphere (Generate): named after the prompt
    report = results.apply_result(bpy.context, "3" * 32, "clip_mesh", shaped, meta,
                                  results.ClipMeshTarget("shape_texture", ""))
    assert report.obj.name == PROMPT and report.obj["latentforge_source"] == ""

    refined = {k: v for k, v in shaped.items() if k != "mesh.normal_map"}
    report = results.apply_result(bpy.context, "4" * 32, "refine_mesh", refined, {**meta, "iterations": 9},
                                  results.RefineTarget(obj.name, True))
    assert report.obj.name == "Mask refined" and not obj.visible_get()
    assert (report.obj["latentforge_source"], report.obj["latentforge_iterations"]) == ("Mask", 9)
    assert report.obj["latentforge_pipeline"] == "refine_mesh"

    # LION: blockout shapes (two meshes, two point clouds) in a row from the blockout's left edge; denoise in place
    rng = np.random.default_rng(0)
    lo = sent.v_pos.min(axis=0)
    blockout = {"mesh.v_pos": sent.v_pos, "mesh.t_pos_idx": sent.t_pos_idx, "mesh_1.v_pos": sent.v_pos,
                "mesh_1.t_pos_idx": sent.t_pos_idx,
                "points.v_pos": (lo + rng.random((50, 3)) * (sent.v_pos.max(axis=0) - lo)).astype(np.float32),
                "points_1.v_pos": sent.v_pos[:60].copy()}
    target = results.BlockoutTarget(obj.name, tuple(obj.matrix_world.translation), float(lo[0]), 0.2)
    report = results.apply_result(bpy.context, "5" * 32, "lion_from_blockout", blockout, meta, target)
    objs = report.objects
    assert [o.name for o in objs] == ["Mask from blockout 1", "Mask from blockout 2", "Mask from blockout 1 points",
                                      "Mask from blockout 2 points"]
    first = world_vertices(objs[0])
    np.testing.assert_allclose(first, sent.v_pos, atol=1e-5)  # the first stands where the blockout stands
    for a, b in zip(objs[:-1], objs[1:]):
        a_hi = (world_vertices(a) if a.type == "MESH" else mesh_io.point_cloud_arrays(a)[0] + np.array(a.location))
        b_lo = (world_vertices(b) if b.type == "MESH" else mesh_io.point_cloud_arrays(b)[0] + np.array(b.location))
        assert b_lo[:, 0].min() - a_hi[:, 0].max() == pytest.approx(0.2, abs=1e-4)
    assert all(o["latentforge_source"] == "Mask" for o in objs)
    report = results.apply_result(bpy.context, "6" * 32, "lion_denoise", {"points.v_pos": blockout["points.v_pos"]},
                                  meta, results.DenoiseTarget(obj.name))
    [cloud] = report.objects
    assert cloud.name == "Mask denoised points"
    np.testing.assert_allclose(mesh_io.point_cloud_arrays(cloud)[0] + np.array(cloud.location),
                               blockout["points.v_pos"], atol=1e-5)


def test_the_panels_draw_each_method_and_the_operators_send_it(scene, fake):
    addon, bpy = scene, scene.bpy
    s = addon.settings
    obj = suzanne(bpy)
    make_active(bpy, obj)
    s.prompt, s.model = PROMPT, "tiny-random"

    # Texture: Latent-Paint draws the diffusion settings; CLIP-Mesh its mode and its own (described) settings
    props, ops = drawn(draw_panel(bpy, "LATENTFORGE_PT_texture"))
    assert "iterations" in props and "clip_mesh_mode" not in props and "latentforge.texture_selected" in ops
    s.texture_method = "clip_mesh"
    props, ops = drawn(draw_panel(bpy, "LATENTFORGE_PT_texture"))
    assert {"clip_mesh_mode", "uv_method", "model", '["clip_mesh.iterations"]', '["clip_mesh.use_prior"]',
            '["clip_mesh.seed"]'} <= set(props)
    assert "iterations" not in props and "seed" not in props and "original_mode" not in props
    assert '["clip_mesh.mode"]' not in props
    assert "latentforge.texture_selected" in ops
    s.clip_mesh_mode = "shape"
    assert "original_mode" in drawn(draw_panel(bpy, "LATENTFORGE_PT_texture"))[0]

    # Texture Selected with CLIP-Mesh: the evaluated mesh with its UVs, the mode, the settings that differ
    s.clip_mesh_mode = "texture"
    s["clip_mesh.use_prior"] = False
    assert bpy.ops.latentforge.texture_selected() == {"FINISHED"}, addon.state.last_error
    msg, sent, arrays = fake.sent[-1]
    assert (msg, sent["pipeline"]) == ("submit", "clip_mesh")
    assert sent["params"] == {"prompt": PROMPT, "model": "tiny-random", "use_prior": False, "mode": "texture"}
    assert {"mesh.v_pos", "mesh.t_pos_idx", "mesh.uv", "mesh.uv_idx"} <= set(arrays)
    request = addon.session.jobs.pending[sent["request_id"]]
    assert (request.target.mode, request.target.source, request.target.uv_map) == ("texture", "Mask", "UVMap")

    # Generate: CLIP-Mesh from a sphere, or From Selected; Dream Fields from the text
    s.generate_method = "clip_mesh"
    calls = draw_panel(bpy, "LATENTFORGE_PT_generate")
    props, ops = drawn(calls)
    assert "from_selected" in props and "sketch_mode" not in props and "Starts from a sphere" in panel_labels(calls)
    assert bpy.ops.latentforge.generate() == {"FINISHED"}, addon.state.last_error
    _msg, sent, arrays = fake.sent[-1]
    assert (sent["pipeline"], sent["params"]["mode"], arrays) == ("clip_mesh", "shape_texture", {})
    s.from_selected = True
    assert "Starts from 'Mask'" in panel_labels(draw_panel(bpy, "LATENTFORGE_PT_generate"))
    assert bpy.ops.latentforge.generate() == {"FINISHED"}, addon.state.last_error
    _msg, sent, arrays = fake.sent[-1]
    assert set(arrays) == {"mesh.v_pos", "mesh.t_pos_idx"} and sent["params"]["mode"] == "shape_texture"
    obj.select_set(False)
    n_sent = len(fake.sent)
    with pytest.raises(RuntimeError, match="From Selected: Select the mesh to start CLIP-Mesh from"):
        bpy.ops.latentforge.generate()
    assert len(fake.sent) == n_sent
    s.generate_method = "dream_fields"
    props, _ops = drawn(draw_panel(bpy, "LATENTFORGE_PT_generate"))
    assert '["dream_fields.iterations"]' in props and "from_selected" not in props
    assert bpy.ops.latentforge.generate() == {"FINISHED"}, addon.state.last_error
    assert fake.sent[-1][1]["pipeline"] == "dream_fields"
    assert fake.sent[-1][1]["params"] == {"prompt": PROMPT, "seed": 0}

    # Refine: the selected mesh, the Original choice, the backend's settings
    make_active(bpy, obj)
    calls = draw_panel(bpy, "LATENTFORGE_PT_refine")
    props, ops = drawn(calls)
    assert {"refine_method", "original_mode", '["refine_mesh.dmtet_resolution"]'} <= set(props)
    assert "latentforge.refine_selected" in ops and "Refines 'Mask'" in panel_labels(calls)
    s["refine_mesh.dmtet_resolution"] = 32
    s.negative_prompt = "blurry"
    assert bpy.ops.latentforge.refine_selected() == {"FINISHED"}, addon.state.last_error
    _msg, sent, arrays = fake.sent[-1]
    assert sent["pipeline"] == "refine_mesh" and set(arrays) == {"mesh.v_pos", "mesh.t_pos_idx"}
    assert sent["params"] == {"prompt": PROMPT, "negative_prompt": "blurry", "model": "tiny-random", "seed": 0,
                              "dmtet_resolution": 32}
    np.testing.assert_allclose(arrays["mesh.v_pos"],
                               addon.module("mesh_io").evaluated_mesh_arrays(
                                   obj, bpy.context.evaluated_depsgraph_get(), None).v_pos)
    request = addon.session.jobs.pending[sent["request_id"]]
    assert (request.target.source, request.target.hide_source) == ("Mask", True)
    s["refine_mesh.dmtet_resolution"] = 1000  # the backend's range: one clear error, nothing sent
    n_sent = len(fake.sent)
    with pytest.raises(RuntimeError, match="dmtet_resolution = 1000 is outside the range 8–256"):
        bpy.ops.latentforge.refine_selected()
    assert len(fake.sent) == n_sent

    # Shape with LION: no prompt, the roles it has, each box with its own settings; shared ones sent to both
    s.shape_method = "lion_generate"
    calls = draw_panel(bpy, "LATENTFORGE_PT_shape")
    props, ops = drawn(calls)
    assert "prompt" not in props and "LION generates without a prompt" in panel_labels(calls)
    for op in ("latentforge.generate_shape", "latentforge.shape_variations", "latentforge.shape_interpolate",
               "latentforge.shapes_from_blockout", "latentforge.denoise_selected"):
        assert op in ops, op
    assert '["lion_generate.num_inference_steps"]' in props and '["lion_generate.make_mesh"]' in props
    assert '["lion_from_blockout.voxel_resolution"]' in props and '["lion_from_blockout.tau"]' in props
    assert '["lion_from_blockout.num_inference_steps"]' not in props  # shared: drawn once, with Generate Shape's
    assert '["lion_from_blockout.num_samples"]' in props  # another default (4): its own
    assert "shape_strength" not in props and "shape_variation_prompt" not in props  # Michelangelo's only
    s["lion_generate.num_inference_steps"] = 25
    s["lion_from_blockout.tau"] = 0.25
    s.prompt, s.seed = "", 5
    assert bpy.ops.latentforge.generate_shape() == {"FINISHED"}, addon.state.last_error
    _msg, sent, _arrays = fake.sent[-1]
    assert sent["pipeline"] == "lion_generate" and "prompt" not in sent["params"]
    assert sent["params"]["num_inference_steps"] == 25 and sent["params"]["num_samples"] == 1
    assert addon.session.jobs.pending[sent["request_id"]].target.label == "LION"
    assert bpy.ops.latentforge.shapes_from_blockout() == {"FINISHED"}, addon.state.last_error
    _msg, sent, arrays = fake.sent[-1]
    assert sent["pipeline"] == "lion_from_blockout" and set(arrays) == {"mesh.v_pos", "mesh.t_pos_idx"}
    assert sent["params"] == {"seed": 5, "num_inference_steps": 25, "tau": 0.25}
    target = addon.session.jobs.pending[sent["request_id"]].target
    assert target.start_x == pytest.approx(float(arrays["mesh.v_pos"][:, 0].min()))
    assert bpy.ops.latentforge.denoise_selected() == {"FINISHED"}, addon.state.last_error
    assert fake.sent[-1][1]["pipeline"] == "lion_denoise"
    assert fake.sent[-1][1]["params"] == {"seed": 5, "num_inference_steps": 25}
    assert addon.session.jobs.pending[fake.sent[-1][1]["request_id"]].target.source == "Mask"
    s.shape_method = "shape_ldm"
    assert "latentforge.shapes_from_blockout" not in drawn(draw_panel(bpy, "LATENTFORGE_PT_shape"))[1]
    assert not preview_objects(bpy)


# ------------------------------------------------------------------------------------------ end to end (backend)

JOB_TIMEOUT_S = 240.0
BBOX_TOLERANCE = 0.10
REFINE_FAST = {"iterations": 3, "dmtet_resolution": 32, "render_size": 64, "texture_resolution": 64,
               "color_log2_hashmap_size": 10, "preview_every": 0, "partial_every": 0}
"""refine_mesh settings for 2 CPU cores (tiny-random SD): a few steps at the smallest render, a coarse tet grid."""
CLIP_MESH_FAST = {"iterations": 2, "batch_size": 2, "render_size": 32, "texture_size": 64, "use_prior": False,
                  "preview_every": 0, "partial_every": 0}
"""clip_mesh settings for 2 CPU cores (tiny-random CLIP): two steps of two small views, 64² maps."""
DREAM_FIELDS_FAST = {"iterations": 3, "render_size": 32, "num_samples": 32, "num_augmentations": 2,
                     "mesh_resolution": 48, "texture_size": 64, "preview_every": 0}


def needs_pipeline(name: str):
    """Skip while this checkout's backend has no pipeline ``name`` (its branch not merged yet)."""
    from backend.pipelines import PIPELINES

    return pytest.mark.skipif(name not in PIPELINES, reason=f"the backend has no {name} pipeline in this checkout")


def set_model_settings(addon, pipeline: str, values: dict) -> None:
    """Write model settings (``scene.latentforge["<pipeline>.<field>"]``, made by the welcome)."""
    s = addon.settings
    for field, value in values.items():
        key = f"{pipeline}.{field}"
        assert key in s.keys(), f"the welcome made no model setting {key}"
        s[key] = value


def run_and_wait(addon, operator, pipeline: str, n_objects: int | None, what: str) -> list:
    """Run ``operator()``, pump until the job is done and ``n_objects`` (None: at least one) new objects of
    ``pipeline`` exist; returns them (any order)."""
    bpy = addon.bpy
    before = {o.name for o in bpy.data.objects}
    addon.state.last_error = ""
    assert operator() == {"FINISHED"}, addon.state.last_error

    def new():
        return [o for o in bpy.data.objects if o.name not in before and o.get("latentforge_pipeline") == pipeline]

    def done():
        assert not addon.state.stage.startswith("failed"), addon.state.last_error
        return addon.state.stage == "done" and len(new()) >= (n_objects or 1)

    addon.pump(done, JOB_TIMEOUT_S, what)
    assert n_objects is None or len(new()) == n_objects, [o.name for o in new()]
    assert preview_objects(bpy) == []
    return new()


def reconnect_and_import(addon, job_id: str) -> None:
    """Drop the connection and everything held in memory about the job (as after a restart), reconnect, and Import
    Result from the refreshed job list."""
    bpy = addon.bpy
    addon.session.connection.close_client()
    addon.pump(lambda: not addon.state.connected, 10, "the disconnection")
    assert bpy.ops.latentforge.connect() == {"FINISHED"}
    addon.pump(lambda: addon.state.connected, 30, "the reconnection")
    addon.session.jobs.targets.clear()
    addon.session.jobs.pipelines.clear()
    addon.state.jobs.clear()
    assert bpy.ops.latentforge.refresh_jobs() == {"FINISHED"}
    addon.pump(lambda: job_id in addon.state.jobs, 30, "the job list")
    addon.state.jobs_index = list(addon.state.jobs.keys()).index(job_id)
    assert bpy.ops.latentforge.import_job() == {"FINISHED"}


@needs_pipeline("clip_mesh")
def test_clip_mesh_texture_mode_keeps_the_mesh_exactly_and_imports_again(scene, connected):
    """The issue's check in real Blender: Texture Selected with CLIP-Mesh in Texture mode on a moved, rotated,
    non-uniformly scaled Suzanne with a Subdivision Surface modifier. The backend hands back exactly the mesh that
    was sent (vertex positions, triangles, UVs per corner); the object's own mesh, UV maps, transform and modifier are
    untouched; its material carries the texture and the normal map. After a reconnect, Import Result puts both maps
    on it again."""
    addon, bpy = scene, scene.bpy
    mesh_io = addon.module("mesh_io")
    obj = suzanne(bpy)
    before = mesh_state(obj)
    sent = mesh_io.evaluated_mesh_arrays(obj, bpy.context.evaluated_depsgraph_get(), "UVMap")
    s = addon.settings
    s.texture_method, s.clip_mesh_mode, s.uv_method = "clip_mesh", "texture", "SMART_PROJECT"
    s.prompt, s.model = PROMPT, "tiny-random"
    set_model_settings(addon, "clip_mesh", CLIP_MESH_FAST)
    make_active(bpy, obj)
    addon.state.last_error = ""
    assert bpy.ops.latentforge.texture_selected() == {"FINISHED"}, addon.state.last_error

    def applied():
        assert not addon.state.stage.startswith("failed"), addon.state.last_error
        return "latentforge_job_id" in obj and addon.state.stage == "done"

    addon.pump(applied, JOB_TIMEOUT_S, "the CLIP-Mesh texture")
    job_id = obj["latentforge_job_id"]
    assert_same_state(obj, before)
    image = normal_map_chain(obj.material_slots[0].material, "UVMap")
    assert tuple(image.size) == (CLIP_MESH_FAST["texture_size"],) * 2
    assert (obj["latentforge_pipeline"], obj["latentforge_mode"], obj["latentforge_model"]) == \
        ("clip_mesh", "texture", "tiny-random")
    result = fetch_result(connected, job_id)
    np.testing.assert_array_equal(result.arrays["mesh.v_pos"], sent.v_pos)
    np.testing.assert_array_equal(result.arrays["mesh.t_pos_idx"], sent.t_pos_idx)
    np.testing.assert_array_equal(result.arrays["mesh.uv"][result.arrays["mesh.uv_idx"]], sent.uv[sent.uv_idx])
    np.testing.assert_allclose(image_rows_top_down(image)[..., :3] * 255.0, result.arrays["mesh.normal_map"],
                               atol=0.51)

    material = obj.material_slots[0].material
    reconnect_and_import(addon, job_id)
    addon.pump(lambda: obj.material_slots[0].material != material, 30, "the imported maps")
    assert_same_state(obj, before)
    again = normal_map_chain(obj.material_slots[0].material, "UVMap")
    np.testing.assert_allclose(image_rows_top_down(again), image_rows_top_down(image), atol=1e-6)
    assert not [o for o in bpy.data.objects if o.get("latentforge_pipeline") == "clip_mesh" and o != obj]


@needs_pipeline("clip_mesh")
@needs_pipeline("dream_fields")
def test_generate_with_dream_fields_then_clip_mesh_from_a_sphere_and_cancel(scene, connected):
    """Generate with Dream Fields makes a textured object named after the prompt. Generate with CLIP-Mesh from a
    sphere (From Selected off): the shape mode's intermediate meshes show as the one preview object; Cancel Job stops
    the job, removes the preview and leaves no result."""
    addon, bpy = scene, scene.bpy
    s = addon.settings
    s.generate_method, s.prompt, s.model = "dream_fields", "a red box", "tiny-random"
    set_model_settings(addon, "dream_fields", DREAM_FIELDS_FAST)
    [obj] = run_and_wait(addon, bpy.ops.latentforge.generate, "dream_fields", 1, "the Dream Fields mesh")
    assert obj.name == "a red box" and len(obj.data.polygons) > 0
    assert linked_image(obj.material_slots[0].material).size[0] == DREAM_FIELDS_FAST["texture_size"]
    assert (obj["latentforge_prompt"], obj["latentforge_model"]) == ("a red box", "tiny-random")

    s.generate_method, s.from_selected, s.prompt, s.model = "clip_mesh", False, PROMPT, "tiny-random"
    set_model_settings(addon, "clip_mesh", {**CLIP_MESH_FAST, "iterations": 10_000, "batch_size": 1,
                                            "sphere_subdivisions": 1, "partial_every": 1})
    addon.state.last_error = ""
    assert bpy.ops.latentforge.generate() == {"FINISHED"}, addon.state.last_error
    addon.pump(lambda: len(preview_objects(bpy)) == 1, JOB_TIMEOUT_S, "an intermediate CLIP-Mesh mesh")
    [preview] = preview_objects(bpy)
    assert len(preview.data.polygons) > 0
    job_id = addon.state.active_job_id
    assert job_id and bpy.ops.latentforge.cancel_job() == {"FINISHED"}
    addon.pump(lambda: addon.state.stage == "cancelled", 60, "the cancellation")
    assert preview_objects(bpy) == [] and addon.state.jobs[job_id].status == "cancelled"
    assert not [o for o in bpy.data.objects if o.get("latentforge_pipeline") == "clip_mesh"]


@needs_pipeline("refine_mesh")
def test_refine_selected_lands_on_a_rotated_scaled_object_with_a_modifier(scene, connected):
    addon, bpy = scene, scene.bpy
    mesh_io = addon.module("mesh_io")
    obj = suzanne(bpy)
    v_in = mesh_io.evaluated_mesh_arrays(obj, bpy.context.evaluated_depsgraph_get(), None).v_pos
    lo, hi = v_in.min(axis=0), v_in.max(axis=0)
    size = hi - lo
    make_active(bpy, obj)
    s = addon.settings
    s.prompt, s.model, s.seed, s.original_mode = PROMPT, "tiny-random", 2, "HIDE"
    set_model_settings(addon, "refine_mesh", REFINE_FAST)
    [new] = run_and_wait(addon, bpy.ops.latentforge.refine_selected, "refine_mesh", 1, "the refined mesh")
    assert new.name == "Mask refined" and not obj.visible_get()
    assert (new["latentforge_source"], new["latentforge_seed"], new["latentforge_model"]) == ("Mask", 2, "tiny-random")
    assert mesh_io.UV_MAP_NAME in new.data.uv_layers
    assert linked_image(new.material_slots[0].material).size[0] == REFINE_FAST["texture_resolution"]
    v = world_vertices(new)
    lo_err, hi_err = np.abs(v.min(axis=0) - lo) / size, np.abs(v.max(axis=0) - hi) / size
    print(f"input box {lo.round(3)} – {hi.round(3)}; refined {v.min(axis=0).round(3)} – {v.max(axis=0).round(3)}; "
          f"errors per axis (÷ size): low {lo_err.round(3)}, high {hi_err.round(3)}")
    assert (lo_err <= BBOX_TOLERANCE).all() and (hi_err <= BBOX_TOLERANCE).all()

    # after a reconnect, Import Result from the job list: another refined object on the same place, the source hidden
    job_id = new["latentforge_job_id"]
    obj.hide_set(False)
    before = {o.name for o in bpy.data.objects}
    reconnect_and_import(addon, job_id)
    addon.pump(lambda: any(o.name not in before for o in bpy.data.objects), 30, "the imported object")
    [again] = [o for o in bpy.data.objects if o.name not in before]
    assert again.name.startswith("Mask refined") and again["latentforge_job_id"] == job_id
    np.testing.assert_allclose(world_vertices(again), v, atol=1e-6)
    assert not obj.visible_get()


def linked_image(material):
    """The image feeding the Principled BSDF's Base Color."""
    bsdf = next(n for n in material.node_tree.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled")
    node = bsdf.inputs["Base Color"].links[0].from_node
    assert node.bl_idname == "ShaderNodeTexImage"
    return node.image


LION_FAST = {"num_inference_steps": 3, "grid_resolution": 24}
"""LION settings for 2 CPU cores (tiny-random): a few sampler steps, a coarse grid for the meshes (where they exist)."""


def set_lion(addon, **settings) -> None:
    """Shape panel on LION, tiny-random weights, :data:`LION_FAST` for every LION pipeline that has the field."""
    s = addon.settings
    s.shape_method, s.shape_model, s.seed, s.shape_spacing = "lion_generate", "tiny-random", 0, 0.3
    for key in list(s.keys()):
        pipeline, _, field = key.partition(".")
        if pipeline.startswith("lion_") and field in LION_FAST:
            s[key] = LION_FAST[field]
    for key, value in settings.items():
        setattr(s, key, value)


def world_box_of(obj, mesh_io) -> tuple[np.ndarray, np.ndarray]:
    if obj.type == "POINTCLOUD":
        v = mesh_io.point_cloud_arrays(obj)[0] + np.array(obj.location, dtype=np.float32)
    else:
        v = world_vertices(obj)
    return v.min(axis=0), v.max(axis=0)


@needs_pipeline("lion_from_blockout")
def test_lion_generate_and_shapes_from_blockout_import_their_results(scene, connected):
    addon, bpy = scene, scene.bpy
    mesh_io = addon.module("mesh_io")
    bpy.context.scene.cursor.location = (0.0, 4.0, 0.0)
    set_lion(addon, shape_num_samples=2)
    objs = run_and_wait(addon, bpy.ops.latentforge.generate_shape, "lion_generate", None, "LION shapes")
    assert {o["latentforge_sample_index"] for o in objs} == {0, 1}
    for o in objs:
        lo, hi = world_box_of(o, mesh_io)
        assert np.isfinite(lo).all() and (hi - lo).max() > 0
        assert o["latentforge_model"] == "tiny-random"
    points = [o for o in objs if o["latentforge_result_kind"] == "points"]
    assert all(o["latentforge_point_count"] > 0 for o in points)

    # Shapes from Blockout on the moved, rotated, scaled Suzanne: the first stands where it stands
    obj = suzanne(bpy, "Blockout", modifier=False)
    make_active(bpy, obj)
    v_in = mesh_io.evaluated_mesh_arrays(obj, bpy.context.evaluated_depsgraph_get(), None).v_pos
    lo_in, hi_in = v_in.min(axis=0), v_in.max(axis=0)
    shapes = run_and_wait(addon, bpy.ops.latentforge.shapes_from_blockout, "lion_from_blockout", None,
                          "LION shapes from the blockout")
    shapes.sort(key=lambda o: (o["latentforge_result_kind"] != "mesh", o["latentforge_sample_index"]))
    assert shapes and all(o["latentforge_source"] == "Blockout" for o in shapes)
    lo, hi = world_box_of(shapes[0], mesh_io)
    assert lo[0] == pytest.approx(lo_in[0], abs=1e-4)  # its left edge on the blockout's
    centre, centre_in, size_in = (lo + hi) / 2, (lo_in + hi_in) / 2, hi_in - lo_in
    assert (np.abs(centre - centre_in)[1:] <= 0.5 * size_in[1:]).all(), (centre, lo_in, hi_in)
    assert obj.visible_get()  # the blockout is left alone
