"""Shapes in seconds: Michelangelo text/image → shape, variations of a mesh, and interpolation between two meshes.

After Zhao et al., "Michelangelo: Conditional 3D Shape Generation based on Shape-Image-Text Aligned Latent
Representation" (NeurIPS 2023): the aligned shape latent diffusion model (ASLDM) samples a (256, 64) shape latent by
DDIM with classifier-free guidance, conditioned on CLIP ViT-L/14 tokens of a prompt or an image; the SITA-VAE decodes
it into an occupancy field, queried on a grid in [-1.1, 1.1]³ (129³ by default) in bounded-memory chunks; marching
cubes at logit 0, clean-up (small floaters dropped, closed parts wound outward) and the axis change to Blender's frame
give the mesh. Variations and interpolation are LION's applications (Zeng et al., NeurIPS 2022, §3.3) in this latent
space: a given mesh is encoded by the VAE, diffused to a ``strength`` and denoised back (variations), or two encoded
meshes are interpolated (interpolation).

This module holds what the three shape pipelines share: :class:`ShapeDecodeConfig` and :class:`ShapePipeline`
around one loaded model. The pipelines (rows of :data:`backend.pipelines.PIPELINES`) are one file each:

- :mod:`.shape_ldm`: a prompt or an input image → ``num_samples`` meshes.
- :mod:`.shape_variations`: input mesh ``mesh`` (+ optional prompt) → ``num_samples`` variants at ``strength``.
- :mod:`.shape_interpolate`: input meshes ``mesh`` and ``mesh_b`` → ``num_shapes`` in-between shapes.

Results carry one mesh per sample; before the final meshes, one partial update carries a coarse preview of every
sample.

Frames: the model frame is Michelangelo's training frame (Y up, shapes normalised to a largest half-extent of 1, as
:func:`backend.michelangelo.data.to_model_frame` makes them); :func:`backend.geometry.frames.michelangelo_to_blender`
takes results to Blender's Z-up world frame (model units = metres for generated shapes). Variations and
interpolations land where the input meshes stand, at their size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..geometry.extract import MIN_RESOLUTION, clean_mesh, marching_cubes, sample_grid
from ..geometry.frames import michelangelo_to_blender
from ..geometry.mesh import MeshError, TriMesh, validate_mesh
from ..michelangelo.data import sample_surface, to_model_frame
from ..michelangelo.model import DEFAULT_IMAGE_MODEL, DEFAULT_TEXT_MODEL, MichelangeloBundle, load_michelangelo
from ..michelangelo.sampling import sample_latents
from ..params import Config, ParamError, param
from .base import JobContext, PipelineResult, ResultMesh

AUTO_MODEL = "auto"
SURFACE_POINTS = 4096
"""Surface points (+ normals) that encode a mesh: the public VAE's training and inference count."""
SURFACE_LEVEL = 0.0
"""Occupancy logit of the surface (sigmoid 0.5), the public extraction level."""


# ---------------------------------------------------------------------------------------------------------------------
# Configs.
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class ShapeDecodeConfig(Config):
    """Settings every shape pipeline has: the model, DDIM sampling and mesh extraction."""

    model: str = param(AUTO_MODEL, doc="Michelangelo model: 'auto' (text-ASLDM-256 for prompts and meshes, "
                                       "image-ASLDM-256 for images), a public name, a .ckpt file, a folder written by "
                                       "`train`, or 'tiny-random'.")
    seed: int = param(0, doc="Seed of the diffusion noise (and of the surface samples of input meshes); same seed, "
                             "same shapes.", low=0, high=2**63 - 1)
    num_inference_steps: int = param(50, doc="DDIM steps (for strength 1).", low=1, high=1000)
    guidance_scale: float = param(7.5, doc="Classifier-free guidance scale (1 = conditional only, 0 = "
                                           "unconditional).", low=0.0, high=100.0)
    grid_resolution: int = param(129, doc="Samples per axis of the occupancy grid of the final meshes (129 as the "
                                          "public code; 257 for finer detail).", low=16, high=512)
    preview_resolution: int = param(33, doc="Grid of the preview meshes streamed before the final ones (0 = no "
                                            "preview).", low=0, high=128)
    query_chunk: int = param(32768, doc="Occupancy query points per network call (bounds memory; no effect on the "
                                        "result).", low=256, high=4_194_304)
    min_component_ratio: float = param(0.02, doc="Drop mesh parts smaller than this fraction of the largest part's "
                                                 "area (floaters).", low=0.0, high=1.0)
    face_budget: int = param(0, doc="Decimate each mesh to at most this many triangles (0 = keep all).",
                             low=0, high=10_000_000)

    def validate(self) -> None:
        if not self.model.strip():
            raise ParamError("model must not be empty")
        if self.preview_resolution and self.preview_resolution < MIN_RESOLUTION:
            raise ParamError(f"preview_resolution = {self.preview_resolution} is below {MIN_RESOLUTION} (0 = no "
                             f"preview)")
        if 0 < self.face_budget < 4:
            raise ParamError(f"face_budget = {self.face_budget} is below 4 (0 = no decimation)")


# ---------------------------------------------------------------------------------------------------------------------
# The pipelines.
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class Placement:
    """Model frame → world: ``v_world = michelangelo_to_blender(v_model · size + center)``.

    Attributes:
        center: (3,) float64 centre of the normalised mesh, model-frame axes, metres.
        size: 1 / the normalisation scale (metres per model unit).
    """

    center: np.ndarray
    size: float

    @staticmethod
    def identity() -> "Placement":
        return Placement(np.zeros(3), 1.0)

    def to_world(self, v_model: np.ndarray) -> np.ndarray:
        return michelangelo_to_blender(v_model.astype(np.float64) * self.size + self.center).astype(np.float32)

    def lerp(self, other: "Placement", w: float) -> "Placement":
        return Placement((1 - w) * self.center + w * other.center, (1 - w) * self.size + w * other.size)


class ShapePipeline:
    """Michelangelo generation, variations and interpolation around one loaded model.

    Args:
        bundle: the loaded model (:func:`backend.michelangelo.model.load_michelangelo`).
    """

    def __init__(self, bundle: MichelangeloBundle):
        self.bundle = bundle
        self.device = bundle.device

    # ---- pieces ------------------------------------------------------------------------------------------------------

    def require_denoiser(self, what: str) -> None:
        if self.bundle.denoiser is None:
            raise ParamError(f"model {self.bundle.model_id!r} has no diffusion model (a shape VAE only); {what} needs "
                             f"an ASLDM model such as {DEFAULT_TEXT_MODEL}")

    def context(self, prompt: str, image: np.ndarray | None, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP tokens of the prompt (or image), repeated ``batch`` times, and the unconditional tokens of that kind.

        Returns:
            ``(context (batch, T, D), uncond (batch, T, D))`` float32 on the model's device. An empty prompt without
            an image gives the unconditional tokens for both.

        Raises:
            ParamError: the model is not conditioned on that kind (an image for a text model, a prompt for an image
                model).
        """
        b = self.bundle
        kind = "image" if image is not None else "text"
        if kind not in b.conditions and (kind == "image" or prompt.strip()):
            other = DEFAULT_IMAGE_MODEL if kind == "image" else DEFAULT_TEXT_MODEL
            raise ParamError(f"model {b.model_id!r} is conditioned on {' and '.join(b.conditions)}, not on "
                             f"{'images' if kind == 'image' else 'text'}; use a model such as {other}")
        if kind == "text" and not prompt.strip():  # unconditional: the model's own kind of empty condition
            uncond = b.conditioner.unconditional(batch, b.conditions[0])
            return uncond, uncond
        tokens = b.conditioner.encode_image(image[None]) if kind == "image" else b.conditioner.encode_text([prompt])
        return tokens.expand(batch, -1, -1).to(self.device), b.conditioner.unconditional(batch, kind).to(self.device)

    def encode_mesh(self, mesh: TriMesh, seed: int, name: str = "mesh") -> tuple[torch.Tensor, Placement]:
        """A world-frame mesh → its VAE latent (posterior mean, × z_scale_factor) and its placement.

        4096 area-weighted surface points with face normals are sampled in the model frame (the public encoder input).

        Returns:
            ``(latents (1, L, C) float32, placement)``.

        Raises:
            MeshError: no faces, zero size, non-finite vertices.
        """
        mesh = validate_mesh(mesh, name=name)
        v_model, center, scale = to_model_frame(mesh.v_pos)
        surface = torch.from_numpy(sample_surface(v_model, mesh.t_pos_idx, SURFACE_POINTS, rng=seed))
        surface = surface[None].to(self.device, self.bundle.dtype)
        with torch.no_grad():
            _, latents, _ = self.bundle.vae.encode(surface[..., :3], surface[..., 3:], sample_posterior=False)
        return latents.float() * self.bundle.config.z_scale_factor, Placement(center, 1.0 / scale)

    def denoise(self, latents: torch.Tensor | None, context: torch.Tensor, uncond: torch.Tensor | None,
                config, strength: float, seed: int, ctx: JobContext) -> torch.Tensor:
        """DDIM (:func:`backend.michelangelo.sampling.sample_latents`) with per-step progress and cancellation.

        Returns (B, L, C) float32 latents (× z_scale_factor).
        """
        b = self.bundle
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return sample_latents(b.denoiser, b.make_scheduler(), context, uncond, config.guidance_scale,
                              config.num_inference_steps, generator=generator, latents=latents, strength=strength,
                              eta=b.config.eta, callback=lambda step, total, _x: ctx.progress("denoise", step, total))

    def extract(self, latents: torch.Tensor, resolution: int, config: ShapeDecodeConfig, ctx: JobContext,
                clean: bool = True) -> list[TriMesh]:
        """Decode latents (× z_scale_factor) to meshes in the model frame.

        Per latent: VAE decode, occupancy logits on a ``resolution``³ grid over [-bounds, bounds]³ queried in chunks of
        ``config.query_chunk`` points (cancellation checked per chunk), marching cubes at logit 0, then
        :func:`backend.geometry.extract.clean_mesh` (``clean``).

        Raises:
            MeshError: a latent whose field has no surface in the grid (names the sample).
        """
        b = self.bundle
        bounds = b.config.bounds
        meshes = []
        with torch.no_grad():
            for i in range(latents.shape[0]):
                tokens = b.vae.decode((latents[i:i + 1] / b.config.z_scale_factor).to(b.dtype))

                def field(points: torch.Tensor) -> torch.Tensor:
                    ctx.check_cancelled()
                    return b.vae.query(tokens, points[None].to(b.dtype))[0]

                grid = sample_grid(field, resolution, bounds, chunk=config.query_chunk, device=self.device)
                try:
                    raw = marching_cubes(grid, SURFACE_LEVEL, bounds, inside="above")
                except MeshError:
                    raise MeshError(f"sample {i} has no surface: its occupancy is "
                                    f"{'empty' if grid.max() <= SURFACE_LEVEL else 'full'} everywhere in the "
                                    f"[-{bounds:g}, {bounds:g}]³ grid (logits in [{grid.min():.3g}, {grid.max():.3g}])"
                                    f"; try another seed or prompt") from None
                meshes.append(clean_mesh(raw, min_component_ratio=config.min_component_ratio,
                                         face_budget=config.face_budget or None) if clean else raw)
        return meshes

    def preview(self, latents: torch.Tensor, placements: list[Placement], config: ShapeDecodeConfig,
                ctx: JobContext) -> None:
        """Stream one coarse mesh per sample (a partial update) before the final extraction."""
        if not config.preview_resolution or not ctx.wants_partial:
            return
        ctx.progress("preview", 0, 1)
        try:
            meshes = self.extract(latents, config.preview_resolution, config, ctx, clean=False)
        except MeshError:
            return  # a sample without a surface at the coarse grid: the final extraction reports it
        ctx.partial(config.num_inference_steps, _to_world(meshes, placements))

    def finish(self, latents: torch.Tensor, placements: list[Placement], config: ShapeDecodeConfig,
               ctx: JobContext, metadata: dict, timings: dict) -> PipelineResult:
        """Preview, final extraction, world frame, result."""
        t0 = time.perf_counter()
        self.preview(latents, placements, config, ctx)
        timings["preview"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        meshes = []
        for i in range(latents.shape[0]):
            ctx.progress("extract", i, latents.shape[0])
            meshes += self.extract(latents[i:i + 1], config.grid_resolution, config, ctx)
        ctx.progress("extract", latents.shape[0], latents.shape[0])
        timings["extract"] = time.perf_counter() - t0
        metadata = {**metadata, "model": self.bundle.model_id, "seed": config.seed,
                    "grid_resolution": config.grid_resolution, "meshes": len(meshes),
                    "faces": [int(len(m.t_pos_idx)) for m in meshes]}
        return PipelineResult(meshes=_to_world(meshes, placements), metadata=metadata, timings=timings,
                              extras={"latents": latents})


def _to_world(meshes: list[TriMesh], placements: list[Placement]) -> list[ResultMesh]:
    """Model-frame meshes → result meshes in Blender's world frame, each placed by its :class:`Placement`."""
    return [ResultMesh(TriMesh(placement.to_world(mesh.v_pos), np.ascontiguousarray(mesh.t_pos_idx, dtype=np.int32)))
            for mesh, placement in zip(meshes, placements)]


def load_shape_pipeline(config: ShapeDecodeConfig, ctx: JobContext, auto: str) -> ShapePipeline:
    """The :class:`ShapePipeline` of ``config.model`` (``auto`` → the model named ``auto``) from the model cache."""
    model = auto if config.model.strip() == AUTO_MODEL else config.model.strip()
    return ShapePipeline(ctx.models.get(load_michelangelo, model, ctx.device))
