"""Shape As Points' spectral Poisson solver (:mod:`backend.geometry.sap`): closed meshes through sampled points.

Bounds: Chamfer distances are pcu's (mean nearest-neighbour L2 distance both ways, summed), divided by the source's
largest extent. Two independent 4,096-point samples of the same surface are already ~0.02–0.03 apart on that scale
(the sampling floor, measured: sphere 0.028, Suzanne 0.020), a 64³ reconstruction adds at most ~1 grid cell of
smoothing (measured: sphere 0.028, torus 0.022, Suzanne 0.041). The bound 0.06 leaves > 40 % margin, and a wrong
surface (an inverted or missing part) lands well above it.
"""

from __future__ import annotations

import numpy as np
import point_cloud_utils as pcu
import pytest
import torch
import trimesh

from backend.geometry.mesh import TriMesh
from backend.geometry.sap import PoissonGrid, estimate_normals, poisson_indicator, reconstruct_surface

BOUND = 0.06


def _relative_chamfer(mesh: TriMesh, source: trimesh.Trimesh) -> float:
    out = trimesh.Trimesh(mesh.v_pos, mesh.t_pos_idx, process=False)
    a, _ = trimesh.sample.sample_surface(out, 4096, seed=1)
    b, _ = trimesh.sample.sample_surface(source, 4096, seed=2)
    return float(pcu.chamfer_distance(a, b)) / float(np.ptp(b, axis=0).max())


def _shapes(suzanne):
    return {"sphere": trimesh.creation.icosphere(4, 0.5), "torus": trimesh.creation.torus(0.5, 0.2),
            "suzanne": trimesh.Trimesh(*suzanne, process=False)}


@pytest.mark.parametrize("name", ["sphere", "torus", "suzanne"])
def test_points_on_a_surface_give_a_watertight_mesh_close_to_it(name, suzanne):
    source = _shapes(suzanne)[name]
    points, _ = trimesh.sample.sample_surface(source, 4096, seed=0)
    mesh = reconstruct_surface(points, resolution=64)
    out = trimesh.Trimesh(mesh.v_pos, mesh.t_pos_idx, process=False)
    assert out.is_watertight and out.volume > 0  # closed, wound outward
    chamfer = _relative_chamfer(mesh, source)
    assert chamfer < BOUND
    if name == "torus":  # the hole survives: genus 1 (Euler characteristic 0), not a filled disc
        assert out.euler_number == 0
    if name == "suzanne":  # the concave parts are followed: the convex hull is twice as far (measured 0.086 vs 0.041)
        hull = source.convex_hull
        assert chamfer < 0.6 * _relative_chamfer(TriMesh(np.asarray(hull.vertices, np.float32),
                                                         np.asarray(hull.faces, np.int32)), source)


def test_estimated_normals_point_outward_on_a_torus():
    torus = trimesh.creation.torus(0.5, 0.2)
    points, faces = trimesh.sample.sample_surface(torus, 3000, seed=0)
    normals = estimate_normals(points, k=16)
    truth = torus.face_normals[faces]
    agree = np.einsum("ij,ij->i", normals, truth)
    assert np.allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    assert (agree > 0.9).mean() > 0.98  # the inner ring's normals point to the axis, not away from the centroid


def test_the_indicator_is_negative_inside_positive_outside_and_zero_on_the_points():
    sphere = trimesh.creation.icosphere(4, 0.5)
    points, faces = trimesh.sample.sample_surface(sphere, 2048, seed=0)
    normals = sphere.face_normals[faces]
    grid = PoissonGrid(points, 32, 0.15)
    chi = poisson_indicator(torch.from_numpy(points), torch.from_numpy(normals), grid)
    r = grid.resolution
    centre = np.round((np.zeros(3) - grid.origin) / grid.h).astype(int)
    assert float(chi[tuple(centre)]) < -0.5 and float(chi[0, 0, 0]) > 0.5
    # Flipping every normal changes nothing: the sign comes from the grid's border, which is outside.
    flipped = poisson_indicator(torch.from_numpy(points), torch.from_numpy(-normals), grid)
    torch.testing.assert_close(flipped, chi)
    assert chi.shape == (r, r, r)


def test_the_solver_is_differentiable_in_the_points():
    sphere = trimesh.creation.icosphere(3, 0.5)
    points, faces = trimesh.sample.sample_surface(sphere, 512, seed=0)
    pts = torch.tensor(points, requires_grad=True)
    grid = PoissonGrid(points, 16, 0.15)
    chi = poisson_indicator(pts, torch.from_numpy(sphere.face_normals[faces]), grid)
    (chi ** 2).sum().backward()
    assert pts.grad is not None and torch.isfinite(pts.grad).all() and pts.grad.abs().sum() > 0


@pytest.mark.parametrize("points, kwargs, match", [
    (np.zeros((0, 3)), {}, "0 points; at least 17"),
    (np.full((100, 3), np.nan), {}, "NaN"),
    (np.zeros((100, 2)), {}, r"shape \(N, 3\)"),
    (np.zeros((100, 3)), {}, "coincide"),
    (np.random.default_rng(0).normal(size=(100, 3)), {"resolution": 4}, "resolution = 4"),
    (np.random.default_rng(0).normal(size=(100, 3)), {"sigma": 0.0}, "sigma"),
])
def test_bad_input_is_one_clear_error(points, kwargs, match):
    with pytest.raises(ValueError, match=match):
        reconstruct_surface(points, **kwargs)
