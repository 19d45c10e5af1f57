"""What CLIP guidance does to a render before CLIP sees it: a random background behind it, then random crops and
perspective warps (Dream Fields, Jain et al. CVPR 2022 §3.3-3.4; CLIP-Mesh, Khalid et al. SIGGRAPH Asia 2022 §3.3).

Backgrounds keep CLIP from scoring the empty space around a transparent object (Dream Fields: random backgrounds
prevent the "fill the frame with the concept" solution); augmentations keep the optimiser from fooling CLIP with
adversarial pixel patterns. The augmentations are kornia's (differentiable, batched).

Every random choice here is drawn from the caller's ``torch.Generator``, so a seeded run is reproducible: kornia draws
its parameters from torch's global generator, so they are drawn inside ``torch.random.fork_rng`` under a seed taken
from the caller's generator, which leaves the global generator untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..params import Config, check_config, param

BACKGROUNDS = ("mixed", "solid", "noise", "checkerboard", "white", "black")
"""Background kinds: ``mixed`` draws solid / noise / checkerboard per image, uniformly."""


@dataclass
class ViewAugmentConfig(Config):
    """Backgrounds and augmentations of the renders CLIP scores (defaults: CLIP-Mesh's)."""

    background: str = param("mixed", doc="Background behind the render: mixed (solid / Gaussian noise / checkerboard "
                                         "per image), or one kind for every image.", choices=BACKGROUNDS)
    num_augmentations: int = param(1, doc="Augmented copies of each render scored by CLIP (their losses are "
                                          "averaged).", low=1, high=32)
    crop_scale: tuple[float, float] = param((0.8, 1.0), doc="Random resized crop: range of the kept area as a "
                                                            "fraction of the image (1, 1 = no crop).",
                                            low=0.05, high=1.0)
    perspective: float = param(0.5, doc="Random perspective warp: distortion scale (0 = none).", low=0.0, high=1.0)
    perspective_probability: float = param(0.5, doc="Probability of the perspective warp per image.",
                                           low=0.0, high=1.0)


AUGMENT_FIELDS = ("background", "num_augmentations", "crop_scale", "perspective", "perspective_probability")
"""The :class:`ViewAugmentConfig` fields a CLIP pipeline's config repeats flat (the CLI makes flags of flat fields)."""


def augment_config_of(settings) -> ViewAugmentConfig:
    """The :class:`ViewAugmentConfig` of a pipeline config that has the :data:`AUGMENT_FIELDS` as its own fields
    (``CLIPMeshConfig``, ``DreamFieldsConfig``: each with its method's defaults). Raises ParamError for bad values."""
    return ViewAugmentConfig(**{name: getattr(settings, name) for name in AUGMENT_FIELDS})


def random_backgrounds(kind: str, batch: int, height: int, width: int, generator: torch.Generator,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """``(batch, 3, height, width)`` float32 backgrounds in [0, 1] (display RGB).

    Kinds: ``solid`` a uniform random colour per image; ``noise`` per-pixel Gaussian noise N(0.5, 0.25²), clamped;
    ``checkerboard`` two random colours in squares of a random size (4 to 16 squares across); ``white`` / ``black``;
    ``mixed`` one of solid / noise / checkerboard per image, uniformly. Raises ValueError for an unknown kind.
    """
    if kind not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {kind!r}")
    shape = (batch, 3, height, width)
    if kind == "white":
        return torch.ones(shape, device=device)
    if kind == "black":
        return torch.zeros(shape, device=device)
    if kind == "mixed":
        kinds = torch.randint(0, 3, (batch,), generator=generator, device=device)
        choices = [random_backgrounds(k, batch, height, width, generator, device)
                   for k in ("solid", "noise", "checkerboard")]
        stacked = torch.stack(choices)  # (3, B, 3, H, W)
        return stacked[kinds, torch.arange(batch, device=device)]
    if kind == "solid":
        colour = torch.rand((batch, 3, 1, 1), generator=generator, device=device)
        return colour.expand(shape).contiguous()
    if kind == "noise":
        noise = torch.randn(shape, generator=generator, device=device)
        return (0.5 + 0.25 * noise).clamp(0.0, 1.0)
    squares = torch.randint(4, 17, (batch,), generator=generator, device=device)
    colours = torch.rand((batch, 2, 3), generator=generator, device=device)
    ys = torch.arange(height, device=device).view(1, height, 1)
    xs = torch.arange(width, device=device).view(1, 1, width)
    cell = (max(height, width) / squares.float()).view(batch, 1, 1)
    parity = ((torch.floor(ys / cell) + torch.floor(xs / cell)) % 2).long()  # (B, H, W)
    out = torch.gather(colours, 1, parity.view(batch, -1, 1).expand(-1, -1, 3))  # (B, H*W, 3)
    return out.view(batch, height, width, 3).permute(0, 3, 1, 2).contiguous()


def composite(rgb: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Alpha-composite: ``rgb * alpha + background * (1 - alpha)``; rgb/background (B, 3, H, W), alpha (B, 1, H, W),
    straight (not premultiplied) colour in [0, 1]."""
    return rgb * alpha + background * (1.0 - alpha)


class ViewAugmenter:
    """Backgrounds + augmentations, applied with the SAME random draws to several stacks of renders.

    The same draws matter when a target is itself a render (a reference object seen from the same cameras, as the
    oracle tests do): both then get the same background and the same crop.

    Args:
        config: the settings.
        output_size: side of the square output images (the CLIP model's input resolution, e.g. 224).
    """

    def __init__(self, config: ViewAugmentConfig, output_size: int):
        import kornia.augmentation as K

        self.config = check_config(config)
        if int(output_size) < 8:
            raise ValueError(f"output_size must be >= 8, got {output_size}")
        self.output_size = int(output_size)
        self._crop = K.RandomResizedCrop((self.output_size, self.output_size), scale=self.config.crop_scale,
                                         ratio=(1.0, 1.0), p=1.0)
        self._warp = (K.RandomPerspective(self.config.perspective, p=self.config.perspective_probability)
                      if self.config.perspective > 0 and self.config.perspective_probability > 0 else None)

    def __call__(self, layers: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 generator: torch.Generator) -> list[torch.Tensor]:
        """Augment each ``(rgb (B, 3, H, W), alpha (B, 1, H, W))`` stack, float in [0, 1], all of one shape.

        Returns one ``(B * num_augmentations, 3, S, S)`` tensor per stack (S = ``output_size``), copies of image b at
        rows ``b * num_augmentations + k``; differentiable with respect to ``rgb`` and ``alpha``.

        Raises:
            ValueError: no stacks, stacks of different shapes, or not 4-D (B, 3|1, H, W) tensors.
        """
        if not layers:
            raise ValueError("ViewAugmenter needs at least one (rgb, alpha) stack")
        shape = layers[0][0].shape
        for rgb, alpha in layers:
            if rgb.dim() != 4 or rgb.shape[1] != 3 or alpha.shape != (rgb.shape[0], 1, *rgb.shape[2:]):
                raise ValueError(f"expected rgb (B, 3, H, W) and alpha (B, 1, H, W), got {tuple(rgb.shape)} and "
                                 f"{tuple(alpha.shape)}")
            if rgb.shape != shape:
                raise ValueError(f"all stacks must have one shape, got {tuple(shape)} and {tuple(rgb.shape)}")
        batch, _, height, width = shape
        n = self.config.num_augmentations
        device = layers[0][0].device
        background = random_backgrounds(self.config.background, batch * n, height, width, generator, device)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            crop_params = self._crop.forward_parameters(torch.Size((batch * n, 3, height, width)))
            warp_params = (self._warp.forward_parameters(torch.Size((batch * n, 3, self.output_size,
                                                                     self.output_size)))
                           if self._warp is not None else None)
        out = []
        for rgb, alpha in layers:
            images = composite(rgb.repeat_interleave(n, 0), alpha.repeat_interleave(n, 0), background)
            images = self._crop(images, params=crop_params)
            if self._warp is not None:
                images = self._warp(images, params=warp_params)
            out.append(images)
        return out


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, antialiased resize of ``(B, C, H, W)`` images to ``(B, C, size, size)`` (no crop; a non-square
    image is stretched — renders here are square)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
