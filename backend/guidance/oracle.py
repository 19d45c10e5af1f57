"""The oracle denoiser: guidance that knows the answer, so tests can check a pipeline end to end without weights."""

from __future__ import annotations

from typing import Callable

import torch

from ..geometry.cameras import CameraBatch


class OracleDenoiser:
    """A denoiser that knows the clean latent image ``x0*`` of every camera (tests only: it checks cameras, rendering, schedules and gradients without weights).

    It returns the noise that turns ``x0*`` into the given noisy latents, ε̂ = (z_t − √ᾱ_t x0*) / √(1 − ᾱ_t), which
    is the optimal denoiser for a data distribution concentrated on ``x0*``. Then ε̂ − ε = √ᾱ_t (z − x0*) / √(1 − ᾱ_t):
    SDS with this denoiser pulls each render towards its target, so a correct pipeline must recover the target.

    Args:
        target_fn: ``cameras -> (B, 4, H, W)`` target latents for those cameras.
        alphas_cumprod: ``(T,)`` ᾱ_t of the same schedule the SDS uses.
    """

    def __init__(self, target_fn: Callable[[CameraBatch], torch.Tensor], alphas_cumprod: torch.Tensor):
        self.target_fn = target_fn
        self.alphas_cumprod = alphas_cumprod.detach().float()

    @torch.no_grad()
    def predict_noise(self, latents_noisy: torch.Tensor, timesteps: torch.Tensor, cameras: CameraBatch) -> torch.Tensor:
        target = self.target_fn(cameras).float()
        a = self.alphas_cumprod.to(latents_noisy.device)[timesteps].view(-1, 1, 1, 1)
        return (latents_noisy.float() - a.sqrt() * target) / (1.0 - a).sqrt()
