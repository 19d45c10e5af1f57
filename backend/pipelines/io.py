"""Wire arrays ⇄ typed pipeline inputs and results: the ONE module of the backend that knows array names.

Inputs arrive as flat name → array maps (a ``submit`` message, ``inputs.npz`` of the job store, the CLI's files):
meshes as ``<group>.v_pos`` (N, 3) float32, ``<group>.t_pos_idx`` (F, 3) int32 and optional ``<group>.uv`` /
``<group>.uv_idx``; images as ``<name>`` (H, W, 3|4) uint8, row 0 = top. Results and partial meshes leave as groups
``mesh``, ``mesh_1``, ``mesh_2``, … with ``v_pos``, ``t_pos_idx``, optional ``uv``/``uv_idx``/``v_color``, plus one
``texture`` belonging to the first mesh (the protocol's *Several meshes* rule, ``docs/protocol.md``). Frames and row
order pass through unchanged: Blender world frame, images row 0 = top on both sides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from blender_addon.core.protocol import MAX_COORDINATE, mesh_groups

from ..geometry.mesh import MeshError, TriMesh, validate_mesh
from ..params import ParamError
from .base import PipelineInputs, PipelineResult, PipelineSpec, ResultMesh

MESH_KINDS = ("v_pos", "t_pos_idx", "uv", "uv_idx")
"""Array kinds of an input mesh group."""
RESULT_GROUP = "mesh"
"""Group of a result's first mesh; the others are ``mesh_1``, ``mesh_2``, …"""
TEXTURE = "texture"
"""The result's texture array (of the first mesh)."""
PREVIEW_IMAGE = "image"
"""The array of a ``preview`` message."""
_MAX_NAMES_SHOWN = 5
_MAX_NAME_CHARS = 40


def _names(names: Sequence[str]) -> str:
    """A short, safe rendering of array names for an error message (at most 5 names, each cut to 40 characters)."""
    shown = [ascii(n[:_MAX_NAME_CHARS] + ("…" if len(n) > _MAX_NAME_CHARS else "")) for n in list(names)[:_MAX_NAMES_SHOWN]]
    more = len(names) - len(shown)
    return "[" + ", ".join(shown) + (f", … {more} more" if more > 0 else "") + "]"


def input_array_names(spec: PipelineSpec) -> list[str]:
    """Every input array name ``spec`` accepts, meshes first (``mesh.v_pos`` … ``sketch.uv_idx``), then images."""
    return [f"{m.group}.{k}" for m in spec.mesh_inputs for k in MESH_KINDS] + [i.name for i in spec.image_inputs]


def required_input_names(spec: PipelineSpec) -> list[str]:
    """Array names a submit must carry for ``spec`` (as the ``welcome`` message lists them)."""
    return [f"{m.group}.{k}" for m in spec.mesh_inputs if m.required for k in MESH_KINDS[:2]] + \
        [i.name for i in spec.image_inputs if i.required]


def optional_input_names(spec: PipelineSpec) -> list[str]:
    """Array names a submit may carry for ``spec`` besides :func:`required_input_names`."""
    required = set(required_input_names(spec))
    return [n for n in input_array_names(spec) if n not in required]


def inputs_from_arrays(pipeline: str, spec: PipelineSpec, arrays: Mapping[str, np.ndarray]) -> PipelineInputs:
    """Decode and validate a job's input arrays.

    Args:
        pipeline: the pipeline's name (for messages).
        spec: its row in :data:`backend.pipelines.PIPELINES`.
        arrays: name → array, as submitted.

    Returns:
        :class:`PipelineInputs` with each given mesh validated by :func:`~backend.geometry.mesh.validate_mesh`
        (float32 / int32, C-contiguous) and each image made C-contiguous.

    Raises:
        ParamError: an array the pipeline does not take, a required input missing, or half a mesh (``v_pos``
            without ``t_pos_idx`` or the reverse).
        MeshError: an unusable mesh (names the group), or one with a coordinate beyond ``MAX_COORDINATE`` metres.
    """
    allowed = input_array_names(spec)
    extra = sorted(set(arrays) - set(allowed))
    if extra:
        raise ParamError(f"{pipeline} does not take input array(s) {_names(extra)}; it takes {_names(allowed)}")
    inputs = PipelineInputs()
    for m in spec.mesh_inputs:
        given = {k: arrays[f"{m.group}.{k}"] for k in MESH_KINDS if f"{m.group}.{k}" in arrays}
        if not given:
            if m.required:
                raise ParamError(f"{pipeline} needs an input mesh {m.group!r} (arrays {m.group}.v_pos and "
                                 f"{m.group}.t_pos_idx)")
            continue
        if "v_pos" not in given or "t_pos_idx" not in given:
            raise ParamError(f"{pipeline}: a {m.group} needs both {m.group}.v_pos and {m.group}.t_pos_idx (a mesh "
                             f"with faces)")
        mesh = validate_mesh(TriMesh(given["v_pos"], given["t_pos_idx"], given.get("uv"), given.get("uv_idx")),
                             name=m.group)
        largest = float(np.abs(mesh.v_pos).max())
        if largest > MAX_COORDINATE:
            raise MeshError(f"{m.group} has a vertex coordinate of {largest:.3g} m; coordinates must lie within "
                            f"±{MAX_COORDINATE:g} m (apply a sane scale in Blender first)")
        inputs.meshes[m.group] = mesh
    for i in spec.image_inputs:
        if i.name in arrays:
            inputs.images[i.name] = np.ascontiguousarray(arrays[i.name])
        elif i.required:
            raise ParamError(f"{pipeline} needs an input image {i.name!r}")
    return inputs


def inputs_to_arrays(inputs: PipelineInputs) -> dict[str, np.ndarray]:
    """The wire arrays of ``inputs`` (inverse of :func:`inputs_from_arrays`; UVs only where a mesh has them)."""
    arrays: dict[str, np.ndarray] = {}
    for group, mesh in inputs.meshes.items():
        arrays[f"{group}.v_pos"], arrays[f"{group}.t_pos_idx"] = mesh.v_pos, mesh.t_pos_idx
        if mesh.has_uv:
            arrays[f"{group}.uv"], arrays[f"{group}.uv_idx"] = mesh.uv, mesh.uv_idx
    arrays.update(inputs.images)
    return arrays


def meshes_to_arrays(meshes: Sequence[ResultMesh]) -> dict[str, np.ndarray]:
    """Result or partial meshes → wire arrays in groups ``mesh``, ``mesh_1``, … (+ ``texture`` of the first mesh).

    Raises:
        ValueError: a mesh other than the first carries a texture (the protocol has one texture, for ``mesh``).
    """
    arrays: dict[str, np.ndarray] = {}
    for i, m in enumerate(meshes):
        group = RESULT_GROUP if i == 0 else f"{RESULT_GROUP}_{i}"
        arrays[f"{group}.v_pos"] = np.ascontiguousarray(m.mesh.v_pos, dtype=np.float32)
        arrays[f"{group}.t_pos_idx"] = np.ascontiguousarray(m.mesh.t_pos_idx, dtype=np.int32)
        if m.mesh.has_uv:
            arrays[f"{group}.uv"] = np.ascontiguousarray(m.mesh.uv, dtype=np.float32)
            arrays[f"{group}.uv_idx"] = np.ascontiguousarray(m.mesh.uv_idx, dtype=np.int32)
        if m.v_color is not None:
            arrays[f"{group}.v_color"] = np.ascontiguousarray(m.v_color, dtype=np.float32)
        if m.texture is not None:
            if i:
                raise ValueError(f"mesh {i} has a texture; the protocol carries one texture, for the first mesh")
            arrays[TEXTURE] = np.ascontiguousarray(m.texture)
    return arrays


def preview_to_arrays(image: np.ndarray) -> dict[str, np.ndarray]:
    """A preview image, (H, W, 3) uint8 row 0 = top, as the arrays of a ``preview`` message."""
    return {PREVIEW_IMAGE: np.ascontiguousarray(image)}


def result_to_arrays(result: PipelineResult) -> dict[str, np.ndarray]:
    """A :class:`PipelineResult`'s meshes as wire arrays (see :func:`meshes_to_arrays`)."""
    return meshes_to_arrays(result.meshes)


def meshes_from_arrays(arrays: Mapping[str, np.ndarray]) -> list[ResultMesh]:
    """Wire arrays of a result (or a stored ``result.npz``) → its meshes, in group order; the texture goes to the
    first mesh. Empty when the arrays hold no mesh."""
    meshes = []
    for group in mesh_groups(arrays, RESULT_GROUP):
        mesh = TriMesh(arrays[f"{group}.v_pos"], arrays[f"{group}.t_pos_idx"], arrays.get(f"{group}.uv"),
                       arrays.get(f"{group}.uv_idx"))
        meshes.append(ResultMesh(mesh, v_color=arrays.get(f"{group}.v_color")))
    if meshes and TEXTURE in arrays:
        meshes[0].texture = arrays[TEXTURE]
    return meshes
