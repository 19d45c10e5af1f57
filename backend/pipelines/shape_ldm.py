"""Shapes in seconds: Michelangelo text/image → shape, variations of a mesh, and interpolation between two meshes.

After Zhao et al., "Michelangelo: Conditional 3D Shape Generation based on Shape-Image-Text Aligned Latent
Representation" (NeurIPS 2023): the aligned shape latent diffusion model (ASLDM) samples a (256, 64) shape latent by
DDIM with classifier-free guidance, conditioned on CLIP ViT-L/14 tokens of a prompt or an image; the SITA-VAE decodes
it into an occupancy field, queried on a grid in [-1.1, 1.1]³ (129³ by default) in bounded-memory chunks; marching
cubes at logit 0, clean-up (small floaters dropped, closed parts wound outward) and the axis change to Blender's frame
give the mesh. Variations and interpolation are LION's applications (Zeng et al., NeurIPS 2022, §3.3) in this latent
space: a given mesh is encoded by the VAE, diffused to a ``strength`` and denoised back (variations), or two encoded
meshes are interpolated (interpolation).

Pipelines (names in :data:`backend.pipelines.PIPELINES`):

- ``shape_ldm``: ``prompt`` or input array ``image`` → ``num_samples`` meshes.
- ``shape_variations``: input mesh ``mesh`` (+ optional prompt) → ``num_samples`` variants at ``strength``.
- ``shape_interpolate``: input meshes ``mesh`` and ``mesh_b`` → ``num_shapes`` in-between shapes.

Results carry one mesh per sample in the protocol groups ``mesh``, ``mesh_1``, … (``docs/protocol.md``,
*Several meshes*); before the final meshes, one ``partial`` message carries a preview of every sample extracted on a
coarse grid.

Frames: the model frame is Michelangelo's training frame (Y up, shapes normalised to a largest half-extent of 1, as
:func:`backend.michelangelo.data.to_model_frame` makes them); :func:`backend.geometry.frames.gltf_to_blender` takes results to
Blender's Z-up world frame (model units = metres for generated shapes). Variations and interpolations land where the
input meshes stand, at their size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..geometry.extract import MIN_RESOLUTION, clean_mesh, marching_cubes, sample_grid
from ..geometry.frames import gltf_to_blender
from ..geometry.mesh import MeshError, TriMesh, validate_mesh
from ..michelangelo.conditioner import check_images
from ..michelangelo.data import sample_surface, to_model_frame
from ..michelangelo.model import DEFAULT_IMAGE_MODEL, DEFAULT_TEXT_MODEL, MichelangeloBundle, load_michelangelo
from ..michelangelo.sampling import sample_latents
from ..params import ParamError, param
from .base import JobContext, PipelineResult

AUTO_MODEL = "auto"
SURFACE_POINTS = 4096
"""Surface points (+ normals) that encode a mesh: the public VAE's training and inference count."""
SURFACE_LEVEL = 0.0
"""Occupancy logit of the surface (sigmoid 0.5), the public extraction level."""


# ---------------------------------------------------------------------------------------------------------------------
# Configs.
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class ShapeDecodeConfig:
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


@dataclass
class ShapeLDMConfig(ShapeDecodeConfig):
    """Settings of text/image → shape (defaults: the public inference, DESIGN.md §5)."""

    prompt: str = param("", doc="What to generate, e.g. 'a swivel office chair with five wheels'; leave empty when "
                                "an image is given.")
    num_samples: int = param(1, doc="Shapes to generate (each a mesh of the result).", low=1, high=16)


@dataclass
class ShapeVariationsConfig(ShapeDecodeConfig):
    """Settings of variations of a mesh (LION's diffuse-denoise in Michelangelo's latent space)."""

    prompt: str = param("", doc="Optional text steering the variants (empty = unconditional denoising).")
    strength: float = param(0.5, doc="How far the mesh is diffused before denoising: small = close to the input, "
                                     "1 = a new shape.", low=0.01, high=1.0)
    num_samples: int = param(4, doc="Variants to make (each a mesh of the result).", low=1, high=16)


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


# ---------------------------------------------------------------------------------------------------------------------
# Input checks (run at submit time, before a job takes a place in the queue).
# ---------------------------------------------------------------------------------------------------------------------

def _check_names(pipeline: str, inputs: dict, allowed: set[str]) -> None:
    extra = sorted(set(inputs) - allowed)
    if extra:
        raise ParamError(f"{pipeline} does not take input array(s) {extra}; it takes {sorted(allowed)}")


def check_shape_ldm_inputs(config: ShapeLDMConfig, inputs: dict[str, np.ndarray]) -> None:
    """A prompt or an image, not both, not neither; the image is (H, W, 3|4) uint8, each side >= 16 px.

    Raises:
        ParamError: no prompt and no image, both, or an unexpected input array. ValueError: a bad image.
    """
    _check_names("shape_ldm", inputs, {"image"})
    image = inputs.get("image")
    if image is None and not config.prompt.strip():
        raise ParamError("shape_ldm needs a prompt or an image (input array 'image'); got an empty prompt and no image")
    if image is not None and config.prompt.strip():
        raise ParamError("shape_ldm takes a prompt or an image, not both (a model is conditioned on one kind)")
    if image is not None:
        check_images([image])


def check_mesh_inputs(pipeline: str, groups: tuple[str, ...]):
    """An input check for pipelines that take meshes ``groups`` (the service validates the meshes themselves)."""

    def check(config, inputs: dict[str, np.ndarray]) -> None:
        _check_names(pipeline, inputs, {f"{g}.{k}" for g in groups for k in ("v_pos", "t_pos_idx", "uv", "uv_idx")})

    return check


# ---------------------------------------------------------------------------------------------------------------------
# The pipelines.
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class _Placement:
    """Model frame → world: ``v_world = gltf_to_blender(v_model · size + center)`` (size = 1 / normalisation scale)."""

    center: np.ndarray
    size: float

    @staticmethod
    def identity() -> "_Placement":
        return _Placement(np.zeros(3), 1.0)

    def to_world(self, v_model: np.ndarray) -> np.ndarray:
        return gltf_to_blender(v_model.astype(np.float64) * self.size + self.center).astype(np.float32)

    def lerp(self, other: "_Placement", w: float) -> "_Placement":
        return _Placement((1 - w) * self.center + w * other.center, (1 - w) * self.size + w * other.size)


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

    def encode_mesh(self, v_pos: np.ndarray, t_pos_idx: np.ndarray, seed: int,
                    name: str = "mesh") -> tuple[torch.Tensor, _Placement]:
        """A world-frame mesh → its VAE latent (posterior mean, × z_scale_factor) and its placement.

        4096 area-weighted surface points with face normals are sampled in the model frame (the public encoder input).

        Returns:
            ``(latents (1, L, C) float32, placement)``.

        Raises:
            MeshError: no faces, zero size, non-finite vertices.
        """
        mesh = validate_mesh(TriMesh(v_pos, t_pos_idx), name=name)
        v_model, center, scale = to_model_frame(mesh.v_pos)
        surface = torch.from_numpy(sample_surface(v_model, mesh.t_pos_idx, SURFACE_POINTS, rng=seed))
        surface = surface[None].to(self.device, self.bundle.dtype)
        with torch.no_grad():
            _, latents, _ = self.bundle.vae.encode(surface[..., :3], surface[..., 3:], sample_posterior=False)
        return latents.float() * self.bundle.config.z_scale_factor, _Placement(center, 1.0 / scale)

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

    def preview(self, latents: torch.Tensor, placements: list[_Placement], config: ShapeDecodeConfig,
                ctx: JobContext) -> None:
        """Stream one coarse mesh per sample (a ``partial`` message) before the final extraction."""
        if not config.preview_resolution or ctx.on_partial is None:
            return
        ctx.progress("preview", 0, 1)
        try:
            meshes = self.extract(latents, config.preview_resolution, config, ctx, clean=False)
        except MeshError:
            return  # a sample without a surface at the coarse grid: the final extraction reports it
        ctx.on_partial(config.num_inference_steps, _mesh_arrays(meshes, placements))

    def finish(self, latents: torch.Tensor, placements: list[_Placement], config: ShapeDecodeConfig,
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
        arrays = _mesh_arrays(meshes, placements)
        metadata = {**metadata, "model": self.bundle.model_id, "seed": config.seed,
                    "grid_resolution": config.grid_resolution, "meshes": len(meshes),
                    "faces": [int(len(m.t_pos_idx)) for m in meshes]}
        return PipelineResult(arrays=arrays, metadata=metadata, timings=timings, extras={"latents": latents})

    # ---- the runs ----------------------------------------------------------------------------------------------------

    def generate(self, config: ShapeLDMConfig, image: np.ndarray | None, ctx: JobContext) -> PipelineResult:
        """Text/image → ``config.num_samples`` shapes (Michelangelo's ASLDM sampling).

        Returns:
            :class:`PipelineResult` with ``mesh.v_pos``/``mesh.t_pos_idx`` and ``mesh_<i>.*`` per further sample,
            Blender frame, around the origin; ``extras['latents']`` (num_samples, L, C).

        Raises:
            ParamError: model without a denoiser, or not conditioned on the given kind. MeshError: a sample without a
            surface. JobCancelled.
        """
        self.require_denoiser("shape_ldm")
        timings: dict[str, float] = {}
        ctx.restart_clock()

        # 1. Condition: CLIP tokens of the prompt or the image, and the unconditional tokens for guidance.
        t0 = time.perf_counter()
        context, uncond = self.context(config.prompt, image, config.num_samples)
        timings["condition"] = time.perf_counter() - t0

        # 2. DDIM from noise, classifier-free guidance.
        t0 = time.perf_counter()
        latents = self.denoise(None, context, uncond, config, 1.0, config.seed, ctx)
        timings["denoise"] = time.perf_counter() - t0

        # 3. Preview, occupancy → marching cubes → clean-up → Blender frame.
        placements = [_Placement.identity()] * config.num_samples
        metadata = {"pipeline": "shape_ldm", "prompt": config.prompt, "image": image is not None,
                    "num_samples": config.num_samples, "guidance_scale": config.guidance_scale,
                    "num_inference_steps": config.num_inference_steps}
        return self.finish(latents, placements, config, ctx, metadata, timings)

    def variations(self, config: ShapeVariationsConfig, v_pos: np.ndarray, t_pos_idx: np.ndarray,
                   ctx: JobContext) -> PipelineResult:
        """A mesh → ``config.num_samples`` variants: encode, diffuse to ``strength``, denoise (optionally prompted).

        All variants start from the same latent with different noise (one seeded generator for the batch), land where
        the input stands, at its size.

        Raises:
            MeshError: input without faces / of zero size; a variant without a surface. ParamError: no denoiser, or a
            prompt for an image-conditioned model. JobCancelled.
        """
        self.require_denoiser("shape_variations")
        timings: dict[str, float] = {}

        # 1. Encode the input mesh: surface samples + normals in the model frame → VAE posterior mean.
        t0 = time.perf_counter()
        ctx.progress("encode", 0, 1)
        latent, placement = self.encode_mesh(v_pos, t_pos_idx, config.seed)
        timings["encode"] = time.perf_counter() - t0
        ctx.restart_clock()

        # 2. Condition: the prompt's tokens, or the unconditional tokens (no guidance) without one.
        context, uncond = self.context(config.prompt, None, config.num_samples)
        if not config.prompt.strip():
            uncond = None

        # 3. Diffuse to strength, denoise back (DDIM over the remaining steps).
        t0 = time.perf_counter()
        latents = self.denoise(latent.expand(config.num_samples, -1, -1), context, uncond, config, config.strength,
                               config.seed, ctx)
        timings["denoise"] = time.perf_counter() - t0

        # 4. Meshes placed like the input.
        metadata = {"pipeline": "shape_variations", "prompt": config.prompt, "strength": config.strength,
                    "num_samples": config.num_samples, "guidance_scale": config.guidance_scale}
        return self.finish(latents, [placement] * config.num_samples, config, ctx, metadata, timings)

    def interpolate(self, config: ShapeInterpolateConfig, mesh_a: tuple[np.ndarray, np.ndarray],
                    mesh_b: tuple[np.ndarray, np.ndarray], ctx: JobContext) -> PipelineResult:
        """Two meshes → ``config.num_shapes`` in-between shapes (plus the two reconstructions with ``include_ends``).

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
        timings: dict[str, float] = {}

        # 1. Encode both meshes.
        t0 = time.perf_counter()
        ctx.progress("encode", 0, 2)
        latent_a, place_a = self.encode_mesh(*mesh_a, config.seed, name="mesh")
        ctx.progress("encode", 1, 2)
        latent_b, place_b = self.encode_mesh(*mesh_b, config.seed, name="mesh_b")
        timings["encode"] = time.perf_counter() - t0
        ctx.restart_clock()

        # 2. Interpolate latents and placements.
        k = config.num_shapes
        ends = 1 if config.include_ends else 0
        weights = [i / (k + 1) for i in range(1 - ends, k + 1 + ends)]
        w = torch.tensor(weights, dtype=torch.float32, device=self.device).view(-1, 1, 1)
        latents = (1 - w) * latent_a + w * latent_b
        placements = [place_a.lerp(place_b, x) for x in weights]

        # 3. Optional diffuse-denoise towards the prior (one noise draw shared by all in-between shapes).
        if config.strength > 0:
            self.require_denoiser("shape_interpolate with strength > 0")
            context, uncond = self.context(config.prompt, None, 1)
            uncond = uncond if config.prompt.strip() else None
            latents = torch.cat([self.denoise(latents[i:i + 1], context, uncond, config, config.strength, config.seed,
                                              ctx) for i in range(len(weights))])

        # 4. Meshes.
        metadata = {"pipeline": "shape_interpolate", "num_shapes": k, "include_ends": config.include_ends,
                    "weights": weights, "strength": config.strength, "prompt": config.prompt}
        return self.finish(latents, placements, config, ctx, metadata, timings)


def _mesh_arrays(meshes: list[TriMesh], placements: list[_Placement]) -> dict[str, np.ndarray]:
    """Model-frame meshes → protocol arrays in groups ``mesh``, ``mesh_1``, … in Blender's world frame."""
    arrays: dict[str, np.ndarray] = {}
    for i, (mesh, placement) in enumerate(zip(meshes, placements)):
        group = "mesh" if i == 0 else f"mesh_{i}"
        arrays[f"{group}.v_pos"] = placement.to_world(mesh.v_pos)
        arrays[f"{group}.t_pos_idx"] = np.ascontiguousarray(mesh.t_pos_idx, dtype=np.int32)
    return arrays


# ---------------------------------------------------------------------------------------------------------------------
# Job entry points.
# ---------------------------------------------------------------------------------------------------------------------

def _pipeline(config: ShapeDecodeConfig, ctx: JobContext, auto: str) -> ShapePipeline:
    model = auto if config.model.strip() == AUTO_MODEL else config.model.strip()
    return ShapePipeline(ctx.models.get(load_michelangelo, model, ctx.device))


def run_shape_ldm(config: ShapeLDMConfig, inputs: dict[str, np.ndarray], ctx: JobContext) -> PipelineResult:
    """Job entry of ``shape_ldm``: input array ``image`` (H, W, 3|4) uint8 row 0 = top, optional."""
    check_shape_ldm_inputs(config, inputs)
    image = inputs.get("image")
    image = None if image is None else np.ascontiguousarray(image)
    pipe = _pipeline(config, ctx, DEFAULT_IMAGE_MODEL if image is not None else DEFAULT_TEXT_MODEL)
    return pipe.generate(config, image, ctx)


def run_shape_variations(config: ShapeVariationsConfig, inputs: dict[str, np.ndarray],
                         ctx: JobContext) -> PipelineResult:
    """Job entry of ``shape_variations``: input mesh ``mesh.v_pos`` (N, 3) / ``mesh.t_pos_idx`` (F, 3), world frame."""
    check_mesh_inputs("shape_variations", ("mesh",))(config, inputs)
    mesh = _input_mesh(inputs, "mesh")
    return _pipeline(config, ctx, DEFAULT_TEXT_MODEL).variations(config, *mesh, ctx)


def run_shape_interpolate(config: ShapeInterpolateConfig, inputs: dict[str, np.ndarray],
                          ctx: JobContext) -> PipelineResult:
    """Job entry of ``shape_interpolate``: input meshes ``mesh.*`` (start) and ``mesh_b.*`` (end), world frame."""
    check_mesh_inputs("shape_interpolate", ("mesh", "mesh_b"))(config, inputs)
    a, b = _input_mesh(inputs, "mesh"), _input_mesh(inputs, "mesh_b")
    return _pipeline(config, ctx, DEFAULT_TEXT_MODEL).interpolate(config, a, b, ctx)


def _input_mesh(inputs: dict[str, np.ndarray], group: str) -> tuple[np.ndarray, np.ndarray]:
    if f"{group}.v_pos" not in inputs or f"{group}.t_pos_idx" not in inputs:
        raise MeshError(f"input mesh {group!r} needs both {group}.v_pos and {group}.t_pos_idx (a mesh with faces)")
    return inputs[f"{group}.v_pos"], inputs[f"{group}.t_pos_idx"]


__all__ = ["ShapeDecodeConfig", "ShapeLDMConfig", "ShapeVariationsConfig", "ShapeInterpolateConfig", "ShapePipeline",
           "run_shape_ldm", "run_shape_variations", "run_shape_interpolate", "check_shape_ldm_inputs",
           "check_mesh_inputs", "SURFACE_POINTS"]
