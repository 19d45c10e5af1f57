"""The SITA-VAE shape branch of Michelangelo (Zhao et al., NeurIPS 2023, §3.1 "Shape-Image-Text Aligned VAE").

Data flow (shapes for the public ``shapevae-256`` preset, B shapes, N surface points, M query points)::

    pc (B, N, 3), normals (B, N, 3)
      -> Fourier(xyz) (B, N, 51) ++ normals -> input_proj -> (B, N, 768)
      -> perceiver cross-attention from 257 learned queries (256 latents + 1 CLS) -> (B, 257, 768)
      -> 8 self-attention blocks -> ln_post
      -> token 0 = shape_embed (B, 768) -> @ shape_projection -> (B, 768) aligned with CLIP image/text embeddings
      -> tokens 1.. -> pre_kl -> DiagonalGaussian(mean, logvar) over (B, 256, 64) -> sample / mode = latents
    latents (B, 256, 64) -> post_kl -> 16 self-attention blocks = tokens (B, 256, 768)
    query xyz (B, M, 3) -> Fourier -> query_proj -> cross-attention to tokens -> ln_post -> output_proj -> (B, M) logits

Module paths equal the public ``AlignedShapeLatentPerceiver`` (``michelangelo/models/tsal/sal_perceiver.py``):
``encoder.{query, input_proj, cross_attn, self_attn, ln_post}``, ``pre_kl``, ``post_kl``, ``transformer``,
``geo_decoder.{query_proj, cross_attn_decoder, ln_post, output_proj}``; plus ``shape_projection`` (public
``CLIPAlignedShapeAsLatentModule.shape_projection``, a (width, clip_dim) matrix applied as ``x @ P``) and
``logit_scale`` (the public code reads CLIP's frozen one). See :mod:`.checkpoint` for the key mapping.

Frame and units: points are in the model frame of the public training data, the shape's bounding box centred at the
origin and scaled so its largest half-extent is 1 (the public example surface spans [-1, 1] on its longest axis),
Y up. Occupancy logits are > 0 inside the shape; the public extraction queries [-1.1, 1.1]³ (generation) or
[-1.25, 1.25]³ (reconstruction) and runs marching cubes at level 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .config import ShapeVAEConfig
from .layers import ResidualCrossAttentionBlock, Transformer

__all__ = ["FourierEmbedder", "DiagonalGaussian", "PerceiverEncoder", "OccupancyDecoder", "ShapeVAE",
           "count_parameters"]


class FourierEmbedder(nn.Module):
    """Sinusoidal embedding of coordinates: (..., d) -> (..., d·(2·num_freqs + 1)).

    Output layout (public ``FourierEmbedder`` with ``logspace=True, include_input=True``):
    ``[x, sin(x ⊗ f), cos(x ⊗ f)]`` where ``x ⊗ f`` is flattened coordinate-major, i.e.
    ``[x0·f0, x0·f1, …, x0·f_{n-1}, x1·f0, …]``, and ``f_i = 2^i`` (times π if ``include_pi``).
    Computed in float32 whatever the input dtype; no parameters or buffers (the public buffer is non-persistent).
    """

    def __init__(self, num_freqs: int, include_pi: bool, input_dim: int = 3):
        super().__init__()
        self.num_freqs = num_freqs
        self.include_pi = include_pi
        self.out_dim = input_dim * (2 * num_freqs + 1)

    def frequencies(self, device: torch.device | None = None) -> torch.Tensor:
        """(num_freqs,) float32: 2^0 … 2^(num_freqs-1), times π if ``include_pi``."""
        freqs = 2.0 ** torch.arange(self.num_freqs, dtype=torch.float32, device=device)
        return freqs * math.pi if self.include_pi else freqs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.num_freqs == 0:
            return x
        arg = (x[..., None] * self.frequencies(x.device)).flatten(-2)
        return torch.cat([x, arg.sin(), arg.cos()], dim=-1)


class DiagonalGaussian:
    """The VAE posterior q(z|x) = N(mean, diag(exp(logvar))) over latents (B, L, C).

    ``logvar`` is clamped to [-30, 20] like the public ``DiagonalGaussianDistribution``.

    Attributes: ``mean``, ``logvar``, ``std``, ``var``: (B, L, C), dtype of the moments.
    """

    def __init__(self, moments: torch.Tensor):
        """moments: (B, L, 2·C), [mean | logvar] along the last dim (public ``pre_kl`` output layout)."""
        if moments.ndim != 3 or moments.shape[-1] % 2:
            raise ValueError(f"moments must be (B, L, 2*C), got {tuple(moments.shape)}")
        self.mean, logvar = moments.chunk(2, dim=-1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean + std·ε, ε ~ N(0, I) drawn with ``generator`` (on the moments' device). (B, L, C)."""
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        """The mean (B, L, C)."""
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per shape, (B,) float32: 0.5·mean over tokens and channels of
        μ² + σ² − 1 − log σ².

        A MEAN over the L·C entries, not a sum: the public loss (``ContrastKLNearFar``, ``kl(dims=(1, 2))``)
        averages, and its ``kl_weight`` 0.001 is relative to that mean.
        """
        mean, var, logvar = self.mean.float(), self.var.float(), self.logvar.float()
        return 0.5 * (mean.pow(2) + var - 1.0 - logvar).mean(dim=(1, 2))


class PerceiverEncoder(nn.Module):
    """Point cloud -> (B, num_queries, width) tokens by cross-attention from learned queries + self-attention.

    ``num_queries`` = ``num_latents + 1`` in the aligned VAE (row 0 becomes the CLS/shape embedding).
    """

    def __init__(self, cfg: ShapeVAEConfig, fourier: FourierEmbedder, init_std: float):
        super().__init__()
        self.fourier_embedder = fourier
        self.query = nn.Parameter(torch.randn(cfg.num_latents + 1, cfg.width) * 0.02)
        self.input_proj = nn.Linear(fourier.out_dim + cfg.point_feats, cfg.width)
        self.cross_attn = ResidualCrossAttentionBlock(cfg.width, cfg.heads, cfg.qkv_bias, init_std)
        self.self_attn = Transformer(cfg.width, cfg.num_encoder_layers, cfg.heads, cfg.qkv_bias, init_std)
        self.ln_post = nn.LayerNorm(cfg.width) if cfg.use_ln_post else None

    def forward(self, pc: torch.Tensor, feats: torch.Tensor | None) -> torch.Tensor:
        """pc (B, N, 3), feats (B, N, point_feats) or None -> (B, num_latents + 1, width)."""
        data = self.fourier_embedder(pc)
        if feats is not None:
            data = torch.cat([data, feats.float()], dim=-1)
        data = self.input_proj(data.to(self.input_proj.weight.dtype))
        x = self.query.unsqueeze(0).expand(pc.shape[0], -1, -1)
        x = self.cross_attn(x, data)
        x = self.self_attn(x)
        if self.ln_post is not None:
            x = self.ln_post(x)
        return x


class OccupancyDecoder(nn.Module):
    """Query points attend to the decoded latent tokens: xyz (B, M, 3), tokens (B, L, width) -> (B, M, 1) logits."""

    def __init__(self, cfg: ShapeVAEConfig, fourier: FourierEmbedder, init_std: float):
        super().__init__()
        self.fourier_embedder = fourier
        self.query_proj = nn.Linear(fourier.out_dim, cfg.width)
        self.cross_attn_decoder = ResidualCrossAttentionBlock(cfg.width, cfg.heads, cfg.qkv_bias, init_std)
        self.ln_post = nn.LayerNorm(cfg.width)
        self.output_proj = nn.Linear(cfg.width, 1)

    def forward(self, xyz: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        q = self.query_proj(self.fourier_embedder(xyz).to(self.query_proj.weight.dtype))
        x = self.cross_attn_decoder(q, tokens)
        return self.output_proj(self.ln_post(x))


def _check_points(name: str, x: torch.Tensor, channels: int, batch: int | None = None,
                  count: int | None = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.ndim != 3 or x.shape[-1] != channels:
        raise ValueError(f"{name} must have shape (B, N, {channels}), got {tuple(x.shape)}")
    if batch is not None and x.shape[0] != batch:
        raise ValueError(f"{name} has batch {x.shape[0]}, expected {batch}")
    if count is not None and x.shape[1] != count:
        raise ValueError(f"{name} has {x.shape[1]} rows, expected {count}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")


class ShapeVAE(nn.Module):
    """SITA-VAE shape encoder/decoder with the CLIP-aligned CLS embedding (paper §3.1).

    Args:
        config: sizes; ``ShapeVAEConfig()`` is the public shapevae-256.

    Build on the meta device to count parameters without allocating: ``with torch.device("meta"): ShapeVAE(cfg)``.
    """

    def __init__(self, config: ShapeVAEConfig):
        super().__init__()
        if not isinstance(config, ShapeVAEConfig):
            raise ValueError(f"config must be a ShapeVAEConfig, got {type(config).__name__}")
        self.config = config
        init_std = config.init_scale / math.sqrt(config.width)
        self.fourier_embedder = FourierEmbedder(config.num_freqs, config.include_pi)
        self.encoder = PerceiverEncoder(config, self.fourier_embedder, init_std)
        self.pre_kl = nn.Linear(config.width, 2 * config.embed_dim)
        self.post_kl = nn.Linear(config.embed_dim, config.width)
        self.transformer = Transformer(config.width, config.num_decoder_layers, config.heads, config.qkv_bias,
                                       init_std)
        self.geo_decoder = OccupancyDecoder(config, self.fourier_embedder, init_std)
        self.shape_projection = nn.Parameter(torch.randn(config.width, config.clip_embed_dim)
                                             * config.clip_embed_dim ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))

    @property
    def latent_shape(self) -> tuple[int, int]:
        """(num_latents, embed_dim) of one shape's latents."""
        return self.config.num_latents, self.config.embed_dim

    def encode(self, pc: torch.Tensor, feats: torch.Tensor | None, sample_posterior: bool = True,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, DiagonalGaussian]:
        """Encode surface samples.

        Args:
            pc: (B, N, 3) float surface points in the model frame (N = 4096 in the public code; any N ≥ 1 works).
            feats: (B, N, point_feats) float unit surface normals (same frame); ``None`` only if point_feats = 0.
            sample_posterior: draw latents from the posterior (training, variations) or take its mean.
            generator: RNG for the posterior sample.

        Returns:
            shape_embed (B, width): the CLS token (project with :meth:`project_shape_embed` for the alignment loss),
            latents (B, num_latents, embed_dim): the sampled (or mean) KL latents, in the VAE's dtype,
            posterior: :class:`DiagonalGaussian` over those latents.

        Raises:
            ValueError: wrong shapes, non-float input, batch/point-count mismatch between pc and feats.
        """
        _check_points("pc", pc, 3)
        if self.config.point_feats:
            if feats is None:
                raise ValueError(f"feats (normals) are required: the model expects point_feats="
                                 f"{self.config.point_feats}")
            _check_points("feats", feats, self.config.point_feats, pc.shape[0], pc.shape[1])
        elif feats is not None and feats.shape[-1] != 0:
            raise ValueError(f"feats must be None for point_feats=0, got shape {tuple(feats.shape)}")
        x = self.encoder(pc, feats if self.config.point_feats else None)
        shape_embed, tokens = x[:, 0], x[:, 1:]
        posterior = DiagonalGaussian(self.pre_kl(tokens))
        latents = posterior.sample(generator) if sample_posterior else posterior.mode()
        return shape_embed, latents, posterior

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, num_latents, embed_dim) -> tokens (B, num_latents, width) for :meth:`query`.

        Raises ValueError if the latent shape is not (B, num_latents, embed_dim).
        """
        if latents.ndim != 3 or tuple(latents.shape[1:]) != self.latent_shape:
            raise ValueError(f"latents must have shape (B, {self.latent_shape[0]}, {self.latent_shape[1]}), "
                             f"got {tuple(latents.shape)}")
        return self.transformer(self.post_kl(latents.to(self.post_kl.weight.dtype)))

    def query(self, tokens: torch.Tensor, xyz: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Occupancy logits at arbitrary points.

        Args:
            tokens: (B, num_latents, width) from :meth:`decode`.
            xyz: (B, M, 3) float query points in the model frame.
            chunk_size: evaluate at most this many points per forward (bounds activation memory to
                O(B·chunk_size·width)); ``None`` = all at once. The result does not depend on it (query points do not
                interact).

        Returns:
            (B, M) float32 logits; the shape is where logit > 0 (sigmoid = occupancy probability).
        """
        if tokens.ndim != 3 or tokens.shape[-1] != self.config.width:
            raise ValueError(f"tokens must have shape (B, L, {self.config.width}), got {tuple(tokens.shape)}")
        _check_points("xyz", xyz, 3, tokens.shape[0])
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                       or chunk_size <= 0):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        m = xyz.shape[1]
        step = m if chunk_size is None else chunk_size
        out = [self.geo_decoder(xyz[:, i:i + step], tokens).squeeze(-1).float() for i in range(0, m, step)]
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)

    def project_shape_embed(self, shape_embed: torch.Tensor) -> torch.Tensor:
        """(B, width) CLS token -> (B, clip_embed_dim) ``shape_embed @ shape_projection`` (not normalised), the
        shape embedding of the contrastive alignment with CLIP image/text embeddings (paper §3.1, Eq. 2)."""
        if shape_embed.ndim != 2 or shape_embed.shape[-1] != self.config.width:
            raise ValueError(f"shape_embed must have shape (B, {self.config.width}), got {tuple(shape_embed.shape)}")
        return shape_embed @ self.shape_projection

    def forward(self, pc: torch.Tensor, feats: torch.Tensor | None, queries: torch.Tensor,
                sample_posterior: bool = True, generator: torch.Generator | None = None,
                ) -> tuple[torch.Tensor, DiagonalGaussian, torch.Tensor]:
        """Encode, decode and query in one call (training).

        Args: as :meth:`encode`; queries (B, M, 3) occupancy query points.

        Returns:
            logits (B, M) float32, posterior, shape_embed (B, width) (the un-projected CLS token).
        """
        shape_embed, latents, posterior = self.encode(pc, feats, sample_posterior, generator)
        logits = self.query(self.decode(latents), queries)
        return logits, posterior, shape_embed


def count_parameters(module: nn.Module, names: Sequence[str] | None = None) -> int:
    """Number of parameter elements (works on the meta device). ``names``: only parameters with these prefixes."""
    return sum(p.numel() for n, p in module.named_parameters()
               if names is None or any(n.startswith(prefix) for prefix in names))
