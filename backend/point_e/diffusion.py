"""Point-E's Gaussian diffusion facts and its Karras sampler (Heun, with stochastic churn and guidance).

Facts (public ``point_e/diffusion/gaussian_diffusion.py``, ``k_diffusion.py``, ``configs.py``):

- 1024 timesteps; betas ``cosine`` (Nichol & Dhariwal 2021: ᾱ(t) = cos²((t/T + 0.008)/1.008 · π/2), β capped at
  0.999) for the base models, ``linear`` (Ho et al. 2020, β from 1e-4·1000/T to 0.02·1000/T) for the upsampler;
- the model predicts ε (channels 0–5) and learned-range variance values (channels 6–11; unused by the ODE sampler);
- points live in diffusion space ``x = point · CHANNEL_SCALES + CHANNEL_BIASES`` (xyz × 2; rgb/127.5 − 1);
- Karras et al. 2022 sampling on the VP model (``GaussianToKarrasDenoiser``): σ schedule
  ``(σ_max^(1/ρ) + i/(n−1) (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ`` then 0; the denoiser at σ feeds ``x / √(σ² + 1)`` at the
  integer timestep whose ᾱ matches 1 / (σ² + 1) (interpolated, truncated), and returns
  x̂₀ = (x_vp − √(1 − ᾱ) ε) / √ᾱ clipped to [−1, 1];
- classifier-free guidance on x̂₀: uncond + s (cond − uncond), the unconditional half with every condition zeroed;
  s ∈ {0, 1} means no guidance (one pass);
- Heun (Karras Algorithm 2): γ = min(s_churn / n, √2 − 1), σ̂ = σ(1 + γ), noise √(σ̂² − σ²) added when γ > 0; an Euler
  step into σ = 0.

Randomness comes only from the ``torch.Generator`` passed in: same seed, same points.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .config import CHANNEL_BIASES, CHANNEL_SCALES, SamplerConfig

__all__ = ["beta_schedule", "alphas_cumprod", "karras_sigmas", "sigma_to_timestep", "scale_channels",
           "unscale_channels", "make_denoiser", "karras_sample"]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``denoiser(x (B, C, K) at noise σ, sigma (B,)) -> x̂₀ (B, C, K)``."""


def beta_schedule(name: str, timesteps: int) -> np.ndarray:
    """(T,) float64 betas of schedule ``name`` ("cosine" or "linear").

    Raises:
        ValueError: unknown name.
    """
    if name == "linear":
        scale = 1000.0 / timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=np.float64)
    if name == "cosine":
        def alpha_bar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1 - alpha_bar((i + 1) / timesteps) / alpha_bar(i / timesteps), 0.999)
                         for i in range(timesteps)], dtype=np.float64)
    raise ValueError(f"unknown beta schedule {name!r}; expected 'cosine' or 'linear'")


def alphas_cumprod(config: SamplerConfig) -> np.ndarray:
    """(T,) float64 ᾱ_t = ∏(1 − β) of a stage's schedule (decreasing)."""
    return np.cumprod(1.0 - beta_schedule(config.schedule, config.timesteps))


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """(steps + 1,) float32 noise levels, σ_max → σ_min on Karras et al.'s ρ-spaced ramp, then 0."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def sigma_to_timestep(sigma: float, acp: np.ndarray) -> int:
    """The integer timestep of noise level σ: ᾱ = 1/(σ² + 1) looked up in ``acp`` by linear interpolation of t,
    truncated (0 above ᾱ_0, T − 1 at or below ᾱ_{T−1}), as the public ``GaussianToKarrasDenoiser.sigma_to_t``."""
    alpha = 1.0 / (sigma ** 2 + 1.0)
    if alpha > acp[0]:
        return 0
    if alpha <= acp[-1]:
        return len(acp) - 1
    return int(np.interp(-alpha, -acp, np.arange(len(acp), dtype=np.float64)))  # −ᾱ increases with t


def _channel_vectors(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scales = torch.tensor(CHANNEL_SCALES, dtype=x.dtype, device=x.device).view(1, -1, 1)
    biases = torch.tensor(CHANNEL_BIASES, dtype=x.dtype, device=x.device).view(1, -1, 1)
    return scales, biases


def scale_channels(points: torch.Tensor) -> torch.Tensor:
    """Point space (B, 6, K) (xyz model units, rgb in [0, 255]) → diffusion space (about [−1, 1])."""
    scales, biases = _channel_vectors(points)
    return points * scales + biases


def unscale_channels(x: torch.Tensor) -> torch.Tensor:
    """Diffusion space (B, 6, K) → point space; inverse of :func:`scale_channels`."""
    scales, biases = _channel_vectors(x)
    return (x - biases) / scales


def make_denoiser(model: Callable[..., torch.Tensor], config: SamplerConfig, cond: dict[str, torch.Tensor],
                  uncond: dict[str, torch.Tensor] | None, guidance_scale: float) -> Denoiser:
    """The guided x̂₀ denoiser of one stage.

    Args:
        model: ``model(x_vp (B', 6, K), t (B',), **kwargs) -> (B', 12, K)``.
        config: the stage's diffusion (schedule, timesteps).
        cond: the model's keyword arguments for the conditional pass (tensors with batch first, batch B).
        uncond: the same for the unconditional pass (zeros of the same shapes), used when guidance is on.
        guidance_scale: s; 0 or 1 = a single conditional pass.

    Returns:
        ``denoiser(x (B, 6, K), sigma (B,)) -> x̂₀ (B, 6, K)`` clipped to [−1, 1] (guided).
    """
    acp = alphas_cumprod(config)
    guided = guidance_scale not in (0.0, 1.0)
    kwargs = {k: torch.cat([v, uncond[k]]) for k, v in cond.items()} if guided else cond

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if guided:
            x, sigma = torch.cat([x, x]), torch.cat([sigma, sigma])
        steps = [sigma_to_timestep(float(s), acp) for s in sigma.cpu()]
        t = torch.tensor(steps, dtype=torch.long, device=x.device)
        a = torch.tensor(acp[steps], dtype=x.dtype, device=x.device).view(-1, 1, 1)
        x_vp = x / torch.sqrt(sigma.view(-1, 1, 1) ** 2 + 1)
        eps = model(x_vp, t, **kwargs)[:, :x.shape[1]]
        x0 = ((x_vp - torch.sqrt(1 - a) * eps) / torch.sqrt(a)).clamp(-1, 1)
        if guided:
            c, u = x0.chunk(2)
            x0 = u + guidance_scale * (c - u)
        return x0

    return denoise


@torch.no_grad()
def karras_sample(denoiser: Denoiser, shape: tuple[int, ...], config: SamplerConfig, generator: torch.Generator,
                  device: torch.device | str = "cpu", steps: int | None = None,
                  callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Karras et al. 2022 Algorithm 2 (Heun with churn) from x_T = σ_max · N(0, I).

    Args:
        denoiser: see :func:`make_denoiser`.
        shape: (B, 6, K).
        config: σ_min, σ_max, ρ, s_churn and the default step count.
        generator: the only source of randomness (a CPU generator works for any ``device``).
        steps: Heun steps (default ``config.karras_steps``).
        callback: ``callback(step, total)`` after each step (1-based; may raise to cancel).

    Returns:
        (B, 6, K) float32 samples in diffusion space (the last x̂₀).
    """
    n = steps or config.karras_steps
    sigmas = karras_sigmas(n, config.sigma_min, config.sigma_max, config.rho).to(device)
    x = torch.randn(shape, generator=generator, device=generator.device).to(device) * config.sigma_max
    ones = x.new_ones(shape[0])
    gamma = min(config.s_churn / n, 2 ** 0.5 - 1)
    for i in range(n):
        sigma, nxt = sigmas[i], sigmas[i + 1]
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            noise = torch.randn(shape, generator=generator, device=generator.device).to(device)
            x = x + noise * torch.sqrt(sigma_hat ** 2 - sigma ** 2)
        denoised = denoiser(x, sigma_hat * ones)
        d = (x - denoised) / sigma_hat
        if nxt == 0:
            x = x + d * (nxt - sigma_hat)  # Euler into σ = 0: x = x̂₀
        else:
            x_2 = x + d * (nxt - sigma_hat)
            d_2 = (x_2 - denoiser(x_2, nxt * ones)) / nxt
            x = x + (d + d_2) / 2 * (nxt - sigma_hat)
        if callback is not None:
            callback(i + 1, n)
    return x
