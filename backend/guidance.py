"""Score distillation sampling (SDS) guidance in Stable Diffusion's latent space.

DreamFusion (Poole et al., 2022) introduced SDS; Latent-NeRF (Metzer et al., CVPR 2023) applies it directly to
4-channel SD latents rendered by a NeRF or a textured mesh. For rendered latents ``z`` (B, 4, 64, 64) and a timestep
``t ~ U[t_min, t_max]·T``::

    z_t = √ᾱ_t z + √(1−ᾱ_t) ε,           ε ~ N(0, I)
    ε̂  = ε_φ(z_t, t, ∅) + s·(ε_φ(z_t, t, y) − ε_φ(z_t, t, ∅))       (classifier-free guidance, s = 100)
    ∂L/∂z = w(t)·(ε̂ − ε)                 w(t) = 1 − ᾱ_t   ("sds")   or   √ᾱ_t·(1 − ᾱ_t)   ("sqrt_alpha", official code)

The "denoiser" that produces ε̂ is pluggable: :class:`StableDiffusionDenoiser` (the real thing, with view-dependent
prompts) or :class:`OracleDenoiser` (knows the clean target of each camera; used by tests to check cameras,
rendering, schedules and gradient plumbing end to end without pretrained weights, DESIGN.md §8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from .cameras import CameraBatch

# Linear approximation latent → RGB for SD 1.x/2.x latents (rows: latent channels L1..L4, columns: R, G, B), as used by
# Latent-NeRF for cheap previews and to initialise its RGB refinement head. Output is roughly in [−1, 1].
LATENT_RGB_FACTORS = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)

VIEW_SUFFIXES = {"front": ", front view", "side": ", side view", "back": ", back view", "overhead": ", overhead view"}


def latents_to_rgb_linear(latents: torch.Tensor) -> torch.Tensor:
    """Cheap preview decode: ``(B, 4, H, W)`` SD latents → ``(B, 3, H, W)`` float in [0, 1] via the 4×3 matrix."""
    if latents.ndim != 4 or latents.shape[1] != 4:
        raise ValueError(f"latents must be (B, 4, H, W), got {tuple(latents.shape)}")
    m = torch.tensor(LATENT_RGB_FACTORS, dtype=latents.dtype, device=latents.device)
    rgb = torch.einsum("bchw,cd->bdhw", latents, m)
    return ((rgb + 1.0) * 0.5).clamp(0.0, 1.0)


@dataclass
class SDSConfig:
    """Score distillation settings (defaults: Latent-NeRF / DESIGN.md §5)."""

    guidance_scale: float = 100.0
    """Classifier-free guidance scale s."""
    min_step_percent: float = 0.02
    """t_min as a fraction of the training timesteps T."""
    max_step_percent: float = 0.98
    """t_max as a fraction of T."""
    weighting: str = "sds"
    """w(t): "sds" = 1 − ᾱ_t (DreamFusion), "sqrt_alpha" = √ᾱ_t·(1 − ᾱ_t) (Latent-NeRF's code), "uniform" = 1."""

    def validate(self) -> None:
        if not 0.0 <= self.min_step_percent <= self.max_step_percent <= 1.0:
            raise ValueError(f"need 0 <= min_step_percent <= max_step_percent <= 1, got "
                             f"{self.min_step_percent}, {self.max_step_percent}")
        if self.weighting not in ("sds", "sqrt_alpha", "uniform"):
            raise ValueError(f"weighting must be 'sds', 'sqrt_alpha' or 'uniform', got {self.weighting!r}")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")


class Denoiser(Protocol):
    """Predicts the noise ε̂ of noisy latents; the part of SDS that knows what images should look like."""

    def predict_noise(self, latents_noisy: torch.Tensor, timesteps: torch.Tensor, cameras: CameraBatch) -> torch.Tensor:
        """``(B, 4, H, W)`` noisy latents, ``(B,)`` int64 timesteps → ``(B, 4, H, W)`` ε̂ (float32)."""


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
        self.config = config or SDSConfig()
        self.config.validate()
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


class StableDiffusionDenoiser:
    """ε̂ from a Stable Diffusion UNet with classifier-free guidance and view-dependent prompts.

    Text embeddings for ``prompt + ", front view"`` (side/back/overhead) and the negative prompt are computed once
    here; each call picks the embedding that matches each camera's view (:meth:`CameraBatch.view_labels`).

    Args:
        components: :class:`backend.models.StableDiffusionComponents`.
        prompt, negative_prompt: the text condition and the unconditional/negative text.
        guidance_scale: CFG scale (100 in Latent-NeRF; much higher than for sampling because SDS averages it out).
        view_dependent_prompts: append the view suffix to the prompt per camera.

    Raises:
        ValueError: empty prompt.
    """

    def __init__(self, components, prompt: str, negative_prompt: str = "", guidance_scale: float = 100.0,
                 view_dependent_prompts: bool = True):
        if not prompt or not prompt.strip():
            raise ValueError("prompt must not be empty")
        self.components = components
        self.guidance_scale = float(guidance_scale)
        self.view_dependent_prompts = view_dependent_prompts
        views = list(VIEW_SUFFIXES) if view_dependent_prompts else ["any"]
        texts = [prompt + VIEW_SUFFIXES.get(v, "") for v in views] + [negative_prompt]
        embeddings = self.encode_prompt(texts)
        self.text_embeddings = {v: embeddings[i] for i, v in enumerate(views)}
        self.uncond_embeddings = embeddings[-1]

    @torch.no_grad()
    def encode_prompt(self, texts: list[str]) -> torch.Tensor:
        """``len(texts)`` strings → ``(N, 77, D)`` CLIP last hidden states on the model's device and dtype."""
        tok = self.components.tokenizer
        ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(self.components.device)
        return self.components.text_encoder(ids)[0].to(self.components.dtype)

    @torch.no_grad()
    def predict_noise(self, latents_noisy: torch.Tensor, timesteps: torch.Tensor, cameras: CameraBatch) -> torch.Tensor:
        comps = self.components
        labels = cameras.view_labels() if self.view_dependent_prompts else ["any"] * len(timesteps)
        cond = torch.stack([self.text_embeddings[v] for v in labels])
        uncond = self.uncond_embeddings.expand_as(cond)
        x_in = torch.cat([latents_noisy, latents_noisy]).to(comps.dtype)
        out = comps.unet(x_in, torch.cat([timesteps, timesteps]), encoder_hidden_states=torch.cat([uncond, cond]))
        pred_uncond, pred_cond = out.sample.float().chunk(2)
        pred = pred_uncond + self.guidance_scale * (pred_cond - pred_uncond)
        if comps.scheduler.config.prediction_type == "v_prediction":  # SD 2.x 768-v models: convert v to ε
            a = comps.scheduler.alphas_cumprod.to(pred.device)[timesteps].view(-1, 1, 1, 1)
            pred = a.sqrt() * pred + (1 - a).sqrt() * latents_noisy.float()
        return pred


class OracleDenoiser:
    """A denoiser that knows the clean latent image ``x0*`` of every camera (tests only, DESIGN.md §8).

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
