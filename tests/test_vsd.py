"""Variational score distillation (ProlificDreamer) and timestep annealing, with tiny-random Stable Diffusion.

Random weights prove mechanisms, not quality: the LoRA learns and the base UNet does not; the adapter is off for
ε_pretrained and on for ε_lora; the camera reaches the LoRA; the gradient is w(t)(ε_pretrained − ε_lora); seeds
reproduce; the adapter is kept and restored; the pipelines run with ``--guidance vsd`` and leave the cached UNet as it
was.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh

from backend.geometry.cameras import cameras_from_angles
from backend.guidance.denoiser import StableDiffusionDenoiser
from backend.guidance.oracle import OracleDenoiser
from backend.guidance.sds import ScoreDistillation, SDSConfig, TimestepSchedule
from backend.guidance.vsd import VariationalScoreDistillation, VSDConfig
from backend.models.cache import ModelCache
from backend.models.stable_diffusion import build_random_stable_diffusion
from backend.params import ParamError, parse_config
from backend.pipelines import PIPELINES
from backend.pipelines.base import JobContext
from backend.pipelines.io import inputs_from_arrays
from backend.pipelines.latent_paint import LatentPaintConfig, run as run_latent_paint
from backend.pipelines.sds_common import build_guidance
from conftest import REPO_ROOT

CPU = torch.device("cpu")
PROMPT = "a rusty metal barrel"


@pytest.fixture(scope="module")
def sd():
    return build_random_stable_diffusion("tiny-random")


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _vsd(sd, view_dependent: bool = True, **kw) -> VariationalScoreDistillation:
    cfg = VSDConfig(**kw)
    denoiser = StableDiffusionDenoiser(sd, PROMPT, "", cfg.guidance_scale, view_dependent_prompts=view_dependent)
    return VariationalScoreDistillation(sd, denoiser, cfg)


def _cameras(*azimuths: float):
    n = len(azimuths)
    return cameras_from_angles([20.0] * n, list(azimuths), [1.3] * n, [50.0] * n)


def _latents(seed: int, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 4, 16, 16, generator=torch.Generator().manual_seed(seed))


def _lora_layer(vsd: VariationalScoreDistillation):
    """One peft LoRA linear layer of the UNet (a cross-attention query projection)."""
    for name, module in vsd.unet.named_modules():
        if name.endswith("attn2.to_q") and hasattr(module, "lora_A"):
            return module
    raise AssertionError("no LoRA layer on the UNet")


# ------------------------------------------------------------------------------------------------- annealing

def test_timestep_bounds_follow_the_annealing_schedule():
    # ProlificDreamer: U(0.02, 0.98) for the first 5000 steps, then U(0.02, 0.5).
    sched = TimestepSchedule(1000, SDSConfig(anneal_start=5000, anneal_max_step_percent=0.5))
    assert sched.bounds(None) == (20, 980) and sched.bounds(1) == (20, 980) and sched.bounds(5000) == (20, 980)
    assert sched.bounds(5001) == (20, 500) and sched.bounds(20000) == (20, 500)
    linear = TimestepSchedule(1000, SDSConfig(anneal_start=100, anneal_max_step_percent=0.5, anneal_steps=100))
    assert linear.bounds(100) == (20, 980) and linear.bounds(150) == (20, 740) and linear.bounds(200) == (20, 500)
    off = TimestepSchedule(1000, SDSConfig(anneal_max_step_percent=0.1))  # anneal_start 0 = off, whatever the step
    assert off.bounds(10**6) == (20, 980)


def test_sampled_timesteps_respect_the_schedule(sd):
    """SDS (through its call contract, with the oracle denoiser) draws t inside the bounds of each step: before the
    annealing step t reaches above 0.5·T, after it never does."""
    alphas = sd.scheduler.alphas_cumprod
    sds = ScoreDistillation(alphas, OracleDenoiser(lambda cams: torch.zeros(len(cams), 4, 8, 8), alphas),
                            SDSConfig(anneal_start=3, anneal_max_step_percent=0.5))
    gen = torch.Generator().manual_seed(0)
    cams = _cameras(*range(0, 360, 6))  # 60 cameras per call
    latents = torch.zeros(len(cams), 4, 8, 8)
    before = torch.cat([sds(latents, cams, gen, step=s).timesteps for s in (1, 2, 3)])
    after = torch.cat([sds(latents, cams, gen, step=s).timesteps for s in (4, 50)])
    assert before.min() >= 20 and before.max() <= 980 and (before > 600).sum() > 30
    assert after.min() >= 20 and after.max() <= 500
    legacy = sds(latents, cams, gen)  # the old call (no step) never anneals
    assert legacy.timesteps.max() > 600


def test_annealing_settings_are_checked():
    with pytest.raises(ParamError, match="anneal_max_step_percent"):
        parse_config(LatentPaintConfig, {"prompt": "x", "anneal_start": 10, "min_step_percent": 0.3,
                                         "anneal_max_step_percent": 0.2})
    with pytest.raises(ParamError, match="guidance"):
        parse_config(LatentPaintConfig, {"prompt": "x", "guidance": "dds"})
    with pytest.raises(ParamError, match="lora_rank"):
        parse_config(LatentPaintConfig, {"prompt": "x", "lora_rank": 0})


# ------------------------------------------------------------------------------------------------- VSD mechanics

def test_lora_learns_and_the_base_unet_stays_bit_identical(sd):
    base_before = _state(sd.unet)
    with _vsd(sd) as vsd:
        lora_before = [p.detach().clone() for p in vsd.lora_parameters]
        camera_before = _state(vsd.camera_embedding)
        gen = torch.Generator().manual_seed(0)
        for step in range(1, 4):
            latents = _latents(step).requires_grad_(True)
            out = vsd(latents, _cameras(30.0 * step), gen, step=step)
            out.loss.backward()
            assert torch.isfinite(latents.grad).all() and latents.grad.abs().sum() > 0
            assert np.isfinite(out.losses["lora"])
        changed = [not torch.equal(a, b) for a, b in zip(lora_before, vsd.lora_parameters)]
        assert sum(changed) == len(changed)  # every LoRA matrix moved (B starts at 0, A random)
        assert any(not torch.equal(camera_before[k], v) for k, v in vsd.camera_embedding.state_dict().items())
        assert all(p.grad is None for p in sd.unet.parameters() if not any(p is q for q in vsd.lora_parameters))
        assert sd.unet.class_embedding is None  # the camera MLP sits in the UNet only inside LoRA forwards
    after = _state(sd.unet)
    assert list(after) == list(base_before)  # the adapter's modules are gone after close
    assert all(torch.equal(after[k], base_before[k]) for k in base_before)
    assert not any("lora" in name for name, _ in sd.unet.named_modules())


def test_adapter_is_off_for_pretrained_and_on_for_lora(sd):
    with _vsd(sd) as vsd:
        layer = _lora_layer(vsd)
        calls = {"base": 0, "lora": 0}
        h1 = layer.base_layer.register_forward_hook(lambda *a: calls.__setitem__("base", calls["base"] + 1))
        h2 = layer.lora_A[vsd.adapter_name].register_forward_hook(lambda *a: calls.__setitem__("lora", calls["lora"] + 1))
        x, t, cams = _latents(0), torch.tensor([500]), _cameras(0.0)
        vsd.predict_pretrained(x, t, cams)
        assert calls == {"base": 1, "lora": 0}  # one CFG forward (uncond + cond batched), adapter off
        vsd.predict_lora(x, t, cams)
        assert calls == {"base": 2, "lora": 1}
        vsd.predict_pretrained(x, t, cams)  # and off again afterwards
        assert calls == {"base": 3, "lora": 1}
        h1.remove()
        h2.remove()


def test_camera_conditioning_changes_the_lora_prediction(sd):
    x, t = _latents(1), torch.tensor([400])
    with _vsd(sd, view_dependent=False) as vsd:  # same text for both cameras: only c2w differs
        front, back = vsd.predict_lora(x, t, _cameras(0.0)), vsd.predict_lora(x, t, _cameras(180.0))
        assert (front - back).abs().max() > 1e-3 * front.abs().max()
        pretrained = [vsd.predict_pretrained(x, t, _cameras(a)) for a in (0.0, 180.0)]
        torch.testing.assert_close(pretrained[0], pretrained[1], rtol=0, atol=0)  # the base UNet ignores cameras
    with _vsd(sd, view_dependent=False, camera_condition=False) as vsd:
        torch.testing.assert_close(vsd.predict_lora(x, t, _cameras(0.0)), vsd.predict_lora(x, t, _cameras(180.0)),
                                   rtol=0, atol=0)


def test_lora_guidance_scale_mixes_the_zero_camera_negative_branch(sd):
    """lora_guidance_scale s ≠ 1: ε_lora = ε(∅, c=0) + s·(ε(y, c) − ε(∅, c=0)), the branch the dropout trains."""
    x, t, cams = _latents(4), torch.tensor([250]), _cameras(120.0)
    with _vsd(sd, lora_guidance_scale=3.0) as vsd:
        cond, uncond = vsd.denoiser.embeddings(cams)
        labels = vsd._camera_labels(cams, CPU)
        with torch.no_grad(), vsd.lora_enabled():
            e_cond = vsd._lora_forward(x, t, cond, labels)
            e_uncond = vsd._lora_forward(x, t, uncond, torch.zeros_like(labels))
        torch.testing.assert_close(vsd.predict_lora(x, t, cams), e_uncond + 3.0 * (e_cond - e_uncond),
                                   rtol=1e-4, atol=1e-5)
        assert (e_cond - e_uncond).abs().max() > 1e-4


def test_gradient_is_weighted_pretrained_minus_lora(sd):
    """∂loss/∂z = w(t)(ε_pretrained − ε_lora) with t and ε drawn as the call draws them and ε_lora from before the
    call's LoRA step."""
    with _vsd(sd, weighting="sds") as vsd:
        gen_expected, gen = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        latents, cams = _latents(2), _cameras(45.0)
        t = vsd.schedule.sample(1, gen_expected, CPU, 1)
        noise = torch.randn(latents.shape, generator=gen_expected)
        a = sd.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        expected = (1 - a) * (vsd.predict_pretrained(noisy, t, cams) - vsd.predict_lora(noisy, t, cams))
        z = latents.clone().requires_grad_(True)
        out = vsd(z, cams, gen, step=1)
        out.loss.backward()
        assert torch.equal(out.timesteps, t)
        torch.testing.assert_close(z.grad, expected, rtol=1e-5, atol=1e-6)


def test_seeded_runs_are_reproducible(sd):
    def one_run(seed):
        with _vsd(sd, seed=seed) as vsd:
            gen = torch.Generator().manual_seed(3)
            outs = []
            for step in range(1, 4):
                z = _latents(step).requires_grad_(True)
                out = vsd(z, _cameras(60.0 * step), gen, step=step)
                out.loss.backward()
                outs.append((float(out.loss.detach()), out.losses["lora"], z.grad.clone()))
            return outs, vsd.adapter_state_dict()

    (a, sa), (b, sb), (_, sc) = one_run(0), one_run(0), one_run(1)
    assert [x[:2] for x in a] == [x[:2] for x in b]
    assert all(torch.equal(x[2], y[2]) for x, y in zip(a, b))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)  # another seed, another LoRA init


def test_adapter_save_and_load(sd, tmp_path):
    x, t, cams = _latents(3), torch.tensor([300]), _cameras(90.0)
    with _vsd(sd, seed=0) as vsd:
        gen = torch.Generator().manual_seed(0)
        for step in range(1, 3):
            vsd(_latents(step).requires_grad_(True), cams, gen, step=step)
        path = vsd.save_adapter(tmp_path / "job" / "vsd_adapter.safetensors")
        trained = vsd.predict_lora(x, t, cams)
    with _vsd(sd, seed=9) as other:
        assert not torch.allclose(other.predict_lora(x, t, cams), trained)
        other.load_adapter(path)
        torch.testing.assert_close(other.predict_lora(x, t, cams), trained, rtol=1e-5, atol=1e-6)
        with pytest.raises(FileNotFoundError):
            other.load_adapter(tmp_path / "missing.safetensors")
    with _vsd(sd, lora_rank=2) as narrow, pytest.raises(ValueError, match="lora_rank"):
        narrow.load_adapter(path)


def test_one_adapter_at_a_time_and_closed_is_closed(sd):
    vsd = _vsd(sd)
    with pytest.raises(ValueError, match="already has an adapter"):
        _vsd(sd)
    vsd.close()
    vsd.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        vsd.predict_lora(_latents(0), torch.tensor([10]), _cameras(0.0))


# ------------------------------------------------------------------------------------------------- pipelines

def _ball_arrays():
    m = trimesh.creation.icosphere(subdivisions=1)
    return {"mesh.v_pos": np.asarray(m.vertices, np.float32), "mesh.t_pos_idx": np.asarray(m.faces, np.int32)}


def test_build_guidance_picks_sds_or_vsd(sd):
    cfg = parse_config(LatentPaintConfig, {"prompt": PROMPT, "model": "tiny-random"})
    with build_guidance(sd, cfg) as g:
        assert isinstance(g, ScoreDistillation) and g.denoiser.guidance_scale == 100.0
    cfg = parse_config(LatentPaintConfig, {"prompt": PROMPT, "model": "tiny-random", "guidance": "vsd",
                                           "lora_rank": 2, "anneal_start": 7})
    with build_guidance(sd, cfg) as g:
        assert isinstance(g, VariationalScoreDistillation)
        assert g.denoiser.guidance_scale == 7.5 and g.config.lora_rank == 2 and g.schedule.bounds(8) == (20, 500)


def test_latent_paint_vsd_job_reports_lora_loss_and_leaves_the_cached_unet_alone():
    models = ModelCache()
    config = parse_config(LatentPaintConfig, {"prompt": PROMPT, "model": "tiny-random", "iterations": 3,
                                              "texture_size": 64, "latent_texture_size": 32, "render_size": 32,
                                              "preview_every": 0, "vae_preview_every": 0, "guidance": "vsd"})
    progress = []
    ctx = JobContext(device=CPU, models=models, on_progress=lambda *a: progress.append(a))
    unet = models.stable_diffusion("tiny-random", CPU).unet
    before = _state(unet)
    result = run_latent_paint(config, inputs_from_arrays("latent_paint", PIPELINES["latent_paint"], _ball_arrays()), ctx)
    assert result.metadata["guidance"] == "vsd"
    optimize = [p[3] for p in progress if p[0] == "optimize"]
    assert len(optimize) == 3 and all(np.isfinite(p["lora"]) and np.isfinite(p["sds"]) for p in optimize)
    after = _state(unet)
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_cli_runs_latent_paint_with_vsd(tmp_path):
    mesh = tmp_path / "ball.obj"
    trimesh.creation.icosphere(subdivisions=1).export(mesh)
    out = tmp_path / "ball.glb"
    env = {"LATENTFORGE_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "backend", "run", "latent_paint", "--model", "tiny-random",
                           "--prompt", PROMPT, "--mesh", str(mesh), "--out", str(out), "--iterations", "3",
                           "--texture-size", "64", "--latent-texture-size", "32", "--render-size", "32",
                           "--guidance", "vsd", "--lora-rank", "2", "--anneal-start", "1", "--no-progress",
                           "--data-dir", str(tmp_path / "store")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.is_file() and out.stat().st_size > 0
    assert (tmp_path / "ball.png").is_file()


def test_latent_nerf_runs_with_vsd_through_both_stages():
    from backend.pipelines.latent_nerf import LatentNeRFConfig, run as run_latent_nerf

    models = ModelCache()
    config = parse_config(LatentNeRFConfig, {"prompt": "a gingerbread house", "model": "tiny-random",
                                             "render_size": 16, "num_samples": 16, "mesh_resolution": 32,
                                             "texture_size": 64, "preview_every": 0, "vae_preview_every": 0,
                                             "iterations": 2, "refine_iterations": 1, "refine_render_size": 64,
                                             "guidance": "vsd", "anneal_start": 1})
    progress = []
    ctx = JobContext(device=CPU, models=models, on_progress=lambda *a: progress.append(a))
    unet = models.stable_diffusion("tiny-random", CPU).unet
    before = _state(unet)
    result = run_latent_nerf(config, inputs_from_arrays("latent_nerf", PIPELINES["latent_nerf"], {}), ctx)
    steps = [p for p in progress if p[0] in ("optimize", "refine_rgb")]
    assert [p[1] for p in steps] == [1, 2, 3] and all(np.isfinite(p[3]["lora"]) for p in steps)
    assert steps[0][3]["t"] >= 20 and all(p[3]["t"] <= 500 for p in steps[1:])  # annealed after step 1
    state = result.extras["guidance_state"]
    assert state and all(v.device.type == "cpu" for v in state.values())
    after = _state(unet)
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_a_cancelled_vsd_job_still_removes_its_adapter():
    """Cancelling mid-run (JobCancelled from progress) leaves the cached UNet as it was, and the next VSD job can
    attach its adapter again."""
    from backend.pipelines.base import JobCancelled

    models = ModelCache()
    config = parse_config(LatentPaintConfig, {"prompt": PROMPT, "model": "tiny-random", "iterations": 5,
                                              "texture_size": 64, "latent_texture_size": 32, "render_size": 16,
                                              "preview_every": 0, "vae_preview_every": 0, "guidance": "vsd"})
    unet = models.stable_diffusion("tiny-random", CPU).unet
    before = _state(unet)
    ctx = JobContext(device=CPU, models=models)
    ctx.on_progress = lambda stage, step, *a: ctx.cancel_event.set() if stage == "optimize" and step == 2 else None
    inputs = inputs_from_arrays("latent_paint", PIPELINES["latent_paint"], _ball_arrays())
    with pytest.raises(JobCancelled):
        run_latent_paint(config, inputs, ctx)
    after = _state(unet)
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert unet.class_embedding is None
    result = run_latent_paint(parse_config(LatentPaintConfig, {**config.__dict__, "iterations": 1}),
                              inputs, JobContext(device=CPU, models=models))
    assert result.extras["guidance_state"]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_lora_step_uses_the_model_s_own_target(sd, prediction_type):
    """The LoRA step's loss is ||out − ε'||² for ε-prediction models and ||out − v'||² (v = √ᾱ ε − √(1−ᾱ) x_0) for
    v-prediction ones, at t', ε' and dropout drawn from the generator; ε_lora converts v to ε."""
    import dataclasses

    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(sd.scheduler.config, prediction_type=prediction_type)
    comps = dataclasses.replace(sd, scheduler=scheduler)
    cfg = VSDConfig(lora_condition_dropout=0.0)
    with VariationalScoreDistillation(comps, StableDiffusionDenoiser(comps, PROMPT, ""), cfg) as vsd:
        x0, cams = _latents(6), _cameras(10.0)
        gen_expected, gen = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
        t = torch.randint(0, 1000, (1,), generator=gen_expected)
        noise = torch.randn(x0.shape, generator=gen_expected)
        a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = noise if prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
        cond, _ = vsd.denoiser.embeddings(cams)
        with torch.no_grad(), vsd.lora_enabled():
            raw = vsd._lora_forward(noisy, t, cond, vsd._camera_labels(cams, CPU))
        eps = vsd.predict_lora(noisy, t, cams)
        expected_eps = raw if prediction_type == "epsilon" else a.sqrt() * raw + (1 - a).sqrt() * noisy
        torch.testing.assert_close(eps, expected_eps, rtol=1e-5, atol=1e-6)
        loss = vsd.train_lora(x0, cams, gen)
        assert loss == pytest.approx(float(((raw - target) ** 2).mean()), rel=1e-5)
