"""``shape_interpolate``: in-between shapes of two meshes — interpolation of their Michelangelo shape latents (LION's
interpolation application, Zeng et al., NeurIPS 2022, §3.3), decoded by :mod:`.shape_common`; shapes are placed
between the two meshes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..michelangelo.model import DEFAULT_TEXT_MODEL
from ..params import param
from .base import JobContext, PipelineInputs, PipelineResult
from .shape_common import ShapeDecodeConfig, load_shape_pipeline


@dataclass
class ShapeInterpolateConfig(ShapeDecodeConfig):
    """Settings of interpolation between two meshes' shape latents."""

    num_shapes: int = param(3, doc="In-between shapes (evenly spaced, the inputs themselves excluded).", low=1,
                            high=32)
    include_ends: bool = param(False, doc="Also return the reconstructions of the two input meshes (first and "
                                          "last).")
    strength: float = param(0.0, doc="Optional diffuse-denoise of each in-between latent towards the model's shape "
                                     "prior (0 = decode the interpolated latents as they are).", low=0.0, high=1.0)
    prompt: str = param("", doc="Optional text steering the denoising when strength > 0.")


def run(config: ShapeInterpolateConfig, inputs: PipelineInputs, ctx: JobContext) -> PipelineResult:
    """Job entry point: ``config.num_shapes`` shapes between ``inputs.meshes['mesh']`` and ``inputs.meshes['mesh_b']``
    (plus the two reconstructions with ``include_ends``).

    The VAE latents (posterior means) are interpolated linearly, z(w) = (1 − w)·z_a + w·z_b at w = k / (K + 1):
    they are points of a learned deterministic code, not Gaussian noise, so the norm-preserving slerp (meant for
    samples of an isotropic Gaussian, e.g. DDIM-inverted noise) has no reason here; the decoder is smooth in its
    input and the straight path is the simplest correct one. Placement (centre, size) is interpolated alike.
    With ``strength`` > 0 every in-between latent is diffused and denoised (same noise for all, so the sequence
    stays smooth) to pull it onto the model's shape prior.

    Raises:
        MeshError: an input without faces; an in-between shape without a surface. ParamError: strength > 0 with a
        VAE-only model. JobCancelled.
    """
    pipe = load_shape_pipeline(config, ctx, DEFAULT_TEXT_MODEL)
    timings: dict[str, float] = {}

    # 1. Encode both meshes.
    t0 = time.perf_counter()
    ctx.progress("encode", 0, 2)
    latent_a, place_a = pipe.encode_mesh(inputs.meshes["mesh"], config.seed, name="mesh")
    ctx.progress("encode", 1, 2)
    latent_b, place_b = pipe.encode_mesh(inputs.meshes["mesh_b"], config.seed, name="mesh_b")
    timings["encode"] = time.perf_counter() - t0

    # 2. Interpolate latents and placements.
    k = config.num_shapes
    ends = 1 if config.include_ends else 0
    weights = [i / (k + 1) for i in range(1 - ends, k + 1 + ends)]
    w = torch.tensor(weights, dtype=torch.float32, device=pipe.device).view(-1, 1, 1)
    latents = (1 - w) * latent_a + w * latent_b
    placements = [place_a.lerp(place_b, x) for x in weights]

    # 3. Optional diffuse-denoise towards the prior (one noise draw shared by all in-between shapes).
    if config.strength > 0:
        pipe.require_denoiser("shape_interpolate with strength > 0")
        context, uncond = pipe.context(config.prompt, None, 1)
        uncond = uncond if config.prompt.strip() else None
        latents = torch.cat([pipe.denoise(latents[i:i + 1], context, uncond, config, config.strength, config.seed,
                                          ctx) for i in range(len(weights))])

    # 4. Meshes.
    metadata = {"pipeline": "shape_interpolate", "num_shapes": k, "include_ends": config.include_ends,
                "weights": weights, "strength": config.strength, "prompt": config.prompt}
    return pipe.finish(latents, placements, config, ctx, metadata, timings)


