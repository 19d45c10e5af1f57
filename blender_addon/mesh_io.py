"""Mesh and image data between Blender and numpy arrays (bpy side; main thread only).

Only bpy <-> arrays lives here: evaluated mesh arrays, loop triangles, loop UVs, new triangle meshes and objects,
vertex colours, image pixels. What a result *means* (which object it goes on, where new objects stand, names,
custom properties) is in :mod:`.results`; materials are in :mod:`.materials`. Bulk data moves only through
``foreach_get``/``foreach_set`` and numpy (never per-vertex Python loops); the array logic lives in
:mod:`.core.arrays` (bpy-free, tested without Blender).

Frames: ``v_pos`` is in Blender's world frame (object transform applied; right-handed, Z up, metres) unless a
function says local. Wire images have row 0 at the top; Blender's ``Image.pixels`` start bottom-left.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import bpy
import mathutils
import numpy as np

from .core import arrays as lf_arrays

UV_MAP_NAME = "LatentForge"
"""Name of the UV map the add-on creates when the backend unwrapped the mesh (xatlas) or for a new object."""

COLOR_ATTRIBUTE_NAME = "LatentForge Color"
"""Colour attribute (point domain, float RGBA) holding a result's or a partial mesh's ``v_color``."""

POINT_COLOR_ATTRIBUTE_NAME = "Col"
"""Colour attribute (point domain, float RGBA) of a result point cloud's colours."""

POINTS_NODE_GROUP_NAME = "LatentForge Points"
"""Geometry-nodes group of the fallback point-cloud objects (mesh vertices → points) in a Blender without
point-cloud conversion."""

MIN_IMAGE_SIDE = 16
"""Smallest width and height of an image sent as a condition, pixels: the backend's limit
(``backend.michelangelo.conditioner.MIN_IMAGE_SIDE``), checked here too so a too-small image is refused before
anything is sent."""


@dataclass
class MeshArrays:
    """A triangulated evaluated mesh, ready to send.

    Attributes:
        v_pos: (N,3) float32 world-space vertex positions, metres.
        t_pos_idx: (F,3) int32 vertex indices per triangle (Blender's ``loop_triangles`` order).
        tri_loops: (F,3) int32 loop index of each triangle corner in the evaluated mesh.
        uv: (L,2) float32 UVs per loop of the requested UV map, or None.
        uv_idx: (F,3) int32 (= ``tri_loops``) indices into ``uv``, or None.
        n_loops: L, loops of the evaluated mesh.
        same_loops_as_base: True when the evaluated mesh has the base mesh's vertices and loops (same count, same
            loop -> vertex map), so per-loop data computed on it can be written to the base mesh.
    """

    v_pos: np.ndarray
    t_pos_idx: np.ndarray
    tri_loops: np.ndarray
    uv: np.ndarray | None
    uv_idx: np.ndarray | None
    n_loops: int
    same_loops_as_base: bool

    def wire_arrays(self, group: str = "mesh") -> dict[str, np.ndarray]:
        """``{"mesh.v_pos", "mesh.t_pos_idx"[, "mesh.uv", "mesh.uv_idx"]}`` for a ``submit``."""
        out = {f"{group}.v_pos": self.v_pos, f"{group}.t_pos_idx": self.t_pos_idx}
        if self.uv is not None:
            out[f"{group}.uv"] = self.uv
            out[f"{group}.uv_idx"] = self.uv_idx
        return out


def loop_vertex_index(mesh: bpy.types.Mesh) -> np.ndarray:
    """(L,) int32 vertex index of every loop (face corner) of ``mesh``."""
    out = np.empty(len(mesh.loops), dtype=np.int32)
    mesh.loops.foreach_get("vertex_index", out)
    return out


def loop_triangles(mesh: bpy.types.Mesh) -> tuple[np.ndarray, np.ndarray]:
    """``(t_pos_idx (F,3) int32, tri_loops (F,3) int32)`` of a mesh (computes its loop triangles)."""
    mesh.calc_loop_triangles()
    n_tris = len(mesh.loop_triangles)
    t_pos_idx = np.empty(n_tris * 3, dtype=np.int32)
    tri_loops = np.empty(n_tris * 3, dtype=np.int32)
    mesh.loop_triangles.foreach_get("vertices", t_pos_idx)
    mesh.loop_triangles.foreach_get("loops", tri_loops)
    return t_pos_idx.reshape(n_tris, 3), tri_loops.reshape(n_tris, 3)


def read_loop_uvs(mesh: bpy.types.Mesh, uv_layer_name: str) -> np.ndarray:
    """(L,2) float32 UVs of the UV map ``uv_layer_name``. Raises KeyError when the mesh has no such map."""
    layer = mesh.uv_layers.get(uv_layer_name)
    if layer is None:
        raise KeyError(f"mesh {mesh.name!r} has no UV map {uv_layer_name!r}")
    out = np.empty(len(mesh.loops) * 2, dtype=np.float32)
    layer.uv.foreach_get("vector", out)
    return out.reshape(-1, 2)


def write_loop_uvs(mesh: bpy.types.Mesh, uv_layer_name: str, loop_uv: np.ndarray,
                   update: bool = True) -> bpy.types.MeshUVLoopLayer:
    """Write (L,2) UVs into the UV map ``uv_layer_name`` (created if missing) and make it active.

    ``update=False`` skips ``mesh.update()`` for callers that update once after all their writes.

    Raises:
        ValueError: ``loop_uv`` is not (len(mesh.loops), 2).
    """
    if loop_uv.shape != (len(mesh.loops), 2):
        raise ValueError(f"loop_uv is {loop_uv.shape}, mesh {mesh.name!r} has {len(mesh.loops)} loops")
    layer = mesh.uv_layers.get(uv_layer_name) or mesh.uv_layers.new(name=uv_layer_name)
    layer.uv.foreach_set("vector", np.ascontiguousarray(loop_uv, dtype=np.float32).reshape(-1))
    mesh.uv_layers.active = layer
    if update:
        mesh.update()
    return layer


def evaluated_mesh_arrays(obj: bpy.types.Object, depsgraph: bpy.types.Depsgraph,
                          uv_layer_name: str | None) -> MeshArrays:
    """Triangulate ``obj``'s evaluated mesh (modifiers applied) in world space.

    Args:
        obj: a mesh object (original, not evaluated); in edit mode its edits are flushed first.
        depsgraph: ``context.evaluated_depsgraph_get()``.
        uv_layer_name: UV map to read (modifiers carry named maps through), or None to send no UVs.

    Raises:
        ValueError: the object is not a mesh, or its evaluated mesh has no faces.
        KeyError: the evaluated mesh lacks ``uv_layer_name``.
    """
    if obj.type != "MESH":
        raise ValueError(f"{obj.name!r} is a {obj.type}, not a mesh")
    if obj.mode == "EDIT":
        obj.update_from_editmode()
        depsgraph.update()
    obj_eval = obj.evaluated_get(depsgraph)
    mesh = obj_eval.to_mesh()
    try:
        if len(mesh.polygons) == 0:
            raise ValueError(f"{obj.name!r} has no faces after modifiers")
        co = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
        mesh.vertices.foreach_get("co", co)
        v_pos = lf_arrays.transform_points(co.reshape(-1, 3), np.array(obj_eval.matrix_world, dtype=np.float64))
        t_pos_idx, tri_loops = loop_triangles(mesh)
        base = obj.data
        same = (len(mesh.vertices) == len(base.vertices) and len(mesh.loops) == len(base.loops)
                and np.array_equal(loop_vertex_index(mesh), loop_vertex_index(base)))
        uv = uv_idx = None
        if uv_layer_name is not None:
            uv, uv_idx = lf_arrays.loop_uvs_to_wire(read_loop_uvs(mesh, uv_layer_name), tri_loops)
        return MeshArrays(v_pos, t_pos_idx, tri_loops, uv, uv_idx, len(mesh.loops), bool(same))
    finally:
        obj_eval.to_mesh_clear()


@dataclass
class PointArrays:
    """A point cloud to send (a ``POINTCLOUD`` object, or a mesh of loose vertices such as an imported scan).

    Attributes:
        v_pos: (N,3) float32 world-space positions, metres (object transform applied, modifiers evaluated).
    """

    v_pos: np.ndarray

    def wire_arrays(self, group: str = "points") -> dict[str, np.ndarray]:
        """``{"points.v_pos"}`` for a ``submit`` (positions only: no pipeline reads a scan's colours)."""
        return {f"{group}.v_pos": self.v_pos}


def evaluated_point_arrays(obj: bpy.types.Object, depsgraph: bpy.types.Depsgraph) -> PointArrays:
    """The evaluated points of ``obj`` in world space: a ``POINTCLOUD``'s ``position`` attribute, or a mesh's
    vertices (faces, if any, ignored), each through ``matrix_world``.

    Raises:
        ValueError: the object is neither a mesh nor a point cloud, or it has no point after modifiers.
    """
    if obj.type not in ("MESH", "POINTCLOUD"):
        raise ValueError(f"{obj.name!r} is a {obj.type}, not a mesh or a point cloud")
    if obj.mode == "EDIT":
        obj.update_from_editmode()
        depsgraph.update()
    obj_eval = obj.evaluated_get(depsgraph)
    matrix = np.array(obj_eval.matrix_world, dtype=np.float64)
    if obj.type == "POINTCLOUD":
        data = obj_eval.data
        co = np.empty(len(data.points) * 3, dtype=np.float32)
        if len(co):
            data.attributes["position"].data.foreach_get("vector", co)
    else:
        mesh = obj_eval.to_mesh()
        try:
            co = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
            mesh.vertices.foreach_get("co", co)
        finally:
            obj_eval.to_mesh_clear()
    if len(co) == 0:
        raise ValueError(f"{obj.name!r} has no points after modifiers")
    return PointArrays(lf_arrays.transform_points(co.reshape(-1, 3), matrix))


def evaluated_shape_arrays(obj: bpy.types.Object, depsgraph: bpy.types.Depsgraph,
                           points: bool) -> MeshArrays | PointArrays:
    """What a shape operator sends for ``obj``: a mesh with faces as :func:`evaluated_mesh_arrays` (no UVs); with
    ``points`` (the pipeline takes a point cloud), a ``POINTCLOUD`` object or a mesh without faces (a scan) as
    :func:`evaluated_point_arrays`.

    Raises:
        ValueError: not a mesh (or, with ``points``, a point cloud); a mesh without faces when ``points`` is False;
            nothing to send.
    """
    if points and obj.type == "POINTCLOUD":
        return evaluated_point_arrays(obj, depsgraph)
    try:
        return evaluated_mesh_arrays(obj, depsgraph, None)
    except ValueError:
        if not points or obj.type != "MESH":
            raise
    return evaluated_point_arrays(obj, depsgraph)  # a mesh without faces: its vertices are the points


def ensure_uv_map(context: bpy.types.Context, obj: bpy.types.Object, angle_limit_deg: float = 66.0,
                  island_margin: float = 0.02) -> tuple[str, bool]:
    """Return the name of ``obj``'s active UV map, making one with Smart UV Project when it has none.

    Runs ``bpy.ops.uv.smart_project`` on ``obj`` alone (other selected objects are deselected for the call and
    reselected after; mode, active object and selection are restored).

    Returns:
        ``(uv_map_name, created)``.
    Raises:
        RuntimeError: Smart UV Project did not produce a UV map.
    """
    mesh = obj.data
    if mesh.uv_layers.active is not None:
        return mesh.uv_layers.active.name, False
    view_layer = context.view_layer
    prev_active = view_layer.objects.active
    prev_selected = [o for o in view_layer.objects if o.select_get()]
    prev_mode = obj.mode
    try:
        if prev_active is not None and prev_active.mode != "OBJECT":
            bpy.ops.object.mode_set(mode="OBJECT")
        for o in prev_selected:
            o.select_set(False)
        obj.select_set(True)
        view_layer.objects.active = obj
        bpy.ops.object.mode_set(mode="EDIT")
        bpy.ops.mesh.select_all(action="SELECT")
        bpy.ops.uv.smart_project(angle_limit=math.radians(angle_limit_deg), island_margin=island_margin)
        bpy.ops.object.mode_set(mode="OBJECT")
    finally:
        obj.select_set(False)
        for o in prev_selected:
            o.select_set(True)
        view_layer.objects.active = prev_active
        if prev_active is not None and prev_mode != "OBJECT" and prev_active is obj:
            bpy.ops.object.mode_set(mode=prev_mode)
    if mesh.uv_layers.active is None:
        raise RuntimeError(f"Smart UV Project made no UV map on {obj.name!r}")
    return mesh.uv_layers.active.name, True



# ------------------------------------------------------------------------------------------------- meshes

def set_mesh_triangles(mesh: bpy.types.Mesh, v_pos: np.ndarray, t_pos_idx: np.ndarray) -> None:
    """Replace all geometry of ``mesh`` by the triangles ``t_pos_idx`` (F,3) int over ``v_pos`` (N,3) float.

    ``mesh.clear_geometry()`` first drops everything (vertices, faces, UV maps, attributes) but keeps the datablock,
    its name, materials and users, so an object showing it is updated in place. Bulk data goes through the
    attribute API (``position``, ``.corner_vert``) with one ``foreach_set`` each; index ranges and finite values
    were checked by the protocol, so instead of the slow ``mesh.validate()`` only what it would silently delete is
    refused here. The caller runs ``mesh.update(calc_edges=True)`` after its own writes (UVs, colours).

    Raises:
        ValueError: wrong shapes, or a triangle uses the same vertex twice (degenerate by index).
    """
    v_pos = np.asarray(v_pos)
    t_pos_idx = np.ascontiguousarray(t_pos_idx, dtype=np.int32)
    if v_pos.ndim != 2 or v_pos.shape[1] != 3:
        raise ValueError(f"v_pos must be (N,3), got {v_pos.shape}")
    if t_pos_idx.ndim != 2 or t_pos_idx.shape[1] != 3:
        raise ValueError(f"t_pos_idx must be (F,3), got {t_pos_idx.shape}")
    degenerate = ((t_pos_idx[:, 0] == t_pos_idx[:, 1]) | (t_pos_idx[:, 1] == t_pos_idx[:, 2])
                  | (t_pos_idx[:, 0] == t_pos_idx[:, 2]))
    if degenerate.any():
        raise ValueError(f"result mesh has {int(degenerate.sum())} triangles that repeat a vertex "
                         f"(first: triangle {int(np.argmax(degenerate))})")
    n_tris = t_pos_idx.shape[0]
    mesh.clear_geometry()
    mesh.vertices.add(v_pos.shape[0])
    mesh.loops.add(n_tris * 3)
    mesh.polygons.add(n_tris)
    mesh.attributes["position"].data.foreach_set("vector", np.ascontiguousarray(v_pos, dtype=np.float32).reshape(-1))
    mesh.attributes[".corner_vert"].data.foreach_set("value", t_pos_idx.reshape(-1))
    mesh.polygons.foreach_set("loop_start", np.arange(0, n_tris * 3, 3, dtype=np.int32))


def new_triangle_mesh(name: str, v_pos: np.ndarray, t_pos_idx: np.ndarray) -> bpy.types.Mesh:
    """A new mesh datablock written by :func:`set_mesh_triangles`; removed again if that raises ValueError."""
    mesh = bpy.data.meshes.new(name)
    try:
        set_mesh_triangles(mesh, v_pos, t_pos_idx)
    except ValueError:
        bpy.data.meshes.remove(mesh)
        raise
    return mesh


def write_vertex_colors(mesh: bpy.types.Mesh, v_color: np.ndarray,
                        name: str = COLOR_ATTRIBUTE_NAME) -> bpy.types.Attribute:
    """Store per-vertex colours as the colour attribute ``name`` (point domain, float RGBA; made active).

    Args:
        v_color: (N,3) or (N,4) float linear RGB(A) in [0, 1], N = ``len(mesh.vertices)``; alpha 1 when absent.

    Raises:
        ValueError: wrong shape.
    """
    v_color = np.asarray(v_color, dtype=np.float32)
    if v_color.ndim != 2 or v_color.shape[1] not in (3, 4) or v_color.shape[0] != len(mesh.vertices):
        raise ValueError(f"v_color is {v_color.shape}, mesh {mesh.name!r} has {len(mesh.vertices)} vertices "
                         "(expected (N,3) or (N,4))")
    rgba = np.ones((v_color.shape[0], 4), dtype=np.float32)
    rgba[:, :v_color.shape[1]] = v_color
    attr = mesh.color_attributes.get(name)
    if attr is not None and (attr.domain != "POINT" or attr.data_type != "FLOAT_COLOR"):
        mesh.color_attributes.remove(attr)
        attr = None
    if attr is None:
        attr = mesh.color_attributes.new(name, "FLOAT_COLOR", "POINT")
    attr.data.foreach_set("color", rgba.reshape(-1))
    mesh.color_attributes.active_color = attr
    return attr


def link_to_scene(context: bpy.types.Context, obj: bpy.types.Object) -> None:
    """Link ``obj`` to the active collection (the scene's master collection when the context has none)."""
    collection = getattr(context, "collection", None) or context.scene.collection
    collection.objects.link(obj)


def remove_object(obj: bpy.types.Object) -> None:
    """Delete ``obj`` and its mesh datablock when nothing else uses it."""
    mesh = obj.data
    bpy.data.objects.remove(obj)
    if mesh is not None and mesh.users == 0:
        bpy.data.meshes.remove(mesh)


def new_uv_mesh_object(context: bpy.types.Context, name: str, v_pos: np.ndarray, t_pos_idx: np.ndarray,
                       uv: np.ndarray, uv_idx: np.ndarray) -> bpy.types.Object:
    """A new triangle-mesh object (identity transform, vertices in world space) with the UV map "LatentForge",
    linked to the active collection. Geometry is written by :func:`set_mesh_triangles`.

    Raises:
        ValueError: a triangle uses the same vertex twice (degenerate by index), or wrong shapes.
    """
    mesh = new_triangle_mesh(name, v_pos, t_pos_idx)
    write_loop_uvs(mesh, UV_MAP_NAME, np.asarray(uv, dtype=np.float32)[np.asarray(uv_idx).reshape(-1)], update=False)
    mesh.update(calc_edges=True)
    obj = bpy.data.objects.new(name, mesh)
    link_to_scene(context, obj)
    return obj


def new_mesh_object(context: bpy.types.Context, name: str, v_pos: np.ndarray, t_pos_idx: np.ndarray,
                    location: np.ndarray, smooth: bool = True) -> bpy.types.Object:
    """A new triangle-mesh object at ``location`` (no rotation, scale 1), linked to the active collection.

    Args:
        v_pos: (N,3) float32 vertex positions relative to ``location`` (the object's local frame), metres.
        t_pos_idx: (F,3) int32 triangles. location: (3,) world position of the object's origin.
        smooth: smooth shading (per-face ``sharp_face`` off) or flat.

    Raises:
        ValueError: wrong shapes or degenerate triangles (nothing is left behind).
    """
    mesh = new_triangle_mesh(name, v_pos, t_pos_idx)
    mesh.update(calc_edges=True)
    if smooth:
        mesh.shade_smooth()
    else:
        mesh.shade_flat()
    obj = bpy.data.objects.new(name, mesh)
    # matrix_world too (it sets location), so that it is right before the next depsgraph update
    obj.matrix_world = mathutils.Matrix.Translation([float(x) for x in location])
    link_to_scene(context, obj)
    return obj


def base_tri_loops_matching(obj: bpy.types.Object, t_pos_idx: np.ndarray,
                            tri_loops: np.ndarray | None) -> np.ndarray:
    """Loop per triangle corner on ``obj``'s base mesh for the result triangles ``t_pos_idx``.

    Args:
        t_pos_idx: (F,3) int32 vertex indices of the result's triangles (the triangles that were sent).
        tri_loops: (F,3) int32 loops recorded at submit time, or None (tried first when given).

    Returns:
        (F,3) int32 loop indices into ``obj.data.loops``.

    Raises:
        ValueError: the base mesh's loops do not carry the result's triangles (other topology).
    """
    mesh = obj.data
    loop_vertex = loop_vertex_index(mesh)
    candidates = [] if tri_loops is None else [tri_loops]
    candidates.append(loop_triangles(mesh)[1])
    for cand in candidates:
        if cand.shape == t_pos_idx.shape and cand.max(initial=-1) < len(loop_vertex) \
                and np.array_equal(loop_vertex[cand], t_pos_idx):
            return cand
    raise ValueError(f"the result's triangles do not match the mesh of {obj.name!r} (did its topology change?)")


# ------------------------------------------------------------------------------------------------- point clouds

def _points_node_group(material: bpy.types.Material | None) -> bpy.types.NodeTree:
    """The geometry-nodes group :data:`POINTS_NODE_GROUP_NAME` (made once): Mesh to Points (radius from the input
    "Radius") then Set Material, so that a vertices-only mesh evaluates to a point cloud."""
    group = bpy.data.node_groups.get(POINTS_NODE_GROUP_NAME)
    if group is not None:
        return group
    group = bpy.data.node_groups.new(POINTS_NODE_GROUP_NAME, "GeometryNodeTree")
    group.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    radius = group.interface.new_socket("Radius", in_out="INPUT", socket_type="NodeSocketFloat")
    radius.default_value, radius.min_value = 0.005, 0.0
    group.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    nodes, links = group.nodes, group.links
    inp, out = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")
    to_points = nodes.new("GeometryNodeMeshToPoints")
    set_material = nodes.new("GeometryNodeSetMaterial")
    set_material.inputs["Material"].default_value = material
    links.new(inp.outputs["Geometry"], to_points.inputs["Mesh"])
    links.new(inp.outputs["Radius"], to_points.inputs["Radius"])
    links.new(to_points.outputs["Points"], set_material.inputs["Geometry"])
    links.new(set_material.outputs["Geometry"], out.inputs["Geometry"])
    return group


def _convert_to_point_cloud(context: bpy.types.Context, obj: bpy.types.Object) -> bool:
    """Convert the vertices-only mesh object ``obj`` into a point-cloud object in place (Blender's Convert to Point
    Cloud keeps its point attributes and materials); False when this Blender has no point clouds or refused."""
    if not hasattr(bpy.data, "pointclouds"):
        return False
    mesh = obj.data
    try:
        with context.temp_override(object=obj, active_object=obj, selected_objects=[obj],
                                   selected_editable_objects=[obj]):
            done = bpy.ops.object.convert(target="POINTCLOUD") == {"FINISHED"}
    except (RuntimeError, TypeError):
        return False
    if not done or obj.type != "POINTCLOUD":
        return False
    if mesh.users == 0:
        bpy.data.meshes.remove(mesh)
    return True


def new_point_cloud_object(context: bpy.types.Context, name: str, points: np.ndarray, colors: np.ndarray | None,
                           location: np.ndarray, radius: float,
                           material: bpy.types.Material | None = None) -> bpy.types.Object:
    """A new point-cloud object at ``location`` (no rotation, scale 1), linked to the active collection.

    The points go into a vertices-only mesh (attribute API, one ``foreach_set`` each; colours as the colour attribute
    :data:`POINT_COLOR_ATTRIBUTE_NAME`), which Blender's Convert to Point Cloud turns into a ``POINTCLOUD`` object
    (``bpy.data.pointclouds.new`` makes empty point clouds only: Python cannot size one) with a ``radius``
    attribute. Where that is unavailable the object stays a mesh of loose vertices with the geometry-nodes modifier
    :data:`POINTS_NODE_GROUP_NAME` (Mesh to Points, the material set), which evaluates to the same point cloud.

    Args:
        points: (N,3) float32 positions relative to ``location`` (the object's local frame), metres, N >= 1.
        colors: (N,3|4) float32 linear RGB(A) in [0, 1], or None (then no colour attribute).
        location: (3,) world position of the object's origin. radius: every point's radius, metres.
        material: put in the object's (data's) first material slot.

    Raises:
        ValueError: wrong shapes, or no point.
    """
    points = np.asarray(points, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] != 3 or points.shape[0] < 1:
        raise ValueError(f"points must be (N,3) with N >= 1, got {points.shape}")
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(points.shape[0])
    mesh.attributes["position"].data.foreach_set("vector", np.ascontiguousarray(points).reshape(-1))
    if colors is not None:
        try:
            write_vertex_colors(mesh, colors, POINT_COLOR_ATTRIBUTE_NAME)
        except ValueError:
            bpy.data.meshes.remove(mesh)
            raise
    mesh.update()
    if material is not None:
        mesh.materials.append(material)
    obj = bpy.data.objects.new(name, mesh)
    obj.matrix_world = mathutils.Matrix.Translation([float(x) for x in location])
    link_to_scene(context, obj)
    if _convert_to_point_cloud(context, obj):
        cloud = obj.data
        attr = cloud.attributes.get("radius") or cloud.attributes.new("radius", "FLOAT", "POINT")
        attr.data.foreach_set("value", np.full(points.shape[0], radius, dtype=np.float32))
        cloud.update_tag()
    else:
        modifier = obj.modifiers.new("LatentForge Points", "NODES")
        modifier.node_group = _points_node_group(material)
        socket = next(s for s in modifier.node_group.interface.items_tree
                      if getattr(s, "in_out", "") == "INPUT" and s.name == "Radius")
        modifier[socket.identifier] = float(radius)
    return obj


def point_cloud_arrays(obj: bpy.types.Object) -> tuple[np.ndarray, np.ndarray | None]:
    """``(points (N,3) float32 local, colors (N,4) float32 or None)`` of a point-cloud object made by
    :func:`new_point_cloud_object` (a ``POINTCLOUD``, or the fallback's vertices-only mesh)."""
    data = obj.data
    n = len(data.points) if obj.type == "POINTCLOUD" else len(data.vertices)
    points = np.empty(n * 3, dtype=np.float32)
    data.attributes["position"].data.foreach_get("vector", points)
    attr = data.attributes.get(POINT_COLOR_ATTRIBUTE_NAME)
    colors = None
    if attr is not None:
        colors = np.empty(n * 4, dtype=np.float32)
        attr.data.foreach_get("color", colors)
        colors = colors.reshape(n, 4)
    return points.reshape(n, 3), colors


# ------------------------------------------------------------------------------------------------- images

def set_image_pixels(image: bpy.types.Image, texture: np.ndarray) -> None:
    """Resize ``image`` to the texture and copy it in (row 0 of ``texture`` = top), via ``pixels.foreach_set``."""
    h, w = texture.shape[:2]
    if tuple(image.size) != (w, h):
        image.scale(w, h)
    image.pixels.foreach_set(lf_arrays.texture_to_pixels(texture))
    image.update()


def create_texture_image(name: str, texture: np.ndarray) -> bpy.types.Image:
    """A new image datablock holding ``texture`` (H,W,3|4) uint8, row 0 = top.

    When the .blend file is saved the image is written to ``//latentforge/<name>.png`` and referenced relatively;
    otherwise it is packed into the .blend.
    """
    h, w, c = texture.shape
    image = bpy.data.images.new(name, width=w, height=h, alpha=(c == 4))
    image.pixels.foreach_set(lf_arrays.texture_to_pixels(texture))
    image.update()
    if bpy.data.is_saved:
        folder = bpy.path.abspath("//latentforge")
        os.makedirs(folder, exist_ok=True)
        filename = bpy.path.clean_name(image.name) + ".png"
        image.filepath_raw = os.path.join(folder, filename)
        image.file_format = "PNG"
        image.save()
        image.filepath_raw = "//latentforge/" + filename
    else:
        image.pack()
    return image


def image_rgba8(image: bpy.types.Image) -> np.ndarray:
    """An image datablock's pixels as the wire's image: (H, W, 4) uint8 RGBA, row 0 = top.

    All pixels are read with one ``foreach_get``. Byte images (ordinary PNG/JPEG) hold their colour space's encoded
    values and are sent as they are; float images (EXR, HDR, float buffers) hold scene-linear values and are
    sRGB-encoded first. Grey images get R = G = B; images without alpha get alpha 255 (Blender reports alpha 1).

    Raises:
        ValueError: the image has no pixels (its file is missing or not an image Blender can read), an
            unexpected channel count, or a side below :data:`MIN_IMAGE_SIDE`.
    """
    n = len(image.pixels)  # reading the length loads the image buffer when it is not in memory yet
    w, h = (int(x) for x in image.size)
    if n == 0 or w == 0 or h == 0:
        source = image.filepath_from_user() if image.source == "FILE" else ""
        where = f" (file {source!r})" if source else ""
        raise ValueError(f"could not read image {image.name!r}{where}: it has no pixels; the file is missing or "
                         "not an image Blender can read")
    if min(w, h) < MIN_IMAGE_SIDE:
        raise ValueError(f"image {image.name!r} is {w}×{h} pixels; Generate Shape needs at least "
                         f"{MIN_IMAGE_SIDE}×{MIN_IMAGE_SIDE}")
    channels = n // (w * h)
    if channels not in (1, 3, 4) or channels * w * h != n:
        raise ValueError(f"image {image.name!r} has {n} values for {w}×{h} pixels (expected 1, 3 or 4 channels)")
    pixels = np.empty(n, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    pixels = lf_arrays.bottom_up_to_top_down(pixels.reshape(h, w, channels))
    color = pixels[..., :min(channels, 3)]
    if image.is_float:
        color = lf_arrays.linear_to_srgb(color)
    rgba = np.ones((h, w, 4), dtype=np.float32)
    rgba[..., :3] = color
    if channels == 4:
        rgba[..., 3] = pixels[..., 3]
    return np.clip(np.rint(rgba * 255.0), 0, 255).astype(np.uint8)


def read_image_file(path: str) -> np.ndarray:
    """Load an image file with Blender (any format it reads) and return it as :func:`image_rgba8` does.

    A datablock made for the file is removed again; one that already showed the file is reused and kept.

    Args:
        path: file path; ``//`` is relative to the saved .blend.

    Raises:
        ValueError: no such file, not an image Blender can read, or too small (see :func:`image_rgba8`).
    """
    abspath = bpy.path.abspath(path)
    if not os.path.isfile(abspath):
        raise ValueError(f"image file {path!r} does not exist")
    existing = {im.as_pointer() for im in bpy.data.images}
    try:
        image = bpy.data.images.load(abspath, check_existing=True)
    except RuntimeError as e:
        raise ValueError(f"could not read image {path!r}: {str(e).strip()}") from None
    try:
        return image_rgba8(image)
    finally:
        if image.as_pointer() not in existing:
            bpy.data.images.remove(image)

