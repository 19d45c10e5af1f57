"""Loop subdivision and limit-surface matrices (backend/geometry/subdivision.py), tangent-space normal maps
(backend/geometry/tangents.py), which CLIP-Mesh builds on.

The library reference is ``trimesh.remesh.subdivide_loop``: same vertex order (old vertices, then one per edge) and
face order, so positions compare row by row."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from backend.geometry.mesh import MeshError
from backend.geometry.subdivision import LoopSurface, loop_limit_matrix, loop_step_matrix, midpoint_step_matrix
from backend.geometry.tangents import normal_map_to_unit, perturb_normals, unit_to_normal_map, uv_tangents


def _noisy_icosphere(level: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    m = trimesh.creation.icosphere(level)
    rng = np.random.default_rng(seed)
    return m.vertices + 0.05 * rng.standard_normal(m.vertices.shape), np.asarray(m.faces)


def _tube(rings: int = 5, segments: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """An open cylinder (two boundary loops) whose boundary vertices touch interior edges only toward inner rings,
    so trimesh's boundary rule and the standard one agree on it (see the open-square test below)."""
    theta = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    z = np.linspace(-1, 1, rings)
    v = np.stack([np.cos(theta)[None].repeat(rings, 0), np.sin(theta)[None].repeat(rings, 0),
                  z[:, None].repeat(segments, 1)], -1).reshape(-1, 3)
    faces = []
    for r in range(rings - 1):
        for s in range(segments):
            a, b = r * segments + s, r * segments + (s + 1) % segments
            c, d = a + segments, b + segments
            faces += [(a, b, d), (a, d, c)]
    rng = np.random.default_rng(1)
    return v + 0.03 * rng.standard_normal(v.shape), np.asarray(faces)


def test_one_level_matches_trimesh_closed_and_open():
    """Same vertex and face order as trimesh's subdivide_loop, positions equal to float64 round-off."""
    for v, f in (_noisy_icosphere(1), _tube()):
        step, faces = loop_step_matrix(f, len(v))
        ref_v, ref_f = trimesh.remesh.subdivide_loop(v, f)
        np.testing.assert_array_equal(faces, ref_f)
        np.testing.assert_allclose(step @ v, ref_v, atol=1e-12)
        np.testing.assert_allclose(np.asarray(step.sum(axis=1)).reshape(-1), 1.0, atol=1e-12)  # affine rules


def test_open_square_boundary_rule_is_the_standard_one():
    """On a midpoint-split square some boundary vertices share an interior edge with another boundary vertex;
    trimesh then adds that vertex to the boundary mask (weights summing to 9/8, not affine). Ours use the two
    boundary-edge neighbours only: every row of the step matrix sums to 1, and boundary vertices of a flat square
    stay in its plane and on its border lines (but its 4 corners, which the cubic B-spline boundary rule rounds:
    there are no corner rules here)."""
    v, f = trimesh.remesh.subdivide(np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0.0]]),
                                    np.array([[0, 1, 2], [0, 2, 3]]))
    v, f = trimesh.remesh.subdivide(v, f)
    step, _ = loop_step_matrix(f, len(v))
    np.testing.assert_allclose(np.asarray(step.sum(axis=1)).reshape(-1), 1.0, atol=1e-12)
    new = step @ v
    assert np.abs(new[:, 2]).max() < 1e-12
    on_x = np.isclose(v[:, 0], 0) | np.isclose(v[:, 0], 1)
    on_y = np.isclose(v[:, 1], 0) | np.isclose(v[:, 1], 1)
    moved = new[: len(v)][on_x ^ on_y]
    assert len(moved) == 12
    assert (np.isclose(moved[:, 0], 0, atol=1e-12) | np.isclose(moved[:, 0], 1, atol=1e-12)
            | np.isclose(moved[:, 1], 0, atol=1e-12) | np.isclose(moved[:, 1], 1, atol=1e-12)).all()


@pytest.mark.parametrize("mesh", ["closed", "open"])
def test_limit_positions_match_many_levels(mesh):
    """Loop's limit masks after k levels vs trimesh after k + 4 and k + 6 levels on the level-k vertices (which
    keep their indices): the gap shrinks ~4x per level toward our limit and is below 5e-5 after 6 more levels on a
    noisy unit icosahedron / tube (measured: 2e-5 / 3e-5)."""
    v, f = _noisy_icosphere(0) if mesh == "closed" else _tube(4, 8)
    for levels in (0, 1):
        surface = LoopSurface(f, len(v), levels, limit=True)
        ours = surface.matrix_scipy @ v
        gaps = [np.abs(ours - trimesh.remesh.subdivide_loop(v, f, levels + extra)[0][: surface.num_vertices]).max()
                for extra in (4, 6)]
        assert gaps[1] < 5e-5 and gaps[1] < gaps[0] / 8, gaps
        plain = LoopSurface(f, len(v), levels, limit=False)
        np.testing.assert_allclose(plain.matrix_scipy @ v, trimesh.remesh.subdivide_loop(v, f, levels)[0]
                                   if levels else v, atol=1e-12)
        np.testing.assert_array_equal(plain.t_pos_idx, surface.t_pos_idx)


def test_limit_matrix_rows_are_affine_and_interior_masks_match_loop():
    """Rows sum to 1; a valence-6 interior vertex gets Loop's regular limit mask: 1/2 centre, 1/12 per neighbour."""
    v, f = _noisy_icosphere(2)
    limit = loop_limit_matrix(f, len(v)).toarray()
    np.testing.assert_allclose(limit.sum(axis=1), 1.0, atol=1e-12)
    valence = (limit > 0).sum(axis=1) - 1
    regular = int(np.argmax(valence == 6))
    np.testing.assert_allclose(limit[regular, regular], 0.5, atol=1e-12)
    np.testing.assert_allclose(np.sort(limit[regular][limit[regular] > 0])[:6], 1 / 12, atol=1e-12)


def test_gradient_reaches_every_control_vertex():
    v, f = _noisy_icosphere(1)
    surface = LoopSurface(f, len(v), 2)
    control = torch.tensor(v, dtype=torch.float32, requires_grad=True)
    out = surface(control)
    assert out.shape == (surface.num_vertices, 3) and surface.t_pos_idx.shape == (len(f) * 16, 3)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    (out * weights).sum().backward()
    assert (control.grad.norm(dim=1) > 1e-6).all()
    # the gradient is the transposed matrix: exact
    expected = torch.from_numpy(surface.matrix_scipy.T @ weights.double().numpy()).float()
    torch.testing.assert_close(control.grad, expected, atol=1e-5, rtol=1e-5)


def test_uvs_follow_by_midpoints():
    """Per-corner UVs split like the faces: corner UVs of each new face are those of the old face's corners and edge
    midpoints, so a texture painted on the control atlas stays put."""
    v, f = _noisy_icosphere(0)
    rng = np.random.default_rng(2)
    uv_idx = np.arange(len(f) * 3).reshape(-1, 3)
    uv = rng.random((len(f) * 3, 2))
    step, uv_faces = midpoint_step_matrix(uv_idx, len(uv))
    new_uv = step @ uv
    surface = LoopSurface(f, len(v), 1, uv=uv, uv_idx=uv_idx)
    np.testing.assert_allclose(surface.uv, new_uv.astype(np.float32))
    first = new_uv[uv_faces[:4]]  # the four children of face 0
    a, b, c = uv[uv_idx[0]]
    np.testing.assert_allclose(first[0], [a, (a + b) / 2, (c + a) / 2])
    np.testing.assert_allclose(first[3], [(a + b) / 2, (b + c) / 2, (c + a) / 2])


def test_non_manifold_meshes_are_rejected_clearly():
    fan = np.array([[0, 1, 2], [0, 1, 3], [0, 1, 4]])
    with pytest.raises(MeshError, match=r"edge \(0, 1\) is shared by 3 faces"):
        loop_step_matrix(fan, 5)
    bowtie = np.array([[0, 1, 2], [0, 3, 4]])  # vertex 0 has four boundary edges
    with pytest.raises(MeshError, match="boundary vertex 0 has 4 boundary edges"):
        LoopSurface(bowtie, 5, 1)
    with pytest.raises(MeshError, match="distinct"):
        loop_step_matrix(np.array([[0, 0, 1]]), 2)
    with pytest.raises(ValueError, match="levels"):
        LoopSurface(np.array([[0, 1, 2]]), 3, -1)


# ---- tangent-space normal maps -----------------------------------------------------------------------------------

def _quad(mirror: bool = False):
    """A unit square in the XY plane (normal +Z) with UVs = (x, y), or mirrored in U."""
    v = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=torch.float32)
    f = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    uv = v[:, :2].clone()
    if mirror:
        uv[:, 0] = 1 - uv[:, 0]
    return v, f, uv, f.clone()


def test_tangent_frame_follows_uvs_opengl_convention():
    """T = +U direction, B = +V direction (OpenGL / Blender: green = +V up); a mirrored chart flips the handedness
    sign, so the bitangent still points along +V."""
    for mirror, t_expected in ((False, [1.0, 0, 0]), (True, [-1.0, 0, 0])):
        v, f, uv, uv_idx = _quad(mirror)
        tangents = uv_tangents(v, f, uv, uv_idx)
        n = torch.tensor([[0, 0, 1.0]]).expand(4, 3)
        t_unit = torch.nn.functional.normalize(tangents[:, :3], dim=-1)
        torch.testing.assert_close(t_unit, torch.tensor([t_expected]).expand(4, 3))
        assert (tangents[:, 3] == (-1.0 if mirror else 1.0)).all()
        green = perturb_normals(n, tangents, torch.tensor([[0, 1.0, 0]]).expand(4, 3))
        torch.testing.assert_close(green, torch.tensor([[0, 1.0, 0]]).expand(4, 3))  # +V = +Y here
        red = perturb_normals(n, tangents, torch.tensor([[1.0, 0, 0]]).expand(4, 3))
        torch.testing.assert_close(red, torch.tensor([t_expected]).expand(4, 3))


def test_flat_normal_map_keeps_normals_and_colours_round_trip():
    v, f, uv, uv_idx = _quad()
    tangents = uv_tangents(v, f, uv, uv_idx)
    n = torch.nn.functional.normalize(torch.tensor([[0.2, -0.1, 1.0]]).expand(4, 3), dim=-1)
    flat = normal_map_to_unit(torch.tensor([[0.5, 0.5, 1.0]]).expand(4, 3))
    torch.testing.assert_close(perturb_normals(n, tangents, flat), n)
    vec = torch.nn.functional.normalize(torch.tensor([[0.3, -0.4, 0.8]]), dim=-1)
    torch.testing.assert_close(normal_map_to_unit(unit_to_normal_map(vec)), vec)
    assert unit_to_normal_map(torch.tensor([[0.0, 0.0, -1.0]]))[0, 2] >= 0.5  # never into the surface
