"""Tests for backend.geometry.render: TorchRasterizer against independent references; nvdiffrast parity on GPU."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from backend.geometry.cameras import cameras_from_angles
from backend.geometry.render import make_rasterizer, NvdiffrastRasterizer, Rasterizer, TorchRasterizer


@pytest.fixture
def rasterizer() -> TorchRasterizer:
    return TorchRasterizer("cpu")


def _pixel_centres_ndc(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) NDC x and y of pixel centres, nvdiffrast's convention (row 0 at the bottom)."""
    x = (np.arange(width) + 0.5) / width * 2 - 1
    y = (np.arange(height) + 0.5) / height * 2 - 1
    return np.meshgrid(x, y, indexing="xy")


def _to_clip(v_pos: torch.Tensor, mvp: torch.Tensor) -> torch.Tensor:
    """(V, 3) world points, (B, 4, 4) mvp -> (B, V, 4) float32 clip positions."""
    v_pos_h = torch.cat([v_pos, torch.ones(v_pos.shape[0], 1, dtype=v_pos.dtype)], dim=1)
    return (v_pos_h @ mvp.transpose(-1, -2)).float().contiguous()


def _brute_force_rasterize(ndc: np.ndarray, faces: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reference: (H, W) triangle id (-1 background) of the nearest triangle covering each pixel centre.

    ndc: (V, 3) float64 vertex NDC positions. Every (pixel, triangle) pair is tested with a same-side sign test.
    """
    x, y = _pixel_centres_ndc(height, width)
    p = np.stack([x, y], axis=-1)[:, :, None, :]  # (H, W, 1, 2)
    tri = ndc[faces]  # (F, 3, 3)
    a, b, c = tri[None, None, :, 0, :2], tri[None, None, :, 1, :2], tri[None, None, :, 2, :2]

    def cross(o, s, q):
        return (s[..., 0] - o[..., 0]) * (q[..., 1] - o[..., 1]) - (s[..., 1] - o[..., 1]) * (q[..., 0] - o[..., 0])

    d0, d1, d2 = cross(a, b, p), cross(b, c, p), cross(c, a, p)
    inside = ((d0 >= 0) & (d1 >= 0) & (d2 >= 0)) | ((d0 <= 0) & (d1 <= 0) & (d2 <= 0))
    # Depth of the triangle's plane at the pixel (z/w is affine in screen space).
    area = cross(a, b, c)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = (d1 * tri[None, None, :, 0, 2] + d2 * tri[None, None, :, 1, 2] + d0 * tri[None, None, :, 2, 2]) / area
    depth = np.where(inside, depth, np.inf)
    ids = np.argmin(depth, axis=-1)
    return np.where(np.isfinite(depth.min(axis=-1)), ids, -1)


def _random_scene(seed: int, num_faces: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Random small triangles with random depth and w in [0.5, 3]: (1, 3F, 4) pos_clip, (F, 3) int32 tri."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-0.9, 0.9, size=(num_faces, 1, 2))
    ndc_xy = centres + rng.uniform(-0.5, 0.5, size=(num_faces, 3, 2))
    ndc_z = rng.uniform(-0.9, 0.9, size=(num_faces, 3, 1))
    w = rng.uniform(0.5, 3.0, size=(num_faces, 3, 1))
    pos_clip = np.concatenate([np.concatenate([ndc_xy, ndc_z], axis=-1) * w, w], axis=-1).reshape(1, -1, 4)
    tri = np.arange(3 * num_faces).reshape(num_faces, 3)
    return torch.tensor(pos_clip, dtype=torch.float32), torch.tensor(tri, dtype=torch.int32)


def _cube() -> tuple[torch.Tensor, torch.Tensor]:
    """Unit cube [-0.5, 0.5]^3: (8, 3) float32 v_pos, (12, 3) int32 t_pos_idx (outward, counter-clockwise)."""
    v_pos = torch.tensor([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    quads = [(0, 4, 5, 1), (2, 3, 7, 6), (0, 1, 3, 2), (4, 6, 7, 5), (0, 2, 6, 4), (1, 5, 7, 3)]  # -y +y -x +x -z +z
    t_pos_idx = [[a, b, c] for a, b, c, d in quads] + [[a, c, d] for a, b, c, d in quads]
    return v_pos, torch.tensor(t_pos_idx, dtype=torch.int32)


# ---------------------------------------------------------------------------------------------------------------------
# rasterize
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("w", [(1.0, 1.0, 1.0), (0.7, 2.0, 3.5)])
def test_single_triangle_covers_exactly_the_pixel_centres_inside(rasterizer, w):
    height, width = 23, 31  # non-square, odd: catches swapped axes and half-pixel offsets
    ndc = np.array([[-0.83, -0.91, 0.1], [0.71, -0.37, 0.2], [-0.12, 0.29, 0.3]])
    pos_clip = torch.tensor(np.concatenate([ndc * np.array(w)[:, None], np.array(w)[:, None]], axis=1)[None],
                            dtype=torch.float32)
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    rast_out = rasterizer.rasterize(pos_clip, tri, (height, width))
    assert rast_out.shape == (1, height, width, 4) and rast_out.dtype == torch.float32
    covered = rast_out[0, ..., 3].numpy() == 1
    expected = _brute_force_rasterize(ndc, tri.numpy(), height, width) == 0
    assert expected.sum() > 50
    np.testing.assert_array_equal(covered, expected)
    # The triangle is in the lower half of NDC: with row 0 at the bottom, the top rows stay empty.
    assert covered[:3].any() and not covered[-8:].any()
    assert (rast_out[0][~torch.from_numpy(covered)] == 0).all()


def test_reversed_winding_is_not_culled(rasterizer):
    pos_clip, tri = _random_scene(0, num_faces=1)
    front = rasterizer.rasterize(pos_clip, tri, (16, 16))
    back = rasterizer.rasterize(pos_clip, tri[:, [0, 2, 1]], (16, 16))
    assert (front[..., 3] > 0).sum() > 0
    assert torch.equal(front[..., 3], back[..., 3])


def test_random_scene_matches_brute_force_reference(rasterizer):
    pos_clip, tri = _random_scene(1, num_faces=40)
    height, width = 24, 20
    rast_out = rasterizer.rasterize(pos_clip, tri, (height, width))
    ndc = (pos_clip[0, :, :3] / pos_clip[0, :, 3:]).double().numpy()
    expected = _brute_force_rasterize(ndc, tri.numpy(), height, width)
    got = rast_out[0, ..., 3].numpy().astype(np.int64) - 1
    assert (expected >= 0).mean() > 0.5 and len(np.unique(expected)) > 20
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_nearest_depth_wins_whatever_the_triangle_order(rasterizer, order):
    # Two overlapping triangles: A at z/w = 0.5, B (nearer) at z/w = -0.2, B smaller and inside A's footprint.
    a = [[-0.9, -0.9, 0.5, 1.0], [0.9, -0.9, 0.5, 1.0], [0.0, 0.9, 0.5, 1.0]]
    b = [[-0.4, -0.6, -0.2, 1.0], [0.4, -0.6, -0.2, 1.0], [0.0, 0.3, -0.2, 1.0]]
    triangles = [a, b]
    pos_clip = torch.tensor([triangles[order[0]] + triangles[order[1]]], dtype=torch.float32)
    tri = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)
    rast_out = rasterizer.rasterize(pos_clip, tri, (32, 32))
    id_b = order.index(1) + 1
    ndc_b = np.array(b)[:, :3]
    inside_b = _brute_force_rasterize(ndc_b, np.array([[0, 1, 2]]), 32, 32) == 0
    ids = rast_out[0, ..., 3].numpy()
    assert inside_b.sum() > 30
    assert (ids[inside_b] == id_b).all()
    assert ((ids > 0) & ~inside_b).sum() > 100 and (ids[(ids > 0) & ~inside_b] != id_b).all()
    depth = rast_out[0, ..., 2]
    torch.testing.assert_close(depth[torch.from_numpy(inside_b)], torch.full((int(inside_b.sum()),), -0.2))


def test_interpolated_positions_match_ray_plane_intersections(rasterizer):
    """Perspective-correct barycentrics: interpolating world positions gives the exact ray hit point."""
    cams = cameras_from_angles(25.0, 30.0, 2.0, 50.0)
    v_pos = torch.tensor([[-0.8, -0.3, -0.5], [0.7, 0.4, -0.2], [0.1, -0.6, 0.9]], dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    height, width = 40, 48
    rast_out = rasterizer.rasterize(_to_clip(v_pos, cams.mvp.double()), tri, (height, width))
    covered = rast_out[0, ..., 3] > 0
    assert covered.sum() > 200
    points = rasterizer.interpolate(v_pos.float(), rast_out, tri)[0][covered].double()

    # Independent: rays from the camera centre through pixel centres, intersected with the triangle's plane.
    x, y = _pixel_centres_ndc(height, width)
    tan_half = math.tan(math.radians(50.0) / 2)  # the mvp has aspect 1: NDC x spans tan_half too
    dirs_cam = torch.tensor(np.stack([x * tan_half, y * tan_half, -np.ones_like(x)], axis=-1))[covered]
    c2w = cams.c2w[0].double()
    origin = c2w[:3, 3]
    dirs = dirs_cam @ c2w[:3, :3].T
    normal = torch.linalg.cross(v_pos[1] - v_pos[0], v_pos[2] - v_pos[0])
    t = ((v_pos[0] - origin) @ normal) / (dirs @ normal)
    hits = origin + t[:, None] * dirs
    torch.testing.assert_close(points, hits, atol=2e-5, rtol=0)
    # z/w channel = the hit point's projected depth.
    hit_clip = torch.cat([hits, torch.ones(len(hits), 1, dtype=hits.dtype)], 1) @ cams.mvp[0].double().T
    torch.testing.assert_close(rast_out[0][covered][:, 2].double(), hit_clip[:, 2] / hit_clip[:, 3], atol=1e-5,
                               rtol=0)


def test_unit_cube_from_front_camera_fills_expected_square(rasterizer):
    v_pos, t_pos_idx = _cube()
    distance, fovy, res = 3.0, 40.0, 64
    cams = cameras_from_angles(0.0, 0.0, distance, fovy)
    rast_out = rasterizer.rasterize(_to_clip(v_pos, cams.mvp), t_pos_idx, (res, res))
    # The front face (y = -0.5) is distance - 0.5 away; its half-size in NDC:
    half = 0.5 / (distance - 0.5) / math.tan(math.radians(fovy) / 2)
    x, y = _pixel_centres_ndc(res, res)
    expected = (np.abs(x) < half) & (np.abs(y) < half)
    covered = rast_out[0, ..., 3].numpy() > 0
    np.testing.assert_array_equal(covered, expected)
    face_ids = rast_out[0, ..., 3][torch.from_numpy(covered)].long() - 1
    assert set(face_ids.tolist()) == {0, 6}  # the two triangles of the -y (front) quad
    world = rasterizer.interpolate(v_pos, rast_out, t_pos_idx)[0]
    torch.testing.assert_close(world[..., 1][torch.from_numpy(covered)], torch.full((int(covered.sum()),), -0.5))
    # Image right = world +X; row 0 is the bottom, so rows go up along world +Z.
    centre_row, centre_col = res // 2, res // 2
    assert (world[centre_row, 20:44, 0].diff() > 0).all()
    assert (world[20:44, centre_col, 2].diff() > 0).all()


def test_triangles_behind_camera_and_outside_depth_range_are_skipped(rasterizer):
    good = [[-0.5, -0.5, 0.0, 1.0], [0.5, -0.5, 0.0, 1.0], [0.0, 0.5, 0.0, 1.0]]
    behind = [[-0.5, -0.5, 0.0, 1.0], [0.5, -0.5, 0.0, -1.0], [0.0, 0.5, 0.0, 1.0]]  # one vertex at w < 0
    too_far = [[-0.9, -0.9, 1.5, 1.0], [0.9, -0.9, 1.5, 1.0], [0.0, 0.9, 1.5, 1.0]]  # z/w > 1
    pos_clip = torch.tensor([good + behind + too_far], dtype=torch.float32)
    tri = torch.tensor([[3, 4, 5], [6, 7, 8], [0, 1, 2]], dtype=torch.int32)
    ids = rasterizer.rasterize(pos_clip, tri, (16, 16))[0, ..., 3]
    assert set(ids.unique().tolist()) == {0.0, 3.0}


def test_batched_views_equal_single_renders_and_chunking_is_invisible():
    v_pos, t_pos_idx = _cube()
    cams = cameras_from_angles(torch.tensor([10.0, 30.0, -20.0]), torch.tensor([0.0, 120.0, -60.0]), 2.2, 55.0)
    pos_clip = _to_clip(v_pos, cams.mvp)
    full = TorchRasterizer("cpu").rasterize(pos_clip, t_pos_idx, (20, 28))
    chunked = TorchRasterizer("cpu", max_pairs_per_chunk=37).rasterize(pos_clip, t_pos_idx, (20, 28))
    assert torch.equal(full, chunked)
    for i in range(3):
        single = TorchRasterizer("cpu").rasterize(pos_clip[i:i + 1], t_pos_idx, (20, 28))
        assert torch.equal(single[0], full[i])
    assert (full[..., 3] > 0).float().mean() > 0.2


def test_rasterize_gradient_wrt_positions_matches_finite_differences(rasterizer):
    pos_clip = torch.tensor([[[-0.7, -0.6, 0.1, 1.0], [0.8, -0.5, 0.3, 1.5], [0.1, 0.9, -0.2, 0.8]]],
                            dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    interior = rasterizer.rasterize(pos_clip, tri, (8, 8))[0, ..., 3] > 0
    assert interior.sum() > 10

    def render(pos):
        return rasterizer.rasterize(pos, tri, (8, 8))[0][interior][:, :3]

    assert torch.autograd.gradcheck(render, (pos_clip.requires_grad_(),), eps=1e-6, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# interpolate
# ---------------------------------------------------------------------------------------------------------------------

def test_interpolate_background_zero_batched_attr_and_gradcheck(rasterizer):
    pos_clip, tri = _random_scene(2, num_faces=6)
    pos_clip = pos_clip.expand(2, -1, -1).contiguous()
    rast_out = rasterizer.rasterize(pos_clip, tri, (10, 12))
    attr = torch.randn(2, pos_clip.shape[1], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = rasterizer.interpolate(attr, rast_out, tri)
    assert out.shape == (2, 10, 12, 3)
    background = rast_out[..., 3] == 0
    assert background.any() and (out[background] == 0).all()
    # Manual barycentric combination at covered pixels.
    b, i, j = torch.nonzero(~background, as_tuple=True)
    face = rast_out[b, i, j, 3].long() - 1
    u, v = rast_out[b, i, j, 0].double(), rast_out[b, i, j, 1].double()
    verts = tri.long()[face]
    expected = (u[:, None] * attr[b, verts[:, 0]] + v[:, None] * attr[b, verts[:, 1]]
                + (1 - u - v)[:, None] * attr[b, verts[:, 2]])
    torch.testing.assert_close(out[b, i, j], expected)
    # Unbatched attr broadcasts.
    torch.testing.assert_close(rasterizer.interpolate(attr[0], rast_out, tri)[1][~background[1]],
                               rasterizer.interpolate(attr[:1].expand(2, -1, -1), rast_out, tri)[1][~background[1]])
    assert torch.autograd.gradcheck(lambda a: rasterizer.interpolate(a, rast_out, tri),
                                    (attr.clone().requires_grad_(),))


# ---------------------------------------------------------------------------------------------------------------------
# texture
# ---------------------------------------------------------------------------------------------------------------------

def _texture_4x3() -> torch.Tensor:
    """(1, 4, 3, 2) texture: channel 0 = 10 * row + col, channel 1 = row ** 2 - col."""
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(3.0), indexing="ij")
    return torch.stack([10 * rows + cols, rows ** 2 - cols], dim=-1)[None]


def test_texture_bilinear_matches_hand_computation(rasterizer):
    tex = _texture_4x3()
    t = tex[0]
    # Texel space: column coordinate 1.3 (between cols 1 and 2), row coordinate 2.6 (between rows 2 and 3).
    uv = torch.tensor([[[[(1.3 + 0.5) / 3, (2.6 + 0.5) / 4], [-0.5, 0.0], [0.5 / 3, 0.5 / 4], [1.2, 2.0]]]])
    out = rasterizer.texture(tex, uv, filter_mode="linear")[0, 0]
    expected = (0.7 * 0.4 * t[2, 1] + 0.3 * 0.4 * t[2, 2] + 0.7 * 0.6 * t[3, 1] + 0.3 * 0.6 * t[3, 2])
    torch.testing.assert_close(out[0], expected)
    torch.testing.assert_close(out[1], t[0, 0])  # clamp to edge: outside [0, 1] reads the border texel
    torch.testing.assert_close(out[2], t[0, 0])  # the first texel's centre: uv = (0.5 / Wt, 0.5 / Ht)
    torch.testing.assert_close(out[3], t[3, 2])
    nearest = rasterizer.texture(tex, uv, filter_mode="nearest")[0, 0]
    torch.testing.assert_close(nearest[0], t[3, 1])


def test_texture_gradient_reaches_exactly_the_sampled_texels(rasterizer):
    gen = torch.Generator().manual_seed(0)
    height, width = 8, 8
    tex = torch.rand(1, height, width, 2, generator=gen, requires_grad=True)
    uv = torch.rand(1, 3, 2, 2, generator=gen) * 0.6 + 0.2  # inside, away from the border
    weights = torch.rand(1, 3, 2, 2, generator=gen) + 0.5
    (rasterizer.texture(tex, uv) * weights).sum().backward()

    # Independent expectation: each sample spreads its weight over its 4 neighbouring texels bilinearly.
    expected = np.zeros((height, width, 2))
    for (u, v), wgt in zip(uv.reshape(-1, 2).tolist(), weights.reshape(-1, 2).tolist()):
        cx, cy = u * width - 0.5, v * height - 0.5
        c0, r0 = math.floor(cx), math.floor(cy)
        fx, fy = cx - c0, cy - r0
        for dr, dc, k in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
            expected[r0 + dr, c0 + dc] += k * np.array(wgt)
    grad = tex.grad[0].numpy()
    np.testing.assert_array_equal(grad != 0, expected != 0)
    assert (expected != 0).sum() > 8
    np.testing.assert_allclose(grad, expected, atol=1e-5)

    tex.grad = None
    (rasterizer.texture(tex, uv, filter_mode="nearest") * weights).sum().backward()
    cols = np.floor(uv[0, ..., 0].numpy() * width).astype(int).reshape(-1)
    rows = np.floor(uv[0, ..., 1].numpy() * height).astype(int).reshape(-1)
    expected_mask = np.zeros((height, width), bool)
    expected_mask[rows, cols] = True
    np.testing.assert_array_equal((tex.grad[0] != 0).any(-1).numpy(), expected_mask)


def test_texture_gradcheck_and_batch_broadcast(rasterizer):
    gen = torch.Generator().manual_seed(1)
    tex = torch.rand(1, 3, 4, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    uv = torch.rand(2, 2, 2, 2, dtype=torch.float64, generator=gen) * 1.2 - 0.1
    assert torch.autograd.gradcheck(lambda t: rasterizer.texture(t, uv), (tex,))
    out = rasterizer.texture(tex, uv)
    assert out.shape == (2, 2, 2, 2)
    torch.testing.assert_close(out[1], rasterizer.texture(tex, uv[1:])[0])


def test_render_textured_quad_end_to_end(rasterizer):
    """A screen-filling quad with uv = screen position reproduces the texture (row 0 <-> bottom <-> v = 0)."""
    v_pos = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    pos_clip = torch.cat([v_pos, torch.zeros(4, 1), torch.ones(4, 1)], dim=1)[None]
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    uv = (v_pos + 1) / 2
    tex = torch.rand(1, 8, 8, 3, generator=torch.Generator().manual_seed(2))
    rast_out = rasterizer.rasterize(pos_clip, tri, (8, 8))
    image = rasterizer.texture(tex, rasterizer.interpolate(uv, rast_out, tri))
    torch.testing.assert_close(image, tex, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Interface, errors, selection
# ---------------------------------------------------------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors(rasterizer):
    pos_clip, tri = _random_scene(3, num_faces=2)
    with pytest.raises(ValueError, match="int32"):
        rasterizer.rasterize(pos_clip, tri.long(), (8, 8))
    with pytest.raises(ValueError, match="pos_clip"):
        rasterizer.rasterize(pos_clip[..., :3], tri, (8, 8))
    with pytest.raises(ValueError, match="resolution"):
        rasterizer.rasterize(pos_clip, tri, (0, 8))
    with pytest.raises(ValueError, match="tri indices"):
        rasterizer.rasterize(pos_clip, tri + 100, (8, 8))
    rast_out = rasterizer.rasterize(pos_clip, tri, (8, 8))
    with pytest.raises(ValueError, match="attr"):
        rasterizer.interpolate(torch.zeros(2, 2, pos_clip.shape[1], 3), rast_out, tri)
    with pytest.raises(ValueError, match="filter_mode"):
        rasterizer.texture(torch.zeros(1, 4, 4, 3), torch.zeros(1, 2, 2, 2), filter_mode="cubic")
    with pytest.raises(ValueError, match="batch"):
        rasterizer.texture(torch.zeros(2, 4, 4, 3), torch.zeros(3, 2, 2, 2))


def test_make_rasterizer_on_cpu_is_torch_and_logs(caplog):
    with caplog.at_level(logging.INFO, logger="backend.geometry.render"):
        rasterizer = make_rasterizer("cpu")
    assert isinstance(rasterizer, TorchRasterizer) and isinstance(rasterizer, Rasterizer)
    assert "TorchRasterizer" in caplog.text
    with pytest.raises(RuntimeError, match="CUDA"):
        NvdiffrastRasterizer("cpu")


def _grid_quad(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Screen-filling quad [-1, 1]^2 split into n x n cells of 2 triangles: (1, (n+1)^2, 4) pos_clip, (2 n^2, 3) tri.

    Cell (row r, col c) holds triangle 2 (r n + c) below its diagonal (local y < local x) and 2 (r n + c) + 1 above.
    """
    coords = torch.linspace(-1.0, 1.0, n + 1)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    pos_clip = torch.stack([x, y, 0.1 * x * y, torch.ones_like(x)], dim=-1).reshape(1, -1, 4)
    v00 = (torch.arange(n)[:, None] * (n + 1) + torch.arange(n)[None]).reshape(-1)
    v01, v10 = v00 + 1, v00 + n + 1
    v11 = v10 + 1
    tri = torch.stack([torch.stack([v00, v01, v11], -1), torch.stack([v00, v11, v10], -1)], dim=1).reshape(-1, 3)
    return pos_clip, tri.int()


@pytest.mark.parametrize("n, resolution", [(223, (64, 80)), (70, (1024, 1024))])
def test_large_meshes_render_chunked_and_exact(n, resolution):
    """~100k triangles at 64x80 and ~10k at 1024x1024: every pixel lands in the right cell, memory stays bounded."""
    pos_clip, tri = _grid_quad(n)
    height, width = resolution
    rasterizer = TorchRasterizer("cpu", max_pairs_per_chunk=1 << 18)
    rast_out = rasterizer.rasterize(pos_clip, tri, resolution)
    assert (rast_out[..., 3] > 0).all()
    x, y = _pixel_centres_ndc(height, width)
    ndc = rasterizer.interpolate(pos_clip[0, :, :2], rast_out, tri)[0]
    assert np.abs(ndc.numpy() - np.stack([x, y], -1)).max() < 1e-5  # each pixel's point is its own centre
    if n == 223:  # no pixel centre lies on a cell edge or diagonal here: triangle ids are unambiguous
        cx, cy = (x + 1) / 2 * n, (y + 1) / 2 * n
        col, row = np.floor(cx).astype(np.int64), np.floor(cy).astype(np.int64)
        expected = 2 * (row * n + col) + ((cy - row) > (cx - col))
        np.testing.assert_array_equal(rast_out[0, ..., 3].numpy().astype(np.int64) - 1, expected)


# ---------------------------------------------------------------------------------------------------------------------
# GPU: nvdiffrast parity
# ---------------------------------------------------------------------------------------------------------------------

def _nvdiffrast_or_skip() -> NvdiffrastRasterizer:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    try:
        return NvdiffrastRasterizer("cuda")
    except RuntimeError as exc:
        pytest.skip(f"nvdiffrast unavailable: {exc}")


def _sphere(subdivisions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """UV-free latitude/longitude sphere of radius 0.5: (V, 3) float32, (F, 3) int32."""
    n_lat, n_lon = 8 * subdivisions, 16 * subdivisions
    lat = torch.linspace(0, math.pi, n_lat + 1)[1:-1]
    lon = torch.linspace(0, 2 * math.pi, n_lon + 1)[:-1]
    lat_g, lon_g = torch.meshgrid(lat, lon, indexing="ij")
    ring = torch.stack([lat_g.sin() * lon_g.cos(), lat_g.sin() * lon_g.sin(), lat_g.cos()], -1).reshape(-1, 3)
    v_pos = torch.cat([torch.tensor([[0.0, 0.0, 1.0]]), ring, torch.tensor([[0.0, 0.0, -1.0]])]) * 0.5
    idx = torch.arange(n_lat - 1)[:, None] * n_lon + torch.arange(n_lon)[None] + 1
    nxt = (idx - 1 + 1) % n_lon + (idx - 1) // n_lon * n_lon + 1
    top = torch.stack([torch.zeros(n_lon, dtype=torch.long), idx[0], nxt[0]], -1)
    bottom = torch.stack([torch.full((n_lon,), len(v_pos) - 1), nxt[-1], idx[-1]], -1)
    quads_a = torch.stack([idx[:-1], idx[1:], nxt[1:]], -1).reshape(-1, 3)
    quads_b = torch.stack([idx[:-1], nxt[1:], nxt[:-1]], -1).reshape(-1, 3)
    t_pos_idx = torch.cat([top, quads_a, quads_b, bottom]).int()
    return v_pos, t_pos_idx


@pytest.mark.gpu
def test_torch_and_nvdiffrast_agree():
    nv = _nvdiffrast_or_skip()
    device = torch.device("cuda")
    tr = TorchRasterizer(device)
    v_pos, t_pos_idx = _sphere(3)
    cube_v, cube_t = _cube()
    v_pos = torch.cat([v_pos, cube_v * 0.6 + torch.tensor([0.3, -0.3, 0.2])])  # interpenetrating: depth matters
    t_pos_idx = torch.cat([t_pos_idx, cube_t + len(v_pos) - len(cube_v)]).int()
    cams = cameras_from_angles(torch.tensor([0.0, 30.0, -10.0, 60.0]), torch.tensor([0.0, 90.0, 200.0, -45.0]),
                               torch.tensor([1.5, 1.2, 2.0, 1.3]), torch.tensor([60.0, 45.0, 40.0, 70.0]))
    pos_clip = _to_clip(v_pos, cams.mvp).to(device)
    tri = t_pos_idx.to(device)
    attr = v_pos.to(device)
    for resolution in ((64, 64), (96, 128), (512, 512)):
        rast_nv = nv.rasterize(pos_clip, tri, resolution)
        rast_tr = tr.rasterize(pos_clip, tri, resolution)
        same = rast_nv[..., 3] == rast_tr[..., 3]
        assert same.float().mean() >= 0.99, (resolution, float(same.float().mean()))
        interp_nv = nv.interpolate(attr, rast_nv, tri)
        interp_tr = tr.interpolate(attr, rast_tr, tri)
        torch.testing.assert_close(interp_tr[same], interp_nv[same], atol=2e-4, rtol=0)
        torch.testing.assert_close(rast_tr[same][:, 2], rast_nv[same][:, 2], atol=1e-5, rtol=0)
        # Where the ids differ (pixel centres within nvdiffrast's 1/16-pixel vertex snapping of an edge) the
        # surface point is still nearly the same.
        both = (rast_nv[..., 3] > 0) & (rast_tr[..., 3] > 0)
        distance = (interp_nv - interp_tr).norm(dim=-1)[both]
        assert float(distance.quantile(0.99)) < 1e-3, resolution
    gen = torch.Generator(device="cpu").manual_seed(0)
    tex = torch.rand(2, 16, 24, 3, generator=gen).to(device)
    uv = (torch.rand(2, 32, 32, 2, generator=gen) * 1.4 - 0.2).to(device)
    for filter_mode in ("linear", "nearest"):
        out_nv = nv.texture(tex, uv, filter_mode=filter_mode)
        out_tr = tr.texture(tex, uv, filter_mode=filter_mode)
        close = (out_nv - out_tr).abs().amax(-1) < 1e-4
        assert close.float().mean() >= (0.999 if filter_mode == "linear" else 0.99), filter_mode


@pytest.mark.gpu
def test_torch_and_nvdiffrast_gradients_agree():
    nv = _nvdiffrast_or_skip()
    device = torch.device("cuda")
    tr = TorchRasterizer(device)
    pos_clip = torch.tensor([[[-0.7, -0.6, 0.1, 1.0], [0.8, -0.5, 0.3, 1.5], [0.1, 0.9, -0.2, 0.8]]], device=device)
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32, device=device)
    attr = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.3, 0.3]], device=device)
    tex = torch.rand(1, 8, 8, 3, generator=torch.Generator().manual_seed(0)).to(device)
    resolution = (16, 16)
    # Pixels that both cover (a centre lying exactly on an edge may go either way).
    mask = ((nv.rasterize(pos_clip, tri, resolution)[..., 3] > 0)
            & (tr.rasterize(pos_clip, tri, resolution)[..., 3] > 0)).float()[..., None]
    grads = []
    for rasterizer in (nv, tr):
        pos = pos_clip.clone().requires_grad_()
        v_attr = attr.clone().requires_grad_()
        t = tex.clone().requires_grad_()
        rast_out = rasterizer.rasterize(pos, tri, resolution)
        color = rasterizer.texture(t, rasterizer.interpolate(v_attr, rast_out, tri))
        (color * mask * torch.tensor([1.0, -0.5, 0.25], device=device)).sum().backward()
        grads.append((pos.grad, v_attr.grad, t.grad))
    for name, g_nv, g_tr in zip(("pos_clip", "attr", "tex"), *grads):
        torch.testing.assert_close(g_tr, g_nv, atol=1e-4, rtol=1e-3, msg=name)
