"""CLIP-Mesh results (``clip_mesh``; bpy side, main thread only).

- Texture mode: the texture and the normal map go onto the object that was sent, whose mesh the backend kept exactly
  (vertices, faces, UVs): :func:`.texture.apply_texture_result` (the UV map that was sent carries them).
- Shape modes (``shape_texture``, ``shape``; from the Texture panel's selected mesh, or the Generate panel's sphere or
  selected mesh): a new object, identity transform (the backend returns world coordinates: the deformed mesh stands
  where its start mesh stood), with UVs, the texture and the normal map when the result has them; the source object
  is hidden when the job asked for it (*Original* = *Hide*).
"""

from __future__ import annotations

from dataclasses import dataclass

import bpy
import numpy as np

from .. import materials, mesh_io
from . import texture
from .common import (ApplyReport, ResultImporter, common_properties, hide_original, object_name_from_prompt,
                     set_custom_properties, short_name)
from .generate import new_textured_object
from .texture import TextureTarget

CLIP_MESH_MODES = ("texture", "shape_texture", "shape")
"""The ``mode`` values of ``clip_mesh``: texture only (the mesh is kept), shape and texture, shape only."""

SHAPE_MATERIAL_NAME = "LatentForge Shape"
"""The plain material of a shape-only result without a texture (the shapes' material)."""


@dataclass
class ClipMeshTarget:
    """What the add-on remembers about a submitted ``clip_mesh`` job.

    Attributes:
        mode: one of :data:`CLIP_MESH_MODES`.
        source: the name of the object that was sent ("" = the backend's sphere).
        n_vertices: vertices of the evaluated mesh that was sent (texture mode: finds the object again).
        uv_map: the object's UV map that was sent ("" = none sent; texture mode).
        hide_source: shape modes: hide the source object once the result is in.
        tri_loops: (F,3) int32 loop per sent triangle corner (texture mode; this session only, not saved).
    """

    mode: str = "shape_texture"
    source: str = ""
    n_vertices: int = 0
    uv_map: str = ""
    hide_source: bool = False
    tri_loops: np.ndarray | None = None

    def to_record(self) -> dict:
        """The JSON-able record saved in the scene (``tri_loops`` is not: it is only valid in this session)."""
        return {"mode": self.mode, "source": self.source, "n_vertices": int(self.n_vertices), "uv_map": self.uv_map,
                "hide_source": bool(self.hide_source)}

    @classmethod
    def from_record(cls, record) -> ClipMeshTarget:
        """Inverse of :meth:`to_record`. Raises KeyError / ValueError on a broken record (an unknown mode)."""
        mode = str(record["mode"])
        if mode not in CLIP_MESH_MODES:
            raise ValueError(f"mode must be one of {CLIP_MESH_MODES}, got {mode!r}")
        return cls(mode, str(record.get("source", "")), int(record.get("n_vertices", 0)),
                   str(record.get("uv_map", "")), bool(record.get("hide_source", False)))

    @classmethod
    def fallback(cls, context: bpy.types.Context, metadata: dict) -> ClipMeshTarget:
        """For a job whose target was not recorded: the mode its metadata names; a texture-mode result then becomes a
        new object (the object it was meant for is unknown)."""
        mode = str(metadata.get("mode", "shape_texture"))
        return cls(mode if mode in CLIP_MESH_MODES else "shape_texture")


def apply_clip_mesh_result(context: bpy.types.Context, job_id: str, result_arrays: dict[str, np.ndarray],
                           metadata: dict, target: ClipMeshTarget, pipeline: str = "clip_mesh") -> ApplyReport:
    """Bring a ``clip_mesh`` result into the scene (see the module docstring).

    Args:
        result_arrays: ``mesh.v_pos`` (N,3) float32 world frame, ``mesh.t_pos_idx`` (F,3) int32, and (texture
            mode: required; shape modes: when the result has them) ``mesh.uv`` (M,2), ``mesh.uv_idx`` (F,3),
            ``texture`` (H,W,3|4) uint8 row 0 = top, ``mesh.normal_map`` (H,W,3) uint8 tangent space.
        metadata: the result's metadata (prompt, seed, model, mode, uv_source…).
        target: the recorded target (or :meth:`ClipMeshTarget.fallback`).

    Every object made or textured carries the common ``latentforge_*`` properties plus ``latentforge_mode`` and
    ``latentforge_source`` (the start mesh's object name, "" = the sphere).

    Raises:
        KeyError: a required array is missing. ValueError: degenerate triangles, bad shapes.
    """
    if target.mode == "texture":
        recorded = TextureTarget(target.source, target.n_vertices, target.uv_map, target.tri_loops) \
            if target.source else None
        if target.uv_map and "uv_source" not in metadata:  # texture mode keeps the UVs that were sent
            metadata = {**metadata, "uv_source": "input"}
        report = texture.apply_texture_result(context, job_id, result_arrays, metadata, recorded, pipeline)
        set_custom_properties(report.obj, {"latentforge_mode": target.mode, "latentforge_source": target.source})
        return report

    prompt = str(metadata.get("prompt", ""))
    name = f"{short_name(target.source, 30)} CLIP-Mesh" if target.source else object_name_from_prompt(prompt)
    if all(k in result_arrays for k in ("mesh.uv", "mesh.uv_idx", "texture")):
        obj, image, normal = new_textured_object(context, name, job_id, result_arrays)
    else:
        obj = mesh_io.new_mesh_object(context, name, result_arrays["mesh.v_pos"], result_arrays["mesh.t_pos_idx"],
                                      np.zeros(3), smooth=True)
        materials.assign_material(obj, materials.plain_material(SHAPE_MATERIAL_NAME, (0.8, 0.8, 0.8, 1.0)))
        image = normal = None
    hidden = hide_original(bpy.data.objects.get(target.source) if target.source else None, target.hide_source)
    set_custom_properties(obj, {**common_properties(job_id, pipeline, metadata), "latentforge_mode": target.mode,
                                "latentforge_source": target.source})
    start = f"from {target.source!r}" if target.source else "from a sphere"
    what = ", ".join(x for x in (f"image {image.name!r}" if image else "",
                                 f"normal map {normal.name!r}" if normal else "",
                                 f"{target.source!r} hidden" if hidden else "") if x)
    message = (f"job {job_id}: CLIP-Mesh ({target.mode}) made {obj.name!r} {start} ({len(obj.data.vertices)} vertices"
               f"{', ' + what if what else ''})")
    return ApplyReport(obj, mesh_io.UV_MAP_NAME if image else "", image, True, 0, message, [obj])


IMPORTER = ResultImporter(apply_clip_mesh_result, ClipMeshTarget, ("mesh.v_pos", "mesh.t_pos_idx"))
"""The ``clip_mesh`` row of :data:`.RESULT_IMPORTERS`."""
