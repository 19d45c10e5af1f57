"""Point clouds as inputs in real Blender (the ``bpy`` module): Denoise Selected and Variations of Selected on a scan.

- Without a backend: the operators are available on a ``POINTCLOUD`` object, the panel says what is needed, a
  method that takes no point cloud (Michelangelo) refuses one by name, and what is read is the world-space points.
- With a real backend on loopback: LION's Denoise Selected on a faceless mesh (a scan imported as loose vertices) and
  on a ``POINTCLOUD`` object, each moved, rotated and scaled; the clean shapes stand where the scan stands; Variations
  of Selected on the point cloud makes a row beside it; Interpolate goes from one to the other; the denoise job is
  listed and imported again after a reconnect.

The scan: 400 points on a sphere of radius 0.5 (local units) with 1 % noise, seeded.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import test_blender_addon as base
from test_blender_addon import make_active
from test_blender_generate import panel_labels, draw_panel
from test_blender_methods import reconnect_and_import, run_and_wait, set_lion

addon, scene, connected = base.addon, base.scene, base.connected

pytestmark = [
    pytest.mark.blender,
    pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs the bpy module (Blender as a module)"),
]

LOCATION, ROTATION, SCALE = (1.5, -2.0, 0.75), (0.4, 0.2, -0.9), (1.2, 0.8, 1.0)


def scan_points(n: int = 400, seed: int = 0) -> np.ndarray:
    """(n, 3) float32 local points: a sphere of radius 0.5 with 1 % noise."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return (d * 0.5 + rng.normal(scale=0.005, size=(n, 3))).astype(np.float32)


def place(bpy, obj):
    obj.location, obj.rotation_euler, obj.scale = LOCATION, ROTATION, SCALE
    bpy.context.view_layer.update()
    return obj


def faceless_scan(bpy, name: str = "Scan"):
    """A mesh of loose vertices (what importing a PLY of vertices makes), moved, rotated and scaled."""
    points = scan_points()
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(points))
    mesh.vertices.foreach_set("co", points.reshape(-1))
    mesh.update()
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.collection.objects.link(obj)
    return place(bpy, obj)


def point_cloud_scan(addon, name: str = "Cloud"):
    """A ``POINTCLOUD`` object of the scan's points, moved, rotated and scaled."""
    bpy, mesh_io = addon.bpy, addon.module("mesh_io")
    obj = mesh_io.new_point_cloud_object(bpy.context, name, scan_points(seed=1), None, np.zeros(3), 0.01)
    assert obj.type == "POINTCLOUD"
    return place(bpy, obj)


def world_points(obj, local: np.ndarray) -> np.ndarray:
    m = np.array(obj.matrix_world, dtype=np.float64)
    return local.astype(np.float64) @ m[:3, :3].T + m[:3, 3]


def world_of_result(obj, mesh_io) -> np.ndarray:
    """A result object's points (a point cloud's) or vertices (a mesh's) in world space."""
    if obj.type == "POINTCLOUD":
        return world_points(obj, mesh_io.point_cloud_arrays(obj)[0])
    co = np.empty(len(obj.data.vertices) * 3, dtype=np.float32)
    obj.data.vertices.foreach_get("co", co)
    return world_points(obj, co.reshape(-1, 3))


def assert_on_the_scan(objs, scan_world: np.ndarray, mesh_io) -> None:
    """Each result's centre (mean point, or box centre for meshes) is within 0.15 m of the scan's centre; the scan
    stands 2.6 m from the origin, so a shape left at the origin or placed in a row would fail."""
    centre = scan_world.mean(axis=0)
    for o in objs:
        v = world_of_result(o, mesh_io)
        mid = v.mean(axis=0) if o.type == "POINTCLOUD" else (v.min(axis=0) + v.max(axis=0)) / 2
        assert np.linalg.norm(mid - centre) < 0.15, (o.name, mid, centre)


# ------------------------------------------------------------------------------------------------- no backend

def test_scans_are_read_in_world_space_and_the_operators_say_what_they_need(scene):
    addon, bpy = scene, scene.bpy
    mesh_io, operators = addon.module("mesh_io"), addon.module("operators")
    depsgraph = bpy.context.evaluated_depsgraph_get()
    scan = faceless_scan(bpy)
    cloud = point_cloud_scan(addon)
    for obj, seed in ((scan, 0), (cloud, 1)):
        arrays = mesh_io.evaluated_shape_arrays(obj, depsgraph, points=True)
        assert isinstance(arrays, mesh_io.PointArrays) and set(arrays.wire_arrays()) == {"points.v_pos"}
        np.testing.assert_allclose(arrays.v_pos, world_points(obj, scan_points(seed=seed)), atol=1e-5)
    with pytest.raises(ValueError, match="'Scan' has no faces after modifiers"):
        mesh_io.evaluated_shape_arrays(scan, depsgraph, points=False)
    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.active_object
    assert isinstance(mesh_io.evaluated_shape_arrays(cube, depsgraph, points=True), mesh_io.MeshArrays)

    s = addon.settings
    s.shape_method = "lion_generate"
    make_active(bpy, cloud)
    assert bpy.ops.latentforge.denoise_selected.poll() and bpy.ops.latentforge.shape_variations.poll()
    assert not bpy.ops.latentforge.shapes_from_blockout.poll()  # a blockout must have faces
    labels = panel_labels(draw_panel(bpy, "LATENTFORGE_PT_shape"))
    assert "Clean up a noisy mesh or scan" in labels and "Cleans 'Cloud'" in labels
    assert "Variations of a mesh or point cloud" in labels and "Varies 'Cloud'" in labels
    scan.select_set(True)
    assert operators.interpolation_pair(bpy.context, points=True) == (scan, cloud)
    assert "From 'Scan' to 'Cloud'" in panel_labels(draw_panel(bpy, "LATENTFORGE_PT_shape"))
    with pytest.raises(ValueError, match="'Cloud' is a POINTCLOUD, not a mesh: select two meshes to interpolate"):
        operators.interpolation_pair(bpy.context)
    bpy.ops.object.light_add(type="POINT")
    assert not bpy.ops.latentforge.denoise_selected.poll()
    with pytest.raises(ValueError, match="'Point' is a LIGHT, not a mesh or a point cloud: select a mesh or a point "
                                         "cloud to denoise"):
        operators.selected_mesh(bpy.context, "denoise", points=True)

    s.shape_method = "shape_ldm"  # Michelangelo's variations take meshes with faces only
    make_active(bpy, cloud)
    with pytest.raises(ValueError, match="'Cloud' is a POINTCLOUD, not a mesh: select a mesh to make variations of"):
        operators.shape_source(bpy.context, "make variations of", "shape_variations")
    make_active(bpy, scan)
    with pytest.raises(ValueError, match="'Scan' has no faces after modifiers; select a mesh with faces"):
        operators.shape_source(bpy.context, "make variations of", "shape_variations")
    with pytest.raises(RuntimeError, match="Variations: 'Scan' has no faces after modifiers; select a mesh with "
                                           "faces"):
        bpy.ops.latentforge.shape_variations()
    s.property_unset("shape_method")


# ------------------------------------------------------------------------------------------ with a real backend

def test_denoise_a_faceless_scan_and_a_point_cloud_where_they_stand(scene, connected):
    addon, bpy = scene, scene.bpy
    mesh_io = addon.module("mesh_io")
    set_lion(addon)
    addon.settings["lion_denoise.tau"] = 10
    jobs = []
    scan, cloud = faceless_scan(bpy), point_cloud_scan(addon)
    for obj, seed in ((scan, 0), (cloud, 1)):
        make_active(bpy, obj)
        scan_world = world_points(obj, scan_points(seed=seed))
        objs = run_and_wait(addon, bpy.ops.latentforge.denoise_selected, "lion_denoise", 2, f"denoise {obj.name}")
        assert sorted(o["latentforge_result_kind"] for o in objs) == ["mesh", "points"]
        assert all(o["latentforge_source"] == obj.name for o in objs)
        assert {o.name for o in objs} == {f"{obj.name} denoised", f"{obj.name} denoised points"}
        assert_on_the_scan(objs, scan_world, mesh_io)
        assert obj.visible_get()  # the scan is left alone
        jobs.append((objs[0]["latentforge_job_id"], scan_world))

    # Variations of Selected on the point cloud: the variants go in a row starting right of it
    variants = run_and_wait(addon, bpy.ops.latentforge.shape_variations, "lion_variations", None, "variations")
    assert variants and all(o["latentforge_source"] == "Cloud" for o in variants)
    right = scan_world[:, 0].max()
    assert all(world_of_result(o, mesh_io)[:, 0].min() > right for o in variants)

    # Interpolate from the faceless scan to the point cloud (both sent as points)
    addon.settings["lion_interpolate.ode_steps"] = 2
    make_active(bpy, scan)
    scan.select_set(True)
    cloud.select_set(True)
    between = run_and_wait(addon, bpy.ops.latentforge.shape_interpolate, "lion_interpolate", None, "in-betweens")
    assert {(o["latentforge_source_a"], o["latentforge_source_b"]) for o in between} == {("Cloud", "Scan")}

    job_id, scan_world = jobs[0]  # after a reconnect, from the job list: the same place
    before = {o.name for o in bpy.data.objects}
    reconnect_and_import(addon, job_id)
    addon.pump(lambda: len({o.name for o in bpy.data.objects} - before) >= 2, 60, "the imported result")
    again = [o for o in bpy.data.objects if o.name not in before]
    assert {o["latentforge_job_id"] for o in again} == {job_id}
    assert_on_the_scan(again, scan_world, mesh_io)
