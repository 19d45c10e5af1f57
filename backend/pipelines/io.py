"""Wire arrays ⇄ typed pipeline inputs and results: the ONE module of the backend that knows array names.

Inputs arrive as flat name → array maps (a ``submit`` message, ``inputs.npz`` of the job store, the CLI's files):
meshes as ``<group>.v_pos`` (N, 3) float32, ``<group>.t_pos_idx`` (F, 3) int32 and optional ``<group>.uv`` /
``<group>.uv_idx``; images as ``<name>`` (H, W, 3|4) uint8, row 0 = top. Results and partial meshes leave as groups
``mesh``, ``mesh_1``, ``mesh_2``, … with ``v_pos``, ``t_pos_idx``, optional ``uv``/``uv_idx``/``v_color``/``normal_map``
(a tangent-space normal map for the group's UVs), plus one ``texture`` belonging to the first mesh, and point clouds as groups ``points``, ``points_1``, … with ``v_pos`` and
optional ``v_color`` (the protocol's *Several meshes* rule, ``docs/protocol.md``). Frames and row order pass through
unchanged: Blender world frame, images row 0 = top on both sides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from blender_addon.core.protocol import MAX_COORDINATE, MESH_GROUP, POINTS_GROUP, mesh_groups, point_groups

from ..geometry.mesh import MeshError, TriMesh, validate_mesh
from ..params import ParamError
from .base import PipelineInputs, PipelineResult, PipelineSpec, ResultMesh, ResultPointCloud

MESH_KINDS = ("v_pos", "t_pos_idx", "uv", "uv_idx")
"""Array kinds of an input mesh group."""
RESULT_GROUP = MESH_GROUP
"""Group of a result's first mesh; the others are ``mesh_1``, ``mesh_2``, …"""
POINTS_RESULT_GROUP = POINTS_GROUP
"""Group of a result's first point cloud; the others are ``points_1``, ``points_2``, …"""
TEXTURE = "texture"
"""The result's texture array (of the first mesh)."""
NORMAL_MAP = "normal_map"
"""Kind of a result mesh's tangent-space normal map array, ``<group>.normal_map``."""
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
    """Result or partial meshes → wire arrays in groups ``mesh``, ``mesh_1``, … (+ ``texture`` of the first mesh,
    + ``<group>.normal_map`` of each mesh that has one).

    Raises:
        ValueError: a mesh other than the first carries a texture (the protocol has one texture, for ``mesh``), or a
            normal map on a mesh without UVs.
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
        if m.normal_map is not None:
            if not m.mesh.has_uv:
                raise ValueError(f"mesh {i} has a normal map but no UVs")
            arrays[f"{group}.{NORMAL_MAP}"] = np.ascontiguousarray(m.normal_map, dtype=np.uint8)
    return arrays


def _numbered(group: str, i: int) -> str:
    return group if i == 0 else f"{group}_{i}"


def point_clouds_to_arrays(point_clouds: Sequence[ResultPointCloud]) -> dict[str, np.ndarray]:
    """Result or partial point clouds → wire arrays in groups ``points``, ``points_1``, … (``v_pos`` and, when the
    cloud has colours, ``v_color``), float32.

    Raises:
        ValueError: a cloud with no point, a shape other than (N, 3), a non-finite or out-of-range coordinate (beyond
            ``MAX_COORDINATE`` metres) or colour (outside [0, 1]); the message names the group.
    """
    arrays: dict[str, np.ndarray] = {}
    for i, cloud in enumerate(point_clouds):
        group = _numbered(POINTS_RESULT_GROUP, i)
        points = np.ascontiguousarray(cloud.points, dtype=np.float32)
        if points.ndim != 2 or points.shape[1] != 3 or points.shape[0] < 1:
            raise ValueError(f"point cloud {group}: points must be (N, 3) with N >= 1, got {points.shape}")
        if not np.isfinite(points).all() or float(np.abs(points).max()) > MAX_COORDINATE:
            raise ValueError(f"point cloud {group}: coordinates must be finite and within ±{MAX_COORDINATE:g} m")
        arrays[f"{group}.v_pos"] = points
        if cloud.colors is not None:
            colors = np.ascontiguousarray(cloud.colors, dtype=np.float32)
            if colors.shape not in ((points.shape[0], 3), (points.shape[0], 4)):
                raise ValueError(f"point cloud {group}: colors must be ({points.shape[0]}, 3|4), got {colors.shape}")
            if not np.isfinite(colors).all() or colors.min() < 0.0 or colors.max() > 1.0:
                raise ValueError(f"point cloud {group}: colors must be finite and within [0, 1]")
            arrays[f"{group}.v_color"] = colors
    return arrays


def partial_to_arrays(meshes: Sequence[ResultMesh],
                      point_clouds: Sequence[ResultPointCloud] = ()) -> dict[str, np.ndarray]:
    """The arrays of a ``partial`` message: :func:`meshes_to_arrays` + :func:`point_clouds_to_arrays`."""
    return {**meshes_to_arrays(meshes), **point_clouds_to_arrays(point_clouds)}


def preview_to_arrays(image: np.ndarray) -> dict[str, np.ndarray]:
    """A preview image, (H, W, 3) uint8 row 0 = top, as the arrays of a ``preview`` message."""
    return {PREVIEW_IMAGE: np.ascontiguousarray(image)}


def result_to_arrays(result: PipelineResult) -> dict[str, np.ndarray]:
    """A :class:`PipelineResult`'s meshes and point clouds as wire arrays (:func:`meshes_to_arrays`,
    :func:`point_clouds_to_arrays`).

    Raises:
        ValueError: the result holds neither a mesh nor a point cloud, or one of them breaks a rule above.
    """
    if not result.meshes and not result.point_clouds:
        raise ValueError("the pipeline returned neither a mesh nor a point cloud")
    return partial_to_arrays(result.meshes, result.point_clouds)


def meshes_from_arrays(arrays: Mapping[str, np.ndarray]) -> list[ResultMesh]:
    """Wire arrays of a result (or a stored ``result.npz``) → its meshes, in group order; the texture goes to the
    first mesh, each ``<group>.normal_map`` to its mesh. Empty when the arrays hold no mesh."""
    meshes = []
    for group in mesh_groups(arrays, RESULT_GROUP):
        mesh = TriMesh(arrays[f"{group}.v_pos"], arrays[f"{group}.t_pos_idx"], arrays.get(f"{group}.uv"),
                       arrays.get(f"{group}.uv_idx"))
        meshes.append(ResultMesh(mesh, v_color=arrays.get(f"{group}.v_color"),
                                 normal_map=arrays.get(f"{group}.{NORMAL_MAP}")))
    if meshes and TEXTURE in arrays:
        meshes[0].texture = arrays[TEXTURE]
    return meshes


def point_clouds_from_arrays(arrays: Mapping[str, np.ndarray]) -> list[ResultPointCloud]:
    """Wire arrays of a result (or a stored ``result.npz``) → its point clouds, in group order (colours as sent,
    (N, 3|4) float32, or None). Empty when the arrays hold no point cloud."""
    return [ResultPointCloud(arrays[f"{g}.v_pos"], arrays.get(f"{g}.v_color")) for g in point_groups(arrays)]
