"""Score distillation sampling (SDS) guidance in Stable Diffusion's latent space.

DreamFusion (Poole et al., 2022) introduced SDS; Latent-NeRF (Metzer et al., CVPR 2023) applies it directly to
4-channel SD latents rendered by a NeRF or a textured mesh. For rendered latents ``z`` (B, 4, 64, 64) and a timestep
``t ~ U[t_min, t_max]·T``::

    z_t = √ᾱ_t z + √(1−ᾱ_t) ε,           ε ~ N(0, I)
    ε̂  = ε_φ(z_t, t, ∅) + s·(ε_φ(z_t, t, y) − ε_φ(z_t, t, ∅))       (classifier-free guidance, s = 100)
    ∂L/∂z = w(t)·(ε̂ − ε)                 w(t) = 1 − ᾱ_t   ("sds")   or   √ᾱ_t·(1 − ᾱ_t)   ("sqrt_alpha", official code)

Timestep annealing (:class:`TimestepSchedule`): t_max = ``max_step_percent``·T until step ``anneal_start``, then it
moves linearly over ``anneal_steps`` steps (0 = at once) to ``anneal_max_step_percent``·T. ProlificDreamer (Wang et
al., NeurIPS 2023: its "distillation time schedule"; ``--t5_iters 5000`` in the official code): t ~ U(0.02, 0.98) for the first 5000 steps, then
U(0.02, 0.5). DreamFusion samples t ~ U(0.02, 0.98) throughout (no annealing); Magic3D's fine stage (and threestudio's
magic3d-refine config) uses a fixed, lower t_max of 0.5 — here ``max_step_percent=0.5`` with no annealing.

The "denoiser" that produces ε̂ is pluggable: :class:`StableDiffusionDenoiser` (the real thing, with view-dependent
prompts) or :class:`OracleDenoiser` (knows the clean target of each camera; used by tests to check cameras,
rendering, schedules and gradient plumbing end to end without pretrained weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

from ..geometry.cameras import CameraBatch
from ..params import Config, check_config, param
from .denoiser import Denoiser


@dataclass
class SDSConfig(Config):
    """Score distillation settings (defaults: Latent-NeRF and its official code).

    Checked on construction (:class:`backend.params.Config`); raises ParamError naming the bad field and value.
    """

    guidance_scale: float = param(100.0, doc="Classifier-free guidance scale s.", low=0.0)
    min_step_percent: float = param(0.02, doc="t_min as a fraction of the training timesteps T.", low=0.0, high=1.0)
    max_step_percent: float = param(0.98, doc="t_max as a fraction of T (>= min_step_percent).", low=0.0, high=1.0)
    weighting: str = param("sds", doc="w(t): \"sds\" = 1 − ᾱ_t (DreamFusion), \"sqrt_alpha\" = √ᾱ_t·(1 − ᾱ_t) "
                                      "(Latent-NeRF's code), \"uniform\" = 1.", choices=("sds", "sqrt_alpha", "uniform"))
    anneal_start: int = param(0, doc="Step after which t_max decays toward anneal_max_step_percent (0 = never; "
                                     "ProlificDreamer: 5000).", low=0, high=1_000_000)
    anneal_max_step_percent: float = param(0.5, doc="t_max as a fraction of T once annealed (ProlificDreamer: 0.5; "
                                                    ">= min_step_percent).", low=0.0, high=1.0)
    anneal_steps: int = param(0, doc="Steps over which t_max moves linearly to its annealed value (0 = at once, "
                                     "as ProlificDreamer).", low=0, high=1_000_000)

    def validate(self) -> None:
        """Cross-field rules: ``min_step_percent <= max_step_percent`` and, when annealing,
        ``min_step_percent <= anneal_max_step_percent``. Raises ValueError."""
        if self.min_step_percent > self.max_step_percent:
            raise ValueError(f"need 0 <= min_step_percent <= max_step_percent <= 1, got "
                             f"{self.min_step_percent}, {self.max_step_percent}")
        if self.anneal_start and self.min_step_percent > self.anneal_max_step_percent:
            raise ValueError(f"need min_step_percent <= anneal_max_step_percent, got "
                             f"{self.min_step_percent}, {self.anneal_max_step_percent}")


@dataclass
class SDSOutput:
    """One SDS evaluation: ``loss`` (scalar, backward gives ∂L/∂z = w(t)(ε̂ − ε)), ``timesteps`` (B,), ``grad_norm``,
    and ``losses``: other scalars the guidance wants reported (VSD: ``{"lora": …}``)."""

    loss: torch.Tensor
    timesteps: torch.Tensor
    grad_norm: float
    losses: dict[str, float] = field(default_factory=dict)


class Guidance(Protocol):
    """What a score-distillation pipeline calls each step: :class:`ScoreDistillation` or
    :class:`backend.guidance.vsd.VariationalScoreDistillation`.

    A guidance is also a context manager: leaving it releases what it attached to a shared model (VSD's LoRA adapter).
    """

    def __call__(self, latents: torch.Tensor, cameras: CameraBatch, generator: torch.Generator,
                 step: int | None = None) -> SDSOutput:
        """``latents`` (B, 4, H, W) float32 rendered from ``cameras`` (len B) at optimisation ``step`` (1-based; None =
        no annealing) → the loss whose gradient wrt ``latents`` is the guidance's."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Learned state a job may keep (VSD: its LoRA adapter and camera MLP; SDS: nothing)."""

    def close(self) -> None:
        """Release what the guidance attached to a shared model (idempotent)."""


class TimestepSchedule:
    """The range of t a guidance samples from at each step, with optional annealing of t_max (see the module doc).

    Args:
        num_train_timesteps: T of the diffusion model (1000 for Stable Diffusion).
        config: ``min_step_percent``, ``max_step_percent`` and the ``anneal_*`` fields of :class:`SDSConfig`.
    """

    def __init__(self, num_train_timesteps: int, config: SDSConfig):
        self.num_train_timesteps = int(num_train_timesteps)
        self.config = config
        self.min_step = int(num_train_timesteps * config.min_step_percent)
        self.max_step = max(self.min_step, int(num_train_timesteps * config.max_step_percent))
        self.annealed_max_step = max(self.min_step, int(num_train_timesteps * config.anneal_max_step_percent))

    def bounds(self, step: int | None = None) -> tuple[int, int]:
        """``(t_min, t_max)`` integer timesteps (inclusive) at 1-based optimisation ``step`` (None: no annealing)."""
        cfg = self.config
        if step is None or not cfg.anneal_start or step <= cfg.anneal_start:
            return self.min_step, self.max_step
        frac = 1.0 if cfg.anneal_steps == 0 else min(1.0, (step - cfg.anneal_start) / cfg.anneal_steps)
        t_max = round(self.max_step + frac * (self.annealed_max_step - self.max_step))
        return self.min_step, max(self.min_step, int(t_max))

    def sample(self, batch: int, generator: torch.Generator, device: torch.device,
               step: int | None = None) -> torch.Tensor:
        """``(batch,)`` int64 timesteps ~ U{t_min, …, t_max} at ``step``, drawn from ``generator``."""
        t_min, t_max = self.bounds(step)
        return torch.randint(t_min, t_max + 1, (batch,), generator=generator, device=device)


def add_noise(latents: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward diffusion of ``latents`` (B, C, H, W) (detached) at ``timesteps`` (B,) (DDPM, Ho et al. 2020).

    Returns:
        ``(noise, a, latents_noisy)``: ε ~ N(0, I) drawn from ``generator`` (latents' shape and dtype), ᾱ_t as
        (B, 1, 1, 1) float32, and z_t = √ᾱ_t z + √(1 − ᾱ_t) ε.
    """
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    a = alphas_cumprod.to(latents.device)[timesteps].view(-1, 1, 1, 1)
    with torch.no_grad():
        latents_noisy = a.sqrt() * latents.detach() + (1.0 - a).sqrt() * noise
    return noise, a, latents_noisy


def timestep_weight(alphas: torch.Tensor, weighting: str) -> torch.Tensor:
    """w(t) from ᾱ_t (any shape): ``"sds"`` 1 − ᾱ_t (DreamFusion), ``"sqrt_alpha"`` √ᾱ_t·(1 − ᾱ_t), ``"uniform"`` 1."""
    if weighting == "sds":
        return 1.0 - alphas
    if weighting == "sqrt_alpha":
        return alphas.sqrt() * (1.0 - alphas)
    return torch.ones_like(alphas)


def distillation_loss(latents: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """A scalar whose gradient wrt ``latents`` (B, C, H, W) is exactly ``grad`` / B (the usual SDS reparametrisation:
    d/dz of 0.5·||z − sg(z − grad)||² is grad), so any optimiser can take the step."""
    target = (latents - grad).detach()
    return 0.5 * F.mse_loss(latents.float(), target, reduction="sum") / latents.shape[0]


class ScoreDistillation:
    """SDS on rendered latents with any :class:`Denoiser`.

    Args:
        alphas_cumprod: ``(T,)`` ᾱ_t of the diffusion model's training schedule (``scheduler.alphas_cumprod``).
        denoiser: produces ε̂.
        config: timestep range, annealing and weighting.
    """

    def __init__(self, alphas_cumprod: torch.Tensor, denoiser: Denoiser, config: SDSConfig | None = None):
        self.config = check_config(config or SDSConfig())
        self.alphas_cumprod = alphas_cumprod.detach().float()
        self.denoiser = denoiser
        self.schedule = TimestepSchedule(self.alphas_cumprod.shape[0], self.config)
        self.min_step, self.max_step = self.schedule.min_step, self.schedule.max_step

    def __call__(self, latents: torch.Tensor, cameras: CameraBatch, generator: torch.Generator,
                 step: int | None = None) -> SDSOutput:
        """SDS loss for ``latents`` (B, 4, H, W) float32 rendered from ``cameras`` (len B) at optimisation ``step``
        (1-based; it sets t_max when annealing; None = no annealing).

        ``generator`` draws t and ε, so a seeded run is reproducible; it must live on ``latents.device``.
        """
        timesteps = self.schedule.sample(latents.shape[0], generator, latents.device, step)
        noise, a, latents_noisy = add_noise(latents, timesteps, self.alphas_cumprod, generator)
        with torch.no_grad():
            noise_pred = self.denoiser.predict_noise(latents_noisy, timesteps, cameras).float()
        grad = torch.nan_to_num(timestep_weight(a, self.config.weighting) * (noise_pred - noise))
        return SDSOutput(loss=distillation_loss(latents, grad), timesteps=timesteps, grad_norm=float(grad.norm()))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Nothing learned: ``{}`` (the :class:`Guidance` contract)."""
        return {}

    def close(self) -> None:
        """Nothing to release (SDS attaches nothing to the model); here for the :class:`Guidance` contract."""

    def __enter__(self) -> "ScoreDistillation":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


