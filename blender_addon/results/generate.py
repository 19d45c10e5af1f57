"""Generated results (``latent_nerf``, ``dream_fields``): a new textured object named after the prompt (bpy side; main
thread only). :func:`new_textured_object` is the textured new object every such result makes (CLIP-Mesh and Refine
results too).

The backend already placed the mesh where the sketch stood (world frame), so the object keeps the identity
transform. Adding a generator's import = a file like this one (a target dataclass + an apply function + an
``IMPORTER``) and a row in :data:`.RESULT_IMPORTERS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import bpy
import numpy as np

from .. import materials, mesh_io
from .common import (ApplyReport, ResultImporter, common_properties, normal_map_image, object_name_from_prompt,
                     set_custom_properties)


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


def new_textured_object(context: bpy.types.Context, name: str, job_id: str, result_arrays: dict[str, np.ndarray]
                        ) -> tuple[bpy.types.Object, bpy.types.Image, bpy.types.Image | None]:
    """A new object (identity transform: the result's ``mesh.v_pos`` are world coordinates) with the UV map
    :data:`..mesh_io.UV_MAP_NAME`, a material with the result's ``texture`` and, when the result has one, its normal
    map (:data:`.common.NORMAL_MAP_ARRAY`), and the colour attribute of ``mesh.v_color`` when present.

    Returns:
        ``(object, texture image, normal-map image or None)``.

    Raises:
        KeyError: ``mesh.v_pos``/``t_pos_idx``/``uv``/``uv_idx`` or ``texture`` missing. ValueError: degenerate
            triangles or a bad ``v_color`` shape.
    """
    obj = mesh_io.new_uv_mesh_object(context, name, result_arrays["mesh.v_pos"], result_arrays["mesh.t_pos_idx"],
                                     result_arrays["mesh.uv"], result_arrays["mesh.uv_idx"])
    if "mesh.v_color" in result_arrays:
        mesh_io.write_vertex_colors(obj.data, result_arrays["mesh.v_color"])
    image = mesh_io.create_texture_image(f"LatentForge {obj.name} {job_id[:8]}", result_arrays["texture"])
    normal = normal_map_image(job_id, obj.name, result_arrays)
    material = materials.make_texture_material(f"LatentForge {obj.name}", image, mesh_io.UV_MAP_NAME, normal)
    materials.assign_material(obj, material)
    return obj, image, normal


def apply_generated_result(context: bpy.types.Context, job_id: str, result_arrays: dict[str, np.ndarray],
                           metadata: dict, target: GenerateTarget | None,
                           pipeline: str = "latent_nerf") -> ApplyReport:
    """Make a new object from a generator's result (``latent_nerf``, ``dream_fields``): named after the prompt,
    identity transform.

    Args:
        result_arrays: ``mesh.v_pos`` (N,3) float32 world frame (already placed where the sketch stood),
            ``mesh.t_pos_idx`` (F,3) int32, ``mesh.uv`` (M,2) float32, ``mesh.uv_idx`` (F,3) int32, ``texture``
            (H,W,3|4) uint8 row 0 = top, optional ``mesh.v_color`` (N,3|4) float32 in [0, 1].
        metadata: the result's metadata (prompt, seed, iterations, model, sketch: bool).
        target: the sketch recorded at submit time, or None (unknown: e.g. a job submitted elsewhere).

    The object gets the UV map "LatentForge", a material with the texture image, the colour attribute
    :data:`.mesh_io.COLOR_ATTRIBUTE_NAME` (when the result has ``mesh.v_color``) and the custom properties
    ``latentforge_prompt/_seed/_iterations/_model/_job_id/_pipeline/_sketch`` (sketch object name, "" = text only,
    "(unknown)" when a sketch was used but its name was not recorded).

    Raises:
        KeyError: a required array is missing. ValueError: degenerate triangles or a bad ``v_color`` shape.
    """
    prompt = str(metadata.get("prompt", ""))
    obj, image, _normal = new_textured_object(context, object_name_from_prompt(prompt), job_id, result_arrays)
    if target is not None:
        sketch = target.sketch_name
    else:
        sketch = "(unknown)" if metadata.get("sketch") else ""
    set_custom_properties(obj, {**common_properties(job_id, pipeline, metadata),
                                "latentforge_iterations": int(metadata.get("iterations", 0) or 0),
                                "latentforge_sketch": sketch})
    shape = f"following the sketch {sketch!r}" if sketch else "from the text alone"
    message = (f"job {job_id}: generated {obj.name!r} {shape} ({len(obj.data.vertices)} vertices, "
               f"{len(obj.data.polygons)} triangles, image {image.name!r})")
    return ApplyReport(obj, mesh_io.UV_MAP_NAME, image, True, 0, message, [obj])



IMPORTER = ResultImporter(apply_generated_result, GenerateTarget,
                          ("mesh.v_pos", "mesh.t_pos_idx", "mesh.uv", "mesh.uv_idx", "texture"))
"""The ``latent_nerf`` and ``dream_fields`` rows of :data:`.RESULT_IMPORTERS`."""
