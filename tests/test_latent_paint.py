"""Latent-Paint with tiny-random Stable Diffusion (plumbing, determinism) and with an oracle denoiser (correctness)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from backend.geometry.cameras import cameras_from_angles
from backend.guidance.oracle import OracleDenoiser
from backend.guidance.sds import ScoreDistillation, SDSConfig
from backend.geometry.mesh import MeshError, TriMesh
from backend.models.cache import ModelCache
from backend.models.stable_diffusion import build_random_stable_diffusion
from backend.params import ParamError, parse_config
from backend.pipelines.base import JobContext
from backend.pipelines import PIPELINES
from backend.pipelines.io import inputs_from_arrays, result_to_arrays
from backend.pipelines.latent_paint import LatentPaintConfig, LatentPaintPipeline, run
from backend.geometry.render import TorchRasterizer

CPU = torch.device("cpu")


def run_job(config, arrays, ctx):
    """``run`` fed with wire arrays, decoded as the service decodes them."""
    return run(config, inputs_from_arrays("latent_paint", PIPELINES["latent_paint"], arrays), ctx)


@pytest.fixture(scope="module")
def sd():
    return build_random_stable_diffusion("tiny-random")


@pytest.fixture(scope="module")
def sphere_inputs():
    m = trimesh.creation.icosphere(subdivisions=2)
    return {"mesh.v_pos": np.asarray(m.vertices, np.float32), "mesh.t_pos_idx": np.asarray(m.faces, np.int32)}


def _config(**kw) -> LatentPaintConfig:
    base = {"prompt": "a rusty metal barrel", "model": "tiny-random", "iterations": 4, "texture_size": 64,
            "latent_texture_size": 32, "render_size": 32, "preview_every": 2, "vae_preview_every": 4}
    return parse_config(LatentPaintConfig, {**base, **kw})


def _context(models=None, **kw) -> JobContext:
    return JobContext(device=CPU, models=models or ModelCache(), **kw)


def test_tiny_random_end_to_end(sphere_inputs):
    previews, progress = [], []
    ctx = _context(on_preview=lambda step, img, dec: previews.append((step, img, dec)),
                   on_progress=lambda *a: progress.append(a))
    result = run_job(_config(), sphere_inputs, ctx)

    arrays = result_to_arrays(result)
    np.testing.assert_array_equal(arrays["mesh.v_pos"], sphere_inputs["mesh.v_pos"])  # caller's vertices untouched
    np.testing.assert_array_equal(arrays["mesh.t_pos_idx"], sphere_inputs["mesh.t_pos_idx"])
    assert arrays["mesh.uv_idx"].shape == sphere_inputs["mesh.t_pos_idx"].shape
    assert np.isfinite(arrays["mesh.uv"]).all() and arrays["mesh.uv"].min() >= 0 and arrays["mesh.uv"].max() <= 1
    assert arrays["texture"].shape == (64, 64, 3) and arrays["texture"].dtype == np.uint8
    assert arrays["texture"].std() > 0
    assert result.metadata["uv_source"] == "xatlas"
    assert [p[0] for p in previews] == [2, 4] and previews[-1][2] == "vae" and previews[0][2] == "linear"
    assert all(img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 for _, img, _ in previews)
    steps = [p[1] for p in progress if p[0] == "optimize"]
    assert steps == [1, 2, 3, 4]
    assert all(np.isfinite(p[3]["sds"]) for p in progress if p[0] == "optimize")


def test_texture_changes_from_its_initial_value(sd, sphere_inputs):
    pipe = LatentPaintPipeline(sd.vae, sd.latent_scaling, TorchRasterizer(CPU), CPU)
    config = _config(iterations=5)
    sds = _tiny_sds(sd, config)
    init = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    result = pipe(TriMesh(sphere_inputs["mesh.v_pos"], sphere_inputs["mesh.t_pos_idx"]), config, sds, initial_texture=init)
    final = result.extras["latent_texture"]
    assert torch.isfinite(final).all()
    changed = (final - init).abs() > 1e-6
    # Adam moves every texel that some render sampled; many texels of a 32x32 atlas are seen in 5 steps.
    assert changed.float().mean() > 0.05
    init_texture = (pipe.decode_latents(init)[0].permute(1, 2, 0).numpy() * 255).round()
    assert np.abs(result_to_arrays(result)["texture"].astype(float) - np.flipud(init_texture)[::4, ::4]).mean() > 0.5


def _tiny_sds(sd, config):
    from backend.guidance.denoiser import StableDiffusionDenoiser

    denoiser = StableDiffusionDenoiser(sd, config.prompt, config.negative_prompt, config.guidance_scale)
    return ScoreDistillation(sd.scheduler.alphas_cumprod, denoiser, SDSConfig(config.guidance_scale))


def test_same_seed_same_texture(sphere_inputs):
    models = ModelCache()
    a = run_job(_config(seed=7), sphere_inputs, _context(models))
    b = run_job(_config(seed=7), sphere_inputs, _context(models))
    c = run_job(_config(seed=8), sphere_inputs, _context(models))
    assert models.loads == 1  # the cache kept the model warm
    np.testing.assert_array_equal(result_to_arrays(a)["texture"], result_to_arrays(b)["texture"])
    torch.testing.assert_close(a.extras["latent_texture"], b.extras["latent_texture"], rtol=0, atol=0)
    assert not torch.equal(a.extras["latent_texture"], c.extras["latent_texture"])


def _psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, peak: float) -> float:
    mse = (((a - b) ** 2) * mask).sum() / (mask.sum() * a.shape[1])
    return float(10 * torch.log10(peak**2 / mse))


def test_oracle_guidance_recovers_reference_texture(sd):
    """Testing without weights: a denoiser that knows each camera's target render must make Latent-Paint recover the texture."""
    mesh_tm = trimesh.creation.icosphere(subdivisions=3)
    mesh = TriMesh(np.asarray(mesh_tm.vertices, np.float32), np.asarray(mesh_tm.faces, np.int32))
    pipe = LatentPaintPipeline(sd.vae, sd.latent_scaling, TorchRasterizer(CPU), CPU)
    mesh, _ = pipe.prepare_mesh(mesh)
    tensors = pipe.mesh_tensors(mesh)
    background = pipe.encode_color((1.0, 1.0, 1.0))

    # Reference latent texture: smooth, distinct patterns per channel, amplitude like SD latents.
    size = 32
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    reference = torch.stack([torch.sin(6 * xx), torch.cos(5 * yy), torch.sin(4 * (xx + yy)), 2 * xx * yy - 0.5])[None]

    def target_fn(cameras):
        with torch.no_grad():
            return pipe.render(reference, tensors, cameras, 32, background)[0]

    config = _config(iterations=250, latent_texture_size=size, batch_size=4, lr=3e-2, preview_every=0,
                     vae_preview_every=0, min_step_percent=0.02, max_step_percent=0.5)
    sds = ScoreDistillation(sd.scheduler.alphas_cumprod, OracleDenoiser(target_fn, sd.scheduler.alphas_cumprod),
                            SDSConfig(config.guidance_scale, config.min_step_percent, config.max_step_percent))
    init = torch.zeros(1, 4, size, size)

    # Held-out evaluation cameras (not the sampled training ones).
    eval_cams = cameras_from_angles(torch.tensor([0.0, 20.0, 10.0, 30.0, -10.0, 40.0]),
                                    torch.tensor([0.0, 60.0, 120.0, 180.0, -60.0, -120.0]), 1.25, 50.0)
    target = target_fn(eval_cams)
    mask = pipe.render(reference, tensors, eval_cams, 32, background)[1]

    def psnr_of(texture):
        with torch.no_grad():
            return _psnr(pipe.render(texture, tensors, eval_cams, 32, background)[0], target, mask, peak=2.0)

    before = psnr_of(init)
    result = pipe(mesh, config, sds, initial_texture=init)
    after = psnr_of(result.extras["latent_texture"])
    print(f"oracle Latent-Paint: render PSNR {before:.1f} dB -> {after:.1f} dB")
    assert after > before + 12.0
    assert after > 25.0


def test_bad_meshes_are_rejected(sphere_inputs):
    v = sphere_inputs["mesh.v_pos"].copy()
    v[5] = np.nan
    with pytest.raises(MeshError, match="NaN"):
        run_job(_config(), {**sphere_inputs, "mesh.v_pos": v}, _context())
    with pytest.raises(MeshError, match="no triangles"):
        run_job(_config(), {**sphere_inputs, "mesh.t_pos_idx": np.zeros((0, 3), np.int32)}, _context())
    flat = np.zeros_like(sphere_inputs["mesh.v_pos"])
    with pytest.raises(MeshError, match="zero size"):
        run_job(_config(), {**sphere_inputs, "mesh.v_pos": flat}, _context())
    with pytest.raises(ParamError, match="needs an input mesh"):
        run_job(_config(), {}, _context())


@pytest.mark.parametrize("params, match", [
    ({"texture_size": 100_000}, "above the maximum"),
    ({"iterations": 0}, "below the minimum"),
    ({"prompt": "  "}, "prompt must not be empty"),
    ({"colour": "red"}, "unknown parameter"),
    ({"seed": 1.5}, "must be an integer"),
    ({"guidance_scale": "high"}, "finite number"),
    ({"elevation_range": [30, 10]}, "min > max"),
    ({"weighting": "magic"}, "not one of"),
])
def test_bad_params_are_rejected(params, match):
    with pytest.raises(ParamError, match=match):
        _config(**params)


def test_unknown_model_id_is_a_clear_error(sphere_inputs, monkeypatch, tmp_path):
    from backend.models.base import ModelNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="python -m backend download nobody/no-such-model"):
        run_job(_config(model="nobody/no-such-model"), sphere_inputs, _context())
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        run_job(_config(model=str(tmp_path / "missing.safetensors")), sphere_inputs, _context())
