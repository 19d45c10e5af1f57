"""LION's networks with the public module and parameter names (github.com/nv-tlabs/LION, ``models/``).

- :class:`PVCNN2Unet` (``models/latent_points_ada.py``): PVCNN set-abstraction stages, a global
  :class:`~.pvcnn.LinearAttention`, feature-propagation stages and a point-wise classifier head; every norm is an
  AdaGN conditioned on the shape latent z0; optional sinusoidal time embedding (priors).
- :class:`PointNetPlusEncoder` (``models/shapelatent_modules.py``): encoder 1, points → z0 mean / log σ (plain
  GroupNorm PVCNN, max pool, ``mlp``).
- :class:`PointTransPVC`: encoder 2, (points, z0) → latent points h0 mean / log σ.
- :class:`LatentPointDecPVC`: decoder, (h0, z0) → points.
- :class:`LionVAE` (``models/vae_adain.Model``): ``style_encoder``, ``encoder``, ``decoder``.
- :class:`PVCNN2Prior` (``models/latent_points_ada_localprior.py``): the latent-point DDM network, ε(h_t, t; z0).
- :class:`PriorSEDrop` (``models/score_sde/resnet.py``): the shape-latent DDM network, ε(z_t, t) — 1×1-conv residual
  blocks with squeeze-excitation and dropout (the released configs' ``latent_pts.style_prior``).
- :class:`PriorSEClip` (same file): its CLIP-conditioned form, ε(z_t, t, c) (``script/train_prior_clip.sh``); with
  ``cfg.clip_dim`` > 0 :class:`PVCNN2Prior` also takes c (``clip_forge_mapping``, ``style_clip``).

All point tensors at the public boundary are (B, N, C) in the model frame (the normalised data frame, see
:mod:`.data`); inside the PVCNN they are channels-first.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import LionConfig
from .pvcnn import LinearAttention, SharedMLP, build_fp_stages, build_sa_stages, run_stage

__all__ = ["VAE_SA_BLOCKS", "VAE_FP_BLOCKS", "PRIOR_SA_BLOCKS", "STYLE_SA_BLOCKS", "timestep_embedding",
           "PVCNN2Unet", "PointNetPlusEncoder", "PointTransPVC", "LatentPointDecPVC", "LionVAE", "PVCNN2Prior",
           "PriorSEDrop", "PriorSEClip", "check_clip_feat"]

VAE_SA_BLOCKS = (  # (conv: out, blocks, resolution), (sa: centres, radius, neighbours, widths)
    ((32, 2, 32), (1024, 0.1, 32, (32, 64))),
    ((64, 3, 16), (256, 0.2, 32, (64, 128))),
    ((128, 3, 8), (64, 0.4, 32, (128, 256))),
    (None, (16, 0.8, 32, (128, 128, 128))),
)
"""``PointTransPVC.sa_blocks`` = ``LatentPointDecPVC.sa_blocks`` (public)."""
VAE_FP_BLOCKS = (  # (fp widths), (conv: out, blocks, resolution)
    ((128, 128), (128, 3, 8)),
    ((128, 128), (128, 3, 8)),
    ((128, 128), (128, 2, 16)),
    ((128, 128, 64), (64, 2, 32)),
)
"""``fp_blocks`` of every PVCNN2Unet (public)."""
PRIOR_SA_BLOCKS = VAE_SA_BLOCKS[:2] + (((128, 3, 8), (64, 0.4, 32, (128, 128))),) + VAE_SA_BLOCKS[3:]
"""``PVCNN2Prior.sa_blocks``: the VAE's table with 128 (not 256) outputs at the third level (public)."""
STYLE_SA_BLOCKS = (
    ((32, 2, 32), (1024, 0.1, 32, (32, 32))),
    ((32, 1, 16), (256, 0.2, 32, (32, 64))),
)
"""``PointNetPlusEncoder.sa_blocks`` (public)."""


def timestep_embedding(t: torch.Tensor, dim: int, scale: float = 1.0) -> torch.Tensor:
    """Sinusoidal embedding (Ho et al. 2020 / the public ``get_timestep_embedding`` and ``PositionalEmbedding``).

    Args:
        t: (B,) float timesteps (LION feeds t ∈ 1..T); dim: width; scale: multiplies t first.
    Returns:
        (B, dim) = [sin(t·s·f_i), cos(t·s·f_i)], f_i = 10000^(−i/(dim/2 − 1)); zero-padded when dim is odd.
    """
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    args = (t.float() * scale)[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return nn.functional.pad(emb, (0, 1)) if dim % 2 else emb


def _centers(cfg: LionConfig, n_levels: int) -> tuple[int, ...]:
    return tuple(cfg.sa_centers[:n_levels])


class PVCNN2Unet(nn.Module):
    """The PVCNN U-Net of every LION point network.

    Args:
        cfg: sizes (widths, grids, centres, AdaGN).
        num_classes: output channels.
        embed_dim: time embedding width (0 = no time input: the VAE networks).
        extra_feature_channels: input channels beyond xyz.
        sa_blocks, fp_blocks: the public tables.
        dropout: of the PVConvs and the head.

    forward((B, 3 + extra, N) inputs (xyz first), style (B, style_dim), t (B,) or None) → (B, num_classes, N).
    """

    def __init__(self, cfg: LionConfig, num_classes: int, embed_dim: int, extra_feature_channels: int, sa_blocks,
                 fp_blocks, dropout: float):
        super().__init__()
        self.embed_dim = embed_dim
        self.time_emb_scales = cfg.embedding_scale
        common = dict(style_dim=cfg.style_dim, groups=cfg.group_norm_groups, init_scale=cfg.ada_mlp_init_scale)
        if embed_dim > 0:
            self.embedf = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.LeakyReLU(0.1),
                                        nn.Linear(embed_dim, embed_dim))
        sa, sa_in, sa_out = build_sa_stages(
            sa_blocks, extra_feature_channels + 3, embed_dim, True, dropout, True, cfg.width_multiplier,
            cfg.voxel_resolution_multiplier, _centers(cfg, len(sa_blocks)), cfg.num_neighbors, **common)
        self.sa_layers = nn.ModuleList(sa)
        self.global_att = LinearAttention(sa_out, 8)
        sa_in[0] = extra_feature_channels
        fp, fp_out = build_fp_stages(fp_blocks, sa_out, sa_in, embed_dim, dropout, True, cfg.width_multiplier,
                                     cfg.voxel_resolution_multiplier, **common)
        self.fp_layers = nn.ModuleList(fp)
        hidden = int(cfg.width_multiplier * 128)
        self.classifier = nn.ModuleList([SharedMLP(fp_out, hidden, 1, **common), nn.Dropout(dropout),
                                         nn.Conv1d(hidden, num_classes, 1)])

    def forward(self, inputs: torch.Tensor, style: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        coords = inputs[:, :3].contiguous()
        features = inputs
        temb = None
        if self.embed_dim > 0:
            if t is None:
                raise ValueError("t is required by a network with a time embedding")
            temb = self.embedf(timestep_embedding(t.reshape(-1).expand(inputs.shape[0]), self.embed_dim,
                                                  self.time_emb_scales))  # (B, D)
        coords_list, skips = [], []
        for i, stage in enumerate(self.sa_layers):
            skips.append(features)
            coords_list.append(coords)
            if i > 0 and temb is not None:
                features = torch.cat([features, temb[:, :, None].expand(-1, -1, features.shape[2])], dim=1)
            for block in run_stage(stage):
                if hasattr(block, "num_centers"):
                    features, coords = block(features, coords, style)
                else:
                    features = block(features, coords, style)
        skips[0] = inputs[:, 3:].contiguous()
        features = self.global_att(features)
        for i, stage in enumerate(self.fp_layers):
            points = coords_list[-1 - i]
            if temb is not None:
                features = torch.cat([features, temb[:, :, None].expand(-1, -1, features.shape[2])], dim=1)
            blocks = run_stage(stage)
            features = blocks[0](points, coords, features, skips[-1 - i], style)
            coords = points
            for block in blocks[1:]:
                features = block(features, coords, style)
        features = self.classifier[0](features, style)
        return self.classifier[2](self.classifier[1](features))


class PointNetPlusEncoder(nn.Module):
    """Encoder 1: points (B, N, 3) → (mu, log_sigma) of the shape latent z0, each (B, style_dim).

    PVCNN set abstraction with plain GroupNorm (no AdaGN, no time), max over the remaining centres, ``mlp``.
    """

    def __init__(self, cfg: LionConfig):
        super().__init__()
        stages, _, out = build_sa_stages(
            STYLE_SA_BLOCKS, 3, 0, True, 0.1, True, cfg.width_multiplier, cfg.voxel_resolution_multiplier,
            _centers(cfg, 2), cfg.num_neighbors, style_dim=0, groups=cfg.group_norm_groups, init_scale=1.0)
        self.layers = nn.ModuleList(stages)
        self.mlp = nn.Linear(out, cfg.style_dim * 2)
        self.zdim = cfg.style_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = coords = x.transpose(1, 2)
        for stage in self.layers:
            for block in run_stage(stage):
                if hasattr(block, "num_centers"):
                    features, coords = block(features, coords)
                else:
                    features = block(features, coords)
        out = self.mlp(features.amax(-1))
        return out[:, :self.zdim], out[:, self.zdim:]


class PointTransPVC(nn.Module):
    """Encoder 2: (points (B, N, 3), z0 (B, style_dim)) → (mu, log_sigma) of the latent points, each
    (B, N, 3 + latent_dim), before the VAE's ``log_sigma_offset``.

    xyz mean = ``skip_weight`` · net + input points; xyz log σ = net − ``pts_sigma_offset``.
    """

    def __init__(self, cfg: LionConfig):
        super().__init__()
        self.zdim = cfg.latent_dim
        self.layers = PVCNN2Unet(cfg, 2 * cfg.latent_dim + 6, 0, 0, VAE_SA_BLOCKS, VAE_FP_BLOCKS, cfg.vae_dropout)
        self.skip_weight = cfg.skip_weight
        self.pts_sigma_offset = cfg.pts_sigma_offset

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.layers(x.transpose(1, 2).contiguous(), style).transpose(1, 2)  # (B, N, 2D + 6)
        pt_mu = self.skip_weight * out[..., :3] + x
        pt_sigma = out[..., 3:6] - self.pts_sigma_offset
        if self.zdim == 0:
            return pt_mu, pt_sigma
        d = self.zdim
        ft_mu, ft_sigma = out[..., 6:6 + d], out[..., 6 + d:]
        return torch.cat([pt_mu, ft_mu], dim=2), torch.cat([pt_sigma, ft_sigma], dim=2)


class LatentPointDecPVC(nn.Module):
    """Decoder: (latent points (B, N, 3 + latent_dim), z0 (B, style_dim)) → points (B, N, 3) =
    ``skip_weight`` · net + the latent points' xyz."""

    def __init__(self, cfg: LionConfig):
        super().__init__()
        self.layers = PVCNN2Unet(cfg, 3, 0, cfg.latent_dim, VAE_SA_BLOCKS, VAE_FP_BLOCKS, cfg.vae_dropout)
        self.skip_weight = cfg.skip_weight

    def forward(self, h: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        out = self.layers(h.transpose(1, 2).contiguous(), style).transpose(1, 2)
        return out * self.skip_weight + h[..., :3]


class LionVAE(nn.Module):
    """The hierarchical VAE's networks (public ``models/vae_adain.Model``): ``style_encoder`` (x → z0),
    ``encoder`` ((x, z0) → h0), ``decoder`` ((h0, z0) → x). The distributions live in :mod:`.model`."""

    def __init__(self, cfg: LionConfig):
        super().__init__()
        self.style_encoder = PointNetPlusEncoder(cfg)
        self.encoder = PointTransPVC(cfg)
        self.decoder = LatentPointDecPVC(cfg)


def check_clip_feat(clip_feat: torch.Tensor | None, clip_dim: int, batch: int) -> torch.Tensor | None:
    """The CLIP feature a prior is called with, checked against its ``clip_dim``.

    Args:
        clip_feat: (batch, clip_dim), (1, clip_dim) or (clip_dim,) float raw CLIP embedding(s), or None.
        clip_dim: the network's ``cfg.clip_dim`` (0 = unconditional).
        batch: B of the call.
    Returns:
        (batch, clip_dim) float tensor (one row broadcast to all), or None for an unconditional network.
    Raises:
        ValueError naming ``clip_feat``: missing for a conditioned network, given to an unconditional one, wrong
        shape, not float or not finite.
    """
    if clip_dim == 0:
        if clip_feat is not None:
            raise ValueError("clip_feat must be None: this LION model is unconditional (clip_dim = 0)")
        return None
    if clip_feat is None:
        raise ValueError(f"clip_feat is required: this LION model is conditioned on CLIP features (clip_dim = "
                         f"{clip_dim}); pass a ({batch}, {clip_dim}) tensor")
    if not isinstance(clip_feat, torch.Tensor) or not clip_feat.is_floating_point():
        what = clip_feat.dtype if isinstance(clip_feat, torch.Tensor) else type(clip_feat).__name__
        raise ValueError(f"clip_feat must be a float tensor, got {what}")
    feat = clip_feat[None] if clip_feat.dim() == 1 else clip_feat
    if feat.dim() != 2 or feat.shape[1] != clip_dim or feat.shape[0] not in (1, batch):
        raise ValueError(f"clip_feat must have shape ({batch}, {clip_dim}), (1, {clip_dim}) or ({clip_dim},), got "
                         f"{tuple(clip_feat.shape)}")
    if not bool(torch.isfinite(feat).all()):
        raise ValueError("clip_feat contains NaN or infinite values")
    return feat.expand(batch, -1)


class PVCNN2Prior(PVCNN2Unet):
    """Latent-point DDM network: ε̂(h_t (B, N, 3 + latent_dim), t (B,) in 1..T, z0 (B, style_dim)[, c (B, clip_dim)])
    → (B, N, 3 + latent_dim). ``mixing_logit`` (1, N·(3 + latent_dim), 1, 1) exists when ``cfg.mixed_prediction``.

    With ``cfg.clip_dim`` > 0 (public ``clipforge.enable``, ``models/latent_points_ada.py``) the style every AdaGN
    sees is ``style_clip([z0, clip_forge_mapping(c)])``: ``clip_forge_mapping`` = Linear(clip_dim → time_dim),
    ``style_clip`` = Linear(style_dim + time_dim → style_dim); c is the raw CLIP embedding.
    """

    def __init__(self, cfg: LionConfig):
        super().__init__(cfg, cfg.latent_point_dim, cfg.time_dim, cfg.latent_dim, PRIOR_SA_BLOCKS, VAE_FP_BLOCKS,
                         cfg.vae_dropout)
        self.num_points = cfg.num_points
        self.clip_dim = cfg.clip_dim
        if cfg.clip_dim > 0:
            self.clip_forge_mapping = nn.Linear(cfg.clip_dim, cfg.time_dim)
            self.style_clip = nn.Linear(cfg.style_dim + cfg.time_dim, cfg.style_dim)
        if cfg.mixed_prediction:
            self.mixing_logit = nn.Parameter(torch.full((1, cfg.num_points * cfg.latent_point_dim, 1, 1),
                                                        cfg.mixing_logit_init))
        else:
            self.mixing_logit = None

    def forward(self, x: torch.Tensor, t: torch.Tensor, style: torch.Tensor,  # type: ignore[override]
                clip_feat: torch.Tensor | None = None) -> torch.Tensor:
        feat = check_clip_feat(clip_feat, self.clip_dim, x.shape[0])
        if feat is not None:
            style = self.style_clip(torch.cat([style, self.clip_forge_mapping(feat.to(style.dtype))], dim=1))
        return super().forward(x.transpose(1, 2).contiguous(), style, t).transpose(1, 2)

    def mixing_coeff(self) -> torch.Tensor | None:
        """sigmoid(mixing_logit) as (1, N, 3 + latent_dim), or None."""
        if self.mixing_logit is None:
            return None
        return torch.sigmoid(self.mixing_logit).view(1, self.num_points, -1)


class _SE(nn.Module):
    def __init__(self, channel: int, reduction: int = 8):
        super().__init__()
        self.fc = nn.Sequential(nn.Conv2d(channel, max(channel // reduction, 1), 1, 1, bias=False), nn.ReLU(),
                                nn.Conv2d(max(channel // reduction, 1), channel, 1, 1, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x)


class _ResBlockSEDrop(nn.Module):
    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 1, 1)
        self.conv2 = nn.Conv2d(dim, dim, 1, 1)
        self.SE = _SE(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.conv1(x + temb))
        out = torch.relu(self.conv2(self.dropout(out)))
        return x + self.SE(out)


class PriorSEDrop(nn.Module):
    """Shape-latent DDM network: ε̂(z_t (B, style_dim), t (B,) in 1..T) → (B, style_dim).

    temb = Conv(4E → nf)(Conv(E → 4E)(sinusoid_E(t))) (no activation between, as public); x → ``input_layer`` →
    ``prior_blocks`` × [x + SE(ReLU(conv2(dropout(ReLU(conv1(x + temb))))))] → ``output_layer``. 1×1 convs on
    (B, C, 1, 1) as the public code. ``mixing_logit`` (1, style_dim, 1, 1) when ``cfg.mixed_prediction``.
    ``forward``'s ``clip_feat`` must be None (an unconditional network; :class:`PriorSEClip` takes one).
    """

    def __init__(self, cfg: LionConfig):
        super().__init__()
        nf, emb = cfg.prior_channels, cfg.prior_embedding_dim
        self.embedding_dim, self.embedding_scale = emb, cfg.embedding_scale
        self.temb_layer = nn.Sequential(nn.Conv2d(emb, emb * 4, 1, 1), nn.Conv2d(emb * 4, nf, 1, 1))
        self.input_layer = nn.Conv2d(cfg.style_dim, nf, 1, 1)
        self.all_modules = nn.ModuleList([self._block(cfg) for _ in range(cfg.prior_blocks)])
        self.output_layer = nn.Conv2d(nf, cfg.style_dim, 1, 1)
        if cfg.mixed_prediction:
            self.mixing_logit = nn.Parameter(torch.full((1, cfg.style_dim, 1, 1), cfg.mixing_logit_init))
        else:
            self.mixing_logit = None

    def _block(self, cfg: LionConfig) -> nn.Module:
        return _ResBlockSEDrop(cfg.prior_channels, cfg.prior_dropout)

    def forward(self, x: torch.Tensor, t: torch.Tensor, clip_feat: torch.Tensor | None = None) -> torch.Tensor:
        check_clip_feat(clip_feat, 0, x.shape[0])
        temb = timestep_embedding(t.reshape(-1).expand(x.shape[0]), self.embedding_dim, self.embedding_scale)
        temb = self.temb_layer(temb[:, :, None, None])
        h = self.input_layer(x[:, :, None, None])
        for block in self.all_modules:
            h = block(h, temb)
        return self.output_layer(h)[:, :, 0, 0]

    def mixing_coeff(self) -> torch.Tensor | None:
        """sigmoid(mixing_logit) as (1, style_dim), or None."""
        return None if self.mixing_logit is None else torch.sigmoid(self.mixing_logit).view(1, -1)


class _ResBlockSEClip(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.conv1 = nn.Conv2d(2 * dim, dim, 1, 1)
        self.conv2 = nn.Conv2d(dim, dim, 1, 1)
        self.SE = _SE(dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        out = torch.cat([x + temb[:, :self.dim], temb[:, self.dim:]], dim=1)
        out = torch.relu(self.conv2(torch.relu(self.conv1(out))))
        return x + self.SE(out)


class PriorSEClip(PriorSEDrop):
    """The CLIP-conditioned shape-latent DDM network (public ``PriorSEClip``, ``models/score_sde/resnet.py``):
    ε̂(z_t (B, style_dim), t (B,) in 1..T, c (B, clip_dim) raw CLIP embedding) → (B, style_dim).

    ``clip_feat_mapping`` = Conv1d(clip_dim → nf, 1) maps c to (B, nf, 1, 1), concatenated after the time embedding
    (B, 2nf, 1, 1); each block (``ResBlockSEClip``, no dropout) is x + SE(ReLU(conv2(ReLU(conv1([x + temb_t,
    temb_c]))))) with conv1 2nf → nf. Parameter names as public; ``temb_layer``, ``input_layer``, ``output_layer`` and
    ``mixing_logit`` as :class:`PriorSEDrop`.
    """

    def __init__(self, cfg: LionConfig):
        if cfg.clip_dim <= 0:
            raise ValueError("PriorSEClip needs cfg.clip_dim > 0 (use PriorSEDrop for an unconditional prior)")
        super().__init__(cfg)
        self.clip_dim = cfg.clip_dim
        self.clip_feat_mapping = nn.Conv1d(cfg.clip_dim, cfg.prior_channels, 1)

    def _block(self, cfg: LionConfig) -> nn.Module:
        return _ResBlockSEClip(cfg.prior_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor,  # type: ignore[override]
                clip_feat: torch.Tensor | None = None) -> torch.Tensor:
        feat = check_clip_feat(clip_feat, self.clip_dim, x.shape[0])
        temb = timestep_embedding(t.reshape(-1).expand(x.shape[0]), self.embedding_dim, self.embedding_scale)
        temb = self.temb_layer(temb[:, :, None, None])
        cond = self.clip_feat_mapping(feat.to(temb.dtype)[:, :, None])[:, :, :, None]  # (B, nf, 1, 1)
        temb = torch.cat([temb, cond], dim=1)
        h = self.input_layer(x[:, :, None, None])
        for block in self.all_modules:
            h = block(h, temb)
        return self.output_layer(h)[:, :, 0, 0]
