"""Typed configs of the Michelangelo networks and the presets of the public checkpoints.

Values of the public presets are facts from the official configs of github.com/NeuralCarver/Michelangelo:

- ``configs/aligned_shape_latents/shapevae-256.yaml`` (SITA-VAE, class ``AlignedShapeLatentPerceiver``),
- ``configs/image_cond_diffuser_asl/image-ASLDM-256.yaml`` (ASLDM, ``ConditionalASLUDTDenoiser``, image context),
- ``configs/text_cond_diffuser_asl/text-ASLDM-256.yaml`` (the same, text context),

and from the code they instantiate (``michelangelo/models/...``); paper: Zhao et al., "Michelangelo: Conditional 3D
Shape Generation based on Shape-Image-Text Aligned Latent Representation", NeurIPS 2023, §3.1 (SITA-VAE), §3.2
(ASLDM), §4 (implementation details).

Every config validates itself on construction (``__post_init__``) and raises ``ValueError`` naming the bad field and
value. ``to_dict`` / ``from_dict`` round-trip through JSON (used by :mod:`.checkpoint` for our saved format).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ShapeVAEConfig", "ASLDMConfig", "CLIPConditionerConfig", "MichelangeloConfig", "PRESETS", "get_preset",
    "CONDITIONS", "CLIP_BACKENDS",
]

CONDITIONS = ("text", "image")
CLIP_BACKENDS = ("open_clip", "transformers")
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def _positive_int(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be a positive int, got {value!r}")


def _non_negative_int(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be an int >= 0, got {value!r}")


def _positive_float(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be a positive finite number, got {value!r}")


def _heads_divide(obj: Any, width_name: str = "width", heads_name: str = "heads") -> None:
    width, heads = getattr(obj, width_name), getattr(obj, heads_name)
    if width % heads:
        raise ValueError(f"{type(obj).__name__}.{width_name}={width} must be divisible by "
                         f"{heads_name}={heads} (one head has width/heads channels)")


class _DictMixin:
    """``to_dict`` / ``from_dict`` for flat dataclasses (unknown keys are an error, missing keys take defaults)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


@dataclass
class ShapeVAEConfig(_DictMixin):
    """The SITA-VAE shape branch (paper §3.1; public class ``AlignedShapeLatentPerceiver`` +
    ``CLIPAlignedShapeAsLatentModule.shape_projection``). Defaults = ``shapevae-256.yaml``."""

    num_latents: int = 256
    """Number of shape latent tokens (the learned query has ``num_latents + 1`` rows: one extra CLS token)."""
    embed_dim: int = 64
    """Channels of one latent token after the KL bottleneck (the diffusion model's token width)."""
    width: int = 768
    """Transformer width of encoder, decoder and occupancy query."""
    heads: int = 12
    """Attention heads (``width`` must be divisible by it)."""
    num_encoder_layers: int = 8
    """Self-attention layers after the perceiver cross-attention in the encoder."""
    num_decoder_layers: int = 16
    """Self-attention layers applied to the latent tokens after the post-KL projection."""
    num_freqs: int = 8
    """Fourier frequencies 2^0 … 2^(num_freqs-1) per coordinate (out dim ``3 * (2 * num_freqs + 1)``)."""
    include_pi: bool = False
    """Multiply the Fourier frequencies by π (false in all public configs)."""
    point_feats: int = 3
    """Per-point features concatenated after the Fourier embedding: 3 = the surface normal."""
    use_ln_post: bool = True
    """LayerNorm on the encoder output tokens (CLS included) before the KL projection."""
    init_scale: float = 0.25
    """Std of the attention/MLP weight init is ``init_scale / sqrt(width)`` (public init)."""
    qkv_bias: bool = False
    """Bias on the q/k/v projections."""
    clip_embed_dim: int = 768
    """Output dim of the aligned projection of the CLS token (= CLIP ViT-L/14 ``projection_dim``)."""
    logit_scale_init: float = math.log(100.0)
    """Initial log of the contrastive temperature. The public code uses the frozen ``logit_scale`` of CLIP ViT-L/14,
    whose trained value is ln(100); kept here as a parameter so our training can use or learn it."""

    def __post_init__(self) -> None:
        _positive_int(self, "num_latents", "embed_dim", "width", "heads", "num_encoder_layers",
                      "num_decoder_layers", "clip_embed_dim")
        _non_negative_int(self, "num_freqs", "point_feats")
        _positive_float(self, "init_scale")
        _heads_divide(self)
        if not math.isfinite(self.logit_scale_init):
            raise ValueError(f"ShapeVAEConfig.logit_scale_init must be finite, got {self.logit_scale_init!r}")

    @property
    def fourier_dim(self) -> int:
        """Width of the Fourier embedding of xyz: ``3 * (2 * num_freqs + 1)`` (xyz itself included)."""
        return 3 * (2 * self.num_freqs + 1)


@dataclass
class ASLDMConfig(_DictMixin):
    """The ASLDM denoiser (paper §3.2; public class ``ConditionalASLUDTDenoiser`` with backbone
    ``UNetDiffusionTransformer``). Defaults = ``image-ASLDM-256.yaml``'s ``denoiser_cfg``."""

    input_channels: int = 64
    """Channels of a noisy latent token (= ``ShapeVAEConfig.embed_dim``)."""
    output_channels: int = 64
    """Channels of the predicted ε per token."""
    n_ctx: int = 256
    """Number of latent tokens (= ``ShapeVAEConfig.num_latents``)."""
    width: int = 768
    """Transformer width."""
    layers: int = 6
    """Blocks in each half of the U-shaped transformer: ``2 * layers + 1`` blocks in all (6 image, 8 text)."""
    heads: int = 12
    """Attention heads."""
    context_dim: int = 1024
    """Channels of a conditioning token: 1024 (CLIP ViT-L/14 vision hidden) or 768 (CLIP text hidden)."""
    context_ln: bool = True
    """LayerNorm on the context before its linear projection to ``width``."""
    skip_ln: bool = True
    """LayerNorm after each skip-connection fusion linear in the decoder half."""
    init_scale: float = 1.0
    """Std of the attention/MLP/skip-linear weight init is ``init_scale / sqrt(width)``."""
    qkv_bias: bool = False
    """Bias on the q/k/v projections (the public backbone has none)."""
    flip_sin_to_cos: bool = False
    """Sinusoidal timestep embedding order: false = [sin, cos] (diffusers ``Timesteps`` convention)."""

    def __post_init__(self) -> None:
        _positive_int(self, "input_channels", "output_channels", "n_ctx", "width", "heads", "context_dim")
        _non_negative_int(self, "layers")
        _positive_float(self, "init_scale")
        _heads_divide(self)
        if self.width % 2:
            raise ValueError(f"ASLDMConfig.width must be even (sinusoidal timestep embedding), got {self.width}")


@dataclass
class CLIPConditionerConfig(_DictMixin):
    """The frozen CLIP towers that condition the ASLDM and that the shape CLS token is aligned with.

    The public code uses Hugging Face ``openai/clip-vit-large-patch14``: the text ASLDM is conditioned on the text
    tower's ``last_hidden_state`` (77 x 768), the image ASLDM on the vision tower's ``last_hidden_state``
    (257 x 1024 = CLS + 16x16 patches of a 224² image). The alignment loss uses the projected embeddings (768).
    """

    backend: str = "transformers"
    """``"transformers"`` (``CLIPModel``) or ``"open_clip"``; both give the same output contract."""
    model_id: str = "openai/clip-vit-large-patch14"
    """Hugging Face id or local folder for ``transformers``; ``"tiny-random"`` builds a seeded tiny model."""
    open_clip_model: str = "ViT-L-14"
    """open_clip architecture name (backend ``open_clip``)."""
    open_clip_pretrained: str = "openai"
    """open_clip pretrained tag (backend ``open_clip``)."""
    text_width: int = 768
    """Hidden size of the text tower = channels of a text context token."""
    vision_width: int = 1024
    """Hidden size of the vision tower = channels of an image context token."""
    projection_dim: int = 768
    """Dim of the projected (aligned) text/image embeddings."""
    text_tokens: int = 77
    """Tokens of the text context (tokenizer pads/truncates to this)."""
    image_size: int = 224
    """Input side of the vision tower in pixels."""
    patch_size: int = 14
    """Patch side of the vision tower in pixels."""

    def __post_init__(self) -> None:
        if self.backend not in CLIP_BACKENDS:
            raise ValueError(f"CLIPConditionerConfig.backend must be one of {CLIP_BACKENDS}, got {self.backend!r}")
        if not isinstance(self.model_id, str) or not self.model_id:
            raise ValueError(f"CLIPConditionerConfig.model_id must be a non-empty str, got {self.model_id!r}")
        _positive_int(self, "text_width", "vision_width", "projection_dim", "text_tokens", "image_size",
                      "patch_size")
        if self.image_size % self.patch_size:
            raise ValueError(f"CLIPConditionerConfig.image_size={self.image_size} must be divisible by "
                             f"patch_size={self.patch_size}")

    @property
    def image_tokens(self) -> int:
        """Tokens of the image context: ``(image_size / patch_size)² + 1`` (257 for ViT-L/14 at 224)."""
        return (self.image_size // self.patch_size) ** 2 + 1


@dataclass
class MichelangeloConfig:
    """A complete Michelangelo model: VAE, optional denoiser, CLIP conditioner, diffusion and extraction settings.

    Diffusion values are the public ``scheduler_cfg`` (DDPM for training noise, DDIM for sampling, same β schedule).
    """

    vae: ShapeVAEConfig = field(default_factory=ShapeVAEConfig)
    """The shape VAE."""
    denoiser: ASLDMConfig | None = None
    """The ASLDM denoiser; ``None`` for a VAE-only model (``shapevae-256``)."""
    condition: str | None = None
    """``"text"`` or ``"image"`` (what the denoiser's context is); ``None`` iff ``denoiser`` is ``None``."""
    clip: CLIPConditionerConfig = field(default_factory=CLIPConditionerConfig)
    """The CLIP towers (conditioning + alignment)."""
    num_train_timesteps: int = 1000
    """DDPM training timesteps."""
    beta_start: float = 0.00085
    """First β of the noise schedule."""
    beta_end: float = 0.012
    """Last β of the noise schedule."""
    beta_schedule: str = "scaled_linear"
    """diffusers β schedule name."""
    prediction_type: str = "epsilon"
    """What the denoiser predicts (the public model predicts ε)."""
    steps_offset: int = 1
    """DDIM ``steps_offset`` of the public sampler."""
    set_alpha_to_one: bool = False
    """DDIM ``set_alpha_to_one`` of the public sampler."""
    num_inference_steps: int = 50
    """Default DDIM steps."""
    guidance_scale: float = 7.5
    """Default classifier-free guidance scale."""
    eta: float = 0.0
    """DDIM η (0 = deterministic)."""
    z_scale_factor: float = 1.0
    """Latents are multiplied by this before diffusion and divided after (public default 1.0, ``scale_by_std``
    false in both ASLDM configs)."""
    bounds: float = 1.1
    """Occupancy is extracted in the cube [-bounds, bounds]³ of the model frame (public text/image inference:
    ``box_v=1.1``; the public reconstruction uses 1.25)."""

    def __post_init__(self) -> None:
        if not isinstance(self.vae, ShapeVAEConfig):
            raise ValueError(f"MichelangeloConfig.vae must be a ShapeVAEConfig, got {type(self.vae).__name__}")
        if not isinstance(self.clip, CLIPConditionerConfig):
            raise ValueError(f"MichelangeloConfig.clip must be a CLIPConditionerConfig, "
                             f"got {type(self.clip).__name__}")
        if self.vae.clip_embed_dim != self.clip.projection_dim:
            raise ValueError(f"vae.clip_embed_dim={self.vae.clip_embed_dim} must equal "
                             f"clip.projection_dim={self.clip.projection_dim} (aligned embedding space)")
        if self.denoiser is None:
            if self.condition is not None:
                raise ValueError(f"MichelangeloConfig.condition must be None without a denoiser, "
                                 f"got {self.condition!r}")
        else:
            if not isinstance(self.denoiser, ASLDMConfig):
                raise ValueError(f"MichelangeloConfig.denoiser must be an ASLDMConfig or None, "
                                 f"got {type(self.denoiser).__name__}")
            if self.condition not in CONDITIONS:
                raise ValueError(f"MichelangeloConfig.condition must be one of {CONDITIONS} with a denoiser, "
                                 f"got {self.condition!r}")
            d = self.denoiser
            if d.input_channels != self.vae.embed_dim or d.output_channels != self.vae.embed_dim:
                raise ValueError(f"denoiser input/output_channels=({d.input_channels}, {d.output_channels}) must "
                                 f"equal vae.embed_dim={self.vae.embed_dim}")
            if d.n_ctx != self.vae.num_latents:
                raise ValueError(f"denoiser.n_ctx={d.n_ctx} must equal vae.num_latents={self.vae.num_latents}")
            expected = self.clip.text_width if self.condition == "text" else self.clip.vision_width
            if d.context_dim != expected:
                which = "text_width" if self.condition == "text" else "vision_width"
                raise ValueError(f"denoiser.context_dim={d.context_dim} must equal clip.{which}={expected} "
                                 f"for condition {self.condition!r}")
        _positive_int(self, "num_train_timesteps", "num_inference_steps")
        _non_negative_int(self, "steps_offset")
        _positive_float(self, "beta_start", "beta_end", "z_scale_factor", "bounds")
        if not self.beta_start < self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {self.beta_start!r}, {self.beta_end!r}")
        if self.beta_schedule not in _BETA_SCHEDULES:
            raise ValueError(f"MichelangeloConfig.beta_schedule must be one of {_BETA_SCHEDULES}, "
                             f"got {self.beta_schedule!r}")
        if self.prediction_type not in _PREDICTION_TYPES:
            raise ValueError(f"MichelangeloConfig.prediction_type must be one of {_PREDICTION_TYPES}, "
                             f"got {self.prediction_type!r}")
        if not math.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            raise ValueError(f"MichelangeloConfig.guidance_scale must be >= 0, got {self.guidance_scale!r}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"MichelangeloConfig.eta must be in [0, 1], got {self.eta!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (nested configs as dicts, ``denoiser`` may be ``None``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MichelangeloConfig:
        """Inverse of :meth:`to_dict`. Raises ``ValueError`` on unknown fields or invalid values."""
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"MichelangeloConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        if "vae" in data:
            data["vae"] = ShapeVAEConfig.from_dict(data["vae"])
        if data.get("denoiser") is not None:
            data["denoiser"] = ASLDMConfig.from_dict(data["denoiser"])
        if "clip" in data:
            data["clip"] = CLIPConditionerConfig.from_dict(data["clip"])
        return cls(**data)


def _public_vae() -> ShapeVAEConfig:
    # shapevae-256.yaml shape_module_cfg (identical first_stage_config in both ASLDM yamls).
    return ShapeVAEConfig(num_latents=256, embed_dim=64, width=768, heads=12, num_encoder_layers=8,
                          num_decoder_layers=16, num_freqs=8, include_pi=False, point_feats=3, use_ln_post=True,
                          init_scale=0.25, qkv_bias=False, clip_embed_dim=768)


def _tiny_clip() -> CLIPConditionerConfig:
    return CLIPConditionerConfig(backend="transformers", model_id="tiny-random", text_width=32, vision_width=32,
                                 projection_dim=32, text_tokens=77, image_size=32, patch_size=8)


def _build_presets() -> dict[str, MichelangeloConfig]:
    presets = {
        "shapevae-256": MichelangeloConfig(vae=_public_vae(), denoiser=None, condition=None),
        # image-ASLDM-256.yaml denoiser_cfg: layers 6 ("2 * 6 + 1 = 13" blocks), context_dim 1024.
        "image-ASLDM-256": MichelangeloConfig(
            vae=_public_vae(), condition="image",
            denoiser=ASLDMConfig(input_channels=64, output_channels=64, n_ctx=256, width=768, layers=6, heads=12,
                                 context_dim=1024, context_ln=True, skip_ln=True, init_scale=1.0)),
        # text-ASLDM-256.yaml denoiser_cfg: layers 8 (17 blocks), context_dim 768.
        "text-ASLDM-256": MichelangeloConfig(
            vae=_public_vae(), condition="text",
            denoiser=ASLDMConfig(input_channels=64, output_channels=64, n_ctx=256, width=768, layers=8, heads=12,
                                 context_dim=768, context_ln=True, skip_ln=True, init_scale=1.0)),
        # Tests and CPU smoke runs. text_width == vision_width, so the tiny denoiser also takes image context
        # (use dataclasses.replace(cfg, condition="image")).
        "tiny": MichelangeloConfig(
            vae=ShapeVAEConfig(num_latents=32, embed_dim=8, width=32, heads=2, num_encoder_layers=1,
                               num_decoder_layers=1, num_freqs=8, include_pi=False, point_feats=3,
                               use_ln_post=True, init_scale=0.25, qkv_bias=False, clip_embed_dim=32),
            condition="text",
            denoiser=ASLDMConfig(input_channels=8, output_channels=8, n_ctx=32, width=32, layers=1, heads=2,
                                 context_dim=32, context_ln=True, skip_ln=True, init_scale=1.0),
            clip=_tiny_clip()),
    }
    return presets


PRESETS: dict[str, MichelangeloConfig] = _build_presets()
"""Named configs. Treat as read-only: :func:`get_preset` returns a deep copy."""


def get_preset(name: str) -> MichelangeloConfig:
    """A fresh copy of the preset ``name``. Raises ``ValueError`` naming the known presets."""
    if name not in PRESETS:
        raise ValueError(f"unknown Michelangelo preset {name!r}; known: {sorted(PRESETS)}")
    return MichelangeloConfig.from_dict(PRESETS[name].to_dict())
