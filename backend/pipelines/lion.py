"""LION's applications: generation, shapes from a blockout, variations, interpolation and denoising of point clouds.

Zeng et al., "LION: Latent Point Diffusion Models for 3D Shape Generation" (NeurIPS 2022), §3.3 and §5. All five
pipelines share one model (:class:`backend.lion.model.LionModel`: a hierarchical VAE with a global shape latent z0
and latent points h0, and a DDM on each) and this file:

- ``lion_generate``: z0 then h0 from the DDMs (DDPM or DDIM), decoded → ``num_samples`` clouds. With a
  CLIP-conditioned model (``train lion_ddm --clip-views N``; LION's text-driven generation, CLIP-Forge style) the
  ``prompt`` — or a concept ``image``, LION's single-view reconstruction — is embedded by the model's CLIP
  (:mod:`backend.lion.clip_features`: raw features, as the public ``demo.py``) and conditions both DDMs; no
  classifier-free guidance (the public code has none). The other four pipelines take unconditional models only.
- ``lion_from_blockout`` (voxel-guided synthesis): the input mesh is voxelised (``voxel_resolution`` voxels along its
  longest side; a voxel is filled when the mesh's generalised winding number at its centre exceeds 0.5, robust to
  open blockouts), points are sampled uniformly on the voxels' exposed faces, encoded, diffused to step ``tau`` and
  denoised (``num_samples`` times with different noise), decoded: detailed shapes that follow the blocks.
- ``lion_variations`` (multimodal generation): the same diffuse-denoise from an input mesh's surface points, or from
  an input point cloud.
- ``lion_denoise``: the same from a noisy mesh (its surface, or its vertices as the points) or a scanned point cloud,
  with a small τ.
- ``lion_interpolate``: both inputs encoded (posterior means) and carried to the DDMs' noise through the
  probability-flow ODE, ``z^s = √s·z^A + √(1−s)·z^B`` (likewise h), s from 1 (A) to 0 (B), back through the ODE,
  decoded.

Inputs: variations, denoising and interpolation take a point cloud (``inputs.point_clouds['points']``, ``'points_b'``)
in place of a mesh: its points are used as they are, subsampled (or, when there are fewer, repeated) to the model's
``num_points`` with the job's seed; ``source`` applies to meshes only.

Frames and placement: input points are taken from the world (Blender's frame), normalised per shape
(:func:`backend.lion.data.normalize_points`: mean point at the origin, coordinate standard deviation 1) and, for the
released ShapeNet models (Y up), rotated into their axes (:func:`backend.geometry.frames.blender_to_lion_shapenet`);
models trained here (``train lion_vae``) and ``tiny-random`` keep Blender's axes. Results are mapped back with the
input's own centre and scale, so they stand where the input stands at its size (interpolations blend the two
placements); generated shapes are centred at the origin, scaled to a largest extent of ``size`` metres.

Outputs: one :class:`~.base.ResultPointCloud` per shape and, with ``make_mesh``, one closed mesh per shape
reconstructed by Shape As Points' spectral Poisson solver (:func:`backend.geometry.sap.reconstruct_surface`, estimated
normals; SAP's learned network is not used). Progress is reported per sampler step (cancel checked there).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..geometry.frames import blender_to_lion_shapenet, lion_shapenet_to_blender
from ..geometry.mesh import MeshError, TriMesh
from ..geometry.queries import winding_number
from ..geometry.sap import check_points, reconstruct_surface
from ..lion.checkpoint import load_lion
from ..lion.clip_features import image_features, text_features
from ..lion.config import PRESETS
from ..lion.data import denormalize_points, normalize_points
from ..lion.model import SAMPLERS, LionLatents, LionModel
from ..models.clip import load_clip
from ..params import Config, ParamError, param
from .base import JobContext, PipelineInputs, PipelineResult, ResultMesh, ResultPointCloud
from .conditions import IMAGE_INPUT, prompt_or_image

DEFAULT_MODEL = "chair"
SOURCES = ("surface", "vertices")
MAX_TAU = 1000
"""Upper bound of ``tau`` (the public models' T); a model with a smaller T rejects larger values by name."""


# ---------------------------------------------------------------------------------------------------------------------
# Configs.
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class LionBaseConfig(Config):
    """Settings every LION pipeline has: the model, the seed and the meshes."""

    model: str = param(DEFAULT_MODEL, doc="LION model: chair, airplane, car (the released ShapeNet models), a "
                                          "released model.pt, a folder written by `train lion_ddm`, or 'tiny-random'.")
    seed: int = param(0, doc="Seed of the diffusion noise and of the input's surface samples; same seed, same "
                             "shapes.", low=0, high=2**63 - 1)
    make_mesh: bool = param(True, doc="Also reconstruct a closed mesh per shape (Shape As Points' Poisson solver).")
    grid_resolution: int = param(128, doc="Samples per axis of the Poisson grid of the meshes (128 as SAP).",
                                 low=16, high=512)
    face_budget: int = param(0, doc="Decimate each mesh to at most this many triangles (0 = keep all).",
                             low=0, high=10_000_000)

    def validate(self) -> None:
        if not self.model.strip():
            raise ParamError("model must not be empty")
        if 0 < self.face_budget < 4:
            raise ParamError(f"face_budget = {self.face_budget} is below 4 (0 = no decimation)")


@dataclass
class LionSamplingConfig(LionBaseConfig):
    """Settings of the pipelines that run the DDMs' samplers (all but interpolation, which runs the ODE)."""

    sampler: str = param("ddim", doc="Sampler of the DDMs: ddim (fast) or ddpm (ancestral, the paper's 1000 steps).",
                         choices=SAMPLERS)
    num_inference_steps: int = param(0, doc="Denoising steps per DDM (0 = the sampler's default: all T (or tau) for "
                                            "ddpm, the model's DDIM steps (200 public) for ddim).", low=0, high=100000)


@dataclass
class LionGenerateConfig(LionSamplingConfig):
    """Settings of LION generation: unconditional, or from a prompt or an image with a CLIP-conditioned model."""

    prompt: str = param("", doc="What to generate, for a text-conditioned model (trained with --clip-views), e.g. "
                                "'a chair with armrests'; leave empty for an unconditional model or when an image is "
                                "given.")
    num_samples: int = param(4, doc="Shapes to generate (each a point cloud, and a mesh when meshes are made).",
                             low=1, high=64)
    size: float = param(1.0, doc="Largest extent of each generated shape, metres (shapes centred at the origin).",
                        low=0.01, high=1000.0)


@dataclass
class _DiffuseDenoiseConfig(LionSamplingConfig):
    """Settings of the pipelines that diffuse an encoded input to tau and denoise it back."""

    tau: int = param(200, doc="Diffusion step the input's latents are noised to before denoising (of T = 1000: small "
                              "keeps the input, large forgets it; the paper uses 50–250).", low=1, high=MAX_TAU)
    num_samples: int = param(4, doc="Shapes to make (same input, different noise).", low=1, high=64)


@dataclass
class LionFromBlockoutConfig(_DiffuseDenoiseConfig):
    """Settings of voxel-guided synthesis: detailed shapes following a blockout mesh."""

    voxel_resolution: int = param(32, doc="Voxels along the blockout's longest side (its shape is kept at this "
                                          "grain).", low=4, high=128)


@dataclass
class LionVariationsConfig(_DiffuseDenoiseConfig):
    """Settings of variations of a shape (LION's diffuse-denoise)."""

    source: str = param("surface", doc="Points of an input mesh: surface (sampled uniformly on its faces) or "
                                       "vertices (the mesh's vertices, e.g. a scan); an input point cloud is used as "
                                       "it is.", choices=SOURCES)


@dataclass
class LionDenoiseConfig(_DiffuseDenoiseConfig):
    """Settings of denoising a noisy shape or scan (encode, diffuse a little, denoise)."""

    tau: int = param(50, doc="Diffusion step the input's latents are noised to before denoising (small: keep the "
                             "shape, remove the noise).", low=1, high=MAX_TAU)
    num_samples: int = param(1, doc="Clean-ups to make (same input, different noise).", low=1, high=64)
    source: str = param("surface", doc="Points of an input mesh: surface (sampled uniformly on its faces) or "
                                       "vertices (the mesh's vertices, e.g. a scan); an input point cloud is used as "
                                       "it is.", choices=SOURCES)


@dataclass
class LionInterpolateConfig(LionBaseConfig):
    """Settings of interpolation between two shapes in LION's prior (probability-flow ODE)."""

    num_shapes: int = param(5, doc="Shapes from the first input to the second, both ends included.", low=2, high=64)
    ode_steps: int = param(50, doc="Steps of the probability-flow ODE each way (encode to noise, decode back).",
                           low=2, high=1000)
    source: str = param("surface", doc="Points of input meshes: surface (sampled uniformly on their faces) or "
                                       "vertices; input point clouds are used as they are.", choices=SOURCES)


# ---------------------------------------------------------------------------------------------------------------------
# Shared pieces.
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class Placement:
    """Normalised model points → world: ``world = to_blender((p · scale) + centre)`` with ``centre``/``scale`` in the
    model's axes (see :func:`backend.lion.data.denormalize_points`).

    Attributes:
        centre: (3,) float64 mean point of the input, model axes, metres.
        scale: metres per normalised unit (the input's coordinate standard deviation).
    """

    centre: np.ndarray
    scale: float

    def lerp(self, other: "Placement", w: float) -> "Placement":
        return Placement((1 - w) * self.centre + w * other.centre, (1 - w) * self.scale + w * other.scale)


class _Model:
    """One loaded model and its frame rule (released ShapeNet models: Y up; ours and tiny-random: Blender's)."""

    def __init__(self, config: LionBaseConfig, ctx: JobContext):
        name = config.model.strip()
        self.name = name
        self.net: LionModel = ctx.models.get(load_lion, name, ctx.device)
        self.shapenet = name in PRESETS or (Path(name).expanduser().is_file() and name.endswith(".pt"))
        self.device = self.net.device
        self.ctx = ctx

    @property
    def num_points(self) -> int:
        return int(self.net.config.num_points)

    def to_model_axes(self, points: np.ndarray) -> np.ndarray:
        return blender_to_lion_shapenet(points) if self.shapenet else points

    def to_world_axes(self, points: np.ndarray) -> np.ndarray:
        return lion_shapenet_to_blender(points) if self.shapenet else points

    def unconditional_only(self, pipeline: str) -> None:
        """Raise ParamError when the model is CLIP-conditioned (``pipeline`` does not take a prompt)."""
        if self.net.config.clip_dim > 0:
            raise ParamError(f"{pipeline} takes unconditional LION models only; {self.name!r} is conditioned on CLIP "
                             f"features (text): use it with lion_generate and a prompt")

    def steps(self, config: LionSamplingConfig) -> int | None:
        return config.num_inference_steps or None

    def normalise(self, world_points: np.ndarray) -> tuple[torch.Tensor, Placement]:
        """(N, 3) world points → ((1, N, 3) normalised model points on the model's device, placement)."""
        pts = torch.from_numpy(np.ascontiguousarray(self.to_model_axes(world_points), dtype=np.float32))[None]
        normalised, (centre, scale) = normalize_points(pts)
        return normalised.to(self.device), Placement(centre[0, 0].double().numpy(), float(scale))

    def to_world(self, points: torch.Tensor, placement: Placement) -> np.ndarray:
        """(N, 3) normalised model points → (N, 3) float32 world points."""
        centre = torch.from_numpy(placement.centre).float().view(1, 1, 3)
        p = denormalize_points(points.detach().float().cpu()[None], centre, torch.tensor(placement.scale).view(1, 1, 1))
        return np.ascontiguousarray(self.to_world_axes(p[0].numpy().astype(np.float64)), dtype=np.float32)

    def progress(self, stage: str):
        return lambda step, total, _x=None: self.ctx.progress(stage, int(step), int(total))


def _resampled(points: np.ndarray, count: int, rng: np.random.Generator, name: str) -> np.ndarray:
    """``count`` of ``points`` ((N, 3)): a random subset when N >= count, else every point once plus random repeats
    (each draw from ``rng``). Raises ValueError: NaN/Inf or no point (naming ``name``)."""
    v = check_points(points, name)
    if len(v) >= count:
        return v[rng.choice(len(v), count, replace=False)]
    return v[np.concatenate([rng.permutation(len(v)), rng.integers(0, len(v), count - len(v))])]


def _points_of(mesh: TriMesh, count: int, source: str, seed: int, name: str) -> np.ndarray:
    """``count`` points of an input mesh: uniform on its surface, or its vertices (subsampled / repeated to count)."""
    rng = np.random.default_rng(seed)
    if source == "vertices":
        return _resampled(mesh.v_pos, count, rng, f"{name} vertices")
    import trimesh

    tm = trimesh.Trimesh(mesh.v_pos, mesh.t_pos_idx, process=False)
    if not float(tm.area) > 0:
        raise MeshError(f"{name} has no surface area to sample points from")
    points, _ = trimesh.sample.sample_surface(tm, count, seed=int(rng.integers(2**31 - 1)))
    return check_points(points, f"{name} points")


def _input_points(inputs: PipelineInputs, mesh_group: str, cloud_group: str, count: int, source: str,
                  seed: int) -> tuple[np.ndarray, str]:
    """``count`` world points (N, 3) of one input role and what they came from: the point cloud ``cloud_group`` as it
    is (subsampled / repeated to ``count`` with ``seed``; ``source`` does not apply), else the mesh ``mesh_group`` by
    ``source`` (:func:`_points_of`).

    Returns:
        ``(points (count, 3) float64 world, "points" | "surface" | "vertices")``.

    Raises:
        ParamError: neither is given (the pipeline was called without :func:`~.io.inputs_from_arrays`' checks).
    """
    if cloud_group in inputs.point_clouds:
        rng = np.random.default_rng(seed)
        return _resampled(inputs.point_clouds[cloud_group], count, rng, cloud_group), "points"
    if mesh_group not in inputs.meshes:
        raise ParamError(f"needs an input mesh {mesh_group!r} or an input point cloud {cloud_group!r}")
    return _points_of(inputs.meshes[mesh_group], count, source, seed, mesh_group), source


def _check_tau(config: _DiffuseDenoiseConfig, net: LionModel) -> None:
    if config.tau > net.config.timesteps:
        raise ParamError(f"tau = {config.tau} exceeds the model's diffusion steps T = {net.config.timesteps}")
    if config.num_inference_steps > config.tau:
        raise ParamError(f"num_inference_steps = {config.num_inference_steps} exceeds tau = {config.tau} (the "
                         f"denoising runs from tau to 0)")


def _finish(model: _Model, clouds_model: torch.Tensor, placements: list[Placement], config: LionBaseConfig,
            ctx: JobContext, metadata: dict, timings: dict[str, float], extras: dict | None = None) -> PipelineResult:
    """Decoded (B, N, 3) normalised clouds → world point clouds, meshes (SAP) and the result."""
    clouds = [ResultPointCloud(points=model.to_world(c, p)) for c, p in zip(clouds_model, placements)]
    if ctx.wants_partial:
        ctx.partial(0, [], clouds)
    meshes: list[ResultMesh] = []
    if config.make_mesh:
        t0 = time.perf_counter()
        for i, cloud in enumerate(clouds):
            ctx.progress("mesh", i, len(clouds))
            try:
                mesh = reconstruct_surface(cloud.points, resolution=config.grid_resolution,
                                           face_budget=config.face_budget or None)
            except (MeshError, ValueError) as err:
                raise MeshError(f"shape {i}: no surface from its points: {err}") from None
            meshes.append(ResultMesh(mesh))
        ctx.progress("mesh", len(clouds), len(clouds))
        timings["mesh"] = time.perf_counter() - t0
    if isinstance(config, LionSamplingConfig):
        metadata.update(sampler=config.sampler, num_inference_steps=config.num_inference_steps)
    metadata.update(model=model.name, seed=config.seed, points=int(clouds_model.shape[1]),
                    meshes=len(meshes), faces=[int(len(m.mesh.t_pos_idx)) for m in meshes],
                    frame="shapenet" if model.shapenet else "blender")
    out_extras = {"points_model": clouds_model.detach().float().cpu()}
    out_extras.update(extras or {})
    return PipelineResult(meshes=meshes, point_clouds=clouds, metadata=metadata, timings=timings, extras=out_extras)


def _diffuse_denoise(model: _Model, world_points: np.ndarray, config: _DiffuseDenoiseConfig, ctx: JobContext,
                     timings: dict[str, float]) -> tuple[torch.Tensor, Placement, LionLatents]:
    """Encode (posterior mean), diffuse to tau and denoise ``num_samples`` times (one seeded generator), decode.

    Returns:
        ((num_samples, N, 3) decoded normalised points, the input's placement, the input's latents).
    """
    _check_tau(config, model.net)
    t0 = time.perf_counter()
    ctx.progress("encode", 0, 1)
    points, placement = model.normalise(world_points)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    with torch.no_grad():
        latents = model.net.encode(points, sample=False)
    timings["encode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    b = config.num_samples
    batch = LionLatents(latents.z.expand(b, -1).contiguous(), latents.h.expand(b, -1, -1).contiguous())
    out = model.net.diffuse_denoise(batch, config.tau, model.steps(config), config.sampler, generator,
                                    model.progress("denoise"))
    timings["denoise"] = time.perf_counter() - t0
    with torch.no_grad():
        decoded = model.net.decode(out)
    return decoded, placement, latents


# ---------------------------------------------------------------------------------------------------------------------
# Voxels of a blockout.
# ---------------------------------------------------------------------------------------------------------------------

_JITTER = np.array([1.3e-4, 0.7e-4, 1.1e-4])
"""Voxel-centre offset (in voxels) of the winding-number queries: generalised winding numbers ON a surface are 1/2,
and blockouts are made of faces on voxel-centre planes (a flat square through the centre of its grid)."""
_FACE_AXES = ((0, 1, 2), (1, 2, 0), (2, 0, 1))  # (normal axis, u axis, v axis)


def voxelize(mesh: TriMesh, resolution: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Solid voxels of a mesh: voxel (i, j, k) is filled when the generalised winding number at its centre > 0.5.

    Args:
        mesh: the blockout (world frame). resolution: voxels along its longest bounding-box side, in [4, 128].

    Returns:
        ``(occupancy (X, Y, Z) bool, origin (3,) float64 = corner of voxel (0, 0, 0), voxel size h)``; the grid has
        one empty voxel of margin on every side.

    Raises:
        MeshError: the mesh encloses no volume at this resolution (e.g. an open plane, or parts thinner than a voxel).
    """
    v = mesh.v_pos.astype(np.float64)
    lo, hi = v.min(axis=0), v.max(axis=0)
    h = float(np.max(hi - lo)) / resolution
    dims = np.maximum(np.ceil((hi - lo) / h - 1e-9).astype(int), 1) + 2
    origin = (lo + hi) / 2 - dims * h / 2
    ijk = np.stack(np.meshgrid(*[np.arange(d) for d in dims], indexing="ij"), axis=-1).reshape(-1, 3)
    centres = origin + (ijk + 0.5 + _JITTER) * h  # a generic shift: no centre exactly on an axis-aligned face
    occupancy = (np.abs(winding_number(mesh.v_pos, mesh.t_pos_idx, centres)) > 0.5).reshape(tuple(dims))
    if not occupancy.any():
        raise MeshError(f"the blockout encloses no volume at voxel_resolution = {resolution} (an open surface or "
                        f"parts thinner than a voxel of {h:.3g} m); close it, thicken it or raise voxel_resolution")
    return occupancy, origin, h


def voxel_surface_points(occupancy: np.ndarray, origin: np.ndarray, h: float, count: int,
                         rng: np.random.Generator) -> np.ndarray:
    """``count`` points uniform on the exposed faces of the filled voxels (faces between filled and empty voxels).

    Returns:
        (count, 3) float64 world points.
    """
    faces = []  # (corner (3,), normal axis, u axis, v axis) per exposed face
    for axis, u, w in _FACE_AXES:
        for side in (-1, 1):
            neighbour = np.roll(occupancy, -side, axis=axis)  # the margin keeps the wrap-around empty
            exposed = np.argwhere(occupancy & ~neighbour)
            corner = origin + exposed * h
            corner[:, axis] += h if side > 0 else 0.0
            faces.append((corner, axis, u, w))
    corners = np.concatenate([f[0] for f in faces])
    kinds = np.concatenate([np.full(len(f[0]), n) for n, f in enumerate(faces)])
    pick = rng.integers(0, len(corners), count)
    uv = rng.random((count, 2)) * h
    points = corners[pick].copy()
    for n, (_, _axis, u, w) in enumerate(faces):
        sel = kinds[pick] == n
        points[sel, u] += uv[sel, 0]
        points[sel, w] += uv[sel, 1]
    return points


# ---------------------------------------------------------------------------------------------------------------------
# The pipelines.
# ---------------------------------------------------------------------------------------------------------------------

def run_generate(config: LionGenerateConfig, inputs: PipelineInputs, ctx: JobContext) -> PipelineResult:
    """``lion_generate``: ``num_samples`` shapes from the DDMs (z0, then h0 given z0), decoded.

    A CLIP-conditioned model needs ``config.prompt`` or ``inputs.images['image']`` (one of them), embedded by its
    ``clip_model`` (through the model cache) into the raw feature every sample is conditioned on; an unconditional
    model takes neither.

    Returns:
        :class:`PipelineResult`: ``point_clouds`` (``num_points`` each, centred at the origin, largest extent
        ``size`` m, Blender frame), ``meshes`` (with ``make_mesh``), ``extras['points_model']`` (B, N, 3) normalised
        model points, ``extras['latents']`` (:class:`LionLatents`), ``extras['clip_feat']`` (1, clip_dim) or None.

    Raises:
        ParamError: steps beyond the model's T; a prompt or image for an unconditional model; neither (or both) for
        a conditioned one; a CLIP whose width is not the model's clip_dim. ValueError: a bad image.
        ModelNotFoundError. MeshError: a shape whose mesh failed. JobCancelled.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model = _Model(config, ctx)
    timings["load"] = time.perf_counter() - t0
    if config.num_inference_steps > model.net.config.timesteps:
        raise ParamError(f"num_inference_steps = {config.num_inference_steps} exceeds the model's T = "
                         f"{model.net.config.timesteps}")
    t0 = time.perf_counter()
    clip_feat, condition = _condition(model, config.prompt, inputs, ctx)
    timings["condition"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    latents = model.net.sample(config.num_samples, model.steps(config), config.sampler, generator,
                               model.progress("sample"), clip_feat=clip_feat)
    with torch.no_grad():
        decoded = model.net.decode(latents)
    timings["sample"] = time.perf_counter() - t0
    placements = []
    for cloud in decoded.detach().float().cpu().numpy():
        extent = float(np.max(np.ptp(cloud, axis=0)))
        if not math.isfinite(extent) or extent <= 0:
            raise MeshError("a generated shape collapsed to one point")
        placements.append(Placement(-cloud.mean(axis=0) * config.size / extent, config.size / extent))
    metadata = {"pipeline": "lion_generate", "num_samples": config.num_samples, "size": config.size,
                "prompt": config.prompt, "condition": condition}
    if condition != "none":
        metadata["clip_model"] = model.net.config.clip_model
    return _finish(model, decoded, placements, config, ctx, metadata, timings,
                   {"latents": latents, "clip_feat": clip_feat})


def check_generate_inputs(config: LionGenerateConfig, inputs: PipelineInputs) -> None:
    """Submit-time rule of ``lion_generate``: a prompt or an image, not both (whether the model takes either is known
    once it is loaded). Raises ParamError."""
    if IMAGE_INPUT in inputs.images and config.prompt.strip():
        raise ParamError("lion_generate takes a prompt or an image, not both (a text-conditioned model is conditioned "
                         "on one CLIP feature)")


def _condition(model: _Model, prompt: str, inputs: PipelineInputs, ctx: JobContext
               ) -> tuple[torch.Tensor | None, str]:
    """The CLIP feature ``lion_generate`` samples with and what it came from (``text``, ``image`` or ``none``)."""
    image = inputs.images.get(IMAGE_INPUT)
    clip_dim = model.net.config.clip_dim
    if clip_dim == 0:
        if prompt.strip():
            raise ParamError(f"LION model {model.name!r} is unconditional; it takes no prompt (train one with "
                             f"`train lion_ddm --clip-views N` for text-driven generation)")
        if image is not None:
            raise ParamError(f"LION model {model.name!r} is unconditional; it takes no image")
        return None, "none"
    image = prompt_or_image("lion_generate", prompt, inputs)
    ctx.progress("condition", 0, 1)
    clip = ctx.models.get(load_clip, model.net.config.clip_model, ctx.device)
    feat = text_features(clip, [prompt.strip()]) if image is None else image_features(clip, image)
    if feat.shape[1] != clip_dim:
        raise ParamError(f"the CLIP {model.net.config.clip_model!r} gives {feat.shape[1]}-wide features; LION model "
                         f"{model.name!r} was trained on clip_dim = {clip_dim}")
    ctx.progress("condition", 1, 1)
    return feat.to(model.device), ("text" if image is None else "image")


def run_from_blockout(config: LionFromBlockoutConfig, inputs: PipelineInputs, ctx: JobContext) -> PipelineResult:
    """``lion_from_blockout``: voxelise ``inputs.meshes['mesh']``, sample the voxels' surface, encode, diffuse to
    ``tau``, denoise ``num_samples`` times; the shapes stand where the blockout stands, at its size.

    Returns:
        :class:`PipelineResult` as :func:`run_generate`, plus ``extras['occupancy']`` (X, Y, Z) bool, ``extras['origin']``,
        ``extras['voxel_size']`` and ``extras['guide_points']`` (N, 3) world points of the voxels' surface.

    Raises:
        MeshError: a blockout enclosing no volume at ``voxel_resolution``. ParamError: tau beyond T.
    """
    mesh = inputs.meshes["mesh"]
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model = _Model(config, ctx)
    model.unconditional_only("lion_from_blockout")
    _check_tau(config, model.net)
    timings["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ctx.progress("voxelize", 0, 1)
    occupancy, origin, h = voxelize(mesh, config.voxel_resolution)
    guide = voxel_surface_points(occupancy, origin, h, model.num_points, np.random.default_rng(config.seed))
    timings["voxelize"] = time.perf_counter() - t0
    decoded, placement, _ = _diffuse_denoise(model, guide, config, ctx, timings)
    metadata = {"pipeline": "lion_from_blockout", "tau": config.tau, "num_samples": config.num_samples,
                "voxel_resolution": config.voxel_resolution, "voxels": int(occupancy.sum())}
    return _finish(model, decoded, [placement] * config.num_samples, config, ctx, metadata, timings,
                   {"occupancy": occupancy, "origin": origin, "voxel_size": h, "guide_points": guide})


def run_variations(config: LionVariationsConfig, inputs: PipelineInputs, ctx: JobContext) -> PipelineResult:
    """``lion_variations``: ``inputs.meshes['mesh']`` (points by ``source``) or ``inputs.point_clouds['points']`` (as
    they are) → encode → diffuse to ``tau`` → denoise (``num_samples`` times) → variants standing where the input
    stands.

    Raises:
        MeshError: an input without area (surface source). ParamError: tau beyond T. JobCancelled.
    """
    timings: dict[str, float] = {}
    model = _Model(config, ctx)
    model.unconditional_only("lion_variations")
    points, source = _input_points(inputs, "mesh", "points", model.num_points, config.source, config.seed)
    decoded, placement, _ = _diffuse_denoise(model, points, config, ctx, timings)
    metadata = {"pipeline": "lion_variations", "tau": config.tau, "num_samples": config.num_samples,
                "source": source}
    return _finish(model, decoded, [placement] * config.num_samples, config, ctx, metadata, timings,
                   {"input_points": points})


def run_denoise(config: LionDenoiseConfig, inputs: PipelineInputs, ctx: JobContext) -> PipelineResult:
    """``lion_denoise``: a noisy mesh (``inputs.meshes['mesh']``; its vertices with ``source='vertices'``) or scan
    (``inputs.point_clouds['points']``, used as it is: subsampled or repeated to the model's ``num_points`` with the
    seed) → encode → diffuse a little (``tau``) → denoise → clean shapes where the input stands.

    Raises:
        ValueError: NaN vertices. MeshError: an input without area. ParamError: tau beyond T. JobCancelled.
    """
    timings: dict[str, float] = {}
    model = _Model(config, ctx)
    model.unconditional_only("lion_denoise")
    points, source = _input_points(inputs, "mesh", "points", model.num_points, config.source, config.seed)
    decoded, placement, _ = _diffuse_denoise(model, points, config, ctx, timings)
    metadata = {"pipeline": "lion_denoise", "tau": config.tau, "num_samples": config.num_samples,
                "source": source}
    return _finish(model, decoded, [placement] * config.num_samples, config, ctx, metadata, timings,
                   {"input_points": points})


def interpolation_weights(num_shapes: int) -> np.ndarray:
    """The paper's s from 1 (the first input) to 0 (the second), ``num_shapes`` values evenly spaced."""
    return np.linspace(1.0, 0.0, num_shapes)


def run_interpolate(config: LionInterpolateConfig, inputs: PipelineInputs, ctx: JobContext) -> PipelineResult:
    """``lion_interpolate``: A (``inputs.meshes['mesh']`` or ``inputs.point_clouds['points']``) and B (``'mesh_b'`` or
    ``'points_b'``; a cloud is used as it is, a mesh by ``source``) → encode (means) → ODE to noise →
    ``√s·A + √(1−s)·B`` for s from 1 to 0 → ODE back → decode; shape k stands at the blend of A's and B's placements.

    Raises:
        MeshError: an input without area. ParamError: ode_steps beyond the model's T. JobCancelled.
    """
    timings: dict[str, float] = {}
    model = _Model(config, ctx)
    model.unconditional_only("lion_interpolate")
    if config.ode_steps > model.net.config.timesteps:
        raise ParamError(f"ode_steps = {config.ode_steps} exceeds the model's T = {model.net.config.timesteps}")
    t0 = time.perf_counter()
    ctx.progress("encode", 0, 1)
    normalised, placements, sources = [], [], []
    for k, (group, cloud) in enumerate((("mesh", "points"), ("mesh_b", "points_b"))):
        pts, source = _input_points(inputs, group, cloud, model.num_points, config.source, config.seed + k)
        sources.append(source)
        p, placement = model.normalise(pts)
        normalised.append(p)
        placements.append(placement)
    with torch.no_grad():
        latents = model.net.encode(torch.cat(normalised), sample=False)
    noise = model.net.to_noise(latents, config.ode_steps, model.progress("to_noise"))
    timings["encode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    s = torch.tensor(interpolation_weights(config.num_shapes), dtype=noise.z.dtype, device=noise.z.device)
    a, b = s.sqrt(), (1 - s).sqrt()
    mixed = LionLatents(a[:, None] * noise.z[0] + b[:, None] * noise.z[1],
                        a[:, None, None] * noise.h[0] + b[:, None, None] * noise.h[1])
    out = model.net.from_noise(mixed, config.ode_steps, model.progress("from_noise"))
    with torch.no_grad():
        decoded = model.net.decode(out)
    timings["interpolate"] = time.perf_counter() - t0
    blends = [placements[0].lerp(placements[1], 1.0 - float(w)) for w in s.cpu()]
    metadata = {"pipeline": "lion_interpolate", "num_shapes": config.num_shapes, "ode_steps": config.ode_steps,
                "s": [round(float(w), 6) for w in s.cpu()], "sources": sources}
    return _finish(model, decoded, blends, config, ctx, metadata, timings, {"latents": latents, "noise": noise})
