"""``shape_ldm``: a prompt or a concept image → shapes in seconds (Michelangelo's aligned shape latent diffusion).

Zhao et al., "Michelangelo" (NeurIPS 2023): DDIM with classifier-free guidance over the (256, 64) shape latent,
conditioned on CLIP ViT-L/14 tokens of the prompt or the image, then occupancy decoding and marching cubes
(:mod:`.shape_common`). Defaults: the public inference (50 DDIM steps, guidance 7.5, 129³ grid).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..michelangelo.model import DEFAULT_IMAGE_MODEL, DEFAULT_TEXT_MODEL
from ..params import param
from .base import JobContext, PipelineInputs, PipelineResult
from .conditions import prompt_or_image
from .shape_common import Placement, ShapeDecodeConfig, load_shape_pipeline


@dataclass
class ShapeLDMConfig(ShapeDecodeConfig):
    """Settings of text/image → shape (defaults: the public inference)."""

    prompt: str = param("", doc="What to generate, e.g. 'a swivel office chair with five wheels'; leave empty when "
                                "an image is given.")
    num_samples: int = param(1, doc="Shapes to generate (each a mesh of the result).", low=1, high=16)


def check_inputs(config: ShapeLDMConfig, inputs: PipelineInputs) -> None:
    """A prompt or an image, not both, not neither (:func:`.conditions.prompt_or_image`).

    Raises:
        ParamError: no prompt and no image, or both. ValueError: a bad image.
    """
    prompt_or_image("shape_ldm", config.prompt, inputs)


def run(config: ShapeLDMConfig, inputs: PipelineInputs, ctx: JobContext) -> PipelineResult:
    """Job entry point: the prompt or ``inputs.images['image']`` → ``config.num_samples`` shapes.

    Returns:
        :class:`PipelineResult` with one mesh per sample, Blender frame, around the origin;
        ``extras['latents']`` (num_samples, L, C).

    Raises:
        ParamError: model without a denoiser, or not conditioned on the given kind. MeshError: a sample without a
        surface. JobCancelled.
    """
    check_inputs(config, inputs)
    image = inputs.images.get("image")
    pipe = load_shape_pipeline(config, ctx, DEFAULT_IMAGE_MODEL if image is not None else DEFAULT_TEXT_MODEL)
    pipe.require_denoiser("shape_ldm")
    timings: dict[str, float] = {}

    # 1. Condition: CLIP tokens of the prompt or the image, and the unconditional tokens for guidance.
    t0 = time.perf_counter()
    context, uncond = pipe.context(config.prompt, image, config.num_samples)
    timings["condition"] = time.perf_counter() - t0

    # 2. DDIM from noise, classifier-free guidance.
    t0 = time.perf_counter()
    latents = pipe.denoise(None, context, uncond, config, 1.0, config.seed, ctx)
    timings["denoise"] = time.perf_counter() - t0

    # 3. Preview, occupancy → marching cubes → clean-up → Blender frame.
    placements = [Placement.identity()] * config.num_samples
    metadata = {"pipeline": "shape_ldm", "prompt": config.prompt, "image": image is not None,
                "num_samples": config.num_samples, "guidance_scale": config.guidance_scale,
                "num_inference_steps": config.num_inference_steps}
    return pipe.finish(latents, placements, config, ctx, metadata, timings)

