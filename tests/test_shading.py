"""DreamFusion shading (backend/geometry/shading.py) and the silhouette antialiasing of the torch rasterizer.

The Lambertian check is analytic: a sphere rasterized from a mesh, shaded under a known point light, against the
ray–sphere intersection of every pixel's ray (backend/latent_nerf/volume.get_rays, an independent code path) and the
exact cos falloff there.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh

from backend.geometry.cameras import cameras_from_angles
from backend.geometry.frames import bottom_up_to_top_down
from backend.geometry.render import TorchRasterizer, antialias_silhouettes
from backend.geometry.shading import (AMBIENT, DIFFUSE, normal_consistency, rasterize_surface, sample_point_lights,
                                      sample_shading, shade, vertex_normals)
from backend.latent_nerf.volume import get_rays

CPU = torch.device("cpu")
RADIUS = 0.5


def _sphere(subdivisions: int = 4):
    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=RADIUS)
    return torch.tensor(m.vertices, dtype=torch.float32), torch.tensor(m.faces, dtype=torch.int64)


def test_a_lambertian_sphere_matches_the_analytic_cos_falloff():
    """Pixelwise within 0.015 (measured 0.006; the icosphere's facets: interpolated normals of a 5k-face sphere are ~1° off) on every
    pixel at least two pixels inside the analytic disc; the coverage agrees with the disc except on its rim."""
    v_pos, faces = _sphere()
    cameras = cameras_from_angles(20.0, 30.0, 2.0, 40.0)
    light = torch.tensor([[-2.0, -1.0, 0.5]])  # about 90° from the camera: the terminator crosses the view
    size = 96
    surf = rasterize_surface(TorchRasterizer(CPU), v_pos, faces, cameras.mvp, size)
    albedo = torch.ones_like(surf["points"])
    rgb = shade(albedo, surf["normals"], surf["points"], light, "lambertian")
    rendered = bottom_up_to_top_down(rgb[0, ..., 0], 0)  # (H, W), row 0 = top
    covered = bottom_up_to_top_down(surf["mask"][0, ..., 0], 0) > 0

    rays_o, rays_d = get_rays(cameras, size, size)
    o, d = rays_o[0].double(), rays_d[0].double()
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - RADIUS ** 2)
    hit = disc > 0
    t = -b - torch.sqrt(disc.clamp(min=0))
    x = o + t[..., None] * d
    n = x / RADIUS
    to_light = F.normalize(light[0].double() - x, dim=-1)
    expected = AMBIENT + DIFFUSE * (n * to_light).sum(-1).clamp(min=0)

    # Pixels whose ray passes at least 2 pixels (at the sphere's distance) inside the rim.
    pixel = 2.0 * 2.0 * np.tan(np.deg2rad(40.0) / 2) / size
    ray_to_centre = torch.sqrt(((o * o).sum(-1) - b * b).clamp(min=0))
    inner = ray_to_centre < RADIUS - 2 * pixel
    assert int(inner.sum()) > 1500
    err = (rendered.double() - expected).abs()[inner]
    assert float(err.max()) < 0.015, float(err.max())
    print(f"lambertian sphere: max |render - analytic| = {float(err.max()):.4f} over {int(inner.sum())} pixels")
    assert bool(covered[inner].all())
    assert int((covered != hit).sum()) < 0.05 * int(hit.sum())  # only rim pixels may differ
    # the falloff really spans the range: lit side near 1, the terminator at the ambient floor
    assert float(expected[inner].max()) > 0.7 and float(expected[inner].min()) < AMBIENT + 1e-6


def test_modes_albedo_textureless_and_their_errors():
    normals = F.normalize(torch.randn(2, 4, 4, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    points = torch.zeros(2, 4, 4, 3)
    lights = torch.tensor([[0.0, 0.0, 2.0], [0.0, -2.0, 0.0]])
    albedo = torch.rand(2, 4, 4, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(shade(albedo, normals, points, lights, "albedo"), albedo)
    white = shade(albedo, normals, points, lights, "textureless")
    lit = shade(albedo, normals, points, lights, "lambertian")
    torch.testing.assert_close(lit, albedo * white)
    assert float(white.min()) >= AMBIENT - 1e-6 and float(white.max()) <= AMBIENT + DIFFUSE + 1e-6
    with pytest.raises(ValueError, match="shading mode"):
        shade(albedo, normals, points, lights, "phong")
    with pytest.raises(ValueError, match="light_positions"):
        shade(albedo, normals, points, lights[:1], "lambertian")


def test_lights_are_sampled_around_the_camera_reproducibly():
    cams = cameras_from_angles(torch.tensor([0.0, 30.0, -10.0]), torch.tensor([0.0, 90.0, 180.0]), 2.0, 50.0)
    exact = sample_point_lights(cams.camera_positions, torch.Generator().manual_seed(0), (1.2, 1.2), 0.0)
    torch.testing.assert_close(exact, F.normalize(cams.camera_positions, dim=-1) * 1.2)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    many = cams.camera_positions.repeat(400, 1)
    a = sample_point_lights(many, g1)
    torch.testing.assert_close(a, sample_point_lights(many, g2))
    dist = a.norm(dim=-1)
    assert float(dist.min()) >= 0.8 - 1e-5 and float(dist.max()) <= 1.5 + 1e-5
    cos = (F.normalize(a, dim=-1) * F.normalize(many, dim=-1)).sum(-1)
    assert float(cos.mean()) > 0.6  # mostly from the camera's side (std-1 noise around a camera 2 units away)
    with pytest.raises(ValueError, match="distance_range"):
        sample_point_lights(many, g1, (1.5, 0.8))


def test_the_shading_schedule_draws_each_mode_at_its_rate():
    g = torch.Generator().manual_seed(0)
    draws = [sample_shading(g, 0.2, 0.3) for _ in range(2000)]
    rates = {m: draws.count(m) / len(draws) for m in ("albedo", "textureless", "lambertian")}
    assert abs(rates["albedo"] - 0.2) < 0.04 and abs(rates["textureless"] - 0.3) < 0.04
    assert abs(rates["lambertian"] - 0.5) < 0.04
    with pytest.raises(ValueError, match="sum <= 1"):
        sample_shading(g, 0.7, 0.6)


def test_vertex_normals_point_outward_and_normal_consistency_is_zero_on_a_plane():
    v_pos, faces = _sphere(2)
    n = vertex_normals(v_pos, faces)
    assert float((n * F.normalize(v_pos, dim=-1)).sum(-1).min()) > 0.98
    grid = torch.tensor([[x, y, 0.0] for y in range(3) for x in range(3)])
    quads = [(i + 3 * j, i + 1 + 3 * j, i + 4 + 3 * j, i + 3 + 3 * j) for j in range(2) for i in range(2)]
    tri = torch.tensor([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])
    assert float(normal_consistency(grid, tri)) < 1e-6
    bent = grid.clone()
    bent[4, 2] = 0.5
    assert float(normal_consistency(bent, tri)) > 0.01
    assert float(normal_consistency(v_pos, faces)) > 0  # a sphere is curved


def test_silhouette_antialiasing_gives_the_coverage_gradient_of_a_moving_edge():
    """A black square on white: d(total darkness)/d(edge shift) is the edge's length in pixels (one more column
    covered per pixel of shift), within 10 %; without antialiasing that gradient is 0."""
    size = 32
    shift = torch.zeros((), requires_grad=True)
    # NDC square x in [-0.5, 0.3 + shift], y in [-0.5, 0.5], at z = 0, w = 1; counter-clockwise.
    xs = torch.stack([torch.tensor(-0.5), 0.3 + shift, 0.3 + shift, torch.tensor(-0.5)])
    ys = torch.tensor([-0.5, -0.5, 0.5, 0.5])
    pos_clip = torch.stack([xs, ys, torch.zeros(4), torch.ones(4)], dim=-1)[None]
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    raster = TorchRasterizer(CPU)
    rast_out = raster.rasterize(pos_clip, tri, (size, size))
    mask = (rast_out[..., 3:] > 0).float()
    image = torch.zeros(1, size, size, 1) * mask + (1.0 - mask)
    out = antialias_silhouettes(image, rast_out, pos_clip, tri)
    darkness = (1.0 - out).sum()
    (grad,) = torch.autograd.grad(darkness, shift)
    rows = 0.5 * 2 / 2 * size  # the edge spans NDC y in [-0.5, 0.5]: 16 rows
    pixels_per_ndc = size / 2
    assert abs(float(grad) - rows * pixels_per_ndc) < 0.1 * rows * pixels_per_ndc, float(grad)
    # the antialiased darkness is the exact covered area in pixels, up to rounding at the corners
    exact_area = (0.8 * pixels_per_ndc) * rows
    assert abs(float(darkness.detach()) - exact_area) < 0.5 * rows
    plain = (1.0 - image).sum()
    assert not plain.requires_grad
