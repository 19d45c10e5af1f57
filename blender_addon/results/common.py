"""What every result importer shares: the report of an applied result, the importer record, the target protocol,
object names from prompts (bpy side; main thread only)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import bpy

from .. import mesh_io

NORMAL_MAP_ARRAY = "mesh.normal_map"
"""The result array holding a mesh's tangent-space normal map: (H, W, 3) uint8, row 0 = top, OpenGL convention
(Blender's: +Y green up), on the mesh's UVs (CLIP-Mesh)."""

OBJECT_NAME_MAX_CHARS = 40
"""Longest object name :func:`object_name_from_prompt` makes (Blender's limit is 63 UTF-8 bytes)."""


@runtime_checkable
class ResultTarget(Protocol):
    """What the add-on remembers per job to place its result: each pipeline family's target dataclass
    (``TextureTarget``, ``GenerateTarget``, ``ShapeTarget``, ``VariationsTarget``, ``InterpolateTarget``, …).

    ``to_record()`` is the JSON-able part saved in the scene (so that a result finds its place after Blender
    restarted); ``from_record(record)`` (a classmethod) reads it back and raises KeyError / TypeError / ValueError on
    a broken record. A target class may have a classmethod ``fallback(context, metadata)``: the target of a job
    whose target was not recorded (e.g. submitted from another .blend).
    """

    def to_record(self) -> dict: ...

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ResultTarget: ...


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



@dataclass(frozen=True)
class ResultImporter:
    """How a pipeline's result enters the scene.

    Attributes:
        apply: ``(context, job_id, result_arrays, metadata, target or None, pipeline) -> ApplyReport``; raises
            ValueError / KeyError when the data cannot be applied.
        target_class: the class of the per-job target (a :class:`ResultTarget`).
        required_arrays: arrays the result must carry.
        preview: ``(context, partial_arrays, target or None, pipeline) -> (v_pos (N,3) float32 world,
            t_pos_idx (F,3) int32, v_color (N,3|4) float32 or None)``: the one mesh the temporary preview object
            shows for a ``partial`` (which may carry several mesh groups); None = the partial's first group
            (``mesh.*``) as it is.
    """

    apply: Callable[..., ApplyReport]
    target_class: type[ResultTarget]
    required_arrays: tuple[str, ...]
    preview: Callable[..., tuple] | None = None


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


def short_name(name: str, max_chars: int) -> str:
    """``name`` cleaned and cut like :func:`object_name_from_prompt`, and to at most ``2 * max_chars`` UTF-8 bytes."""
    name = object_name_from_prompt(name, max_chars)
    while len(name.encode("utf-8")) > 2 * max_chars:
        name = name[:-1]
    return name.rstrip() or "Shape"



def normal_map_image(job_id: str, obj_name: str, result_arrays: Mapping[str, Any]):
    """The image datablock of the result's normal map (:data:`NORMAL_MAP_ARRAY`), or None when it has none; named
    ``"LatentForge <object> <job> normal"`` (saved or packed like the texture; the material sets it Non-Color)."""
    normal = result_arrays.get(NORMAL_MAP_ARRAY)
    if normal is None:
        return None
    return mesh_io.create_texture_image(f"LatentForge {obj_name} {job_id[:8]} normal", normal)


def hide_original(obj: bpy.types.Object | None, hide: bool) -> bool:
    """Hide ``obj`` (viewport and render; it stays in the scene, so unhiding brings it back) when ``hide`` is true
    and it exists; returns whether it was hidden."""
    if obj is None or not hide:
        return False
    try:
        obj.hide_set(True)
    except RuntimeError:  # not in the current view layer (another scene): hide it everywhere instead
        obj.hide_viewport = True
    obj.hide_render = True
    return True


def set_custom_properties(obj: bpy.types.Object, props: Mapping[str, Any]) -> None:
    """Write ``props`` (name -> str/int/float) as custom properties of ``obj``."""
    for key, value in props.items():
        obj[key] = value


def common_properties(job_id: str, pipeline: str, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The custom properties every result object carries: ``latentforge_job_id``, ``_pipeline``, ``_prompt``,
    ``_seed``, ``_model`` (from the result's metadata)."""
    return {"latentforge_job_id": job_id, "latentforge_pipeline": pipeline,
            "latentforge_prompt": str(metadata.get("prompt", "")),
            "latentforge_seed": int(metadata.get("seed", 0) or 0),
            "latentforge_model": str(metadata.get("model", ""))}
