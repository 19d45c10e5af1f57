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


class OracleCLIPEmbedder:
    """A CLIP stand-in for tests: the image embedding is a fixed random projection of the down-sampled image.

    ``encode_images(x) = normalize(P · [flatten(avgpool(x, s)) − 0.5, c])`` with ``P`` a seeded Gaussian
    ``(D, 3·s² + 1)`` matrix and ``c`` a constant entry. The constant entry makes the cosine sensitive to scale
    (without it ``x − 0.5`` and ``2(x − 0.5)`` would embed alike), so the cosine is 1 exactly when the down-sampled
    images are equal, and a random projection keeps the geometry (Johnson-Lindenstrauss). CLIP guidance driven by it,
    with a :class:`~.clip.ReferenceViews`
    target, must pull renders toward the reference's renders — which checks cameras, rendering, backgrounds,
    augmentations and gradients end to end without weights. It has no text tower: ``encode_texts`` raises.

    Args:
        image_size: the input resolution it reports (what the augmenter outputs).
        pool_size: s, the side images are average-pooled to before the projection.
        embed_dim: D.
        seed: seeds ``P``.
    """

    def __init__(self, image_size: int = 64, pool_size: int = 16, embed_dim: int = 256, seed: int = 0):
        self.image_size = int(image_size)
        self.embed_dim = int(embed_dim)
        self.pool_size = int(pool_size)
        generator = torch.Generator().manual_seed(seed)
        features = 3 * pool_size * pool_size
        self.projection = torch.randn((embed_dim, features + 1), generator=generator) / embed_dim ** 0.5
        self.constant = 0.25 * features ** 0.5  # the norm of a typical centred image's features

    def encode_images(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``(B, 3, H, W)`` float images → ``(B, D)`` unit vectors (the projection itself with
        ``normalize=False``; differentiable)."""
        pooled = torch.nn.functional.adaptive_avg_pool2d(images.float(), self.pool_size).flatten(1) - 0.5
        constant = torch.full((pooled.shape[0], 1), self.constant, device=pooled.device)
        embeds = torch.cat([pooled, constant], dim=1) @ self.projection.to(images.device).T
        return torch.nn.functional.normalize(embeds, dim=-1) if normalize else embeds

    def encode_texts(self, texts, normalize: bool = True) -> torch.Tensor:
        raise ValueError("the oracle CLIP embedder has no text tower: give CLIPGuidance a ReferenceViews target")
