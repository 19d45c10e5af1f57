"""LION architectures and diffusion settings as configs: the public ShapeNet 2048-point presets plus ``tiny``.

LION (Zeng et al., "LION: Latent Point Diffusion Models for 3D Shape Generation", NeurIPS 2022). Facts from the public
code (github.com/nv-tlabs/LION): the released prior configs ``config/{chair,airplane,car}_prior_cfg.yml`` (the
``cfg.yml`` stored beside each released ``model.pt``) over ``default_config.py``:

- VAE (``models/vae_adain.py``): ``shapelatent.latent_dim`` = 1 (extra channels per latent point, so a latent point is
  3 + 1 numbers), ``latent_pts.style_dim`` = 128 (the global shape latent), ``shapelatent.log_sigma_offset`` = 6
  (subtracted from the latent points' log σ), ``latent_pts.skip_weight`` = 0.01 (encoder/decoder outputs are
  ``skip_weight · net + input``), ``latent_pts.pts_sigma_offset`` = 0, ``latent_pts.ada_mlp_init_scale`` = 0.1,
  ``ddpm.dropout`` = 0.1, ``data.tr_max_sample_points`` = 2048, ``latent_pts.style_mlp`` = '' (no style MLP: the
  decoders see z0 itself), KL weights ``weight_kl_pt`` = ``weight_kl_feat`` = ``weight_kl_glb`` = 1, reconstruction
  ``ddpm.loss_type`` = ``l1_sum``, KL coefficient annealed to ``sde.kl_max_coeff_vada`` = 0.5.
- PVCNN blocks (``models/latent_points_ada.py``, ``models/shapelatent_modules.py``): the ``sa_blocks`` /
  ``fp_blocks`` tables of ``PointTransPVC``, ``LatentPointDecPVC``, ``PVCNN2Prior`` and ``PointNetPlusEncoder``
  (voxel grids 32 / 16 / 8; 1024 / 256 / 64 / 16 centres), reproduced in :mod:`.networks`.
- Latent-point prior (``models/latent_points_ada_localprior.PVCNN2Prior``): ``ddpm.time_dim`` = 64 (time embedding),
  dropout ``ddpm.dropout`` = 0.1, ``sde.embedding_scale`` = 1.
- Shape-latent prior (``latent_pts.style_prior`` = ``models.score_sde.resnet.PriorSEDrop``): ``sde.num_channels_dae``
  = 2048, ``sde.num_cell_per_scale_dae`` = 8 residual SE blocks, ``sde.embedding_dim`` = 128 (positional),
  ``sde.dropout`` = 0.4 chair / 0.2 airplane / 0.3 car.
- Diffusion (``utils/diffusion_pvd.DiffusionDiscretized``, ``models/lion.py``): ``ddpm.num_steps`` = 1000,
  ``ddpm.sched_mode`` = linear, ``ddpm.beta_1`` = 1e-4, ``ddpm.beta_T`` = 0.02, ε prediction, ancestral variance
  β_t (``fixedlarge``), ``ddpm.ddim_step`` = 200 for the fast sampler. ``sde.mixed_prediction`` is **false** in the
  released configs (``models/lion.py`` asserts it) although the paper trains with the mixed score; when true,
  ``sde.mixing_logit_init`` = −6 initialises one learned logit per latent dimension (:mod:`.diffusion`).
- Text / image conditioning (``script/train_prior_clip.sh``, CLIP-Forge style): ``clipforge.enable`` with
  ``clipforge.feat_dim`` = 512 and ``clipforge.clip_model`` = ViT-B/32; the VAE is the unconditional one, only the two
  priors take the CLIP feature (``PriorSEClip`` as ``latent_pts.style_prior``; ``clip_forge_mapping`` and
  ``style_clip`` in the latent-point prior). The released checkpoints are unconditional (``clip_dim`` = 0).
- Data (``datasets/pointflow_datasets.py``): ShapeNetCore.v2.PC15k, ``normalize_global`` (one mean (3,) and one
  scalar std over the training set); see :mod:`.data`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..params import Config, ParamError, param

__all__ = ["LionConfig", "PRESETS", "TINY_PRESETS", "get_preset", "HF_REPO"]

HF_REPO = "xiaohui2022/lion_ckpt"
"""The Hugging Face repository of the released checkpoints (``unconditional/<category>/checkpoints/model.pt``)."""


@dataclass
class LionConfig(Config):
    """One LION model: the hierarchical VAE, its two latent priors and their diffusion."""

    name: str = param("chair", doc="Preset name (the public category, or tiny).")
    num_points: int = param(2048, doc="Points per shape (and latent points per shape).", low=4, high=100000)
    latent_dim: int = param(1, doc="Extra feature channels of a latent point (shapelatent.latent_dim).", low=0,
                            high=256)
    style_dim: int = param(128, doc="Width of the global shape latent z0 (latent_pts.style_dim).", low=1, high=4096)
    width_multiplier: float = param(1.0, doc="Scale of every PVCNN channel width (1 = public).", low=0.0,
                                    high=16.0, low_exclusive=True)
    voxel_resolution_multiplier: float = param(1.0, doc="Scale of the voxel grids 32/16/8 (1 = public).", low=0.0,
                                               high=16.0, low_exclusive=True)
    first_centers: int = param(1024, doc="Centres of the first set-abstraction level; the next three have 1/4, 1/16 "
                               "and 1/64 of them (public 1024, 256, 64, 16).", low=1, high=100000)
    num_neighbors: int = param(32, doc="Ball-query neighbours per centre.", low=1, high=1024)
    group_norm_groups: int = param(8, doc="Groups of every group norm (8 in the public code).", low=1, high=64)
    skip_weight: float = param(0.01, doc="Encoder/decoder output = skip_weight * network + input.", low=0.0,
                               high=10.0)
    pts_sigma_offset: float = param(0.0, doc="Subtracted from the latent points' xyz log sigma in the encoder.",
                                    low=-100.0, high=100.0)
    log_sigma_offset: float = param(6.0, doc="Subtracted from every latent point log sigma (shapelatent."
                                    "log_sigma_offset).", low=-100.0, high=100.0)
    ada_mlp_init_scale: float = param(0.1, doc="Init scale of the AdaGN style layers (random weights only).",
                                      low=0.0, high=10.0)
    vae_dropout: float = param(0.1, doc="Dropout of the VAE and latent-point prior networks (ddpm.dropout).",
                               low=0.0, high=0.99)
    time_dim: int = param(64, doc="Time embedding width of the latent-point prior (ddpm.time_dim).", low=2,
                          high=4096)
    prior_channels: int = param(2048, doc="Width of the shape-latent prior (sde.num_channels_dae).", low=1,
                                high=65536)
    prior_blocks: int = param(8, doc="Residual SE blocks of the shape-latent prior (sde.num_cell_per_scale_dae).",
                              low=1, high=128)
    prior_embedding_dim: int = param(128, doc="Time embedding width of the shape-latent prior (sde.embedding_dim).",
                                     low=2, high=4096)
    prior_dropout: float = param(0.4, doc="Dropout of the shape-latent prior (sde.dropout).", low=0.0, high=0.99)
    embedding_scale: float = param(1.0, doc="Time embedding input scale (sde.embedding_scale); t in 1..T.",
                                   low=0.0, high=10000.0, low_exclusive=True)
    mixed_prediction: bool = param(False, doc="Mixed score parameterisation with a learned mixing logit per latent "
                                   "dimension (false in the released checkpoints).")
    mixing_logit_init: float = param(-6.0, doc="Initial mixing logit (sde.mixing_logit_init).", low=-100.0,
                                     high=100.0)
    timesteps: int = param(1000, doc="Diffusion steps T (ddpm.num_steps).", low=2, high=100000)
    beta_start: float = param(1e-4, doc="beta_1 of the linear schedule.", low=0.0, high=1.0, low_exclusive=True)
    beta_end: float = param(0.02, doc="beta_T of the linear schedule.", low=0.0, high=1.0, low_exclusive=True)
    ddim_steps: int = param(200, doc="Default steps of the fast (DDIM) sampler (ddpm.ddim_step).", low=1,
                            high=100000)
    ddim_eta: float = param(1.0, doc="Noise of the DDIM sampler: 0 deterministic, 1 the public default "
                            "(sde.ddim_kappa).", low=0.0, high=1.0)
    kl_weight: float = param(0.5, doc="Final KL coefficient of VAE training (sde.kl_max_coeff_vada).", low=0.0,
                             high=100.0)
    clip_dim: int = param(0, doc="Width of the CLIP feature both priors are conditioned on (clipforge.feat_dim: 512 "
                          "for ViT-B/32); 0 = unconditional (the released models).", low=0, high=4096)
    clip_model: str = param("ViT-B-32/openai", doc="The CLIP whose raw (unnormalised) embeddings condition the priors "
                            "(clipforge.clip_model ViT-B/32); used only when clip_dim > 0.")

    def validate(self) -> None:
        if self.beta_start >= self.beta_end:
            raise ParamError(f"beta_start = {self.beta_start} must be below beta_end = {self.beta_end}")
        if self.ddim_steps > self.timesteps:
            raise ParamError(f"ddim_steps = {self.ddim_steps} exceeds timesteps = {self.timesteps}")
        if self.first_centers > self.num_points:
            raise ParamError(f"first_centers = {self.first_centers} exceeds num_points = {self.num_points}")
        for width in (32, 64, 128):
            channels = int(self.width_multiplier * width)
            if channels < self.group_norm_groups or channels % self.group_norm_groups:
                raise ParamError(f"width_multiplier = {self.width_multiplier} gives {channels} channels, not a "
                                 f"multiple of group_norm_groups = {self.group_norm_groups}")
        if self.clip_dim > 0 and not self.clip_model.strip():
            raise ParamError(f"clip_model must name a CLIP model when clip_dim = {self.clip_dim} > 0")
        if int(self.voxel_resolution_multiplier * 8) < 1:
            raise ParamError(f"voxel_resolution_multiplier = {self.voxel_resolution_multiplier} makes the 8³ grid "
                             f"empty")

    @property
    def sa_centers(self) -> tuple[int, int, int, int]:
        """Centres of the four set-abstraction levels (each at least 1)."""
        return tuple(max(self.first_centers // 4 ** i, 1) for i in range(4))  # type: ignore[return-value]

    @property
    def latent_point_dim(self) -> int:
        """Numbers per latent point: xyz + ``latent_dim`` features."""
        return 3 + self.latent_dim

    @property
    def conditioned(self) -> bool:
        """Whether both priors take a CLIP feature (``clip_dim`` > 0)."""
        return self.clip_dim > 0


PRESETS: dict[str, LionConfig] = {
    "chair": LionConfig(name="chair", prior_dropout=0.4),
    "airplane": LionConfig(name="airplane", prior_dropout=0.2),
    "car": LionConfig(name="car", prior_dropout=0.3),
}
"""The released unconditional ShapeNet models (2048 points; ``config/<name>_prior_cfg.yml``). They share every
parameter shape; only the shape-latent prior's dropout differs."""

TINY_PRESETS: dict[str, LionConfig] = {
    "tiny": LionConfig(name="tiny", num_points=128, style_dim=16, width_multiplier=0.25,
                       voxel_resolution_multiplier=0.25, first_centers=64, num_neighbors=8,
                       group_norm_groups=4, time_dim=16, prior_channels=32, prior_blocks=2, prior_embedding_dim=16,
                       prior_dropout=0.0, vae_dropout=0.0, ddim_steps=10, skip_weight=0.1),
}
"""Ours: the ``tiny-random`` model (quarter widths, 8/4/2 voxel grids, 128 points, 64/16/4/1 centres, a 32-wide shape-latent prior)."""


def get_preset(name: str) -> LionConfig:
    """The preset ``name`` (a key of :data:`PRESETS` or :data:`TINY_PRESETS`), a fresh copy.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    table = {**PRESETS, **TINY_PRESETS}
    if name not in table:
        raise ValueError(f"unknown LION preset {name!r}; known: {', '.join(table)}")
    return replace(table[name])
