"""Point-E architectures and sampling defaults as configs, one preset per public checkpoint plus ``tiny``.

Facts from the public code (github.com/openai/point-e): ``point_e/models/configs.py`` (``MODEL_CONFIGS``: widths,
layers, heads, contexts), ``point_e/diffusion/configs.py`` (``DIFFUSION_CONFIGS``: cosine schedule for the base models,
linear for the upsampler, 1024 timesteps, epsilon prediction with learned-range variances, channel scales/biases),
``point_e/diffusion/sampler.py`` (``PointCloudSampler`` defaults: Karras/Heun, 64 steps per stage, sigma_min 1e-3,
sigma_max 120 base / 160 upsampler, s_churn 3 base / 0 upsampler) and the example notebooks (guidance 3.0 for the
base model; 3.0 for the upsampler with an image, 0 (no guidance, no condition) with text).

The CLIP towers are not part of these configs' modules (the public models keep CLIP outside their state dicts):
``clip_dim`` is the width of what the model is conditioned on, 768 for the text vector (ViT-L/14 projected and
L2-normalised embedding), 1024 for the image grid (ViT-L/14 last hidden state, 16×16 patch tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..params import Config, ParamError, param

__all__ = ["KINDS", "PointETransformerConfig", "SDFConfig", "SamplerConfig", "PointEPreset", "PRESETS",
           "BASE_PRESETS", "TINY_PRESETS", "get_preset", "CHANNEL_SCALES", "CHANNEL_BIASES", "OPENAI_CLIP_L14"]

KINDS = ("textvec", "image_grid", "upsample")
"""Transformer variants: ``textvec`` = ``CLIPImagePointDiffusionTransformer`` with ``token_cond`` (one CLIP vector
token), ``image_grid`` = ``CLIPImageGridPointDiffusionTransformer`` (CLIP grid tokens), ``upsample`` =
``CLIPImageGridUpsamplePointDiffusionTransformer`` (CLIP grid tokens + the coarse cloud's points as tokens)."""

CHANNEL_SCALES = (2.0, 2.0, 2.0, 0.007843137255, 0.007843137255, 0.007843137255)
"""Diffusion space = point × scale + bias per channel (xyz, rgb): xyz in about [−0.5, 0.5] → [−1, 1], rgb in
[0, 255] → [−1, 1] (``channel_scales`` of the public diffusion and upsampler configs)."""
CHANNEL_BIASES = (0.0, 0.0, 0.0, -1.0, -1.0, -1.0)
"""See :data:`CHANNEL_SCALES` (``channel_biases``)."""
OPENAI_CLIP_L14 = "openai/clip-vit-large-patch14"


@dataclass
class PointETransformerConfig(Config):
    """A point-diffusion transformer (``point_e/models/transformer.py``): K points × 6 channels in, 12 out."""

    kind: str = param("image_grid", doc="Variant: textvec, image_grid or upsample.", choices=KINDS)
    width: int = param(512, doc="Token width.", low=8, high=8192)
    layers: int = param(12, doc="Residual attention blocks.", low=1, high=128)
    heads: int = param(8, doc="Attention heads (width divisible by heads).", low=1, high=128)
    n_ctx: int = param(1024, doc="Points the model denoises (for the upsampler: the new points, 4096 - 1024).",
                       low=1, high=65536)
    cond_ctx: int = param(0, doc="Points of the coarse cloud the upsampler is conditioned on (0 for base models).",
                          low=0, high=65536)
    input_channels: int = param(6, doc="Channels per point: xyz + rgb.", low=1, high=64)
    output_channels: int = param(12, doc="Output channels: epsilon (6) + learned-range variance values (6).",
                                 low=1, high=128)
    clip_dim: int = param(1024, doc="Width of the CLIP condition: 768 (ViT-L/14 text vector) or 1024 (ViT-L/14 "
                                    "grid tokens).", low=1, high=8192)
    clip_grid: int = param(256, doc="CLIP grid tokens (16² for ViT-L/14 at 224 px; unused by textvec).",
                           low=1, high=65536)
    init_scale: float = param(0.25, doc="Initialisation scale of the public code (random weights only).",
                              low=0.0, high=10.0)
    time_token_cond: bool = param(True, doc="The timestep embedding is a token (true for every public model).")

    def validate(self) -> None:
        if self.width % self.heads:
            raise ParamError(f"width = {self.width} is not divisible by heads = {self.heads}")
        if (self.kind == "upsample") != (self.cond_ctx > 0):
            raise ParamError(f"cond_ctx = {self.cond_ctx}: the upsampler needs cond_ctx > 0, base models 0")


@dataclass
class SDFConfig(Config):
    """The SDF regression model (``CrossAttentionPointCloudSDFModel``, ``point_e/models/sdf.py``)."""

    width: int = param(256, doc="Token width.", low=8, high=8192)
    encoder_layers: int = param(8, doc="Self-attention blocks over the point cloud.", low=1, high=128)
    encoder_heads: int = param(4, doc="Encoder attention heads.", low=1, high=128)
    decoder_layers: int = param(4, doc="Cross-attention blocks from query points to the encoded cloud.",
                                low=1, high=128)
    decoder_heads: int = param(4, doc="Decoder attention heads.", low=1, high=128)
    n_ctx: int = param(4096, doc="Points of the cloud it was trained on.", low=1, high=65536)
    init_scale: float = param(0.25, doc="Initialisation scale of the public code (random weights only).",
                              low=0.0, high=10.0)

    def validate(self) -> None:
        for heads in (self.encoder_heads, self.decoder_heads):
            if self.width % heads:
                raise ParamError(f"width = {self.width} is not divisible by heads = {heads}")


@dataclass
class SamplerConfig(Config):
    """The diffusion of one stage (``DIFFUSION_CONFIGS``) and its Karras sampler defaults (``PointCloudSampler``)."""

    schedule: str = param("cosine", doc="Beta schedule: cosine (base models) or linear (upsampler).",
                          choices=("cosine", "linear"))
    timesteps: int = param(1024, doc="Diffusion timesteps of training.", low=2, high=100000)
    karras_steps: int = param(64, doc="Heun steps of the Karras sampler.", low=1, high=1000)
    sigma_min: float = param(1e-3, doc="Smallest noise level of the Karras schedule.", low=0.0, low_exclusive=True)
    sigma_max: float = param(120.0, doc="Largest noise level (120 base, 160 upsampler).", low=0.0,
                             low_exclusive=True)
    rho: float = param(7.0, doc="Karras schedule exponent.", low=0.0, low_exclusive=True)
    s_churn: float = param(3.0, doc="Stochastic churn of the Heun sampler (3 base, 0 upsampler).", low=0.0,
                           high=1000.0)
    guidance_scale: float = param(3.0, doc="Classifier-free guidance on the denoised points (0 or 1 = none).",
                                  low=0.0, high=100.0)

    def validate(self) -> None:
        if self.sigma_min >= self.sigma_max:
            raise ParamError(f"sigma_min = {self.sigma_min} must be below sigma_max = {self.sigma_max}")


@dataclass
class PointEPreset(Config):
    """One public checkpoint's architecture and sampling defaults (``sdf`` set for the SDF model, else ``model``)."""

    name: str = param("base40M", doc="Preset name (the public checkpoint name).")
    model: PointETransformerConfig | None = param(None, doc="The point-diffusion transformer, or None (SDF).")
    sampler: SamplerConfig = param(default_factory=SamplerConfig, doc="Diffusion and sampler defaults.")
    sdf: SDFConfig | None = param(None, doc="The SDF model, or None.")
    clip_model_id: str = param(OPENAI_CLIP_L14, doc="CLIP towers the model is conditioned on.")
    file: str = param("", doc="File name of the public checkpoint (openaipublic.azureedge.net/main/point-e/<file>).")


def _base(name: str, kind: str, width: int, layers: int, heads: int, file: str) -> PointEPreset:
    model = PointETransformerConfig(kind=kind, width=width, layers=layers, heads=heads, n_ctx=1024,
                                    clip_dim=768 if kind == "textvec" else 1024, clip_grid=256)
    return PointEPreset(name=name, model=model, sampler=SamplerConfig(), file=file)


PRESETS: dict[str, PointEPreset] = {
    "base40M-textvec": _base("base40M-textvec", "textvec", 512, 12, 8, "base_40m_textvec.pt"),
    "base40M": _base("base40M", "image_grid", 512, 12, 8, "base_40m.pt"),
    "base300M": _base("base300M", "image_grid", 1024, 24, 16, "base_300m.pt"),
    "base1B": _base("base1B", "image_grid", 2048, 24, 32, "base_1b.pt"),
    "upsample": PointEPreset(
        name="upsample",
        model=PointETransformerConfig(kind="upsample", width=512, layers=12, heads=8, n_ctx=3072, cond_ctx=1024,
                                      clip_dim=1024, clip_grid=256),
        sampler=SamplerConfig(schedule="linear", sigma_max=160.0, s_churn=0.0, guidance_scale=3.0),
        file="upsample_40m.pt"),
    "sdf": PointEPreset(name="sdf", model=None, sdf=SDFConfig(), file="sdf.pt"),
}
"""The public checkpoints (``MODEL_CONFIGS`` / ``MODEL_PATHS`` of the public code)."""

BASE_PRESETS = ("base40M-textvec", "base40M", "base300M", "base1B")

_TINY_CLIP = "tiny-random"


def _tiny() -> dict[str, PointEPreset]:
    tiny_sampler = SamplerConfig(karras_steps=8)
    out = {}
    for kind, clip_dim in (("textvec", 32), ("image_grid", 32)):
        out[f"tiny-{kind}"] = PointEPreset(
            name=f"tiny-{kind}", clip_model_id=_TINY_CLIP, sampler=tiny_sampler,
            model=PointETransformerConfig(kind=kind, width=32, layers=2, heads=2, n_ctx=64, clip_dim=clip_dim,
                                          clip_grid=16))
    out["tiny-upsample"] = PointEPreset(
        name="tiny-upsample", clip_model_id=_TINY_CLIP,
        sampler=replace(PRESETS["upsample"].sampler, karras_steps=8),
        model=PointETransformerConfig(kind="upsample", width=32, layers=2, heads=2, n_ctx=192, cond_ctx=64,
                                      clip_dim=32, clip_grid=16))
    out["tiny-sdf"] = PointEPreset(name="tiny-sdf", clip_model_id=_TINY_CLIP,
                                   sdf=SDFConfig(width=32, encoder_layers=2, encoder_heads=2, decoder_layers=2,
                                                 decoder_heads=2, n_ctx=256))
    return out


TINY_PRESETS: dict[str, PointEPreset] = _tiny()
"""Ours: the ``tiny-random`` models (width 32, 2 blocks; 64 → 256 points; a 32-wide CLIP with 16 grid tokens)."""


def get_preset(name: str) -> PointEPreset:
    """The preset ``name`` (a key of :data:`PRESETS` or :data:`TINY_PRESETS`), a fresh copy.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    table = {**PRESETS, **TINY_PRESETS}
    if name not in table:
        raise ValueError(f"unknown Point-E preset {name!r}; known: {', '.join(table)}")
    p = table[name]
    return replace(p, model=replace(p.model) if p.model else None, sampler=replace(p.sampler),
                   sdf=replace(p.sdf) if p.sdf else None)

