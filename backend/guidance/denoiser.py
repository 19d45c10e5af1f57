"""Denoisers: what SDS asks "which noise is in these noisy latents?".

:class:`Denoiser` is the protocol every guidance uses (SDS today; VSD and others next); :class:`StableDiffusionDenoiser`
is the real one — a Stable Diffusion UNet with classifier-free guidance and view-dependent prompts (DreamFusion §3.2,
Latent-NeRF's ", front view" / ", side view" / ", back view" / ", overhead view" suffixes).
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..geometry.cameras import CameraBatch


VIEW_SUFFIXES = {"front": ", front view", "side": ", side view", "back": ", back view", "overhead": ", overhead view"}


class Denoiser(Protocol):
    """Predicts the noise ε̂ of noisy latents; the part of SDS that knows what images should look like."""

    def predict_noise(self, latents_noisy: torch.Tensor, timesteps: torch.Tensor, cameras: CameraBatch) -> torch.Tensor:
        """``(B, 4, H, W)`` noisy latents, ``(B,)`` int64 timesteps → ``(B, 4, H, W)`` ε̂ (float32)."""


class StableDiffusionDenoiser:
    """ε̂ from a Stable Diffusion UNet with classifier-free guidance and view-dependent prompts.

    Text embeddings for ``prompt + ", front view"`` (side/back/overhead) and the negative prompt are computed once
    here; each call picks the embedding that matches each camera's view (:meth:`CameraBatch.view_labels`).

    Args:
        components: :class:`backend.models.stable_diffusion.StableDiffusionComponents`.
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
        encoder = self.components.text_encoder  # on the CPU under --low-vram (apply_low_vram)
        ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(encoder.device)
        return encoder(ids)[0].to(device=self.components.device, dtype=self.components.dtype)

    def embeddings(self, cameras: CameraBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cond, uncond)``, each (B, 77, D): the text embedding matching each camera's view, and the negative one."""
        labels = cameras.view_labels() if self.view_dependent_prompts else ["any"] * len(cameras)
        cond = torch.stack([self.text_embeddings[v] for v in labels])
        return cond, self.uncond_embeddings.expand_as(cond)

    @torch.no_grad()
    def predict_noise(self, latents_noisy: torch.Tensor, timesteps: torch.Tensor, cameras: CameraBatch) -> torch.Tensor:
        comps = self.components
        cond, uncond = self.embeddings(cameras)
        x_in = torch.cat([latents_noisy, latents_noisy]).to(comps.dtype)
        out = comps.unet(x_in, torch.cat([timesteps, timesteps]), encoder_hidden_states=torch.cat([uncond, cond]))
        pred_uncond, pred_cond = out.sample.float().chunk(2)
        pred = pred_uncond + self.guidance_scale * (pred_cond - pred_uncond)
        return to_epsilon(pred, latents_noisy, timesteps, comps.scheduler)


def to_epsilon(model_output: torch.Tensor, latents_noisy: torch.Tensor, timesteps: torch.Tensor,
               scheduler) -> torch.Tensor:
    """The UNet's output as ε̂ (B, 4, H, W) float32: itself for ε-prediction models; for v-prediction models (SD 2.x
    768-v) ε̂ = √ᾱ_t·v + √(1 − ᾱ_t)·z_t (Salimans & Ho, 2022)."""
    pred = model_output.float()
    if scheduler.config.prediction_type == "v_prediction":
        a = scheduler.alphas_cumprod.to(pred.device)[timesteps].view(-1, 1, 1, 1)
        pred = a.sqrt() * pred + (1 - a).sqrt() * latents_noisy.float()
    return pred
