"""Shapes (Michelangelo: Generate Shape, Variations of Selected, Interpolate) from the real add-on in real Blender
(the ``bpy`` module) against a real backend process on loopback.

Uses the extension install, the ``scene``/``connected`` fixtures and the helpers of ``test_blender_addon.py`` and
``test_blender_generate.py``. Blender in background mode runs no timers, so the tests pump
``session.process_events()`` themselves.

Meshes: Blender's own primitives (Suzanne, a cube, an icosphere). Jobs use the backend's ``tiny-random`` model with
3 DDIM steps and a 20³ grid (as the backend's own shape tests do): random weights give arbitrary but seeded, non-empty
shapes, so these tests check the plumbing (objects, names, placement, properties, previews, errors), not the shapes.
"""

from __future__ import annotations

import importlib.util
import itertools
import re

import numpy as np
import pytest

import test_blender_addon as base
from test_blender_addon import fetch_result, make_active, world_vertices
from test_blender_generate import FakeClient, draw_panel, panel_labels, preview_objects, pump_counting_previews

addon, scene, connected = base.addon, base.scene, base.connected  # the same fixtures (extension install, backend)

pytestmark = [
    pytest.mark.blender,
    pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs the bpy module (Blender as a module)"),
]

PROMPT = "a swivel chair"
GAP = 0.3
TINY = {"shape_model": "tiny-random", "shape_steps": 3, "shape_grid": "CUSTOM", "shape_grid_resolution": 20,
        "seed": 0, "shape_spacing": GAP, "shape_num_samples": 1, "shape_variation_count": 2,
        "shape_interpolate_count": 2, "shape_strength": 0.5, "shape_variation_prompt": False}
"""Scene settings of every job here (the scene's settings outlive a test): tiny random weights, 3 DDIM steps, a 20³
grid."""
JOB_TIMEOUT_S = 90.0
EPS = 1e-4


# ------------------------------------------------------------------------------------------------- helpers

def set_shape(addon, prompt: str = PROMPT, shape_input: str = "PROMPT", **settings) -> None:
    """The TINY settings plus ``settings`` (scene.latentforge property -> value); clears the last error."""
    s = addon.settings
    for key, value in {**TINY, "prompt": prompt, "shape_input": shape_input, **settings}.items():
        setattr(s, key, value)
    addon.state.last_error = ""


def shape_objects(bpy, pipeline: str, job_id: str | None = None) -> list:
    """The objects a shape job made, in sample order."""
    objs = [o for o in bpy.data.objects if o.get("latentforge_pipeline") == pipeline
            and (job_id is None or o.get("latentforge_job_id") == job_id)]
    return sorted(objs, key=lambda o: (o["latentforge_job_id"], o["latentforge_sample_index"]))


def run_and_wait(addon, operator, pipeline: str, n: int, what: str) -> tuple[list, int]:
    """Run ``operator`` (a ``bpy.ops`` callable), pump until its job is done and ``n`` new objects of ``pipeline``
    exist (at most one preview object at any time). Returns (the new objects in sample order, preview batches)."""
    bpy = addon.bpy
    before = {o.name for o in shape_objects(bpy, pipeline)}
    assert operator() == {"FINISHED"}

    def done():
        assert not addon.state.stage.startswith("failed"), addon.state.last_error
        return addon.state.stage == "done" and len(shape_objects(bpy, pipeline)) >= len(before) + n

    seen = pump_counting_previews(addon, done, what, JOB_TIMEOUT_S)
    new = [o for o in shape_objects(bpy, pipeline) if o.name not in before]
    assert len(new) == n, [o.name for o in new]
    assert len({o["latentforge_job_id"] for o in new}) == 1
    assert preview_objects(bpy) == []
    return new, seen


def world_box(obj) -> tuple[np.ndarray, np.ndarray]:
    v = world_vertices(obj)
    return v.min(axis=0), v.max(axis=0)


def check_shape_object(obj, pipeline: str, index: int, prompt: str = "") -> None:
    """A shape object: triangles, no rotation/scale, smooth shading, the plain shared material, custom properties."""
    assert obj.type == "MESH"
    np.testing.assert_allclose(np.array(obj.matrix_world)[:3, :3], np.eye(3), atol=0)
    mesh = obj.data
    assert len(mesh.vertices) > 8 and len(mesh.polygons) > 8
    sizes = np.empty(len(mesh.polygons), dtype=np.int32)
    mesh.polygons.foreach_get("loop_total", sizes)
    assert (sizes == 3).all()
    sharp = mesh.attributes.get("sharp_face")
    if sharp is not None:
        flags = np.empty(len(mesh.polygons), dtype=bool)
        sharp.data.foreach_get("value", flags)
        assert not flags.any(), "not smooth shaded"
    mat = obj.material_slots[0].material
    assert mat.name == "LatentForge Shape"
    assert any(n.type == "BSDF_PRINCIPLED" for n in mat.node_tree.nodes)
    assert obj["latentforge_pipeline"] == pipeline and obj["latentforge_sample_index"] == index
    assert obj["latentforge_model"] == "tiny-random" and obj["latentforge_seed"] == 0
    assert obj["latentforge_prompt"] == prompt and obj["latentforge_grid_resolution"] == 20
    assert len(obj["latentforge_job_id"]) >= 8


def make_image(bpy, name: str, width: int, height: int, float_buffer: bool = False):
    """An image datablock holding a seeded random RGBA pattern; returns (image, pixels (H,W,4) float32, row 0 =
    bottom as Blender stores them)."""
    image = bpy.data.images.new(name, width=width, height=height, alpha=True, float_buffer=float_buffer)
    pixels = np.random.default_rng(width * height).uniform(size=(height, width, 4)).astype(np.float32)
    image.pixels.foreach_set(pixels.reshape(-1))
    image.update()
    return image, pixels


def alert_labels(calls) -> list[str]:
    """Labels drawn with the ERROR icon (the status lines that say why an operator cannot run)."""
    return [kw.get("text", "") for name, _args, kw in calls if name == "label" and kw.get("icon") == "ERROR"]


# --------------------------------------------------------------------------------------------------- tests

def test_settings_params_image_reading_and_panel(scene):
    """No backend: defaults, the params each operator sends (valid for the backend's configs), image pixels to the
    wire's convention, the selection rules and the panel."""
    addon, bpy = scene, scene.bpy
    operators, mesh_io = addon.module("operators"), addon.module("mesh_io")
    for name in ("LATENTFORGE_OT_generate_shape", "LATENTFORGE_OT_shape_variations",
                 "LATENTFORGE_OT_shape_interpolate", "LATENTFORGE_PT_shape"):
        assert hasattr(bpy.types, name), name
    assert bpy.types.LATENTFORGE_PT_shape.bl_parent_id == "LATENTFORGE_PT_main"
    s = addon.settings
    assert (s.shape_input, s.shape_grid, s.shape_guidance_scale, s.shape_steps, s.shape_num_samples) == \
        ("PROMPT", "129", 7.5, 50, 1)
    assert (s.shape_strength, s.shape_variation_count, s.shape_interpolate_count, s.shape_model) == (0.5, 4, 3, "")
    assert [i.identifier for i in s.bl_rna.properties["shape_grid"].enum_items] == ["129", "257", "CUSTOM"]

    # The params, checked against the backend's own configs (names, ranges, the image/prompt rule).
    from backend.michelangelo.conditioner import MIN_IMAGE_SIDE
    from backend.params import describe_config, parse_config
    from backend.pipelines.shape_interpolate import ShapeInterpolateConfig
    from backend.pipelines.shape_ldm import ShapeLDMConfig
    from backend.pipelines.shape_variations import ShapeVariationsConfig

    grid = describe_config(ShapeLDMConfig)["grid_resolution"]
    prop = s.bl_rna.properties["shape_grid_resolution"]
    assert (prop.hard_min, prop.hard_max) == (grid["low"], grid["high"])
    assert mesh_io.MIN_IMAGE_SIDE == MIN_IMAGE_SIDE
    s.prompt, s.seed = "  a stool ", 5
    ldm = describe_config(ShapeLDMConfig)
    for description in (None, ldm):  # offline (the table) and as a backend describes shape_ldm: the same params
        params = operators.shape_params(s, "shape_ldm", description)
        assert params == {"prompt": "a stool", "seed": 5, "num_inference_steps": 50, "guidance_scale": 7.5,
                          "grid_resolution": 129, "num_samples": 1}
    s.shape_grid = "257"
    assert operators.shape_params(s, "shape_ldm", ldm, prompt=False)["grid_resolution"] == 257
    assert "prompt" not in operators.shape_params(s, "shape_ldm", ldm, prompt=False)
    s.shape_grid, s.shape_grid_resolution, s.shape_model = "CUSTOM", 48, " tiny-random "
    assert operators.shape_params(s, "shape_interpolate", None)["grid_resolution"] == 48
    assert operators.shape_params(s, "shape_interpolate", None)["model"] == "tiny-random"
    parse_config(ShapeLDMConfig, operators.shape_params(s, "shape_ldm", ldm))
    variations = operators.shape_params(s, "shape_variations", None, prompt=False)
    assert (variations["strength"], variations["num_samples"], "prompt" in variations) == (0.5, 4, False)
    assert operators.shape_params(s, "shape_variations", None)["prompt"] == "a stool"
    parse_config(ShapeVariationsConfig, operators.shape_params(s, "shape_variations", None))
    assert operators.shape_params(s, "shape_interpolate", None, prompt=False)["num_shapes"] == 3
    parse_config(ShapeInterpolateConfig, operators.shape_params(s, "shape_interpolate", None, prompt=False))
    s.shape_variation_prompt, s.shape_grid, s.shape_model, s.seed = False, "129", "", 0

    # Image pixels: RGBA uint8, row 0 = top; byte images as stored, float (linear) images sRGB-encoded.
    image, pixels = make_image(bpy, "Concept", 24, 16)
    rgba = mesh_io.image_rgba8(image)
    assert rgba.shape == (16, 24, 4) and rgba.dtype == np.uint8
    np.testing.assert_allclose(rgba, np.rint(pixels[::-1] * 255), atol=1)
    hdr, _ = make_image(bpy, "Linear", 16, 16, float_buffer=True)
    hdr.pixels.foreach_set(np.tile(np.float32([0.5, 0.0, 1.0, 0.25]), 16 * 16))
    np.testing.assert_array_equal(mesh_io.image_rgba8(hdr)[0, 0], [188, 0, 255, 64])  # sRGB(0.5) = 0.7354
    s.shape_input, s.shape_image = "IMAGE", image
    array, label = operators.shape_input_image(s)
    assert label == "Concept" and np.array_equal(array, rgba)
    s.shape_input = "PROMPT"
    assert operators.shape_input_image(s) == (None, "")

    # Which meshes Variations / Interpolate use, and what the panel says about it.
    bpy.ops.mesh.primitive_cube_add(location=(-2.0, 0.0, 0.0))
    cube = bpy.context.active_object
    bpy.ops.mesh.primitive_ico_sphere_add(location=(2.0, 0.0, 0.0))
    sphere = bpy.context.active_object
    bpy.ops.object.light_add(type="POINT")
    light = bpy.context.active_object
    make_active(bpy, cube)
    assert operators.variation_source(bpy.context) == cube
    with pytest.raises(ValueError, match=r"exactly two meshes to interpolate between \(1 selected\)"):
        operators.interpolation_pair(bpy.context)
    calls = draw_panel(bpy, "LATENTFORGE_PT_shape")
    assert "Varies 'Cube'" in panel_labels(calls)
    assert alert_labels(calls) == ["Select exactly two meshes to interpolate between (1 selected)"]
    for name, _args, kw in calls:
        assert name != "operator" or kw.get("icon") == "PLAY"
    assert [args[0] for name, args, _kw in calls if name == "operator"] == \
        ["latentforge.generate_shape", "latentforge.shape_variations", "latentforge.shape_interpolate"]
    sphere.select_set(True)  # the cube stays active: from the sphere to the cube
    assert operators.interpolation_pair(bpy.context) == (sphere, cube)
    bpy.context.view_layer.objects.active = sphere
    assert operators.interpolation_pair(bpy.context) == (cube, sphere)
    assert "From 'Cube' to 'Icosphere'" in panel_labels(draw_panel(bpy, "LATENTFORGE_PT_shape"))
    make_active(bpy, light)
    with pytest.raises(ValueError, match="'Point' is a LIGHT, not a mesh"):
        operators.variation_source(bpy.context)
    light.select_set(False)
    with pytest.raises(ValueError, match="Select the mesh"):
        operators.variation_source(bpy.context)

    # The panel draws the image picker / file path / prompt by Shape From, and the custom grid only when chosen.
    for mode, drawn in (("PROMPT", "prompt"), ("IMAGE", "shape_image"), ("FILE", "shape_image_path")):
        s.shape_input = mode
        calls = draw_panel(bpy, "LATENTFORGE_PT_shape")
        props = [args[1] for name, args, _kw in calls if name in ("prop", "template_ID")]
        assert drawn in props and not {"prompt", "shape_image", "shape_image_path"} - {drawn} & set(props)
        assert "shape_grid_resolution" not in props
    s.shape_grid = "CUSTOM"
    assert "shape_grid_resolution" in [args[1] for name, args, _kw in draw_panel(bpy, "LATENTFORGE_PT_shape") if name == "prop"]
    s.shape_grid, s.shape_input, s.shape_image = "129", "PROMPT", None

    # The row layout (bpy-free helper).
    placement = addon.module("core.placement")
    shifts = placement.row_offsets([-1.0, -0.5, 0.0], [1.0, 0.5, 3.0], 0.5)
    np.testing.assert_allclose(shifts, [-2.5, -0.5, 0.5])  # boxes [-3.5, -1.5], [-1, 0], [0.5, 3.5]: centred on 0
    np.testing.assert_allclose(placement.row_offsets([0.0, 0.0], [1.0, 2.0], 0.25, start=5.0), [5.0, 6.25])


def test_partials_and_results_are_placed_per_pipeline(scene):
    """Hand-made (wire-encoded) multi-mesh partial/result messages through process_events: one joined, tinted preview
    object laid out like the final objects; the result makes one object per mesh, named and placed per pipeline."""
    addon, bpy = scene, scene.bpy
    sess, results = addon.session, addon.module("results")
    fake = FakeClient(addon.module("core.protocol"))
    old_client, sess.connection.client = sess.connection.client, fake
    tetra_v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    tetra_t = np.array([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]], dtype=np.int32)

    def meshes(scales, shift=(0.0, 0.0, 0.0)):
        out = {}
        for i, k in enumerate(scales):
            g = "mesh" if i == 0 else f"mesh_{i}"
            out[f"{g}.v_pos"] = (tetra_v * k - k / 2 + np.float32(shift)).astype(np.float32)
            out[f"{g}.t_pos_idx"] = tetra_t
        return out

    try:
        # shape_ldm: 3 samples around the origin -> a row centred on the cursor recorded at submit, GAP apart.
        job_id = "a" * 32
        sess.jobs.remember_target(job_id, "shape_ldm", results.ShapeTarget(PROMPT, (1.0, 2.0, 3.0), GAP, False))
        addon.state.active_job_id = job_id
        fake.push("partial", {"job_id": job_id, "step": 3}, meshes([1.0, 2.0, 1.0]))
        sess.process_events()
        [preview] = preview_objects(bpy)
        v = world_vertices(preview)
        assert len(v) == 12 and len(preview.data.polygons) == 12
        expected_x = [(-2.0 - GAP, -1.0 - GAP), (-1.0, 1.0), (1.0 + GAP, 2.0 + GAP)]  # widths 1, 2, 1
        colors = np.empty(12 * 4, dtype=np.float32)
        preview.data.color_attributes["LatentForge Color"].data.foreach_get("color", colors)
        colors = colors.reshape(12, 4)
        for i, (lo, hi) in enumerate(expected_x):
            part = v[4 * i:4 * i + 4]
            assert part[:, 0].min() == pytest.approx(1.0 + lo, abs=EPS)
            assert part[:, 0].max() == pytest.approx(1.0 + hi, abs=EPS)
            tint = results.shapes.SHAPE_PREVIEW_TINTS[i]
            np.testing.assert_allclose(colors[4 * i:4 * i + 4, :3], tint[None].repeat(4, 0))
        assert len(np.unique(colors[:, :3].round(3), axis=0)) == 3
        fake.push("result", {"job_id": job_id, "metadata": {"pipeline": "shape_ldm", "prompt": PROMPT, "seed": 4,
                                                            "model": "tiny-random", "grid_resolution": 20}},
                  meshes([1.0, 2.0, 1.0]))
        sess.process_events()
        assert preview_objects(bpy) == []
        objs = shape_objects(bpy, "shape_ldm", job_id)
        assert [o.name for o in objs] == [f"{PROMPT} {i}" for i in (1, 2, 3)]
        for o, (lo, hi), k in zip(objs, expected_x, (1.0, 2.0, 1.0)):
            box_lo, box_hi = world_box(o)
            assert (box_lo[0], box_hi[0]) == (pytest.approx(1.0 + lo, abs=EPS), pytest.approx(1.0 + hi, abs=EPS))
            np.testing.assert_allclose(box_lo[1:], np.array([2.0, 3.0]) - k / 2, atol=EPS)  # y, z: cursor + model
            assert tuple(o.location)[1:] == pytest.approx((2.0, 3.0))  # object origin = the sample's model origin
            assert o["latentforge_seed"] == 4 and o["latentforge_image"] == ""
        assert addon.state.stage == "done"

        # shape_variations: the variants stand on the source; they move into a row starting at start_x.
        job_id = "b" * 32
        target = results.VariationsTarget("Suzanne", (5.0, 0.0, 0.0), 6.0, GAP)
        sess.jobs.remember_target(job_id, "shape_variations", target)
        addon.state.active_job_id = job_id
        fake.push("result", {"job_id": job_id, "metadata": {"pipeline": "shape_variations", "strength": 0.4}},
                  meshes([1.0, 1.0], shift=(5.0, 0.0, 0.0)))
        sess.process_events()
        objs = shape_objects(bpy, "shape_variations", job_id)
        assert [o.name for o in objs] == ["Suzanne variation 1", "Suzanne variation 2"]
        assert [world_box(o)[0][0] for o in objs] == [pytest.approx(6.0, abs=EPS), pytest.approx(7.0 + GAP, abs=EPS)]
        # the source's origin keeps its place relative to each variant
        assert [o.location.x for o in objs] == [pytest.approx(6.5), pytest.approx(7.5 + GAP)]
        assert objs[0]["latentforge_source"] == "Suzanne" and objs[0]["latentforge_strength"] == pytest.approx(0.4)

        # shape_interpolate: shapes stay where the backend put them, origins at their box centres; names A→B i/K.
        job_id = "c" * 32
        sess.jobs.remember_target(job_id, "shape_interpolate", results.InterpolateTarget("Cube", "Icosphere"))
        addon.state.active_job_id = job_id
        arrays = meshes([1.0, 1.0])
        arrays["mesh_1.v_pos"] = arrays["mesh_1.v_pos"] + np.float32([3.0, 0.0, 0.0])
        fake.push("result", {"job_id": job_id, "metadata": {"pipeline": "shape_interpolate",
                                                            "weights": [1 / 3, 2 / 3]}}, arrays)
        sess.process_events()
        objs = shape_objects(bpy, "shape_interpolate", job_id)
        assert [o.name for o in objs] == ["Cube→Icosphere 1/2", "Cube→Icosphere 2/2"]
        np.testing.assert_allclose(world_vertices(objs[1]), arrays["mesh_1.v_pos"], atol=EPS)
        assert tuple(objs[1].location) == pytest.approx((3.0, 0.0, 0.0))
        assert objs[1]["latentforge_weight"] == pytest.approx(2 / 3)
        assert (objs[1]["latentforge_source_a"], objs[1]["latentforge_source_b"]) == ("Cube", "Icosphere")
    finally:
        sess.connection.client = old_client
        addon.state.active_job_id = ""


def test_generate_shape_from_a_prompt_makes_samples_side_by_side_at_the_cursor(scene, connected):
    addon, bpy = scene, scene.bpy
    cursor = (1.0, -2.0, 0.5)
    bpy.context.scene.cursor.location = cursor
    set_shape(addon, shape_num_samples=2)
    objs, previews = run_and_wait(addon, bpy.ops.latentforge.generate_shape, "shape_ldm", 2, "two shapes")
    assert previews >= 1, "no preview mesh was shown"
    assert [o.name for o in objs] == [f"{PROMPT} 1", f"{PROMPT} 2"]
    for i, o in enumerate(objs):
        check_shape_object(o, "shape_ldm", i, PROMPT)
        assert o["latentforge_image"] == ""
        assert tuple(o.location)[1:] == pytest.approx(cursor[1:])
    # Side by side along X, GAP apart, the row centred on the cursor.
    (lo0, hi0), (lo1, hi1) = world_box(objs[0]), world_box(objs[1])
    assert lo1[0] - hi0[0] == pytest.approx(GAP, abs=EPS)
    assert (lo0[0] + hi1[0]) / 2 == pytest.approx(cursor[0], abs=EPS)
    # The geometry is the backend's, moved as a whole (the backend makes samples around the origin).
    job_id = objs[0]["latentforge_job_id"]
    result = fetch_result(connected, job_id)
    assert result.fields["metadata"]["num_samples"] == 2
    for o, group in zip(objs, ("mesh", "mesh_1")):
        np.testing.assert_allclose(world_vertices(o) - np.array(o.location), result.arrays[f"{group}.v_pos"],
                                   atol=1e-5)
    assert not np.array_equal(result.arrays["mesh.v_pos"][:10], result.arrays["mesh_1.v_pos"][:10])
    row = addon.state.jobs[job_id]
    assert (row.status, row.pipeline) == ("done", "shape_ldm")

    # Import again from the job list, as after a restart of Blender: the scene's record puts them at the same place
    # (not at the cursor of now).
    assert dict(bpy.context.scene["latentforge_jobs"][job_id])["label"] == PROMPT
    bpy.context.scene.cursor.location = (9.0, 9.0, 9.0)
    addon.session.jobs.targets.clear()
    addon.session.jobs.pipelines.clear()
    addon.state.jobs.clear()
    assert bpy.ops.latentforge.refresh_jobs() == {"FINISHED"}
    addon.pump(lambda: job_id in addon.state.jobs, 30, "the job list")
    assert bpy.ops.latentforge.import_job(job_id=job_id) == {"FINISHED"}
    addon.pump(lambda: len(shape_objects(bpy, "shape_ldm")) == 4, 30, "the imported shapes")
    again = [o for o in shape_objects(bpy, "shape_ldm") if o not in objs]
    for a, o in zip(again, objs):
        np.testing.assert_allclose(world_vertices(a), world_vertices(o), atol=1e-6)


def test_generate_shape_from_an_image_datablock_and_an_image_file(scene, connected, tmp_path):
    addon, bpy = scene, scene.bpy
    image, _ = make_image(bpy, "Concept art", 40, 28)
    set_shape(addon, prompt="ignored when an image is used", shape_input="IMAGE", shape_image=image)
    [obj], _ = run_and_wait(addon, bpy.ops.latentforge.generate_shape, "shape_ldm", 1, "the shape from the image")
    check_shape_object(obj, "shape_ldm", 0, prompt="")
    assert obj.name == "Concept art" and obj["latentforge_image"] == "Concept art"
    assert fetch_result(connected, obj["latentforge_job_id"]).fields["metadata"]["image"] is True

    path = tmp_path / "chair sketch.png"
    image.filepath_raw, image.file_format = str(path), "PNG"
    image.save()
    n_images = len(bpy.data.images)
    set_shape(addon, shape_input="FILE", shape_image_path=str(path))
    [from_file], _ = run_and_wait(addon, bpy.ops.latentforge.generate_shape, "shape_ldm", 1, "the shape from the file")
    assert from_file.name == "chair sketch.png" and from_file["latentforge_image"] == "chair sketch.png"
    assert len(bpy.data.images) == n_images  # the file was read by the existing datablock, nothing left behind


def test_variations_of_selected_suzanne_are_distinct_and_stand_next_to_it(scene, connected):
    addon, bpy = scene, scene.bpy
    bpy.ops.mesh.primitive_monkey_add(location=(-1.0, 0.5, 1.0), rotation=(0.0, 0.0, 0.4))
    suzanne = bpy.context.active_object
    before = world_vertices(suzanne)
    lo_src, hi_src = before.min(axis=0), before.max(axis=0)
    set_shape(addon, shape_variation_count=3, shape_strength=0.7)
    objs, _ = run_and_wait(addon, bpy.ops.latentforge.shape_variations, "shape_variations", 3, "three variations")
    assert [o.name for o in objs] == [f"Suzanne variation {i}" for i in (1, 2, 3)]
    verts = [world_vertices(o) for o in objs]
    for i, o in enumerate(objs):
        check_shape_object(o, "shape_variations", i)
        assert o["latentforge_source"] == "Suzanne" and o["latentforge_strength"] == pytest.approx(0.7)
    for i in range(3):
        for j in range(i + 1, 3):
            local_i, local_j = verts[i] - objs[i].location, verts[j] - objs[j].location
            assert local_i.shape != local_j.shape or not np.allclose(local_i, local_j), (i, j)
    # A row right of Suzanne, GAP apart, at her height and depth (the backend puts each variant on her).
    boxes = [world_box(o) for o in objs]
    assert boxes[0][0][0] == pytest.approx(hi_src[0] + GAP, abs=EPS)
    for (_, hi), (lo, _) in itertools.pairwise(boxes):
        assert lo[0] - hi[0] == pytest.approx(GAP, abs=EPS)
    half = (hi_src - lo_src).max() / 2 * 1.1 + EPS  # the model box around her, at her size
    centre = (lo_src + hi_src) / 2
    for lo, hi in boxes:
        assert (lo[1:] >= centre[1:] - half).all() and (hi[1:] <= centre[1:] + half).all()
    np.testing.assert_array_equal(world_vertices(suzanne), before)  # the source is untouched


def test_interpolate_between_two_selected_meshes(scene, connected):
    addon, bpy = scene, scene.bpy
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=(-3.0, 0.0, 0.0))
    cube = bpy.context.active_object
    bpy.ops.mesh.primitive_ico_sphere_add(radius=1.0, subdivisions=2, location=(3.0, 0.0, 1.0))
    cube.select_set(True)  # both selected, the sphere active: from the cube to the sphere
    set_shape(addon, shape_interpolate_count=3)
    objs, _ = run_and_wait(addon, bpy.ops.latentforge.shape_interpolate, "shape_interpolate", 3, "in-between shapes")
    assert [o.name for o in objs] == [f"Cube→Icosphere {i}/3" for i in (1, 2, 3)]
    centres = []
    for i, o in enumerate(objs):
        check_shape_object(o, "shape_interpolate", i)
        assert o["latentforge_weight"] == pytest.approx((i + 1) / 4)
        lo, hi = world_box(o)
        centres.append((lo + hi) / 2)
        np.testing.assert_allclose(np.array(o.location), centres[-1], atol=1e-5)  # origin at its box centre
    xs = [c[0] for c in centres]
    assert -3.0 < xs[0] < xs[1] < xs[2] < 3.0, xs  # between them, from the cube to the sphere


def test_bad_input_is_a_clear_error_nothing_is_sent_and_the_backend_carries_on(scene, connected, tmp_path):
    addon, bpy = scene, scene.bpy
    sess = addon.session
    ops = bpy.ops.latentforge

    def refused(operator, match: str) -> None:
        addon.state.last_error = ""
        with pytest.raises(RuntimeError, match=match):
            operator()
        assert addon.state.stage == "failed" and not sess.jobs.pending
        assert re.search(match, addon.state.last_error), addon.state.last_error

    set_shape(addon, prompt="   ")
    refused(ops.generate_shape, "prompt is empty and no image is chosen")
    set_shape(addon, shape_input="IMAGE", shape_image=None)
    refused(ops.generate_shape, "no image is picked")
    dot, _ = make_image(bpy, "Dot", 1, 1)
    set_shape(addon, shape_input="IMAGE", shape_image=dot)
    refused(ops.generate_shape, "'Dot' is 1×1 pixels; Generate Shape needs at least 16×16")
    notes = tmp_path / "notes.png"
    notes.write_text("this is not an image")
    n_images = len(bpy.data.images)
    set_shape(addon, shape_input="FILE", shape_image_path=str(notes))
    refused(ops.generate_shape, "could not read image .*notes.png")
    assert len(bpy.data.images) == n_images
    set_shape(addon, shape_input="FILE", shape_image_path=str(tmp_path / "nowhere.png"))
    refused(ops.generate_shape, "nowhere.png' does not exist")

    mesh = bpy.data.meshes.new("Wire")
    mesh.from_pydata([(0, 0, 0), (1, 0, 0), (1, 1, 0)], [(0, 1), (1, 2)], [])
    wire = bpy.data.objects.new("Wire", mesh)
    bpy.context.collection.objects.link(wire)
    make_active(bpy, wire)
    set_shape(addon)
    refused(ops.shape_variations, "'Wire' has no faces")
    refused(ops.shape_interpolate, r"exactly two meshes to interpolate between \(1 selected\)")
    bpy.ops.mesh.primitive_cube_add(location=(3.0, 0.0, 0.0))
    wire.select_set(True)
    refused(ops.shape_interpolate, "'Wire' has no faces")

    # Nothing reached the backend: its job list (which replaces the whole list, sentinel row included) is empty.
    sentinel = addon.state.jobs.add()
    sentinel.name = sentinel.job_id = "sentinel"
    assert ops.refresh_jobs() == {"FINISHED"}
    addon.pump(lambda: "sentinel" not in addon.state.jobs, 30, "the job list")
    assert len(addon.state.jobs) == 0, [j.job_id for j in addon.state.jobs]

    # Past the add-on's check, the backend refuses a 1×1 image too, and the message shows up.
    sess.submit_job("shape_ldm", {"model": "tiny-random"}, {"image": np.zeros((1, 1, 4), np.uint8)}, None)
    addon.pump(lambda: addon.state.last_error, 30, "the backend's error")
    assert "1×1 pixels" in addon.state.last_error and addon.state.stage == "failed"

    # ... and it carries on.
    set_shape(addon)
    [obj], _ = run_and_wait(addon, ops.generate_shape, "shape_ldm", 1, "a shape after the errors")
    assert obj.name == PROMPT and addon.state.last_error == ""


def test_cancel_removes_the_shape_preview(scene, connected):
    addon, bpy = scene, scene.bpy
    # A fine final grid keeps the job busy after the preview (a 33³ grid per sample) has been shown.
    set_shape(addon, shape_num_samples=2, shape_grid_resolution=320)
    n_objects = len(bpy.data.objects)
    assert bpy.ops.latentforge.generate_shape() == {"FINISHED"}
    pump_counting_previews(addon, lambda: len(preview_objects(bpy)) == 1, "the shape preview", timeout_s=60)
    [preview] = preview_objects(bpy)
    colors = np.empty(len(preview.data.vertices) * 4, dtype=np.float32)
    preview.data.color_attributes["LatentForge Color"].data.foreach_get("color", colors)
    assert len(np.unique(colors.reshape(-1, 4)[:, :3].round(3), axis=0)) == 2  # both samples, each tinted
    job_id = addon.state.active_job_id
    assert job_id and bpy.ops.latentforge.cancel_job() == {"FINISHED"}
    pump_counting_previews(addon, lambda: addon.state.stage == "cancelled", "the cancellation", timeout_s=30)
    assert preview_objects(bpy) == [] and len(bpy.data.objects) == n_objects
    assert addon.state.jobs[job_id].status == "cancelled" and shape_objects(bpy, "shape_ldm") == []
