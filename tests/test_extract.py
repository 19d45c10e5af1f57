"""Tests of backend/geometry/extract.py and bake.py: grid sampling, marching cubes, clean-up, vertex colours, texture
baking (CPU, fast)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import trimesh

from backend.geometry.bake import bake_texture, dilate_texture, vertex_colors
from backend.geometry.extract import clean_mesh, extract_mesh, marching_cubes, sample_grid, transform_mesh
from backend.geometry.queries import signed_volume
from backend.geometry.mesh import MeshError, normalize_vertices, TriMesh
from backend.geometry.render import TorchRasterizer

CENTER = np.array([0.3, -0.2, 0.1])
RADIUS = 0.55
# An asymmetric box with a different voxel size on each axis: any axis swap or offset error shows.
BOUND = ((-1.0, -0.9, -0.8), (1.1, 0.9, 1.0))


def sphere_sdf(center=CENTER, radius=RADIUS):
    c = torch.tensor(center, dtype=torch.float32)
    return lambda p: (p - c).norm(dim=1) - radius


def n_bodies(mesh: TriMesh) -> int:
    """Connected components counted independently of backend.geometry.extract (trimesh's face adjacency)."""
    return len(trimesh.Trimesh(mesh.v_pos, mesh.t_pos_idx, process=False).split(only_watertight=False))


@pytest.fixture(scope="module")
def sphere_mesh() -> TriMesh:
    grid = sample_grid(sphere_sdf(), 40, BOUND)
    return clean_mesh(marching_cubes(grid, 0.0, BOUND, inside="below"))


# ---- sample_grid ---------------------------------------------------------------------------------------------------

def test_sample_grid_index_order_and_end_points():
    resolution = 9
    grid = sample_grid(lambda p: p[:, 0] + 10.0 * p[:, 1] + 100.0 * p[:, 2], resolution, BOUND, chunk=50)
    axes = [np.linspace(lo, hi, resolution) for lo, hi in zip(*BOUND)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    assert grid.shape == (resolution,) * 3 and grid.dtype == np.float32
    np.testing.assert_allclose(grid, x + 10.0 * y + 100.0 * z, atol=1e-4)


def test_sample_grid_chunks_are_bounded_and_do_not_change_the_result():
    sizes: list[int] = []
    fn = sphere_sdf()

    def recording(p):
        sizes.append(p.shape[0])
        return fn(p)

    whole = sample_grid(fn, 24, 1.0, chunk=24 ** 3)
    chunked = sample_grid(recording, 24, 1.0, chunk=1000)
    assert max(sizes) <= 1000 and sum(sizes) == 24 ** 3
    assert np.array_equal(whole, chunked)


@pytest.mark.parametrize("resolution", [4, 5000, 64.5, True])
def test_sample_grid_rejects_absurd_resolution(resolution):
    with pytest.raises(ValueError, match=str(resolution)):
        sample_grid(sphere_sdf(), resolution, 1.0)


def test_sample_grid_rejects_bad_field_outputs_and_bounds():
    with pytest.raises(ValueError, match="NaN"):
        sample_grid(lambda p: torch.where(p[:, 0] > 0.5, torch.nan, 0.0), 8, 1.0)
    with pytest.raises(ValueError, match=r"shape \(512,\)"):
        sample_grid(lambda p: p[:, :1], 8, 1.0)
    with pytest.raises(ValueError, match="bound"):
        sample_grid(sphere_sdf(), 8, ((0, 0, 0), (1, -1, 1)))
    with pytest.raises(ValueError, match="bound"):
        sample_grid(sphere_sdf(), 8, -1.0)


# ---- marching_cubes ------------------------------------------------------------------------------------------------

def test_marching_cubes_sphere_radius_outward_watertight():
    resolution = 48
    voxel = min((hi - lo) / (resolution - 1) for lo, hi in zip(*BOUND))
    grid = sample_grid(sphere_sdf(), resolution, BOUND)
    for field, inside in ((grid, "below"), (-grid, "above")):  # SDF, and occupancy-like (solid where above)
        mesh = marching_cubes(field, 0.0, BOUND, inside=inside)
        radius = np.linalg.norm(mesh.v_pos - CENTER, axis=1)
        # A half-voxel or endpoint convention error would put vertices ~0.5 voxel off; linear interpolation of the
        # exact SDF leaves a tiny fraction of one.
        assert np.abs(radius - RADIUS).max() < 0.05 * voxel
        assert signed_volume(mesh.v_pos, mesh.t_pos_idx) == pytest.approx(4 / 3 * np.pi * RADIUS ** 3, rel=0.01)
        tm = trimesh.Trimesh(mesh.v_pos, mesh.t_pos_idx, process=False)
        assert tm.is_watertight and tm.is_winding_consistent
        assert tm.volume > 0  # trimesh's own signed volume agrees: normals point outward
    # The inside flag matters: the same SDF read as "solid where above" is the complement, wound inward.
    wrong = marching_cubes(grid, 0.0, BOUND, inside="above")
    assert signed_volume(wrong.v_pos, wrong.t_pos_idx) < 0


def test_extract_mesh_nonzero_level():
    mesh = extract_mesh(sphere_sdf(), 32, level=0.1, bound=1.0, inside="below", chunk=5000)
    assert np.abs(np.linalg.norm(mesh.v_pos - CENTER, axis=1) - (RADIUS + 0.1)).max() < 0.05 * 2 / 31


def test_marching_cubes_bad_inputs():
    grid = sample_grid(sphere_sdf(), 16, 1.0)
    nan_grid = grid.copy()
    nan_grid[3, 4, 5] = np.nan
    with pytest.raises(ValueError, match=r"NaN/Inf.*\(3, 4, 5\)"):
        marching_cubes(nan_grid, 0.0, 1.0, inside="below")
    with pytest.raises(MeshError, match="no surface at level 5"):
        marching_cubes(grid, 5.0, 1.0, inside="below")
    with pytest.raises(ValueError, match="inside"):
        marching_cubes(grid, 0.0, 1.0, inside="inner")
    with pytest.raises(ValueError, match="3-D"):
        marching_cubes(grid[0], 0.0, 1.0)
    with pytest.raises(ValueError, match="level"):
        marching_cubes(grid, float("nan"), 1.0)


# ---- clean_mesh ----------------------------------------------------------------------------------------------------

def two_spheres_and_floater() -> tuple[TriMesh, dict]:
    parts = {"a": ((-0.45, 0.0, 0.0), 0.35), "b": ((0.45, 0.05, 0.0), 0.3), "floater": ((0.0, 0.6, 0.5), 0.07)}
    centers = torch.tensor([c for c, _ in parts.values()], dtype=torch.float32)
    radii = torch.tensor([r for _, r in parts.values()], dtype=torch.float32)

    def union(p):
        return ((p[:, None, :] - centers[None]).norm(dim=2) - radii[None]).min(dim=1).values

    return extract_mesh(union, 48, 0.0, 1.0, inside="below"), parts


def test_clean_mesh_drops_the_floater_keeps_the_big_parts():
    raw, parts = two_spheres_and_floater()
    assert n_bodies(raw) == 3
    near = {name: np.linalg.norm(raw.v_pos - np.array(c), axis=1) < r + 0.05 for name, (c, r) in parts.items()}

    cleaned = clean_mesh(raw, min_component_ratio=0.05)
    assert n_bodies(cleaned) == 2
    for name, (c, r) in parts.items():
        kept = int((np.linalg.norm(cleaned.v_pos - np.array(c), axis=1) < r + 0.05).sum())
        assert kept == (0 if name == "floater" else int(near[name].sum())), name
    # The floater's area is ~4 % of sphere a's: a ratio below that keeps it; by face count too.
    assert n_bodies(clean_mesh(raw, min_component_ratio=0.01)) == 3
    assert n_bodies(clean_mesh(raw, min_component_ratio=0.05, component_measure="faces")) == 2
    largest = clean_mesh(raw, min_component_ratio=0.0, keep_largest=1)
    assert n_bodies(largest) == 1
    assert np.linalg.norm(largest.v_pos.mean(axis=0) - np.array(parts["a"][0])) < 0.01


def test_clean_mesh_merges_duplicates_drops_degenerate_faces():
    ico = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    soup_v = ico.vertices[ico.faces].reshape(-1, 3).astype(np.float32)  # every corner its own vertex
    soup_f = np.arange(len(soup_v), dtype=np.int32).reshape(-1, 3)
    degenerate = np.array([[0, 0, 1], [0, 1, 2]], dtype=np.int32)
    collinear_v = np.array([[0, 0, 0], [0.1, 0, 0], [0.2, 0, 0]], dtype=np.float32) + 2.0
    v_pos = np.concatenate([soup_v, collinear_v])
    t_pos_idx = np.concatenate([soup_f, degenerate[:1], len(soup_v) + degenerate[1:]])
    cleaned = clean_mesh(TriMesh(v_pos, t_pos_idx), min_component_ratio=0.0)
    assert len(cleaned.v_pos) == len(ico.vertices) and len(cleaned.t_pos_idx) == len(ico.faces)
    tm = trimesh.Trimesh(cleaned.v_pos, cleaned.t_pos_idx, process=False)
    assert tm.is_watertight and tm.volume == pytest.approx(ico.volume, rel=1e-5)


def test_clean_mesh_orients_inconsistent_and_inside_out_meshes_outward():
    ico = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    rng = np.random.default_rng(0)
    faces = ico.faces.copy()
    flip = rng.random(len(faces)) < 0.3
    faces[flip] = faces[flip][:, ::-1]
    mixed = clean_mesh(TriMesh(ico.vertices.astype(np.float32), faces.astype(np.int32)))
    inside_out = clean_mesh(TriMesh(ico.vertices.astype(np.float32), ico.faces[:, ::-1].astype(np.int32)))
    for mesh in (mixed, inside_out):
        tm = trimesh.Trimesh(mesh.v_pos, mesh.t_pos_idx, process=False)
        assert tm.is_winding_consistent
        assert signed_volume(mesh.v_pos, mesh.t_pos_idx) == pytest.approx(ico.volume, rel=1e-5)


def test_clean_mesh_decimates_to_the_face_budget(sphere_mesh):
    pytest.importorskip("fast_simplification", reason="fast-simplification (quadric decimation) is not installed")
    assert len(sphere_mesh.t_pos_idx) > 4000
    decimated = clean_mesh(sphere_mesh, face_budget=1500)
    assert 1400 <= len(decimated.t_pos_idx) <= 1500
    radius = np.linalg.norm(decimated.v_pos - CENTER, axis=1)
    assert np.abs(radius - RADIUS).max() < 0.02 * RADIUS  # the shape survives
    tm = trimesh.Trimesh(decimated.v_pos, decimated.t_pos_idx, process=False)
    assert tm.is_watertight and tm.volume > 0
    # Under the budget: untouched.
    assert len(clean_mesh(sphere_mesh, face_budget=10 ** 6).t_pos_idx) == len(sphere_mesh.t_pos_idx)


def test_clean_mesh_without_decimation_library_says_what_to_install(sphere_mesh, monkeypatch):
    monkeypatch.setitem(sys.modules, "fast_simplification", None)  # import now raises ImportError
    with pytest.raises(RuntimeError, match="pip install fast-simplification"):
        clean_mesh(sphere_mesh, face_budget=100)


def test_clean_mesh_bad_arguments(sphere_mesh):
    with pytest.raises(ValueError, match="min_component_ratio"):
        clean_mesh(sphere_mesh, min_component_ratio=2.0)
    with pytest.raises(ValueError, match="face_budget"):
        clean_mesh(sphere_mesh, face_budget=2)
    with pytest.raises(ValueError, match="keep_largest"):
        clean_mesh(sphere_mesh, keep_largest=0)
    with pytest.raises(MeshError, match="non-degenerate"):
        clean_mesh(TriMesh(np.zeros((3, 3), np.float32), np.array([[0, 1, 2]], np.int32)))


# ---- colours -------------------------------------------------------------------------------------------------------

def color_field(p: torch.Tensor) -> torch.Tensor:
    """(n, 3) -> (n, 4): a non-linear 4-channel field (like SD latents)."""
    return torch.stack([torch.sin(3.0 * p[:, 0]), p[:, 1] * p[:, 2], p[:, 0] + p[:, 1], p[:, 2] ** 2], dim=1)


def test_vertex_colors_exact_and_chunk_independent(sphere_mesh):
    v = sphere_mesh.v_pos.astype(np.float64)
    expected = np.stack([np.sin(3 * v[:, 0]), v[:, 1] * v[:, 2], v[:, 0] + v[:, 1], v[:, 2] ** 2], axis=1)
    colors = vertex_colors(sphere_mesh, color_field, chunk=777)
    assert colors.shape == (len(v), 4) and colors.dtype == np.float32
    np.testing.assert_allclose(colors, expected, atol=1e-6)
    assert np.array_equal(colors, vertex_colors(sphere_mesh, color_field, chunk=10 ** 6))
    with pytest.raises(ValueError, match="color_fn"):
        vertex_colors(sphere_mesh, lambda p: p[:, 0])
    with pytest.raises(ValueError, match="NaN"):
        vertex_colors(sphere_mesh, lambda p: p / 0.0 * 0.0)


def corner_errors_in_texels(mesh: TriMesh, uv, uv_idx, texture, rasterizer) -> np.ndarray:
    """|texture(corner uv) - vertex position| per face corner, in texel lengths on the surface."""
    corner_uv = torch.from_numpy(uv[uv_idx.reshape(-1)])[None, None]
    sampled = rasterizer.texture(torch.from_numpy(texture)[None], corner_uv)[0, 0].numpy()
    err = np.linalg.norm(sampled[:, :3] - mesh.v_pos[mesh.t_pos_idx.reshape(-1)], axis=1)
    corners = uv[uv_idx]
    e1, e2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    uv_area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).sum()
    area = trimesh.Trimesh(mesh.v_pos, mesh.t_pos_idx, process=False).area
    texel = np.sqrt(area / uv_area) / texture.shape[0]
    return err / texel


def test_bake_texture_reproduces_the_field_at_the_corners(sphere_mesh):
    """End to end through xatlas, the UV-space rasterization and rasterizer.texture (row/uv conventions)."""
    rasterizer = TorchRasterizer("cpu")

    def position_and_sum(p):  # colour = position (+ a 4th channel: C is generic)
        return torch.cat([p, p.sum(dim=1, keepdim=True)], dim=1)

    uv, uv_idx, texture = bake_texture(sphere_mesh, position_and_sum, 128, rasterizer, chunk=4096)
    assert texture.shape == (128, 128, 4) and texture.dtype == np.float32 and np.isfinite(texture).all()
    assert uv_idx.shape == sphere_mesh.t_pos_idx.shape and uv.min() >= 0 and uv.max() <= 1
    np.testing.assert_allclose(texture[..., 3], texture[..., :3].sum(axis=-1), atol=1e-5)
    err = corner_errors_in_texels(sphere_mesh, uv, uv_idx, texture, rasterizer)
    # Bilinear lookups at chart borders read extrapolated gutter texels: a fraction of a texel off at nearly every
    # corner (a few corners where xatlas folds a sliver can be worse).
    assert err.mean() < 0.1 and np.percentile(err, 99) < 0.5 and np.mean(err < 1.0) > 0.995
    # Without the extrapolated gutter (plain dilation only) borders are visibly worse: what the extrapolation buys.
    _, _, plain = bake_texture(sphere_mesh, position_and_sum, 128, rasterizer, extrapolate=0)
    assert np.percentile(corner_errors_in_texels(sphere_mesh, uv, uv_idx, plain, rasterizer), 99) > 0.5


@pytest.mark.gpu
def test_bake_texture_and_sample_grid_on_cuda_match_cpu(sphere_mesh):
    """nvdiffrast (UV rasterization, interpolation, texture lookups) and CUDA grid sampling agree with the CPU path."""
    from backend.geometry.render import NvdiffrastRasterizer

    grid_cpu = sample_grid(sphere_sdf(), 32, BOUND)
    c = torch.tensor(CENTER, dtype=torch.float32, device="cuda")
    grid_gpu = sample_grid(lambda p: (p - c).norm(dim=1) - RADIUS, 32, BOUND, chunk=4096, device="cuda")
    np.testing.assert_allclose(grid_gpu, grid_cpu, atol=1e-6)

    cpu, gpu = TorchRasterizer("cpu"), NvdiffrastRasterizer("cuda")
    uv, uv_idx, tex_cpu = bake_texture(sphere_mesh, lambda p: p, 128, cpu)
    with_uv = TriMesh(sphere_mesh.v_pos, sphere_mesh.t_pos_idx, uv, uv_idx)
    uv_gpu, _, tex_gpu = bake_texture(with_uv, lambda p: p, 128, gpu)
    assert np.array_equal(uv_gpu, uv)
    err = corner_errors_in_texels(sphere_mesh, uv, uv_idx, tex_gpu, cpu)
    assert err.mean() < 0.1 and np.percentile(err, 99) < 0.5
    # Texel-centre ties on triangle edges may go to the other triangle: same surface point, tiny differences.
    assert np.mean(np.abs(tex_gpu - tex_cpu).max(axis=-1) < 1e-4) > 0.99


def test_bake_texture_keeps_given_uvs_and_row_0_is_v_0():
    """A unit square whose UVs equal its (x, y): texel (row r, col c) must hold the point ((c+.5)/S, (r+.5)/S)."""
    v_pos = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=np.float32)
    t_pos_idx = np.array([[0, 1, 2], [0, 2, 3]], dtype=np.int32)
    square = TriMesh(v_pos, t_pos_idx, uv=v_pos[:, :2].copy(), uv_idx=t_pos_idx.copy())
    size = 16
    uv, uv_idx, texture = bake_texture(square, lambda p: p, size, TorchRasterizer("cpu"))
    assert np.array_equal(uv, square.uv) and np.array_equal(uv_idx, square.uv_idx)
    centers = (np.arange(size) + 0.5) / size
    np.testing.assert_allclose(texture[..., 0], np.broadcast_to(centers[None, :], (size, size)), atol=1e-6)
    np.testing.assert_allclose(texture[..., 1], np.broadcast_to(centers[:, None], (size, size)), atol=1e-6)
    np.testing.assert_allclose(texture[..., 2], 0.0, atol=1e-6)


def test_bake_texture_bad_inputs(sphere_mesh):
    rasterizer = TorchRasterizer("cpu")
    with pytest.raises(ValueError, match="texture_size"):
        bake_texture(sphere_mesh, lambda p: p, 4, rasterizer)
    with pytest.raises(ValueError, match="NaN"):
        bake_texture(sphere_mesh, lambda p: torch.full_like(p, torch.nan), 32, rasterizer)


def test_dilate_texture_grows_charts_then_fills_with_the_mean():
    texture = torch.zeros(12, 12, 2)
    mask = torch.zeros(12, 12, dtype=torch.bool)
    texture[2, 2] = torch.tensor([1.0, 2.0])
    texture[9, 9] = torch.tensor([3.0, 6.0])
    mask[2, 2] = mask[9, 9] = True
    out = dilate_texture(texture, mask, iterations=2)
    assert torch.equal(out[0:5, 0:5], texture[2, 2].expand(5, 5, 2))  # two rings around (2, 2)
    assert torch.equal(out[7:12, 7:12], texture[9, 9].expand(5, 5, 2))
    assert torch.equal(out[0, 11], torch.tensor([2.0, 4.0]))  # unreached: mean of the covered texels
    with pytest.raises(ValueError, match="no texel"):
        dilate_texture(texture, torch.zeros_like(mask), 1)


# ---- frames --------------------------------------------------------------------------------------------------------

def test_transform_mesh_inverts_normalize_vertices(sphere_mesh):
    world = sphere_mesh.v_pos * 3.0 + np.array([5.0, -2.0, 1.0], dtype=np.float32)
    v_norm, center, scale = normalize_vertices(world, radius=0.7)
    back = transform_mesh(TriMesh(v_norm, sphere_mesh.t_pos_idx), scale, center)
    np.testing.assert_allclose(back.v_pos, world, atol=1e-5)
    assert back.t_pos_idx is sphere_mesh.t_pos_idx
    assert signed_volume(back.v_pos, back.t_pos_idx) > 0
    with pytest.raises(ValueError, match="scale"):
        transform_mesh(sphere_mesh, -1.0, center)
    with pytest.raises(ValueError, match="center"):
        transform_mesh(sphere_mesh, 1.0, [0.0, 1.0])
