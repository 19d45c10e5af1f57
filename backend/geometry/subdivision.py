"""Loop subdivision and its limit surface as fixed sparse matrices, so gradients reach the control vertices.

After C. Loop, "Smooth Subdivision Surfaces Based on Triangles" (M.S. thesis, University of Utah, 1987), with the
boundary rules of Hoppe et al., "Piecewise Smooth Surface Reconstruction" (SIGGRAPH 1994) — the cubic B-spline
rules along boundary curves:

- odd (edge) vertex: interior ``3/8 (a + b) + 1/8 (c + d)`` (a, b the edge's ends, c, d the opposite corners of its
  two faces); boundary ``1/2 (a + b)``;
- even (old) vertex of valence k: interior ``(1 − kβ) v + β Σ neighbours`` with Loop's
  ``β = (5/8 − (3/8 + 1/4 cos(2π/k))²) / k``; boundary ``3/4 v + 1/8 (b0 + b1)`` (its two boundary neighbours);
- limit position (Loop's limit masks, Hoppe et al. Appendix): interior ``(1 − kχ) v + χ Σ neighbours`` with
  ``χ = 1 / (3 / (8β) + k)``; boundary ``2/3 v + 1/6 (b0 + b1)``.

Every rule is linear in the positions, so one level is a sparse (V + E, V) matrix and the limit positions of the
level-k vertices are ``L_k · M_{k−1} ⋯ M_0``, a sparse (V_k, V_0) matrix built once per topology (scipy) and
applied with ``torch.sparse.mm``: gradients of anything computed from the limit surface flow to the control vertices.

Topology conventions (the same as ``trimesh.remesh.subdivide_loop``, checked by ``tests/test_subdivision.py``): new
vertices are the V old (even) vertices in their order, then one odd vertex per unique edge (a, b), a < b, edges
ordered by (b, a) — larger index first, then smaller; face f becomes four faces ``(v0, e01, e20)``, ``(e01, v1, e12)``,
``(e20, e12, v2)``, ``(e01, e12, e20)`` in that order (4f … 4f + 3), so windings are kept.

Boundaries are handled by the rules above. Rejected with :class:`~backend.geometry.mesh.MeshError`: an edge shared by
more than two faces, and a boundary vertex with other than two boundary edges (a non-manifold "bow-tie" vertex).
Vertices no face uses keep their position. Frame: whatever the caller's (a linear map commutes with any affine frame
change); Blender world frame in the pipelines.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from .mesh import MeshError

__all__ = ["loop_step_matrix", "loop_limit_matrix", "subdivide_faces", "midpoint_step_matrix",
           "LoopSurface", "scipy_to_torch"]


def _edges(t_pos_idx: np.ndarray, num_vertices: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unique undirected edges of a triangle list.

    Returns:
        ``edges`` (E, 2) int64 sorted pairs (a < b), ordered by (b, a); ``half_edge`` (3F,) the edge id of corner
        pair (k, k+1) of each face, ordered face-major (f, k); ``opposite`` (3F,) the corner opposite that half-edge;
        ``count`` (E,) how many faces use each edge.
    """
    tri = np.asarray(t_pos_idx, dtype=np.int64)
    a = tri.reshape(-1)
    b = tri[:, [1, 2, 0]].reshape(-1)
    opposite = tri[:, [2, 0, 1]].reshape(-1)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    keys = hi * num_vertices + lo  # ordered by (b, a): trimesh's order
    unique, half_edge, count = np.unique(keys, return_inverse=True, return_counts=True)
    hi_u, lo_u = np.divmod(unique, num_vertices)
    edges = np.stack([lo_u, hi_u], axis=1)
    return edges, half_edge.reshape(-1), opposite, count


def _check_faces(t_pos_idx: np.ndarray, num_vertices: int) -> np.ndarray:
    tri = np.asarray(t_pos_idx)
    if tri.ndim != 2 or tri.shape[1] != 3 or len(tri) == 0:
        raise MeshError(f"subdivision needs (F, 3) faces with F >= 1, got shape {tri.shape}")
    if tri.min() < 0 or tri.max() >= num_vertices:
        raise MeshError(f"face indices must lie in [0, {num_vertices}), got [{int(tri.min())}, {int(tri.max())}]")
    if ((tri[:, 0] == tri[:, 1]) | (tri[:, 1] == tri[:, 2]) | (tri[:, 2] == tri[:, 0])).any():
        raise MeshError("subdivision needs faces with three distinct vertices (found a face repeating one)")
    return tri.astype(np.int64)


class _Topology:
    """Edges, valences and boundary facts of one triangle mesh (shared by the step and limit matrices)."""

    def __init__(self, t_pos_idx: np.ndarray, num_vertices: int):
        self.tri = _check_faces(t_pos_idx, num_vertices)
        self.num_vertices = int(num_vertices)
        self.edges, self.half_edge, self.opposite, count = _edges(self.tri, self.num_vertices)
        if (count > 2).any():
            e = self.edges[int(np.argmax(count > 2))]
            raise MeshError(f"Loop subdivision needs a manifold mesh: edge ({e[0]}, {e[1]}) is shared by "
                            f"{int(count.max())} faces")
        self.boundary_edge = count == 1
        self.valence = np.bincount(self.edges.reshape(-1), minlength=self.num_vertices)
        bedges = self.edges[self.boundary_edge]
        self.boundary_count = np.bincount(bedges.reshape(-1), minlength=self.num_vertices)
        bad = (self.boundary_count != 0) & (self.boundary_count != 2)
        if bad.any():
            v = int(np.argmax(bad))
            raise MeshError(f"Loop subdivision needs a manifold mesh: boundary vertex {v} has "
                            f"{int(self.boundary_count[v])} boundary edges (2 expected)")
        self.is_boundary = self.boundary_count > 0

    def vertex_matrix(self, centre_interior: np.ndarray, neighbour_interior: np.ndarray, centre_boundary: float,
                      neighbour_boundary: float) -> sp.csr_matrix:
        """(V, V): row i = ``c_i v_i + n_i Σ_{j ~ i} v_j`` (interior, per-vertex weights) or
        ``c v_i + n Σ_{boundary j ~ i} v_j`` (boundary); unused vertices keep their position."""
        n = self.num_vertices
        a, b = self.edges[:, 0], self.edges[:, 1]
        nb = self.is_boundary
        # Interior vertices: every edge neighbour; boundary vertices: only along boundary edges.
        use_ab = ~nb[a] | self.boundary_edge  # weight of b in row a
        use_ba = ~nb[b] | self.boundary_edge
        w_ab = np.where(nb[a], neighbour_boundary, neighbour_interior[a])
        w_ba = np.where(nb[b], neighbour_boundary, neighbour_interior[b])
        diag = np.where(nb, centre_boundary, centre_interior)
        diag = np.where(self.valence == 0, 1.0, diag)
        rows = np.concatenate([a[use_ab], b[use_ba], np.arange(n)])
        cols = np.concatenate([b[use_ab], a[use_ba], np.arange(n)])
        vals = np.concatenate([w_ab[use_ab], w_ba[use_ba], diag])
        return sp.csr_matrix((vals, (rows, cols)), shape=(n, n))


def _loop_beta(k: np.ndarray) -> np.ndarray:
    """Loop's even-vertex weight β(k) = (5/8 − (3/8 + 1/4 cos(2π/k))²) / k (0 where k = 0)."""
    k = np.asarray(k, dtype=np.float64)
    safe = np.maximum(k, 1.0)
    beta = (0.625 - (0.375 + 0.25 * np.cos(2.0 * np.pi / safe)) ** 2) / safe
    return np.where(k > 0, beta, 0.0)


def subdivide_faces(t_pos_idx: np.ndarray, num_vertices: int) -> tuple[np.ndarray, int]:
    """One level of 1-to-4 face splitting (the topology of Loop and midpoint subdivision).

    Args:
        t_pos_idx: (F, 3) integer vertex indices (or UV indices: the same split applies to per-corner UVs).
        num_vertices: V, the number of vertices the indices point into.

    Returns:
        ``(faces (4F, 3) int64, V + E)``: new faces in the module's order, and the new vertex count.
    """
    tri = np.asarray(t_pos_idx, dtype=np.int64)
    edges, half_edge, _, _ = _edges(tri, num_vertices)
    odd = half_edge.reshape(-1, 3) + num_vertices  # columns: edge (0,1), (1,2), (2,0)
    e01, e12, e20 = odd[:, 0], odd[:, 1], odd[:, 2]
    faces = np.stack([np.stack([tri[:, 0], e01, e20], 1), np.stack([e01, tri[:, 1], e12], 1),
                      np.stack([e20, e12, tri[:, 2]], 1), np.stack([e01, e12, e20], 1)], axis=1).reshape(-1, 3)
    return faces, num_vertices + len(edges)


def loop_step_matrix(t_pos_idx: np.ndarray, num_vertices: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """One level of Loop subdivision as a sparse matrix.

    Args:
        t_pos_idx: (F, 3) integer vertex indices, a manifold mesh (boundaries allowed).
        num_vertices: V.

    Returns:
        ``(S (V + E, V) float64 CSR, faces (4F, 3) int64)``: ``S @ v_pos`` are the new positions (even vertices
        first, then odd), ``faces`` the new triangles (module docstring's order).

    Raises:
        MeshError: an edge of more than two faces, a bow-tie boundary vertex, bad indices.
    """
    topo = _Topology(t_pos_idx, num_vertices)
    n = topo.num_vertices
    beta = _loop_beta(topo.valence)
    even = topo.vertex_matrix(1.0 - topo.valence * beta, beta, 0.75, 0.125)
    # Odd vertices: both ends, plus the opposite corners of interior edges.
    num_edges = len(topo.edges)
    end_w = np.where(topo.boundary_edge, 0.5, 0.375)
    rows = [np.arange(num_edges), np.arange(num_edges)]
    cols = [topo.edges[:, 0], topo.edges[:, 1]]
    vals = [end_w, end_w]
    interior_half = ~topo.boundary_edge[topo.half_edge]
    rows.append(topo.half_edge[interior_half])
    cols.append(topo.opposite[interior_half])
    vals.append(np.full(int(interior_half.sum()), 0.125))
    odd = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(num_edges, n))
    faces, _ = subdivide_faces(topo.tri, n)
    return sp.vstack([even, odd]).tocsr(), faces


def loop_limit_matrix(t_pos_idx: np.ndarray, num_vertices: int) -> sp.csr_matrix:
    """Loop's limit masks: (V, V) float64 CSR mapping a mesh's vertices to where infinitely many Loop levels send
    them (interior ``(1 − kχ) v + χ Σ nbrs``, χ = 1 / (3/(8β) + k); boundary ``2/3 v + 1/6 (b0 + b1)``).

    Raises:
        MeshError: as :func:`loop_step_matrix`.
    """
    topo = _Topology(t_pos_idx, num_vertices)
    beta = _loop_beta(topo.valence)
    with np.errstate(divide="ignore"):
        chi = np.where(beta > 0, 1.0 / (3.0 / (8.0 * np.where(beta > 0, beta, 1.0)) + topo.valence), 0.0)
    return topo.vertex_matrix(1.0 - topo.valence * chi, chi, 2.0 / 3.0, 1.0 / 6.0)


def midpoint_step_matrix(uv_idx: np.ndarray, num_uv: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """One level of linear (midpoint) subdivision of per-corner attributes, e.g. UVs: old values kept, one midpoint
    per unique edge of ``uv_idx``; the faces split like :func:`subdivide_faces`, so a texture painted on the control
    mesh's atlas stays put on the subdivided mesh.

    Returns:
        ``(S (M + E, M) float64 CSR, uv faces (4F, 3) int64)``.
    """
    tri = np.asarray(uv_idx, dtype=np.int64)
    edges, _, _, _ = _edges(tri, num_uv)
    num_edges = len(edges)
    rows = np.concatenate([np.arange(num_uv), num_uv + np.arange(num_edges), num_uv + np.arange(num_edges)])
    cols = np.concatenate([np.arange(num_uv), edges[:, 0], edges[:, 1]])
    vals = np.concatenate([np.ones(num_uv), np.full(2 * num_edges, 0.5)])
    matrix = sp.csr_matrix((vals, (rows, cols)), shape=(num_uv + num_edges, num_uv))
    faces, _ = subdivide_faces(tri, num_uv)
    return matrix, faces


def scipy_to_torch(matrix: sp.spmatrix, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A scipy sparse matrix as a coalesced torch sparse COO tensor (for ``torch.sparse.mm``)."""
    coo = matrix.tocoo()
    indices = torch.from_numpy(np.stack([coo.row, coo.col]).astype(np.int64))
    values = torch.from_numpy(coo.data).to(dtype)
    return torch.sparse_coo_tensor(indices, values, coo.shape, device=device, check_invariants=False).coalesce()


class LoopSurface:
    """The Loop subdivision of a fixed control topology: ``levels`` steps, then (optionally) the limit masks.

    Built once per topology; applied to any control positions with gradients (``torch.sparse.mm``).

    Args:
        t_pos_idx: (F, 3) control faces (manifold; boundaries allowed).
        num_vertices: V0, the number of control vertices.
        levels: k >= 0 subdivision levels.
        limit: True: rows are the limit positions of the level-k vertices (``L_k M_{k−1} ⋯ M_0``); False: the level-k
            positions themselves (``M_{k−1} ⋯ M_0``).
        device: where the torch matrix lives.
        uv, uv_idx: optional control UVs ((M, 2) float, (F, 3) int); carried to level k by midpoint subdivision.

    Attributes:
        matrix_scipy: (V_k, V0) float64 CSR. matrix: the same as a torch sparse float32 tensor on ``device``.
        t_pos_idx: (4^k F, 3) int32 faces of level k. uv, uv_idx: level-k UVs (float32 / int32) or None.

    Raises:
        MeshError: non-manifold control mesh, bad indices; ValueError: levels < 0.
    """

    def __init__(self, t_pos_idx: np.ndarray, num_vertices: int, levels: int, limit: bool = True,
                 device: torch.device | str = "cpu", uv: np.ndarray | None = None,
                 uv_idx: np.ndarray | None = None):
        if int(levels) != levels or levels < 0:
            raise ValueError(f"levels must be an integer >= 0, got {levels!r}")
        faces = _check_faces(t_pos_idx, num_vertices)
        matrix = sp.identity(int(num_vertices), format="csr", dtype=np.float64)
        n = int(num_vertices)
        uv_matrix = None
        if uv is not None and uv_idx is not None:
            uv_matrix = sp.identity(len(uv), format="csr", dtype=np.float64)
            uv_faces = np.asarray(uv_idx, dtype=np.int64)
        for _ in range(int(levels)):
            step, faces = loop_step_matrix(faces, n)
            matrix = (step @ matrix).tocsr()
            n = step.shape[0]
            if uv_matrix is not None:
                uv_step, uv_faces = midpoint_step_matrix(uv_faces, uv_matrix.shape[0])
                uv_matrix = (uv_step @ uv_matrix).tocsr()
        if limit:
            matrix = (loop_limit_matrix(faces, n) @ matrix).tocsr()
        self.levels = int(levels)
        self.limit = bool(limit)
        self.matrix_scipy = matrix
        self.matrix = scipy_to_torch(matrix, device)
        self.t_pos_idx = faces.astype(np.int32)
        self.uv = self.uv_idx = None
        if uv_matrix is not None:
            self.uv = (uv_matrix @ np.asarray(uv, dtype=np.float64)).astype(np.float32)
            self.uv_idx = uv_faces.astype(np.int32)

    @property
    def num_vertices(self) -> int:
        """V_k, the number of level-k vertices."""
        return int(self.matrix_scipy.shape[0])

    def __call__(self, v_pos: torch.Tensor) -> torch.Tensor:
        """(V0, 3) control positions → (V_k, 3) surface positions (differentiable; dtype of ``v_pos``).

        Raises:
            ValueError: ``v_pos`` of the wrong shape.
        """
        if v_pos.dim() != 2 or v_pos.shape[0] != self.matrix_scipy.shape[1]:
            raise ValueError(f"v_pos must be ({self.matrix_scipy.shape[1]}, C), got {tuple(v_pos.shape)}")
        matrix = self.matrix.to(device=v_pos.device, dtype=v_pos.dtype)
        return torch.sparse.mm(matrix, v_pos)
