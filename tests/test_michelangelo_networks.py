"""Michelangelo networks (SITA-VAE, ASLDM denoiser), configs, and loading of the public checkpoints.

The public checkpoints cannot be downloaded here, so :func:`public_key_shapes` writes down the public naming scheme as
facts (from ``michelangelo/models/tsal/sal_perceiver.py``, ``modules/transformer_blocks.py``,
``asl_diffusion/asl_udt.py``, ``modules/diffusion_transformer.py``, ``tsal/clip_asl_module.py``,
``tsal/asl_pl_module.py``, ``asl_diffusion/clip_asl_diffuser_pl_module.py`` of github.com/NeuralCarver/Michelangelo)
for any width: it does not look at our modules. At full size it is checked with meta tensors (no memory), at reduced
width with real tensors written to a Lightning-style ``.ckpt``.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict

import pytest
import torch

from backend.michelangelo.asldm import ASLDMDenoiser, timestep_embedding
from backend.michelangelo.checkpoint import (
    CheckpointError, build_public_models, detect_public_preset, is_our_checkpoint, load_checkpoint,
    load_public_checkpoint, read_state_dict, save_checkpoint,
)
from backend.michelangelo.config import (
    PRESETS, ASLDMConfig, CLIPConditionerConfig, MichelangeloConfig, ShapeVAEConfig, get_preset,
)
from backend.michelangelo.layers import ResidualAttentionBlock
from backend.michelangelo.shape_vae import DiagonalGaussian, FourierEmbedder, ShapeVAE, count_parameters
from backend.params import config_from_dict, config_to_dict

# ---------------------------------------------------------------------------------------------------------------------
# The public naming scheme, as data.
# ---------------------------------------------------------------------------------------------------------------------


def _resblock(prefix: str, w: int, qkv_bias: bool = False) -> dict[str, tuple]:
    """transformer_blocks.ResidualAttentionBlock: attn (MultiheadAttention c_qkv, c_proj), ln_1, mlp, ln_2."""
    keys = {f"{prefix}attn.c_qkv.weight": (3 * w, w), f"{prefix}attn.c_proj.weight": (w, w),
            f"{prefix}attn.c_proj.bias": (w,), f"{prefix}ln_1.weight": (w,), f"{prefix}ln_1.bias": (w,),
            f"{prefix}mlp.c_fc.weight": (4 * w, w), f"{prefix}mlp.c_fc.bias": (4 * w,),
            f"{prefix}mlp.c_proj.weight": (w, 4 * w), f"{prefix}mlp.c_proj.bias": (w,),
            f"{prefix}ln_2.weight": (w,), f"{prefix}ln_2.bias": (w,)}
    if qkv_bias:
        keys[f"{prefix}attn.c_qkv.bias"] = (3 * w,)
    return keys


def _cross_block(prefix: str, w: int, qkv_bias: bool = False) -> dict[str, tuple]:
    """transformer_blocks.ResidualCrossAttentionBlock: attn (c_q, c_kv, c_proj), ln_1, ln_2, mlp, ln_3."""
    keys = {f"{prefix}attn.c_q.weight": (w, w), f"{prefix}attn.c_kv.weight": (2 * w, w),
            f"{prefix}attn.c_proj.weight": (w, w), f"{prefix}attn.c_proj.bias": (w,)}
    for ln in ("ln_1", "ln_2", "ln_3"):
        keys[f"{prefix}{ln}.weight"] = (w,)
        keys[f"{prefix}{ln}.bias"] = (w,)
    keys.update({f"{prefix}mlp.c_fc.weight": (4 * w, w), f"{prefix}mlp.c_fc.bias": (4 * w,),
                 f"{prefix}mlp.c_proj.weight": (w, 4 * w), f"{prefix}mlp.c_proj.bias": (w,)})
    if qkv_bias:
        keys[f"{prefix}attn.c_q.bias"] = (w,)
        keys[f"{prefix}attn.c_kv.bias"] = (2 * w,)
    return keys


def public_vae_keys(prefix: str, v: ShapeVAEConfig) -> dict[str, tuple]:
    """AlignedShapeLatentPerceiver (num_latents + 1 queries) under ``prefix``."""
    w, fourier = v.width, 3 * (2 * v.num_freqs + 1)
    keys = {f"{prefix}encoder.query": (v.num_latents + 1, w),
            f"{prefix}encoder.input_proj.weight": (w, fourier + v.point_feats),
            f"{prefix}encoder.input_proj.bias": (w,)}
    keys.update(_cross_block(f"{prefix}encoder.cross_attn.", w, v.qkv_bias))
    for i in range(v.num_encoder_layers):
        keys.update(_resblock(f"{prefix}encoder.self_attn.resblocks.{i}.", w, v.qkv_bias))
    if v.use_ln_post:
        keys.update({f"{prefix}encoder.ln_post.weight": (w,), f"{prefix}encoder.ln_post.bias": (w,)})
    keys.update({f"{prefix}pre_kl.weight": (2 * v.embed_dim, w), f"{prefix}pre_kl.bias": (2 * v.embed_dim,),
                 f"{prefix}post_kl.weight": (w, v.embed_dim), f"{prefix}post_kl.bias": (w,)})
    for i in range(v.num_decoder_layers):
        keys.update(_resblock(f"{prefix}transformer.resblocks.{i}.", w, v.qkv_bias))
    keys.update({f"{prefix}geo_decoder.query_proj.weight": (w, fourier), f"{prefix}geo_decoder.query_proj.bias": (w,)})
    keys.update(_cross_block(f"{prefix}geo_decoder.cross_attn_decoder.", w, v.qkv_bias))
    keys.update({f"{prefix}geo_decoder.ln_post.weight": (w,), f"{prefix}geo_decoder.ln_post.bias": (w,),
                 f"{prefix}geo_decoder.output_proj.weight": (1, w), f"{prefix}geo_decoder.output_proj.bias": (1,)})
    return keys


def public_denoiser_keys(prefix: str, d: ASLDMConfig) -> dict[str, tuple]:
    """ConditionalASLUDTDenoiser (backbone UNetDiffusionTransformer; qkv_bias False) under ``prefix``."""
    w = d.width
    keys: dict[str, tuple] = {}
    for i in range(d.layers):
        keys.update(_resblock(f"{prefix}backbone.encoder.{i}.", w))
    keys.update(_resblock(f"{prefix}backbone.middle_block.", w))
    for i in range(d.layers):
        keys.update(_resblock(f"{prefix}backbone.decoder.{i}.0.", w))
        keys.update({f"{prefix}backbone.decoder.{i}.1.weight": (w, 2 * w),
                     f"{prefix}backbone.decoder.{i}.1.bias": (w,)})
        if d.skip_ln:
            keys.update({f"{prefix}backbone.decoder.{i}.2.weight": (w,), f"{prefix}backbone.decoder.{i}.2.bias": (w,)})
    keys.update({f"{prefix}ln_post.weight": (w,), f"{prefix}ln_post.bias": (w,),
                 f"{prefix}input_proj.weight": (w, d.input_channels), f"{prefix}input_proj.bias": (w,),
                 f"{prefix}output_proj.weight": (d.output_channels, w),
                 f"{prefix}output_proj.bias": (d.output_channels,),
                 f"{prefix}time_proj.c_fc.weight": (4 * w, w), f"{prefix}time_proj.c_fc.bias": (4 * w,),
                 f"{prefix}time_proj.c_proj.weight": (w, 4 * w), f"{prefix}time_proj.c_proj.bias": (w,),
                 f"{prefix}context_embed.0.weight": (d.context_dim,), f"{prefix}context_embed.0.bias": (d.context_dim,),
                 f"{prefix}context_embed.1.weight": (w, d.context_dim), f"{prefix}context_embed.1.bias": (w,)})
    return keys


def public_key_shapes(cfg: MichelangeloConfig) -> dict[str, tuple]:
    """Every key of the public Lightning ``state_dict`` for this config (CLIP tower: a few representative keys)."""
    if cfg.denoiser is None:  # AlignedShapeAsLatentPLModule: self.model = CLIPAlignedShapeAsLatentModule
        keys = public_vae_keys("model.shape_model.", cfg.vae)
        keys["model.shape_projection"] = (cfg.vae.width, cfg.clip.projection_dim)
        keys["model.clip_model.logit_scale"] = ()
        keys["model.clip_model.text_projection.weight"] = (cfg.clip.projection_dim, cfg.clip.text_width)
        keys["model.clip_model.visual_projection.weight"] = (cfg.clip.projection_dim, cfg.clip.vision_width)
        keys["model.clip_model.vision_model.post_layernorm.weight"] = (cfg.clip.vision_width,)
        return keys
    # ClipASLDiffuser: first_stage_model (clip_model set to None), cond_stage_model (no registered params), model.
    keys = public_vae_keys("first_stage_model.model.shape_model.", cfg.vae)
    keys["first_stage_model.model.shape_projection"] = (cfg.vae.width, cfg.clip.projection_dim)
    keys.update(public_denoiser_keys("model.", cfg.denoiser))
    return keys


def ours_to_public(cfg: MichelangeloConfig, group: str, key: str) -> str:
    """The mapping rule, as the test states it (independently of checkpoint.py)."""
    asldm = cfg.denoiser is not None
    if group == "denoiser":
        return "model." + key
    base = "first_stage_model.model." if asldm else "model."
    if key == "shape_projection":
        return base + "shape_projection"
    if key == "logit_scale":
        return "model.clip_model.logit_scale"
    return base + "shape_model." + key


def reduced(name: str) -> MichelangeloConfig:
    """A public preset at reduced width with all its layer counts (so the key set is exactly the public one)."""
    cfg = get_preset(name)
    vae = dataclasses.replace(cfg.vae, width=16, heads=2, num_latents=6, embed_dim=4, clip_embed_dim=8)
    clip = dataclasses.replace(cfg.clip, text_width=10, vision_width=12, projection_dim=8)
    den = None
    if cfg.denoiser is not None:
        den = dataclasses.replace(cfg.denoiser, width=16, heads=2, n_ctx=6, input_channels=4, output_channels=4,
                                  context_dim=12 if cfg.condition == "image" else 10)
    return dataclasses.replace(cfg, vae=vae, denoiser=den, clip=clip)


class HyperParams:
    """Stands for the OmegaConf objects a Lightning checkpoint pickles in ``hyper_parameters``."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


class AttributeDict(dict):
    """Stands for Lightning's ``AttributeDict`` (a dict subclass: pickled with SETITEMS)."""


class Loud:
    """An object whose unpickling would run code (``__reduce__`` -> print): the loader must not call it."""

    def __reduce__(self):
        return (print, ("this must not be printed by the checkpoint loader",))


def write_lightning_ckpt(path, state: dict[str, torch.Tensor]):
    hparams = AttributeDict(first_stage_config=HyperParams(target="x.Y", params={"width": 768}),
                            ignore_keys=(), scheduler=[Loud(), {1, 2}])
    torch.save({"epoch": 12, "global_step": 345, "pytorch-lightning_version": "1.9.0",
                "state_dict": OrderedDict(state), "hyper_parameters": hparams,
                "optimizer_states": [], "lr_schedulers": []}, path)


def filled_state(cfg: MichelangeloConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k, shape in public_key_shapes(cfg).items()}


# ---------------------------------------------------------------------------------------------------------------------
# Configs.
# ---------------------------------------------------------------------------------------------------------------------

def test_public_presets_hold_the_public_config_values():
    vae = PRESETS["shapevae-256"].vae
    assert (vae.num_latents, vae.embed_dim, vae.width, vae.heads) == (256, 64, 768, 12)
    assert (vae.num_encoder_layers, vae.num_decoder_layers, vae.num_freqs, vae.include_pi) == (8, 16, 8, False)
    assert (vae.point_feats, vae.use_ln_post, vae.init_scale, vae.qkv_bias) == (3, True, 0.25, False)
    assert vae.clip_embed_dim == 768 and vae.fourier_dim == 51
    img, txt = PRESETS["image-ASLDM-256"], PRESETS["text-ASLDM-256"]
    assert (img.condition, img.denoiser.layers, img.denoiser.context_dim) == ("image", 6, 1024)
    assert (txt.condition, txt.denoiser.layers, txt.denoiser.context_dim) == ("text", 8, 768)
    for cfg in (img, txt):
        d = cfg.denoiser
        assert (d.width, d.heads, d.n_ctx, d.input_channels, d.init_scale, d.skip_ln) == (768, 12, 256, 64, 1.0, True)
        assert cfg.vae == vae
        assert (cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end, cfg.beta_schedule) == \
            (1000, 0.00085, 0.012, "scaled_linear")
        assert (cfg.num_inference_steps, cfg.guidance_scale, cfg.z_scale_factor, cfg.bounds) == (50, 7.5, 1.0, 1.1)
    assert img.clip.image_tokens == 257 and txt.clip.text_tokens == 77
    assert img.clip.model_id == "openai/clip-vit-large-patch14"


@pytest.mark.parametrize("make, match", [
    (lambda: ShapeVAEConfig(width=100, heads=12), "divisible by heads=12"),
    (lambda: ShapeVAEConfig(num_latents=0), "num_latents must be a positive int, got 0"),
    (lambda: ShapeVAEConfig(num_freqs=-1), "num_freqs must be an int >= 0, got -1"),
    (lambda: ASLDMConfig(width=772, heads=7), "width=772 must be divisible by heads=7"),
    (lambda: CLIPConditionerConfig(backend="jax"), "backend must be one of"),
    (lambda: MichelangeloConfig(denoiser=ASLDMConfig(context_dim=1024), condition="text"),
     "context_dim=1024 must equal clip.text_width=768"),
    (lambda: MichelangeloConfig(denoiser=ASLDMConfig(n_ctx=128), condition="image"), "n_ctx=128"),
    (lambda: MichelangeloConfig(denoiser=ASLDMConfig(), condition=None), "condition must be one of"),
    (lambda: MichelangeloConfig(vae=ShapeVAEConfig(clip_embed_dim=512)), "clip_embed_dim=512"),
    (lambda: MichelangeloConfig(beta_start=0.1, beta_end=0.01), "beta_start < beta_end"),
    (lambda: get_preset("michelangelo-1024"), "unknown Michelangelo preset"),
    (lambda: config_from_dict(MichelangeloConfig, {"vae": {"widht": 3}}), r"unknown field\(s\) \['widht'\]"),
])
def test_invalid_configs_raise_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_config_round_trips_through_dict():
    for name in PRESETS:
        cfg = get_preset(name)
        assert config_from_dict(MichelangeloConfig, config_to_dict(cfg)) == cfg
    assert get_preset("tiny") is not PRESETS["tiny"]


# ---------------------------------------------------------------------------------------------------------------------
# Parameter counts of the full presets (meta device: nothing allocated).
# ---------------------------------------------------------------------------------------------------------------------

def _closed_form_vae(v: ShapeVAEConfig) -> int:
    w, f = v.width, v.fourier_dim
    block = 12 * w * w + 10 * w                       # c_qkv 3w², c_proj w²+w, mlp 8w²+5w, 2 LN 4w
    cross = 12 * w * w + 12 * w                       # c_q w², c_kv 2w², c_proj w²+w, mlp 8w²+5w, 3 LN 6w
    return ((v.num_encoder_layers + v.num_decoder_layers) * block + 2 * cross + (v.num_latents + 1) * w
            + (f + v.point_feats + 1) * w + 2 * w      # query, input_proj, encoder ln_post
            + (w + 1) * 2 * v.embed_dim + (v.embed_dim + 1) * w   # pre_kl, post_kl
            + (f + 1) * w + 2 * w + (w + 1))           # query_proj, ln_post, output_proj


def _closed_form_denoiser(d: ASLDMConfig) -> int:
    w = d.width
    block = 12 * w * w + 10 * w
    return ((2 * d.layers + 1) * block + d.layers * (2 * w * w + w + 2 * w) + 2 * w
            + (d.input_channels + 1) * w + (w + 1) * d.output_channels
            + 8 * w * w + 5 * w + 2 * d.context_dim + (d.context_dim + 1) * w)


def test_full_size_parameter_counts_on_meta_device():
    counts = {}
    for name in ("shapevae-256", "image-ASLDM-256", "text-ASLDM-256"):
        cfg = PRESETS[name]
        with torch.device("meta"):
            vae = ShapeVAE(cfg.vae)
            den = ASLDMDenoiser(cfg.denoiser) if cfg.denoiser else None
        assert all(p.is_meta for p in vae.parameters())
        shape_model = count_parameters(vae) - vae.shape_projection.numel() - 1
        assert shape_model == _closed_form_vae(cfg.vae)
        public = sum(math.prod(s) for k, s in public_vae_keys("", cfg.vae).items())
        assert shape_model == public
        counts[name] = (shape_model, den and count_parameters(den))
        if den is not None:
            assert counts[name][1] == _closed_form_denoiser(cfg.denoiser)
            assert counts[name][1] == sum(math.prod(s) for s in public_denoiser_keys("", cfg.denoiser).values())
    # Facts derived from the public configs (no official figure is published): SITA-VAE shape model 184.7 M,
    # image ASLDM 104.8 M, text ASLDM 135.3 M parameters.
    assert counts["shapevae-256"][0] == 184_659_585
    assert counts["image-ASLDM-256"][1] == 104_816_448
    assert counts["text-ASLDM-256"][1] == 135_325_504


# ---------------------------------------------------------------------------------------------------------------------
# The networks (tiny preset).
# ---------------------------------------------------------------------------------------------------------------------

def _surface(batch=2, n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    normals = torch.nn.functional.normalize(torch.randn(batch, n, 3, generator=g), dim=-1)
    return 0.8 * normals, normals  # points on a sphere of radius 0.8 with their outward normals


@pytest.fixture(scope="module")
def tiny():
    cfg = get_preset("tiny")
    torch.manual_seed(0)
    return cfg, ShapeVAE(cfg.vae).eval(), ASLDMDenoiser(cfg.denoiser).eval()


def test_fourier_embedding_layout():
    emb = FourierEmbedder(num_freqs=3, include_pi=False)
    x = torch.tensor([[0.5, -1.0, 2.0]])
    out = emb(x)
    assert out.shape == (1, 3 * 7) and emb.out_dim == 21
    f = torch.tensor([1.0, 2.0, 4.0])
    arg = torch.cat([x[0, 0] * f, x[0, 1] * f, x[0, 2] * f])  # coordinate-major, frequency-fastest
    torch.testing.assert_close(out[0], torch.cat([x[0], arg.sin(), arg.cos()]))
    assert torch.allclose(FourierEmbedder(2, include_pi=True).frequencies(), torch.tensor([math.pi, 2 * math.pi]))


def test_attention_block_matches_the_public_formula():
    """Head-major [q|k|v] split of c_qkv and (q·d^-¼)(k·d^-¼) softmax, written out as in transformer_blocks.py."""
    torch.manual_seed(1)
    w, h = 12, 3
    block = ResidualAttentionBlock(w, h, qkv_bias=False, init_std=0.3)
    x = torch.randn(2, 5, w)
    b, t, _ = x.shape
    qkv = block.attn.c_qkv(block.ln_1(x)).view(b, t, h, -1)
    ch = w // h
    q, k, v = torch.split(qkv, ch, dim=-1)
    s = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.softmax(torch.einsum("bthc,bshc->bhts", q * s, k * s), dim=-1)
    attn = block.attn.c_proj(torch.einsum("bhts,bshc->bthc", weight, v).reshape(b, t, -1))
    y = x + attn
    y = y + block.mlp.c_proj(torch.nn.functional.gelu(block.mlp.c_fc(block.ln_2(y))))
    torch.testing.assert_close(block(x), y, atol=1e-5, rtol=1e-5)


def test_shape_vae_shapes_dtypes_and_finite(tiny):
    cfg, vae, _ = tiny
    pc, normals = _surface()
    queries = torch.rand(2, 70, 3) * 2.2 - 1.1
    with torch.no_grad():
        shape_embed, latents, posterior = vae.encode(pc, normals)
        tokens = vae.decode(latents)
        logits = vae.query(tokens, queries)
        projected = vae.project_shape_embed(shape_embed)
        logits2, posterior2, embed2 = vae(pc, normals, queries, sample_posterior=False)
    v = cfg.vae
    assert shape_embed.shape == (2, v.width) and latents.shape == (2, v.num_latents, v.embed_dim)
    assert tokens.shape == (2, v.num_latents, v.width) and logits.shape == (2, 70) and logits.dtype == torch.float32
    assert projected.shape == (2, v.clip_embed_dim) and posterior.kl().shape == (2,)
    assert logits2.shape == (2, 70) and embed2.shape == shape_embed.shape
    for t in (shape_embed, latents, tokens, logits, projected, logits2):
        assert torch.isfinite(t).all()
    assert vae.logit_scale.shape == () and math.isclose(vae.logit_scale.item(), math.log(100.0), rel_tol=1e-6)
    # The encoder is a set function of the points (perceiver cross-attention, no positional code).
    perm = torch.randperm(pc.shape[1])
    with torch.no_grad():
        e2, l2, _ = vae.encode(pc[:, perm], normals[:, perm], sample_posterior=False)
        e1, l1, _ = vae.encode(pc, normals, sample_posterior=False)
    torch.testing.assert_close(l2, l1, atol=1e-5, rtol=1e-4)
    # bf16 weights still return float32 logits.
    vb = ShapeVAE(cfg.vae).to(torch.bfloat16)
    with torch.no_grad():
        out = vb.query(vb.decode(vb.encode(pc, normals)[1]), queries)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_seeded_construction_and_sampling_are_deterministic(tiny):
    cfg, _, _ = tiny
    pc, normals = _surface()
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        vae = ShapeVAE(cfg.vae)
        den = ASLDMDenoiser(cfg.denoiser)
        with torch.no_grad():
            _, z, _ = vae.encode(pc, normals, generator=torch.Generator().manual_seed(7))
            eps = den(z, torch.tensor([10, 500]), torch.ones(2, 77, cfg.denoiser.context_dim))
        runs.append((z, eps))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    with torch.no_grad():
        _, z_other, _ = vae.encode(pc, normals, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(z_other, runs[0][0])


def test_posterior_and_kl():
    b, n, c = 3, 5, 4
    zero = DiagonalGaussian(torch.zeros(b, n, 2 * c))
    torch.testing.assert_close(zero.kl(), torch.zeros(b))
    g = torch.Generator().manual_seed(0)
    moments = torch.randn(b, n, 2 * c, generator=g)
    post = DiagonalGaussian(moments)
    mean, logvar = moments[..., :c], moments[..., c:]
    expected = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).mean(dim=(1, 2))
    torch.testing.assert_close(post.kl(), expected)
    assert (post.kl() > 0).all()
    assert torch.equal(post.mode(), mean)
    big = DiagonalGaussian(torch.full((1, 1, 2), 100.0))
    assert big.logvar.item() == 20.0  # clamped like the public distribution
    # Samples follow N(mean, exp(logvar)).
    wide = DiagonalGaussian(torch.cat([torch.full((1, 20000, 1), 0.5), torch.full((1, 20000, 1), math.log(4.0))], -1))
    s = wide.sample(torch.Generator().manual_seed(1))
    assert abs(s.mean().item() - 0.5) < 0.05 and abs(s.std().item() - 2.0) < 0.05


def test_query_in_chunks_equals_query_at_once(tiny):
    _, vae, _ = tiny
    pc, normals = _surface()
    xyz = torch.rand(2, 301, 3) * 2.2 - 1.1
    with torch.no_grad():
        tokens = vae.decode(vae.encode(pc, normals, sample_posterior=False)[1])
        whole = vae.query(tokens, xyz)
        halves = torch.cat([vae.query(tokens, xyz[:, :150]), vae.query(tokens, xyz[:, 150:])], dim=1)
        chunked = vae.query(tokens, xyz, chunk_size=64)
    torch.testing.assert_close(halves, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


def test_shape_vae_rejects_bad_input(tiny):
    _, vae, _ = tiny
    pc, normals = _surface()
    with pytest.raises(ValueError, match=r"pc must have shape \(B, N, 3\), got \(2, 200\)"):
        vae.encode(pc[..., 0], normals)
    with pytest.raises(ValueError, match="feats has 150 rows, expected 200"):
        vae.encode(pc, normals[:, :150])
    with pytest.raises(ValueError, match="feats .normals. are required"):
        vae.encode(pc, None)
    with pytest.raises(ValueError, match="floating-point"):
        vae.encode(pc.long(), normals)
    with pytest.raises(ValueError, match=r"latents must have shape \(B, 32, 8\)"):
        vae.decode(torch.zeros(1, 16, 8))
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        vae.query(torch.zeros(1, 32, 32), torch.zeros(1, 4, 3), chunk_size=0)


def test_timestep_embedding_matches_diffusers():
    from diffusers.models.embeddings import get_timestep_embedding
    t = torch.tensor([0, 1, 17, 999])
    for flip in (False, True):
        torch.testing.assert_close(timestep_embedding(t, 768, flip_sin_to_cos=flip),
                                   get_timestep_embedding(t, 768, flip_sin_to_cos=flip, downscale_freq_shift=0))


def test_denoiser_shapes_conditioning_and_errors(tiny):
    cfg, _, den = tiny
    d = cfg.denoiser
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, d.n_ctx, d.input_channels, generator=g)
    ctx_a = torch.randn(2, 77, d.context_dim, generator=g)
    ctx_b = torch.randn(2, 5, d.context_dim, generator=g)  # any token count (image context has 257)
    with torch.no_grad():
        eps = den(z, torch.tensor([3, 900]), ctx_a)
        eps_b = den(z, torch.tensor([3, 900]), ctx_b)
        eps_t = den(z, torch.tensor([600, 900]), ctx_a)
        eps_scalar = den(z, 3, ctx_a)
        eps_vec = den(z, torch.tensor([3, 3]), ctx_a)
    assert eps.shape == (2, d.n_ctx, d.output_channels) and eps.dtype == torch.float32 and torch.isfinite(eps).all()
    assert not torch.allclose(eps, eps_b)                     # the context conditions the output
    assert not torch.allclose(eps_t[0], eps[0]) and torch.allclose(eps_t[1], eps[1])  # per-sample timesteps
    torch.testing.assert_close(eps_scalar, eps_vec)
    with pytest.raises(ValueError, match=r"latents must have shape \(B, 32, 8\)"):
        den(z[:, :10], 3, ctx_a)
    with pytest.raises(ValueError, match=r"context must have shape \(2, T, 32\)"):
        den(z, 3, ctx_a[..., :16])
    with pytest.raises(ValueError, match=r"timesteps must have shape \(2,\)"):
        den(z, torch.tensor([1, 2, 3]), ctx_a)


def test_denoiser_is_trainable(tiny):
    """A few Adam steps on one (z, t, context) reduce the ε-MSE: gradients reach every parameter."""
    cfg, _, _ = tiny
    torch.manual_seed(0)
    den = ASLDMDenoiser(cfg.denoiser)
    z = torch.randn(4, 32, 8)
    ctx = torch.randn(4, 7, 32)
    t = torch.tensor([1, 200, 500, 999])
    target = torch.randn_like(z)
    opt = torch.optim.Adam(den.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.mse_loss(den(z, t, ctx), target)
        opt.zero_grad()
        loss.backward()
        if not losses:
            assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in den.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


# ---------------------------------------------------------------------------------------------------------------------
# The public checkpoints.
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["shapevae-256", "image-ASLDM-256", "text-ASLDM-256"])
def test_full_size_public_key_sets_map_completely(name):
    """All public keys at full size (meta tensors, nothing allocated) map onto our modules; preset detected."""
    cfg = get_preset(name)
    state = {k: torch.empty(s, device="meta") for k, s in public_key_shapes(cfg).items()}
    assert detect_public_preset(state) == name
    ckpt = load_public_checkpoint(state, name)
    with torch.device("meta"):
        vae_keys = set(ShapeVAE(cfg.vae).state_dict())
        den_keys = set(ASLDMDenoiser(cfg.denoiser).state_dict()) if cfg.denoiser else None
    assert set(ckpt.vae_state) == vae_keys
    assert (ckpt.denoiser_state is None) == (den_keys is None)
    if den_keys is not None:
        assert set(ckpt.denoiser_state) == den_keys
        assert ckpt.filled_defaults == ["logit_scale"] and ckpt.clip_state == {}
    else:
        assert ckpt.filled_defaults == [] and "visual_projection.weight" in ckpt.clip_state


@pytest.mark.parametrize("name", ["shapevae-256", "image-ASLDM-256", "text-ASLDM-256"])
def test_public_checkpoint_fills_every_parameter(tmp_path, capsys, name):
    cfg = reduced(name)
    state = filled_state(cfg, seed=hash(name) % 1000)
    path = tmp_path / f"{name}.ckpt"
    write_lightning_ckpt(path, state)
    loaded_cfg, vae, den, ckpt = build_public_models(path, cfg)
    assert "must not be printed" not in capsys.readouterr().out
    assert loaded_cfg == cfg and (den is None) == (cfg.denoiser is None)
    used = set()
    for group, module in (("vae", vae), ("denoiser", den)):
        if module is None:
            continue
        for key, tensor in module.state_dict().items():
            public = ours_to_public(cfg, group, key)
            if public not in state:  # only logit_scale of the ASLDM files
                assert key == "logit_scale" and cfg.denoiser is not None
                assert math.isclose(tensor.item(), cfg.vae.logit_scale_init, rel_tol=1e-6)
                continue
            assert torch.equal(tensor, state[public]), key
            used.add(public)
    skipped = set(state) - used
    assert all(k.startswith("model.clip_model.") for k in skipped), sorted(skipped)
    assert "logit_scale" in ckpt.clip_state if cfg.denoiser is None else not skipped
    # The loaded modules run.
    pc, normals = _surface(1, 50)
    with torch.no_grad():
        _, z, _ = vae.encode(pc, normals, sample_posterior=False)
        logits = vae.query(vae.decode(z), torch.zeros(1, 9, 3))
        if den is not None:
            eps = den(z, torch.tensor([5]), torch.randn(1, 3, cfg.denoiser.context_dim))
            assert torch.isfinite(eps).all()
    assert torch.isfinite(logits).all()


def test_public_checkpoint_from_safetensors(tmp_path):
    from safetensors.torch import save_file
    cfg = reduced("text-ASLDM-256")
    state = filled_state(cfg, seed=3)
    save_file(state, str(tmp_path / "text.safetensors"))
    _, vae, den, _ = build_public_models(tmp_path / "text.safetensors", cfg)
    assert torch.equal(den.backbone.decoder[2][1].weight, state["model.backbone.decoder.2.1.weight"])
    assert torch.equal(vae.encoder.query, state["first_stage_model.model.shape_model.encoder.query"])


def test_public_checkpoint_errors_are_precise(tmp_path):
    cfg = reduced("image-ASLDM-256")
    good = filled_state(cfg)
    missing = dict(good)
    del missing["first_stage_model.model.shape_model.transformer.resblocks.15.mlp.c_fc.bias"]
    del missing["model.backbone.decoder.5.2.weight"]
    with pytest.raises(CheckpointError, match=r"2 missing key\(s\): first_stage_model\.model\.shape_model\."
                                              r"transformer\.resblocks\.15\.mlp\.c_fc\.bias, "
                                              r"model\.backbone\.decoder\.5\.2\.weight"):
        load_public_checkpoint(missing, cfg)

    extra = dict(good)
    extra["model.backbone.decoder.6.1.weight"] = torch.zeros(16, 32)   # a 7th decoder stage
    extra["ema.model.input_proj.weight"] = torch.zeros(16, 4)
    with pytest.raises(CheckpointError, match=r"2 unexpected key\(s\): ema\.model\.input_proj\.weight, "
                                              r"model\.backbone\.decoder\.6\.1\.weight") as info:
        load_public_checkpoint(extra, cfg)
    assert "missing" not in str(info.value)

    wrong = dict(good)
    wrong["first_stage_model.model.shape_model.encoder.query"] = torch.zeros(6, 16)   # 6 queries, CLS row missing
    path = tmp_path / "wrong.ckpt"
    write_lightning_ckpt(path, wrong)
    with pytest.raises(CheckpointError, match=r"1 key\(s\) with the wrong shape: first_stage_model\.model\."
                                              r"shape_model\.encoder\.query: expected \[7, 16\], found \[6, 16\]"):
        build_public_models(path, cfg)

    # The full-size text preset does not accept the reduced image file, and says why.
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_public_checkpoint(good, "image-ASLDM-256")
    with pytest.raises(CheckpointError, match="matches no public preset"):
        detect_public_preset(good)
    with pytest.raises(CheckpointError, match="not a public Michelangelo checkpoint"):
        detect_public_preset({"unet.conv_in.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        read_state_dict(tmp_path / "nope.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.ckpt"):
        read_state_dict(tmp_path / "junk.ckpt")
    with pytest.raises(CheckpointError, match="unknown checkpoint suffix"):
        (tmp_path / "w.npz").write_bytes(b"x")
        read_state_dict(tmp_path / "w.npz")


# ---------------------------------------------------------------------------------------------------------------------
# Our format.
# ---------------------------------------------------------------------------------------------------------------------

def test_our_checkpoint_round_trip_and_errors(tmp_path, tiny):
    cfg, vae, den = tiny
    out = save_checkpoint(tmp_path / "run", cfg, {"vae": vae, "denoiser": den}, metadata={"step": 40, "loss": 0.5})
    assert is_our_checkpoint(out) and not is_our_checkpoint(tmp_path)
    loaded = load_checkpoint(out)
    assert loaded.config == cfg and loaded.metadata == {"step": 40, "loss": 0.5}
    for a, b in ((vae, loaded.vae), (den, loaded.denoiser)):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)
    vae_only = load_checkpoint(save_checkpoint(tmp_path / "vae", get_preset("tiny"), {"vae": vae}))
    assert vae_only.denoiser is None and vae_only.vae is not None

    from safetensors.torch import load_file, save_file
    state = load_file(str(out / "vae.safetensors"))
    state["pre_kl.weight"] = torch.zeros(3, 3)
    del state["post_kl.bias"]
    save_file(state, str(out / "vae.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): post_kl\.bias; 1 key\(s\) with the wrong shape: "
                                              r"pre_kl\.weight: expected \[16, 32\], found \[3, 3\]"):
        load_checkpoint(out)
    (out / "denoiser.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(out)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="unknown module name"):
        save_checkpoint(tmp_path / "x", cfg, {"unet": vae})
    other = dataclasses.replace(cfg, vae=dataclasses.replace(cfg.vae, num_latents=16), denoiser=None, condition=None)
    with pytest.raises(ValueError, match="differs from config.vae"):
        save_checkpoint(tmp_path / "y", other, {"vae": vae})
