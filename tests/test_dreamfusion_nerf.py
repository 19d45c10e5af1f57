"""DreamFusion's options on the NeRF pipeline: space rgb (an RGB albedo field, renders through the VAE encoder), the
shading schedule with normals from the density gradient, the orientation loss and the opacity penalty."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh

from backend.geometry.cameras import cameras_from_angles
from backend.geometry.render import TorchRasterizer
from backend.latent_nerf.field import BackgroundField, NeRFConfig, density_normals
from backend.models.cache import ModelCache
from backend.params import ParamError, parse_config
from backend.pipelines import PIPELINES
from backend.pipelines.base import JobContext
from backend.pipelines.io import inputs_from_arrays, result_to_arrays
from backend.pipelines.latent_nerf import LatentNeRFConfig, LatentNeRFPipeline, run
from backend.pipelines.refine_mesh import RefineMeshPipeline

CPU = torch.device("cpu")


class AnalyticField(torch.nn.Module):
    """An RGB field (as space rgb makes it: 3 sigmoid features) with a given density and a constant albedo."""

    def __init__(self, density_fn, albedo: float = 1.0):
        super().__init__()
        self.config = NeRFConfig(feature_dim=3, encoding="frequency", feature_activation="sigmoid")
        self.density_fn = density_fn
        self.albedo = albedo

    def forward(self, x):
        return self.density_fn(x), torch.full((*x.shape[:-1], 3), self.albedo)

    def density(self, x):
        return self.density_fn(x)


def _ball(radius: float = 0.5, sharpness: float = 200.0, peak: float = 400.0):
    return lambda x: peak * torch.sigmoid((radius - x.norm(dim=-1)) * sharpness)


def _pipeline() -> LatentNeRFPipeline:
    return LatentNeRFPipeline(None, 0.18215, CPU)  # the codec is not used by render()


def test_density_normals_of_a_ball_point_outward():
    points = F.normalize(torch.randn(200, 3, generator=torch.Generator().manual_seed(0)), dim=-1) * 0.5
    n = density_normals(_ball(), points)
    cos = (n * F.normalize(points, dim=-1)).sum(-1)
    assert float(cos.min()) > 0.995
    with pytest.raises(ValueError, match="eps"):
        density_normals(_ball(), points, eps=0.0)


def test_textureless_nerf_shading_matches_the_rasterized_mesh_shading():
    """The same white ball, volume-rendered (density-gradient normals, per-sample shading) and rasterized (vertex
    normals, backend/geometry/shading.py), under the same light: mean |difference| over the ball's pixels < 0.03
    two pixels inside the rim (measured 0.006), and the render is not flat (the light falls off across the ball)."""
    pipe = _pipeline()
    cameras = cameras_from_angles(15.0, 20.0, 2.2, 40.0)
    light = torch.tensor([[1.0, -2.0, 1.5]])
    bg = BackgroundField(3, "constant", torch.ones(3))
    out = pipe.render(AnalyticField(_ball()), bg, cameras, 48, 256, None, shading="textureless", lights=light)
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    raster = RefineMeshPipeline(None, TorchRasterizer(CPU), CPU).render(
        torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces), None, cameras, 48,
        "textureless", light)
    covered = (out["opacity"][0, 0] > 0.99).float()
    inside = F.max_pool2d(1.0 - covered[None, None], 5, stride=1, padding=2)[0, 0] == 0  # 2 pixels off the rim
    assert int(inside.sum()) > 300
    diff = (out["image"][0] - raster[0]).abs().mean(0)[inside]
    print(f"NeRF vs raster textureless ball: mean |diff| {float(diff.mean()):.4f}")
    assert float(diff.mean()) < 0.03
    assert float(out["image"][0, 0][inside].max() - out["image"][0, 0][inside].min()) > 0.3


def test_the_orientation_penalty_is_zero_for_surfaces_facing_the_camera_only():
    """Fog that thickens away from the camera has normals toward it (no penalty); fog that thins away from it has
    normals facing away (a penalty close to its opacity, as max(0, n·d)² ≈ 1 there)."""
    pipe = _pipeline()
    cameras = cameras_from_angles(0.0, 0.0, 3.0, 30.0)  # looks along +Y
    bg = BackgroundField(3, "constant", torch.ones(3))
    toward = AnalyticField(lambda x: 0.8 * (1.0 + x[..., 1]))  # denser farther along +Y
    away = AnalyticField(lambda x: 0.8 * (1.0 - x[..., 1]))  # denser nearer the camera
    o1 = pipe.render(toward, bg, cameras, 8, 64, None, shading="albedo", lights=None, normals=True)
    o2 = pipe.render(away, bg, cameras, 8, 64, None, shading="albedo", lights=None, normals=True)
    assert float(o1["orient"].max()) < 1e-3
    assert float(o2["orient"].mean()) > 0.5 * float(o2["opacity"].mean()) > 0.1


def _config(**kw) -> LatentNeRFConfig:
    base = {"prompt": "a gingerbread house", "model": "tiny-random", "iterations": 2, "space": "rgb",
            "refine_render_size": 64, "num_samples": 8, "mesh_resolution": 32, "texture_size": 64,
            "preview_every": 1, "vae_preview_every": 0, "occupancy_resolution": 16, "encoding": "frequency"}
    return parse_config(LatentNeRFConfig, {**base, **kw})


def test_space_rgb_runs_end_to_end_with_shading_orientation_and_opacity():
    progress, previews = [], []
    ctx = JobContext(device=CPU, models=ModelCache(), on_progress=lambda *a: progress.append(a),
                     on_preview=lambda step, img, dec: previews.append((step, img.shape, dec)))
    config = _config(albedo_probability=0.3, textureless_probability=0.4, lambda_opacity=1e-3)
    result = run(config, inputs_from_arrays("latent_nerf", PIPELINES["latent_nerf"], {}), ctx)
    steps = [p[3] for p in progress if p[0] == "optimize"]
    assert len(steps) == 2
    assert all(np.isfinite(p["sds"]) and np.isfinite(p["orient"]) and np.isfinite(p["opacity"]) for p in steps)
    assert result.extras["nerf"].config.feature_dim == 3 and result.metadata["space"] == "rgb"
    assert [p[0] for p in previews] == [1, 2] and all(p[2] == "linear" for p in previews)
    arrays = result_to_arrays(result)
    assert arrays["texture"].shape == (64, 64, 3)


def test_space_rgb_settings_are_checked():
    with pytest.raises(ParamError, match="must be <= 1"):
        _config(albedo_probability=0.8, textureless_probability=0.5)
    with pytest.raises(ParamError, match="refine_iterations"):
        _config(refine_iterations=5)
    with pytest.raises(ParamError, match="not one of"):
        _config(space="xyz")
