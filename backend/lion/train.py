"""Training LION on a folder of meshes: the hierarchical VAE (``lion_vae``), then both latent DDMs (``lion_ddm``).

Zeng et al., "LION: Latent Point Diffusion Models for 3D Shape Generation" (NeurIPS 2022), §3.2 and App. C; the
public scripts (``script/train_vae.sh``, ``script/train_prior.sh``) for the values:

- VAE: the ELBO ``recon + λ(step) · (KL_z + KL_h)`` (:meth:`backend.lion.model.LionModel.vae_loss`: L1 reconstruction
  summed over points, KL of both latents), with the KL weight annealed linearly from ``kl_min`` = 1e-7
  (``sde.kl_const_coeff_vada``) to ``kl_weight`` = 0.5 (``sde.kl_max_coeff_vada``) over the first ``kl_anneal`` = 50 %
  of the steps (``sde.kl_anneal_portion_vada``), then constant (NVAE's ``kl_coeff``, which the public trainer calls).
- DDMs: the VAE is frozen; each step encodes the batch (posterior samples by default, as the public prior trainer
  encodes with ``sample`` draws) and trains the shape-latent DDM on z0 and the latent-point DDM on h0 conditioned on
  z0 with the ε-prediction loss (:meth:`~backend.lion.model.LionModel.ddm_loss`, t ~ U{1..T}); the loss is their sum.
  Both use the paper's mixed score (LSGM's; ``--mixed-prediction``, on by default here although the released
  checkpoints have it off): ε̂ = (1 − m)·√(1 − ᾱ_t)·x_t + m·ε_θ with m = sigmoid(a learned logit per latent
  dimension), the first term being the exact ε of a standard-normal x_0. Measured on a sphere's 64-point clouds with
  the latent-point DDM at an eighth of the public widths (1,000 AdamW steps, DDIM 50 samples, mean |‖x‖ − r| of the
  sampled points, r = 1.73): plain ε-prediction 10.0 — near t = T its ε̂ misses by ~0.2, which x̂_0 = (x_t −
  √(1 − ᾱ_t) ε̂)/√ᾱ_t multiplies by ~150, and the samples fly apart —, mixed with the public initial logit −6
  (m = 0.0025) 0.52 after 500 steps (the network's share is too small to learn anything in such
  a run: the Gaussian term alone), mixed from logit 0 (m = 0.5; ``--mixing-logit-init``) 0.26–0.28.
- Text-driven DDMs (``clip_views`` > 0; the public ``script/train_prior_clip.sh``, CLIP-Forge style): the same VAE,
  priors conditioned on CLIP features (``PriorSEClip``; ``LionConfig.clip_dim`` = the CLIP's width, ``clip_model``
  recorded): each training mesh is rendered from ``clip_views`` views, its raw CLIP image embeddings averaged
  (:func:`backend.lion.clip_features.shape_features`), ONCE before the loop; every step conditions each shape's
  ε-losses on its own feature. No classifier-free dropout of the feature (the public code has none).

Data: each mesh of ``data`` (:func:`backend.geometry.mesh.load_mesh`: OBJ/GLB read Y up, others Z up, all returned in
Blender's frame) is sampled once, uniformly on its surface with trimesh (a pool of ``pool_factor`` × ``num_points``
points, seeded), and normalised like LION's inputs (:func:`backend.lion.data.normalize_points`: mean point at the
origin, coordinate standard deviation 1, per shape); every step draws a fresh random subset of ``num_points`` (2048 in
the paper; default: the model's ``num_points``) from each chosen shape's pool. Models trained here keep Blender's
axes (checkpoint metadata ``frame: blender``) and record the training shapes' mean scale (``data_scale``, metres per
normalised unit) so generated shapes come back at the data's size.

The loop, the output folder (our checkpoint: ``config.json`` + ``model.safetensors``; ``train_state.pt``;
``loss_log.jsonl``) and exact resume are :mod:`backend.models.training`'s. Dropout draws from torch's global
generator, so each step runs under ``torch.random.fork_rng`` seeded from ``(seed, step)``: resumed runs follow the
uninterrupted trajectory, and the caller's random state is left alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..geometry.mesh import MeshError, load_mesh
from ..guidance.clip import CLIPEmbedder
from ..models.clip import DEFAULT_CLIP_MODEL, load_clip
from ..models.devices import resolve_device
from ..models.training import TrainingError, batch_indices, load_state, prepare_out, train_loop
from ..params import Config, ParamError, param, parse_config
from .checkpoint import CheckpointError, build_model, load_checkpoint, save_checkpoint
from .clip_features import MAX_VIEWS, shape_features
from .config import PRESETS, TINY_PRESETS, LionConfig, get_preset
from .data import normalize_points
from .model import LionModel

log = logging.getLogger(__name__)

__all__ = ["MESH_SUFFIXES", "LionVAETrainConfig", "LionDDMTrainConfig", "LionTrainResult", "PointCloudFolder",
           "kl_coefficient", "train_lion_vae", "train_lion_ddm", "TRAINERS", "FRAME_BLENDER"]

MESH_SUFFIXES = (".obj", ".ply", ".stl", ".glb", ".gltf", ".off")
"""Mesh files :class:`PointCloudFolder` picks up (case-insensitive)."""
FRAME_BLENDER = "blender"
"""Checkpoint metadata ``frame`` of models trained here: the points keep Blender's axes."""
_PRESETS = tuple(sorted({**PRESETS, **TINY_PRESETS}))


@dataclass
class _LionCommon(Config):
    """Fields both LION trainings share."""

    data: str = param(doc="folder of meshes (.obj .ply .stl .glb .gltf .off)")
    out: str = param(doc="output folder: checkpoint (config.json + model.safetensors), train_state.pt, "
                         "loss_log.jsonl")
    steps: int = param(1000, doc="total optimisation steps (a resumed run continues up to this many)", low=1)
    batch_size: int = param(8, doc="shapes per step (distinct shapes while batch_size <= number of shapes)", low=1)
    warmup_steps: int = param(0, doc="linear learning-rate warm-up steps, then cosine decay to lr * 1e-3", low=0)
    weight_decay: float = param(0.0, doc="AdamW weight decay", low=0.0)
    grad_clip: float = param(1.0, doc="clip the gradient norm to this before each step (0 = no clipping)", low=0.0)
    num_points: int = param(0, doc="points per shape and step (0 = the model's num_points: 2048 for the public "
                                   "presets, 128 for tiny)", low=0, high=100_000)
    pool_factor: int = param(4, doc="points sampled once per mesh = pool_factor * num_points; each step draws a "
                                    "random subset", low=1, high=64)
    seed: int = param(0, doc="seed of the initial weights, the surface samples and every step's random draws",
                      low=0, high=2**63 - 1)
    device: str = param("auto", doc="auto (CUDA if present, else CPU), cpu, cuda, cuda:1 …")
    save_every: int = param(500, doc="write the checkpoint and training state every this many steps (and at the "
                                     "end)", low=1)
    log_every: int = param(10, doc="append the losses to loss_log.jsonl every this many steps", low=1)
    resume: bool = param(False, doc="continue the run saved in --out (weights, optimiser, step)")

    def validate(self) -> None:
        if not self.data:
            raise ParamError("data is required: a folder of meshes")
        if not self.out:
            raise ParamError("out is required: the output folder")
        resolve_device(self.device)


@dataclass
class LionVAETrainConfig(_LionCommon):
    """Training of LION's hierarchical VAE (ELBO with an annealed KL weight) on a mesh folder."""

    preset: str = param("tiny", doc="network sizes: a LION preset (chair, airplane, car: the public 2048-point "
                                    "architecture; tiny)", choices=_PRESETS)
    lr: float = param(1e-3, doc="peak learning rate of AdamW (betas 0.9, 0.99 as the public VAE run)", low=0.0)
    kl_weight: float = param(0.5, doc="final KL weight of both latents (public sde.kl_max_coeff_vada 0.5)", low=0.0,
                             high=100.0)
    kl_min: float = param(1e-7, doc="KL weight at step 0 (public sde.kl_const_coeff_vada 1e-7)", low=0.0, high=100.0)
    kl_anneal: float = param(0.5, doc="fraction of the steps over which the KL weight rises linearly from kl_min to "
                                      "kl_weight (public sde.kl_anneal_portion_vada 0.5)", low=0.0, high=1.0)

    def validate(self) -> None:
        super().validate()
        if self.kl_min > self.kl_weight:
            raise ParamError(f"kl_min = {self.kl_min} exceeds kl_weight = {self.kl_weight}")


@dataclass
class LionDDMTrainConfig(_LionCommon):
    """Training of LION's two latent DDMs on a frozen VAE's latents of a mesh folder."""

    vae: str = param("", doc="the trained VAE: an output folder of `train lion_vae` (required)")
    lr: float = param(1e-4, doc="peak learning rate of AdamW", low=0.0)
    sample_posterior: bool = param(True, doc="train on posterior samples of the VAE (public) instead of its means")
    mixed_prediction: bool = param(True, doc="the paper's mixed score: each DDM predicts eps = (1 - m) * sqrt(1 - "
                                             "abar_t) * x_t + m * network, m = sigmoid(a learned logit per latent "
                                             "dimension); off = plain eps-prediction (the released checkpoints)")
    mixing_logit_init: float = param(0.0, doc="initial mixing logit of --mixed-prediction (0: m = 0.5; the public "
                                              "-6 gives m = 0.0025 and suits very long runs)", low=-20.0,
                                     high=20.0)
    clip_views: int = param(0, doc="text-driven LION: render each mesh from this many views and condition both DDMs "
                                   "on its view-averaged raw CLIP image embedding (0 = unconditional)", low=0,
                            high=MAX_VIEWS)
    clip_model: str = param(DEFAULT_CLIP_MODEL, doc="the CLIP of the conditioning (with --clip-views > 0): an "
                                                    "open_clip '<arch>/<tag>', a transformers id or folder, or "
                                                    "tiny-random")

    def validate(self) -> None:
        super().validate()
        if not self.vae:
            raise ParamError("vae is required: the output folder of `python -m backend train lion_vae`")
        if self.clip_views > 0 and not self.clip_model.strip():
            raise ParamError(f"clip_model is required with clip_views = {self.clip_views}")


@dataclass
class LionTrainResult:
    """What a training run returns.

    Attributes:
        out: the output folder (a checkpoint ``load_lion(out)`` reads).
        step: the last completed step.
        history: ``[{"step": s, "loss": …, …}, …]`` the losses of every step run in this call.
        model: the trained :class:`~backend.lion.model.LionModel` (eval mode).
        metadata: the checkpoint metadata (``frame``, ``data_scale``, ``kind``, ``step`` …).
    """

    out: Path
    step: int
    history: list[dict[str, float]]
    model: LionModel = field(repr=False)
    metadata: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------------------------------------------------

class PointCloudFolder:
    """The meshes of a folder as pools of normalised surface points (see the module docstring).

    Args:
        root: the folder. num_points: points per item. pool_factor: pool = pool_factor × num_points per mesh.
        seed: seed of the surface samples (one generator for the folder, files in sorted order).

    Attributes:
        files: the mesh files, sorted by name.
        pools: per file, (pool, 3) float32 normalised points (LION's frame, Blender's axes).
        scales: per file, the normalisation scale (metres per normalised unit).
        clip_features: (len(files), D) float32 per-shape CLIP features once :meth:`compute_clip_features` ran, else
            None.

    Raises:
        TrainingError: not a folder, or no mesh in it. MeshError: a mesh that cannot be read or has no area (named).
    """

    def __init__(self, root: str | Path, num_points: int, pool_factor: int = 4, seed: int = 0):
        import trimesh

        root = Path(root).expanduser()
        if not root.is_dir():
            raise TrainingError(f"data {str(root)!r} is not a folder")
        self.files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in MESH_SUFFIXES)
        if not self.files:
            raise TrainingError(f"data {str(root)!r} holds no mesh ({' '.join(MESH_SUFFIXES)})")
        self.num_points = int(num_points)
        rng = np.random.default_rng(seed)
        self.pools: list[np.ndarray] = []
        self.scales: list[float] = []
        for path in self.files:
            try:
                mesh = load_mesh(path)
            except MeshError as err:
                raise MeshError(f"{path.name}: {err}") from None
            tm = trimesh.Trimesh(mesh.v_pos, mesh.t_pos_idx, process=False)
            if not float(tm.area) > 0:
                raise MeshError(f"{path.name}: the mesh has no surface area")
            points, _ = trimesh.sample.sample_surface(tm, pool_factor * self.num_points,
                                                      seed=int(rng.integers(2**31 - 1)))
            normalised, (_, scale) = normalize_points(torch.from_numpy(np.asarray(points, np.float32))[None])
            self.pools.append(normalised[0].numpy())
            self.scales.append(float(scale))
        self.clip_features: torch.Tensor | None = None

    def compute_clip_features(self, embedder: CLIPEmbedder, views: int) -> torch.Tensor:
        """Render every mesh (re-read one at a time) from ``views`` views and keep its view-averaged raw CLIP image
        embedding (:func:`backend.lion.clip_features.shape_features`) in :attr:`clip_features`.

        Returns:
            (len(files), D) float32 CPU tensor.
        Raises:
            MeshError: a mesh that cannot be rendered (named).
        """
        rows = []
        for path in self.files:
            try:
                rows.append(shape_features(embedder, [load_mesh(path)], views)[0])
            except MeshError as err:
                raise MeshError(f"{path.name}: {err}") from None
        self.clip_features = torch.stack(rows)
        return self.clip_features

    def __len__(self) -> int:
        return len(self.files)

    def batch(self, indices: list[int], rng: np.random.Generator) -> torch.Tensor:
        """(len(indices), num_points, 3) float32: a random subset (without replacement) of each chosen pool."""
        return torch.from_numpy(np.stack([self.pools[k][rng.choice(len(self.pools[k]), self.num_points,
                                                                   replace=False)] for k in indices]))


# ---------------------------------------------------------------------------------------------------------------------
# Schedules and the shared steps.
# ---------------------------------------------------------------------------------------------------------------------

def kl_coefficient(step: int, total_steps: int, kl_min: float, kl_max: float, anneal: float) -> float:
    """The KL weight of 0-based ``step``: ``kl_min`` rising linearly to ``kl_max`` over ``anneal · total_steps``
    steps, then ``kl_max`` (NVAE's ``kl_coeff`` with no constant phase, as LION's VAE run)."""
    span = anneal * total_steps
    if span <= 0:
        return kl_max
    return float(min(max(kl_min + (kl_max - kl_min) * step / span, kl_min), kl_max))


def _resolve(cfg, config_class):
    if isinstance(cfg, config_class):
        return parse_config(config_class, dataclasses.asdict(cfg))
    if isinstance(cfg, dict):
        return parse_config(config_class, cfg)
    raise ParamError(f"expected a {config_class.__name__} or a dict, got {type(cfg).__name__}")


def _has_checkpoint(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


@contextlib.contextmanager
def _step_rng_scope(device: torch.device, seed: int, i: int):
    """Torch's global generator(s) seeded from ``(seed, i)`` for one step (dropout), restored afterwards."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed((seed * 1_000_003 + i + 7) % (2 ** 63))
        yield


LossFn = Callable[[int, torch.Tensor, torch.Generator, list[int]], tuple[torch.Tensor, dict]]
"""``loss_fn(step, points (B, N, 3), generator, shape indices)`` → (loss, {term: float})."""


def _run(kind: str, cfg: _LionCommon, model: LionModel, trainable: torch.nn.Module, state: dict[str, Any] | None,
         data: PointCloudFolder, loss_fn: LossFn,
         metadata: dict[str, Any], out: Path, device: torch.device, progress: bool,
         callback: Callable[[int, dict[str, float]], None] | None) -> LionTrainResult:
    train_config = dataclasses.asdict(cfg)

    def make_batch(i: int, rng: np.random.Generator) -> tuple[int, list[int], torch.Tensor]:
        indices = [int(k) for k in batch_indices(rng, len(data), cfg.batch_size)]
        return i, indices, data.batch(indices, rng)

    def step_fn(batch: tuple[int, list[int], torch.Tensor], gen: torch.Generator
                ) -> tuple[torch.Tensor, dict[str, float]]:
        i, indices, points = batch
        with _step_rng_scope(device, cfg.seed, i):
            return loss_fn(i, points.to(device), gen, indices)

    def save_weights(step: int, history: list[dict[str, float]]) -> None:
        metadata.update(kind=kind, step=step, train_config=train_config,
                        last_losses=history[-1] if history else {})
        save_checkpoint(out, model, metadata=metadata)

    result = train_loop(kind, cfg, trainable, state, make_batch, step_fn, save_weights, out, device, progress,
                        callback)
    model.eval()
    return LionTrainResult(out=out, step=result.step, history=result.history, model=model, metadata=metadata)


def _load_run(out: Path, kind: str, device: torch.device) -> tuple[dict[str, Any], LionModel, dict[str, Any]]:
    state = load_state(out, kind)
    try:
        model, metadata = load_checkpoint(out)
    except CheckpointError as err:
        raise TrainingError(f"cannot resume {str(out)!r}: {err}") from None
    return state, model.to(device), metadata


# ---------------------------------------------------------------------------------------------------------------------
# VAE.
# ---------------------------------------------------------------------------------------------------------------------

def train_lion_vae(cfg: LionVAETrainConfig | dict[str, Any], model_config: LionConfig | None = None,
                   progress: bool = True, callback: Callable[[int, dict[str, float]], None] | None = None
                   ) -> LionTrainResult:
    """Train LION's VAE (annealed ELBO) on ``cfg.data``; see the module docstring.

    Args:
        cfg: the training settings (a dict is parsed and checked like CLI flags).
        model_config: network sizes; default ``get_preset(cfg.preset)``. Ignored on resume (the saved config is used).
        progress: show a tqdm bar. callback: ``callback(step, losses)`` after every step.

    Returns:
        :class:`LionTrainResult`; ``out`` holds the model (random priors until ``train lion_ddm``).

    Raises:
        ParamError: bad settings. TrainingError: bad data folder, output folder already used without ``resume``,
        nothing to resume. MeshError: an unreadable mesh (named).
    """
    cfg = _resolve(cfg, LionVAETrainConfig)
    device = resolve_device(cfg.device)
    out = prepare_out(cfg.out, cfg.resume, "lion_vae", _has_checkpoint)
    state = None
    if cfg.resume:
        state, model, metadata = _load_run(out, "lion_vae", device)
    else:
        config = model_config if model_config is not None else get_preset(cfg.preset)
        model = build_model(config, seed=cfg.seed).to(device)
        metadata = {}
    num_points = cfg.num_points or model.config.num_points
    if num_points < model.config.sa_centers[0]:
        raise ParamError(f"num_points = {num_points} is below the model's first set-abstraction centres "
                         f"({model.config.sa_centers[0]})")
    data = PointCloudFolder(cfg.data, num_points, cfg.pool_factor, cfg.seed)
    metadata.update(frame=FRAME_BLENDER, data_scale=float(np.mean(data.scales)), shapes=[f.name for f in data.files])
    model.priors.requires_grad_(False)

    def loss_fn(i: int, points: torch.Tensor, gen: torch.Generator, _indices: list[int]
                ) -> tuple[torch.Tensor, dict[str, float]]:
        weight = kl_coefficient(i, cfg.steps, cfg.kl_min, cfg.kl_weight, cfg.kl_anneal)
        terms = model.vae_loss(points, weight, weight, generator=gen)
        return terms["loss"], {"recon": float(terms["recon"].detach()), "kl_z": float(terms["kl_z"].detach()),
                               "kl_h": float(terms["kl_h"].detach()), "kl_weight": weight}

    return _run("lion_vae", cfg, model, model.vae, state, data, loss_fn, metadata, out, device, progress, callback)


# ---------------------------------------------------------------------------------------------------------------------
# DDMs.
# ---------------------------------------------------------------------------------------------------------------------

def train_lion_ddm(cfg: LionDDMTrainConfig | dict[str, Any], progress: bool = True,
                   callback: Callable[[int, dict[str, float]], None] | None = None,
                   clip_embedder: CLIPEmbedder | None = None) -> LionTrainResult:
    """Train both latent DDMs on the frozen VAE of ``cfg.vae`` (its config and weights), on ``cfg.data``.

    The priors start from fresh seeded weights (``cfg.seed``); the result holds the VAE and the trained priors (a
    complete model for ``load_lion(out)``). With ``cfg.clip_views`` > 0 the priors are CLIP-conditioned (see the
    module docstring): the model's ``clip_dim`` is the CLIP's width, its ``clip_model`` ``cfg.clip_model``, and the
    metadata records ``clip_views`` and ``clip_model``; a resumed run recomputes the features with the recorded
    settings.

    Args:
        clip_embedder: the CLIP to embed the renders with instead of loading ``cfg.clip_model`` (tests: an oracle);
            its ``model_id`` (else ``cfg.clip_model``) is recorded.

    Raises:
        ParamError, TrainingError (``cfg.vae`` not a ``train lion_vae`` folder, output already used), MeshError,
        ModelNotFoundError (the CLIP is not on this machine).
    """
    cfg = _resolve(cfg, LionDDMTrainConfig)
    device = resolve_device(cfg.device)
    out = prepare_out(cfg.out, cfg.resume, "lion_ddm", _has_checkpoint)
    state = None
    embedder: CLIPEmbedder | None = clip_embedder
    if cfg.resume:
        state, model, metadata = _load_run(out, "lion_ddm", device)
    else:
        vae_dir = Path(cfg.vae).expanduser()
        if not _has_checkpoint(vae_dir):
            raise TrainingError(f"vae {str(vae_dir)!r} is not a trained LION VAE folder (no config.json + "
                                f"model.safetensors of `python -m backend train lion_vae`)")
        try:
            model, metadata = load_checkpoint(vae_dir)
        except CheckpointError as err:
            raise TrainingError(f"vae {str(vae_dir)!r}: {err}") from None
        if cfg.clip_views > 0:
            embedder = embedder or load_clip(cfg.clip_model, device, torch.float32)
            clip_model = cfg.clip_model if clip_embedder is None else \
                str(getattr(clip_embedder, "model_id", "") or cfg.clip_model)
            config = dataclasses.replace(model.config, clip_dim=int(embedder.embed_dim), clip_model=clip_model)
        else:
            config = dataclasses.replace(model.config, clip_dim=0)
        config = dataclasses.replace(config, mixed_prediction=cfg.mixed_prediction,
                                     mixing_logit_init=cfg.mixing_logit_init)
        fresh = build_model(config, seed=cfg.seed)
        fresh.vae.load_state_dict(model.vae.state_dict())
        model = fresh.to(device)
        metadata = {k: v for k, v in metadata.items() if k in ("frame", "data_scale", "shapes")}
        metadata["vae"] = str(vae_dir)
        if config.clip_dim > 0:
            metadata.update(clip_views=cfg.clip_views, clip_model=config.clip_model)
    num_points = cfg.num_points or model.config.num_points
    if model.config.mixed_prediction and num_points != model.config.num_points:
        raise ParamError(f"num_points = {num_points}: this model's latent-point DDM (mixing logits) needs "
                         f"{model.config.num_points}")
    data = PointCloudFolder(cfg.data, num_points, cfg.pool_factor, cfg.seed)
    metadata.setdefault("frame", FRAME_BLENDER)
    metadata.setdefault("data_scale", float(np.mean(data.scales)))
    if model.config.clip_dim > 0:
        embedder = embedder or load_clip(model.config.clip_model, device, torch.float32)
        views = int(metadata.get("clip_views") or cfg.clip_views)
        if views < 1:
            raise TrainingError(f"{str(out)!r} holds a CLIP-conditioned model without recorded clip_views; give "
                                f"--clip-views")
        features = data.compute_clip_features(embedder, views)
        if features.shape[1] != model.config.clip_dim:
            raise TrainingError(f"the CLIP gives {features.shape[1]}-wide features; the model was made for "
                                f"clip_dim = {model.config.clip_dim}")
    model.vae.eval().requires_grad_(False)
    model.priors.requires_grad_(True)

    def loss_fn(_i: int, points: torch.Tensor, gen: torch.Generator, indices: list[int]
                ) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            latents = model.encode(points, sample=cfg.sample_posterior, generator=gen).detach()
        feat = None if data.clip_features is None else data.clip_features[indices].to(device)
        loss_z = model.ddm_loss(latents, "z", generator=gen, clip_feat=feat)
        loss_h = model.ddm_loss(latents, "h", generator=gen, clip_feat=feat)
        return loss_z + loss_h, {"mse_z": float(loss_z.detach()), "mse_h": float(loss_h.detach())}

    result = _run("lion_ddm", cfg, model, model.priors, state, data, loss_fn, metadata, out, device, progress,
                  callback)
    return result


TRAINERS: dict[str, tuple[type, Callable[..., LionTrainResult]]] = {
    "lion_vae": (LionVAETrainConfig, train_lion_vae),
    "lion_ddm": (LionDDMTrainConfig, train_lion_ddm),
}
"""``python -m backend train <name>``: the config dataclass (its fields are the flags) and the training function."""
