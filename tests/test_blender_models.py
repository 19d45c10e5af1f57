"""The Shape panel's model choice (Michelangelo | Shap-E | Point-E) and what their results become in real Blender
(the ``bpy`` module): point clouds as point-cloud objects with a ``Col`` colour attribute and a material reading it,
meshes with vertex colours as a colour attribute wired into their material, all in a row at the 3D cursor; the panel
draws and the operator sends only the settings the backend describes for the chosen model.

Hand-made (wire-encoded) messages go through ``process_events`` with a stand-in client (as in
``test_blender_shapes.py``), so these tests need no model; the end-to-end runs against a real backend are at the end.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import test_blender_addon as base
from test_blender_addon import world_vertices
from test_blender_generate import FakeClient, draw_panel, preview_objects

addon, scene, connected = base.addon, base.scene, base.connected

pytestmark = [
    pytest.mark.blender,
    pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs the bpy module (Blender as a module)"),
]

GAP = 0.3
EPS = 1e-4
CURSOR = (1.0, -2.0, 0.5)
MODEL_DESCRIPTION = {  # a backend's description of a model with settings of its own (the shapes of Point-E's)
    "prompt": {"default": "", "type": "str", "low": None, "high": None, "choices": None, "doc": "what"},
    "model": {"default": "auto", "type": "str", "low": None, "high": None, "choices": None, "doc": "weights"},
    "seed": {"default": 0, "type": "int", "low": 0, "high": 2**63 - 1, "choices": None, "doc": "seed"},
    "num_samples": {"default": 1, "type": "int", "low": 1, "high": 16, "choices": None, "doc": "samples"},
    "upsample": {"default": True, "type": "bool", "low": None, "high": None, "choices": None, "doc": "Upsample it"},
    "upsample_steps": {"default": 64, "type": "int", "low": 1, "high": 1000, "choices": None, "doc": "steps"},
    "sampler": {"default": "heun", "type": "str", "low": None, "high": None, "choices": ["heun", "euler"],
                "doc": "which sampler"},
}


def cloud_arrays(rng, sizes, colors=True) -> dict:
    out = {}
    for i, n in enumerate(sizes):
        group = "points" if i == 0 else f"points_{i}"
        out[f"{group}.v_pos"] = (rng.random((n, 3)) * (i + 1) - (i + 1) / 2).astype(np.float32)
        if colors:
            out[f"{group}.v_color"] = rng.random((n, 3)).astype(np.float32)
    return out


def coloured_meshes(count: int) -> dict:
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32) - 0.5
    t = np.array([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]], dtype=np.int32)
    out = {}
    for i in range(count):
        group = "mesh" if i == 0 else f"mesh_{i}"
        out[f"{group}.v_pos"], out[f"{group}.t_pos_idx"] = v, t
        out[f"{group}.v_color"] = np.linspace(0, 1, 12, dtype=np.float32).reshape(4, 3)[:, [i % 3, 1, 2]]
    return out


def objects_of(bpy, job_id: str) -> list:
    """The job's objects in result order: meshes, then point clouds, each by sample index."""
    objs = [o for o in bpy.data.objects if o.get("latentforge_job_id") == job_id]
    return sorted(objs, key=lambda o: (o["latentforge_result_kind"] != "mesh", o["latentforge_sample_index"]))


def world_box(obj) -> tuple[np.ndarray, np.ndarray]:
    if obj.type == "POINTCLOUD":
        n = len(obj.data.points)
        co = np.empty(n * 3, dtype=np.float32)
        obj.data.attributes["position"].data.foreach_get("vector", co)
        v = co.reshape(n, 3) + np.array(obj.location, dtype=np.float32)
    else:
        v = world_vertices(obj)
    return v.min(axis=0), v.max(axis=0)


def linked_from(material, socket: str = "Base Color"):
    """The node feeding the Principled BSDF's ``socket`` in ``material``."""
    bsdf = next(n for n in material.node_tree.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled")
    links = bsdf.inputs[socket].links
    assert links, f"{material.name}: nothing feeds {socket}"
    return links[0].from_node


def assert_in_a_row_at(objs, centre, gap) -> None:
    """Boxes side by side along +X, ``gap`` apart, the row centred on ``centre`` in X (Y, Z: the model frame moved
    to the cursor, so each object's origin is at the cursor's Y and Z)."""
    boxes = [world_box(o) for o in objs]
    for (lo_a, hi_a), (lo_b, hi_b) in zip(boxes, boxes[1:]):
        assert lo_b[0] - hi_a[0] == pytest.approx(gap, abs=1e-3)
    row_lo, row_hi = boxes[0][0][0], boxes[-1][1][0]
    assert (row_lo + row_hi) / 2 == pytest.approx(centre[0], abs=1e-3)
    for o in objs:
        assert tuple(o.location)[1:] == pytest.approx(tuple(centre)[1:])


# --------------------------------------------------------------------------------------------------- tests

def test_point_clouds_and_coloured_meshes_become_objects_in_a_row_at_the_cursor(scene):
    addon, bpy = scene, scene.bpy
    sess, results = addon.session, addon.module("results")
    mesh_io, shapes = addon.module("mesh_io"), addon.module("results.shapes")
    fake = FakeClient(addon.module("core.protocol"))
    old_client, sess.connection.client = sess.connection.client, fake
    rng = np.random.default_rng(0)
    try:
        job_id = "e" * 32
        sess.jobs.remember_target(job_id, "point_e", results.ShapeTarget("a red chair", CURSOR, GAP, False))
        addon.state.active_job_id = job_id
        # a partial of point clouds: one preview mesh of loose vertices, laid out like the objects
        fake.push("partial", {"job_id": job_id, "step": 2}, cloud_arrays(rng, [30, 20], colors=False))
        sess.process_events()
        [preview] = preview_objects(bpy)
        assert len(preview.data.vertices) == 50 and len(preview.data.polygons) == 0
        # the result: two coloured meshes and two point clouds (Point-E with meshes)
        clouds = cloud_arrays(rng, [40, 25])
        fake.push("result", {"job_id": job_id, "metadata": {"pipeline": "point_e", "prompt": "a red chair",
                                                            "seed": 7, "model": "tiny-random"}},
                  {**coloured_meshes(2), **clouds})
        sess.process_events()
        assert preview_objects(bpy) == [] and addon.state.stage == "done"
        objs = objects_of(bpy, job_id)
        assert [o.type for o in objs] == ["MESH", "MESH", "POINTCLOUD", "POINTCLOUD"]
        assert [o.name for o in objs] == ["a red chair 1", "a red chair 2", "a red chair 1 points",
                                          "a red chair 2 points"]
        assert_in_a_row_at(objs, CURSOR, GAP)
        for o in objs:
            assert (o["latentforge_pipeline"], o["latentforge_seed"], o["latentforge_model"]) == \
                ("point_e", 7, "tiny-random")
        assert [o["latentforge_sample_index"] for o in objs] == [0, 1, 0, 1]

        # meshes: the vertex colours as the colour attribute, read by their material's Base Color
        for i, o in enumerate(objs[:2]):
            attr = o.data.color_attributes[mesh_io.COLOR_ATTRIBUTE_NAME]
            got = np.empty(4 * 4, dtype=np.float32)
            attr.data.foreach_get("color", got)
            np.testing.assert_allclose(got.reshape(4, 4)[:, :3], coloured_meshes(2)[f"mesh{'_1' if i else ''}.v_color"],
                                       atol=1e-6)
            mat = o.material_slots[0].material
            assert mat.name == shapes.VERTEX_COLOR_MATERIAL_NAME
            node = linked_from(mat)
            assert node.bl_idname == "ShaderNodeVertexColor" and node.layer_name == mesh_io.COLOR_ATTRIBUTE_NAME

        # point clouds: positions (relative to the object's origin), the Col attribute, a radius, the material
        for i, o in enumerate(objs[2:]):
            group = "points" if i == 0 else f"points_{i}"
            points, colors = mesh_io.point_cloud_arrays(o)
            shift = points + np.array(o.location, dtype=np.float32) - clouds[f"{group}.v_pos"]
            np.testing.assert_allclose(shift, shift[:1].repeat(len(shift), 0), atol=1e-5)  # one rigid shift: the row's
            assert tuple(shift[0, 1:]) == pytest.approx(CURSOR[1:], abs=1e-5)  # the model frame moved to the cursor
            np.testing.assert_allclose(colors[:, :3], clouds[f"{group}.v_color"], atol=1e-6)
            radius = np.empty(len(points), dtype=np.float32)
            o.data.attributes["radius"].data.foreach_get("value", radius)
            assert (radius > 0).all() and np.ptp(radius) == 0
            assert o["latentforge_point_count"] == len(points)
            node = linked_from(o.material_slots[0].material)
            assert node.bl_idname == "ShaderNodeAttribute" and node.attribute_name == "Col"

        # Shap-E with a baked texture: the first mesh gets its UVs and the texture, the others their vertex colours
        job_id = "f" * 32
        sess.jobs.remember_target(job_id, "shap_e", results.ShapeTarget("a lamp", CURSOR, GAP, False))
        addon.state.active_job_id = job_id
        arrays = coloured_meshes(2)
        arrays["mesh.uv"] = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=np.float32)
        arrays["mesh.uv_idx"] = np.array([[0, 1, 2], [0, 1, 3], [1, 2, 3], [0, 3, 2]], dtype=np.int32)
        arrays["texture"] = np.full((8, 8, 3), 200, dtype=np.uint8)
        fake.push("result", {"job_id": job_id, "metadata": {"pipeline": "shap_e", "prompt": "a lamp"}}, arrays)
        sess.process_events()
        first, second = objects_of(bpy, job_id)
        assert linked_from(first.material_slots[0].material).bl_idname == "ShaderNodeTexImage"
        assert mesh_io.UV_MAP_NAME in first.data.uv_layers
        assert linked_from(second.material_slots[0].material).bl_idname == "ShaderNodeVertexColor"
    finally:
        sess.connection.client = old_client
        addon.state.active_job_id = ""


def test_without_point_cloud_conversion_the_points_are_vertices_with_a_geometry_nodes_setup(scene, monkeypatch):
    addon, bpy = scene, scene.bpy
    mesh_io = addon.module("mesh_io")
    monkeypatch.setattr(mesh_io, "_convert_to_point_cloud", lambda context, obj: False)
    rng = np.random.default_rng(1)
    points, colors = rng.random((12, 3)).astype(np.float32), rng.random((12, 4)).astype(np.float32)
    material = addon.module("materials").make_point_color_material("test points", "Col")
    obj = mesh_io.new_point_cloud_object(bpy.context, "cloud", points, colors, (1.0, 2.0, 3.0), 0.02, material)
    assert obj.type == "MESH" and len(obj.data.vertices) == 12 and len(obj.data.edges) == 0
    [modifier] = obj.modifiers
    assert modifier.type == "NODES" and modifier.node_group.name == mesh_io.POINTS_NODE_GROUP_NAME
    got_points, got_colors = mesh_io.point_cloud_arrays(obj)
    np.testing.assert_allclose(got_points, points)
    np.testing.assert_allclose(got_colors, colors, atol=1e-6)
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    geometry = evaluated.evaluated_geometry()
    assert geometry.pointcloud is not None and len(geometry.pointcloud.points) == 12
    assert "Col" in geometry.pointcloud.attributes
    with pytest.raises(ValueError, match="points must be"):
        mesh_io.new_point_cloud_object(bpy.context, "empty", np.zeros((0, 3), np.float32), None, (0, 0, 0), 0.1)


def _fake_backend(addon, protocol):
    """A stand-in client whose welcome describes shape_ldm (its real config) and a model with settings of its own
    as ``point_e``; the connection shows it (which makes the model settings)."""
    from backend.params import describe_config
    from backend.pipelines import PIPELINES

    fake = FakeClient(protocol)
    pipelines = {name: {"params": describe_config(spec.config_class), "inputs": [], "optional_inputs": []}
                 for name, spec in PIPELINES.items()}
    pipelines["point_e"] = {"params": MODEL_DESCRIPTION, "inputs": [], "optional_inputs": ["image"]}
    pipelines["shap_e"] = {"params": {k: v for k, v in MODEL_DESCRIPTION.items() if k not in ("upsample",)},
                           "inputs": [], "optional_inputs": []}
    fake.welcome = {"device": "fake", "server_version": "0", "pipelines": pipelines}
    return fake


def test_the_model_choice_draws_and_sends_what_the_backend_describes(scene):
    addon, bpy = scene, scene.bpy
    sess, s = addon.session, addon.settings
    # offline: no model settings, one line says connecting shows them
    s.shape_method = "point_e"
    assert sess.connection.pipelines is None
    assert "Connect to the backend to see Point-E's own settings" in \
        [kw.get("text") for name, _a, kw in draw_panel(bpy, "LATENTFORGE_PT_shape") if name == "label"]
    fake = _fake_backend(addon, addon.module("core.protocol"))
    old_client, sess.connection.client = sess.connection.client, fake
    try:
        # the welcome makes the model settings, with the backend's defaults, docs and ranges
        sess.connection.show_connected("127.0.0.1", 0, fake.welcome)
        assert s["point_e.upsample"] is True and s["point_e.upsample_steps"] == 64 and s["point_e.sampler"] == "heun"
        ui = s.id_properties_ui("point_e.upsample_steps").as_dict()
        assert (ui["min"], ui["max"], ui["description"], ui["default"]) == (1, 1000, "steps", 64)
        assert "shap_e.upsample" not in s.keys()

        calls = draw_panel(bpy, "LATENTFORGE_PT_shape")
        props = [args[1] for name, args, _kw in calls if name == "prop"]
        operators = [args[0] for name, args, _kw in calls if name == "operator"]
        # no variations or in-betweens for Point-E; its own settings from the description
        assert operators.count("latentforge.generate_shape") == 1
        assert "latentforge.shape_variations" not in operators and "latentforge.shape_interpolate" not in operators
        assert '["point_e.upsample"]' in props and '["point_e.upsample_steps"]' in props
        assert [kw.get("text") for name, args, kw in calls
                if name == "operator" and args[0] == "latentforge.set_backend_field"] == ["heun", "euler"]
        assert "shape_input" in props  # Point-E takes an image
        s.shape_method = "shap_e"
        props = [args[1] for name, args, _kw in draw_panel(bpy, "LATENTFORGE_PT_shape") if name == "prop"]
        assert "shape_input" not in props and '["point_e.upsample"]' not in props  # no image, not Point-E's
        s.shape_method = "shape_ldm"
        calls = draw_panel(bpy, "LATENTFORGE_PT_shape")
        operators = [args[0] for name, args, _kw in calls if name == "operator"]
        assert "latentforge.shape_variations" in operators and "latentforge.shape_interpolate" in operators
        assert '["shape_ldm.face_budget"]' in [args[1] for name, args, _kw in calls if name == "prop"]

        # the operator sends the shared settings the model has and the model settings that differ from the default
        s.shape_method, s.prompt, s.seed, s.shape_model = "point_e", "a red chair", 3, "tiny-random"
        assert bpy.ops.latentforge.set_backend_field(key="point_e.sampler", value='"euler"') == {"FINISHED"}
        s["point_e.upsample"] = False
        assert bpy.ops.latentforge.generate_shape() == {"FINISHED"}, addon.state.last_error
        msg_type, fields, _arrays = fake.sent[-1]
        assert msg_type == "submit" and fields["pipeline"] == "point_e"
        params = fields["params"]
        assert params["upsample"] is False and params["sampler"] == "euler" and "upsample_steps" not in params
        assert (params["prompt"], params["seed"], params["model"]) == ("a red chair", 3, "tiny-random")
        assert "grid_resolution" not in params and "guidance_scale" not in params  # Point-E here has neither
        # a value the backend refuses is one clear error, nothing sent
        s["point_e.upsample_steps"] = 5000
        n_sent = len(fake.sent)
        with pytest.raises(RuntimeError, match="upsample_steps = 5000 is outside the range 1–1000"):
            bpy.ops.latentforge.generate_shape()
        assert "upsample_steps = 5000" in addon.state.last_error
        assert len(fake.sent) == n_sent
        # a reconnect keeps what fits, resets what no longer does
        sess.connection.show_connected("127.0.0.1", 0, fake.welcome)
        assert s["point_e.upsample_steps"] == 64 and s["point_e.sampler"] == "euler"
        # a backend with another default: an untouched setting follows it, one the artist set stays
        import copy

        other = copy.deepcopy(fake.welcome)
        other["pipelines"]["point_e"]["params"]["upsample_steps"]["default"] = 32
        other["pipelines"]["point_e"]["params"]["sampler"]["default"] = "heun"
        sess.connection.show_connected("127.0.0.1", 0, other)
        assert s["point_e.upsample_steps"] == 32 and s["point_e.sampler"] == "euler"
        sess.connection.show_connected("127.0.0.1", 0, fake.welcome)
        with pytest.raises(RuntimeError, match="No model setting 'nope.x'"):
            bpy.ops.latentforge.set_backend_field(key="nope.x", value="1")
    finally:
        sess.connection.client = old_client
        s.shape_method = "shape_ldm"


# ------------------------------------------------------------------------------------------ end to end (backend)

JOB_TIMEOUT_S = 180.0


def generate_and_wait(addon, pipeline: str, n_objects: int, what: str) -> list:
    """Generate Shape from the panel's operator; pump until the job is done and its objects exist. Returns them in
    result order (meshes, then point clouds)."""
    bpy = addon.bpy
    before = {o.name for o in bpy.data.objects}
    assert bpy.ops.latentforge.generate_shape() == {"FINISHED"}

    def done():
        assert not addon.state.stage.startswith("failed"), addon.state.last_error
        new = [o for o in bpy.data.objects if o.name not in before and o.get("latentforge_pipeline") == pipeline]
        return addon.state.stage == "done" and len(new) >= n_objects

    addon.pump(done, JOB_TIMEOUT_S, what)
    new = [o for o in bpy.data.objects if o.name not in before and o.get("latentforge_pipeline") == pipeline]
    assert len(new) == n_objects, [o.name for o in new]
    [job_id] = {o["latentforge_job_id"] for o in new}
    assert preview_objects(bpy) == []
    return objects_of(bpy, job_id)


def set_model(addon, method: str, **settings) -> None:
    s = addon.settings
    values = {"shape_method": method, "shape_model": "tiny-random", f"{method}.num_inference_steps": 3,
              f"{method}.grid_resolution": 20, "seed": 0, "shape_spacing": GAP, "shape_input": "PROMPT",
              "prompt": "a red chair", **settings}
    for key, value in values.items():
        if key.startswith(f"{method}."):
            s[key] = value
        else:
            setattr(s, key, value)
    addon.state.last_error = ""


def test_shap_e_from_the_shape_panel_makes_coloured_meshes_in_a_row_at_the_cursor(scene, connected):
    addon, bpy = scene, scene.bpy
    mesh_io = addon.module("mesh_io")
    bpy.context.scene.cursor.location = CURSOR
    set_model(addon, "shap_e", shape_num_samples=2)
    assert "shap_e.bake_texture" in addon.settings.keys()  # the welcome made Shap-E's own settings
    objs = generate_and_wait(addon, "shap_e", 2, "two Shap-E shapes")
    assert [o.type for o in objs] == ["MESH", "MESH"]
    assert [o.name for o in objs] == ["a red chair 1", "a red chair 2"]
    assert_in_a_row_at(objs, CURSOR, GAP)
    for o in objs:
        colors = np.empty(len(o.data.vertices) * 4, dtype=np.float32)
        o.data.color_attributes[mesh_io.COLOR_ATTRIBUTE_NAME].data.foreach_get("color", colors)
        colors = colors.reshape(-1, 4)[:, :3]
        assert len(o.data.polygons) > 0 and colors.min() >= 0.0 and colors.max() <= 1.0
        assert np.ptp(colors, axis=0).max() > 0  # real per-vertex colours, not one flat value
        assert linked_from(o.material_slots[0].material).bl_idname == "ShaderNodeVertexColor"
        assert (o["latentforge_pipeline"], o["latentforge_model"]) == ("shap_e", "tiny-random")


def test_point_e_from_the_shape_panel_makes_point_clouds_and_meshes_in_a_row_at_the_cursor(scene, connected):
    addon, bpy = scene, scene.bpy
    bpy.context.scene.cursor.location = CURSOR
    set_model(addon, "point_e", shape_num_samples=2, **{"point_e.grid_resolution": 24, "point_e.upsample_steps": 3})
    objs = generate_and_wait(addon, "point_e", 4, "two Point-E clouds and their meshes")
    assert [o.type for o in objs] == ["MESH", "MESH", "POINTCLOUD", "POINTCLOUD"]
    assert_in_a_row_at(objs, CURSOR, GAP)
    mesh_io = addon.module("mesh_io")
    for o in objs[2:]:
        points, colors = mesh_io.point_cloud_arrays(o)
        assert len(points) == o["latentforge_point_count"] > 0
        assert colors is not None and 0.0 <= colors.min() and colors.max() <= 1.0 and np.ptp(colors[:, :3]) > 0
        assert linked_from(o.material_slots[0].material).attribute_name == "Col"
    for o in objs[:2]:
        assert mesh_io.COLOR_ATTRIBUTE_NAME in o.data.color_attributes
    # clouds only, not upsampled (fewer points): the model settings turn the meshes and the upsampler off
    set_model(addon, "point_e", shape_num_samples=1, **{"point_e.make_mesh": False, "point_e.upsample": False})
    [cloud] = generate_and_wait(addon, "point_e", 1, "one Point-E cloud")
    assert cloud.type == "POINTCLOUD" and 0 < cloud["latentforge_point_count"] < objs[2]["latentforge_point_count"]
    assert_in_a_row_at([cloud], CURSOR, GAP)  # one object: its box centred on the cursor in X
