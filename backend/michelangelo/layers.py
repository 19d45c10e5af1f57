"""Transformer blocks shared by the shape VAE and the ASLDM denoiser.

Parameter names and tensor layouts follow the public Michelangelo code
(``michelangelo/models/modules/transformer_blocks.py``) so that a public state dict loads by a prefix rename:

- self-attention: one linear ``c_qkv`` (width -> 3·width) whose output, viewed as (..., heads, 3·head_dim), holds
  [q | k | v] per head (head-major, not q/k/v-major), then ``c_proj``;
- cross-attention: ``c_q`` (width -> width) and ``c_kv`` (data_width -> 2·width, per head [k | v]), then ``c_proj``;
- MLP: ``c_fc`` (width -> 4·width), exact GELU, ``c_proj``;
- pre-LayerNorm residual blocks: self-attention ``ln_1``/``ln_2``; cross-attention ``ln_1`` (queries), ``ln_2``
  (data), ``ln_3`` (before the MLP).

Attention is softmax(q·kᵀ/√head_dim)·v via ``torch.nn.functional.scaled_dot_product_attention`` (the public code
computes the same product as (q·d^-1/4)·(k·d^-1/4) with the softmax in float32). No positional embeddings anywhere:
token identity comes from learned queries (VAE) or from the content (denoiser).

Weight init (public ``init_linear``): attention/MLP linears ~ N(0, init_std²) with zero bias, where the callers pass
``init_std = init_scale / sqrt(width)``; LayerNorms at (1, 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["init_linear", "MLP", "SelfAttention", "CrossAttention", "ResidualAttentionBlock",
           "ResidualCrossAttentionBlock", "Transformer"]


def init_linear(linear: nn.Linear, std: float) -> None:
    """Normal(0, std²) weight, zero bias (in place)."""
    nn.init.normal_(linear.weight, std=std)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


class MLP(nn.Module):
    """``c_proj(GELU(c_fc(x)))``, hidden width 4·width. (..., width) -> (..., width)."""

    def __init__(self, width: int, init_std: float):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.c_proj = nn.Linear(4 * width, width)
        self.gelu = nn.GELU()
        init_linear(self.c_fc, init_std)
        init_linear(self.c_proj, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q (B, T, H, D), k/v (B, S, H, D) -> (B, T, H·D)."""
    b, t, h, d = q.shape
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).reshape(b, t, h * d)


class SelfAttention(nn.Module):
    """Multi-head self-attention. x (B, T, width) -> (B, T, width)."""

    def __init__(self, width: int, heads: int, qkv_bias: bool, init_std: float):
        super().__init__()
        if width % heads:
            raise ValueError(f"width={width} must be divisible by heads={heads}")
        self.heads = heads
        self.c_qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.c_proj = nn.Linear(width, width)
        init_linear(self.c_qkv, init_std)
        init_linear(self.c_proj, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = self.c_qkv(x).view(b, t, self.heads, -1)
        q, k, v = qkv.chunk(3, dim=-1)
        return self.c_proj(_attend(q, k, v))


class CrossAttention(nn.Module):
    """Multi-head cross-attention. x (B, T, width) attends to data (B, S, data_width) -> (B, T, width)."""

    def __init__(self, width: int, heads: int, qkv_bias: bool, init_std: float, data_width: int | None = None):
        super().__init__()
        if width % heads:
            raise ValueError(f"width={width} must be divisible by heads={heads}")
        self.heads = heads
        self.c_q = nn.Linear(width, width, bias=qkv_bias)
        self.c_kv = nn.Linear(width if data_width is None else data_width, 2 * width, bias=qkv_bias)
        self.c_proj = nn.Linear(width, width)
        init_linear(self.c_q, init_std)
        init_linear(self.c_kv, init_std)
        init_linear(self.c_proj, init_std)

    def forward(self, x: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        s = data.shape[1]
        q = self.c_q(x).view(b, t, self.heads, -1)
        k, v = self.c_kv(data).view(b, s, self.heads, -1).chunk(2, dim=-1)
        return self.c_proj(_attend(q, k, v))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``. (B, T, width) -> (B, T, width)."""

    def __init__(self, width: int, heads: int, qkv_bias: bool, init_std: float):
        super().__init__()
        self.attn = SelfAttention(width, heads, qkv_bias, init_std)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = MLP(width, init_std)
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ResidualCrossAttentionBlock(nn.Module):
    """Pre-LN block: ``x + attn(ln_1(x), ln_2(data))`` then ``x + mlp(ln_3(x))``.

    x (B, T, width), data (B, S, data_width) -> (B, T, width). Each query token's output depends only on itself and
    ``data`` (queries do not interact), so evaluating the queries in chunks gives the same result.
    """

    def __init__(self, width: int, heads: int, qkv_bias: bool, init_std: float, data_width: int | None = None):
        super().__init__()
        data_width = width if data_width is None else data_width
        self.attn = CrossAttention(width, heads, qkv_bias, init_std, data_width)
        self.ln_1 = nn.LayerNorm(width)
        self.ln_2 = nn.LayerNorm(data_width)
        self.mlp = MLP(width, init_std)
        self.ln_3 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), self.ln_2(data))
        return x + self.mlp(self.ln_3(x))


class Transformer(nn.Module):
    """``layers`` :class:`ResidualAttentionBlock` in sequence (parameter path ``resblocks.{i}``)."""

    def __init__(self, width: int, layers: int, heads: int, qkv_bias: bool, init_std: float):
        super().__init__()
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, qkv_bias, init_std) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x
