"""Wire arrays ⇄ typed pipeline inputs and results: the ONE module of the backend that knows array names.

Inputs arrive as flat name → array maps (a ``submit`` message, ``inputs.npz`` of the job store, the CLI's files):
meshes as ``<group>.v_pos`` (N, 3) float32, ``<group>.t_pos_idx`` (F, 3) int32 and optional ``<group>.uv`` /
``<group>.uv_idx``; point clouds (a scan) as ``<group>.v_pos`` (N, 3) float32 and optional ``<group>.v_color``
(N, 3|4) float32, in the groups a pipeline's :class:`~.base.PointCloudInput`s name (``points``, ``points_b``; a cloud
may stand in for a mesh of the same role: exactly one of the two); images as ``<name>`` (H, W, 3|4) uint8, row 0 =
top. Results and partial meshes leave as groups
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
POINT_KINDS = ("v_pos", "v_color")
"""Array kinds of an input point-cloud group (and of a result's)."""
MAX_INPUT_POINTS = 5_000_000
"""Most points of one input point cloud (as many as an input mesh's triangles, ``validate_mesh``'s ``max_faces``)."""
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
    """Every input array name ``spec`` accepts: meshes (``mesh.v_pos`` … ``sketch.uv_idx``), then point clouds
    (``points.v_pos``, ``points.v_color``), then images."""
    return [f"{m.group}.{k}" for m in spec.mesh_inputs for k in MESH_KINDS] + \
        [f"{p.group}.{k}" for p in spec.point_inputs for k in POINT_KINDS] + [i.name for i in spec.image_inputs]


def _alternatives(spec: PipelineSpec) -> dict[str, str]:
    """Mesh group → the point-cloud group that may stand in for it."""
    return {p.alternative_to: p.group for p in spec.point_inputs if p.alternative_to}


def required_input_names(spec: PipelineSpec) -> list[str]:
    """Array names a submit must carry for ``spec`` (as the ``welcome`` message lists them); a required mesh that a
    point cloud may replace is not listed (see :func:`one_of_input_names`)."""
    alternatives = _alternatives(spec)
    return [f"{m.group}.{k}" for m in spec.mesh_inputs if m.required and m.group not in alternatives
            for k in MESH_KINDS[:2]] + \
        [f"{p.group}.v_pos" for p in spec.point_inputs if p.required and not p.alternative_to] + \
        [i.name for i in spec.image_inputs if i.required]


def one_of_input_names(spec: PipelineSpec) -> list[list[str]]:
    """The roles of ``spec`` a mesh or a point cloud fills, each ``[mesh group's v_pos, cloud's v_pos]``: a submit
    carries exactly one of each pair (``welcome.pipelines[name].one_of_inputs``), e.g.
    ``[["mesh.v_pos", "points.v_pos"]]``."""
    required = {m.group for m in spec.mesh_inputs if m.required}
    return [[f"{mesh}.v_pos", f"{cloud}.v_pos"] for mesh, cloud in _alternatives(spec).items() if mesh in required]


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
        (float32 / int32, C-contiguous), each given point cloud by :func:`check_point_cloud` (float32, C-contiguous)
        and each image made C-contiguous.

    Raises:
        ParamError: an array the pipeline does not take, a required input missing, half a mesh (``v_pos`` without
            ``t_pos_idx`` or the reverse), a cloud's colours without its points, or both a mesh and the point cloud
            that stands in for it (or neither, when the role is required).
        MeshError: an unusable mesh or point cloud (names the group), or one with a coordinate beyond
            ``MAX_COORDINATE`` metres.
    """
    allowed = input_array_names(spec)
    extra = sorted(set(arrays) - set(allowed))
    if extra:
        raise ParamError(f"{pipeline} does not take input array(s) {_names(extra)}; it takes {_names(allowed)}")
    inputs = PipelineInputs()
    alternatives = _alternatives(spec)
    for p in spec.point_inputs:
        if f"{p.group}.v_color" in arrays and f"{p.group}.v_pos" not in arrays:
            raise ParamError(f"{pipeline}: {p.group}.v_color was sent without {p.group}.v_pos (the cloud's points)")
        if f"{p.group}.v_pos" not in arrays:
            if p.required and not p.alternative_to:
                raise ParamError(f"{pipeline} needs an input point cloud {p.group!r} (array {p.group}.v_pos)")
            continue
        if p.alternative_to and any(f"{p.alternative_to}.{k}" in arrays for k in MESH_KINDS):
            raise ParamError(f"{pipeline} got both an input mesh {p.alternative_to!r} and an input point cloud "
                             f"{p.group!r} for one role; send one of them")
        points, colors = check_point_cloud(arrays[f"{p.group}.v_pos"], arrays.get(f"{p.group}.v_color"), p.group,
                                           MeshError, as_input=True)
        inputs.point_clouds[p.group] = points
        if colors is not None:
            inputs.point_colors[p.group] = colors
    for m in spec.mesh_inputs:
        given = {k: arrays[f"{m.group}.{k}"] for k in MESH_KINDS if f"{m.group}.{k}" in arrays}
        if not given:
            cloud = alternatives.get(m.group)
            if cloud is not None and cloud in inputs.point_clouds:
                continue
            if m.required and cloud is not None:
                raise ParamError(f"{pipeline} needs an input mesh {m.group!r} (arrays {m.group}.v_pos and "
                                 f"{m.group}.t_pos_idx) or an input point cloud {cloud!r} (array {cloud}.v_pos)")
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
    """The wire arrays of ``inputs`` (inverse of :func:`inputs_from_arrays`; UVs only where a mesh has them, colours
    only where a cloud has them)."""
    arrays: dict[str, np.ndarray] = {}
    for group, mesh in inputs.meshes.items():
        arrays[f"{group}.v_pos"], arrays[f"{group}.t_pos_idx"] = mesh.v_pos, mesh.t_pos_idx
        if mesh.has_uv:
            arrays[f"{group}.uv"], arrays[f"{group}.uv_idx"] = mesh.uv, mesh.uv_idx
    for group, points in inputs.point_clouds.items():
        arrays[f"{group}.v_pos"] = points
        if group in inputs.point_colors:
            arrays[f"{group}.v_color"] = inputs.point_colors[group]
    arrays.update(inputs.images)
    return arrays


def check_point_cloud(points, colors, group: str, error: type[ValueError] = ValueError,
                      as_input: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """One point cloud's positions (and colours) as float32 C-contiguous arrays, or one error naming ``group``.

    The rules a result's clouds obey (:func:`point_clouds_to_arrays`) and, with ``as_input``, those of a job's input
    cloud besides: a floating-point dtype, at most :data:`MAX_INPUT_POINTS` points, not all at one place.

    Args:
        points: (N, 3) positions, Blender world frame, metres. colors: (N, 3|4) linear RGB(A) in [0, 1], or None.
        group: the wire group, for messages (``points``, ``points_1``, ``points_b``).
        error: the exception class raised (``ValueError`` for results, ``MeshError`` for inputs).

    Raises:
        ``error``: no point, a shape other than (N, 3), a non-float dtype (inputs), NaN/Inf or a coordinate beyond
            ``MAX_COORDINATE`` metres, too many points or zero size (inputs), colours of another shape or outside
            [0, 1].
    """
    raw = np.asarray(points)
    if as_input and not np.issubdtype(raw.dtype, np.floating):
        raise error(f"point cloud {group}: points must be float32 coordinates, got dtype {raw.dtype}")
    if raw.ndim != 2 or raw.shape[1] != 3 or raw.shape[0] < 1:
        raise error(f"point cloud {group}: points must be (N, 3) with N >= 1, got {raw.shape}")
    if as_input and raw.shape[0] > MAX_INPUT_POINTS:
        raise error(f"point cloud {group} has {raw.shape[0]} points; the limit is {MAX_INPUT_POINTS} (subsample "
                    f"it first)")
    points = np.ascontiguousarray(raw, dtype=np.float32)
    if not np.isfinite(points).all() or float(np.abs(points).max()) > MAX_COORDINATE:
        raise error(f"point cloud {group}: coordinates must be finite and within ±{MAX_COORDINATE:g} m")
    if as_input and float(np.ptp(points, axis=0).max()) <= 0.0:
        raise error(f"point cloud {group} has zero size (all {points.shape[0]} points coincide)")
    if colors is None:
        return points, None
    raw_colors = np.asarray(colors)
    if as_input and not np.issubdtype(raw_colors.dtype, np.floating):
        raise error(f"point cloud {group}: colors must be float32 in [0, 1], got dtype {raw_colors.dtype}")
    colors = np.ascontiguousarray(raw_colors, dtype=np.float32)
    if colors.shape not in ((points.shape[0], 3), (points.shape[0], 4)):
        raise error(f"point cloud {group}: colors must be ({points.shape[0]}, 3|4), got {colors.shape}")
    if not np.isfinite(colors).all() or colors.min() < 0.0 or colors.max() > 1.0:
        raise error(f"point cloud {group}: colors must be finite and within [0, 1]")
    return points, colors


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
        points, colors = check_point_cloud(cloud.points, cloud.colors, group)
        arrays[f"{group}.v_pos"] = points
        if colors is not None:
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
