"""Point-E (backend/point_e/, pipeline ``point_e``) without weights: the public checkpoint layout at full size (meta
device), a reduced-width save → load round trip with outputs compared, the attention layout, the Karras sampler
(oracle, guidance, seeds), the upsampler's conditioning, SDF → mesh on an analytic field, the frame, tiny-random end
to end (in process and from the CLI) and bad input.

The expected key lists are written here from the public module structure (``point_e/models/transformer.py``,
``perceiver.py``, ``sdf.py``, ``configs.py``); they were checked once against the public modules instantiated on the
meta device (same key names and shapes for all six presets), and the parameter counts below are those modules'."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from backend.geometry.frames import blender_to_point_e, point_e_to_blender
from backend.geometry.mesh import MeshError
from backend.models.base import ModelNotFoundError
from backend.models.cache import ModelCache
from backend.params import ParamError, parse_config
from backend.pipelines import PIPELINES
from backend.pipelines.base import JobCancelled, JobContext, PipelineInputs
from backend.pipelines.point_e import PointEConfig
from backend.point_e.checkpoint import CheckpointError, check_state_dict, checkpoint_url, detect_preset
from backend.point_e.config import PRESETS, get_preset
from backend.point_e.diffusion import (alphas_cumprod, karras_sample, karras_sigmas, make_denoiser, scale_channels,
                                       sigma_to_timestep, unscale_channels)
from backend.point_e.model import build_net, load_point_e
from blender_addon.core.arrays import srgb_to_linear
from backend.point_e.sdf import nearest_colors, sdf_to_mesh
from backend.point_e.transformer import SelfAttention

CPU = torch.device("cpu")
TINY = {"model": "tiny-random", "num_inference_steps": 4, "upsample_steps": 3, "grid_resolution": 24}


def _ctx(**kw) -> JobContext:
    return JobContext(device=CPU, models=ModelCache(8, False), **kw)


# ---------------------------------------------------------------------------------------------------------------------
# The public checkpoint layout.
# ---------------------------------------------------------------------------------------------------------------------

def _linear(name: str, n_out: int, n_in: int) -> dict[str, tuple]:
    return {f"{name}.weight": (n_out, n_in), f"{name}.bias": (n_out,)}


def _ln(name: str, w: int) -> dict[str, tuple]:
    return {f"{name}.weight": (w,), f"{name}.bias": (w,)}


def _mlp(name: str, w: int) -> dict[str, tuple]:
    return {**_linear(f"{name}.c_fc", 4 * w, w), **_linear(f"{name}.c_proj", w, 4 * w)}


def _blocks(prefix: str, w: int, layers: int, cross: bool = False) -> dict[str, tuple]:
    keys: dict[str, tuple] = {}
    for i in range(layers):
        p = f"{prefix}.resblocks.{i}"
        if cross:
            keys.update({**_linear(f"{p}.attn.c_q", w, w), **_linear(f"{p}.attn.c_kv", 2 * w, w),
                         **_ln(f"{p}.ln_3", w)})
        else:
            keys.update(_linear(f"{p}.attn.c_qkv", 3 * w, w))
        keys.update({**_linear(f"{p}.attn.c_proj", w, w), **_ln(f"{p}.ln_1", w), **_ln(f"{p}.ln_2", w),
                     **_mlp(f"{p}.mlp", w)})
    return keys


def public_layout(name: str) -> dict[str, tuple]:
    """Key → shape of the public state dict of preset ``name`` (CLIP is not in the public files)."""
    if name == "sdf":
        w = 256
        return {**_linear("encoder_input_proj", w, 3), **_blocks("encoder", w, 8),
                **_linear("decoder_input_proj", w, 3), **_blocks("decoder", w, 4, cross=True),
                **_ln("ln_post", w), **_linear("output_proj", 1, w)}
    w, layers = {"base40M-textvec": (512, 12), "base40M": (512, 12), "base300M": (1024, 24), "base1B": (2048, 24),
                 "upsample": (512, 12)}[name]
    keys = {**_mlp("time_embed", w), **_ln("ln_pre", w), **_blocks("backbone", w, layers), **_ln("ln_post", w),
            **_linear("input_proj", w, 6), **_linear("output_proj", 12, w)}
    if name == "base40M-textvec":
        keys.update(_linear("clip_embed", w, 768))
    else:
        keys.update({**_ln("clip_embed.0", 1024), **_linear("clip_embed.1", w, 1024)})
    if name == "upsample":
        keys.update({**_linear("cond_point_proj", w, 6), "channel_scales": (6,), "channel_biases": (6,)})
    return keys


PUBLIC_PARAMETERS = {"base40M-textvec": 40_333_836, "base40M": 40_466_956, "base300M": 311_778_316,
                     "base1B": 1_244_311_564, "upsample": 40_470_540, "sdf": 9_481_985}
"""Parameter counts of the public modules (``model_from_config(MODEL_CONFIGS[name])``), buffers excluded."""
PUBLIC_FILES = {"base40M-textvec": "base_40m_textvec.pt", "base40M": "base_40m.pt", "base300M": "base_300m.pt",
                "base1B": "base_1b.pt", "upsample": "upsample_40m.pt", "sdf": "sdf.pt"}


@pytest.mark.parametrize("name", list(PUBLIC_PARAMETERS))
def test_full_size_modules_have_the_public_keys_and_shapes(name):
    with torch.device("meta"):
        net = build_net(get_preset(name))
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert ours == public_layout(name)
    assert sum(p.numel() for p in net.parameters()) == PUBLIC_PARAMETERS[name]
    assert checkpoint_url(name) == f"https://openaipublic.azureedge.net/main/point-e/{PUBLIC_FILES[name]}"
    fake = {k: torch.empty(s, device="meta") for k, s in public_layout(name).items()}
    check_state_dict(net, fake)  # the public layout passes the loader's check as is
    assert detect_preset(fake).name == name


def test_full_size_upsampler_keeps_the_shapes_of_its_tokens():
    """At full size (meta device): 3,072 new points conditioned on 1,024 coarse ones and 256 CLIP grid tokens."""
    with torch.device("meta"):
        net = build_net(get_preset("upsample"))
        out = net(torch.empty(2, 6, 3072), torch.zeros(2), torch.empty(2, 1024, 256), torch.empty(2, 6, 1024))
    assert tuple(out.shape) == (2, 12, 3072)


def test_a_mismatched_file_names_every_bad_key(tmp_path):
    net = build_net(get_preset("tiny-image_grid"))
    state = dict(net.state_dict())
    del state["ln_post.weight"]
    state["clip_embed.1.weight"] = torch.zeros(5, 5)
    state["extra.bias"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        check_state_dict(net, state, "x.pt")
    text = str(err.value)
    assert "1 unexpected key(s): extra.bias" in text and "1 missing key(s): ln_post.weight" in text
    assert "clip_embed.1.weight: expected [32, 32], found [5, 5]" in text
    path = tmp_path / "broken.pt"
    torch.save({"clip_embed.1.weight": torch.zeros(512, 1024), "ln_post.weight": torch.zeros(512)}, path)
    with pytest.raises(ModelNotFoundError, match="missing key"):
        load_point_e(str(path), CPU)


# ---------------------------------------------------------------------------------------------------------------------
# Reduced width: save under the public names, load back, outputs equal.
# ---------------------------------------------------------------------------------------------------------------------

def _reduced(name: str):
    from dataclasses import replace

    p = get_preset(name)
    if p.sdf is not None:
        return replace(p, sdf=replace(p.sdf, width=32, encoder_layers=2, decoder_layers=1))
    return replace(p, model=replace(p.model, width=32, layers=2, heads=4))


@pytest.mark.parametrize("name", ["base40M-textvec", "base300M", "upsample", "sdf"])
def test_reduced_width_round_trip_through_a_public_style_file(name, tmp_path, monkeypatch):
    preset = _reduced(name)
    torch.manual_seed(1)
    net = build_net(preset).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)  # non-zero everywhere (the public init zeroes output_proj)
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path)  # a bare state dict under the public names, as the public files
    monkeypatch.setattr("backend.point_e.model.detect_preset", lambda state: preset)
    loaded = load_point_e(str(path), CPU).net
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        if preset.sdf is not None:
            cloud, query = torch.rand(2, 3, 50, generator=g) - 0.5, torch.rand(2, 3, 20, generator=g) - 0.5
            a, b = net(query, cloud), loaded(query, cloud)
        else:
            m = preset.model
            x, t = torch.randn(2, 6, m.n_ctx, generator=g), torch.tensor([0, 1000])
            clip = torch.randn(net.condition_shape(2), generator=g)
            low = torch.rand(2, 6, m.cond_ctx, generator=g) * 255 if m.cond_ctx else None
            a, b = net(x, t, clip, low), loaded(x, t, clip, low)
            assert tuple(a.shape) == (2, 12, m.n_ctx) and a.abs().max() > 1e-3
    assert torch.equal(a, b)


def test_attention_reads_c_qkv_per_head_as_q_k_v():
    """The public layout: c_qkv's output viewed (B, T, heads, 3·d) and split into q | k | v per head; weights
    softmax(q·k / √d)."""
    torch.manual_seed(3)
    attn = SelfAttention(16, 4, 0.3)
    x = torch.randn(2, 5, 16)
    qkv = attn.c_qkv(x).view(2, 5, 4, 12)
    q, k, v = qkv[..., :4], qkv[..., 4:8], qkv[..., 8:]
    w = torch.softmax(torch.einsum("bthc,bshc->bhts", q, k) / 2.0, dim=-1)
    ref = attn.c_proj(torch.einsum("bhts,bshc->bthc", w, v).reshape(2, 5, 16))
    assert torch.allclose(attn(x), ref, atol=1e-6)


def test_the_condition_and_the_coarse_points_change_the_output():
    net = load_point_e("tiny-upsample", CPU).net
    g = torch.Generator().manual_seed(4)
    x, t = torch.randn(1, 6, 192, generator=g), torch.tensor([500])
    clip, low = torch.randn(1, 32, 16, generator=g), torch.rand(1, 6, 64, generator=g) * 255
    with torch.no_grad():
        base = net(x, t, clip, low)
        assert (net(x, t, clip, low.roll(1, dims=-1) * 0.5) - base).abs().max() > 1e-4
        assert (net(x, t, torch.zeros_like(clip), low) - base).abs().max() > 1e-4
    with pytest.raises(ValueError, match=r"low_res must be \(B, 6, 64\)"):
        net(x, t, clip, None)


# ---------------------------------------------------------------------------------------------------------------------
# Diffusion and the Karras sampler.
# ---------------------------------------------------------------------------------------------------------------------

def test_schedules_sigmas_and_channel_scaling():
    cos, lin = alphas_cumprod(get_preset("base40M").sampler), alphas_cumprod(get_preset("upsample").sampler)
    assert cos.shape == lin.shape == (1024,) and np.all(np.diff(cos) < 0) and np.all(np.diff(lin) < 0)
    assert abs(lin[0] - (1 - 1e-4 * 1000 / 1024)) < 1e-12
    assert abs(cos[0] - math.cos(1 / 1024 / 1.008 * math.pi / 2 + 0.008 / 1.008 * math.pi / 2) ** 2
               / math.cos(0.008 / 1.008 * math.pi / 2) ** 2) < 1e-9
    s = karras_sigmas(64, 1e-3, 120.0)
    assert s.shape == (65,) and abs(s[0] - 120) < 1e-3 and abs(s[-2] - 1e-3) < 1e-7 and s[-1] == 0
    assert sigma_to_timestep(1e-6, cos) == 0 and sigma_to_timestep(1e6, cos) == 1023
    t = sigma_to_timestep(1.0, cos)  # ᾱ = 0.5 lies between ᾱ_t and ᾱ_{t+1}
    assert cos[t] >= 0.5 > cos[t + 1]
    pts = torch.tensor([[[0.5], [-0.5], [0.0], [255.0], [0.0], [127.5]]])
    assert torch.allclose(scale_channels(pts).flatten(), torch.tensor([1.0, -1.0, 0.0, 1.0, -1.0, 0.0]), atol=1e-6)
    assert torch.allclose(unscale_channels(scale_channels(pts)), pts, atol=1e-4)


def test_the_sampler_recovers_the_points_an_oracle_model_knows():
    """A model that returns the true ε of a known x₀ at every (x_t, t): the sampler must end at x₀ (this checks σ ↔ t,
    the VP input scaling and x̂₀ from ε)."""
    cfg = get_preset("base40M").sampler
    acp = torch.tensor(alphas_cumprod(cfg), dtype=torch.float32)
    x0 = torch.rand(2, 6, 30, generator=torch.Generator().manual_seed(5)) * 1.6 - 0.8

    def oracle(x_vp, t, clip):
        a = acp[t].view(-1, 1, 1)
        eps = (x_vp - a.sqrt() * x0) / (1 - a).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)

    clip = torch.zeros(2, 4)
    out = karras_sample(make_denoiser(oracle, cfg, {"clip": clip}, None, 0.0), (2, 6, 30), cfg,
                        torch.Generator().manual_seed(0), steps=12)
    assert (out - x0).abs().max() < 1e-3


def test_guidance_extrapolates_from_the_unconditional_prediction():
    cfg = get_preset("base40M").sampler
    cond_x0, uncond_x0 = 0.3, 0.1

    def model(x_vp, t, clip):  # predicts ε of x₀ = 0.3 when conditioned (clip = 1), 0.1 when not (clip = 0)
        acp = torch.tensor(alphas_cumprod(cfg), dtype=torch.float32)[t].view(-1, 1, 1)
        target = torch.where(clip.view(-1, 1, 1) > 0, cond_x0, uncond_x0)
        return torch.cat([(x_vp - acp.sqrt() * target) / (1 - acp).sqrt()] * 2, dim=1)

    ones = torch.ones(2, 1)
    den = make_denoiser(model, cfg, {"clip": ones}, {"clip": torch.zeros_like(ones)}, 3.0)
    x0 = den(torch.randn(2, 6, 8) * 10, torch.full((2,), 10.0))
    assert torch.allclose(x0, torch.full_like(x0, uncond_x0 + 3.0 * (cond_x0 - uncond_x0)), atol=1e-4)


def test_samples_are_reproducible_with_a_seed():
    net = load_point_e("tiny-textvec", CPU).net
    cfg = get_preset("tiny-textvec").sampler
    clip = torch.nn.functional.normalize(torch.randn(2, 32, generator=torch.Generator().manual_seed(0)), dim=-1)

    def sample(seed):
        den = make_denoiser(net, cfg, {"clip": clip}, {"clip": torch.zeros_like(clip)}, 3.0)
        return karras_sample(den, (2, 6, 64), cfg, torch.Generator().manual_seed(seed), steps=4)

    torch.manual_seed(123)  # the global RNG plays no part
    a = sample(7)
    torch.manual_seed(456)
    assert torch.equal(a, sample(7))
    assert (a - sample(8)).abs().max() > 1e-2
    unguided = make_denoiser(net, cfg, {"clip": clip}, None, 0.0)
    x = karras_sample(unguided, (2, 6, 64), cfg, torch.Generator().manual_seed(7), steps=4)
    assert x.abs().max() <= 1.0 + 1e-5  # without guidance the last x̂₀ is clipped to [-1, 1]


# ---------------------------------------------------------------------------------------------------------------------
# SDF → mesh, colours, frame.
# ---------------------------------------------------------------------------------------------------------------------

def test_sdf_to_mesh_on_a_sphere_positive_inside():
    out = sdf_to_mesh(lambda q: 0.3 - q.norm(dim=-1), None, grid_resolution=40)
    mesh = trimesh.Trimesh(out.mesh.v_pos, out.mesh.t_pos_idx, process=False)
    r = np.linalg.norm(out.mesh.v_pos, axis=1)
    assert not out.recentred and abs(r.mean() - 0.3) < 0.01 and r.std() < 0.01
    assert mesh.is_watertight and mesh.volume > 0.9 * 4 / 3 * math.pi * 0.3 ** 3  # wound outward
    shifted = sdf_to_mesh(lambda q: 5.0 + 0.3 - q.norm(dim=-1), None, grid_resolution=24)  # one sign: recentred
    assert shifted.recentred and shifted.sdf_range[0] > 0
    with pytest.raises(MeshError):
        sdf_to_mesh(lambda q: torch.ones(len(q)), None, grid_resolution=16)


def test_colours_come_from_the_nearest_points_and_are_made_linear():
    points = np.array([[0, 0, 0], [1, 0, 0]], np.float32)
    colors = np.array([[1, 0, 0], [0, 0, 1]], np.float32)
    got = nearest_colors(np.array([[0.1, 0, 0], [0.9, 0.1, 0]], np.float32), points, colors)
    assert np.array_equal(got, colors)
    lin = srgb_to_linear(np.array([0.0, 0.04045, 128 / 255, 1.0]))
    assert np.allclose(lin, [0.0, 0.04045 / 12.92, 0.2158605, 1.0], atol=1e-6)


def test_point_e_frame_lands_upright_facing_blender_front():
    """A dog in Point-E's frame as the public example cloud has it (``pc_corgi.npz``: body along ±Y, head and snout at
    −Y and high z; ``pc_cube_stack.npz``: the big cube at the lowest z): in Blender it stands upright (+Z up, legs
    lowest) with its head toward the front (−Y, where Blender's front camera looks from)."""
    rng = np.random.default_rng(0)
    body = rng.uniform([-0.15, -0.3, -0.15], [0.15, 0.35, 0.05], (400, 3))
    head = rng.uniform([-0.1, -0.5, 0.05], [0.1, -0.25, 0.35], (150, 3))
    legs = rng.uniform([-0.12, -0.25, -0.4], [0.12, 0.3, -0.15], (100, 3))
    dog = np.concatenate([body, head, legs]).astype(np.float32)
    world = point_e_to_blender(dog)
    assert world.dtype == np.float32 and not np.shares_memory(world, dog)
    top = world[world[:, 2] > np.quantile(world[:, 2], 0.9)]
    assert top[:, 1].mean() < -0.2  # the highest points (the head) are toward −Y: facing Blender's front
    assert world[:, 2].argmin() in range(550, 650)  # the lowest point is a leg: upright (+Z up)
    assert np.array_equal(blender_to_point_e(world), dog)


# ---------------------------------------------------------------------------------------------------------------------
# The pipeline, tiny-random.
# ---------------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def text_result():
    ctx = _ctx()
    events = []
    ctx.on_progress = lambda stage, step, total, losses, eta: events.append((stage, step, total))
    result = PIPELINES["point_e"].run(PointEConfig(prompt="a red chair", num_samples=2, **TINY), PipelineInputs(), ctx)
    return result, events, ctx


def test_tiny_random_text_to_point_clouds_and_meshes(text_result):
    result, events, _ = text_result
    assert len(result.point_clouds) == 2 and len(result.meshes) == 2
    for cloud, mesh in zip(result.point_clouds, result.meshes):
        assert cloud.points.shape == (256, 3) and cloud.points.dtype == np.float32 and np.isfinite(cloud.points).all()
        assert cloud.colors.shape == (256, 3) and cloud.colors.dtype == np.float32
        assert cloud.colors.min() >= 0 and cloud.colors.max() <= 1
        assert len(mesh.mesh.t_pos_idx) > 0 and mesh.v_color.shape == (len(mesh.mesh.v_pos), 3)
    samples, coarse = result.extras["samples"], result.extras["coarse"]
    assert tuple(samples.shape) == (2, 6, 256) and tuple(coarse.shape) == (2, 6, 64)
    assert torch.equal(samples[..., :64], coarse)  # the upsampler keeps the coarse cloud's points
    assert (samples[0] - samples[1]).abs().max() > 1e-3  # samples differ
    assert ("base", 4, 4) in events and ("upsample", 3, 3) in events and ("mesh", 2, 2) in events
    assert [e[1] for e in events if e[0] == "base"] == [1, 2, 3, 4]
    assert result.metadata["model"] == "tiny-textvec" and result.metadata["points"] == 256


def test_same_seed_same_points_and_no_upsample_no_mesh(text_result):
    result, _, ctx = text_result
    again = PIPELINES["point_e"].run(PointEConfig(prompt="a red chair", num_samples=2, **TINY), PipelineInputs(), ctx)
    assert torch.equal(again.extras["samples"], result.extras["samples"])
    small = PIPELINES["point_e"].run(PointEConfig(prompt="a red chair", upsample=False, make_mesh=False, **TINY),
                                     PipelineInputs(), ctx)
    assert small.point_clouds[0].points.shape == (64, 3) and small.meshes == []
    other = PIPELINES["point_e"].run(PointEConfig(prompt="a red chair", seed=1, make_mesh=False, **TINY),
                                     PipelineInputs(), ctx)
    assert not np.array_equal(other.point_clouds[0].points, result.point_clouds[0].points)


def test_tiny_random_image_conditioning_and_cancel(text_result):
    _, _, ctx = text_result
    image = np.random.default_rng(1).integers(0, 256, (40, 60, 4), dtype=np.uint8)
    cfg = PointEConfig(make_mesh=False, **TINY)
    result = PIPELINES["point_e"].run(cfg, PipelineInputs(images={"image": image}), ctx)
    assert result.metadata["model"] == "tiny-image_grid" and result.point_clouds[0].points.shape == (256, 3)
    other = PIPELINES["point_e"].run(cfg, PipelineInputs(images={"image": 255 - image}), ctx)
    assert not np.array_equal(other.point_clouds[0].points, result.point_clouds[0].points)  # the image conditions
    ctx.cancel_event.set()
    try:
        with pytest.raises(JobCancelled):
            PIPELINES["point_e"].run(cfg, PipelineInputs(images={"image": image}), ctx)
    finally:
        ctx.cancel_event.clear()


def test_bad_inputs_are_clear_errors(text_result, tmp_path, monkeypatch):
    _, _, ctx = text_result
    run = PIPELINES["point_e"].run
    with pytest.raises(ParamError, match="needs a prompt or an image"):
        run(PointEConfig(**TINY), PipelineInputs(), ctx)
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ParamError, match="not both"):
        run(PointEConfig(prompt="a chair", **TINY), PipelineInputs(images={"image": image}), ctx)
    with pytest.raises(ValueError, match="1×1 pixels"):
        PIPELINES["point_e"].check_inputs(PointEConfig(**TINY), PipelineInputs(images={"image": image[:1, :1]}))
    with pytest.raises(ParamError, match="num_samples = 1000"):
        parse_config(PointEConfig, {"prompt": "a chair", "num_samples": 1000})
    with pytest.raises(ParamError, match="grid_resolution"):
        parse_config(PointEConfig, {"prompt": "a chair", "grid_resolution": 100000})
    with pytest.raises(ParamError, match="model must not be empty"):
        PointEConfig(prompt="x", model=" ")
    with pytest.raises(ParamError, match="conditioned on text, not on images"):
        run(PointEConfig(**{**TINY, "model": "tiny-textvec", "sdf_model": "tiny-sdf", "upsample_model":
                            "tiny-upsample"}), PipelineInputs(images={"image": image}), ctx)
    monkeypatch.setenv("LATENTFORGE_POINT_E_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelNotFoundError, match=r"python -m backend download base40M-textvec"):
        load_point_e("base40M-textvec", CPU)
    with pytest.raises(ModelNotFoundError, match="unknown Point-E model 'nobody/none'"):
        load_point_e("nobody/none", CPU)


def test_cli_runs_tiny_random_and_refuses_bad_images(tmp_path, capsys):
    from PIL import Image

    from backend.cli import main

    common = ["--model", "tiny-random", "--data-dir", str(tmp_path / "data"), "--device", "cpu",
              "--num-inference-steps", "2", "--upsample-steps", "2", "--grid-resolution", "20"]
    out = tmp_path / "points.glb"
    assert main(["run", "point_e", "--prompt", "a chair", "--num-samples", "2", "--out", str(out), *common]) == 0
    scene = trimesh.load(out)
    assert isinstance(scene, trimesh.Scene) and len(scene.geometry) >= 2
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["run", "point_e", "--image", str(bad), "--out", str(out), *common]) == 2
    assert "could not read image" in capsys.readouterr().err
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1)).save(tiny)
    assert main(["run", "point_e", "--image", str(tiny), "--out", str(out), *common]) == 2
    assert "1×1 pixels" in capsys.readouterr().err
    assert main(["run", "point_e", "--out", str(out), *common]) == 2
    assert "needs a prompt or an image" in capsys.readouterr().err
    assert main(["run", "point_e", "--prompt", "x", "--num-samples", "99", "--out", str(out), *common]) == 2
    assert "--num-samples" in capsys.readouterr().err


def test_presets_match_the_public_sampler_defaults():
    base, up = get_preset("base40M").sampler, get_preset("upsample").sampler
    assert (base.schedule, base.karras_steps, base.sigma_min, base.sigma_max, base.s_churn) == \
        ("cosine", 64, 1e-3, 120.0, 3.0)
    assert (up.schedule, up.karras_steps, up.sigma_max, up.s_churn) == ("linear", 64, 160.0, 0.0)
    assert PointEConfig().guidance_scale == 3.0 and PointEConfig().grid_resolution == 128
    assert set(PRESETS) == set(PUBLIC_FILES)


def test_download_knows_the_point_e_ids(monkeypatch, capsys, tmp_path):
    """``download <id>`` routes Point-E ids to the Point-E fetcher (no network here: the fetcher is replaced)."""
    import backend.cli as cli

    asked = []
    monkeypatch.setattr(cli, "download_point_e", lambda name: asked.append(name) or tmp_path / f"{name}.pt")
    monkeypatch.setattr(cli, "download_stable_diffusion", lambda name: pytest.fail(f"{name} went to Stable Diffusion"))
    for name in PUBLIC_FILES:
        assert cli.main(["download", name]) == 0
    assert asked == list(PUBLIC_FILES) and "sdf.pt" in capsys.readouterr().out

    def offline(name):
        raise OSError("Name or service not known")

    monkeypatch.setattr(cli, "download_point_e", offline)
    assert cli.main(["download", "base1B"]) == 2
    assert "openaipublic.azureedge.net" in capsys.readouterr().err
