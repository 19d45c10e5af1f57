"""Mesh and image data between Blender and the wire arrays (bpy side; main thread only).

Bulk data moves only through ``foreach_get``/``foreach_set`` and numpy; the array logic lives in
:mod:`.core.arrays` (bpy-free, tested without Blender).

Frames: ``v_pos`` is in Blender's world frame (object transform applied; right-handed, Z up, metres). Wire images
have row 0 at the top; Blender's ``Image.pixels`` start bottom-left.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import bpy
import mathutils
import numpy as np

from .core import arrays as lf_arrays
from .core import protocol

UV_MAP_NAME = "LatentForge"
"""Name of the UV map the add-on creates when the backend unwrapped the mesh (xatlas) or for a new object."""

PREVIEW_IMAGE_NAME = "LatentForge Preview"

PREVIEW_OBJECT_NAME = "LatentForge preview"
"""Name of the one temporary object that shows a running job's intermediate (``partial``) meshes."""

PREVIEW_JOB_KEY = "latentforge_preview_job"
"""Custom property that marks the temporary preview object; its value is the job id it shows."""

COLOR_ATTRIBUTE_NAME = "LatentForge Color"
"""Colour attribute (point domain, float RGBA) holding a result's or a partial mesh's ``v_color``."""

OBJECT_NAME_MAX_CHARS = 40
"""Longest object name :func:`object_name_from_prompt` makes (Blender's limit is 63 UTF-8 bytes)."""


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


def _loop_vertex_index(mesh: bpy.types.Mesh) -> np.ndarray:
    out = np.empty(len(mesh.loops), dtype=np.int32)
    mesh.loops.foreach_get("vertex_index", out)
    return out


def _loop_triangles(mesh: bpy.types.Mesh) -> tuple[np.ndarray, np.ndarray]:
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
        t_pos_idx, tri_loops = _loop_triangles(mesh)
        base = obj.data
        same = (len(mesh.vertices) == len(base.vertices) and len(mesh.loops) == len(base.loops)
                and np.array_equal(_loop_vertex_index(mesh), _loop_vertex_index(base)))
        uv = uv_idx = None
        if uv_layer_name is not None:
            uv, uv_idx = lf_arrays.loop_uvs_to_wire(read_loop_uvs(mesh, uv_layer_name), tri_loops)
        return MeshArrays(v_pos, t_pos_idx, tri_loops, uv, uv_idx, len(mesh.loops), bool(same))
    finally:
        obj_eval.to_mesh_clear()


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


# ----------------------------------------------------------------------------------------------- images

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


def update_preview_image(image_rgb: np.ndarray) -> bpy.types.Image:
    """Copy a preview (H,W,3) uint8 (row 0 = top) into the image datablock "LatentForge Preview" (created once)."""
    h, w = image_rgb.shape[:2]
    image = bpy.data.images.get(PREVIEW_IMAGE_NAME)
    if image is None:
        image = bpy.data.images.new(PREVIEW_IMAGE_NAME, width=w, height=h, alpha=False)
    set_image_pixels(image, image_rgb)
    return image


# --------------------------------------------------------------------------------------------- materials

def _principled_material(name: str) -> tuple[bpy.types.Material, bpy.types.ShaderNode]:
    """A new node material ``name`` with a Principled BSDF wired to the output; returns it and the BSDF node."""
    mat = bpy.data.materials.new(name)
    if not mat.node_tree:  # Blender < 5.0 creates materials without nodes
        mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = next((n for n in nodes if n.bl_idname == "ShaderNodeBsdfPrincipled"), None)
    if bsdf is None:
        bsdf = nodes.new("ShaderNodeBsdfPrincipled")
        out = next((n for n in nodes if n.bl_idname == "ShaderNodeOutputMaterial"), None) \
            or nodes.new("ShaderNodeOutputMaterial")
        links.new(bsdf.outputs["BSDF"], out.inputs["Surface"])
    return mat, bsdf


def make_texture_material(name: str, image: bpy.types.Image, uv_map_name: str) -> bpy.types.Material:
    """A Principled BSDF material whose Base Color is ``image`` sampled with the UV map ``uv_map_name``."""
    mat, bsdf = _principled_material(name)
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = image
    tex.location = (bsdf.location.x - 350, bsdf.location.y)
    uvmap = nodes.new("ShaderNodeUVMap")
    uvmap.uv_map = uv_map_name
    uvmap.location = (tex.location.x - 250, tex.location.y)
    links.new(uvmap.outputs["UV"], tex.inputs["Vector"])
    links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


def make_color_attribute_material(name: str, attribute_name: str = COLOR_ATTRIBUTE_NAME) -> bpy.types.Material:
    """The material ``name`` (made once, then reused) whose Base Color is the colour attribute ``attribute_name``."""
    mat = bpy.data.materials.get(name)
    if mat is not None:
        return mat
    mat, bsdf = _principled_material(name)
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    color = nodes.new("ShaderNodeVertexColor")
    color.layer_name = attribute_name
    color.location = (bsdf.location.x - 300, bsdf.location.y)
    links.new(color.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


def assign_material(obj: bpy.types.Object, mat: bpy.types.Material) -> None:
    """Put ``mat`` in every material slot of ``obj`` (one slot is added when it has none)."""
    if len(obj.material_slots) == 0:
        obj.data.materials.append(mat)
    for slot in obj.material_slots:
        slot.material = mat


# ----------------------------------------------------------------------------------------------- results

@dataclass
class JobTarget:
    """What the add-on remembers about a submitted ``latent_paint`` job, to apply its result (the object to texture).

    Attributes:
        object_name: the textured object's name at submit time.
        n_vertices: vertices of the evaluated mesh that was sent (the result's ``mesh.v_pos`` rows).
        uv_map: the object's UV map that was sent, or "" when the backend unwraps (xatlas).
        tri_loops: (F,3) int32 loop per triangle corner at submit time (None after a restart of Blender).
    """

    object_name: str
    n_vertices: int
    uv_map: str
    tri_loops: np.ndarray | None = None

    def to_record(self) -> dict:
        """The JSON-able part saved in the scene (``tri_loops`` is not: it is only valid in this session)."""
        return {"object": self.object_name, "n_vertices": int(self.n_vertices), "uv_map": self.uv_map}

    @classmethod
    def from_record(cls, record) -> JobTarget:
        """Inverse of :meth:`to_record` (``record``: a dict or Blender ID-property group). Raises KeyError."""
        return cls(str(record["object"]), int(record["n_vertices"]), str(record.get("uv_map", "")))


@dataclass
class GenerateTarget:
    """What the add-on remembers about a submitted ``latent_nerf`` job: the sketch object's name at submit time
    ("" = text only). The result always becomes a new object."""

    sketch_name: str = ""

    def to_record(self) -> dict:
        """The JSON-able record saved in the scene."""
        return {"sketch": self.sketch_name}

    @classmethod
    def from_record(cls, record) -> GenerateTarget:
        """Inverse of :meth:`to_record`."""
        return cls(str(record.get("sketch", "")))


@dataclass
class ApplyReport:
    """Outcome of applying a result: the object, its UV map, the image and notes for the user.

    Attributes:
        obj: the (first) object that received the result.
        uv_map: its UV map carrying the texture ("" for untextured shapes).
        image: the texture image, or None for untextured shapes.
        message: one line for the user describing what was done (the session reports it).
        objects: every object the result made or changed, in the result's mesh order (``[obj]`` for one mesh).
    """

    obj: bpy.types.Object
    uv_map: str
    image: bpy.types.Image | None
    created_object: bool
    n_uv_conflicts: int = 0
    message: str = ""
    objects: list = field(default_factory=list)


def find_target_object(target: JobTarget | None) -> bpy.types.Object | None:
    """The object recorded for a job if it still exists with the same name and evaluated vertex count."""
    if target is None:
        return None
    obj = bpy.data.objects.get(target.object_name)
    if obj is None or obj.type != "MESH":
        return None
    obj_eval = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    try:
        n_eval = len(obj_eval.to_mesh().vertices)
    finally:
        obj_eval.to_mesh_clear()
    return obj if n_eval == target.n_vertices else None


def _base_tri_loops_matching(obj: bpy.types.Object, t_pos_idx: np.ndarray,
                             tri_loops: np.ndarray | None) -> np.ndarray:
    """Loop per triangle corner on ``obj``'s base mesh for the result triangles ``t_pos_idx``.

    Raises ValueError when the base mesh's loops do not carry the result's triangles (other topology).
    """
    mesh = obj.data
    loop_vertex = _loop_vertex_index(mesh)
    candidates = [] if tri_loops is None else [tri_loops]
    candidates.append(_loop_triangles(mesh)[1])
    for cand in candidates:
        if cand.shape == t_pos_idx.shape and cand.max(initial=-1) < len(loop_vertex) \
                and np.array_equal(loop_vertex[cand], t_pos_idx):
            return cand
    raise ValueError(f"the result's triangles do not match the mesh of {obj.name!r} (did its topology change?)")


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


def _link_to_scene(context: bpy.types.Context, obj: bpy.types.Object) -> None:
    """Link ``obj`` to the active collection (the scene's master collection when the context has none)."""
    collection = getattr(context, "collection", None) or context.scene.collection
    collection.objects.link(obj)


def _new_triangle_mesh(name: str, v_pos: np.ndarray, t_pos_idx: np.ndarray) -> bpy.types.Mesh:
    """A new mesh datablock written by :func:`set_mesh_triangles`; removed again if that raises ValueError."""
    mesh = bpy.data.meshes.new(name)
    try:
        set_mesh_triangles(mesh, v_pos, t_pos_idx)
    except ValueError:
        bpy.data.meshes.remove(mesh)
        raise
    return mesh


def new_object_from_result(context: bpy.types.Context, name: str, v_pos: np.ndarray, t_pos_idx: np.ndarray,
                           uv: np.ndarray, uv_idx: np.ndarray) -> bpy.types.Object:
    """A new triangle-mesh object (identity transform, vertices in world space) with the UV map "LatentForge",
    linked to the active collection. Geometry is written by :func:`set_mesh_triangles`.

    Raises:
        ValueError: a triangle uses the same vertex twice (degenerate by index), or wrong shapes.
    """
    mesh = _new_triangle_mesh(name, v_pos, t_pos_idx)
    write_loop_uvs(mesh, UV_MAP_NAME, np.asarray(uv, dtype=np.float32)[np.asarray(uv_idx).reshape(-1)], update=False)
    mesh.update(calc_edges=True)
    obj = bpy.data.objects.new(name, mesh)
    _link_to_scene(context, obj)
    return obj


def apply_texture_result(context: bpy.types.Context, job_id: str, result_arrays: dict[str, np.ndarray],
                         metadata: dict, target: JobTarget | None, pipeline: str = "latent_paint") -> ApplyReport:
    """Put a ``latent_paint`` result on its object (or on a new object when that is gone).

    Existing object (name + evaluated vertex count still match ``target``): topology, transform and name are left
    alone. If the backend used the UVs we sent (``metadata["uv_source"] == "input"``) and that UV map still exists,
    the material uses it; otherwise (xatlas) the result's per-corner UVs are written into the UV map
    "LatentForge" of the base mesh, which requires the base mesh to carry the sent triangles (counted conflicts:
    loops shared by triangles that xatlas gave different UVs keep the first one).

    Args:
        result_arrays: the result message's arrays: ``mesh.v_pos`` (N,3) float32, ``mesh.t_pos_idx`` (F,3) int32,
            ``mesh.uv`` (M,2) float32, ``mesh.uv_idx`` (F,3) int32, ``texture`` (H,W,3|4) uint8 row 0 = top.
        metadata: the result's metadata (prompt, seed, model, uv_source...).

    When the recorded object's base mesh no longer carries the sent triangles (its topology changed), the result
    goes to a new object instead, as when the object is gone.

    Raises:
        KeyError: a required array is missing.
    """
    v_pos = result_arrays["mesh.v_pos"]
    t_pos_idx = result_arrays["mesh.t_pos_idx"]
    uv = result_arrays["mesh.uv"]
    uv_idx = result_arrays["mesh.uv_idx"]
    texture = result_arrays["texture"]
    obj = find_target_object(target)
    conflicts = 0
    uv_map = UV_MAP_NAME
    if obj is not None:
        if metadata.get("uv_source") == "input" and target.uv_map and obj.data.uv_layers.get(target.uv_map):
            uv_map = target.uv_map
        else:
            try:
                tri_loops = _base_tri_loops_matching(obj, t_pos_idx, target.tri_loops)
            except ValueError as e:  # its topology changed since: keep it untouched, texture a copy of the result
                print(f"LatentForge: {e}; importing job {job_id} as a new object")
                obj = None
            else:
                loop_uv, conflicts, _unused = lf_arrays.scatter_corner_uvs(uv, uv_idx, tri_loops,
                                                                           len(obj.data.loops))
                write_loop_uvs(obj.data, UV_MAP_NAME, loop_uv)
    created = obj is None
    if created:
        obj = new_object_from_result(context, f"LatentForge {job_id[:8]}", v_pos, t_pos_idx, uv, uv_idx)
    image = create_texture_image(f"LatentForge {obj.name} {job_id[:8]}", texture)
    mat = make_texture_material(f"LatentForge {obj.name}", image, uv_map)
    assign_material(obj, mat)
    obj["latentforge_prompt"] = str(metadata.get("prompt", ""))
    obj["latentforge_seed"] = int(metadata.get("seed", 0) or 0)
    obj["latentforge_model"] = str(metadata.get("model", ""))
    obj["latentforge_job_id"] = job_id
    obj["latentforge_pipeline"] = pipeline
    where = "a new object" if created else "the object"
    message = f"job {job_id}: texture applied to {where} {obj.name!r} (UV map {uv_map!r}, image {image.name!r})"
    return ApplyReport(obj, uv_map, image, created, conflicts, message, [obj])


# ---------------------------------------------------------------------------------------- generated meshes

_NAME_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]+")


def object_name_from_prompt(prompt: str, max_chars: int = OBJECT_NAME_MAX_CHARS) -> str:
    """An object name from a prompt: control and path characters dropped, whitespace collapsed, cut at a word
    boundary to at most ``max_chars`` characters (and 60 UTF-8 bytes); "LatentForge" when nothing is left.

    ``"  a gingerbread house,\t highly detailed "`` -> ``"a gingerbread house, highly detailed"``.

    Raises:
        ValueError: ``max_chars`` < 1.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    name = " ".join(_NAME_UNSAFE.sub(" ", prompt).split())
    if len(name) > max_chars:
        cut = name[:max_chars + 1]
        space = cut.rfind(" ")
        name = (cut[:space] if space >= max_chars // 2 else cut[:max_chars]).rstrip(" ,.;-")
    while len(name.encode("utf-8")) > 60:  # Blender truncates names at 63 bytes
        name = name[:-1]
    return name.strip() or "LatentForge"


def find_preview_object(job_id: str | None = None) -> bpy.types.Object | None:
    """The temporary preview object (marked with :data:`PREVIEW_JOB_KEY`), of ``job_id`` if given; else None."""
    for obj in bpy.data.objects:
        marker = obj.get(PREVIEW_JOB_KEY)
        if marker is not None and (job_id is None or marker == job_id):
            return obj
    return None


def update_preview_object(context: bpy.types.Context, job_id: str, v_pos: np.ndarray, t_pos_idx: np.ndarray,
                          v_color: np.ndarray | None = None) -> bpy.types.Object:
    """Show an intermediate mesh as the ONE temporary object "LatentForge preview".

    The first call makes the object (identity transform, not selectable, with a material showing ``v_color``);
    later calls replace its mesh data in place (same object, same mesh datablock), whatever job they belong to.

    Args:
        job_id: the job the mesh comes from (stored in the object's :data:`PREVIEW_JOB_KEY`).
        v_pos: (N,3) float32 world-space vertices, metres. t_pos_idx: (F,3) int32 triangles.
        v_color: optional (N,3|4) float32 linear colours in [0, 1] (colour attribute :data:`COLOR_ATTRIBUTE_NAME`).

    Raises:
        ValueError: wrong shapes or degenerate triangles (the object is left as it was only if shapes were wrong).
    """
    obj = find_preview_object()
    if obj is None:
        mesh = bpy.data.meshes.new(PREVIEW_OBJECT_NAME)
        obj = bpy.data.objects.new(PREVIEW_OBJECT_NAME, mesh)
        _link_to_scene(context, obj)
        obj.hide_select = True  # never picked up as a sketch or edited by mistake
        mesh.materials.append(make_color_attribute_material(PREVIEW_OBJECT_NAME))
    mesh = obj.data
    set_mesh_triangles(mesh, v_pos, t_pos_idx)
    if v_color is not None:
        write_vertex_colors(mesh, v_color)
    mesh.update(calc_edges=True)
    obj[PREVIEW_JOB_KEY] = job_id
    return obj


def remove_preview_object(job_id: str | None = None) -> bool:
    """Delete the temporary preview object (only if it shows ``job_id``, when given) and its mesh; True if removed."""
    obj = find_preview_object(job_id)
    if obj is None:
        return False
    mesh = obj.data
    bpy.data.objects.remove(obj)
    if mesh is not None and mesh.users == 0:
        bpy.data.meshes.remove(mesh)
    return True


def apply_generated_result(context: bpy.types.Context, job_id: str, result_arrays: dict[str, np.ndarray],
                           metadata: dict, target: GenerateTarget | None,
                           pipeline: str = "latent_nerf") -> ApplyReport:
    """Make a new object from a generator's result (``latent_nerf``): named after the prompt, identity transform.

    Args:
        result_arrays: ``mesh.v_pos`` (N,3) float32 world frame (already placed where the sketch stood),
            ``mesh.t_pos_idx`` (F,3) int32, ``mesh.uv`` (M,2) float32, ``mesh.uv_idx`` (F,3) int32, ``texture``
            (H,W,3|4) uint8 row 0 = top, optional ``mesh.v_color`` (N,3|4) float32 in [0, 1].
        metadata: the result's metadata (prompt, seed, iterations, model, sketch: bool).
        target: the sketch recorded at submit time, or None (unknown: e.g. a job submitted elsewhere).

    The object gets the UV map "LatentForge", a material with the texture image, the colour attribute
    :data:`COLOR_ATTRIBUTE_NAME` (when the result has ``mesh.v_color``) and the custom properties
    ``latentforge_prompt/_seed/_iterations/_model/_job_id/_pipeline/_sketch`` (sketch object name, "" = text only,
    "(unknown)" when a sketch was used but its name was not recorded).

    Raises:
        KeyError: a required array is missing. ValueError: degenerate triangles or a bad ``v_color`` shape.
    """
    v_pos = result_arrays["mesh.v_pos"]
    texture = result_arrays["texture"]
    prompt = str(metadata.get("prompt", ""))
    obj = new_object_from_result(context, object_name_from_prompt(prompt), v_pos, result_arrays["mesh.t_pos_idx"],
                                 result_arrays["mesh.uv"], result_arrays["mesh.uv_idx"])
    if "mesh.v_color" in result_arrays:
        write_vertex_colors(obj.data, result_arrays["mesh.v_color"])
    image = create_texture_image(f"LatentForge {obj.name} {job_id[:8]}", texture)
    assign_material(obj, make_texture_material(f"LatentForge {obj.name}", image, UV_MAP_NAME))
    if target is not None:
        sketch = target.sketch_name
    else:
        sketch = "(unknown)" if metadata.get("sketch") else ""
    obj["latentforge_prompt"] = prompt
    obj["latentforge_seed"] = int(metadata.get("seed", 0) or 0)
    obj["latentforge_iterations"] = int(metadata.get("iterations", 0) or 0)
    obj["latentforge_model"] = str(metadata.get("model", ""))
    obj["latentforge_job_id"] = job_id
    obj["latentforge_pipeline"] = pipeline
    obj["latentforge_sketch"] = sketch
    shape = f"following the sketch {sketch!r}" if sketch else "from the text alone"
    message = (f"job {job_id}: generated {obj.name!r} {shape} ({len(obj.data.vertices)} vertices, "
               f"{len(obj.data.polygons)} triangles, image {image.name!r})")
    return ApplyReport(obj, UV_MAP_NAME, image, True, 0, message, [obj])


# ------------------------------------------------------------------------------------- shapes (Michelangelo)

MIN_IMAGE_SIDE = 16
"""Smallest width and height of a Generate Shape image, pixels: the backend's limit
(``backend.michelangelo.conditioner.MIN_IMAGE_SIDE``), checked here too so a too-small image is refused before
anything is sent."""

DEFAULT_SHAPE_GAP = 0.25
"""Free space between neighbouring shape objects along X, metres, when a job's own setting is unknown."""

SHAPE_MATERIAL_NAME = "LatentForge Shape"
"""The plain material (one, shared) of the shape objects."""

SHAPE_PREVIEW_TINTS = np.array([(0.80, 0.45, 0.25), (0.25, 0.55, 0.80), (0.35, 0.70, 0.30), (0.75, 0.35, 0.65),
                                (0.80, 0.70, 0.25), (0.30, 0.70, 0.70)], dtype=np.float32)
"""Linear RGB colours of the samples in the shape preview object (sample i gets tint i mod 6)."""


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
    pixels = pixels.reshape(h, w, channels)[::-1]  # Blender: row 0 = bottom
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


def _x_extents(boxes: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([lo[0] for lo, _ in boxes]), np.array([hi[0] for _, hi in boxes])


def _short_name(name: str, max_chars: int) -> str:
    """``name`` cleaned and cut like :func:`object_name_from_prompt`, and to at most ``2 * max_chars`` UTF-8 bytes."""
    name = object_name_from_prompt(name, max_chars)
    while len(name.encode("utf-8")) > 2 * max_chars:
        name = name[:-1]
    return name.rstrip() or "Shape"


@dataclass
class ShapeTarget:
    """What the add-on remembers about a ``shape_ldm`` job: what its objects are named after and where they go.

    The backend makes every sample around the world origin (the model's [-1.1, 1.1]³ box, metres); the samples are
    laid out side by side along +X, ``gap`` apart, the row centred on ``location``. Each object's origin is its
    sample's model origin.

    Attributes:
        label: the prompt, or the image's name (the objects are named after it).
        location: (x, y, z) world point the row is centred on (the 3D cursor at submit time), metres.
        gap: free space between neighbouring samples along X, metres.
        image: True when the shapes come from an image.
    """

    label: str = ""
    location: tuple[float, float, float] = (0.0, 0.0, 0.0)
    gap: float = DEFAULT_SHAPE_GAP
    image: bool = False

    def to_record(self) -> dict:
        """The JSON-able record saved in the scene."""
        return {"label": self.label, "location": [float(x) for x in self.location], "gap": float(self.gap),
                "image": bool(self.image)}

    @classmethod
    def from_record(cls, record) -> ShapeTarget:
        """Inverse of :meth:`to_record`. Raises KeyError / ValueError on a broken record."""
        location = tuple(float(x) for x in record["location"])
        if len(location) != 3:
            raise ValueError(f"location must have 3 values, got {location}")
        return cls(str(record.get("label", "")), location, float(record.get("gap", DEFAULT_SHAPE_GAP)),
                   bool(record.get("image", False)))

    @classmethod
    def fallback(cls, context: bpy.types.Context, metadata: dict) -> ShapeTarget:
        """For a job whose target was not recorded: named after its prompt, at the 3D cursor now."""
        image = bool(metadata.get("image"))
        label = str(metadata.get("prompt") or ("Shape from image" if image else "Shape"))
        return cls(label, tuple(context.scene.cursor.location), DEFAULT_SHAPE_GAP, image)

    def placements(self, boxes: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(anchor, location)`` per mesh (world vertex = local + location, local = vertex - anchor)."""
        shifts = lf_arrays.row_offsets(*_x_extents(boxes), self.gap)
        base = np.asarray(self.location, dtype=np.float64)
        return [(np.zeros(3), base + (s, 0.0, 0.0)) for s in shifts]

    def names(self, n: int, metadata: dict) -> list[str]:
        """``"<label>"`` for one sample, ``"<label> 1"``, ``"<label> 2"``, … for several."""
        base = object_name_from_prompt(self.label)
        return [base] if n == 1 else [f"{base} {i + 1}" for i in range(n)]

    def properties(self, index: int, metadata: dict) -> dict:
        """Custom properties of sample ``index`` beyond the common ones."""
        return {"latentforge_image": self.label if self.image else ""}


@dataclass
class VariationsTarget:
    """What the add-on remembers about a ``shape_variations`` job: the source object and where the row goes.

    The backend returns every variant where the source stood, at its size; the variants are moved along +X into a
    row that starts ``gap`` right of the source. Each object's origin sits where the source's origin sits relative
    to its variant.

    Attributes:
        source: the source object's name at submit time.
        origin: (x, y, z) the source object's world location at submit time, metres.
        start_x: world X where the first variant's left edge goes (the source's right edge + gap), metres.
        gap: free space between neighbouring variants along X, metres.
    """

    source: str = ""
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    start_x: float | None = None
    gap: float = DEFAULT_SHAPE_GAP

    def to_record(self) -> dict:
        """The JSON-able record saved in the scene (``start_x`` None is left out)."""
        record = {"source": self.source, "origin": [float(x) for x in self.origin], "gap": float(self.gap)}
        if self.start_x is not None:
            record["start_x"] = float(self.start_x)
        return record

    @classmethod
    def from_record(cls, record) -> VariationsTarget:
        """Inverse of :meth:`to_record`. Raises KeyError / ValueError on a broken record."""
        origin = tuple(float(x) for x in record["origin"])
        if len(origin) != 3:
            raise ValueError(f"origin must have 3 values, got {origin}")
        start_x = record.get("start_x")
        return cls(str(record.get("source", "")), origin, None if start_x is None else float(start_x),
                   float(record.get("gap", DEFAULT_SHAPE_GAP)))

    @classmethod
    def fallback(cls, context: bpy.types.Context, metadata: dict) -> VariationsTarget:
        """For a job whose target was not recorded: the row starts right of where the variants stand."""
        return cls("", (0.0, 0.0, 0.0), None, DEFAULT_SHAPE_GAP)

    def placements(self, boxes: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(anchor, location)`` per mesh (world vertex = local + location, local = vertex - anchor)."""
        x_min, x_max = _x_extents(boxes)
        start = self.start_x if self.start_x is not None else float(x_max.max()) + self.gap
        shifts = lf_arrays.row_offsets(x_min, x_max, self.gap, start=start)
        origin = np.asarray(self.origin, dtype=np.float64)
        return [(origin, origin + (s, 0.0, 0.0)) for s in shifts]

    def names(self, n: int, metadata: dict) -> list[str]:
        """``"<source> variation 1"``, … (``"Shape variation 1"``, … when the source is unknown)."""
        base = _short_name(self.source, 30) if self.source else "Shape"
        return [f"{base} variation {i + 1}" for i in range(n)]

    def properties(self, index: int, metadata: dict) -> dict:
        """Custom properties of variant ``index`` beyond the common ones."""
        return {"latentforge_source": self.source, "latentforge_strength": float(metadata.get("strength", 0.0) or 0.0)}


@dataclass
class InterpolateTarget:
    """What the add-on remembers about a ``shape_interpolate`` job: the names of its two meshes (start, end).

    The backend places every in-between shape between the two inputs (centre and size interpolated like the
    latents); each object keeps that place, its origin at its bounding-box centre.
    """

    source_a: str = ""
    source_b: str = ""

    def to_record(self) -> dict:
        """The JSON-able record saved in the scene."""
        return {"source_a": self.source_a, "source_b": self.source_b}

    @classmethod
    def from_record(cls, record) -> InterpolateTarget:
        """Inverse of :meth:`to_record`."""
        return cls(str(record.get("source_a", "")), str(record.get("source_b", "")))

    @classmethod
    def fallback(cls, context: bpy.types.Context, metadata: dict) -> InterpolateTarget:
        """For a job whose target was not recorded (the names are unknown)."""
        return cls("", "")

    def placements(self, boxes: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(anchor, location)`` per mesh: both its bounding-box centre (the mesh stays where it is)."""
        return [(c, c) for c in ((lo.astype(np.float64) + hi) / 2.0 for lo, hi in boxes)]

    def names(self, n: int, metadata: dict) -> list[str]:
        """``"<a>→<b> 1/K"``, … ``"<a>→<b> K/K"``."""
        a = _short_name(self.source_a, 20) if self.source_a else "A"
        b = _short_name(self.source_b, 20) if self.source_b else "B"
        return [f"{a}→{b} {i + 1}/{n}" for i in range(n)]

    def properties(self, index: int, metadata: dict) -> dict:
        """Custom properties of in-between shape ``index`` beyond the common ones (its weight: 0 = a, 1 = b)."""
        weights = metadata.get("weights") or []
        weight = float(weights[index]) if index < len(weights) else -1.0
        return {"latentforge_source_a": self.source_a, "latentforge_source_b": self.source_b,
                "latentforge_weight": weight}


def shape_material() -> bpy.types.Material:
    """The plain material :data:`SHAPE_MATERIAL_NAME` (a light grey Principled BSDF), made once, then reused."""
    mat = bpy.data.materials.get(SHAPE_MATERIAL_NAME)
    if mat is not None:
        return mat
    mat, bsdf = _principled_material(SHAPE_MATERIAL_NAME)
    bsdf.inputs["Base Color"].default_value = (0.8, 0.8, 0.8, 1.0)
    bsdf.inputs["Roughness"].default_value = 0.5
    mat.diffuse_color = (0.8, 0.8, 0.8, 1.0)  # the viewport's solid mode
    return mat


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
    mesh = _new_triangle_mesh(name, v_pos, t_pos_idx)
    mesh.update(calc_edges=True)
    if smooth:
        mesh.shade_smooth()
    else:
        mesh.shade_flat()
    obj = bpy.data.objects.new(name, mesh)
    # matrix_world too (it sets location), so that it is right before the next depsgraph update
    obj.matrix_world = mathutils.Matrix.Translation([float(x) for x in location])
    _link_to_scene(context, obj)
    return obj


def _remove_object(obj: bpy.types.Object) -> None:
    mesh = obj.data
    bpy.data.objects.remove(obj)
    if mesh is not None and mesh.users == 0:
        bpy.data.meshes.remove(mesh)


def _placed_shapes(context: bpy.types.Context, arrays: dict[str, np.ndarray], metadata: dict, target, pipeline: str):
    """``(target, [(v_pos, t_pos_idx)], [(anchor, location)])`` of a shape result or partial: every mesh group in
    order, placed by ``target`` (or by the pipeline's fallback target when None).

    Raises:
        ValueError: the message carries no mesh group.
    """
    groups = protocol.mesh_groups(arrays)
    if not groups:
        raise ValueError(f"a {pipeline} message carries no mesh (arrays: {', '.join(arrays) or 'none'})")
    if target is None:
        target = RESULT_IMPORTERS[pipeline].target_class.fallback(context, metadata)
    meshes = [(np.asarray(arrays[f"{g}.v_pos"]), np.asarray(arrays[f"{g}.t_pos_idx"])) for g in groups]
    boxes = [(v.min(axis=0), v.max(axis=0)) if len(v) else (np.zeros(3), np.zeros(3)) for v, _ in meshes]
    return target, meshes, target.placements(boxes)


def apply_shape_result(context: bpy.types.Context, job_id: str, result_arrays: dict[str, np.ndarray],
                       metadata: dict, target, pipeline: str = "shape_ldm") -> ApplyReport:
    """Make one new object per mesh of a shape result (``shape_ldm``, ``shape_variations``, ``shape_interpolate``).

    Meshes come in the protocol groups ``mesh``, ``mesh_1``, … (Blender world frame, metres); ``target``
    (:class:`ShapeTarget`, :class:`VariationsTarget`, :class:`InterpolateTarget`; None = the pipeline's fallback)
    names and places them. Geometry goes in with the attribute API (no per-vertex Python). Every object gets smooth
    shading (marching-cubes surfaces are smooth; ``metadata["shading"] == "flat"`` asks for flat), the shared plain
    material :data:`SHAPE_MATERIAL_NAME`, and the custom properties ``latentforge_job_id/_pipeline/_prompt/_seed/
    _sample_index/_model/_grid_resolution`` plus the target's own (``_image``; ``_source``, ``_strength``;
    ``_source_a``, ``_source_b``, ``_weight``).

    Raises:
        ValueError: no mesh, wrong shapes or degenerate triangles (objects made so far are removed again).
    """
    target, meshes, placements = _placed_shapes(context, result_arrays, metadata, target, pipeline)
    names = target.names(len(meshes), metadata)
    material = shape_material()
    smooth = str(metadata.get("shading", "smooth")).lower() != "flat"
    objects = []
    try:
        for i, ((v_pos, t_pos_idx), (anchor, location), name) in enumerate(zip(meshes, placements, names)):
            local = (v_pos.astype(np.float64) - anchor).astype(np.float32)
            obj = new_mesh_object(context, name, local, t_pos_idx, location, smooth)
            assign_material(obj, material)
            props = {"latentforge_job_id": job_id, "latentforge_pipeline": pipeline,
                     "latentforge_prompt": str(metadata.get("prompt", "")),
                     "latentforge_seed": int(metadata.get("seed", 0) or 0), "latentforge_sample_index": i,
                     "latentforge_model": str(metadata.get("model", "")),
                     "latentforge_grid_resolution": int(metadata.get("grid_resolution", 0) or 0),
                     **target.properties(i, metadata)}
            for key, value in props.items():
                obj[key] = value
            objects.append(obj)
    except ValueError:
        for obj in objects:
            _remove_object(obj)
        raise
    n_tris = sum(len(t) for _, t in meshes)
    shown = ", ".join(repr(o.name) for o in objects[:4]) + (", …" if len(objects) > 4 else "")
    message = f"job {job_id}: {len(objects)} shape object{'s' if len(objects) != 1 else ''} ({shown}; {n_tris} " \
              "triangles in all)"
    return ApplyReport(objects[0], "", None, True, 0, message, objects)


def shape_preview_mesh(context: bpy.types.Context, arrays: dict[str, np.ndarray], target,
                       pipeline: str = "shape_ldm") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The one mesh the temporary preview object shows for a shape ``partial``: every sample placed where its final
    object will go (same layout as :func:`apply_shape_result`, from the coarse meshes' boxes), joined, each sample
    tinted with its own :data:`SHAPE_PREVIEW_TINTS` colour.

    Returns:
        ``(v_pos (N,3) float32 world, t_pos_idx (F,3) int32, v_color (N,3) float32 linear)``.

    Raises:
        ValueError: the partial carries no mesh.
    """
    _target, meshes, placements = _placed_shapes(context, arrays, {}, target, pipeline)
    v_parts, t_parts, c_parts = [], [], []
    offset = 0
    for i, ((v_pos, t_pos_idx), (anchor, location)) in enumerate(zip(meshes, placements)):
        v_parts.append((v_pos.astype(np.float64) - anchor + location).astype(np.float32))
        t_parts.append(t_pos_idx.astype(np.int32) + offset)
        c_parts.append(np.broadcast_to(SHAPE_PREVIEW_TINTS[i % len(SHAPE_PREVIEW_TINTS)], (len(v_pos), 3)))
        offset += len(v_pos)
    return np.concatenate(v_parts), np.concatenate(t_parts), np.concatenate(c_parts).astype(np.float32)


def preview_mesh(pipeline: str, context: bpy.types.Context, arrays: dict[str, np.ndarray],
                 target) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The mesh the temporary preview object shows for a ``partial`` of ``pipeline``: its importer's ``preview``,
    else the first mesh group as it is. Returns ``(v_pos, t_pos_idx, v_color or None)``.

    Raises:
        KeyError / ValueError: the partial lacks the arrays the pipeline's preview needs.
    """
    importer = RESULT_IMPORTERS.get(pipeline)
    if importer is None or importer.preview is None:
        return arrays["mesh.v_pos"], arrays["mesh.t_pos_idx"], arrays.get("mesh.v_color")
    return importer.preview(context, arrays, target, pipeline)


@dataclass(frozen=True)
class ResultImporter:
    """How a pipeline's result enters the scene.

    Attributes:
        apply: ``(context, job_id, result_arrays, metadata, target, pipeline) -> ApplyReport``.
        target_class: the class of the per-job target (``to_record``/``from_record``).
        required_arrays: arrays the result must carry.
        preview: ``(context, partial_arrays, target) -> (v_pos (N,3) float32 world, t_pos_idx (F,3) int32,
            v_color (N,3|4) float32 or None)``: the one mesh the temporary preview object shows for a ``partial``
            (which may carry several mesh groups); None = the partial's first group (``mesh.*``) as it is.
    """

    apply: Callable[..., ApplyReport]
    target_class: type
    required_arrays: tuple[str, ...]
    preview: Callable[..., tuple] | None = None


RESULT_IMPORTERS: dict[str, ResultImporter] = {
    "latent_paint": ResultImporter(apply_texture_result, JobTarget,
                                   ("mesh.v_pos", "mesh.t_pos_idx", "mesh.uv", "mesh.uv_idx", "texture")),
    "latent_nerf": ResultImporter(apply_generated_result, GenerateTarget,
                                  ("mesh.v_pos", "mesh.t_pos_idx", "mesh.uv", "mesh.uv_idx", "texture")),
    "shape_ldm": ResultImporter(apply_shape_result, ShapeTarget, ("mesh.v_pos", "mesh.t_pos_idx"),
                                shape_preview_mesh),
    "shape_variations": ResultImporter(apply_shape_result, VariationsTarget, ("mesh.v_pos", "mesh.t_pos_idx"),
                                       shape_preview_mesh),
    "shape_interpolate": ResultImporter(apply_shape_result, InterpolateTarget, ("mesh.v_pos", "mesh.t_pos_idx"),
                                        shape_preview_mesh),
}
"""Pipeline name -> its :class:`ResultImporter` (the session looks results up here, no per-pipeline branches)."""
