"""The live preview of the active job (bpy side; main thread only), shared by every pipeline family:

- the image datablock "LatentForge Preview" and the sidebar's preview icon (:class:`PreviewIcon`), from ``preview``
  messages (H,W,3) uint8, row 0 = top;
- the ONE temporary object "LatentForge preview" showing a ``partial`` mesh (what mesh a pipeline's partial becomes
  is its importer's ``preview``; see :func:`.preview_mesh`).
"""

from __future__ import annotations

import bpy
import numpy as np

from .. import materials, mesh_io
from ..core import arrays

PREVIEW_IMAGE_NAME = "LatentForge Preview"
"""Name of the image datablock holding the active job's latest preview."""

PREVIEW_OBJECT_NAME = "LatentForge preview"
"""Name of the one temporary object that shows a running job's intermediate (``partial``) meshes."""

PREVIEW_JOB_KEY = "latentforge_preview_job"
"""Custom property that marks the temporary preview object; its value is the job id it shows."""


def update_preview_image(image_rgb: np.ndarray) -> bpy.types.Image:
    """Copy a preview (H,W,3) uint8 (row 0 = top) into the image datablock "LatentForge Preview" (created once)."""
    h, w = image_rgb.shape[:2]
    image = bpy.data.images.get(PREVIEW_IMAGE_NAME)
    if image is None:
        image = bpy.data.images.new(PREVIEW_IMAGE_NAME, width=w, height=h, alpha=False)
    mesh_io.set_image_pixels(image, image_rgb)
    return image


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
        v_color: optional (N,3|4) float32 linear colours in [0, 1] (colour attribute
            :data:`.mesh_io.COLOR_ATTRIBUTE_NAME`).

    Raises:
        ValueError: wrong shapes or degenerate triangles (the object is left as it was only if shapes were wrong).
    """
    obj = find_preview_object()
    if obj is None:
        mesh = bpy.data.meshes.new(PREVIEW_OBJECT_NAME)
        obj = bpy.data.objects.new(PREVIEW_OBJECT_NAME, mesh)
        mesh_io.link_to_scene(context, obj)
        obj.hide_select = True  # never picked up as a sketch or edited by mistake
        mesh.materials.append(materials.make_color_attribute_material(PREVIEW_OBJECT_NAME))
    mesh = obj.data
    mesh_io.set_mesh_triangles(mesh, v_pos, t_pos_idx)
    if v_color is not None:
        mesh_io.write_vertex_colors(mesh, v_color)
    mesh.update(calc_edges=True)
    obj[PREVIEW_JOB_KEY] = job_id
    return obj


def remove_preview_object(job_id: str | None = None) -> bool:
    """Delete the temporary preview object (only if it shows ``job_id``, when given) and its mesh; True if removed."""
    obj = find_preview_object(job_id)
    if obj is None:
        return False
    mesh_io.remove_object(obj)
    return True


class PreviewIcon:
    """The sidebar's preview icon (a ``bpy.utils.previews`` collection of one icon), made on first use."""

    def __init__(self):
        self._previews = None

    def update(self, image: np.ndarray) -> None:
        """Show ``image`` (H,W,3) uint8, row 0 = top."""
        if self._previews is None:
            import bpy.utils.previews

            self._previews = bpy.utils.previews.new()
        preview = self._previews.get("preview") or self._previews.new("preview")
        h, w = image.shape[:2]
        preview.image_size = (w, h)
        rgba = np.ones((h, w, 4), dtype=np.float32)
        rgba[..., :3] = arrays.top_down_to_bottom_up(image).astype(np.float32) / 255.0
        preview.image_pixels_float.foreach_set(rgba.reshape(-1))

    def icon_id(self) -> int:
        """Icon id of the live preview (0 when there is none)."""
        if self._previews is None or "preview" not in self._previews:
            return 0
        return self._previews["preview"].icon_id

    def remove(self) -> None:
        """Free the icon collection (unregister)."""
        if self._previews is not None:
            import bpy.utils.previews

            bpy.utils.previews.remove(self._previews)
            self._previews = None
