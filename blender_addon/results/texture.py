"""Texture results (``latent_paint``; ``clip_mesh`` in Texture mode, with its normal map): the texture goes onto the
object that was sent (bpy side; main thread only).

Adding a texturing pipeline's import = a file like this one (a target dataclass + an apply function + an
``IMPORTER``) and a row in :data:`.RESULT_IMPORTERS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import bpy
import numpy as np

from .. import materials, mesh_io
from ..core import arrays as lf_arrays
from .common import ApplyReport, ResultImporter, common_properties, normal_map_image, set_custom_properties


@dataclass
class TextureTarget:
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
    def from_record(cls, record) -> TextureTarget:
        """Inverse of :meth:`to_record` (``record``: a dict or Blender ID-property group). Raises KeyError."""
        return cls(str(record["object"]), int(record["n_vertices"]), str(record.get("uv_map", "")))


def find_target_object(target: TextureTarget | None) -> bpy.types.Object | None:
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


def apply_texture_result(context: bpy.types.Context, job_id: str, result_arrays: dict[str, np.ndarray],
                         metadata: dict, target: TextureTarget | None, pipeline: str = "latent_paint") -> ApplyReport:
    """Put a ``latent_paint`` result on its object (or on a new object when that is gone).

    Existing object (name + evaluated vertex count still match ``target``): topology, transform and name are left
    alone. If the backend used the UVs we sent (``metadata["uv_source"] == "input"``) and that UV map still exists,
    the material uses it; otherwise (xatlas) the result's per-corner UVs are written into the UV map
    "LatentForge" of the base mesh, which requires the base mesh to carry the sent triangles (counted conflicts:
    loops shared by triangles that xatlas gave different UVs keep the first one).

    Args:
        result_arrays: the result message's arrays: ``mesh.v_pos`` (N,3) float32, ``mesh.t_pos_idx`` (F,3) int32,
            ``mesh.uv`` (M,2) float32, ``mesh.uv_idx`` (F,3) int32, ``texture`` (H,W,3|4) uint8 row 0 = top.
            Optional ``mesh.normal_map`` (H,W,3) uint8 tangent-space normal map on the same UVs (CLIP-Mesh): wired
            into the material through a Normal Map node (:func:`..materials.make_texture_material`).
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
    uv_map = mesh_io.UV_MAP_NAME
    if obj is not None:
        if metadata.get("uv_source") == "input" and target.uv_map and obj.data.uv_layers.get(target.uv_map):
            uv_map = target.uv_map
        else:
            try:
                tri_loops = mesh_io.base_tri_loops_matching(obj, t_pos_idx, target.tri_loops)
            except ValueError as e:  # its topology changed since: keep it untouched, texture a copy of the result
                print(f"LatentForge: {e}; importing job {job_id} as a new object")
                obj = None
            else:
                loop_uv, conflicts, _unused = lf_arrays.scatter_corner_uvs(uv, uv_idx, tri_loops,
                                                                           len(obj.data.loops))
                mesh_io.write_loop_uvs(obj.data, mesh_io.UV_MAP_NAME, loop_uv)
    created = obj is None
    if created:
        obj = mesh_io.new_uv_mesh_object(context, f"LatentForge {job_id[:8]}", v_pos, t_pos_idx, uv, uv_idx)
    image = mesh_io.create_texture_image(f"LatentForge {obj.name} {job_id[:8]}", texture)
    normal = normal_map_image(job_id, obj.name, result_arrays)
    mat = materials.make_texture_material(f"LatentForge {obj.name}", image, uv_map, normal)
    materials.assign_material(obj, mat)
    set_custom_properties(obj, common_properties(job_id, pipeline, metadata))
    where = "a new object" if created else "the object"
    extra = f", normal map {normal.name!r}" if normal is not None else ""
    message = (f"job {job_id}: texture applied to {where} {obj.name!r} (UV map {uv_map!r}, image {image.name!r}"
               f"{extra})")
    return ApplyReport(obj, uv_map, image, created, conflicts, message, [obj])



IMPORTER = ResultImporter(apply_texture_result, TextureTarget,
                          ("mesh.v_pos", "mesh.t_pos_idx", "mesh.uv", "mesh.uv_idx", "texture"))
"""The ``latent_paint`` row of :data:`.RESULT_IMPORTERS`."""
