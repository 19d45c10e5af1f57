"""Tests of backend/geometry/dmtet.py: the tetrahedral grid, the marching-tetrahedra table, the extracted surface of
analytic SDFs (closed, outward, right volume), gradients, the deformation bound, bad input (CPU, fast)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import trimesh

from backend.geometry.dmtet import (DMTetGeometry, TET_EDGES, TRIANGLE_TABLE, marching_tets, sdf_sign_regularizer,
                                    tet_edges, tet_grid)
from backend.geometry.mesh import MeshError
from backend.geometry.queries import signed_volume

RADIUS = 0.5
# Off the grid's vertices: a sphere through grid vertices (SDF exactly 0) gives coincident surface vertices there.
CENTER = (0.013, -0.007, 0.004)
R = 24  # cells per axis over [-1, 1]: h = 1/12 m


def sphere_sdf(radius=RADIUS, center=CENTER):
    c = torch.tensor(center, dtype=torch.float32)
    return lambda p: (p - c).norm(dim=1) - radius


def box_sdf(center, half):
    c = torch.tensor(center, dtype=torch.float32)
    e = torch.tensor(half, dtype=torch.float32)

    def fn(p):
        q = (p - c).abs() - e
        return q.clamp(min=0).norm(dim=1) + q.max(dim=1).values.clamp(max=0)
    return fn


def vertex_depth_bound(h: float, radius: float) -> float:
    """How far inside a sphere a marching-tets vertex may lie: the linear interpolation error L²/8 · max f'' of
    f = |p − c| − r on an edge of length L <= √3·h, with f'' <= 1/r' (r' = r minus that same depth, to first order)."""
    depth = 3 * h ** 2 / (8 * radius)
    return 3 * h ** 2 / (8 * (radius - depth))


def volume_tolerance(h: float, radius: float) -> float:
    """Relative volume deficit bound of the inscribed polyhedron: (vertex depth + a face's sagitta, its edges
    <= √3·h long) × the sphere's area, over its volume: 3·(depth + 3h²/(8r))/r. ∝ h², so 6.6 % at h = 1/12, r = 0.5."""
    return 3 * (vertex_depth_bound(h, radius) + 3 * h ** 2 / (8 * radius)) / radius


def tet_det(v: np.ndarray, tets: np.ndarray) -> np.ndarray:
    v = v.astype(np.float64)
    return np.einsum("ij,ij->i", v[tets[:, 1]] - v[tets[:, 0]],
                     np.cross(v[tets[:, 2]] - v[tets[:, 0]], v[tets[:, 3]] - v[tets[:, 0]]))


@pytest.fixture(scope="module")
def sphere_geometry() -> DMTetGeometry:
    geometry = DMTetGeometry(R, bound=1.0)
    geometry.init_from_sdf(sphere_sdf())
    return geometry


# ---- the grid ------------------------------------------------------------------------------------------------------

def test_tet_grid_fills_the_cube_with_positive_tets_and_shared_vertices():
    res, bound = 3, 0.7
    v, tets = tet_grid(res, bound)
    assert v.dtype == np.float32 and v.shape == ((res + 1) ** 3, 3)
    assert tets.dtype == np.int64 and tets.shape == (6 * res ** 3, 4)
    assert len(np.unique(v, axis=0)) == len(v)  # no duplicate vertices
    det = tet_det(v, tets)
    cell = 2 * bound / res
    # All positive, all congruent (volume h³/6), summing to the cube's volume: a partition without gaps or overlaps.
    np.testing.assert_allclose(det / 6, cell ** 3 / 6, rtol=1e-4)
    np.testing.assert_allclose(det.sum() / 6, (2 * bound) ** 3, rtol=1e-4)
    # Conforming: every interior triangle is shared by exactly two tets, every boundary one lies on the cube's face.
    faces = np.sort(tets[:, [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]].reshape(-1, 3), axis=1)
    unique, counts = np.unique(faces, axis=0, return_counts=True)
    assert set(counts.tolist()) <= {1, 2}
    on_boundary = np.isclose(np.abs(v[unique[counts == 1]]), bound, atol=1e-6).all(axis=1).any(axis=1)
    assert on_boundary.all()
    assert (counts == 1).sum() == 6 * 2 * res * res  # two triangles per boundary square
    # Deterministic.
    v2, tets2 = tet_grid(res, bound)
    assert np.array_equal(v, v2) and np.array_equal(tets, tets2)
    # The documented flat index order.
    i, j, k = 1, 2, 3
    np.testing.assert_allclose(v[(i * (res + 1) + j) * (res + 1) + k], -bound + np.array([i, j, k]) * cell, atol=1e-6)


def test_tet_edges_are_unique_and_sorted():
    _, tets = tet_grid(2)
    edges = tet_edges(tets).numpy()
    assert (edges[:, 0] < edges[:, 1]).all()
    assert len(np.unique(edges, axis=0)) == len(edges)
    # Kuhn grid of 2³ cells: 3·2·3² axis edges + 3·2²·3 face diagonals + 2³ body diagonals.
    assert len(edges) == 54 + 36 + 8


def test_triangle_table_cuts_the_right_edges_with_outward_winding():
    rng = np.random.default_rng(0)
    for case in range(16):
        inside = [(case >> i) & 1 for i in range(4)]
        row = TRIANGLE_TABLE[case]
        used = {e for e in row if e >= 0}
        crossing = {e for e, (a, b) in enumerate(TET_EDGES) if inside[a] != inside[b]}
        assert used == crossing, case
        assert len([e for e in row if e >= 0]) == {0: 0, 3: 3, 4: 6}[len(crossing)]
        # In random positive tets, with the surface vertices anywhere inside their edges, each triangle's normal
        # points toward the outside vertices.
        for _ in range(20):
            tet = rng.normal(size=(4, 3))
            if tet_det(tet, np.array([[0, 1, 2, 3]]))[0] < 0:
                tet[[0, 1]] = tet[[1, 0]]
            t = rng.uniform(0.05, 0.95, size=6)
            points = np.array([tet[a] * (1 - t[e]) + tet[b] * t[e] for e, (a, b) in enumerate(TET_EDGES)])
            for k in range(0, 6, 3):
                if row[k] < 0:
                    continue
                p = points[list(row[k:k + 3])]
                normal = np.cross(p[1] - p[0], p[2] - p[0])
                for vertex in range(4):
                    side = np.dot(normal, tet[vertex] - p[0])
                    assert (side > 0) == (not inside[vertex]), (case, vertex)


# ---- the extracted surface ----------------------------------------------------------------------------------------

def test_sphere_is_closed_outward_and_has_the_right_volume(sphere_geometry):
    v_pos, faces = sphere_geometry.extract()
    assert v_pos.dtype == torch.float32 and faces.dtype == torch.int64
    v, f = v_pos.detach().numpy(), faces.numpy()
    mesh = trimesh.Trimesh(v, f, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    # Every edge shared by exactly two faces, used once in each direction; no duplicate vertices; all used.
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    assert len(np.unique(directed, axis=0)) == len(directed)
    undirected, counts = np.unique(np.sort(directed, axis=1), axis=0, return_counts=True)
    assert (counts == 2).all()
    assert len(np.unique(v, axis=0)) == len(v) and len(np.unique(f)) == len(v)
    assert len(mesh.split(only_watertight=False)) == 1
    # Vertices: the zero of the SDF's linear interpolation on edges up to √3·h long; |p − c| is convex, so they lie
    # inside the sphere, by at most the interpolation error (measured: 0.0047 m vs the bound's 0.0054 m).
    h = 2.0 / R
    radius = np.linalg.norm(v - CENTER, axis=1)
    assert radius.max() <= RADIUS + 1e-5 and radius.min() >= RADIUS - vertex_depth_bound(h, RADIUS)
    # Volume: an inscribed polyhedron, so <= the ball's (positive = outward normals), short of it by at most
    # volume_tolerance (6.6 % at R = 24; measured 1.4 %).
    volume = signed_volume(v, f)
    ball = 4.0 / 3.0 * np.pi * RADIUS ** 3
    allowed = volume_tolerance(h, RADIUS)
    assert ball * (1 - allowed) <= volume <= ball * (1 + 1e-5), (volume / ball - 1, allowed)


def test_init_from_box_gives_its_bounding_box_within_a_cell():
    center, half = (0.1, -0.15, 0.05), (0.3, 0.45, 0.2)
    geometry = DMTetGeometry(20, bound=1.0)
    geometry.init_from_sdf(box_sdf(center, half), chunk=1000)
    v_pos, faces = geometry.extract()
    mesh = trimesh.Trimesh(v_pos.detach().numpy(), faces.numpy(), process=False)
    assert mesh.is_watertight and signed_volume(mesh.vertices, mesh.faces) > 0
    lo, hi = np.asarray(center) - half, np.asarray(center) + half
    np.testing.assert_allclose(mesh.bounds, np.stack([lo, hi]), atol=geometry.cell_size)
    assert geometry.cell_size == pytest.approx(0.1)
    assert float(geometry.deform.detach().abs().max()) == 0.0


# ---- gradients -----------------------------------------------------------------------------------------------------

def test_gradients_reach_the_sdf_and_deformation_of_crossing_edges_only(sphere_geometry):
    torch.manual_seed(0)
    geometry = sphere_geometry
    geometry.zero_grad(set_to_none=True)
    v_pos, _ = geometry.extract()
    weights = torch.randn_like(v_pos)
    (v_pos * weights).sum().backward()
    sdf_grad, deform_grad = geometry.sdf.grad, geometry.deform.grad
    assert torch.isfinite(sdf_grad).all() and torch.isfinite(deform_grad).all()
    with torch.no_grad():
        s = geometry.sdf[geometry.edges]
        crossing = geometry.edges[(s[:, 0] < 0) != (s[:, 1] < 0)]
        near = torch.zeros(len(geometry.sdf), dtype=torch.bool)
        near[crossing.reshape(-1)] = True
    assert int(near.sum()) > 100
    assert (sdf_grad[near] != 0).all()
    assert (deform_grad[near].abs().sum(dim=1) > 0).all()
    assert (sdf_grad[~near] == 0).all() and (deform_grad[~near] == 0).all()
    # The far ones include every vertex more than two cells from the surface.
    far = geometry.sdf.detach().abs() > 2 * geometry.cell_size
    assert (far & ~near).sum() == far.sum() > 1000


def test_interpolation_formula_and_its_gradient_on_one_edge():
    # One tet, one inside vertex: the surface vertex on edge (0, 1) is v0 + t (v1 - v0) with t = s0 / (s0 - s1).
    v_pos = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    sdf = torch.tensor([-0.25, 0.75, 0.5, 0.5], dtype=torch.float64, requires_grad=True)
    verts, faces = marching_tets(v_pos, sdf, torch.tensor([[0, 1, 2, 3]]))
    assert faces.tolist() == [[0, 1, 2]]
    on_x = verts[(verts[:, 1] == 0) & (verts[:, 2] == 0)]
    assert on_x.shape == (1, 3) and float(on_x[0, 0].detach()) == pytest.approx(0.25)
    on_x[0, 0].backward()
    # t = s0/(s0 - s1): dt/ds0 = -s1/(s0 - s1)² = -0.75, dt/ds1 = s0/(s0 - s1)² = -0.25.
    assert sdf.grad[:2].tolist() == pytest.approx([-0.75, -0.25])


def test_deformation_is_bounded_by_tanh_times_the_cell_fraction():
    torch.manual_seed(0)
    geometry = DMTetGeometry(6, bound=0.9, max_deform=0.4)
    geometry.init_from_sdf(sphere_sdf(0.45))
    with torch.no_grad():
        geometry.deform.copy_(torch.randn_like(geometry.deform) * 1e4)
    moved = (geometry.deformed_vertices() - geometry.verts).abs().detach()
    limit = 0.4 * geometry.cell_size
    assert float(moved.max()) <= limit * (1 + 1e-6) and float(moved.max()) > 0.99 * limit
    v_pos, faces = geometry.extract()
    assert torch.isfinite(v_pos).all() and len(faces) > 0


def test_pulling_the_mesh_toward_a_larger_sphere_grows_its_volume():
    torch.manual_seed(0)
    geometry = DMTetGeometry(12, bound=1.0)
    geometry.init_from_sdf(sphere_sdf())
    v0, f0 = geometry.extract()
    start = signed_volume(v0.detach().numpy(), f0.numpy())
    optimizer = torch.optim.Adam(geometry.parameters(), lr=0.02)
    target = sphere_sdf(0.6)
    for _ in range(40):
        optimizer.zero_grad()
        v_pos, _ = geometry.extract()
        loss = target(v_pos).pow(2).mean() + 1e-3 * geometry.sdf_regularizer()
        loss.backward()
        optimizer.step()
    v_pos, faces = geometry.extract()
    end = signed_volume(v_pos.detach().numpy(), faces.numpy())
    # The target ball is 1.73× the start's; require half of that growth, and the result within 10 % of the target
    # ball's volume (measured: 0.494 -> 0.895 m³, target 0.905).
    assert end > start * 1.35, (start, end, end / start)
    assert abs(end / (4.0 / 3.0 * np.pi * 0.6 ** 3) - 1) < 0.1, end
    assert trimesh.Trimesh(v_pos.detach().numpy(), faces.numpy(), process=False).is_watertight


def test_sdf_sign_regularizer_matches_its_formula_and_is_zero_without_crossings():
    sdf = torch.tensor([-1.0, 2.0, 3.0], requires_grad=True)
    edges = torch.tensor([[0, 1], [1, 2]])
    value = sdf_sign_regularizer(sdf, edges)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = bce(torch.tensor([-1.0]), torch.tensor([1.0])) + bce(torch.tensor([2.0]), torch.tensor([0.0]))
    assert float(value.detach()) == pytest.approx(float(expected))
    value.backward()
    assert sdf.grad[2] == 0 and sdf.grad[0] < 0 and sdf.grad[1] > 0  # pulls the pair toward each other's sign
    zero = sdf_sign_regularizer(torch.tensor([1.0, 2.0, 3.0], requires_grad=True), edges)
    assert float(zero.detach()) == 0.0 and zero.requires_grad


# ---- bad input -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("resolution", [1, 0, -3, 2.5, True, 257])
def test_bad_resolution_is_one_clear_error(resolution):
    with pytest.raises(ValueError, match="resolution"):
        DMTetGeometry(resolution)


@pytest.mark.parametrize("kwargs, match", [({"bound": 0.0}, "bound"), ({"bound": float("inf")}, "bound"),
                                           ({"max_deform": 0.0}, "max_deform"), ({"max_deform": 0.8}, "max_deform"),
                                           ({"max_deform": "half"}, "max_deform")])
def test_bad_bound_or_deform_limit_is_one_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DMTetGeometry(4, **kwargs)


def test_non_finite_sdf_is_one_clear_error():
    geometry = DMTetGeometry(4)
    with pytest.raises(ValueError, match="NaN/Inf at 1 points"):
        geometry.init_from_sdf(lambda p: torch.where(p.norm(dim=1) == 0, torch.nan, p.norm(dim=1) - 0.5))
    assert float(geometry.sdf.detach().abs().max()) == 0.0  # left unchanged
    with pytest.raises(ValueError, match=r"shape \(125,\)"):
        geometry.init_from_sdf(lambda p: p)
    with torch.no_grad():
        geometry.sdf.fill_(1.0)
        geometry.sdf[3] = float("inf")
    with pytest.raises(ValueError, match="sdf has 1 NaN/Inf"):
        geometry.extract()


@pytest.mark.parametrize("value, words", [(1.0, "all outside"), (-1.0, "all inside")])
def test_no_surface_is_a_mesh_error_or_an_empty_mesh(value, words):
    geometry = DMTetGeometry(3)
    with torch.no_grad():
        geometry.sdf.fill_(value)
    with pytest.raises(MeshError, match=f"no surface.*{words}"):
        geometry.extract()
    v_pos, faces = geometry.extract(allow_empty=True)
    assert v_pos.shape == (0, 3) and faces.shape == (0, 3) and faces.dtype == torch.int64


def test_marching_tets_rejects_mismatched_shapes():
    v, tets = tet_grid(2)
    v, tets = torch.from_numpy(v), torch.from_numpy(tets)
    for args, match in [((v[:, :2], torch.zeros(len(v)), tets), "v_pos"), ((v, torch.zeros(3), tets), "sdf"),
                        ((v, torch.zeros(len(v)), tets[:, :3]), "tets"),
                        ((v, torch.zeros(len(v)), tets + 1), r"tets index vertices outside \[0, 27\)")]:
        with pytest.raises(ValueError, match=match):
            marching_tets(*args)


def test_sdf_exactly_zero_at_grid_vertices_keeps_the_surface_closed():
    # Centred on a grid vertex with a radius of 3 cells: six grid vertices have s = 0 exactly (counted outside). The
    # surface vertices of their crossing edges coincide there (zero-area faces), but the topology stays closed.
    geometry = DMTetGeometry(12, bound=1.0)
    geometry.init_from_sdf(sphere_sdf(0.5, center=(0.0, 0.0, 0.0)))
    assert int((geometry.sdf == 0).sum()) >= 6
    v_pos, faces = geometry.extract()
    v, f = v_pos.detach().numpy(), faces.numpy()
    assert len(np.unique(v, axis=0)) < len(v)  # the coincident vertices
    mesh = trimesh.Trimesh(v, f, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    ball = 4.0 / 3.0 * np.pi * 0.5 ** 3
    assert ball * (1 - volume_tolerance(2.0 / 12, 0.5)) <= signed_volume(v, f) <= ball * (1 + 1e-5)


def test_every_grid_resolution_from_two_gives_a_closed_surface():
    for res, radius in itertools.product((2, 3, 5), (0.65, 0.8)):
        geometry = DMTetGeometry(res)
        geometry.init_from_sdf(sphere_sdf(radius, center=(0.05, -0.03, 0.02)))
        v_pos, faces = geometry.extract()
        mesh = trimesh.Trimesh(v_pos.detach().numpy(), faces.numpy(), process=False)
        assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0, (res, radius)
