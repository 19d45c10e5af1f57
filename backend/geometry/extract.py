"""From an implicit field to a clean triangle mesh (colours and textures: :mod:`backend.geometry.bake`).

Generic: every function takes plain callables (``fn(points) -> values``) and knows nothing about NeRFs or shape
VAEs. The steps, in the order a pipeline uses them:

1. :func:`sample_grid` evaluates a scalar field on a regular grid, in bounded-memory chunks.
2. :func:`marching_cubes` (PyMCubes) extracts the level set as a world-space mesh, faces wound outward.
3. :func:`clean_mesh` merges duplicate vertices, drops degenerate faces and small floating components, decimates to
   a face budget (quadric error, package ``fast-simplification``) and orients closed components outward.
4. :func:`transform_mesh` maps the result from the field's normalized frame back to the world frame.

Grid convention (used by :func:`sample_grid` and :func:`marching_cubes`): a grid of shape (Rx, Ry, Rz) over the box
[min, max] is indexed ``grid[i, j, k]`` = field at ``min + (i, j, k) * (max - min) / (R - 1)``: index order
[x, y, z], axis 0 = x, samples at both end points (like ``np.linspace(min, max, R)``), no half-voxel offset.

Frames: whatever frame the field lives in (Blender's world frame, or a pipeline's normalized frame); positions are
passed to the callables in that frame, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .mesh import MeshError, TriMesh

__all__ = [
    "MIN_RESOLUTION", "MAX_RESOLUTION", "grid_bounds", "sample_grid", "marching_cubes", "extract_mesh", "clean_mesh",
    "transform_mesh", "check_chunk", "eval_field_chunk",
]

MIN_RESOLUTION = 8
MAX_RESOLUTION = 1024

Bound = float | tuple[Sequence[float], Sequence[float]]
FieldFn = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------------------------------
# 1. Sampling a field on a grid.
# ---------------------------------------------------------------------------------------------------------------------

def grid_bounds(bound: Bound) -> tuple[np.ndarray, np.ndarray]:
    """The box a grid covers, as ``(bmin (3,) float64, bmax (3,) float64)``.

    Args:
        bound: a positive float ``b`` for the cube [-b, b]³, or a pair ``(min corner (3,), max corner (3,))``.

    Raises:
        ValueError: not a positive finite float / not two finite 3-vectors with max > min on every axis.
    """
    if isinstance(bound, (int, float, np.floating, np.integer)) and not isinstance(bound, bool):
        b = float(bound)
        if not np.isfinite(b) or b <= 0:
            raise ValueError(f"bound must be a positive finite number or (min, max) corners, got {bound!r}")
        return np.full(3, -b), np.full(3, b)
    try:
        bmin, bmax = (np.asarray(c, dtype=np.float64) for c in bound)
    except (TypeError, ValueError):
        raise ValueError(f"bound must be a positive number or a (min corner, max corner) pair, got {bound!r}") from None
    if bmin.shape != (3,) or bmax.shape != (3,) or not (np.isfinite(bmin).all() and np.isfinite(bmax).all()):
        raise ValueError(f"bound corners must be two finite 3-vectors, got {bound!r}")
    if not (bmax > bmin).all():
        raise ValueError(f"bound max corner must exceed the min corner on every axis, got min {bmin.tolist()}, "
                         f"max {bmax.tolist()}")
    return bmin, bmax


def _check_resolution(resolution: int) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise ValueError(f"grid resolution must be an int, got {resolution!r}")
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ValueError(f"grid resolution {resolution} is outside [{MIN_RESOLUTION}, {MAX_RESOLUTION}]")
    return int(resolution)


def check_chunk(chunk: int) -> int:
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    return int(chunk)


def eval_field_chunk(fn: Callable, points: torch.Tensor, name: str, channels: int | None) -> torch.Tensor:
    """Call ``fn`` on (n, 3) points; check it returned (n,) (channels None) or (n, C), finite."""
    out = fn(points)
    n = points.shape[0]
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"{name} must return a torch.Tensor, got {type(out).__name__}")
    if channels is None and tuple(out.shape) != (n,):
        raise ValueError(f"{name} must return shape ({n},) for {n} points, got {tuple(out.shape)}")
    if channels is not None and (out.dim() != 2 or out.shape[0] != n or (channels > 0 and out.shape[1] != channels)):
        expected = f"({n}, {channels})" if channels > 0 else f"({n}, C)"
        raise ValueError(f"{name} must return shape {expected} for {n} points, got {tuple(out.shape)}")
    finite = torch.isfinite(out) if out.dim() == 1 else torch.isfinite(out).all(dim=1)
    if not bool(finite.all()):
        first = int(torch.nonzero(~finite)[0, 0])
        raise ValueError(f"{name} returned NaN/Inf at {int((~finite).sum())} of {n} points "
                         f"(first at {[round(float(c), 4) for c in points[first]]})")
    return out


@torch.no_grad()
def sample_grid(fn: FieldFn, resolution: int, bound: Bound = 1.0, chunk: int = 262_144,
                device: torch.device | str = "cpu") -> np.ndarray:
    """Evaluate a scalar field on a regular R³ grid.

    The points of each chunk are generated from their flat indices (no full coordinate grid is ever built), so the
    peak memory is the (R, R, R) float32 result plus one chunk of points and values.

    Args:
        fn: the field, ``fn(points (n, 3) float32 on device) -> (n,) float tensor``, called with n <= ``chunk`` under
            ``torch.no_grad()``. Points are in the frame of ``bound``.
        resolution: R, samples per axis, in [MIN_RESOLUTION, MAX_RESOLUTION] = [8, 1024].
        bound: the box sampled: b for [-b, b]³, or ``(min corner, max corner)`` (see :func:`grid_bounds`).
        chunk: points per call of ``fn``.
        device: where the points are created (that of ``fn``'s parameters).

    Returns:
        (R, R, R) float32 array, index order [x, y, z]: ``grid[i, j, k] = fn(bmin + (i, j, k) * (bmax - bmin) / (R - 1))``
        (end points included, as ``np.linspace``).

    Raises:
        ValueError: resolution outside [8, 1024], bad bound or chunk, or ``fn`` returning a wrong shape or NaN/Inf
            (naming the first bad point).
    """
    resolution = _check_resolution(resolution)
    chunk = check_chunk(chunk)
    bmin, bmax = grid_bounds(bound)
    device = torch.device(device)
    step = torch.tensor((bmax - bmin) / (resolution - 1), dtype=torch.float32, device=device)
    origin = torch.tensor(bmin, dtype=torch.float32, device=device)
    total = resolution ** 3
    grid = np.empty(total, dtype=np.float32)
    for start in range(0, total, chunk):
        flat = torch.arange(start, min(start + chunk, total), device=device, dtype=torch.int64)
        ijk = torch.stack([flat // (resolution * resolution), (flat // resolution) % resolution, flat % resolution],
                          dim=1)
        points = origin + ijk.to(torch.float32) * step
        values = eval_field_chunk(fn, points, "the field fn", channels=None)
        grid[start:start + len(flat)] = values.detach().to(device="cpu", dtype=torch.float32).numpy()
    return grid.reshape(resolution, resolution, resolution)


# ---------------------------------------------------------------------------------------------------------------------
# 2. Marching cubes.
# ---------------------------------------------------------------------------------------------------------------------


def marching_cubes(grid: np.ndarray, level: float, bound: Bound = 1.0, inside: str = "above") -> TriMesh:
    """Extract the ``level`` set of a sampled field with PyMCubes, in the grid's world coordinates.

    Args:
        grid: (Rx, Ry, Rz) float array, index order [x, y, z], each R >= 2, sampled as :func:`sample_grid` does
            (end points included): ``grid[i, j, k]`` is the field at ``bmin + (i, j, k) * (bmax - bmin) / (R - 1)``.
        level: iso value (finite).
        bound: the box the grid spans (see :func:`grid_bounds`).
        inside: ``"above"`` if the solid is where field > level (density, occupancy), ``"below"`` if it is where
            field < level (signed distance).

    Returns:
        :class:`TriMesh` with ``v_pos`` (N, 3) float32 in the frame of ``bound`` and ``t_pos_idx`` (F, 3) int32 wound
        counter-clockwise seen from outside the solid (closed parts have positive :func:`signed_volume`). Surfaces
        cut by the box are left open there. Zero-area faces (where samples equal ``level`` exactly) may remain:
        :func:`clean_mesh` removes them.

    Raises:
        ValueError: grid not 3-D float with each side >= 2, NaN/Inf in the grid, non-finite level, bad bound, bad
            ``inside``.
        MeshError: the field never crosses ``level`` ("the field has no surface at level ...").
    """
    import mcubes

    grid = np.asarray(grid)
    if grid.ndim != 3 or min(grid.shape) < 2 or not np.issubdtype(grid.dtype, np.floating):
        raise ValueError(f"grid must be a 3-D float array with every side >= 2, got shape {grid.shape} {grid.dtype}")
    if inside not in ("above", "below"):
        raise ValueError(f"inside must be 'above' or 'below', got {inside!r}")
    level = float(level)
    if not np.isfinite(level):
        raise ValueError(f"level must be finite, got {level}")
    bad = ~np.isfinite(grid)
    if bad.any():
        raise ValueError(f"grid has {int(bad.sum())} NaN/Inf samples (first at index "
                         f"{tuple(int(i) for i in np.unravel_index(np.argmax(bad), grid.shape))})")
    bmin, bmax = grid_bounds(bound)
    # PyMCubes winds faces outward when the solid is where the field is above the level; negate for "below".
    volume = grid if inside == "above" else -grid
    iso = level if inside == "above" else -level
    vertices, faces = mcubes.marching_cubes(np.ascontiguousarray(volume), iso)
    if len(faces) == 0:
        raise MeshError(f"the field has no surface at level {level:g} (grid values span "
                        f"[{float(grid.min()):g}, {float(grid.max()):g}])")
    step = (bmax - bmin) / (np.asarray(grid.shape, dtype=np.float64) - 1.0)
    v_pos = (bmin + vertices * step).astype(np.float32)
    return TriMesh(v_pos, faces.astype(np.int32))


def extract_mesh(fn: FieldFn, resolution: int, level: float, bound: Bound = 1.0, inside: str = "above",
                 chunk: int = 262_144, device: torch.device | str = "cpu") -> TriMesh:
    """:func:`sample_grid` then :func:`marching_cubes`: the raw level-set mesh of ``fn`` (see both for arguments)."""
    grid = sample_grid(fn, resolution, bound, chunk=chunk, device=device)
    return marching_cubes(grid, level, bound, inside=inside)


# ---------------------------------------------------------------------------------------------------------------------
# 3. Clean-up.
# ---------------------------------------------------------------------------------------------------------------------

def _merge_duplicate_vertices(v_pos: np.ndarray, t_pos_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices with bit-identical float32 positions (after folding -0.0 to 0.0); drop unreferenced ones."""
    v = np.ascontiguousarray(v_pos, dtype=np.float32) + np.float32(0.0)
    keys = v.view(np.dtype((np.void, 12))).ravel()  # one 12-byte key per vertex: a 1-D unique, much faster than rows
    used = np.unique(t_pos_idx)
    _, first, inverse = np.unique(keys[used], return_index=True, return_inverse=True)
    remap = np.full(len(v), -1, dtype=np.int64)
    remap[used] = inverse.reshape(-1)
    return v[used[first]], remap[t_pos_idx].astype(np.int32)


def _drop_degenerate_faces(v_pos: np.ndarray, t_pos_idx: np.ndarray) -> np.ndarray:
    """Faces with a repeated vertex index or an area below 1e-12 of the squared bounding-box diagonal removed."""
    tri = t_pos_idx
    distinct = (tri[:, 0] != tri[:, 1]) & (tri[:, 1] != tri[:, 2]) & (tri[:, 2] != tri[:, 0])
    v = v_pos.astype(np.float64)
    diag2 = float(np.sum(np.ptp(v, axis=0) ** 2)) if len(v) else 0.0
    area2 = np.sum(np.cross(v[tri[:, 1]] - v[tri[:, 0]], v[tri[:, 2]] - v[tri[:, 0]]) ** 2, axis=1)  # (2·area)²
    return tri[distinct & (area2 > (2e-12 * diag2) ** 2)]


def _compact(v_pos: np.ndarray, t_pos_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop unreferenced vertices, keeping the order of the others."""
    used = np.zeros(len(v_pos), dtype=bool)
    used[t_pos_idx.reshape(-1)] = True
    remap = np.cumsum(used) - 1
    return np.ascontiguousarray(v_pos[used]), remap[t_pos_idx].astype(np.int32)


def _face_components(num_vertices: int, t_pos_idx: np.ndarray) -> tuple[int, np.ndarray]:
    """Connected components (sharing a vertex) of the faces: ``(count, label (F,) int64)``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    tri = t_pos_idx
    rows = np.concatenate([tri[:, 0], tri[:, 1]])
    cols = np.concatenate([tri[:, 1], tri[:, 2]])
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(num_vertices, num_vertices))
    count, vertex_label = connected_components(graph, directed=False)
    return count, vertex_label[tri[:, 0]].astype(np.int64)


def _face_areas(v_pos: np.ndarray, t_pos_idx: np.ndarray) -> np.ndarray:
    v = v_pos.astype(np.float64)
    tri = t_pos_idx
    return 0.5 * np.linalg.norm(np.cross(v[tri[:, 1]] - v[tri[:, 0]], v[tri[:, 2]] - v[tri[:, 0]]), axis=1)


def _edge_keys(t_pos_idx: np.ndarray, num_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """Directed edge keys (3F,) int64 (a -> b as a·V + b) and the undirected keys (min·V + max)."""
    a = t_pos_idx.reshape(-1).astype(np.int64)
    b = t_pos_idx[:, [1, 2, 0]].reshape(-1).astype(np.int64)
    return a * num_vertices + b, np.minimum(a, b) * num_vertices + np.maximum(a, b)


def _orient_outward(v_pos: np.ndarray, t_pos_idx: np.ndarray) -> np.ndarray:
    """Consistent winding, then every closed component wound outward (positive signed volume).

    Winding is checked in numpy (a consistently wound manifold uses each directed edge once); only when it is not
    consistent does ``trimesh.repair.fix_winding`` (graph traversal, slow on large meshes) run. Open components keep
    their (consistent) orientation: "outward" is undefined for them.
    """
    directed, undirected = _edge_keys(t_pos_idx, len(v_pos))
    if len(np.unique(directed)) != len(directed):
        import trimesh

        tm = trimesh.Trimesh(v_pos, t_pos_idx, process=False)
        trimesh.repair.fix_winding(tm)
        t_pos_idx = np.asarray(tm.faces, dtype=np.int32)
        directed, undirected = _edge_keys(t_pos_idx, len(v_pos))
    count, label = _face_components(len(v_pos), t_pos_idx)
    # A component is closed when each of its undirected edges is used by exactly two faces.
    _, edge_inverse, edge_count = np.unique(undirected, return_inverse=True, return_counts=True)
    edge_label = np.repeat(label, 3)
    open_edges = np.bincount(edge_label, weights=(edge_count[edge_inverse.reshape(-1)] != 2), minlength=count)
    # Signed volume per component, about its own centroid (exact for closed components).
    v = v_pos.astype(np.float64)
    corners = v[t_pos_idx]  # (F, 3, 3)
    centroid = np.stack([np.bincount(label, weights=corners[:, :, d].mean(axis=1), minlength=count) for d in range(3)],
                        axis=1) / np.maximum(np.bincount(label, minlength=count), 1)[:, None]
    rel = corners - centroid[label][:, None, :]
    vol6 = np.einsum("ij,ij->i", rel[:, 0], np.cross(rel[:, 1], rel[:, 2]))
    volume = np.bincount(label, weights=vol6, minlength=count) / 6.0
    flip = ((open_edges == 0) & (volume < 0))[label]
    t_pos_idx = t_pos_idx.copy()
    t_pos_idx[flip] = t_pos_idx[flip][:, ::-1]
    return t_pos_idx


def _decimate(v_pos: np.ndarray, t_pos_idx: np.ndarray, face_budget: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        import fast_simplification
    except ImportError:
        raise RuntimeError("decimation to a face budget needs the package 'fast-simplification' "
                           "(pip install fast-simplification), or pass face_budget=None") from None
    v, tri = fast_simplification.simplify(v_pos.astype(np.float64), t_pos_idx.astype(np.int32),
                                          target_count=int(face_budget))
    return np.asarray(v, dtype=np.float32), np.asarray(tri, dtype=np.int32)


def clean_mesh(mesh: TriMesh, min_component_ratio: float = 0.02, component_measure: str = "area",
               keep_largest: int | None = None, face_budget: int | None = None, orient: bool = True) -> TriMesh:
    """Make a raw extracted mesh usable: merge, drop degenerate faces and floaters, decimate, orient.

    Steps: (1) merge vertices with identical positions; (2) drop faces with a repeated vertex or zero area;
    (3) split into connected components and keep those whose size (total area or face count) is at least
    ``min_component_ratio`` × the largest one's, and at most the ``keep_largest`` largest; (4) if the mesh has more
    than ``face_budget`` faces, quadric-error decimation (``fast-simplification``) to that count; (5) consistent
    winding and closed components wound outward. UVs are dropped (the topology changes): unwrap afterwards.

    Args:
        mesh: triangle mesh (uv ignored).
        min_component_ratio: in [0, 1]; 0 keeps every component.
        component_measure: ``"area"`` (resolution independent) or ``"faces"``.
        keep_largest: keep at most this many components (>= 1), or None for no limit.
        face_budget: maximum number of faces (>= 4), or None for no decimation.
        orient: run step (5).

    Returns:
        A new :class:`TriMesh` (v_pos (N, 3) float32, t_pos_idx (F, 3) int32, no uv), vertices unreferenced by any
        face removed.

    Raises:
        MeshError: no faces, or no non-degenerate face.
        ValueError: bad argument values.
        RuntimeError: ``face_budget`` set (and exceeded) but ``fast-simplification`` is not installed.
    """
    if not 0.0 <= float(min_component_ratio) <= 1.0:
        raise ValueError(f"min_component_ratio must be in [0, 1], got {min_component_ratio!r}")
    if component_measure not in ("area", "faces"):
        raise ValueError(f"component_measure must be 'area' or 'faces', got {component_measure!r}")
    if keep_largest is not None and (isinstance(keep_largest, bool) or int(keep_largest) != keep_largest
                                     or keep_largest < 1):
        raise ValueError(f"keep_largest must be a positive int or None, got {keep_largest!r}")
    if face_budget is not None and (isinstance(face_budget, bool) or int(face_budget) != face_budget or face_budget < 4):
        raise ValueError(f"face_budget must be an int >= 4 or None, got {face_budget!r}")
    v_pos = np.asarray(mesh.v_pos, dtype=np.float32)
    tri = np.asarray(mesh.t_pos_idx)
    if v_pos.ndim != 2 or v_pos.shape[1] != 3 or tri.ndim != 2 or tri.shape[1] != 3 or len(tri) == 0:
        raise MeshError(f"cannot clean a mesh with v_pos {v_pos.shape} and t_pos_idx {tri.shape}")
    if tri.min() < 0 or tri.max() >= len(v_pos):
        raise MeshError(f"face indices outside [0, {len(v_pos)}): min {int(tri.min())}, max {int(tri.max())}")
    if not np.isfinite(v_pos[np.unique(tri)]).all():
        raise MeshError("mesh has NaN/Inf vertex positions")

    # 1-2. Merge duplicates, drop degenerate faces.
    v_pos, tri = _merge_duplicate_vertices(v_pos, tri.astype(np.int64))
    tri = _drop_degenerate_faces(v_pos, tri)
    if len(tri) == 0:
        raise MeshError("mesh has no non-degenerate faces")

    # 3. Components.
    count, label = _face_components(len(v_pos), tri)
    if component_measure == "area":
        size = np.bincount(label, weights=_face_areas(v_pos, tri), minlength=count)
    else:
        size = np.bincount(label, minlength=count).astype(np.float64)
    keep = size >= float(min_component_ratio) * size.max()
    if keep_largest is not None and count > keep_largest:
        order = np.argsort(-size, kind="stable")
        keep[order[int(keep_largest):]] = False
    tri = tri[keep[label]]
    v_pos, tri = _compact(v_pos, tri)

    # 4. Decimation.
    if face_budget is not None and len(tri) > face_budget:
        v_pos, tri = _decimate(v_pos, tri, int(face_budget))
        tri = _drop_degenerate_faces(v_pos, tri)
        v_pos, tri = _compact(v_pos, tri)
        if len(tri) == 0:
            raise MeshError(f"decimation to {face_budget} faces left no valid face")

    # 5. Orientation.
    if orient:
        tri = _orient_outward(v_pos, tri)
    return TriMesh(np.ascontiguousarray(v_pos, dtype=np.float32), np.ascontiguousarray(tri, dtype=np.int32))


# ---------------------------------------------------------------------------------------------------------------------
# 4. Back to the world frame.
# ---------------------------------------------------------------------------------------------------------------------

def transform_mesh(mesh: TriMesh, scale: float, center: Sequence[float] | np.ndarray) -> TriMesh:
    """Map a mesh from a normalized frame back to the world: ``v_world = v_norm / scale + center``.

    The inverse of :func:`backend.geometry.mesh.normalize_vertices` (``v_norm = (v_world − center) · scale``). A positive
    uniform scale keeps the faces' winding outward. Faces and UVs are kept (shared, not copied).

    Args:
        mesh: mesh in the normalized frame.
        scale: the normalisation's positive, finite scale factor.
        center: (3,) the normalisation's centre, world units.

    Raises:
        ValueError: scale not positive/finite, center not a finite 3-vector.
    """
    scale = float(scale)
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be positive and finite, got {scale}")
    center = np.asarray(center, dtype=np.float64)
    if center.shape != (3,) or not np.isfinite(center).all():
        raise ValueError(f"center must be a finite 3-vector, got {center!r}")
    v_pos = (np.asarray(mesh.v_pos, dtype=np.float64) / scale + center).astype(np.float32)
    return TriMesh(v_pos, mesh.t_pos_idx, mesh.uv, mesh.uv_idx)
