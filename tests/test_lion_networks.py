"""LION's core (backend/lion/) without weights: the released checkpoint layout at full size (meta device), a
reduced-width round trip through a public-style file and our own format, the plain-torch point-voxel operators against
independent references (values and gradients), the samplers on an oracle and with seeds, diffuse-denoise, the mixed
score, the losses, checkpoint errors and bad input.

``tests/data/lion_public_keys.txt`` is the released layout dumped from the public modules themselves
(``models.vae_adain.Model``, ``PriorSEDrop``, ``PVCNN2Prior`` built on the meta device from the released
``config/chair_prior_cfg.yml``, the CUDA extension stubbed out). With the same random weights loaded into both and the
CUDA ops replaced by ours, the public modules and ours gave the same outputs to 3e-6 for all five networks (a one-off
check; the public code is not part of this repository)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from backend.lion import LionLatents, LionModel, get_preset, normalize_points
from backend.lion.checkpoint import (CheckpointError, build_model, check_state_dict, load_checkpoint, load_lion,
                                     load_state_dict_checked, read_public_state_dict, save_checkpoint)
from backend.lion.config import PRESETS, LionConfig
from backend.lion.data import denormalize_points
from backend.lion.diffusion import (Schedule, ddim_sample, ddpm_sample, mixed_eps, ode_decode, ode_encode, q_sample,
                                    timestep_sequence)
from backend.lion.pvcnn import (avg_voxelize, avg_voxelize_reference, ball_query, farthest_point_sample,
                                three_nn_interpolate, trilinear_devoxelize, trilinear_devoxelize_reference,
                                voxel_coordinates)
from backend.models.base import ModelNotFoundError
from backend.params import ParamError

PUBLIC_KEYS = Path(__file__).parent / "data" / "lion_public_keys.txt"
PUBLIC_PARAMETERS = 110_996_847
"""Parameters of the public VAE + both priors (sum over the released layout)."""


def _public_layout() -> dict[str, tuple[int, ...]]:
    out = {}
    for line in PUBLIC_KEYS.read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split()
            out[key] = () if shape == "-" else tuple(int(s) for s in shape.split("x"))
    return out


@pytest.fixture(scope="module")
def tiny() -> LionModel:
    return build_model(get_preset("tiny"), seed=0).eval()


def _cloud(n: int = 128, b: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(b, n, 3, generator=g) * torch.tensor([1.0, 0.5, 0.3])
    return normalize_points(pts)[0]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------------------
# The released layout and checkpoints.
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PRESETS))
def test_full_size_model_has_the_released_keys_and_shapes(name):
    with torch.device("meta"):
        model = LionModel(get_preset(name))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    public = _public_layout()
    assert len(public) == 1329
    assert sorted(set(public) - set(ours)) == [] and sorted(set(ours) - set(public)) == []
    assert {k: s for k, s in ours.items() if public[k] != s} == {}
    assert sum(math.prod(s) for s in ours.values()) == PUBLIC_PARAMETERS
    # spot checks of the public structure: 2048 latent points × (3 + 1), 128-d shape latent, 2048-wide prior
    assert ours["priors.1.classifier.2.weight"] == (4, 128, 1)
    assert ours["priors.0.input_layer.weight"] == (2048, 128, 1, 1)
    assert ours["vae.style_encoder.mlp.weight"] == (256, 64)
    assert ours["vae.encoder.layers.sa_layers.1.0.attn.to_qkv.weight"] == (384, 64, 1, 1)
    fake = {k: torch.empty(s, device="meta") for k, s in public.items()}
    check_state_dict(model, fake)


def _public_style(model: LionModel) -> dict:
    sd = model.state_dict()
    return {"epoch": 7, "global_step": 70,
            "vae_state_dict": {k[len("vae."):]: v.clone() for k, v in sd.items() if k.startswith("vae.")},
            "dae_state_dict": {"module." + k[len("priors."):]: v.clone() for k, v in sd.items()
                               if k.startswith("priors.")}}


def _outputs(model: LionModel) -> list[torch.Tensor]:
    x = _cloud()
    with torch.no_grad():
        lat = model.encode(x, sample=False)
        t = torch.tensor([3.0, 700.0])
        return [lat.z, lat.h, model.decode(lat), model.eps_z(lat.z, t), model.eps_h(lat.h, t, lat.z)]


def test_reduced_width_round_trip_through_a_public_style_file_and_our_format(tiny, tmp_path):
    path = tmp_path / "model.pt"
    torch.save(_public_style(tiny), path)
    fresh = build_model(get_preset("tiny"), seed=1).eval()
    before = _outputs(fresh)
    load_state_dict_checked(fresh, read_public_state_dict(path), str(path))
    want = _outputs(tiny)
    assert any(not torch.allclose(a, b) for a, b in zip(before, want))
    for a, b in zip(_outputs(fresh), want):
        assert torch.equal(a, b)
    save_checkpoint(tmp_path / "ours", tiny, {"step": 5})
    again, meta = load_checkpoint(tmp_path / "ours")
    assert meta == {"step": 5} and again.config == tiny.config
    for a, b in zip(_outputs(again.eval()), want):
        assert torch.equal(a, b)


def test_a_mismatched_checkpoint_names_every_bad_key(tiny, tmp_path):
    public = _public_style(tiny)
    del public["vae_state_dict"]["decoder.layers.classifier.2.weight"]
    public["vae_state_dict"]["decoder.extra.weight"] = torch.zeros(2)
    public["dae_state_dict"]["0.input_layer.weight"] = torch.zeros(3, 3, 1, 1)
    with pytest.raises(CheckpointError) as err:
        load_state_dict_checked(build_model(get_preset("tiny")), read_public_state_dict(public))
    msg = str(err.value)
    assert "1 unexpected key(s): vae.decoder.extra.weight" in msg
    assert "1 missing key(s): vae.decoder.layers.classifier.2.weight" in msg
    assert "priors.0.input_layer.weight: expected [32, 16, 1, 1], found [3, 3, 1, 1]" in msg
    with pytest.raises(CheckpointError, match="needs both vae_state_dict and dae_state_dict"):
        read_public_state_dict({"vae_state_dict": {}})
    with pytest.raises(CheckpointError, match="not a LION checkpoint"):
        read_public_state_dict({"state_dict": {}})
    with pytest.raises(CheckpointError, match="not found"):
        read_public_state_dict(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_public_state_dict(tmp_path / "junk.pt")
    with pytest.raises(ModelNotFoundError, match="junk.pt"):  # a file with another layout: one clear error
        load_lion(str(tmp_path / "junk.pt"), "cpu")


def test_absent_released_models_and_unknown_names_are_model_not_found(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTFORGE_LION_CKPT", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="unconditional/chair/checkpoints/model.pt"):
        load_lion("chair", "cpu")
    with pytest.raises(ModelNotFoundError, match="unknown LION model 'sofa'"):
        load_lion("sofa", "cpu")
    model = load_lion("tiny-random", "cpu")
    assert not model.training and not any(p.requires_grad for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------------------
# Point-voxel operators.
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("r", [1, 4, 8])
def test_voxelize_and_devoxelize_equal_their_references_with_gradients(r):
    g = _gen(r)
    coords = torch.randn(2, 3, 300, generator=g)
    coords[:, :, :4] = coords[:, :, :1]  # several points in one voxel
    vc = voxel_coordinates(coords, r)
    assert vc.min() >= 0 and vc.max() <= r - 1
    feats = torch.randn(2, 5, 300, generator=g, requires_grad=True)
    ours, ref = avg_voxelize(feats, vc, r), avg_voxelize_reference(feats, vc, r)
    assert ours.shape == (2, 5, r, r, r)
    assert torch.allclose(ours, ref, atol=1e-6)
    w = torch.randn(ours.shape, generator=g)
    (ga,) = torch.autograd.grad((ours * w).sum(), feats)
    (gb,) = torch.autograd.grad((ref * w).sum(), feats)
    assert torch.allclose(ga, gb, atol=1e-6)
    grid = torch.randn(2, 5, r, r, r, generator=g, requires_grad=True)
    ours, ref = trilinear_devoxelize(grid, vc, r), trilinear_devoxelize_reference(grid, vc, r)
    assert torch.allclose(ours, ref, atol=1e-5)
    w = torch.randn(ours.shape, generator=g)
    (ga,) = torch.autograd.grad((ours * w).sum(), grid)
    (gb,) = torch.autograd.grad((ref * w).sum(), grid)
    assert torch.allclose(ga, gb, atol=1e-5)


def test_voxelize_averages_points_and_devoxelize_hits_voxel_centres_exactly():
    coords = torch.tensor([[[0.0, 2.0, 2.0, 1.0], [0.0, 0.0, 0.0, 3.0], [0.0, 1.0, 1.0, 2.0]]])
    feats = torch.tensor([[[1.0, 2.0, 4.0, 8.0]]])
    grid = avg_voxelize(feats, coords, 4)
    assert grid[0, 0, 2, 0, 1] == 3.0 and grid[0, 0, 0, 0, 0] == 1.0 and grid[0, 0, 1, 3, 2] == 8.0
    assert grid.sum() == 12.0  # 1 + mean(2, 4) + 8; empty voxels are 0
    assert torch.equal(trilinear_devoxelize(grid, coords, 4), torch.tensor([[[1.0, 3.0, 3.0, 8.0]]]))
    half = trilinear_devoxelize(grid, torch.tensor([[[0.5], [0.0], [0.5]]]), 4)  # between (0,0,0)=1 and (1,0,1)=0
    assert torch.allclose(half, torch.tensor([[[0.25]]]))


def test_sampling_grouping_and_interpolation_follow_the_public_kernels():
    g = _gen(3)
    pts = torch.rand(1, 3, 64, generator=g)
    centers = farthest_point_sample(pts, 8)
    assert torch.equal(centers[:, :, 0], pts[:, :, 0])  # starts at point 0
    d = torch.cdist(centers[0].T, pts[0].T)  # each new centre is the farthest from the ones before
    for i in range(1, 8):
        assert d[:i].min(0).values.argmax() == torch.cdist(centers[0].T[i:i + 1], pts[0].T).argmin()
    idx = ball_query(centers, pts, 0.3, 5)
    for m in range(8):  # the first 5 points in index order within the radius, padded with the first one
        inside = [k for k in range(64) if float(((pts[0, :, k] - centers[0, :, m]) ** 2).sum()) < 0.09][:5]
        assert idx[0, m].tolist() == inside + [inside[0]] * (5 - len(inside))
    feats = torch.randn(1, 2, 8, generator=g)
    out = three_nn_interpolate(centers, centers, feats)  # at a centre: (almost) its own feature
    assert torch.allclose(out, feats, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# The model API.
# ---------------------------------------------------------------------------------------------------------------------

def test_encode_decode_shapes_and_seeds(tiny):
    x = _cloud()
    a = tiny.encode(x, sample=True, generator=_gen(1))
    b = tiny.encode(x, sample=True, generator=_gen(1))
    c = tiny.encode(x, sample=False)
    assert a.z.shape == (2, 16) and a.h.shape == (2, 128, 4) and len(a) == 2
    assert torch.equal(a.z, b.z) and torch.equal(a.h, b.h) and not torch.equal(a.h, c.h)
    # latent points start at the input points: xyz mean = skip_weight * net + x
    assert (c.points - x).abs().mean() < 0.5 * x.abs().mean()
    y = tiny.decode(c)
    assert y.shape == (2, 128, 3) and torch.isfinite(y).all()


def test_normalisation_is_a_per_shape_similarity_with_unit_spread():
    pts = torch.randn(2, 50, 3, generator=_gen(2)) * 3 + torch.tensor([1.0, -2.0, 5.0])
    norm, (centre, scale) = normalize_points(pts)
    assert torch.allclose(norm.mean(1), torch.zeros(2, 3), atol=1e-5)
    assert torch.allclose(norm.reshape(2, -1).std(1, unbiased=False), torch.ones(2), atol=1e-5)
    assert torch.allclose(denormalize_points(norm, centre, scale), pts, atol=1e-5)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_are_reproducible_and_report_progress(tiny, sampler):
    seen = []
    a = tiny.sample(2, steps=4, sampler=sampler, generator=_gen(5), callback=lambda s, n, x: seen.append((s, n)))
    b = tiny.sample(2, steps=4, sampler=sampler, generator=_gen(5))
    c = tiny.sample(2, steps=4, sampler=sampler, generator=_gen(6))
    assert a.z.shape == (2, 16) and a.h.shape == (2, 128, 4)
    assert torch.equal(a.z, b.z) and torch.equal(a.h, b.h) and not torch.equal(a.h, c.h)
    assert seen == [(i, 8) for i in range(1, 9)]


def test_ddim_and_ddpm_take_different_paths_and_a_callback_can_cancel(tiny):
    a = tiny.sample(1, steps=4, sampler="ddpm", generator=_gen(5))
    b = tiny.sample(1, steps=4, sampler="ddim", generator=_gen(5), eta=0.0)
    assert a.h.shape == b.h.shape and not torch.allclose(a.h, b.h, atol=1e-3)

    class Stop(Exception):
        pass

    def stop(step, total, x):
        if step == 2:
            raise Stop

    with pytest.raises(Stop):
        tiny.sample(1, steps=4, generator=_gen(0), callback=stop)


def test_diffuse_denoise_with_small_tau_stays_near_the_input(tiny):
    lat = tiny.encode(_cloud(), sample=False)
    near = tiny.diffuse_denoise(lat, tau=2, generator=_gen(0))
    far = tiny.diffuse_denoise(lat, tau=1000, steps=4, generator=_gen(0))
    d_near = (near.h - lat.h).abs().mean()
    d_far = (far.h - lat.h).abs().mean()
    assert d_near < 0.05 * d_far and d_far > 0.3
    kept = tiny.diffuse_denoise(lat, tau=50, steps=5, sampler="ddim", generator=_gen(0), diffuse_z=False)
    assert torch.equal(kept.z, lat.z) and kept.h.shape == lat.h.shape


def test_to_noise_and_from_noise_are_deterministic_and_keep_shapes(tiny):
    lat = tiny.encode(_cloud(), sample=False)
    seen = []
    noise = tiny.to_noise(lat, steps=3, callback=lambda s, n, x: seen.append((s, n)))
    again = tiny.to_noise(lat, steps=3)
    assert torch.equal(noise.z, again.z) and torch.equal(noise.h, again.h)
    assert noise.h.shape == lat.h.shape and not torch.allclose(noise.h, lat.h)
    assert seen == [(i, 4) for i in range(1, 5)]
    back = tiny.from_noise(noise, steps=3)
    assert back.z.shape == lat.z.shape and back.h.shape == lat.h.shape and torch.isfinite(back.h).all()


def test_the_samplers_recover_what_an_oracle_knows():
    """ε̂ of a point mass at c is exact: (x_t − √ᾱ_t c) / √(1 − ᾱ_t). Every sampler must land on c."""
    schedule = Schedule.linear(1000, 1e-4, 0.02)
    c = torch.tensor([[0.7, -1.2, 0.3]])

    def oracle(x, t):
        ab = schedule.alpha_bar(t)[:, None]
        return (x - ab.sqrt() * c) / (1 - ab).sqrt()

    x_T = torch.randn(4, 3, generator=_gen(0))
    for out in (ddpm_sample(oracle, x_T, schedule, generator=_gen(1)),
                ddpm_sample(oracle, x_T, schedule, steps=20, generator=_gen(1)),
                ddim_sample(oracle, x_T, schedule, steps=10, eta=1.0, generator=_gen(1)),
                ddim_sample(oracle, x_T, schedule, steps=10, eta=0.0)):
        assert torch.allclose(out, c.expand(4, 3), atol=1e-3)
    x_t = q_sample(schedule, c.expand(4, 3), torch.full((4,), 300), x_T)
    assert torch.allclose(ddpm_sample(oracle, x_t, schedule, start=300, generator=_gen(1)), c.expand(4, 3), atol=1e-3)
    # the probability-flow ODE of Gaussian data N(μ, s² I) (exact ε̂) maps x to (x − μ)/s and back; the DDIM
    # discretisation error shrinks with the number of steps (first order)
    mu, sd = 0.5, 0.3

    def gauss(x, t):
        ab = schedule.alpha_bar(t)[:, None]
        return (x - ab.sqrt() * mu) * (1 - ab).sqrt() / (ab * sd ** 2 + 1 - ab)

    data = mu + sd * torch.randn(64, 3, generator=_gen(2))
    errors = []
    for steps in (20, 100):
        noise = ode_encode(gauss, data, schedule, steps=steps)
        errors.append(((noise - (data - mu) / sd).abs().max(), (ode_decode(gauss, noise, schedule, steps) - data
                                                               ).abs().max()))
    assert errors[1][0] < 0.25 and errors[1][1] < 0.15
    assert errors[1][0] < 0.35 * errors[0][0] and errors[1][1] < 0.35 * errors[0][1]


def test_schedule_and_timesteps_are_the_public_ones():
    s = Schedule.linear(1000, 1e-4, 0.02)
    assert math.isclose(float(s.betas[0]), 1e-4, rel_tol=1e-6) and math.isclose(float(s.betas[-1]), 0.02,
                                                                                  rel_tol=1e-6)
    assert math.isclose(float(s.alpha_bars[-1]), 4.0358e-5, rel_tol=1e-3)  # the DDPM linear schedule's ᾱ_T
    seq = timestep_sequence(1000, 200)
    assert len(seq) == 200 and seq[0] == 1000 and seq[-1] == 1 and seq == sorted(seq, reverse=True)
    assert seq[-2] == 1 + 999 // 199  # ⌊i (T − 1)/(S − 1)⌋ + 1, as the public uniform skip
    assert timestep_sequence(1000, 1000) == list(range(1000, 0, -1))


def test_mixed_score_mixes_the_analytic_gaussian_part():
    s = Schedule.linear(1000, 1e-4, 0.02)
    x_t, net = torch.randn(2, 6, generator=_gen(0)), torch.randn(2, 6, generator=_gen(1))
    t = torch.tensor([10.0, 900.0])
    analytic = (1 - s.alpha_bar(t)[:, None]).sqrt() * x_t
    assert torch.equal(mixed_eps(net, x_t, t, s, None), net)
    assert torch.allclose(mixed_eps(net, x_t, t, s, torch.zeros(1, 6)), analytic)
    assert torch.allclose(mixed_eps(net, x_t, t, s, torch.full((1, 6), 0.25)), 0.75 * analytic + 0.25 * net)
    cfg = get_preset("tiny")
    cfg.mixed_prediction = True
    model = build_model(LionConfig(**{**cfg.__dict__}), seed=0).eval()
    assert model.priors[0].mixing_logit.shape == (1, 16, 1, 1)
    assert model.priors[1].mixing_logit.shape == (1, 128 * 4, 1, 1)
    with torch.no_grad():
        model.priors[1].mixing_logit.fill_(-30.0)  # m ≈ 0: the prior is the analytic N(0, I) score
        lat = LionLatents(torch.randn(2, 16, generator=_gen(3)), torch.randn(2, 128, 4, generator=_gen(4)))
        eps = model.eps_h(lat.h, t, lat.z)
    assert torch.allclose(eps, (1 - s.alpha_bar(t)[:, None, None]).sqrt() * lat.h, atol=1e-6)


def test_losses_are_the_elbo_and_the_eps_mse(tiny):
    x = _cloud()
    tiny.train()
    try:
        torch.manual_seed(0)
        full = tiny.vae_loss(x, 0.5, 0.25, generator=_gen(0))
        torch.manual_seed(0)
        recon_only = tiny.vae_loss(x, 0.0, 0.0, generator=_gen(0))
    finally:
        tiny.eval()
    assert set(full) == {"loss", "recon", "kl_z", "kl_h"}
    assert torch.allclose(full["loss"], full["recon"] + 0.5 * full["kl_z"] + 0.25 * full["kl_h"])
    assert torch.allclose(recon_only["loss"], recon_only["recon"]) and full["kl_h"] > full["kl_z"] > 0
    full["loss"].backward()
    assert all(p.grad is not None for p in tiny.vae.parameters() if p.requires_grad)
    assert all(p.grad is None for p in tiny.priors.parameters())
    tiny.zero_grad(set_to_none=True)
    lat = tiny.encode(x, sample=False).detach()
    loss_z = tiny.ddm_loss(lat, "z", generator=_gen(0))
    assert torch.equal(loss_z, tiny.ddm_loss(lat, "z", generator=_gen(0))) and loss_z > 0
    tiny.ddm_loss(lat, "h", generator=_gen(0)).backward()
    assert all(p.grad is None for p in tiny.vae.parameters())
    assert tiny.priors[1].classifier[2].weight.grad.abs().sum() > 0
    tiny.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------------------------------------------------

def test_bad_inputs_are_one_clear_error(tiny):
    lat = tiny.encode(_cloud(), sample=False)
    with pytest.raises(ValueError, match=r"points has shape \(1, 0, 3\)"):
        tiny.encode(torch.zeros(1, 0, 3))
    nan = _cloud()
    nan[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="points contains NaN"):
        tiny.encode(nan)
    with pytest.raises(ValueError, match="points contains NaN"):
        normalize_points(nan)
    with pytest.raises(ValueError, match="zero spread"):
        normalize_points(torch.ones(1, 10, 3))
    with pytest.raises(ValueError, match=r"points must have shape \(B, N, 3\)"):
        tiny.encode(torch.zeros(128, 3))
    with pytest.raises(ValueError, match="need at least 1 cloud of at least 64 points"):
        tiny.encode(torch.randn(1, 10, 3))
    for tau in (0, 1001, 2.5):
        with pytest.raises(ValueError, match="tau = .* must be an integer in 1..1000"):
            tiny.diffuse_denoise(lat, tau=tau)
    with pytest.raises(ValueError, match="steps = 20 must be an integer in 1..10"):
        tiny.diffuse_denoise(lat, tau=10, steps=20)
    with pytest.raises(ValueError, match="sampler = 'euler'"):
        tiny.sample(1, steps=2, sampler="euler")
    with pytest.raises(ValueError, match="num = 0"):
        tiny.sample(0)
    with pytest.raises(ValueError, match=r"latents.h must have shape \(2, N, 4\)"):
        tiny.decode(LionLatents(lat.z, lat.h[..., :3]))
    with pytest.raises(ValueError, match="which = 'x'"):
        tiny.ddm_loss(lat, "x")
    with pytest.raises(ValueError, match="lambda_z"):
        tiny.vae_loss(_cloud(), -1.0, 1.0)
    with pytest.raises(ValueError, match="steps = 1 must be an integer in 2..1000"):
        tiny.to_noise(lat, steps=1)
    with pytest.raises(ParamError, match="first_centers = 1024 exceeds num_points = 100"):
        LionConfig(num_points=100)
    with pytest.raises(ValueError, match="unknown LION preset 'sofa'"):
        get_preset("sofa")
