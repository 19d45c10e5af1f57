"""The ASLDM denoiser of Michelangelo (Zhao et al., NeurIPS 2023, §3.2 "Aligned Shape Latent Diffusion Model").

Architecture = the public ``ConditionalASLUDTDenoiser`` (``michelangelo/models/asl_diffusion/asl_udt.py``) with its
``UNetDiffusionTransformer`` backbone (``michelangelo/models/modules/diffusion_transformer.py``):

1. time: sinusoidal embedding of t (width channels, [sin | cos], diffusers ``Timesteps(width, flip_sin_to_cos=False,
   downscale_freq_shift=0)``) -> ``time_proj`` MLP -> one token (B, 1, width);
2. context: ``context_embed`` = LayerNorm(context_dim) + Linear(context_dim -> width) on the CLIP tokens (B, T, width);
3. latents: ``input_proj`` Linear(embed_dim -> width) (B, n_ctx, width);
4. IN-CONTEXT conditioning: the sequence ``[time token, context tokens, latent tokens]`` (B, 1 + T + n_ctx, width)
   goes through the backbone (self-attention only; there is no cross-attention and no AdaLN in this model);
5. backbone: ``layers`` encoder blocks (each output kept), a middle block, ``layers`` decoder stages, each
   ``x = block(LN(Linear_{2w->w}(concat[skip, x])))`` with the skip popped last-in-first-out (U-shaped);
6. ``ln_post``, keep the last n_ctx tokens, ``output_proj`` Linear(width -> embed_dim) = predicted ε.

Sizes: image-ASLDM-256 ``layers=6`` (13 blocks), context 257 x 1024; text-ASLDM-256 ``layers=8`` (17 blocks),
context 77 x 768; both width 768, 12 heads, latents 256 x 64.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ASLDMConfig
from .layers import MLP, ResidualAttentionBlock, init_linear

__all__ = ["timestep_embedding", "UShapedTransformer", "ASLDMDenoiser"]


def timestep_embedding(timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool = False,
                       downscale_freq_shift: float = 0.0, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, the diffusers ``get_timestep_embedding`` formula.

    ``emb[:, i] = sin(t · max_period^(-i / (half - downscale_freq_shift)))`` for i < half = dim // 2, then the
    matching cosines (order swapped if ``flip_sin_to_cos``); a zero column is appended for odd ``dim``.

    Args:
        timesteps: (B,) int or float tensor.
    Returns:
        (B, dim) float32.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be 1-D (B,), got shape {tuple(timesteps.shape)}")
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - downscale_freq_shift))
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([args.sin(), args.cos()], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class UShapedTransformer(nn.Module):
    """Self-attention transformer with U-Net-style long skips (public ``UNetDiffusionTransformer``).

    Parameter paths: ``encoder.{i}`` (blocks), ``middle_block``, ``decoder.{i}.0`` (block), ``decoder.{i}.1``
    (Linear 2·width -> width fusing [skip, x]), ``decoder.{i}.2`` (LayerNorm if ``skip_ln``, else parameter-free
    Identity). x (B, S, width) -> (B, S, width).
    """

    def __init__(self, width: int, layers: int, heads: int, qkv_bias: bool, skip_ln: bool, init_std: float):
        super().__init__()
        self.encoder = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, qkv_bias, init_std) for _ in range(layers)])
        self.middle_block = ResidualAttentionBlock(width, heads, qkv_bias, init_std)
        self.decoder = nn.ModuleList()
        for _ in range(layers):
            fuse = nn.Linear(2 * width, width)
            init_linear(fuse, init_std)
            norm = nn.LayerNorm(width) if skip_ln else nn.Identity()
            self.decoder.append(nn.ModuleList([ResidualAttentionBlock(width, heads, qkv_bias, init_std), fuse, norm]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = self.middle_block(x)
        for block, fuse, norm in self.decoder:
            x = block(norm(fuse(torch.cat([skips.pop(), x], dim=-1))))
        return x


class ASLDMDenoiser(nn.Module):
    """ε-prediction transformer over shape latents, conditioned in-context on CLIP tokens (paper §3.2).

    Args:
        config: sizes; see :data:`.config.PRESETS` ``image-ASLDM-256`` / ``text-ASLDM-256``.
    """

    def __init__(self, config: ASLDMConfig):
        super().__init__()
        if not isinstance(config, ASLDMConfig):
            raise ValueError(f"config must be an ASLDMConfig, got {type(config).__name__}")
        self.config = config
        w = config.width
        init_std = config.init_scale / math.sqrt(w)
        self.backbone = UShapedTransformer(w, config.layers, config.heads, config.qkv_bias, config.skip_ln, init_std)
        self.ln_post = nn.LayerNorm(w)
        self.input_proj = nn.Linear(config.input_channels, w)
        self.output_proj = nn.Linear(w, config.output_channels)
        self.time_proj = MLP(w, init_std)
        if config.context_ln:
            self.context_embed = nn.Sequential(nn.LayerNorm(config.context_dim), nn.Linear(config.context_dim, w))
        else:
            self.context_embed = nn.Linear(config.context_dim, w)

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor | int | float,
                context: torch.Tensor) -> torch.Tensor:
        """Predict the noise.

        Args:
            latents: (B, n_ctx, input_channels) float noisy latents (z_t, already multiplied by z_scale_factor).
            timesteps: (B,) int64 (or float) diffusion timesteps in [0, num_train_timesteps); a scalar or a 0-d /
                1-element tensor is broadcast to the batch.
            context: (B, T, context_dim) float CLIP tokens (text: T=77, image: T=257; T is free).

        Returns:
            (B, n_ctx, output_channels) predicted ε, in the denoiser's parameter dtype.

        Raises:
            ValueError: shapes do not match the config, or batch sizes disagree.
        """
        cfg = self.config
        if latents.ndim != 3 or latents.shape[1] != cfg.n_ctx or latents.shape[2] != cfg.input_channels:
            raise ValueError(f"latents must have shape (B, {cfg.n_ctx}, {cfg.input_channels}), "
                             f"got {tuple(latents.shape)}")
        b = latents.shape[0]
        if context.ndim != 3 or context.shape[0] != b or context.shape[2] != cfg.context_dim:
            raise ValueError(f"context must have shape ({b}, T, {cfg.context_dim}), got {tuple(context.shape)}")
        if context.shape[1] == 0:
            raise ValueError("context has no tokens")
        t = torch.as_tensor(timesteps, device=latents.device)
        if t.numel() == 1:
            t = t.reshape(1).expand(b)
        if t.ndim != 1 or t.shape[0] != b:
            raise ValueError(f"timesteps must have shape ({b},) or be a scalar, got {tuple(t.shape)}")
        dtype = self.input_proj.weight.dtype

        t_emb = timestep_embedding(t, cfg.width, flip_sin_to_cos=cfg.flip_sin_to_cos).to(dtype)
        t_token = self.time_proj(t_emb).unsqueeze(1)                       # (B, 1, W)
        ctx = self.context_embed(context.to(dtype))                        # (B, T, W)
        x = self.input_proj(latents.to(dtype))                             # (B, n_ctx, W)
        x = self.backbone(torch.cat([t_token, ctx, x], dim=1))
        x = self.ln_post(x)[:, -cfg.n_ctx:]
        return self.output_proj(x)
