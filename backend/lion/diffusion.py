"""LION's latent diffusion: the discrete schedule, q_sample, the mixed score, and the samplers.

Facts from the public code (``utils/diffusion_pvd.DiffusionDiscretized``, ``utils/diffusion.make_beta_schedule``,
``models/lion.py``, ``utils/utils.get_mixed_prediction``):

- Linear β from ``beta_start`` to ``beta_end`` over T steps (float64 ``linspace``), α_t = 1 − β_t, ᾱ_t = Π α.
  Timesteps are t ∈ 1..T (array index t − 1); the networks see t itself as a float.
- q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I); training minimises ‖ε̂ − ε‖² (mean), t uniform in 1..T.
- Mixed score parameterisation (LSGM, Vahdat et al. 2021; LION §3.1): ε̂ = (1 − m) ⊙ √(1 − ᾱ_t) x_t + m ⊙ ε_θ,
  m = sigmoid(mixing_logit) per latent dimension; the first term is the exact ε of a standard-normal x_0 (the VAE
  prior), so the network only models the residual. Off in the released checkpoints.
- Ancestral sampler (DDPM, Ho et al. 2020): mean = (x_t − β_t/√(1 − ᾱ_t) ε̂)/√α_t, standard deviation √β_t
  (``fixedlarge``; the trainer's ``run_denoising_diffusion``; the public demo ``models/lion.py`` hands the string
  ``fixedlarge`` to diffusers' ``DDPMScheduler``, which has no branch for that name (checked in the installed
  diffusers) and so keeps the posterior variance),
  no noise on the last step. With fewer than T steps we step between ᾱ's of a uniform
  subsequence with β = 1 − ᾱ_t/ᾱ_s (the same formula; T steps is exactly the public loop).
- DDIM (Song et al. 2021; public ``run_ddim``, ``ddim_skip_type`` uniform: t_i = ⌊i (T − 1)/(S − 1)⌋):
  x_s = √ᾱ_s x̂_0 + √(1 − ᾱ_s − σ²) ε̂ + σ z, σ = η √((1 − ᾱ_s)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_s); η = 0 is the
  deterministic probability-flow discretisation used by :func:`ode_encode` / :func:`ode_decode` (interpolation).

Every sampler takes a ``torch.Generator`` for its noise and calls ``callback(step, total, x)`` after each step (it
may raise to cancel).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Schedule", "EpsFn", "StepCallback", "timestep_sequence", "q_sample", "mixed_eps", "ddpm_sample",
           "ddim_sample", "ode_encode", "ode_decode", "randn"]

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""ε̂(x_t, t): x_t any shape (B, …), t (B,) float in 1..T → ε̂ of x_t's shape (mixing already applied)."""
StepCallback = Callable[[int, int, torch.Tensor], None]
"""callback(step (1-based), total steps, current x); raise to stop."""


@dataclass
class Schedule:
    """The discrete linear schedule (float32 tensors on ``device``; index i ↔ timestep t = i + 1).

    Attributes:
        betas, alphas, alpha_bars: (T,) β_t, α_t, ᾱ_t.
    """

    betas: torch.Tensor
    alphas: torch.Tensor
    alpha_bars: torch.Tensor

    @classmethod
    def linear(cls, timesteps: int, beta_start: float, beta_end: float, device: torch.device | str = "cpu"
               ) -> "Schedule":
        """β_t = linspace(beta_start, beta_end, T) (computed in float64 as the public code, stored float32)."""
        betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
        alphas = 1.0 - betas
        alpha_bars = torch.cumprod(alphas, 0)
        return cls(*(v.float().to(device) for v in (betas, alphas, alpha_bars)))

    @property
    def timesteps(self) -> int:
        """T."""
        return int(self.betas.shape[0])

    def to(self, device: torch.device | str) -> "Schedule":
        """A copy on ``device``."""
        return Schedule(self.betas.to(device), self.alphas.to(device), self.alpha_bars.to(device))

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ_t for integer timesteps t ∈ 1..T (any shape, moved to the schedule's device); t = 0 gives 1."""
        t = t.long().to(self.alpha_bars.device)
        out = self.alpha_bars[(t - 1).clamp_min(0)]
        return torch.where(t > 0, out, torch.ones_like(out))

    def ab(self, t: int) -> torch.Tensor:
        """ᾱ_t of one integer timestep (0 → 1) as a 0-d float64 CPU tensor (sampler coefficients)."""
        return torch.tensor(1.0 if t == 0 else float(self.alpha_bars[t - 1]), dtype=torch.float64)


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape + (1,) * (x.dim() - v.dim()))


def randn(shape, generator: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise drawn from ``generator`` (on the generator's device, then moved)."""
    gen_device = generator.device if generator is not None else torch.device(device)
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def q_sample(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε for timesteps t (B,) in 1..T."""
    ab = _bcast(schedule.alpha_bar(t), x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def mixed_eps(net_eps: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, schedule: Schedule,
              mixing_coeff: torch.Tensor | None) -> torch.Tensor:
    """The mixed score parameterisation: (1 − m) √(1 − ᾱ_t) x_t + m ε_θ (``mixing_coeff`` m broadcastable to x_t,
    in (0, 1)); ``net_eps`` itself when ``mixing_coeff`` is None."""
    if mixing_coeff is None:
        return net_eps
    analytic = (1 - _bcast(schedule.alpha_bar(t), x_t)).sqrt() * x_t
    return (1 - mixing_coeff) * analytic + mixing_coeff * net_eps


def timestep_sequence(start: int, steps: int) -> list[int]:
    """Descending timesteps (1-based) of a uniform ``steps``-long subsequence of 1..start that contains both ends
    (public ``skip_type='uniform'``: indices ⌊i (start − 1)/(steps − 1)⌋).

    Raises:
        ValueError: steps < 1 or > start.
    """
    if not 1 <= steps <= start:
        raise ValueError(f"steps = {steps} must be in 1..{start}")
    if steps == 1:
        return [start]
    return [i * (start - 1) // (steps - 1) + 1 for i in reversed(range(steps))]


def _full(x: torch.Tensor, t: int) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), device=x.device)


def ddpm_sample(eps_fn: EpsFn, x_t: torch.Tensor, schedule: Schedule, start: int | None = None, steps: int | None = None,
                generator: torch.Generator | None = None, callback: StepCallback | None = None) -> torch.Tensor:
    """Ancestral sampling from timestep ``start`` (default T) to x_0 in ``steps`` steps (default ``start``).

    Args:
        eps_fn: the (mixed) noise prediction.
        x_t: (B, …) the state at timestep ``start`` (pure noise for start = T).
    Returns:
        x_0 of x_t's shape.
    """
    start = schedule.timesteps if start is None else start
    seq = timestep_sequence(start, steps or start)
    x = x_t
    for i, t in enumerate(seq):
        s = seq[i + 1] if i + 1 < len(seq) else 0
        ab_t, ab_s = schedule.ab(t), schedule.ab(s)
        eps = eps_fn(x, _full(x, t))
        alpha = ab_t / ab_s
        beta = 1 - alpha
        x = (x - beta / (1 - ab_t).sqrt() * eps) / alpha.sqrt()
        if s > 0:
            x = x + beta.sqrt() * randn(x.shape, generator, x.device, x.dtype)
        if callback is not None:
            callback(i + 1, len(seq), x)
    return x


def ddim_sample(eps_fn: EpsFn, x_t: torch.Tensor, schedule: Schedule, start: int | None = None, steps: int = 50,
                eta: float = 0.0, generator: torch.Generator | None = None, callback: StepCallback | None = None
                ) -> torch.Tensor:
    """DDIM from timestep ``start`` (default T) to x_0 in ``steps`` steps; ``eta`` = 0 deterministic, 1 = the
    public default ``ddim_kappa``.

    Returns:
        x_0 of x_t's shape.
    """
    start = schedule.timesteps if start is None else start
    seq = timestep_sequence(start, steps)
    x = x_t
    for i, t in enumerate(seq):
        s = seq[i + 1] if i + 1 < len(seq) else 0
        ab_t, ab_s = schedule.ab(t), schedule.ab(s)
        eps = eps_fn(x, _full(x, t))
        x0 = (x - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
        sigma = eta * ((1 - ab_s) / (1 - ab_t)).sqrt() * (1 - ab_t / ab_s).sqrt() if s > 0 else torch.tensor(0.0, dtype=torch.float64)
        x = ab_s.sqrt() * x0 + (1 - ab_s - sigma ** 2).clamp_min(0).sqrt() * eps
        if s > 0 and eta > 0:
            x = x + sigma * randn(x.shape, generator, x.device, x.dtype)
        if callback is not None:
            callback(i + 1, len(seq), x)
    return x


def ode_encode(eps_fn: EpsFn, x0: torch.Tensor, schedule: Schedule, steps: int = 50,
               callback: StepCallback | None = None) -> torch.Tensor:
    """Probability-flow ODE (DDIM η = 0) run forward: clean latents → x_T (deterministic; the inverse of
    :func:`ode_decode` up to discretisation error). x0 is taken as the state at t = 1."""
    return _ode_steps(eps_fn, x0, schedule, list(reversed(timestep_sequence(schedule.timesteps, steps))), callback)


def ode_decode(eps_fn: EpsFn, x_T: torch.Tensor, schedule: Schedule, steps: int = 50,
               callback: StepCallback | None = None) -> torch.Tensor:
    """Probability-flow ODE (DDIM η = 0) from x_T to clean latents, on the same timesteps as :func:`ode_encode`
    (ending at t = 1)."""
    return _ode_steps(eps_fn, x_T, schedule, timestep_sequence(schedule.timesteps, steps), callback)


def _ode_steps(eps_fn: EpsFn, x: torch.Tensor, schedule: Schedule, seq: list[int],
               callback: StepCallback | None) -> torch.Tensor:
    """DDIM (η = 0) steps from each timestep of ``seq`` to the next (up or down the schedule alike)."""
    for i, t in enumerate(seq[:-1]):
        s = seq[i + 1]
        ab_t, ab_s = schedule.ab(t), schedule.ab(s)
        eps = eps_fn(x, _full(x, t))
        x = ab_s.sqrt() * (x - (1 - ab_t).sqrt() * eps) / ab_t.sqrt() + (1 - ab_s).sqrt() * eps
        if callback is not None:
            callback(i + 1, len(seq) - 1, x)
    return x
