"""Noise schedules and the DDIM sampling loop with classifier-free guidance over shape latents.

Facts from the public configs (``scheduler_cfg`` of image/text-ASLDM-256) and sampler
(``michelangelo/models/asl_diffusion/inference_utils.py: ddim_sample``):

- training noise: diffusers ``DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
  beta_schedule="scaled_linear", variance_type="fixed_small", clip_sample=False)``;
- sampling: ``DDIMScheduler`` with the same β, ``clip_sample=False, set_alpha_to_one=False, steps_offset=1``;
  50 steps, guidance 7.5, η = 0; initial latents ``randn · init_noise_sigma`` of shape (B, 256, 64);
- guidance: the denoiser runs on ``[uncond; cond]`` contexts and ε = ε_u + s · (ε_c − ε_u).

:func:`sample_latents` also starts from given latents part-way through the schedule (``strength`` < 1): the
diffuse-then-denoise of variations (LION, Zeng et al. 2022, §3.3 applications), as diffusers' img2img does.
"""

from __future__ import annotations

from typing import Callable

import torch

from .config import MichelangeloConfig

__all__ = ["ddpm_scheduler", "ddim_scheduler", "sample_latents"]


def ddpm_scheduler(config: MichelangeloConfig):
    """The training noise schedule of ``config`` (diffusers ``DDPMScheduler``; use its ``add_noise``)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_start=config.beta_start,
                         beta_end=config.beta_end, beta_schedule=config.beta_schedule, variance_type="fixed_small",
                         clip_sample=False, prediction_type=config.prediction_type)


def ddim_scheduler(config: MichelangeloConfig):
    """The sampler of ``config`` (diffusers ``DDIMScheduler`` with the public settings)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=config.num_train_timesteps, beta_start=config.beta_start,
                         beta_end=config.beta_end, beta_schedule=config.beta_schedule, clip_sample=False,
                         set_alpha_to_one=config.set_alpha_to_one, steps_offset=config.steps_offset,
                         prediction_type=config.prediction_type)


@torch.no_grad()
def sample_latents(denoiser: torch.nn.Module, scheduler, context: torch.Tensor, uncond: torch.Tensor | None,
                   guidance_scale: float = 7.5, num_inference_steps: int = 50,
                   generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                   strength: float = 1.0, eta: float = 0.0,
                   callback: Callable[[int, int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """DDIM sampling of shape latents with classifier-free guidance.

    Args:
        denoiser: ``ASLDMDenoiser``-like, ``denoiser(latents (B, L, C), timesteps (B,), context (B, T, D)) -> ε``.
        scheduler: a diffusers ``DDIMScheduler`` (see :func:`ddim_scheduler`); its timesteps are (re)set here.
        context: (B, T, D) condition tokens (``CLIPConditioner.encode_text`` / ``encode_image``).
        uncond: (B, T, D) unconditional tokens (``CLIPConditioner.unconditional``) or None for no guidance.
        guidance_scale: s in ε = ε_u + s (ε_c − ε_u); 1 (or ``uncond`` None) = conditional only, 0 = unconditional.
        num_inference_steps: DDIM steps for the full schedule (strength 1).
        generator: RNG of the initial noise (and of η > 0 noise); on the device of ``context``.
        latents: None → start from pure noise of shape (B, n_ctx, input_channels) of the denoiser's config; else
            (B, L, C) clean latents (already × ``z_scale_factor``) to diffuse to ``strength`` and denoise back.
        strength: in (0, 1]; with ``latents``, the fraction of the schedule to run (1 = start from pure noise,
            ignoring ``latents``' content). Must be 1 without ``latents``.
        eta: DDIM η (0 = deterministic).
        callback: called after every step as ``callback(step, total, latents)`` (progress, previews, cancellation
            by raising).

    Returns:
        (B, L, C) float32 denoised latents (still × ``z_scale_factor``: divide before ``ShapeVAE.decode``).

    Raises:
        ValueError: inconsistent shapes, steps < 1, strength outside (0, 1] or < 1 without latents.
    """
    if context.ndim != 3:
        raise ValueError(f"context must be (B, T, D), got shape {tuple(context.shape)}")
    b = context.shape[0]
    if uncond is not None and tuple(uncond.shape) != tuple(context.shape):
        raise ValueError(f"uncond must have the shape of context {tuple(context.shape)}, got {tuple(uncond.shape)}")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength!r}")
    if latents is None and strength != 1.0:
        raise ValueError(f"strength {strength} < 1 needs starting latents")
    device = context.device
    cfg = denoiser.config
    shape = (b, cfg.n_ctx, cfg.input_channels)
    if latents is not None and tuple(latents.shape) != shape:
        raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")

    scheduler.set_timesteps(num_inference_steps, device=device)
    timesteps = scheduler.timesteps
    start = min(int(round(num_inference_steps * (1.0 - strength))), num_inference_steps - 1)
    timesteps = timesteps[start:]
    noise = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    if latents is None or start == 0 and strength == 1.0:
        x = noise * scheduler.init_noise_sigma
    else:
        x = scheduler.add_noise(latents.to(device=device, dtype=torch.float32), noise, timesteps[:1].repeat(b))

    guided = uncond is not None and guidance_scale != 1.0
    ctx = torch.cat([uncond, context]) if guided else context
    total = len(timesteps)
    for i, t in enumerate(timesteps):
        model_input = torch.cat([x, x]) if guided else x
        t_batch = t.reshape(1).expand(model_input.shape[0]).to(device=device, dtype=torch.int64)
        eps = denoiser(model_input, t_batch, ctx).float()
        if guided:
            eps_uncond, eps_cond = eps.chunk(2)
            eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
        x = scheduler.step(eps, t, x, eta=eta, generator=generator).prev_sample
        if callback is not None:
            callback(i + 1, total, x)
    return x
