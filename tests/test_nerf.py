"""Tests for backend.latent_nerf (field, volume): the Latent-NeRF field, hash/frequency encodings, rays and volume rendering.

Renders are checked against analytic answers (a hard sphere's silhouette, chord opacity and entry depth) and against
the rasterizer on the same cameras, so a flipped, transposed or shifted image fails.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from backend.geometry.cameras import cameras_from_angles, sample_cameras
from backend.latent_nerf.field import FrequencyEncoding, HashGridEncoding, LatentNeRF, NeRFConfig, trunc_exp
from backend.latent_nerf.volume import density_grid, get_rays, query_features, ray_box_intersection, volume_render
from backend.geometry.render import TorchRasterizer

SMALL = dict(num_levels=4, log2_hashmap_size=12, base_resolution=4, max_resolution=32, mlp_width=16)


def small_nerf(seed: int = 0, **overrides) -> LatentNeRF:
    torch.manual_seed(seed)
    return LatentNeRF(NeRFConfig(**{**SMALL, **overrides}))


class SphereNeRF(LatentNeRF):
    """A field with an analytic answer: density ``inside_density`` in a ball, 0 outside; constant features."""

    def __init__(self, center, radius, inside_density=200.0, features=(1.0, -2.0, 0.5, 3.0)):
        super().__init__(NeRFConfig(**SMALL))
        self.center = torch.tensor(center, dtype=torch.float32)
        self.radius = float(radius)
        self.inside_density = float(inside_density)
        self.features = torch.tensor(features, dtype=torch.float32)

    def forward(self, x):
        inside = ((x - self.center) ** 2).sum(-1) < self.radius ** 2
        density = torch.where(inside, self.inside_density, 0.0) + 0.0 * self.mlp[0].bias.sum()  # keeps a graph
        return density, self.features.expand(*x.shape[:-1], 4)


def analytic_sphere(rays_o, rays_d, center, radius):
    """Per ray: hit mask (distance of the line to the centre < radius) and entry distance (B, H, W)."""
    c = torch.tensor(center, dtype=torch.float32)
    oc = c - rays_o
    t_mid = (oc * rays_d).sum(-1)
    dist2 = (oc * oc).sum(-1) - t_mid ** 2
    hit = (dist2 < radius ** 2) & (t_mid > 0)
    entry = t_mid - torch.sqrt((radius ** 2 - dist2).clamp(min=0))
    return hit, entry, torch.sqrt(dist2.clamp(min=0))


def iou(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float((a & b).sum() / max((a | b).sum(), 1))


# ---- field and encodings ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["hashgrid", "frequency"])
@pytest.mark.parametrize("activation", ["softplus", "trunc_exp"])
def test_field_shapes_finite_and_nonnegative(encoding, activation):
    nerf = small_nerf(encoding=encoding, density_activation=activation)
    x = torch.rand(500, 3) * 2.4 - 1.2  # also outside the box
    density, features = nerf(x)
    assert density.shape == (500,) and features.shape == (500, 4)
    assert torch.isfinite(density).all() and torch.isfinite(features).all()
    assert (density >= 0).all()
    torch.testing.assert_close(nerf.density(x), density)
    d2, f2 = nerf(x.view(5, 100, 3))  # leading dims are kept
    assert d2.shape == (5, 100) and f2.shape == (5, 100, 4)
    torch.testing.assert_close(d2.reshape(-1), density)


def test_density_blob_high_at_origin_and_near_zero_at_the_bound():
    nerf = LatentNeRF()  # the defaults, as the pipeline builds it
    cfg = nerf.config
    surface = math.log(2.0) / 0.2  # density where the Sketch-Shape occupancy 1 - exp(-0.2 density) is 0.5
    corners = torch.tensor([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=torch.float32)
    faces = torch.cat([torch.eye(3), -torch.eye(3)])
    with torch.no_grad():
        origin = float(nerf.density(torch.zeros(1, 3)))
        bound = nerf.density(torch.cat([corners, faces]) * cfg.bound)
    expected_origin = float(torch.nn.functional.softplus(torch.tensor(cfg.blob_density + cfg.density_bias)))
    assert origin > surface and abs(origin - expected_origin) < 0.5
    assert float(bound.max()) < 0.05
    # Blob is radial: equal-norm points along different axes agree (to the tiny hash-grid init noise).
    with torch.no_grad():
        ring = nerf.density(torch.cat([torch.eye(3), -torch.eye(3)]) * 0.3)
    assert float(ring.max() - ring.min()) < 0.05
    assert surface > float(ring.mean()) > float(bound.max())


def test_hash_grid_is_deterministic_for_a_seed():
    a, b, c = small_nerf(seed=3), small_nerf(seed=3), small_nerf(seed=4)
    x = torch.rand(64, 3) * 2 - 1
    torch.testing.assert_close(a.encoder.embeddings, b.encoder.embeddings, rtol=0, atol=0)
    torch.testing.assert_close(a(x)[1], b(x)[1], rtol=0, atol=0)
    assert not torch.equal(a.encoder.embeddings, c.encoder.embeddings)
    assert float(a.encoder.embeddings.detach().abs().max()) <= 1e-4  # Instant-NGP's U(-1e-4, 1e-4) init


def test_dense_level_interpolates_linear_functions_exactly():
    # Trilinear interpolation reproduces a linear function of the vertex coordinates: checks dense indexing order
    # (i + j (N+1) + k (N+1)^2), corner weights and the [-bound, bound] -> vertex mapping at once.
    enc = HashGridEncoding(num_levels=1, features_per_level=3, log2_hashmap_size=12, base_resolution=5,
                           max_resolution=5, bound=2.0)
    n = 5
    ijk = torch.stack(torch.meshgrid(*[torch.arange(n + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)  # i slowest
    flat = ijk[:, 0] + (n + 1) * (ijk[:, 1] + (n + 1) * ijk[:, 2])
    values = torch.empty(flat.shape[0], 3)
    values[flat] = ijk.float() * torch.tensor([1.0, 10.0, 100.0])
    with torch.no_grad():
        enc.embeddings.copy_(values)
    x = torch.rand(200, 3) * 4 - 2
    expected = (x + 2.0) / 4.0 * n * torch.tensor([1.0, 10.0, 100.0])
    torch.testing.assert_close(enc(x), expected, rtol=1e-5, atol=1e-3)


def test_hashed_level_matches_instant_ngp_hash():
    enc = HashGridEncoding(num_levels=1, features_per_level=1, log2_hashmap_size=6, base_resolution=16,
                           max_resolution=16, bound=1.0)  # 17^3 vertices > 64 entries: hashed
    with torch.no_grad():
        enc.embeddings.copy_(torch.arange(64, dtype=torch.float32)[:, None])
    x = torch.tensor([[0.13, -0.71, 0.42]])
    pos = (x[0].double() + 1) / 2 * 16
    cell = pos.floor().long()
    frac = pos - cell
    expected = 0.0
    for c in range(8):
        bits = [(c >> a) & 1 for a in range(3)]
        v = [int(cell[a]) + bits[a] for a in range(3)]
        h = (v[0] * 1) ^ (v[1] * 2654435761) ^ (v[2] * 805459861)
        w = math.prod(float(frac[a]) if bits[a] else 1 - float(frac[a]) for a in range(3))
        expected += w * (h % 64)
    with torch.no_grad():
        assert abs(float(enc(x)[0, 0]) - expected) < 1e-3


def test_frequency_encoding_values():
    enc = FrequencyEncoding(num_frequencies=3, bound=2.0)
    x = torch.tensor([[0.5, -1.0, 2.0]])
    out = enc(x)
    assert out.shape == (1, 3 + 18) and enc.output_dim == 21
    xb = x[0] / 2.0
    torch.testing.assert_close(out[0, :3], xb)
    for k in range(3):
        torch.testing.assert_close(out[0, 3 + 3 * k:6 + 3 * k], torch.sin(2 ** k * math.pi * xb), atol=1e-6, rtol=0)
        torch.testing.assert_close(out[0, 12 + 3 * k:15 + 3 * k], torch.cos(2 ** k * math.pi * xb), atol=1e-6, rtol=0)


def test_param_groups_put_the_encoding_at_ten_times_the_lr():
    nerf = small_nerf()
    groups = nerf.param_groups(1e-3)
    assert [g["name"] for g in groups] == ["encoding", "mlp"]
    assert groups[0]["lr"] == pytest.approx(1e-2) and groups[1]["lr"] == pytest.approx(1e-3)
    assert groups[0]["params"] == [nerf.encoder.embeddings]
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in nerf.parameters())  # every parameter exactly once
    assert small_nerf(encoding="frequency").param_groups(1e-3)[0]["params"] == []
    with pytest.raises(ValueError, match="lr"):
        nerf.param_groups(0.0)


@pytest.mark.parametrize("field, value", [("encoding", "grid"), ("num_levels", 0), ("log2_hashmap_size", 40),
                                          ("bound", -1.0), ("density_activation", "relu"), ("blob_radius", 0.0),
                                          ("max_resolution", 2)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        LatentNeRF(NeRFConfig(**{**SMALL, field: value}))


def test_trunc_exp_clamps_the_gradient():
    x = torch.tensor([0.0, 2.0, 40.0], requires_grad=True)
    y = trunc_exp(x)
    y.sum().backward()
    torch.testing.assert_close(y[:2].detach(), torch.exp(x[:2].detach()))
    torch.testing.assert_close(x.grad, torch.exp(torch.tensor([0.0, 2.0, 15.0])))


# ---- rays and rendering ---------------------------------------------------------------------------------------------

def test_rays_are_unit_and_point_where_mvp_projects():
    cams = sample_cameras(3, torch.Generator().manual_seed(1), elevation_range=(-60, 80))
    height, width = 24, 32
    rays_o, rays_d = get_rays(cams, height, width)
    assert rays_o.shape == rays_d.shape == (3, height, width, 3)
    torch.testing.assert_close(rays_d.norm(dim=-1), torch.ones(3, height, width))
    torch.testing.assert_close(rays_o, cams.camera_positions[:, None, None].expand_as(rays_o))
    points = torch.rand(200, 3) * 1.2 - 0.6
    clip = torch.cat([points, torch.ones(200, 1)], 1) @ cams.mvp.transpose(-1, -2)  # (B, N, 4)
    ndc = clip[..., :2] / clip[..., 3:]
    col = ((ndc[..., 0] + 1) / 2 * width - 0.5).round().long()
    row = ((1 - ndc[..., 1]) / 2 * height - 0.5).round().long()  # row 0 = top of the image
    ok = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    assert ok.float().mean() > 0.5
    b = torch.arange(3)[:, None].expand_as(col)
    to_point = torch.nn.functional.normalize(points[None] - cams.camera_positions[:, None], dim=-1)
    cos = (rays_d[b[ok], row[ok], col[ok]] * to_point[ok]).sum(-1)
    # Each point lies within one pixel's angle of its pixel's ray (square mvp aspect: fovy over the height).
    pixel_angle = float(2 * torch.tan(torch.deg2rad(cams.fovy.max()) / 2)) / height
    assert float(torch.arccos(cos.clamp(max=1)).max()) < pixel_angle
    # ...whereas the vertically flipped pixel misses points off the horizon line.
    flipped = (rays_d[b[ok], height - 1 - row[ok], col[ok]] * to_point[ok]).sum(-1)
    off = (row[ok] - (height - 1 - row[ok])).abs() >= 4
    assert float(torch.arccos(flipped[off].clamp(max=1)).min()) > 2 * pixel_angle


def test_ray_box_intersection():
    o = torch.tensor([[0.0, -3.0, 0.0], [0.0, -3.0, 2.0], [0.2, 0.1, 0.0]])
    d = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    near, far, hit = ray_box_intersection(o, d, 1.0, min_near=0.05)
    assert hit.tolist() == [True, False, True]
    torch.testing.assert_close(near, torch.tensor([2.0, near[1].item(), 0.05]))
    torch.testing.assert_close(far[[0, 2]], torch.tensor([4.0, 0.8]))
    assert float(far[1]) == float(near[1])


def test_render_of_an_analytic_sphere_matches_its_silhouette_opacity_and_depth():
    center, radius = (0.2, -0.1, 0.15), 0.45
    nerf = SphereNeRF(center, radius)
    cams = cameras_from_angles([10.0, 35.0], [20.0, -120.0], [1.4, 1.2], [50.0, 60.0])
    rays_o, rays_d = get_rays(cams, 48, 48)
    background = torch.tensor([0.5, 0.25, -1.0, 2.0])
    out = volume_render(nerf, rays_o, rays_d, num_samples=128, background=background)
    assert out["image"].shape == (2, 4, 48, 48) and out["opacity"].shape == (2, 1, 48, 48)
    assert out["depth"].shape == (2, 1, 48, 48) and out["weights"].shape == (2, 48, 48, 128)
    assert out["points"].shape == (2 * 48 * 48 * 128, 3) and out["density"].shape == (2 * 48 * 48 * 128,)
    out = {key: value.detach() for key, value in out.items()}
    hit, entry, dist = analytic_sphere(rays_o, rays_d, center, radius)
    opacity = out["opacity"][:, 0]
    assert iou(opacity > 0.5, hit) >= 0.95
    deep = dist < 0.8 * radius
    assert float(opacity[deep].min()) > 0.99 and float(opacity[~hit].max()) < 1e-6
    # Colour: the features inside, the background outside.
    image = out["image"].permute(0, 2, 3, 1)
    torch.testing.assert_close(image[deep], nerf.features.expand(int(deep.sum()), 4), atol=1e-2, rtol=0)
    torch.testing.assert_close(image[~hit], background.expand(int((~hit).sum()), 4))
    # Depth: the entry point of the ray into the ball, within a sample spacing.
    spacing = float((out["z_vals"][..., 1] - out["z_vals"][..., 0]).max())
    assert float((out["depth"][:, 0][deep] - entry[deep]).abs().max()) < spacing
    # The returned samples are the ones rendered: density there is the analytic field.
    inside = ((out["points"] - torch.tensor(center)) ** 2).sum(-1) < radius ** 2
    torch.testing.assert_close(out["density"], inside.float() * 200.0)


def test_nerf_silhouette_aligns_with_the_rasterizer():
    # An off-centre sphere: any row/column flip or transposition between the two renderers shows up.
    center, radius = (0.3, 0.1, 0.25), 0.35
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    v = torch.tensor(sphere.vertices + np.array(center), dtype=torch.float32)
    tri = torch.tensor(sphere.faces, dtype=torch.int32)
    cams = cameras_from_angles([15.0, -10.0, 60.0], [0.0, 100.0, -150.0], [1.5, 1.3, 1.4], [55.0, 45.0, 65.0])
    size = 64
    rast = TorchRasterizer("cpu")
    pos_clip = torch.einsum("vi,bji->bvj", torch.cat([v, torch.ones(len(v), 1)], 1), cams.mvp)
    rast_out = rast.rasterize(pos_clip.contiguous(), tri, (size, size))
    mask = (rast_out[..., 3] > 0).flip(1)  # as LatentPaintPipeline.render: upright, row 0 = top
    rays_o, rays_d = get_rays(cams, size, size)
    out = volume_render(SphereNeRF(center, radius), rays_o, rays_d, num_samples=96)
    silhouette = out["opacity"][:, 0].detach() > 0.5
    for b in range(3):
        assert iou(silhouette[b], mask[b]) >= 0.95, b
        assert iou(silhouette[b], mask[b].flip(0)) < 0.8  # the test can tell a flipped image
        assert iou(silhouette[b], mask[b].flip(1)) < 0.8


def test_chunking_does_not_change_the_render():
    nerf = small_nerf(seed=2)
    cams = sample_cameras(2, torch.Generator().manual_seed(5))
    rays_o, rays_d = get_rays(cams, 16, 16)
    a = volume_render(nerf, rays_o, rays_d, 24, perturb=True, generator=torch.Generator().manual_seed(9), chunk=4096)
    b = volume_render(nerf, rays_o, rays_d, 24, perturb=True, generator=torch.Generator().manual_seed(9), chunk=37)
    for key in ("image", "opacity", "depth", "weights", "points", "density"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    c = volume_render(nerf, rays_o, rays_d, 24, perturb=True, generator=torch.Generator().manual_seed(10))
    assert not torch.equal(a["points"], c["points"])  # the jitter follows the generator
    z = a["z_vals"]
    assert (z[..., 1:] >= z[..., :-1]).all()


def test_gradients_reach_the_hash_grid_and_the_mlp():
    nerf = small_nerf(seed=1)
    cams = sample_cameras(1, torch.Generator().manual_seed(0))
    rays_o, rays_d = get_rays(cams, 16, 16)
    out = volume_render(nerf, rays_o, rays_d, 32, perturb=True, generator=torch.Generator().manual_seed(0))
    target = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    ((out["image"] - target) ** 2).mean().backward()
    grad = nerf.encoder.embeddings.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert int((grad.abs().sum(1) > 0).sum()) > 100  # many table rows receive gradient
    for p in nerf.mlp.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and float(p.grad.abs().sum()) > 0


def test_hash_grid_gradient_matches_finite_differences():
    enc = HashGridEncoding(num_levels=3, features_per_level=2, log2_hashmap_size=8, base_resolution=3,
                           max_resolution=20, bound=1.0)
    x = torch.rand(50, 3) * 2 - 1
    proj = torch.randn(enc.output_dim)
    (enc(x) @ proj).sum().backward()
    rows = torch.nonzero(enc.embeddings.grad.abs().sum(1) > 0)[:5, 0]
    for r in rows.tolist():
        for c in range(2):
            with torch.no_grad():
                base = float((enc(x) @ proj).sum())
                enc.embeddings[r, c] += 1e-2
                bumped = float((enc(x) @ proj).sum())
                enc.embeddings[r, c] -= 1e-2
            assert abs((bumped - base) / 1e-2 - float(enc.embeddings.grad[r, c])) < 1e-3


def test_volume_render_rejects_bad_input():
    nerf = small_nerf()
    rays = torch.zeros(1, 4, 4, 3)
    with pytest.raises(ValueError, match="B, H, W, 3"):
        volume_render(nerf, rays[0], rays[0])
    with pytest.raises(ValueError, match="generator"):
        volume_render(nerf, rays, rays, perturb=True)
    with pytest.raises(ValueError, match="background"):
        volume_render(nerf, rays, rays, background=torch.zeros(3))
    with pytest.raises(ValueError, match="num_samples"):
        volume_render(nerf, rays, rays, num_samples=0)
    with pytest.raises(ValueError, match="height and width"):
        get_rays(sample_cameras(1, torch.Generator().manual_seed(0)), 0, 8)


# ---- grids and queries -----------------------------------------------------------------------------------------------

class LinearDensity(LatentNeRF):
    """density = 3 + x + 2 y + 4 z, features = (x, y, z, 1): lets index order be checked exactly."""

    def __init__(self):
        super().__init__(NeRFConfig(**SMALL))

    def forward(self, x):
        density = 3.0 + x[..., 0] + 2.0 * x[..., 1] + 4.0 * x[..., 2]
        return density, torch.cat([x, torch.ones_like(x[..., :1])], -1)


def test_density_grid_index_order_is_xyz():
    grid = density_grid(LinearDensity(), resolution=9, bound=0.5)
    assert grid.shape == (9, 9, 9) and grid.dtype == np.float32
    axis = np.linspace(-0.5, 0.5, 9)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    np.testing.assert_allclose(grid, 3.0 + x + 2 * y + 4 * z, atol=1e-5)


def test_query_features_chunks_and_returns_the_field_features():
    nerf = LinearDensity()
    points = np.random.default_rng(0).uniform(-1, 1, (101, 3)).astype(np.float32)
    out = query_features(nerf, points, chunk=16)
    assert out.shape == (101, 4)
    torch.testing.assert_close(out[:, :3], torch.from_numpy(points))
    with pytest.raises(ValueError, match="N, 3"):
        query_features(nerf, points[:, :2])
