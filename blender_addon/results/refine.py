"""Refined meshes (``refine_mesh``, Magic3D's fine stage; bpy side, main thread only): a new textured object placed on
the mesh that was sent (the backend maps the refined mesh back where the input stood, at its size, in world
coordinates: identity transform), named ``"<source> refined"``; the source object is hidden or kept visible, as the
job asked (*Original*)."""

from __future__ import annotations

from dataclasses import dataclass

import bpy
import numpy as np

from .. import mesh_io
from .common import (ApplyReport, ResultImporter, common_properties, hide_original, object_name_from_prompt,
                     set_custom_properties, short_name)
from .generate import new_textured_object


@dataclass
class RefineTarget:
    """What the add-on remembers about a submitted ``refine_mesh`` job.

    Attributes:
        source: the refined object's name at submit time.
        hide_source: hide it once the refined mesh is in (else it stays visible, under the result).
    """

    source: str = ""
    hide_source: bool = True

    def to_record(self) -> dict:
        """The JSON-able record saved in the scene."""
        return {"source": self.source, "hide_source": bool(self.hide_source)}

    @classmethod
    def from_record(cls, record) -> RefineTarget:
        """Inverse of :meth:`to_record`."""
        return cls(str(record.get("source", "")), bool(record.get("hide_source", True)))

    @classmethod
    def fallback(cls, context: bpy.types.Context, metadata: dict) -> RefineTarget:
        """For a job whose target was not recorded: the source is unknown, nothing is hidden."""
        return cls("", False)


def apply_refine_result(context: bpy.types.Context, job_id: str, result_arrays: dict[str, np.ndarray],
                        metadata: dict, target: RefineTarget, pipeline: str = "refine_mesh") -> ApplyReport:
    """Make the refined mesh's object (see the module docstring).

    Args:
        result_arrays: ``mesh.v_pos`` (N,3) float32 world frame, ``mesh.t_pos_idx`` (F,3) int32, ``mesh.uv``
            (M,2) float32, ``mesh.uv_idx`` (F,3) int32, ``texture`` (H,W,3|4) uint8 row 0 = top; optional
            ``mesh.v_color``, ``mesh.normal_map``.
        metadata: the result's metadata (prompt, seed, iterations, model…).

    The object carries the common ``latentforge_*`` properties plus ``latentforge_source`` and
    ``latentforge_iterations``.

    Raises:
        KeyError: a required array is missing. ValueError: degenerate triangles.
    """
    name = f"{short_name(target.source, 30)} refined" if target.source \
        else f"{object_name_from_prompt(str(metadata.get('prompt', '')), 30)} refined"
    obj, image, _normal = new_textured_object(context, name, job_id, result_arrays)
    source = bpy.data.objects.get(target.source) if target.source else None
    hidden = hide_original(source, target.hide_source)
    set_custom_properties(obj, {**common_properties(job_id, pipeline, metadata), "latentforge_source": target.source,
                                "latentforge_iterations": int(metadata.get("iterations", 0) or 0)})
    state = "hidden" if hidden else "kept visible" if source is not None else "not found"
    message = (f"job {job_id}: refined {target.source or 'the mesh'} into {obj.name!r} ({len(obj.data.vertices)} "
               f"vertices, image {image.name!r}; the original {state})")
    return ApplyReport(obj, mesh_io.UV_MAP_NAME, image, True, 0, message, [obj])


IMPORTER = ResultImporter(apply_refine_result, RefineTarget,
                          ("mesh.v_pos", "mesh.t_pos_idx", "mesh.uv", "mesh.uv_idx", "texture"))
"""The ``refine_mesh`` row of :data:`.RESULT_IMPORTERS`."""
