"""Score distillation sampling (SDS) guidance in Stable Diffusion's latent space.

DreamFusion (Poole et al., 2022) introduced SDS; Latent-NeRF (Metzer et al., CVPR 2023) applies it directly to
4-channel SD latents rendered by a NeRF or a textured mesh. For rendered latents ``z`` (B, 4, 64, 64) and a timestep
``t ~ U[t_min, t_max]·T``::

    z_t = √ᾱ_t z + √(1−ᾱ_t) ε,           ε ~ N(0, I)
    ε̂  = ε_φ(z_t, t, ∅) + s·(ε_φ(z_t, t, y) − ε_φ(z_t, t, ∅))       (classifier-free guidance, s = 100)
    ∂L/∂z = w(t)·(ε̂ − ε)                 w(t) = 1 − ᾱ_t   ("sds")   or   √ᾱ_t·(1 − ᾱ_t)   ("sqrt_alpha", official code)

The "denoiser" that produces ε̂ is pluggable: :class:`StableDiffusionDenoiser` (the real thing, with view-dependent
prompts) or :class:`OracleDenoiser` (knows the clean target of each camera; used by tests to check cameras,
rendering, schedules and gradient plumbing end to end without pretrained weights).
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def validate(self) -> None:
        """Cross-field rule: ``min_step_percent <= max_step_percent``. Raises ValueError."""
        if self.min_step_percent > self.max_step_percent:
            raise ValueError(f"need 0 <= min_step_percent <= max_step_percent <= 1, got "
                             f"{self.min_step_percent}, {self.max_step_percent}")


@dataclass
class SDSOutput:
    """One SDS evaluation: ``loss`` (scalar, backward gives ∂L/∂z = w(t)(ε̂ − ε)), ``timesteps`` (B,), ``grad_norm``."""

    loss: torch.Tensor
    timesteps: torch.Tensor
    grad_norm: float


class ScoreDistillation:
    """SDS on rendered latents with any :class:`Denoiser`.

    Args:
        alphas_cumprod: ``(T,)`` ᾱ_t of the diffusion model's training schedule (``scheduler.alphas_cumprod``).
        denoiser: produces ε̂.
        config: timestep range and weighting.
    """

    def __init__(self, alphas_cumprod: torch.Tensor, denoiser: Denoiser, config: SDSConfig | None = None):
        self.config = check_config(config or SDSConfig())
        self.alphas_cumprod = alphas_cumprod.detach().float()
        self.denoiser = denoiser
        num_train_timesteps = self.alphas_cumprod.shape[0]
        self.min_step = int(num_train_timesteps * self.config.min_step_percent)
        self.max_step = max(self.min_step, int(num_train_timesteps * self.config.max_step_percent))

    def __call__(self, latents: torch.Tensor, cameras: CameraBatch, generator: torch.Generator) -> SDSOutput:
        """SDS loss for ``latents`` (B, 4, H, W) float32 rendered from ``cameras`` (len B).

        ``generator`` draws t and ε, so a seeded run is reproducible; it must live on ``latents.device``.
        """
        batch = latents.shape[0]
        device = latents.device
        alphas = self.alphas_cumprod.to(device)
        timesteps = torch.randint(self.min_step, self.max_step + 1, (batch,), generator=generator, device=device)
        noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
        a = alphas[timesteps].view(-1, 1, 1, 1)
        with torch.no_grad():
            latents_noisy = a.sqrt() * latents.detach() + (1.0 - a).sqrt() * noise
            noise_pred = self.denoiser.predict_noise(latents_noisy, timesteps, cameras).float()
        if self.config.weighting == "sds":
            w = 1.0 - a
        elif self.config.weighting == "sqrt_alpha":
            w = a.sqrt() * (1.0 - a)
        else:
            w = torch.ones_like(a)
        grad = torch.nan_to_num(w * (noise_pred - noise))
        # d/dz of 0.5·||z − sg(z − grad)||² is exactly grad (the usual SDS reparametrisation).
        target = (latents - grad).detach()
        loss = 0.5 * F.mse_loss(latents.float(), target, reduction="sum") / batch
        return SDSOutput(loss=loss, timesteps=timesteps, grad_norm=float(grad.norm()))


