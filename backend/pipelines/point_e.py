"""``point_e``: a prompt or an image → coloured point clouds (and meshes) in seconds (Point-E).

Nichol et al., "Point-E: A System for Generating 3D Point Clouds from Complex Prompts" (2022), with the public
inference defaults: the base model samples 1,024 points (xyz + rgb) by Karras/Heun (64 steps, σ_max 120, churn 3) with
classifier-free guidance 3.0, conditioned on the CLIP ViT-L/14 text vector (``base40M-textvec``) or image grid
(``base40M`` / ``base300M`` / ``base1B``); the upsampler adds 3,072 points conditioned on the coarse ones (64 steps,
σ_max 160, no churn; guidance 3.0 with the image grid for an image, no condition and no guidance for text); the SDF
model turns each cloud into a mesh by marching cubes (128³ over the cube of side 1.02), coloured from the nearest
points. Point-E's frame is Blender's (:func:`backend.geometry.frames.point_e_to_blender`); colours are sRGB in the
model (its training renders were sRGB) and linear in the result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from blender_addon.core.arrays import srgb_to_linear

from ..geometry.frames import point_e_to_blender
from ..geometry.mesh import MeshError, TriMesh
from ..models.base import TINY_RANDOM
from ..params import Config, ParamError, param
from ..point_e.diffusion import karras_sample, make_denoiser, unscale_channels
from ..point_e.model import PointENet, load_point_e, load_point_e_clip
from ..point_e.sdf import nearest_colors, sdf_to_mesh
from .base import JobContext, PipelineInputs, PipelineResult, ResultMesh, ResultPointCloud
from .conditions import prompt_or_image

AUTO = "auto"
TEXT_MODEL = "base40M-textvec"
IMAGE_MODEL = "base40M"
IMAGE_MODELS = ("base40M", "base300M", "base1B")


@dataclass
class PointEConfig(Config):
    """Settings of text/image → point clouds (defaults: the public inference)."""

    prompt: str = param("", doc="What to generate, e.g. 'a red motorcycle'; leave empty when an image is given.")
    model: str = param(AUTO, doc="Point-E base model: 'auto' (base40M-textvec for a prompt, base40M for an image), "
                                 "base40M-textvec, base40M, base300M, base1B, a .pt file, or 'tiny-random'.")
    upsample_model: str = param(AUTO, doc="Upsampler: 'auto' (the public upsample, or tiny with tiny-random), "
                                          "'upsample', or a .pt file.")
    sdf_model: str = param(AUTO, doc="SDF model for meshes: 'auto' (the public sdf, or tiny with tiny-random), "
                                     "'sdf', or a .pt file.")
    seed: int = param(0, doc="Seed of the diffusion noise; same seed, same points.", low=0, high=2**63 - 1)
    num_samples: int = param(1, doc="Point clouds to generate (each a cloud, and a mesh when meshes are made).",
                             low=1, high=16)
    guidance_scale: float = param(3.0, doc="Classifier-free guidance of the base model (0 or 1 = none).",
                                  low=0.0, high=100.0)
    num_inference_steps: int = param(64, doc="Karras (Heun) steps of the base model.", low=1, high=1000)
    upsample: bool = param(True, doc="Run the upsampler: 1,024 → 4,096 points.")
    upsample_steps: int = param(64, doc="Karras (Heun) steps of the upsampler.", low=1, high=1000)
    make_mesh: bool = param(True, doc="Also make a mesh per cloud with the SDF model (marching cubes).")
    grid_resolution: int = param(128, doc="Samples per axis of the SDF grid (128 as the public evaluation).",
                                 low=16, high=512)
    face_budget: int = param(0, doc="Decimate each mesh to at most this many triangles (0 = keep all).",
                             low=0, high=10_000_000)

    def validate(self) -> None:
        for name in ("model", "upsample_model", "sdf_model"):
            if not getattr(self, name).strip():
                raise ParamError(f"{name} must not be empty")
        if 0 < self.face_budget < 4:
            raise ParamError(f"face_budget = {self.face_budget} is below 4 (0 = no decimation)")


def check_inputs(config: PointEConfig, inputs: PipelineInputs) -> None:
    """A prompt or an image, not both, not neither (:func:`.conditions.prompt_or_image`).

    Raises:
        ParamError: no prompt and no image, or both. ValueError: a bad image.
    """
    prompt_or_image("point_e", config.prompt, inputs)


def _names(config: PointEConfig, kind: str) -> tuple[str, str, str]:
    """(base, upsampler, sdf) model names for a ``kind`` ('text' | 'image') input."""
    model = config.model.strip()
    if model == TINY_RANDOM:
        base = "tiny-textvec" if kind == "text" else "tiny-image_grid"
        auto_up, auto_sdf = "tiny-upsample", "tiny-sdf"
    else:
        base = (TEXT_MODEL if kind == "text" else IMAGE_MODEL) if model == AUTO else model
        auto_up, auto_sdf = "upsample", "sdf"
    up = auto_up if config.upsample_model.strip() == AUTO else config.upsample_model.strip()
    sdf = auto_sdf if config.sdf_model.strip() == AUTO else config.sdf_model.strip()
    return base, up, sdf


def run(config: PointEConfig, inputs: PipelineInputs, ctx: JobContext) -> PipelineResult:
    """Job entry point: the prompt or ``inputs.images['image']`` → ``config.num_samples`` point clouds (+ meshes).

    Returns:
        :class:`PipelineResult` with ``point_clouds`` = one :class:`ResultPointCloud` per sample (4,096 points with
        the upsampler, else 1,024; Blender frame; linear colours), ``meshes`` = one mesh per sample with ``v_color``
        when ``make_mesh``; ``extras['samples']`` (B, 6, N) float32 in Point-E's point space (xyz model frame, rgb in
        [0, 255]) and ``extras['coarse']`` (B, 6, 1024).

    Raises:
        ParamError: no/both inputs, or a base model conditioned on the other kind. ModelNotFoundError: weights not on
        this machine. MeshError: a sample whose SDF has no surface. JobCancelled.
    """
    check_inputs(config, inputs)
    image = inputs.images.get("image")
    kind = "image" if image is not None else "text"
    base_name, up_name, sdf_name = _names(config, kind)
    timings: dict[str, float] = {}
    b = config.num_samples

    # 1. Models: the base, and CLIP for its kind of condition.
    t0 = time.perf_counter()
    base: PointENet = ctx.models.get(load_point_e, base_name, ctx.device)
    base_kind = base.preset.model.kind if base.preset.model else "sdf"
    if base_kind not in ("textvec", "image_grid"):
        raise ParamError(f"model {base_name!r} is a Point-E {base_kind} model, not a base model; use one of "
                         f"{TEXT_MODEL}, {', '.join(IMAGE_MODELS)}")
    if (base_kind == "textvec") != (kind == "text"):
        wanted = TEXT_MODEL if kind == "text" else ", ".join(IMAGE_MODELS)
        raise ParamError(f"model {base_name!r} is conditioned on {'text' if base_kind == 'textvec' else 'images'}, "
                         f"not on {'text' if kind == 'text' else 'images'}; use {wanted} (or model 'auto')")
    clip = ctx.models.get(load_point_e_clip, f"{kind}:{base.preset.clip_model_id}", ctx.device)
    timings["load"] = time.perf_counter() - t0

    # 2. Condition: the CLIP text vector or image grid, repeated per sample; zeros are the unconditional condition.
    t0 = time.perf_counter()
    with torch.no_grad():
        cond = clip.embed_text([config.prompt]) if kind == "text" else clip.embed_images_grid([image])
    cond = cond.to(base.device, base.dtype).expand(b, *cond.shape[1:]).contiguous()
    expected = base.net.condition_shape(b)
    if tuple(cond.shape) != expected:
        raise ParamError(f"CLIP {base.preset.clip_model_id!r} gives conditions of shape {tuple(cond.shape)}, model "
                         f"{base_name!r} expects {expected}")
    timings["condition"] = time.perf_counter() - t0

    # 3. Base model: Karras/Heun from noise with guidance → 1,024 coarse points.
    t0 = time.perf_counter()
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    denoiser = make_denoiser(base.net, base.preset.sampler, {"clip": cond}, {"clip": torch.zeros_like(cond)},
                             config.guidance_scale)
    x = karras_sample(denoiser, (b, 6, base.preset.model.n_ctx), base.preset.sampler, generator, base.device,
                      steps=config.num_inference_steps, callback=lambda s, n: ctx.progress("base", s, n))
    coarse = unscale_channels(x.float())
    samples = coarse
    timings["base"] = time.perf_counter() - t0

    # 4. Upsampler: 3,072 more points conditioned on the coarse ones (and the image grid for an image).
    if config.upsample:
        t0 = time.perf_counter()
        up: PointENet = ctx.models.get(load_point_e, up_name, ctx.device)
        if up.preset.model is None or up.preset.model.kind != "upsample":
            raise ParamError(f"upsample_model {up_name!r} is not a Point-E upsampler")
        if up.preset.model.cond_ctx != coarse.shape[-1]:
            raise ParamError(f"upsample_model {up_name!r} takes {up.preset.model.cond_ctx} coarse points, the base "
                             f"model makes {coarse.shape[-1]}")
        grid = cond if kind == "image" else torch.zeros(up.net.condition_shape(b), device=up.device, dtype=up.dtype)
        scale = up.preset.sampler.guidance_scale if kind == "image" else 0.0
        low_res = coarse.to(up.device, up.dtype)
        up_denoiser = make_denoiser(up.net, up.preset.sampler, {"clip": grid, "low_res": low_res},
                                    {"clip": torch.zeros_like(grid), "low_res": torch.zeros_like(low_res)}, scale)
        fine = karras_sample(up_denoiser, (b, 6, up.preset.model.n_ctx), up.preset.sampler, generator, up.device,
                             steps=config.upsample_steps, callback=lambda s, n: ctx.progress("upsample", s, n))
        samples = torch.cat([coarse, unscale_channels(fine.float())], dim=-1)
        timings["upsample"] = time.perf_counter() - t0

    # 5. Point clouds: Blender frame, colours rounded to 8 bits as the public output, sRGB → linear.
    samples = samples.float().cpu()
    clouds = []
    for s in samples:
        xyz = s[:3].T.numpy()
        srgb = (s[3:].clamp(0, 255).round() / 255.0).T.numpy()
        clouds.append(ResultPointCloud(points=point_e_to_blender(xyz), colors=srgb_to_linear(srgb)))

    # 6. Meshes: SDF on a grid, marching cubes, colours from the nearest points.
    meshes: list[ResultMesh] = []
    recentred = []
    if config.make_mesh:
        t0 = time.perf_counter()
        sdf: PointENet = ctx.models.get(load_point_e, sdf_name, ctx.device)
        if sdf.preset.sdf is None:
            raise ParamError(f"sdf_model {sdf_name!r} is not a Point-E SDF model")
        for i, (s, cloud) in enumerate(zip(samples, clouds)):
            ctx.progress("mesh", i, b)
            points = s[:3].T.to(sdf.device, sdf.dtype)
            try:
                out = sdf_to_mesh(sdf.net, points, config.grid_resolution, face_budget=config.face_budget or None,
                                  check_cancelled=ctx.check_cancelled)
            except MeshError as err:
                raise MeshError(f"sample {i} has no surface: {err}") from None
            recentred.append(out.recentred)
            v_pos = point_e_to_blender(out.mesh.v_pos)
            v_color = nearest_colors(v_pos, cloud.points, cloud.colors)
            meshes.append(ResultMesh(TriMesh(v_pos, np.ascontiguousarray(out.mesh.t_pos_idx, dtype=np.int32)),
                                     v_color=v_color))
        ctx.progress("mesh", b, b)
        timings["mesh"] = time.perf_counter() - t0

    metadata = {"pipeline": "point_e", "prompt": config.prompt, "image": image is not None, "model": base_name,
                "upsample_model": up_name if config.upsample else None,
                "sdf_model": sdf_name if config.make_mesh else None, "seed": config.seed, "num_samples": b,
                "guidance_scale": config.guidance_scale, "num_inference_steps": config.num_inference_steps,
                "points": int(samples.shape[-1]), "meshes": len(meshes),
                "faces": [int(len(m.mesh.t_pos_idx)) for m in meshes], "sdf_recentred": recentred}
    return PipelineResult(meshes=meshes, point_clouds=clouds, metadata=metadata, timings=timings,
                          extras={"samples": samples, "coarse": coarse.float().cpu()})
