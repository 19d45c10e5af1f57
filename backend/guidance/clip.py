"""CLIP guidance: the contract every CLIP model meets, the loss, and what the renders are pulled toward.

Dream Fields (Jain et al., CVPR 2022, eq. 2) and CLIP-Mesh (Khalid et al., SIGGRAPH Asia 2022, §3.3) optimise a 3D
representation so that CLIP's embedding of its augmented renders aligns with a target embedding:
``L_CLIP = −mean_views cos(CLIP_image(augment(render(view))), target)``. The target is the text's embedding, or —
CLIP-Mesh's key trick — the image embedding a DALL-E 2 style diffusion prior predicts from the text.

Loading real CLIP models (open_clip, transformers) lives in :mod:`backend.models.clip`; the oracle embedder of the
tests in :mod:`backend.guidance.oracle`. Pipelines use :class:`CLIPGuidance`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F

from ..geometry.cameras import CameraBatch
from .augment import ViewAugmenter


@runtime_checkable
class CLIPEmbedder(Protocol):
    """A CLIP model as guidance sees it, whatever library it comes from.

    Attributes:
        image_size: the square input resolution of the image tower (224 for ViT-B/32), pixels.
        embed_dim: D, the joint embedding's width.
    """

    image_size: int
    embed_dim: int

    def encode_images(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``(B, 3, H, W)`` float display-RGB (sRGB-encoded) images in [0, 1], any H, W (resized to
        ``image_size``, then normalised with the model's mean/std) → ``(B, D)`` float32 unit vectors (the raw
        projected embeddings with ``normalize=False``: LION's conditioning); differentiable with respect to
        ``images``."""
        ...

    def encode_texts(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """``N`` prompts → ``(N, D)`` float32 unit vectors (raw with ``normalize=False``; no gradient)."""
        ...


@runtime_checkable
class ReferenceViews(Protocol):
    """A target that is itself a render: what a reference object looks like from given cameras (the oracle tests:
    the target embedding of each view is CLIP's embedding of the reference's render from the same camera, with the
    same background and augmentation)."""

    def render(self, cameras: CameraBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``cameras`` (len B) → ``rgb (B, 3, H, W)``, ``alpha (B, 1, H, W)`` float in [0, 1] at the pipeline's
        render size."""
        ...


def cosine_loss(image_embeds: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``−mean cos(image_embeds, target)`` and the mean cosine (the CLIP score) as a float.

    Args:
        image_embeds: ``(B, D)`` embeddings (normalised here).
        target: ``(D,)`` one target for all, or ``(B, D)`` one per row (normalised here; no gradient flows to it).

    Raises:
        ValueError: shapes that do not match.
    """
    if image_embeds.dim() != 2:
        raise ValueError(f"image_embeds must be (B, D), got {tuple(image_embeds.shape)}")
    target = target.detach().to(image_embeds.device, image_embeds.dtype)
    if target.dim() == 1:
        target = target.unsqueeze(0)
    if target.shape[-1] != image_embeds.shape[-1] or target.shape[0] not in (1, image_embeds.shape[0]):
        raise ValueError(f"target {tuple(target.shape)} does not match image_embeds {tuple(image_embeds.shape)}")
    cos = (F.normalize(image_embeds, dim=-1) * F.normalize(target, dim=-1)).sum(-1)
    return -cos.mean(), float(cos.detach().mean())


@dataclass
class CLIPOutput:
    """One CLIP guidance evaluation: ``loss`` (scalar, differentiable), ``score`` = mean cosine similarity."""

    loss: torch.Tensor
    score: float


class CLIPGuidance:
    """Renders → random backgrounds + augmentations → CLIP → −cos to the target.

    Args:
        embedder: any :class:`CLIPEmbedder`.
        target: a ``(D,)`` embedding (text or prior) or a :class:`ReferenceViews` (per-camera target, tests).
        augmenter: backgrounds and augmentations (its output size should be ``embedder.image_size``).
    """

    def __init__(self, embedder: CLIPEmbedder, target: torch.Tensor | ReferenceViews, augmenter: ViewAugmenter):
        if isinstance(target, torch.Tensor) and (target.dim() != 1 or target.shape[0] != embedder.embed_dim):
            raise ValueError(f"target embedding must be ({embedder.embed_dim},), got {tuple(target.shape)}")
        self.embedder = embedder
        self.target = target
        self.augmenter = augmenter

    def __call__(self, rgb: torch.Tensor, alpha: torch.Tensor, cameras: CameraBatch,
                 generator: torch.Generator) -> CLIPOutput:
        """The CLIP loss of renders ``rgb (B, 3, H, W)`` / ``alpha (B, 1, H, W)`` (float, [0, 1], display RGB) made
        from ``cameras``; ``generator`` draws backgrounds and augmentations (seeded runs reproduce)."""
        if isinstance(self.target, torch.Tensor):
            (images,) = self.augmenter([(rgb, alpha)], generator)
            target = self.target
        else:
            with torch.no_grad():
                ref_rgb, ref_alpha = self.target.render(cameras)
            images, ref_images = self.augmenter([(rgb, alpha), (ref_rgb.to(rgb), ref_alpha.to(alpha))], generator)
            with torch.no_grad():
                target = self.embedder.encode_images(ref_images)
        loss, score = cosine_loss(self.embedder.encode_images(images), target)
        return CLIPOutput(loss=loss, score=score)
