"""How each pipeline's results enter the scene: ONE table, :data:`RESULT_IMPORTERS`, pipeline name -> importer.

One file per pipeline family: ``texture.py`` (``latent_paint``: the texture goes onto the object that was sent),
``generate.py`` (``latent_nerf``, ``dream_fields``: a new textured object), ``clip_mesh.py`` (``clip_mesh``: a texture
and normal map onto the object that was sent, or a new reshaped object), ``refine.py`` (``refine_mesh``: a new
textured object on the source), ``shapes.py`` (``shape_ldm``, ``shape_variations``, ``shape_interpolate``, ``shap_e``,
``point_e``, the ``lion_*`` pipelines: one new object per mesh or point cloud), and ``preview.py`` (the live preview
image and the one temporary preview object, shared by all). Each family file holds its job-target dataclass (what the add-on remembers per job
to place the result: ``to_record``/``from_record``, see :class:`.common.ResultTarget`) and its apply function.

**Adding a pipeline's result import = one file (its target + apply function + a** :class:`.common.ResultImporter`
**) + one row in** :data:`RESULT_IMPORTERS` **below.** The table is a plain dict: nothing registers itself on
import. The session looks results up only here (:func:`apply_result`, :func:`preview_mesh`): no per-pipeline
branches elsewhere. Where new objects go is computed by :mod:`..core.placement` (bpy-free).
"""

from __future__ import annotations

from typing import Any

import bpy
import numpy as np

from . import clip_mesh, generate, refine, shapes, texture
from .clip_mesh import ClipMeshTarget
from .common import ApplyReport, ResultImporter, ResultTarget
from .generate import GenerateTarget
from .refine import RefineTarget
from .shapes import BlockoutTarget, DenoiseTarget, InterpolateTarget, ShapeTarget, VariationsTarget
from .texture import TextureTarget

RESULT_IMPORTERS: dict[str, ResultImporter] = {
    "latent_paint": texture.IMPORTER,
    "latent_nerf": generate.IMPORTER,
    "shape_ldm": shapes.SHAPE_IMPORTER,
    "shape_variations": shapes.VARIATIONS_IMPORTER,
    "shape_interpolate": shapes.INTERPOLATE_IMPORTER,
    "shap_e": shapes.MODEL_SHAPE_IMPORTER,
    "point_e": shapes.MODEL_SHAPE_IMPORTER,
    "clip_mesh": clip_mesh.IMPORTER,
    "dream_fields": generate.IMPORTER,
    "refine_mesh": refine.IMPORTER,
    "lion_generate": shapes.MODEL_SHAPE_IMPORTER,
    "lion_variations": shapes.MODEL_VARIATIONS_IMPORTER,
    "lion_interpolate": shapes.MODEL_INTERPOLATE_IMPORTER,
    "lion_denoise": shapes.DENOISE_IMPORTER,
    "lion_from_blockout": shapes.BLOCKOUT_IMPORTER,
}
"""Pipeline name -> its :class:`.common.ResultImporter`."""

__all__ = ["RESULT_IMPORTERS", "ApplyReport", "BlockoutTarget", "ClipMeshTarget", "DenoiseTarget", "GenerateTarget",
           "InterpolateTarget", "RefineTarget", "ResultImporter", "ResultTarget", "ShapeTarget", "TextureTarget",
           "VariationsTarget", "apply_result", "preview_mesh", "target_from_record"]


def importer_for(pipeline: str) -> ResultImporter:
    """The importer of ``pipeline``. Raises ValueError naming the pipelines this add-on can import."""
    importer = RESULT_IMPORTERS.get(pipeline)
    if importer is None:
        raise ValueError(f"pipeline {pipeline!r} has no result importer in this add-on "
                         f"(known: {', '.join(sorted(RESULT_IMPORTERS))})")
    return importer


def target_from_record(pipeline: str, record: Any) -> ResultTarget | None:
    """Read a saved target of ``pipeline`` (a dict or Blender ID-property group); None when the pipeline is unknown
    or the record is broken."""
    importer = RESULT_IMPORTERS.get(pipeline)
    if importer is None:
        return None
    try:
        return importer.target_class.from_record(record)
    except (KeyError, TypeError, ValueError):
        return None


def _target_or_fallback(importer: ResultImporter, context: bpy.types.Context, target: ResultTarget | None,
                        metadata: dict) -> ResultTarget | None:
    fallback = getattr(importer.target_class, "fallback", None)
    if target is None and fallback is not None:
        return fallback(context, metadata)
    return target


def apply_result(context: bpy.types.Context, job_id: str, pipeline: str, arrays: dict[str, np.ndarray],
                 metadata: dict, target: ResultTarget | None) -> ApplyReport:
    """Apply a ``result`` message of ``pipeline`` through its importer.

    Args:
        arrays: the result's arrays (checked against the importer's ``required_arrays``).
        metadata: the result's metadata.
        target: the target recorded at submit time, or None (then the target class's ``fallback``, if it has one).

    Raises:
        ValueError: no importer for ``pipeline``, a required array is missing, or the importer refused the data.
    """
    importer = importer_for(pipeline)
    missing = [name for name in importer.required_arrays if name not in arrays]
    if missing:
        raise ValueError(f"result of job {job_id} (pipeline {pipeline}) lacks {', '.join(missing)}; cannot apply it")
    target = _target_or_fallback(importer, context, target, metadata)
    return importer.apply(context, job_id, arrays, metadata, target, pipeline)


def preview_mesh(context: bpy.types.Context, pipeline: str, arrays: dict[str, np.ndarray],
                 target: ResultTarget | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The mesh the temporary preview object shows for a ``partial`` of ``pipeline``: its importer's ``preview``,
    else the first mesh group as it is (also for an unknown pipeline).

    Returns:
        ``(v_pos (N,3) float32 world, t_pos_idx (F,3) int32, v_color (N,3|4) float32 or None)``.

    Raises:
        KeyError / ValueError: the partial lacks the arrays the pipeline's preview needs.
    """
    importer = RESULT_IMPORTERS.get(pipeline)
    if importer is None or importer.preview is None:
        return arrays["mesh.v_pos"], arrays["mesh.t_pos_idx"], arrays.get("mesh.v_color")
    return importer.preview(context, arrays, _target_or_fallback(importer, context, target, {}), pipeline)
