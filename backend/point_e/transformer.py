"""The Point-E networks: point-diffusion transformers (base models and upsampler) and the SDF regression model.

After Nichol et al. 2022 (Point-E) §3–4 and the public code's module layout (``point_e/models/transformer.py``,
``perceiver.py``, ``sdf.py``). Parameter names are the public ones, so loading a public state dict is a checked identity
mapping (:mod:`.checkpoint`):

- ``time_embed.c_fc`` / ``time_embed.c_proj``: MLP (width → 4·width → width) on the sinusoidal timestep embedding;
- ``input_proj``: Linear(6, width) per point; ``ln_pre``; ``backbone.resblocks.<i>.{ln_1, attn.c_qkv, attn.c_proj,
  ln_2, mlp.c_fc, mlp.c_proj}``: pre-LN residual attention blocks; ``ln_post``; ``output_proj``: Linear(width, 12);
- ``clip_embed``: Linear(768, width) on √768 × the unit CLIP text vector (``textvec``), or ``clip_embed.0``
  LayerNorm(1024) + ``clip_embed.1`` Linear(1024, width) on the CLIP grid tokens (``image_grid``, ``upsample``);
- upsampler: ``cond_point_proj``: Linear(6, width) on the coarse points after the buffers ``channel_scales`` /
  ``channel_biases`` (6,);
- SDF model: ``encoder_input_proj`` (Linear(3, width)), ``encoder.resblocks.<i>.*`` (as the backbone),
  ``decoder_input_proj``, ``decoder.resblocks.<i>.{ln_1, ln_2, attn.c_q, attn.c_kv, attn.c_proj, ln_3, mlp.*}``
  (cross-attention from the query points to the encoded cloud), ``ln_post``, ``output_proj`` (Linear(width, 1)).

Token order (as the public ``_forward_with_cond``): ``textvec``: [CLIP vector, time, points]; ``image_grid``: [time,
256 grid tokens, points]; ``upsample``: [time, 256 grid tokens, 1024 coarse points, 3072 new points]. The outputs of
the condition tokens are dropped.

Attention layout: ``c_qkv`` (width → 3·width) is read per head as [q | k | v] of ``width / heads`` channels each
(head-major), ``c_kv`` as [k | v] per head; softmax(q·kᵀ / √d) v. ``scaled_dot_product_attention`` does the product.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import CHANNEL_BIASES, CHANNEL_SCALES, PointETransformerConfig, SDFConfig

__all__ = ["timestep_embedding", "PointDiffusionTransformer", "PointCloudSDFModel"]


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps (may be fractional) → (B, dim) float32, ``[cos | sin]`` halves with
    frequencies ``max_period^(−i / half)`` (guided-diffusion's ``timestep_embedding``, as Point-E uses it)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _init_linear(layer: nn.Linear, std: float) -> None:
    nn.init.normal_(layer.weight, std=std)
    nn.init.zeros_(layer.bias)


class MLP(nn.Module):
    """``c_fc`` (width → 4·width), GELU, ``c_proj`` (4·width → width)."""

    def __init__(self, width: int, init_scale: float):
        super().__init__()
        self.c_fc = nn.Linear(width, width * 4)
        self.c_proj = nn.Linear(width * 4, width)
        _init_linear(self.c_fc, init_scale)
        _init_linear(self.c_proj, init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused ``c_qkv`` (per head [q | k v]) and ``c_proj``; (B, T, W) → (B, T, W)."""

    def __init__(self, width: int, heads: int, init_scale: float):
        super().__init__()
        self.heads = heads
        self.c_qkv = nn.Linear(width, width * 3)
        self.c_proj = nn.Linear(width, width)
        _init_linear(self.c_qkv, init_scale)
        _init_linear(self.c_proj, init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        qkv = self.c_qkv(x).view(b, t, self.heads, 3 * w // self.heads).transpose(1, 2)  # (B, H, T, 3d)
        q, k, v = qkv.chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.c_proj(out.transpose(1, 2).reshape(b, t, w))


class CrossAttention(nn.Module):
    """Multi-head cross-attention: queries ``c_q`` from x (B, T, W), keys/values ``c_kv`` (per head [k | v]) from data
    (B, S, W); → (B, T, W)."""

    def __init__(self, width: int, heads: int, init_scale: float):
        super().__init__()
        self.heads = heads
        self.c_q = nn.Linear(width, width)
        self.c_kv = nn.Linear(width, width * 2)
        self.c_proj = nn.Linear(width, width)
        for layer in (self.c_q, self.c_kv, self.c_proj):
            _init_linear(layer, init_scale)

    def forward(self, x: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        s = data.shape[1]
        q = self.c_q(x).view(b, t, self.heads, w // self.heads).transpose(1, 2)
        k, v = self.c_kv(data).view(b, s, self.heads, 2 * w // self.heads).transpose(1, 2).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.c_proj(out.transpose(1, 2).reshape(b, t, w))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, init_scale: float):
        super().__init__()
        self.attn = SelfAttention(width, heads, init_scale)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = MLP(width, init_scale)
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ResidualCrossAttentionBlock(nn.Module):
    """Pre-LN cross block: x + attn(ln_1(x), ln_2(data)), then x + mlp(ln_3(x))."""

    def __init__(self, width: int, heads: int, init_scale: float):
        super().__init__()
        self.attn = CrossAttention(width, heads, init_scale)
        self.ln_1 = nn.LayerNorm(width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, init_scale)
        self.ln_3 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), self.ln_2(data))
        return x + self.mlp(self.ln_3(x))


class Transformer(nn.Module):
    """``resblocks``: ``layers`` :class:`ResidualAttentionBlock` (init std ``init_scale / √width``)."""

    def __init__(self, width: int, layers: int, heads: int, init_scale: float):
        super().__init__()
        scale = init_scale * math.sqrt(1.0 / width)
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, scale) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class Perceiver(nn.Module):
    """``resblocks``: ``layers`` :class:`ResidualCrossAttentionBlock` (the public ``SimplePerceiver``)."""

    def __init__(self, width: int, layers: int, heads: int, init_scale: float):
        super().__init__()
        scale = init_scale * math.sqrt(1.0 / width)
        self.resblocks = nn.ModuleList([ResidualCrossAttentionBlock(width, heads, scale) for _ in range(layers)])

    def forward(self, x: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, data)
        return x


class PointDiffusionTransformer(nn.Module):
    """A Point-E denoiser: noisy points (B, 6, K) in diffusion space + timesteps → (B, 12, K) = ε (6) ‖ variance
    values (6) in [−1, 1] (learned-range interpolation between the posterior and β variances).

    One class for the three public variants (``config.kind``, see :data:`.config.KINDS`); the condition is

    - ``textvec``: ``clip`` (B, 768): the unit-norm CLIP text (or image) embedding; zeros = unconditional;
    - ``image_grid``: ``clip`` (B, 1024, 256): CLIP ViT-L/14 grid tokens, channels first; zeros = unconditional;
    - ``upsample``: ``clip`` as ``image_grid`` and ``low_res`` (B, 6, 1024): the coarse cloud in point space (xyz in
      model units, rgb in [0, 255]); it is scaled to diffusion space by the ``channel_scales`` / ``channel_biases``
      buffers before ``cond_point_proj``.

    Args:
        config: the architecture.
    """

    def __init__(self, config: PointETransformerConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.time_embed = MLP(w, config.init_scale * math.sqrt(1.0 / w))
        self.ln_pre = nn.LayerNorm(w)
        self.backbone = Transformer(w, config.layers, config.heads, config.init_scale)
        self.ln_post = nn.LayerNorm(w)
        self.input_proj = nn.Linear(config.input_channels, w)
        self.output_proj = nn.Linear(w, config.output_channels)
        with torch.no_grad():  # the public init: a zero output layer
            self.output_proj.weight.zero_()
            self.output_proj.bias.zero_()
        if config.kind == "textvec":
            self.clip_embed = nn.Linear(config.clip_dim, w)
        else:
            self.clip_embed = nn.Sequential(nn.LayerNorm(config.clip_dim), nn.Linear(config.clip_dim, w))
        if config.kind == "upsample":
            self.cond_point_proj = nn.Linear(config.input_channels, w)
            self.register_buffer("channel_scales", torch.tensor(CHANNEL_SCALES))
            self.register_buffer("channel_biases", torch.tensor(CHANNEL_BIASES))

    def condition_shape(self, batch: int) -> tuple[int, ...]:
        """Shape of the ``clip`` argument for a batch: (B, clip_dim) or (B, clip_dim, clip_grid)."""
        c = self.config
        return (batch, c.clip_dim) if c.kind == "textvec" else (batch, c.clip_dim, c.clip_grid)

    def forward(self, x: torch.Tensor, t: torch.Tensor, clip: torch.Tensor,
                low_res: torch.Tensor | None = None) -> torch.Tensor:
        """Predict ε and variance values.

        Args:
            x: (B, 6, K) float noisy points in diffusion space (K = ``config.n_ctx``).
            t: (B,) diffusion timesteps in [0, 1023] (integers as floats or longs).
            clip: the condition (see the class docstring).
            low_res: (B, 6, cond_ctx) coarse points (upsampler only).

        Returns:
            (B, 12, K) float: channels 0–5 ε, 6–11 variance values.

        Raises:
            ValueError: shapes that do not match the config (names the argument).
        """
        c = self.config
        b = x.shape[0]
        if x.ndim != 3 or x.shape[1] != c.input_channels or x.shape[2] != c.n_ctx:
            raise ValueError(f"x must be (B, {c.input_channels}, {c.n_ctx}), got {tuple(x.shape)}")
        if tuple(clip.shape) != self.condition_shape(b):
            raise ValueError(f"clip must be {self.condition_shape(b)}, got {tuple(clip.shape)}")
        t_embed = self.time_embed(timestep_embedding(t.reshape(b), c.width).to(x.dtype))[:, None]
        if c.kind == "textvec":
            cond = [self.clip_embed(math.sqrt(c.clip_dim) * clip.to(x.dtype))[:, None], t_embed]
        else:
            cond = [t_embed, self.clip_embed(clip.to(x.dtype).permute(0, 2, 1))]
        if c.kind == "upsample":
            if low_res is None or tuple(low_res.shape) != (b, c.input_channels, c.cond_ctx):
                raise ValueError(f"low_res must be (B, {c.input_channels}, {c.cond_ctx}), got "
                                 f"{None if low_res is None else tuple(low_res.shape)}")
            scaled = low_res.to(x.dtype) * self.channel_scales[None, :, None] + self.channel_biases[None, :, None]
            cond.append(self.cond_point_proj(scaled.permute(0, 2, 1)))
        h = torch.cat([*cond, self.input_proj(x.permute(0, 2, 1))], dim=1)
        h = self.ln_post(self.backbone(self.ln_pre(h)))
        h = h[:, sum(e.shape[1] for e in cond):]
        return self.output_proj(h).permute(0, 2, 1)


class PointCloudSDFModel(nn.Module):
    """Point-E's SDF regression model: a point cloud (B, 3, N) and query points (B, 3, M) → SDF (B, M).

    The cloud is encoded by self-attention (``encoder``), queries attend to it (``decoder``); the public marching
    cubes reads the surface at level 0 with the solid where the value is positive (its ``skimage`` call uses the default
    ``gradient_direction='descent'``: "object greater than exterior"). Units: Point-E's model frame (shapes in about
    [−0.5, 0.5]³).
    """

    def __init__(self, config: SDFConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.encoder_input_proj = nn.Linear(3, w)
        self.encoder = Transformer(w, config.encoder_layers, config.encoder_heads, config.init_scale)
        self.decoder_input_proj = nn.Linear(3, w)
        self.decoder = Perceiver(w, config.decoder_layers, config.decoder_heads, config.init_scale)
        self.ln_post = nn.LayerNorm(w)
        self.output_proj = nn.Linear(w, 1)

    def encode_point_clouds(self, point_clouds: torch.Tensor) -> torch.Tensor:
        """(B, 3, N) points → (B, N, width) latents (reused for every query chunk)."""
        if point_clouds.ndim != 3 or point_clouds.shape[1] != 3:
            raise ValueError(f"point_clouds must be (B, 3, N), got {tuple(point_clouds.shape)}")
        return self.encoder(self.encoder_input_proj(point_clouds.permute(0, 2, 1)))

    def predict_sdf(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Query points (B, 3, M) + latents (B, N, width) → (B, M) SDF values (positive inside)."""
        h = self.decoder(self.decoder_input_proj(x.permute(0, 2, 1)), latents)
        return self.output_proj(self.ln_post(h))[..., 0]

    def forward(self, x: torch.Tensor, point_clouds: torch.Tensor) -> torch.Tensor:
        """``predict_sdf(x, encode_point_clouds(point_clouds))``."""
        return self.predict_sdf(x, self.encode_point_clouds(point_clouds))
