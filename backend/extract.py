"""From an implicit field to a clean, textured triangle mesh.

Generic: every function takes plain callables (``fn(points) -> values``) and knows nothing about NeRFs or shape
VAEs. The steps, in the order a pipeline uses them:

1. :func:`sample_grid` evaluates a scalar field on a regular grid, in bounded-memory chunks.
2. :func:`marching_cubes` (PyMCubes) extracts the level set as a world-space mesh, faces wound outward.
3. :func:`clean_mesh` merges duplicate vertices, drops degenerate faces and small floating components, decimates to
   a face budget (quadric error, package ``fast-simplification``) and orients closed components outward.
4. :func:`vertex_colors` / :func:`bake_texture` evaluate a colour (or latent) field at the vertices / at every texel
   of an xatlas UV layout rasterized in texture space.
5. :func:`transform_mesh` maps the result from the field's normalized frame back to the world frame.

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
import torch.nn.functional as F

from .mesh import MeshError, TriMesh, unwrap_uv
from .render import Rasterizer

__all__ = [
    "MIN_RESOLUTION", "MAX_RESOLUTION", "grid_bounds", "sample_grid", "marching_cubes", "extract_mesh", "clean_mesh",
    "vertex_colors", "bake_texture", "dilate_texture", "transform_mesh", "signed_volume",
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


def _check_chunk(chunk: int) -> int:
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    return int(chunk)


def _eval_chunk(fn: Callable, points: torch.Tensor, name: str, channels: int | None) -> torch.Tensor:
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
    chunk = _check_chunk(chunk)
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
        values = _eval_chunk(fn, points, "the field fn", channels=None)
        grid[start:start + len(flat)] = values.detach().to(device="cpu", dtype=torch.float32).numpy()
    return grid.reshape(resolution, resolution, resolution)


# ---------------------------------------------------------------------------------------------------------------------
# 2. Marching cubes.
# ---------------------------------------------------------------------------------------------------------------------

def signed_volume(v_pos: np.ndarray, t_pos_idx: np.ndarray) -> float:
    """Signed volume enclosed by a closed triangle mesh (divergence theorem), in cubic units of ``v_pos``.

    Positive when the faces are wound counter-clockwise seen from outside (normals point outward). ``v_pos`` (N, 3),
    ``t_pos_idx`` (F, 3). Meaningful for closed meshes only.
    """
    v = np.asarray(v_pos, dtype=np.float64)
    tri = np.asarray(t_pos_idx)
    return float(np.einsum("ij,ij->i", v[tri[:, 0]], np.cross(v[tri[:, 1]], v[tri[:, 2]])).sum() / 6.0)


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
# 4. Colours: per vertex, or baked into a UV texture.
# ---------------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def _eval_points(color_fn: FieldFn, points: torch.Tensor, chunk: int) -> torch.Tensor:
    """color_fn over (n, 3) points in chunks; (n, C) float32 on the points' device, C fixed by the first chunk."""
    outs = []
    channels = 0
    for start in range(0, points.shape[0], chunk):
        out = _eval_chunk(color_fn, points[start:start + chunk], "color_fn", channels=channels)
        channels = out.shape[1]
        outs.append(out.to(device=points.device, dtype=torch.float32))
    return torch.cat(outs, dim=0)


def vertex_colors(mesh: TriMesh, color_fn: FieldFn, chunk: int = 65_536,
                  device: torch.device | str = "cpu") -> np.ndarray:
    """Evaluate a colour (or latent) field at the mesh vertices.

    Args:
        mesh: triangle mesh; ``color_fn`` is evaluated at ``mesh.v_pos`` as given (same frame as the field: colour
            before :func:`transform_mesh`).
        color_fn: ``fn(points (n, 3) float32 on device) -> (n, C) float tensor``, n <= ``chunk``, no grad.
        chunk: points per call.
        device: where the points are created.

    Returns:
        (N, C) float32 array, row i = ``color_fn(v_pos[i])``; the range is ``color_fn``'s.

    Raises:
        ValueError: bad chunk, ``color_fn`` returning a wrong shape or NaN/Inf; MeshError: mesh without vertices.
    """
    chunk = _check_chunk(chunk)
    v_pos = np.asarray(mesh.v_pos, dtype=np.float32)
    if v_pos.ndim != 2 or v_pos.shape[1] != 3 or len(v_pos) == 0:
        raise MeshError(f"mesh has no vertices (v_pos shape {v_pos.shape})")
    points = torch.from_numpy(np.ascontiguousarray(v_pos)).to(device)
    return _eval_points(color_fn, points, chunk).cpu().numpy()


def dilate_texture(texture: torch.Tensor, mask: torch.Tensor, iterations: int, fill_rest: bool = True) -> torch.Tensor:
    """Fill the texels outside ``mask`` from the covered ones (gutter padding for baked UV textures).

    Each iteration gives every uncovered texel with a covered 8-neighbour the mean of its covered neighbours, so
    charts grow ``iterations`` texels outward; then (``fill_rest``) texels still uncovered get the mean of the
    covered texels, so mipmaps and wide filters average chart colours, not an arbitrary background.

    Args:
        texture: (H, W, C) float tensor; values outside ``mask`` are ignored.
        mask: (H, W) bool, True where the texel is covered by a chart.
        iterations: >= 0.
        fill_rest: fill the texels the dilation did not reach with the covered mean.

    Returns:
        (H, W, C) tensor, equal to ``texture`` inside ``mask``.

    Raises:
        ValueError: shapes disagree, negative iterations, or an empty mask.
    """
    if texture.dim() != 3 or mask.shape != texture.shape[:2] or mask.dtype != torch.bool:
        raise ValueError(f"texture must be (H, W, C) and mask (H, W) bool, got {tuple(texture.shape)} and "
                         f"{tuple(mask.shape)} {mask.dtype}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if not bool(mask.any()):
        raise ValueError("dilate_texture: the mask covers no texel")
    tex = (texture * mask[..., None]).permute(2, 0, 1)[:, None]  # (C, 1, H, W)
    covered = mask[None, None].to(texture.dtype)  # (1, 1, H, W)
    kernel = torch.ones(1, 1, 3, 3, dtype=texture.dtype, device=texture.device)
    for _ in range(iterations):
        count = F.conv2d(covered, kernel, padding=1)
        grow = (count > 0) & (covered == 0)
        if not bool(grow.any()):
            break
        summed = F.conv2d(tex, kernel, padding=1)
        tex = torch.where(grow, summed / count.clamp(min=1), tex)
        covered = torch.maximum(covered, grow.to(covered.dtype))
    out = tex[:, 0].permute(1, 2, 0)
    if fill_rest:
        mean = texture[mask].mean(dim=0)
        out = torch.where(covered[0, 0, :, :, None] > 0, out, mean)
    return out


_INT64_MAX = torch.iinfo(torch.int64).max


def _cross2(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _point_triangle_distance_2d(p: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    """Euclidean distance from points p (n, 2) to filled triangles tri (n, 3, 2); 0 inside (either winding)."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    d0, d1, d2 = _cross2(b - a, p - a), _cross2(c - b, p - b), _cross2(a - c, p - c)
    inside = ((d0 >= 0) & (d1 >= 0) & (d2 >= 0)) | ((d0 <= 0) & (d1 <= 0) & (d2 <= 0))
    inside &= _cross2(b - a, c - a).abs() > 0

    def segment(s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        e = s1 - s0
        t = (((p - s0) * e).sum(-1) / (e * e).sum(-1).clamp(min=1e-20)).clamp(0.0, 1.0)
        return (p - (s0 + t[:, None] * e)).norm(dim=-1)

    dist = torch.minimum(torch.minimum(segment(a, b), segment(b, c)), segment(c, a))
    return torch.where(inside, torch.zeros_like(dist), dist)


def _nearest_triangle_texels(tri_px: torch.Tensor, size: int, radius: float,
                             max_pairs: int = 1 << 22) -> torch.Tensor:
    """For every texel, the triangle nearest to its centre among those within ``radius`` texels.

    Args:
        tri_px: (F, 3, 2) float32 triangle corners in texel units (x = u·S − 0.5, y = v·S − 0.5: texel centres at
            integer coordinates, x = column, y = row).
        size: S.
        radius: search radius in texels (> 0).
        max_pairs: (triangle, texel) candidate pairs processed at once (bounds memory).

    Returns:
        (S, S) int64 triangle index + 1 of the nearest triangle, 0 where none lies within ``radius``.
    """
    device = tri_px.device
    lo = torch.ceil(tri_px.amin(dim=1) - radius).long().clamp(0, size - 1)  # (F, 2)
    hi = torch.floor(tri_px.amax(dim=1) + radius).long().clamp(0, size - 1)
    extent = (hi - lo + 1).clamp(min=0)
    counts = extent[:, 0] * extent[:, 1]
    ends = torch.cumsum(counts, dim=0)
    best = torch.full((size * size,), _INT64_MAX, dtype=torch.int64, device=device)
    total = int(ends[-1]) if len(ends) else 0
    for start in range(0, total, max_pairs):
        k = torch.arange(start, min(start + max_pairs, total), device=device)
        t = torch.searchsorted(ends, k, right=True)
        local = k - (ends[t] - counts[t])
        dy = torch.div(local, extent[t, 0], rounding_mode="floor")
        col = lo[t, 0] + local - dy * extent[t, 0]
        row = lo[t, 1] + dy
        p = torch.stack([col, row], dim=1).to(tri_px.dtype)
        dist = _point_triangle_distance_2d(p, tri_px[t])
        near = dist <= radius
        # Key: quantised distance in the high bits, triangle index in the low 32 bits; amin = nearest (ties: lowest id).
        key = ((dist[near] / radius * (1 << 30)).long() << 32) | t[near]
        best.scatter_reduce_(0, (row * size + col)[near], key, reduce="amin")
    face_id = torch.where(best == _INT64_MAX, torch.zeros_like(best), (best & 0xFFFFFFFF) + 1)
    return face_id.view(size, size)


def _gutter_barycentrics(p: torch.Tensor, tri: torch.Tensor, min_height: float = 0.1) -> torch.Tensor:
    """Barycentrics (n, 3) of points p (n, 2) in triangles tri (n, 3, 2), both in texel units.

    Extrapolated (some negative) when the triangle is well shaped in UV: its smallest altitude is at least
    ``min_height`` texels, so a point a texel or two outside stays near the surface. For thinner triangles (slivers
    of marching-cubes meshes), whose plane extrapolation would fly off, those of the closest point on the triangle.
    """
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    area2 = _cross2(b - a, c - a)  # twice the signed area
    edges = torch.stack([(c - b).norm(dim=-1), (a - c).norm(dim=-1), (b - a).norm(dim=-1)], dim=-1)  # opposite 0/1/2
    well_shaped = area2.abs() >= min_height * edges.amax(dim=-1)  # smallest altitude = 2A / longest edge
    safe = torch.where(area2.abs() > 0, area2, torch.ones_like(area2))
    w0 = _cross2(b - p, c - p) / safe
    w1 = _cross2(c - p, a - p) / safe
    extrapolated = torch.stack([w0, w1, 1.0 - w0 - w1], dim=-1)
    # Closest point: inside a non-degenerate triangle its own barycentrics, else the nearest point of an edge.
    inside = (extrapolated >= 0).all(dim=-1) & (area2.abs() > 0)
    rows = torch.arange(len(p), device=p.device)
    best_dist = torch.full_like(w0, torch.inf)
    closest = torch.zeros_like(extrapolated)
    for i in range(3):
        j = (i + 1) % 3
        s0, s1 = tri[:, i], tri[:, j]
        e = s1 - s0
        t = (((p - s0) * e).sum(-1) / (e * e).sum(-1).clamp(min=1e-20)).clamp(0.0, 1.0)
        dist = (p - (s0 + t[:, None] * e)).norm(dim=-1)
        better = dist < best_dist
        on_edge = torch.zeros_like(extrapolated)
        on_edge[rows, i] = 1.0 - t
        on_edge[rows, j] = t
        closest = torch.where(better[:, None], on_edge, closest)
        best_dist = torch.minimum(best_dist, dist)
    closest = torch.where(inside[:, None], extrapolated, closest)
    return torch.where(well_shaped[:, None], extrapolated, closest)


@torch.no_grad()
def bake_texture(mesh: TriMesh, color_fn: FieldFn, texture_size: int, rasterizer: Rasterizer, chunk: int = 65_536,
                 extrapolate: int = 2, dilation: int = 8, uv_padding: int = 4,
                 reuse_uv: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bake a colour (or latent) field into a UV texture of ``mesh``.

    1. UVs: the mesh's own when it has them (and ``reuse_uv``), else an xatlas unwrap (:func:`backend.mesh.unwrap_uv`
       with ``uv_padding`` texels between charts at ``texture_size``).
    2. The UV layout is rasterized in texture space (``pos_clip = (2u - 1, 2v - 1, 0, 1)``, one rasterizer vertex per
       face corner so any UV layout works); the 3-D position of every covered texel centre is interpolated.
    3. ``extrapolate`` rings of texels around the charts get positions on the plane of their nearest triangle
       (barycentrics extrapolated), so bilinear lookups at chart borders stay on the chart's own values.
    4. ``color_fn`` is evaluated at all those positions (in chunks).
    5. The rest of the gutter is filled with :func:`dilate_texture` (``dilation`` texels, then the covered mean).

    Args:
        mesh: triangle mesh in the field's frame (``color_fn`` is evaluated at positions on ``mesh.v_pos``'s
            triangles: bake before :func:`transform_mesh`; UVs do not change under it).
        color_fn: ``fn(points (n, 3) float32 on rasterizer.device) -> (n, C) float tensor``; C is free (3 for RGB,
            4 for SD latents the caller decodes afterwards). Points of the extrapolated rings lie up to
            ``extrapolate`` texels (in surface units) off the triangles.
        texture_size: S, texture side in texels, in [8, 8192].
        rasterizer: any :class:`backend.render.Rasterizer` (TorchRasterizer on CPU, nvdiffrast on CUDA).
        chunk: points per ``color_fn`` call.
        extrapolate: rings of texels evaluated by extrapolation around the charts (>= 0; 1 suffices for bilinear
            filtering, keep it below half of ``uv_padding`` so neighbouring charts do not compete).
        dilation: further gutter texels grown by averaging (>= 0).
        uv_padding: xatlas padding in texels (when unwrapping).
        reuse_uv: keep ``mesh.uv`` / ``mesh.uv_idx`` when present.

    Returns:
        ``(uv (M, 2) float32 in [0, 1], uv_idx (F, 3) int32, texture (S, S, C) float32)``. Texture convention as the
        rasterizer's: texel (row r, col c) is centred at uv = ((c + 0.5) / S, (r + 0.5) / S), so **row 0 <-> v ≈ 0**
        (the bottom of the image); flip rows (``texture[::-1]``) for a PNG / the wire, whose row 0 is the top.
        Sampling it with ``rasterizer.texture`` at a surface point's uv returns ``color_fn`` there.

    Raises:
        MeshError: mesh without faces, or xatlas failure; ValueError: bad texture_size / chunk / extrapolate /
        dilation, a UV layout covering no texel centre, or ``color_fn`` returning a wrong shape or NaN/Inf.
    """
    if isinstance(texture_size, bool) or not isinstance(texture_size, (int, np.integer)) or not 8 <= texture_size <= 8192:
        raise ValueError(f"texture_size must be an int in [8, 8192], got {texture_size!r}")
    chunk = _check_chunk(chunk)
    if extrapolate < 0 or dilation < 0:
        raise ValueError(f"extrapolate and dilation must be >= 0, got {extrapolate} and {dilation}")
    v_pos = np.asarray(mesh.v_pos, dtype=np.float32)
    tri = np.asarray(mesh.t_pos_idx, dtype=np.int32)
    if tri.ndim != 2 or tri.shape[1] != 3 or len(tri) == 0:
        raise MeshError(f"cannot bake a texture on a mesh without faces (t_pos_idx shape {tri.shape})")
    # 1. UVs.
    if reuse_uv and mesh.has_uv:
        uv = np.asarray(mesh.uv, dtype=np.float32)
        uv_idx = np.asarray(mesh.uv_idx, dtype=np.int32)
        if uv_idx.shape != tri.shape:
            raise MeshError(f"uv_idx shape {uv_idx.shape} does not match t_pos_idx {tri.shape}")
    else:
        uv, uv_idx = unwrap_uv(v_pos, tri, padding=uv_padding, resolution=int(texture_size))
    # 2. Rasterize the layout in texture space, one vertex per face corner.
    device = rasterizer.device
    size = int(texture_size)
    corner_uv = torch.from_numpy(uv[uv_idx.reshape(-1)]).to(device)  # (3F, 2)
    corner_pos = torch.from_numpy(v_pos[tri.reshape(-1)]).to(device)  # (3F, 3)
    corner_tri = torch.arange(corner_uv.shape[0], dtype=torch.int32, device=device).reshape(-1, 3)
    ones = torch.ones_like(corner_uv[:, :1])
    pos_clip = torch.cat([corner_uv * 2.0 - 1.0, ones * 0.0, ones], dim=1)[None].contiguous()
    rast_out = rasterizer.rasterize(pos_clip, corner_tri, (size, size))[0]  # (S, S, 4)
    covered = rast_out[..., 3] > 0
    if not bool(covered.any()):
        raise ValueError(f"the UV layout covers no texel centre at texture_size {size}")
    texel_pos = rasterizer.interpolate(corner_pos, rast_out[None], corner_tri)[0]  # (S, S, 3)
    # 3. Gutter texels within `extrapolate` texels of a triangle: the nearest triangle's plane, barycentrics
    #    extrapolated (exact continuation of a field linear over the triangle), so bilinear lookups at chart borders
    #    and on charts thinner than a texel read their own chart's values.
    filled = covered
    if extrapolate > 0:
        tri_px = corner_uv.reshape(-1, 3, 2) * size - 0.5
        face_id = _nearest_triangle_texels(tri_px, size, float(extrapolate))
        ring = (face_id > 0) & ~covered
        if bool(ring.any()):
            rows, cols = torch.nonzero(ring, as_tuple=True)
            face = face_id[rows, cols] - 1
            p = torch.stack([cols, rows], dim=1).to(tri_px.dtype)
            bary = _gutter_barycentrics(p, tri_px[face])  # (K, 3)
            texel_pos[rows, cols] = (bary[:, :, None] * corner_pos.reshape(-1, 3, 3)[face]).sum(dim=1)
            filled = covered | ring
    # 4. Evaluate the field.
    values = _eval_points(color_fn, texel_pos[filled].contiguous(), chunk)  # (K, C)
    texture = torch.zeros(size, size, values.shape[1], dtype=torch.float32, device=device)
    texture[filled] = values
    # 5. Gutter.
    texture = dilate_texture(texture, filled, int(dilation))
    return uv, uv_idx, texture.cpu().numpy()


# ---------------------------------------------------------------------------------------------------------------------
# 5. Back to the world frame.
# ---------------------------------------------------------------------------------------------------------------------

def transform_mesh(mesh: TriMesh, scale: float, center: Sequence[float] | np.ndarray) -> TriMesh:
    """Map a mesh from a normalized frame back to the world: ``v_world = v_norm / scale + center``.

    The inverse of :func:`backend.mesh.normalize_vertices` (``v_norm = (v_world − center) · scale``). A positive
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
