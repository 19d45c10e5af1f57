"""``shape_variations``: variations of a mesh — LION's diffuse-denoise (Zeng et al., NeurIPS 2022, §3.3) in
Michelangelo's shape latent space: encode the mesh, diffuse its latent to ``strength``, denoise back (optionally
towards a prompt), decode (:mod:`.shape_common`). The variants stand where the mesh stands, at its size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..michelangelo.model import DEFAULT_TEXT_MODEL
from ..params import param
from .base import JobContext, PipelineInputs, PipelineResult
from .shape_common import ShapeDecodeConfig, load_shape_pipeline


@dataclass
class ShapeVariationsConfig(ShapeDecodeConfig):
    """Settings of variations of a mesh (LION's diffuse-denoise in Michelangelo's latent space)."""

    prompt: str = param("", doc="Optional text steering the variants (empty = unconditional denoising).")
    strength: float = param(0.5, doc="How far the mesh is diffused before denoising: small = close to the input, "
                                     "1 = a new shape.", low=0.01, high=1.0)
    num_samples: int = param(4, doc="Variants to make (each a mesh of the result).", low=1, high=16)


def run(config: ShapeVariationsConfig, inputs: PipelineInputs, ctx: JobContext) -> PipelineResult:
    """Job entry point: ``inputs.meshes['mesh']`` → ``config.num_samples`` variants: encode, diffuse to
    ``strength``, denoise (optionally prompted).

    All variants start from the same latent with different noise (one seeded generator for the batch), land where
    the input stands, at its size.

    Raises:
        MeshError: input without faces / of zero size; a variant without a surface. ParamError: no denoiser, or a
        prompt for an image-conditioned model. JobCancelled.
    """
    pipe = load_shape_pipeline(config, ctx, DEFAULT_TEXT_MODEL)
    pipe.require_denoiser("shape_variations")
    timings: dict[str, float] = {}

    # 1. Encode the input mesh: surface samples + normals in the model frame → VAE posterior mean.
    t0 = time.perf_counter()
    ctx.progress("encode", 0, 1)
    latent, placement = pipe.encode_mesh(inputs.meshes["mesh"], config.seed)
    timings["encode"] = time.perf_counter() - t0

    # 2. Condition: the prompt's tokens, or the unconditional tokens (no guidance) without one.
    context, uncond = pipe.context(config.prompt, None, config.num_samples)
    if not config.prompt.strip():
        uncond = None

    # 3. Diffuse to strength, denoise back (DDIM over the remaining steps).
    t0 = time.perf_counter()
    latents = pipe.denoise(latent.expand(config.num_samples, -1, -1), context, uncond, config, config.strength,
                           config.seed, ctx)
    timings["denoise"] = time.perf_counter() - t0

    # 4. Meshes placed like the input.
    metadata = {"pipeline": "shape_variations", "prompt": config.prompt, "strength": config.strength,
                "num_samples": config.num_samples, "guidance_scale": config.guidance_scale}
    return pipe.finish(latents, [placement] * config.num_samples, config, ctx, metadata, timings)

