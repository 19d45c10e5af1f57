"""Typed configs of the Michelangelo networks and the presets of the public checkpoints.

Values of the public presets are facts from the official configs of github.com/NeuralCarver/Michelangelo:

- ``configs/aligned_shape_latents/shapevae-256.yaml`` (SITA-VAE, class ``AlignedShapeLatentPerceiver``),
- ``configs/image_cond_diffuser_asl/image-ASLDM-256.yaml`` (ASLDM, ``ConditionalASLUDTDenoiser``, image context),
- ``configs/text_cond_diffuser_asl/text-ASLDM-256.yaml`` (the same, text context),

and from the code they instantiate (``michelangelo/models/...``); paper: Zhao et al., "Michelangelo: Conditional 3D
Shape Generation based on Shape-Image-Text Aligned Latent Representation", NeurIPS 2023, §3.1 (SITA-VAE), §3.2
(ASLDM), §4 (implementation details).

Every config is a :class:`backend.params.Config`: it is checked on construction (field types, bounds and choices,
then its cross-field ``validate()``) and raises :class:`backend.params.ParamError` (a ``ValueError``) naming the bad
field and value. :func:`backend.params.config_to_dict` / :func:`backend.params.config_from_dict` round-trip a
:class:`MichelangeloConfig` through JSON (used by :mod:`.checkpoint` for our saved format).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..params import Config, config_from_dict, config_to_dict, param

__all__ = [
    "ShapeVAEConfig", "ASLDMConfig", "CLIPConditionerConfig", "MichelangeloConfig", "PRESETS", "get_preset",
    "CONDITIONS", "CLIP_BACKENDS",
]

CONDITIONS = ("text", "image")
CLIP_BACKENDS = ("open_clip", "transformers")
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def _heads_divide(obj: Config, width_name: str = "width", heads_name: str = "heads") -> None:
    width, heads = getattr(obj, width_name), getattr(obj, heads_name)
    if width % heads:
        raise ValueError(f"{type(obj).__name__}.{width_name}={width} must be divisible by "
                         f"{heads_name}={heads} (one head has width/heads channels)")


@dataclass
class ShapeVAEConfig(Config):
    """The SITA-VAE shape branch (paper §3.1; public class ``AlignedShapeLatentPerceiver`` +
    ``CLIPAlignedShapeAsLatentModule.shape_projection``). Defaults = ``shapevae-256.yaml``."""

    num_latents: int = param(256, doc="Number of shape latent tokens (the learned query has ``num_latents + 1`` rows: "
                                      "one extra CLS token).", low=1)
    embed_dim: int = param(64, doc="Channels of one latent token after the KL bottleneck (the diffusion model's token "
                                   "width).", low=1)
    width: int = param(768, doc="Transformer width of encoder, decoder and occupancy query.", low=1)
    heads: int = param(12, doc="Attention heads (``width`` must be divisible by it).", low=1)
    num_encoder_layers: int = param(8, doc="Self-attention layers after the perceiver cross-attention in the "
                                           "encoder.", low=1)
    num_decoder_layers: int = param(16, doc="Self-attention layers applied to the latent tokens after the post-KL "
                                            "projection.", low=1)
    num_freqs: int = param(8, doc="Fourier frequencies 2^0 … 2^(num_freqs-1) per coordinate (out dim "
                                  "``3 * (2 * num_freqs + 1)``).", low=0)
    include_pi: bool = param(False, doc="Multiply the Fourier frequencies by π (false in all public configs).")
    point_feats: int = param(3, doc="Per-point features concatenated after the Fourier embedding: 3 = the surface "
                                    "normal.", low=0)
    use_ln_post: bool = param(True, doc="LayerNorm on the encoder output tokens (CLS included) before the KL "
                                        "projection.")
    init_scale: float = param(0.25, doc="Std of the attention/MLP weight init is ``init_scale / sqrt(width)`` (public "
                                        "init).", low=0.0, low_exclusive=True)
    qkv_bias: bool = param(False, doc="Bias on the q/k/v projections.")
    clip_embed_dim: int = param(768, doc="Output dim of the aligned projection of the CLS token (= CLIP ViT-L/14 "
                                         "``projection_dim``).", low=1)
    logit_scale_init: float = param(math.log(100.0), doc="Initial log of the contrastive temperature. The public code "
                                    "uses the frozen ``logit_scale`` of CLIP ViT-L/14, whose trained value is ln(100); "
                                    "kept here as a parameter so our training can use or learn it.")

    def validate(self) -> None:
        """Cross-field rule: ``width`` divisible by ``heads``. Raises ValueError."""
        _heads_divide(self)

    @property
    def fourier_dim(self) -> int:
        """Width of the Fourier embedding of xyz: ``3 * (2 * num_freqs + 1)`` (xyz itself included)."""
        return 3 * (2 * self.num_freqs + 1)


@dataclass
class ASLDMConfig(Config):
    """The ASLDM denoiser (paper §3.2; public class ``ConditionalASLUDTDenoiser`` with backbone
    ``UNetDiffusionTransformer``). Defaults = ``image-ASLDM-256.yaml``'s ``denoiser_cfg``."""

    input_channels: int = param(64, doc="Channels of a noisy latent token (= ``ShapeVAEConfig.embed_dim``).", low=1)
    output_channels: int = param(64, doc="Channels of the predicted ε per token.", low=1)
    n_ctx: int = param(256, doc="Number of latent tokens (= ``ShapeVAEConfig.num_latents``).", low=1)
    width: int = param(768, doc="Transformer width (even: sinusoidal timestep embedding).", low=1)
    layers: int = param(6, doc="Blocks in each half of the U-shaped transformer: ``2 * layers + 1`` blocks in all "
                               "(6 image, 8 text).", low=0)
    heads: int = param(12, doc="Attention heads (``width`` must be divisible by it).", low=1)
    context_dim: int = param(1024, doc="Channels of a conditioning token: 1024 (CLIP ViT-L/14 vision hidden) or 768 "
                                       "(CLIP text hidden).", low=1)
    context_ln: bool = param(True, doc="LayerNorm on the context before its linear projection to ``width``.")
    skip_ln: bool = param(True, doc="LayerNorm after each skip-connection fusion linear in the decoder half.")
    init_scale: float = param(1.0, doc="Std of the attention/MLP/skip-linear weight init is "
                                       "``init_scale / sqrt(width)``.", low=0.0, low_exclusive=True)
    qkv_bias: bool = param(False, doc="Bias on the q/k/v projections (the public backbone has none).")
    flip_sin_to_cos: bool = param(False, doc="Sinusoidal timestep embedding order: false = [sin, cos] (diffusers "
                                             "``Timesteps`` convention).")

    def validate(self) -> None:
        """Cross-field rules: ``width`` divisible by ``heads``, and even. Raises ValueError."""
        _heads_divide(self)
        if self.width % 2:
            raise ValueError(f"ASLDMConfig.width must be even (sinusoidal timestep embedding), got {self.width}")


@dataclass
class CLIPConditionerConfig(Config):
    """The frozen CLIP towers that condition the ASLDM and that the shape CLS token is aligned with.

    The public code uses Hugging Face ``openai/clip-vit-large-patch14``: the text ASLDM is conditioned on the text
    tower's ``last_hidden_state`` (77 x 768), the image ASLDM on the vision tower's ``last_hidden_state``
    (257 x 1024 = CLS + 16x16 patches of a 224² image). The alignment loss uses the projected embeddings (768).
    """

    backend: str = param("transformers", doc="``\"transformers\"`` (``CLIPModel``) or ``\"open_clip\"``; both give the "
                                             "same output contract.", choices=CLIP_BACKENDS)
    model_id: str = param("openai/clip-vit-large-patch14", doc="Hugging Face id or local folder for ``transformers``; "
                          "``\"tiny-random\"`` builds a seeded tiny model (not empty).")
    open_clip_model: str = param("ViT-L-14", doc="open_clip architecture name (backend ``open_clip``).")
    open_clip_pretrained: str = param("openai", doc="open_clip pretrained tag (backend ``open_clip``).")
    text_width: int = param(768, doc="Hidden size of the text tower = channels of a text context token.", low=1)
    vision_width: int = param(1024, doc="Hidden size of the vision tower = channels of an image context token.", low=1)
    projection_dim: int = param(768, doc="Dim of the projected (aligned) text/image embeddings.", low=1)
    text_tokens: int = param(77, doc="Tokens of the text context (tokenizer pads/truncates to this).", low=1)
    image_size: int = param(224, doc="Input side of the vision tower in pixels.", low=1)
    patch_size: int = param(14, doc="Patch side of the vision tower in pixels (divides ``image_size``).", low=1)

    def validate(self) -> None:
        """``model_id`` not empty; ``image_size`` divisible by ``patch_size``. Raises ValueError."""
        if not self.model_id:
            raise ValueError(f"CLIPConditionerConfig.model_id must be a non-empty str, got {self.model_id!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"CLIPConditionerConfig.image_size={self.image_size} must be divisible by "
                             f"patch_size={self.patch_size}")

    @property
    def image_tokens(self) -> int:
        """Tokens of the image context: ``(image_size / patch_size)² + 1`` (257 for ViT-L/14 at 224)."""
        return (self.image_size // self.patch_size) ** 2 + 1


@dataclass
class MichelangeloConfig(Config):
    """A complete Michelangelo model: VAE, optional denoiser, CLIP conditioner, diffusion and extraction settings.

    Diffusion values are the public ``scheduler_cfg`` (DDPM for training noise, DDIM for sampling, same β schedule).
    """

    vae: ShapeVAEConfig = param(default_factory=ShapeVAEConfig, doc="The shape VAE.")
    denoiser: ASLDMConfig | None = param(None, doc="The ASLDM denoiser; ``None`` for a VAE-only model "
                                                   "(``shapevae-256``).")
    condition: str | None = param(None, doc="``\"text\"`` or ``\"image\"`` (what the denoiser's context is); ``None`` "
                                            "iff ``denoiser`` is ``None``.", choices=CONDITIONS)
    clip: CLIPConditionerConfig = param(default_factory=CLIPConditionerConfig,
                                        doc="The CLIP towers (conditioning + alignment).")
    num_train_timesteps: int = param(1000, doc="DDPM training timesteps.", low=1)
    beta_start: float = param(0.00085, doc="First β of the noise schedule (0 < beta_start < beta_end).", low=0.0,
                              low_exclusive=True)
    beta_end: float = param(0.012, doc="Last β of the noise schedule (beta_end < 1).", low=0.0, low_exclusive=True)
    beta_schedule: str = param("scaled_linear", doc="diffusers β schedule name.", choices=_BETA_SCHEDULES)
    prediction_type: str = param("epsilon", doc="What the denoiser predicts (the public model predicts ε).",
                                 choices=_PREDICTION_TYPES)
    steps_offset: int = param(1, doc="DDIM ``steps_offset`` of the public sampler.", low=0)
    set_alpha_to_one: bool = param(False, doc="DDIM ``set_alpha_to_one`` of the public sampler.")
    num_inference_steps: int = param(50, doc="Default DDIM steps.", low=1)
    guidance_scale: float = param(7.5, doc="Default classifier-free guidance scale.", low=0.0)
    eta: float = param(0.0, doc="DDIM η (0 = deterministic).", low=0.0, high=1.0)
    z_scale_factor: float = param(1.0, doc="Latents are multiplied by this before diffusion and divided after (public "
                                           "default 1.0, ``scale_by_std`` false in both ASLDM configs).", low=0.0,
                                  low_exclusive=True)
    bounds: float = param(1.1, doc="Occupancy is extracted in the cube [-bounds, bounds]³ of the model frame (public "
                                   "text/image inference: ``box_v=1.1``; the public reconstruction uses 1.25).",
                          low=0.0, low_exclusive=True)

    def validate(self) -> None:
        """Cross-field rules: the VAE, denoiser, condition and CLIP sizes agree; ``beta_start < beta_end < 1``.

        Raises:
            ValueError: naming both sides of the first mismatch.
        """
        if self.vae.clip_embed_dim != self.clip.projection_dim:
            raise ValueError(f"vae.clip_embed_dim={self.vae.clip_embed_dim} must equal "
                             f"clip.projection_dim={self.clip.projection_dim} (aligned embedding space)")
        if self.denoiser is None:
            if self.condition is not None:
                raise ValueError(f"MichelangeloConfig.condition must be None without a denoiser, "
                                 f"got {self.condition!r}")
        else:
            if self.condition is None:
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
        if not self.beta_start < self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {self.beta_start!r}, {self.beta_end!r}")


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
    return config_from_dict(MichelangeloConfig, config_to_dict(PRESETS[name]))
