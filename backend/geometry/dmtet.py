"""DMTet: a deformable tetrahedral grid holding an SDF, and differentiable marching tetrahedra (plain torch).

Shen et al., "Deep Marching Tetrahedra: a Hybrid Representation for High-Resolution 3D Shape Synthesis", NeurIPS 2021
(§3.1): a shape is a signed distance value ``s_i`` and a bounded deformation ``Δv_i`` at every vertex of a tetrahedral
grid; marching tetrahedra turns the grid into a triangle mesh whose vertex positions are differentiable functions of
both. Magic3D (Lin et al., CVPR 2023) uses it as the geometry of its fine stage, initialised from the coarse shape.

Method-agnostic: nothing here knows about pipelines, NeRFs or guidance.

Frames and units: the grid lives in the frame the caller chooses (Blender's world frame — Z up, metres — or a
pipeline's normalised frame); positions pass through unchanged. SDF sign convention: negative inside, positive outside
(the solid is ``s < 0``), so a closed surface has outward normals and a positive signed volume.

The tetrahedral grid (:func:`tet_grid`): the cube [-bound, bound]³ cut into R³ cubic cells, each split into the six
tetrahedra of its Kuhn (Freudenthal) subdivision, all sharing the cell diagonal (0, 0, 0)–(1, 1, 1). Chosen over the
body-centred cubic lattice of DMTet's precomputed grids because (1) it is generated exactly in a few lines, with no
mesher and no file; (2) the same split in every cell is conforming (the two cells beside a square face cut it along
the same diagonal), so tetrahedra share faces exactly and the extracted surface is closed; (3) its vertices are the
regular grid's, so a coarse shape's SDF sampled on a grid maps to them one to one; (4) the six tetrahedra are
congruent. The BCC lattice has better-shaped (more regular) tetrahedra; this one is simpler and exact.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .mesh import MeshError

__all__ = ["MIN_GRID_RESOLUTION", "MAX_GRID_RESOLUTION", "TET_EDGES", "TRIANGLE_TABLE", "tet_grid", "tet_edges",
           "marching_tets", "sdf_sign_regularizer", "DMTetGeometry"]

MIN_GRID_RESOLUTION = 2
MAX_GRID_RESOLUTION = 256

# The six edges of a tetrahedron (v0, v1, v2, v3), by local vertex pairs. Edge e of tet t is TET_EDGES[e].
TET_EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))

# Marching-tetrahedra cases. Case index = sum of 2**i over the tet's inside vertices i (s_i < 0). Each row: the
# triangles of that case as triples of local edge indices (into TET_EDGES), -1 padded to two triangles. One triangle
# when one vertex is separated from three (cases 1, 2, 4, 7, 8, 11, 13, 14), two (a quad split along a diagonal) when
# two are separated from two (3, 5, 6, 9, 10, 12), none for 0 and 15. Winding: counter-clockwise seen from the
# outside vertices (normal toward them) for a positively oriented tet, det(v1 − v0, v2 − v0, v3 − v0) > 0 (tet_grid
# makes every tet so). Complementary cases (c, 15 − c) cut the same edges with the opposite winding.
TRIANGLE_TABLE = (
    (-1, -1, -1, -1, -1, -1),  # 0: all outside
    (0, 1, 2, -1, -1, -1),     # 1: {0} inside
    (0, 4, 3, -1, -1, -1),     # 2: {1}
    (1, 2, 4, 1, 4, 3),        # 3: {0, 1}
    (1, 3, 5, -1, -1, -1),     # 4: {2}
    (0, 5, 2, 0, 3, 5),        # 5: {0, 2}
    (0, 5, 1, 0, 4, 5),        # 6: {1, 2}
    (2, 4, 5, -1, -1, -1),     # 7: {0, 1, 2}, i.e. {3} outside
    (2, 5, 4, -1, -1, -1),     # 8: {3}
    (0, 1, 5, 0, 5, 4),        # 9: {0, 3}
    (0, 2, 5, 0, 5, 3),        # 10: {1, 3}
    (1, 5, 3, -1, -1, -1),     # 11: {0, 1, 3}, i.e. {2} outside
    (1, 4, 2, 1, 3, 4),        # 12: {2, 3}
    (0, 3, 4, -1, -1, -1),     # 13: {0, 2, 3}, i.e. {1} outside
    (0, 2, 1, -1, -1, -1),     # 14: {1, 2, 3}, i.e. {0} outside
    (-1, -1, -1, -1, -1, -1),  # 15: all inside
)
_NUM_TRIANGLES = tuple(sum(1 for k in (0, 3) if row[k] >= 0) for row in TRIANGLE_TABLE)

# The Kuhn subdivision of the unit cube: one tet per permutation of the axes, walking (0,0,0) -> (1,1,1) one axis at
# a time. Corners are numbered 4·x + 2·y + z.
_KUHN_PATHS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def _check_resolution(resolution) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise ValueError(f"tet grid resolution must be an int, got {resolution!r}")
    if not MIN_GRID_RESOLUTION <= resolution <= MAX_GRID_RESOLUTION:
        raise ValueError(f"tet grid resolution {resolution} is outside [{MIN_GRID_RESOLUTION}, {MAX_GRID_RESOLUTION}]")
    return int(resolution)


def _check_bound(bound) -> float:
    if isinstance(bound, bool) or not isinstance(bound, (int, float, np.integer, np.floating)):
        raise ValueError(f"tet grid bound must be a positive number, got {bound!r}")
    bound = float(bound)
    if not np.isfinite(bound) or bound <= 0:
        raise ValueError(f"tet grid bound must be positive and finite, got {bound}")
    return bound


def tet_grid(resolution: int, bound: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A tetrahedral grid of the cube [-bound, bound]³: R³ cells, six Kuhn tetrahedra each (see the module docstring).

    Args:
        resolution: R, cells per axis, in [2, 256].
        bound: half the cube's side, positive, in the caller's units (metres in the world frame).

    Returns:
        ``(vertices, tets)``: vertices (V, 3) float32 with V = (R + 1)³, vertex (i, j, k) at flat index
        ``(i·(R + 1) + j)·(R + 1) + k`` and position ``-bound + (i, j, k)·2·bound/R`` (axis order x, y, z, end points
        included); tets (6·R³, 4) int64 indices into vertices, each positively oriented
        (det(v1 − v0, v2 − v0, v3 − v0) > 0), no duplicate vertices. Deterministic.

    Raises:
        ValueError: resolution not an int in [2, 256], bound not positive and finite.
    """
    resolution = _check_resolution(resolution)
    bound = _check_bound(bound)
    n = resolution + 1
    axis = np.linspace(-bound, bound, n, dtype=np.float64)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    vertices = np.stack([x, y, z], axis=-1).reshape(-1, 3).astype(np.float32)

    # Flat index of each cell's (0, 0, 0) corner, and the offsets of its 8 corners (corner c = 4·x + 2·y + z).
    cell = np.arange(resolution)
    ci, cj, ck = np.meshgrid(cell, cell, cell, indexing="ij")
    base = ((ci * n + cj) * n + ck).reshape(-1).astype(np.int64)
    stride = np.array([n * n, n, 1], dtype=np.int64)
    corner_offset = np.array([(c >> 2 & 1) * stride[0] + (c >> 1 & 1) * stride[1] + (c & 1) * stride[2]
                              for c in range(8)], dtype=np.int64)
    local = []
    for path in _KUHN_PATHS:
        corner, corners = 0, [0]
        for ax in path:
            corner |= 4 >> ax  # axis 0 = x = bit 2
            corners.append(corner)
        local.append(corners)
    local = np.asarray(local, dtype=np.int64)  # (6, 4) corner ids
    # Orient every tet positively: a swap of two vertices flips the sign. Every cell is a translate of the unit cell,
    # so each of the six Kuhn tets has one orientation everywhere: decide it once on the unit cell.
    unit = np.array([[c >> 2 & 1, c >> 1 & 1, c & 1] for c in range(8)], dtype=np.float64)[local]  # (6, 4, 3)
    det = np.linalg.det(unit[:, 1:] - unit[:, :1])
    local[det < 0] = local[det < 0][:, [1, 0, 2, 3]]
    tets = (base[:, None, None] + corner_offset[local][None]).reshape(-1, 4)
    return vertices, tets


def tet_edges(tets: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The unique edges of a tet mesh: (E, 2) int64, each row (a, b) with a < b, sorted; ``tets`` (T, 4) int."""
    tets = torch.as_tensor(tets).to(torch.int64)
    pairs = tets[:, torch.tensor(TET_EDGES, device=tets.device)].reshape(-1, 2)
    lo, hi = torch.minimum(pairs[:, 0], pairs[:, 1]), torch.maximum(pairs[:, 0], pairs[:, 1])
    stride = int(tets.max()) + 1 if len(tets) else 1
    keys = torch.unique(lo * stride + hi)  # one int64 key per undirected edge: a 1-D unique, far faster than rows
    return torch.stack([keys // stride, keys % stride], dim=1)


def marching_tets(v_pos: torch.Tensor, sdf: torch.Tensor, tets: torch.Tensor,
                  allow_empty: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Marching tetrahedra: the zero level set of a per-vertex SDF on a tet mesh, differentiable (DMTet §3.1.3).

    Each tet with vertices of both signs (inside: s < 0; s = 0 counts as outside) contributes one or two triangles
    from :data:`TRIANGLE_TABLE`. The surface vertex on a sign-changing edge (a, b) is the zero of the SDF's linear
    interpolation along it::

        v = (v_a · s_b − v_b · s_a) / (s_b − s_a)

    (s_a and s_b have opposite signs, so the denominator is never 0), differentiable w.r.t. ``v_pos`` and ``sdf``.
    There is one surface vertex per sign-changing edge of the grid, shared by every tet around that edge, so the
    mesh is closed wherever the surface stays inside the grid (it is open where it meets the grid's boundary, i.e.
    where boundary vertices have s < 0). A grid vertex with s exactly 0 is outside, and the surface vertices of
    its crossing edges all sit on it: coincident positions and zero-area faces, the topology still closed
    (:func:`backend.geometry.extract.clean_mesh` merges them); the gradient w.r.t. the other end's s is 0 there.

    Args:
        v_pos: (V, 3) float grid vertex positions (deformed), any frame; gradients flow to it.
        sdf: (V,) float signed distances at the vertices, negative inside; gradients flow to it.
        tets: (T, 4) int64 vertex indices, each tet positively oriented (det(v1 − v0, v2 − v0, v3 − v0) > 0) so the
            triangles are wound outward (counter-clockwise seen from outside).
        allow_empty: return an empty mesh ((0, 3) and (0, 3)) instead of raising when there is no surface.

    Returns:
        ``(v_pos (N, 3), faces (F, 3) int64)``: surface vertices in ``v_pos``'s device and frame (dtype: that of
        ``v_pos`` and ``sdf`` promoted), each on a distinct grid edge, all referenced by a face; faces wound outward
        (closed parts have positive signed volume).

    Raises:
        ValueError: shapes that do not match, tet indices out of range, NaN/Inf SDF values.
        MeshError: no tet has vertices of both signs (unless ``allow_empty``), naming the SDF's range.
    """
    if v_pos.dim() != 2 or v_pos.shape[1] != 3:
        raise ValueError(f"v_pos must have shape (V, 3), got {tuple(v_pos.shape)}")
    if sdf.shape != (v_pos.shape[0],):
        raise ValueError(f"sdf must have shape ({v_pos.shape[0]},) (one value per vertex), got {tuple(sdf.shape)}")
    if tets.dim() != 2 or tets.shape[1] != 4:
        raise ValueError(f"tets must have shape (T, 4), got {tuple(tets.shape)}")
    if len(tets) and (int(tets.min()) < 0 or int(tets.max()) >= v_pos.shape[0]):
        raise ValueError(f"tets index vertices outside [0, {v_pos.shape[0]}): min {int(tets.min())}, "
                         f"max {int(tets.max())}")
    if not bool(torch.isfinite(sdf).all()):
        raise ValueError(f"sdf has {int((~torch.isfinite(sdf)).sum())} NaN/Inf values")
    device = v_pos.device
    tets = tets.to(device=device, dtype=torch.int64)

    # 1. Surface tets: those with both inside and outside vertices.
    with torch.no_grad():
        inside = sdf.detach() < 0
        inside_tet = inside[tets]  # (T, 4)
        count = inside_tet.sum(dim=1)
        surface = (count > 0) & (count < 4)
    if not bool(surface.any()):
        if allow_empty:
            return v_pos.new_zeros((0, 3)), torch.zeros((0, 3), dtype=torch.int64, device=device)
        raise MeshError(f"the SDF has no surface on the tet grid: all {sdf.shape[0]} values are "
                        f"{'negative (all inside)' if bool(inside.all()) else 'non-negative (all outside)'} "
                        f"(range [{float(sdf.detach().min()):.4g}, {float(sdf.detach().max()):.4g}])")

    with torch.no_grad():
        surf_tets = tets[surface]  # (S, 4)
        # 2. The sign-changing edges, once each: a key per undirected edge, unique over the surface tets.
        edge_pairs = surf_tets[:, torch.tensor(TET_EDGES, device=device)]  # (S, 6, 2)
        edge_pairs = torch.sort(edge_pairs, dim=2).values
        num_vertices = v_pos.shape[0]
        keys = edge_pairs[..., 0] * num_vertices + edge_pairs[..., 1]  # (S, 6)
        crossing = inside[edge_pairs[..., 0]] != inside[edge_pairs[..., 1]]  # (S, 6)
        unique_keys, inverse = torch.unique(keys[crossing], return_inverse=True)
        edge_vertex = torch.full(keys.shape, -1, dtype=torch.int64, device=device)  # (S, 6) surface-vertex id
        edge_vertex[crossing] = inverse
        a = unique_keys // num_vertices
        b = unique_keys % num_vertices

    # 3. Surface vertices: the zero of the linear interpolation on each crossing edge (differentiable).
    s_a, s_b = sdf[a].unsqueeze(1), sdf[b].unsqueeze(1)
    verts = (v_pos[a] * s_b - v_pos[b] * s_a) / (s_b - s_a)

    # 4. Triangles from the case table.
    with torch.no_grad():
        weights = (2 ** torch.arange(4, device=device)).unsqueeze(0)
        case = (inside_tet[surface].to(torch.int64) * weights).sum(dim=1)  # (S,)
        table = torch.tensor(TRIANGLE_TABLE, dtype=torch.int64, device=device)
        num_tri = torch.tensor(_NUM_TRIANGLES, dtype=torch.int64, device=device)[case]
        one = num_tri == 1
        two = num_tri == 2
        faces_one = torch.gather(edge_vertex[one], 1, table[case[one], :3])
        faces_two = torch.gather(edge_vertex[two], 1, table[case[two], :]).reshape(-1, 3)
        faces = torch.cat([faces_one, faces_two], dim=0)
    return verts, faces


def sdf_sign_regularizer(sdf: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """The SDF sign regulariser of DMTet/Magic3D: cross-entropy between the signs across sign-changing edges.

    For every grid edge (a, b) whose SDF signs differ (inside: s < 0, as :func:`marching_tets`), each end's value,
    read as a logit, is pushed toward the other end's sign: ``BCE(σ(s_a), [s_b >= 0]) + BCE(σ(s_b), [s_a >= 0])``,
    each averaged over those edges (0 when there are none). It discourages spurious sign flips (floaters, thin
    sheets) and keeps the SDF small near the surface.

    Args:
        sdf: (V,) float SDF values, negative inside.
        edges: (E, 2) int64 vertex pairs (:func:`tet_edges`).

    Returns:
        A scalar float tensor, differentiable w.r.t. ``sdf``.
    """
    s = sdf[edges]  # (E, 2)
    flip = (s[:, 0] < 0) != (s[:, 1] < 0)
    if not bool(flip.any()):
        return sdf.sum() * 0.0
    s = s[flip]
    target = (s >= 0).to(s.dtype)
    bce = nn.functional.binary_cross_entropy_with_logits
    return bce(s[:, 0], target[:, 1]) + bce(s[:, 1], target[:, 0])


class DMTetGeometry(nn.Module):
    """A DMTet shape: learnable SDF values and bounded deformations on a fixed tetrahedral grid (DMTet §3.1).

    The deformed vertex i is ``v_i + max_deform · h · tanh(δ_i)`` with h = 2·bound/R the cell size and δ_i the raw
    learnable deformation: each coordinate moves at most ``max_deform`` cells (DMTet bounds the deformation with a
    tanh so the grid cannot tangle freely; half a cell by default). Near the bound a tet can still invert: the mesh
    stays closed and consistently wound (both are combinatorial) but may fold there.

    Attributes:
        sdf: ``nn.Parameter`` (V,) float32, signed distances at the vertices (negative inside), caller's units.
        deform: ``nn.Parameter`` (V, 3) float32, raw (unbounded) deformations δ.
        verts: buffer (V, 3) float32, the undeformed grid vertices (see :func:`tet_grid`).
        tets: buffer (T, 4) int64; edges: buffer (E, 2) int64 (:func:`tet_edges`).

    Args:
        resolution: R, grid cells per axis, in [2, 256].
        bound: the grid covers [-bound, bound]³ in the caller's frame (world frame: metres).
        max_deform: the deformation bound in cells, in (0, 0.5]; 0.5 lets neighbours meet at most, never cross on
            an axis.

    Raises:
        ValueError: resolution, bound or max_deform out of range.
    """

    def __init__(self, resolution: int, bound: float = 1.0, max_deform: float = 0.5):
        super().__init__()
        vertices, tets = tet_grid(resolution, bound)
        if isinstance(max_deform, bool) or not isinstance(max_deform, (int, float, np.integer, np.floating)) \
                or not 0.0 < float(max_deform) <= 0.5:
            raise ValueError(f"max_deform must be in (0, 0.5] cells, got {max_deform}")
        self.resolution = int(resolution)
        self.bound = float(bound)
        self.cell_size = 2.0 * self.bound / self.resolution
        self.max_deform = float(max_deform)
        self.register_buffer("verts", torch.from_numpy(vertices))
        self.register_buffer("tets", torch.from_numpy(tets))
        self.register_buffer("edges", tet_edges(self.tets))
        self.sdf = nn.Parameter(torch.zeros(len(vertices), dtype=torch.float32))
        self.deform = nn.Parameter(torch.zeros(len(vertices), 3, dtype=torch.float32))

    def deformed_vertices(self) -> torch.Tensor:
        """(V, 3) float32 deformed grid vertices, differentiable w.r.t. :attr:`deform`."""
        return self.verts + (self.max_deform * self.cell_size) * torch.tanh(self.deform)

    @torch.no_grad()
    def init_from_sdf(self, sdf_fn: Callable[[torch.Tensor], torch.Tensor], chunk: int = 262_144) -> None:
        """Set the SDF values to a coarse shape's SDF at the (undeformed) grid vertices, and reset the deformations.

        The values are assigned (one per vertex, exact at the vertices); nothing is fitted. A signed distance is
        expected, but any field negative inside and positive outside gives the same surface topology.

        Args:
            sdf_fn: ``sdf_fn(points (n, 3) float32 on the module's device) -> (n,) float tensor``, negative inside,
                in the grid's frame and units; called under ``torch.no_grad()`` with n <= ``chunk``.
            chunk: points per call.

        Raises:
            ValueError: ``sdf_fn`` returns something other than an (n,) tensor, or NaN/Inf (naming the point); bad
                chunk. The parameters are left unchanged then.
        """
        if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
            raise ValueError(f"chunk must be a positive int, got {chunk!r}")
        values = []
        for start in range(0, len(self.verts), int(chunk)):
            points = self.verts[start:start + int(chunk)]
            out = sdf_fn(points)
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(points),):
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"sdf_fn must return a tensor of shape ({len(points)},) for {len(points)} points, "
                                 f"got {shape}")
            bad = ~torch.isfinite(out)
            if bool(bad.any()):
                first = points[int(torch.nonzero(bad)[0, 0])]
                raise ValueError(f"sdf_fn returned NaN/Inf at {int(bad.sum())} points "
                                 f"(first at {[round(float(c), 4) for c in first]})")
            values.append(out.to(self.sdf.dtype))
        self.sdf.copy_(torch.cat(values))
        self.deform.zero_()

    def extract(self, allow_empty: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The surface mesh: :func:`marching_tets` of the SDF values on the deformed grid.

        Returns:
            ``(v_pos (N, 3) float32, faces (F, 3) int64)`` in the grid's frame, differentiable w.r.t. :attr:`sdf` and
            :attr:`deform`; faces wound outward; closed when the surface stays inside the grid.

        Raises:
            MeshError: no surface (all SDF values of one sign), unless ``allow_empty``.
            ValueError: NaN/Inf SDF values.
        """
        return marching_tets(self.deformed_vertices(), self.sdf, self.tets, allow_empty=allow_empty)

    def sdf_regularizer(self) -> torch.Tensor:
        """:func:`sdf_sign_regularizer` over the grid's edges: a scalar, differentiable w.r.t. :attr:`sdf`."""
        return sdf_sign_regularizer(self.sdf, self.edges)
