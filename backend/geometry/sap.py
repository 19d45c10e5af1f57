"""Points → watertight mesh: Shape As Points' differentiable Poisson solver (DPSR) with estimated normals.

After Peng et al., "Shape As Points: A Differentiable Poisson Solver" (NeurIPS 2021), §3.1: oriented points are
splatted (trilinear weights) into a periodic grid vector field ``V``; the indicator ``χ`` solves ``∇²χ = ∇·V``, which
in the spectral domain (``torch.fft``) is one division per frequency ``k`` (cycles per metre):

    χ̂(k) = G_σ(k) · (−i · k·V̂(k)) / (2π · |k|²),   χ̂(0) = 0,   G_σ(k) = exp(−2π² σ² |k|²)

(a Gaussian of standard deviation σ smooths the splatted field, as SAP's ``spec_gaussian_filter``). ``χ`` is then
shifted so its mean over the input points is 0 and scaled so the grid's border (outside) averages +1: the surface is
the level 0, the inside negative — marching cubes at 0 (:func:`backend.geometry.extract.marching_cubes`, ``inside=
"below"``) and the usual clean-up (:func:`backend.geometry.extract.clean_mesh`) give a closed mesh. The solver is
differentiable in the points and normals (it is plain torch).

What is NOT used: SAP's learned point-upsampling / denoising network (its weights are not available here). We use
the optimisation-free DPSR solver with normals estimated from the points, because LION outputs points only:

- :func:`estimate_normals`: PCA of the k nearest neighbours (the normal is the direction of least variance),
  oriented consistently by Hoppe et al.'s rule ("Surface reconstruction from unorganized points", SIGGRAPH 1992):
  propagate along the minimum spanning tree of the k-NN graph weighted by ``1 − |n_i·n_j|`` (the orientation only
  crosses edges between near-parallel normals, where a flip is unambiguous), seeded per connected part at the point
  farthest from the part's centroid, whose outward normal must point away from that centroid (a point at maximal
  distance from the centroid has its tangent plane perpendicular to the radius).
- A wholly inverted orientation cannot survive: the solved field's sign is fixed from the grid border, which lies
  outside every shape, so only local orientation errors matter.
- Library fallback: none is used. No Poisson-reconstruction library is installed with the backend (Open3D's
  ``create_from_point_cloud_poisson`` would be the candidate); when DPSR finds no surface, :func:`reconstruct_surface`
  raises :class:`~backend.geometry.mesh.MeshError` naming the cause.

Frames: whatever frame the points are in (Blender's world frame for pipeline results), unchanged; the grid is an
axis-aligned padded cube around the points' bounding box.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .extract import MAX_RESOLUTION, MIN_RESOLUTION, clean_mesh, marching_cubes
from .mesh import MeshError, TriMesh

__all__ = ["check_points", "estimate_normals", "poisson_indicator", "reconstruct_surface", "PoissonGrid"]


def check_points(points: np.ndarray | torch.Tensor, name: str = "points", min_points: int = 1) -> np.ndarray:
    """``points`` as a (N, 3) float64 array, or one clear error.

    Raises:
        ValueError: not (N, 3), fewer than ``min_points`` points, or NaN/Inf (naming ``name`` and the first bad row).
    """
    arr = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    if arr.ndim != 2 or arr.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (N, 3), got {tuple(arr.shape)}")
    if len(arr) < min_points:
        raise ValueError(f"{name} has {len(arr)} points; at least {min_points} are needed")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ValueError(f"{name} has NaN/Inf at {int(bad.sum())} of {len(arr)} points (first at row "
                         f"{int(np.flatnonzero(bad)[0])})")
    return arr


# ---------------------------------------------------------------------------------------------------------------------
# 1. Normals.
# ---------------------------------------------------------------------------------------------------------------------

def _knn(points: np.ndarray, k: int) -> np.ndarray:
    """(N, k) int64 indices of each point's k nearest neighbours (itself first), by point-cloud-utils' KD tree."""
    import point_cloud_utils as pcu

    _, idx = pcu.k_nearest_neighbors(points, points, k)
    return np.asarray(idx, dtype=np.int64).reshape(len(points), k)


def estimate_normals(points: np.ndarray, k: int = 16) -> np.ndarray:
    """Unit normals of a point cloud sampled on closed surfaces, oriented outward.

    PCA of each point's ``k`` nearest neighbours, then Hoppe et al.'s (1992) minimum-spanning-tree propagation per
    connected part of the k-NN graph, seeded at the point farthest from the part's centroid (see the module notes).

    Args:
        points: (N, 3) float positions, N > k, any frame and unit.
        k: neighbours per point (including itself), in [4, 64].

    Returns:
        (N, 3) float32 unit normals.

    Raises:
        ValueError: bad points (empty, NaN, wrong shape), too few points for ``k``, or ``k`` out of range.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order, connected_components, minimum_spanning_tree

    if not 4 <= int(k) <= 64:
        raise ValueError(f"k = {k} neighbours is outside [4, 64]")
    pts = check_points(points, min_points=int(k) + 1)
    n = len(pts)
    idx = _knn(pts, int(k))
    nbrs = pts[idx]  # (N, k, 3)
    centred = nbrs - nbrs.mean(axis=1, keepdims=True)
    cov = np.einsum("nki,nkj->nij", centred, centred)
    _, vecs = np.linalg.eigh(cov)  # ascending eigenvalues
    normals = vecs[:, :, 0]

    # Riemannian graph: k-NN edges weighted 1 - |n_i . n_j| (+ a floor: scipy drops zero-weight edges).
    rows = np.repeat(np.arange(n), k - 1)
    cols = idx[:, 1:].reshape(-1)
    weight = 1.0 - np.abs(np.einsum("ij,ij->i", normals[rows], normals[cols])) + 1e-6
    graph = coo_matrix((weight, (rows, cols)), shape=(n, n)).tocsr()
    graph = graph.maximum(graph.T)
    tree = minimum_spanning_tree(graph)
    tree = tree + tree.T
    count, label = connected_components(tree, directed=False)
    for part in range(count):
        members = np.flatnonzero(label == part)
        centroid = pts[members].mean(axis=0)
        seed = int(members[np.argmax(np.linalg.norm(pts[members] - centroid, axis=1))])
        if float(np.dot(normals[seed], pts[seed] - centroid)) < 0:
            normals[seed] = -normals[seed]
        order, pred = breadth_first_order(tree, seed, directed=False, return_predecessors=True)
        for node in order[1:]:  # parents come before children in BFS order
            if float(np.dot(normals[node], normals[pred[node]])) < 0:
                normals[node] = -normals[node]
    return (normals / np.linalg.norm(normals, axis=1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# 2. The spectral Poisson solver.
# ---------------------------------------------------------------------------------------------------------------------

class PoissonGrid:
    """The periodic grid of the solver: R samples per axis, spacing ``h``, sample ``[i, j, k]`` at
    ``origin + (i, j, k) · h`` (index order [x, y, z]).

    Attributes:
        origin: (3,) float64 position of sample [0, 0, 0] (points' frame and unit).
        h: grid spacing (same unit).
        resolution: R.
    """

    def __init__(self, points: np.ndarray, resolution: int, padding: float):
        lo, hi = points.min(axis=0), points.max(axis=0)
        centre = 0.5 * (lo + hi)
        half = max(0.5 * float(np.max(hi - lo)), 1e-6)
        side = 2.0 * half * (1.0 + 2.0 * padding)
        self.resolution = int(resolution)
        self.h = side / self.resolution
        self.origin = centre - 0.5 * side + 0.5 * self.h

    @property
    def bound(self) -> tuple[np.ndarray, np.ndarray]:
        """(min corner, max corner) of the samples, the ``bound`` of :func:`backend.geometry.extract.marching_cubes`."""
        return self.origin, self.origin + (self.resolution - 1) * self.h

    def to_grid(self, points: torch.Tensor) -> torch.Tensor:
        """(N, 3) positions → (N, 3) continuous grid coordinates (sample units)."""
        origin = torch.as_tensor(self.origin, dtype=points.dtype, device=points.device)
        return (points - origin) / self.h


def _trilinear(coords: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 periodic corner indices (N, 8) int64 (flat) and weights (N, 8) of continuous grid coordinates (N, 3)."""
    base = torch.floor(coords)
    frac = coords - base
    base = base.long()
    idx, wts = [], []
    for corner in range(8):
        offset = torch.tensor([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1], device=coords.device)
        ijk = (base + offset) % r
        w = torch.where(offset.bool(), frac, 1.0 - frac).prod(dim=1)
        idx.append((ijk[:, 0] * r + ijk[:, 1]) * r + ijk[:, 2])
        wts.append(w)
    return torch.stack(idx, dim=1), torch.stack(wts, dim=1)


def poisson_indicator(points: torch.Tensor, normals: torch.Tensor, grid: PoissonGrid,
                      sigma: float = 2.0) -> torch.Tensor:
    """Solve ``∇²χ = ∇·V`` spectrally for the oriented points' splatted normal field ``V`` (SAP's DPSR, §3.1).

    Args:
        points: (N, 3) float32/64 positions inside the grid (frame and unit of ``grid``).
        normals: (N, 3) same dtype, outward normals (unit length; their scale only scales χ).
        grid: the periodic grid (:class:`PoissonGrid`, padded so the smoothed field does not wrap around).
        sigma: standard deviation of the Gaussian smoothing, in grid samples (SAP uses 2 at 128³).

    Returns:
        (R, R, R) tensor χ (dtype of ``points``), index order [x, y, z]: mean 0 over the input points (the surface),
        border mean +1 (outside positive, inside negative). Differentiable in ``points`` and ``normals``.
    """
    r = grid.resolution
    coords = grid.to_grid(points)
    idx, wts = _trilinear(coords, r)
    field = torch.zeros(3, r ** 3, dtype=points.dtype, device=points.device)
    for c in range(3):
        field[c] = field[c].index_add(0, idx.reshape(-1), (wts * normals[:, c:c + 1]).reshape(-1))
    v_hat = torch.fft.rfftn(field.reshape(3, r, r, r), dim=(1, 2, 3))
    full = torch.fft.fftfreq(r, d=grid.h, dtype=points.dtype, device=points.device)
    half = torch.fft.rfftfreq(r, d=grid.h, dtype=points.dtype, device=points.device)
    kx, ky, kz = torch.meshgrid(full, full, half, indexing="ij")
    k2 = kx * kx + ky * ky + kz * kz
    div_hat = 1j * (kx * v_hat[0] + ky * v_hat[1] + kz * v_hat[2])  # (∇·V)^ / 2π
    smooth = torch.exp(-2.0 * math.pi ** 2 * (sigma * grid.h) ** 2 * k2)
    k2 = torch.where(k2 == 0, torch.ones_like(k2), k2)
    chi_hat = -div_hat * smooth / (2.0 * math.pi * k2)
    chi_hat[0, 0, 0] = 0
    chi = torch.fft.irfftn(chi_hat, s=(r, r, r), dim=(0, 1, 2))
    at_points = (chi.reshape(-1)[idx] * wts).sum(dim=1)
    chi = chi - at_points.mean()
    border = torch.cat([chi[0].reshape(-1), chi[-1].reshape(-1), chi[:, 0].reshape(-1), chi[:, -1].reshape(-1),
                        chi[:, :, 0].reshape(-1), chi[:, :, -1].reshape(-1)]).mean()
    return chi / border.detach().abs().clamp_min(1e-12) * torch.sign(border.detach())


# ---------------------------------------------------------------------------------------------------------------------
# 3. Points → mesh.
# ---------------------------------------------------------------------------------------------------------------------

def reconstruct_surface(points: np.ndarray, normals: np.ndarray | None = None, resolution: int = 128,
                        sigma: float = 2.0, k: int = 16, padding: float = 0.15, min_component_ratio: float = 0.05,
                        face_budget: int | None = None) -> TriMesh:
    """A closed mesh through a point cloud: normals (estimated unless given) → DPSR indicator → marching cubes at 0.

    Args:
        points: (N, 3) float positions (any frame; the mesh comes back in the same frame and unit), N > k.
        normals: (N, 3) outward normals, or None to estimate them (:func:`estimate_normals`).
        resolution: samples per axis of the solver's grid, in [8, 1024] (128 as SAP's evaluation).
        sigma: Gaussian smoothing in grid samples, in (0, 16].
        k: neighbours of the normal estimate.
        padding: empty margin around the points on each side, as a fraction of their largest extent, in [0.05, 1].
        min_component_ratio: drop mesh parts smaller than this fraction of the largest part's area.
        face_budget: decimate to at most this many triangles (None = keep all).

    Returns:
        :class:`TriMesh` (float32 / int32), closed components wound outward (the grid's border is kept outside, so
        no surface is cut open by the box).

    Raises:
        ValueError: bad points (empty, NaN, too few for ``k``), normals of another shape, or an argument out of
            range (naming it). MeshError: the solved field has no surface.
    """
    pts = check_points(points, min_points=int(k) + 1)
    if not MIN_RESOLUTION <= int(resolution) <= MAX_RESOLUTION:
        raise ValueError(f"resolution = {resolution} is outside [{MIN_RESOLUTION}, {MAX_RESOLUTION}]")
    if not 0.0 < float(sigma) <= 16.0:
        raise ValueError(f"sigma = {sigma} is outside (0, 16] grid samples")
    if not 0.05 <= float(padding) <= 1.0:
        raise ValueError(f"padding = {padding} is outside [0.05, 1]")
    if float(np.ptp(pts, axis=0).max()) <= 0.0:
        raise ValueError("points all coincide: no surface to reconstruct")
    if normals is None:
        nrm = estimate_normals(pts, k)
    else:
        nrm = check_points(normals, "normals")
        if nrm.shape != pts.shape:
            raise ValueError(f"normals have shape {nrm.shape}, points {pts.shape}")
    grid = PoissonGrid(pts, int(resolution), float(padding))
    with torch.no_grad():
        chi = poisson_indicator(torch.from_numpy(pts), torch.from_numpy(np.asarray(nrm, dtype=np.float64)), grid,
                                float(sigma))
    field = chi.float().numpy()
    # The grid's border lies outside every shape (padding): keep it outside, so no surface is cut open there (noisy
    # or sparse clouds can swing the smoothed indicator below 0 far from the points).
    for axis in range(3):
        for end in (0, -1):
            index = [slice(None)] * 3
            index[axis] = end
            field[tuple(index)] = np.maximum(field[tuple(index)], 1e-3)
    mesh = marching_cubes(field, 0.0, grid.bound, inside="below")
    if len(mesh.t_pos_idx) == 0:
        raise MeshError("the Poisson indicator has no surface at level 0")
    return clean_mesh(mesh, min_component_ratio=min_component_ratio, face_budget=face_budget)
