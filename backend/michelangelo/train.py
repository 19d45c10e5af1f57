"""Training Michelangelo on a folder of meshes: the SITA-VAE (``shape_vae``), then the ASLDM denoiser (``shape_ldm``).

Zhao et al., "Michelangelo" (NeurIPS 2023). Losses, as the paper and the public code
(``models/tsal/loss.py: ContrastKLNearFar``, ``models/asl_diffusion/clip_asl_diffuser_pl_module.py``):

- shape VAE (§3.1):
  ``L = BCE(logits_vol, occ_vol) + near_weight · BCE(logits_near, occ_near) + kl_weight · KL + contrast_weight · L_c``
  with the public weights near 0.1, KL 0.001 (KL averaged over the latent entries), contrast 0.1. ``L_c`` is the
  symmetric InfoNCE between the L2-normalised projected CLS embedding ``ShapeVAE.project_shape_embed`` and the frozen
  CLIP text embeddings (captions) and image embeddings (images), summed over the modalities the data has, with CLIP's
  own temperature ``exp(logit_scale)`` (copied into ``ShapeVAE.logit_scale`` and kept frozen, as the public code reads
  CLIP's frozen value). Without captions or images the contrastive term is skipped and CLIP is not loaded.
- denoiser (§3.2): ε-prediction MSE, ``|| ε − ε_θ(√ᾱ_t z_0 + √(1−ᾱ_t) ε, t, c) ||²``, t ~ U{0, …, 999}, the DDPM
  scaled-linear β schedule (``DDPMScheduler.add_noise``); ``z_0`` = frozen VAE latents (posterior sample by default, as
  the public ``encode_first_stage``) × ``z_scale_factor``; ``c`` = CLIP tokens of a caption or image, replaced by the
  unconditional embedding with probability ``condition_drop_prob`` = 0.1 (public ``zero_embedding_radio``), which is
  what classifier-free guidance needs.

Optimiser: AdamW(betas (0.9, 0.99), eps 1e-6, weight decay 0.01) with linear warm-up then cosine decay to
``lr · 1e-3`` (public ``LambdaWarmUpCosineFactorScheduler``, f_min 1e-3); the loop, the output folder's state and log,
and exact resume are :mod:`backend.models.training`'s, shared with LION.

Output folder (``out``): our checkpoint format (:func:`.checkpoint.save_checkpoint`: ``config.json`` +
``vae.safetensors`` [+ ``denoiser.safetensors``]) that ``load_michelangelo(out)`` reads; ``train_state.pt`` (optimiser,
learning-rate schedule, step) for ``resume``; ``loss_log.jsonl`` (one JSON object per logged step). Every step's random
draws (items, point subsets, posterior noise, timesteps, condition drops) come from generators seeded by
``(seed, step)``, so a resumed run continues the exact trajectory of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..models.devices import resolve_device
from ..models.training import LOSS_LOG, STATE_FILE, TrainingError, batch_indices, load_state, lr_factor, \
    prepare_out, train_loop
from ..params import Config, ParamError, param, parse_config
from .asldm import ASLDMDenoiser
from .checkpoint import CheckpointError, is_our_checkpoint, load_checkpoint, save_checkpoint
from .conditioner import CLIPConditioner
from .config import PRESETS, MichelangeloConfig, get_preset
from .data import DatasetError, ShapeDataset, collate_shapes, grid_points
from .sampling import ddpm_scheduler
from .shape_vae import ShapeVAE

log = logging.getLogger(__name__)

__all__ = ["ShapeVAETrainConfig", "ShapeLDMTrainConfig", "TrainResult", "TrainingError", "train_shape_vae",
           "train_shape_ldm", "contrastive_loss", "occupancy_losses", "lr_factor", "decode_occupancy",
           "reconstruct_occupancy", "occupancy_iou", "TRAINERS", "STATE_FILE", "LOSS_LOG"]

_PRESETS = tuple(sorted(PRESETS))


@dataclass
class _Common(Config):
    """Fields both trainings share (the trainer-specific configs below extend it)."""

    data: str = param(doc="folder of meshes (.obj .ply .stl .glb .gltf .off) with optional captions.json / "
                          "<stem>.txt captions and <stem>.png|jpg images")
    out: str = param(doc="output folder: checkpoint (config.json + *.safetensors), train_state.pt, loss_log.jsonl")
    steps: int = param(1000, doc="total optimisation steps (a resumed run continues up to this many)", low=1)
    batch_size: int = param(8, doc="shapes per step (distinct shapes while batch_size <= number of shapes)", low=1)
    lr: float = param(1e-4, doc="peak learning rate of AdamW", low=0.0)
    warmup_steps: int = param(100, doc="linear learning-rate warm-up steps, then cosine decay to lr * 1e-3", low=0)
    weight_decay: float = param(0.01, doc="AdamW weight decay (public 0.01)", low=0.0)
    grad_clip: float = param(1.0, doc="clip the gradient norm to this before each step (0 = no clipping)", low=0.0)
    num_surface_points: int = param(4096, doc="surface points + normals per shape fed to the VAE encoder (public "
                                              "4096)", low=1)
    seed: int = param(0, doc="seed of the initial weights and of every step's random draws")
    device: str = param("auto", doc="auto (CUDA if present, else CPU), cpu, cuda, cuda:1 …")
    save_every: int = param(500, doc="write the checkpoint and training state every this many steps (and at the "
                                     "end)", low=1)
    log_every: int = param(10, doc="append the losses to loss_log.jsonl every this many steps", low=1)
    resume: bool = param(False, doc="continue the run saved in --out (weights, optimiser, step)")


@dataclass
class ShapeVAETrainConfig(_Common):
    """Training of the shape VAE (SITA-VAE) on a mesh folder."""

    preset: str = param("tiny", doc="network sizes: a Michelangelo preset (its VAE and CLIP parts)",
                        choices=_PRESETS)
    clip_model: str = param("", doc="CLIP for the alignment loss: '' = the preset's (tiny-random for tiny, "
                                    "openai/clip-vit-large-patch14 otherwise), or an HF id / local folder")
    kl_weight: float = param(0.001, doc="weight of the KL term (public 0.001)", low=0.0)
    near_weight: float = param(0.1, doc="weight of the near-surface occupancy BCE (public 0.1)", low=0.0)
    contrast_weight: float = param(0.1, doc="weight of the shape-text/image contrastive loss (public 0.1)", low=0.0)
    num_volume_points: int = param(1024, doc="uniform occupancy query points per shape and step", low=1)
    num_near_points: int = param(1024, doc="near-surface occupancy query points per shape and step", low=1)
    sample_posterior: bool = param(True, doc="decode posterior samples (public); off = decode the posterior mean "
                                             "(a KL-regularised auto-encoder; for tiny overfit runs)")
    logvar_init: float = param(-4.0, doc="initial posterior log-variance of a fresh VAE (pre_kl bias); a "
                                         "near-deterministic start keeps a decoder trained on few shapes from "
                                         "relying on posterior noise (the plain init gives about 0)",
                               low=-30.0, high=20.0)

    def validate(self) -> None:
        _validate_common(self)


@dataclass
class ShapeLDMTrainConfig(_Common):
    """Training of the ASLDM denoiser on a mesh folder, with a trained (frozen) shape VAE."""

    vae: str = param("", doc="the trained shape VAE: an output folder of `train shape_vae` (required)")
    preset: str = param("tiny", doc="denoiser sizes: a Michelangelo preset with a denoiser", choices=_PRESETS)
    condition: str = param("", doc="'text' (captions) or 'image' (images); '' = the preset's",
                           choices=("", "text", "image"))
    condition_drop_prob: float = param(0.1, doc="probability of replacing the condition by the unconditional "
                                                "embedding (classifier-free guidance; public 0.1)", low=0.0, high=1.0)
    sample_posterior: bool = param(True, doc="train on posterior samples of the VAE (public) instead of its mean")

    def validate(self) -> None:
        _validate_common(self)
        if not self.vae:
            raise ValueError("vae is required: the output folder of `python -m backend train shape_vae`")
        if PRESETS[self.preset].denoiser is None:
            raise ValueError(f"preset {self.preset!r} has no denoiser; use one of "
                             f"{sorted(k for k, v in PRESETS.items() if v.denoiser is not None)}")


def _validate_common(cfg: _Common) -> None:
    if not cfg.data:
        raise ValueError("data is required: a folder of meshes")
    if not cfg.out:
        raise ValueError("out is required: the output folder")
    resolve_device(cfg.device)


@dataclass
class TrainResult:
    """What a training run returns.

    Attributes:
        out: the output folder (a checkpoint ``load_michelangelo`` / ``checkpoint.load_checkpoint`` reads).
        step: the last completed step.
        history: ``[{"step": s, "loss": …, …}, …]`` the losses of every step run in this call.
        config: the model config trained.
        modules: the trained modules (``{"vae": ShapeVAE}`` or ``{"vae": ..., "denoiser": ASLDMDenoiser}``), eval mode.
    """

    out: Path
    step: int
    history: list[dict[str, float]]
    config: MichelangeloConfig
    modules: dict[str, torch.nn.Module] = field(repr=False)


# ---------------------------------------------------------------------------------------------------------------------
# Losses and schedule.
# ---------------------------------------------------------------------------------------------------------------------

def occupancy_losses(logits: torch.Tensor, labels: torch.Tensor, num_volume_points: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean BCE-with-logits of the volume and of the near-surface query points.

    Args:
        logits, labels: (B, M) float; the first ``num_volume_points`` columns are the volume points, the rest the
            near-surface ones (:class:`.data.ShapeDataset` order). Labels 1 inside, 0 outside.

    Returns:
        ``(bce_volume, bce_near)`` scalars (``bce_near`` is 0 when there are no near points).
    """
    vol = F.binary_cross_entropy_with_logits(logits[:, :num_volume_points].float(), labels[:, :num_volume_points])
    if logits.shape[1] == num_volume_points:
        return vol, torch.zeros((), device=logits.device)
    near = F.binary_cross_entropy_with_logits(logits[:, num_volume_points:].float(), labels[:, num_volume_points:])
    return vol, near


def contrastive_loss(shape_embed: torch.Tensor, other_embed: torch.Tensor, logit_scale: torch.Tensor | float
                     ) -> torch.Tensor:
    """Symmetric InfoNCE between matching rows (CLIP's loss; public ``ContrastKLNearFar``).

    Args:
        shape_embed: (K, D) projected shape embeddings; other_embed: (K, D) CLIP text or image embeddings of the same
            K shapes (row i matches row i). Both are L2-normalised here.
        logit_scale: the multiplier of the cosine similarities (``exp`` of CLIP's ``logit_scale``: 100 for ViT-L/14).

    Returns:
        scalar: (CE(shape→other) + CE(other→shape)) / 2.
    """
    s = F.normalize(shape_embed.float(), dim=-1)
    o = F.normalize(other_embed.float(), dim=-1)
    logits = logit_scale * s @ o.t()
    target = torch.arange(len(s), device=s.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation helpers (tests, logging).
# ---------------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def decode_occupancy(vae, latents: torch.Tensor, resolution: int, bound: float, chunk: int = 65536) -> np.ndarray:
    """Occupancy logits of one shape's latents on a regular grid.

    Args:
        vae: a :class:`.shape_vae.ShapeVAE`.
        latents: (1, num_latents, embed_dim) VAE latents (NOT × z_scale_factor).
        resolution: R points per axis over [-bound, bound]³ of the model frame (end points included).

    Returns:
        (R, R, R) float32 logits, index order [x, y, z] (:func:`.data.grid_points` / ``sample_grid`` layout).
    """
    param0 = next(vae.parameters())
    tokens = vae.decode(latents.to(device=param0.device, dtype=param0.dtype))
    points = torch.from_numpy(grid_points(resolution, bound)).to(param0.device, param0.dtype)
    logits = vae.query(tokens, points[None], chunk_size=chunk)[0]
    return logits.float().cpu().numpy().reshape((resolution,) * 3)


@torch.no_grad()
def reconstruct_occupancy(vae, surface: torch.Tensor, resolution: int, bound: float) -> np.ndarray:
    """Encode surface samples (posterior mean) and decode occupancy logits on a grid.

    Args:
        surface: (N, 6) or (1, N, 6) float xyz + normals in the model frame.

    Returns:
        (R, R, R) float32 logits (see :func:`decode_occupancy`).
    """
    surface = surface if surface.ndim == 3 else surface[None]
    param0 = next(vae.parameters())
    surface = surface.to(param0.device, param0.dtype)
    _, latents, _ = vae.encode(surface[..., :3], surface[..., 3:], sample_posterior=False)
    return decode_occupancy(vae, latents, resolution, bound)


def occupancy_iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Volumetric IoU of two boolean occupancy grids of the same shape (1.0 when both are empty)."""
    pred, target = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    if pred.shape != target.shape:
        raise ValueError(f"occupancy grids differ in shape: {pred.shape} vs {target.shape}")
    union = np.logical_or(pred, target).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, target).sum() / union)


# ---------------------------------------------------------------------------------------------------------------------
# The shared loop.
# ---------------------------------------------------------------------------------------------------------------------

def _run(kind: str, cfg: _Common, config: MichelangeloConfig, modules: dict[str, torch.nn.Module],
         trainable: torch.nn.Module, start_state: dict[str, Any] | None, dataset: ShapeDataset,
         step_fn: Callable[[dict[str, Any], torch.Generator], tuple[torch.Tensor, dict[str, float]]],
         out: Path, device: torch.device, progress: bool,
         callback: Callable[[int, dict[str, float]], None] | None) -> TrainResult:
    """The shared loop (:func:`backend.models.training.train_loop`) on batches of ``dataset``, saving our
    checkpoint format."""
    train_config = dataclasses.asdict(cfg)

    def make_batch(_i: int, rng: np.random.Generator) -> dict[str, Any]:
        return collate_shapes([dataset.sample(k, rng) for k in batch_indices(rng, len(dataset), cfg.batch_size)])

    def save_weights(step: int, history: list[dict[str, float]]) -> None:
        save_checkpoint(out, config, modules, metadata={"kind": kind, "step": step, "train_config": train_config,
                                                        "last_losses": history[-1] if history else {}})

    result = train_loop(kind, cfg, trainable, start_state, make_batch, step_fn, save_weights, out, device, progress,
                        callback)
    for module in modules.values():
        module.eval()
    return TrainResult(out=out, step=result.step, history=result.history, config=config, modules=modules)


def _resolve_config(cfg, config_class) -> Any:
    if isinstance(cfg, config_class):
        return parse_config(config_class, dataclasses.asdict(cfg))
    if isinstance(cfg, dict):
        return parse_config(config_class, cfg)
    raise ParamError(f"expected a {config_class.__name__} or a dict, got {type(cfg).__name__}")


# ---------------------------------------------------------------------------------------------------------------------
# Shape VAE.
# ---------------------------------------------------------------------------------------------------------------------

def train_shape_vae(cfg: ShapeVAETrainConfig | dict[str, Any], model_config: MichelangeloConfig | None = None,
                    progress: bool = True, callback: Callable[[int, dict[str, float]], None] | None = None
                    ) -> TrainResult:
    """Train the shape VAE (occupancy BCE + KL + CLIP alignment) on ``cfg.data``; see the module docstring.

    Args:
        cfg: the training settings (a dict is parsed and checked like CLI flags).
        model_config: network sizes; default ``get_preset(cfg.preset)`` without its denoiser. Ignored on resume (the
            saved config is used).
        progress: show a tqdm bar.
        callback: called after every step as ``callback(step, losses)``.

    Returns:
        :class:`TrainResult` with the trained ``ShapeVAE`` (eval mode) in ``modules["vae"]``.

    Raises:
        ParamError: bad settings. DatasetError / MeshError: bad data folder or mesh (named). TrainingError: output
        folder already used without ``resume``, or nothing to resume.
    """

    cfg = _resolve_config(cfg, ShapeVAETrainConfig)
    device = resolve_device(cfg.device)
    out = prepare_out(cfg.out, cfg.resume, "shape_vae", is_our_checkpoint)
    dataset = ShapeDataset(cfg.data, num_surface_points=cfg.num_surface_points,
                           num_volume_points=cfg.num_volume_points, num_near_points=cfg.num_near_points,
                           seed=cfg.seed)
    state = None
    if cfg.resume:
        state = load_state(out, "shape_vae")
        loaded = load_checkpoint(out, device=device)
        config, vae = loaded.config, loaded.vae
        if vae is None:
            raise TrainingError(f"{str(out)!r} has no VAE weights to resume")
    else:
        config = model_config if model_config is not None else get_preset(cfg.preset)
        config = dataclasses.replace(config, denoiser=None, condition=None)
        if cfg.clip_model:
            config = dataclasses.replace(config, clip=dataclasses.replace(config.clip, model_id=cfg.clip_model))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            vae = ShapeVAE(config.vae)
        with torch.no_grad():  # pre_kl outputs [mean | logvar] (ShapeVAE / public DiagonalGaussian layout)
            vae.pre_kl.bias[config.vae.embed_dim:] = cfg.logvar_init
        vae = vae.to(device)

    use_text = dataset.has_captions and cfg.contrast_weight > 0
    use_image = dataset.has_images and cfg.contrast_weight > 0
    conditioner = None
    if use_text or use_image:

        conditioner = CLIPConditioner.from_config(config.clip, device, torch.float32)
        if not cfg.resume:
            vae.logit_scale.data.fill_(math.log(conditioner.logit_scale))
    elif cfg.contrast_weight > 0:
        log.info("no captions/images for every shape in %s: training without the contrastive alignment", cfg.data)
    vae.logit_scale.requires_grad_(False)  # the public code uses CLIP's frozen temperature
    text_cache: dict[str, torch.Tensor] = {}
    image_cache: dict[int, torch.Tensor] = {}

    def embeddings(items: list[int], captions: list[str | None], modality: str) -> torch.Tensor:
        if modality == "text":
            missing = [c for c in dict.fromkeys(captions) if c not in text_cache]
            if missing:
                text_cache.update(zip(missing, conditioner.text_embeds(missing)))
            return torch.stack([text_cache[c] for c in captions])
        missing = [i for i in dict.fromkeys(items) if i not in image_cache]
        for i in missing:
            image_cache[i] = conditioner.image_embeds([dataset.image(i)])[0]
        return torch.stack([image_cache[i] for i in items])

    def step_fn(batch: dict[str, Any], gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        surface = batch["surface"].to(device)
        logits, posterior, shape_embed = vae(surface[..., :3], surface[..., 3:], batch["queries"].to(device),
                                             sample_posterior=cfg.sample_posterior, generator=gen)
        vol, near = occupancy_losses(logits, batch["labels"].to(device), cfg.num_volume_points)
        kl = posterior.kl().mean()
        loss = vol + cfg.near_weight * near + cfg.kl_weight * kl
        terms = {"bce_volume": float(vol.detach()), "bce_near": float(near.detach()), "kl": float(kl.detach())}
        if conditioner is not None:
            index = batch["index"].tolist()
            first = sorted({k: j for j, k in reversed(list(enumerate(index)))}.values())  # one row per shape
            if len(first) >= 2:
                projected = vae.project_shape_embed(shape_embed[first])
                scale = vae.logit_scale.exp()
                contrast = torch.zeros((), device=device)
                if use_text:
                    contrast = contrast + contrastive_loss(
                        projected, embeddings([index[j] for j in first], [batch["caption"][j] for j in first],
                                              "text"), scale)
                if use_image:
                    contrast = contrast + contrastive_loss(
                        projected, embeddings([index[j] for j in first], [], "image"), scale)
                loss = loss + cfg.contrast_weight * contrast
                terms["contrast"] = float(contrast.detach())
        return loss, terms

    return _run("shape_vae", cfg, config, {"vae": vae}, vae, state, dataset, step_fn, out, device, progress, callback)


# ---------------------------------------------------------------------------------------------------------------------
# Denoiser.
# ---------------------------------------------------------------------------------------------------------------------

def train_shape_ldm(cfg: ShapeLDMTrainConfig | dict[str, Any], model_config: MichelangeloConfig | None = None,
                    progress: bool = True, callback: Callable[[int, dict[str, float]], None] | None = None
                    ) -> TrainResult:
    """Train the ASLDM denoiser (ε-MSE with condition dropout) on the frozen VAE's latents of ``cfg.data``.

    Args:
        cfg: the training settings; ``cfg.vae`` is a ``train shape_vae`` output folder (its VAE and CLIP config are
            used: the denoiser is conditioned by the CLIP the VAE was aligned with).
        model_config: supplies the denoiser sizes and diffusion settings; default ``get_preset(cfg.preset)``. Its VAE
            and CLIP parts are replaced by the trained VAE's. Ignored on resume.
        progress, callback: as :func:`train_shape_vae`.

    Returns:
        :class:`TrainResult`; ``out`` holds VAE + denoiser (a complete model for ``load_michelangelo``).

    Raises:
        ParamError, DatasetError, MeshError, TrainingError (e.g. a shape without a caption for condition "text",
        ``cfg.vae`` not a VAE checkpoint), CheckpointError (unreadable VAE weights).
    """

    cfg = _resolve_config(cfg, ShapeLDMTrainConfig)
    device = resolve_device(cfg.device)
    out = prepare_out(cfg.out, cfg.resume, "shape_ldm", is_our_checkpoint)
    state = None
    if cfg.resume:
        state = load_state(out, "shape_ldm")
        loaded = load_checkpoint(out, device=device)
        config, vae, denoiser = loaded.config, loaded.vae, loaded.denoiser
        if vae is None or denoiser is None:
            raise TrainingError(f"{str(out)!r} lacks the VAE or the denoiser weights to resume")
    else:
        vae_dir = Path(cfg.vae).expanduser()
        if not is_our_checkpoint(vae_dir):
            raise TrainingError(f"--vae {str(vae_dir)!r} is not a trained shape VAE folder (no config.json of "
                                f"`python -m backend train shape_vae`)")
        loaded = load_checkpoint(vae_dir, device=device)
        if loaded.vae is None:
            raise CheckpointError(f"{str(vae_dir)!r} holds no VAE weights")
        vae = loaded.vae
        base = model_config if model_config is not None else get_preset(cfg.preset)
        condition = cfg.condition or base.condition
        denoiser_config = base.denoiser
        if denoiser_config is None:
            raise TrainingError("the model config has no denoiser")
        clip = loaded.config.clip
        context_dim = clip.text_width if condition == "text" else clip.vision_width
        denoiser_config = dataclasses.replace(denoiser_config, input_channels=loaded.config.vae.embed_dim,
                                              output_channels=loaded.config.vae.embed_dim,
                                              n_ctx=loaded.config.vae.num_latents, context_dim=context_dim)
        config = dataclasses.replace(base, vae=loaded.config.vae, clip=clip, denoiser=denoiser_config,
                                     condition=condition)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            denoiser = ASLDMDenoiser(config.denoiser)
        denoiser = denoiser.to(device)
    vae.eval().requires_grad_(False)

    # Query points are not used here; a few hundred per shape keep the dataset's empty-volume check meaningful.
    dataset = ShapeDataset(cfg.data, num_surface_points=cfg.num_surface_points, num_volume_points=256,
                           num_near_points=256, seed=cfg.seed)
    condition = config.condition
    lacking = [f.name for f, c, im in zip(dataset.files, dataset.captions, dataset.image_paths)
               if (condition == "text" and not c) or (condition == "image" and im is None)]
    if lacking:
        need = "a caption (captions.json or <stem>.txt)" if condition == "text" else "an image (<stem>.png|jpg)"
        raise DatasetError(f"condition {condition!r} needs {need} for every shape; missing for {lacking[:5]}"
                           + (f" and {len(lacking) - 5} more" if len(lacking) > 5 else ""))
    conditioner = CLIPConditioner.from_config(config.clip, device, torch.float32)
    uncond = conditioner.unconditional(1, condition)[0]
    scheduler = ddpm_scheduler(config)
    cache: dict[Any, torch.Tensor] = {}

    def context_of(batch: dict[str, Any]) -> torch.Tensor:
        keys = batch["caption"] if condition == "text" else batch["index"].tolist()
        missing = [k for k in dict.fromkeys(keys) if k not in cache]
        if missing:
            values = missing if condition == "text" else [dataset.image(k) for k in missing]
            cache.update(zip(missing, conditioner.encode(condition, values)))
        return torch.stack([cache[k] for k in keys])

    def step_fn(batch: dict[str, Any], gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        surface = batch["surface"].to(device)
        b = len(surface)
        with torch.no_grad():
            _, latents, _ = vae.encode(surface[..., :3], surface[..., 3:], sample_posterior=cfg.sample_posterior,
                                       generator=gen)
            latents = latents.float() * config.z_scale_factor
        context = context_of(batch)
        drop = torch.rand(b, generator=gen, device=device) < cfg.condition_drop_prob
        context = torch.where(drop[:, None, None], uncond.expand_as(context), context)
        noise = torch.randn(latents.shape, generator=gen, device=device)
        timesteps = torch.randint(0, config.num_train_timesteps, (b,), generator=gen, device=device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        pred = denoiser(noisy, timesteps, context).float()
        if config.prediction_type == "epsilon":
            target = noise
        elif config.prediction_type == "sample":
            target = latents
        else:
            target = scheduler.get_velocity(latents, noise, timesteps)
        loss = F.mse_loss(pred, target)
        return loss, {"mse": float(loss.detach())}

    return _run("shape_ldm", cfg, config, {"vae": vae, "denoiser": denoiser}, denoiser, state, dataset, step_fn,
                out, device, progress, callback)


TRAINERS: dict[str, tuple[type, Callable[..., TrainResult]]] = {
    "shape_vae": (ShapeVAETrainConfig, train_shape_vae),
    "shape_ldm": (ShapeLDMTrainConfig, train_shape_ldm),
}
"""``python -m backend train <name>``: the config dataclass (its fields are the flags) and the training function."""
