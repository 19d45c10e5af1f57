"""``shap_e``: a prompt or an image → coloured meshes (Shap-E through diffusers).

Jun & Nichol, "Shap-E: Generating Conditional 3D Implicit Functions" (2023): a transformer prior samples a (1024, 1024)
latent by Heun's method over Karras et al. sigmas with classifier-free guidance, conditioned on CLIP ViT-L/14 (the text
embedding of the prompt for ``openai/shap-e``, the image's patch tokens for ``openai/shap-e-img2img``); the latent is
the weights of an implicit function giving a signed distance and a colour at every point (STF). The denoising runs in
``diffusers.ShapEPipeline`` / ``ShapEImg2ImgPipeline`` (``output_type="latent"``); the mesh comes from the project's
extraction instead of ``ShapERenderer.decode_to_mesh`` (the field on a ``grid_resolution``³ grid over [-1, 1]³ padded
with an outside border, as diffusers does, so shapes touching the cube stay closed; PyMCubes at 0; clean-up), with
vertex colours from the colour head (sRGB-encoded, turned linear) and, optionally, a UV texture baked from the same
head. Defaults: 64 Heun steps and guidance 15 (text) / 3 (image), as Shap-E's sampling notebooks and diffusers'
examples; a 128³ grid, diffusers' ``decode_to_mesh`` default.

Frames: Shap-E's frame is Blender's (:func:`backend.geometry.frames.shap_e_to_blender` states the fact and its
source): meshes come out Z up, facing −Y, around the origin, about 1 m across.

Variations of a given mesh are not offered: they need Shap-E's encoder (the "transmitter": point cloud + renders →
latent), which diffusers does not ship (only the prior, the text/image towers and the renderer's decoder half).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from blender_addon.core.arrays import srgb_to_linear

from ..geometry.bake import bake_texture, vertex_colors
from ..geometry.extract import clean_mesh, marching_cubes, sample_grid
from ..geometry.frames import bottom_up_to_top_down, shap_e_to_blender
from ..geometry.mesh import MeshError, TriMesh
from ..geometry.render import make_rasterizer
from ..models.shap_e import IMAGE_MODEL, SHAP_E_BOUNDS, TEXT_MODEL, load_shap_e, stf_fields
from ..params import Config, ParamError, param
from .base import JobContext, PipelineInputs, PipelineResult, ResultMesh, to_uint8_image
from .conditions import prompt_or_image

AUTO_MODEL = "auto"
DEFAULT_GUIDANCE = {"text": 15.0, "image": 3.0}
"""Guidance scale when ``guidance_scale`` is 0: Shap-E's sampling notebooks (text 15, image 3)."""
OUTSIDE = -1.0
"""Signed distance of the border added around the grid (the STF field is positive inside, tanh-bounded)."""
QUERY_CHUNK = 65_536
"""Field query points per MLP call (bounds memory; no effect on the result)."""


@dataclass
class ShapEConfig(Config):
    """Settings of text/image → coloured meshes with Shap-E (defaults: Shap-E's sampling notebooks)."""

    prompt: str = param("", doc="What to generate, e.g. 'a red office chair'; leave empty when an image is given.")
    model: str = param(AUTO_MODEL, doc="Shap-E model: 'auto' (openai/shap-e for prompts, openai/shap-e-img2img for "
                                       "images), a Hugging Face id, a local diffusers folder, 'tiny-random' or "
                                       "'random-shap-e' (random weights).")
    seed: int = param(0, doc="Seed of the diffusion noise; same seed, same shapes (on one device).", low=0,
                      high=2**63 - 1)
    num_samples: int = param(1, doc="Shapes to generate (each a mesh of the result).", low=1, high=16)
    num_inference_steps: int = param(64, doc="Heun steps (Karras sigmas); 64 as Shap-E's notebooks, diffusers "
                                             "defaults to 25. Each step but the last calls the prior twice.",
                                     low=1, high=1000)
    guidance_scale: float = param(0.0, doc="Classifier-free guidance scale; 0 = the model's default (15 for "
                                           "prompts, 3 for images); values up to 1 = conditional only.",
                                  low=0.0, high=100.0)
    grid_resolution: int = param(128, doc="Samples per axis of the signed-distance grid over [-1, 1]³ (diffusers' "
                                          "decode_to_mesh default 128).", low=16, high=512)
    min_component_ratio: float = param(0.02, doc="Drop mesh parts smaller than this fraction of the largest part's "
                                                 "area (floaters).", low=0.0, high=1.0)
    face_budget: int = param(0, doc="Decimate each mesh to at most this many triangles (0 = keep all).",
                             low=0, high=10_000_000)
    bake_texture: bool = param(False, doc="Also UV-unwrap the mesh (xatlas) and bake the colour head into a texture "
                                          "(one sample only: a result carries one texture).")
    texture_size: int = param(1024, doc="Side of the baked texture in pixels.", low=64, high=4096)

    def validate(self) -> None:
        if not self.model.strip():
            raise ParamError("model must not be empty")
        if 0 < self.face_budget < 4:
            raise ParamError(f"face_budget = {self.face_budget} is below 4 (0 = no decimation)")
        if self.bake_texture and self.num_samples != 1:
            raise ParamError(f"bake_texture needs num_samples = 1, got {self.num_samples} (a result carries one "
                             f"texture, for its first mesh)")


def check_inputs(config: ShapEConfig, inputs: PipelineInputs) -> None:
    """A prompt or an image, not both, not neither (:func:`.conditions.prompt_or_image`).

    Raises:
        ParamError: no prompt and no image, or both. ValueError: a bad image.
    """
    prompt_or_image("shap_e", config.prompt, inputs)


def run(config: ShapEConfig, inputs: PipelineInputs, ctx: JobContext) -> PipelineResult:
    """Job entry point: the prompt or ``inputs.images['image']`` → ``config.num_samples`` coloured meshes.

    Returns:
        :class:`PipelineResult` with one mesh per sample (Blender frame, around the origin) with ``v_color`` (N, 3)
        float32 linear RGB in [0, 1] (and a texture when ``bake_texture``); ``extras['latents']``
        (num_samples, num_embeddings, embedding_dim) float32.

    Raises:
        ParamError: the model is not conditioned on the given kind. MeshError: a sample without a surface.
        ModelNotFoundError. JobCancelled.
    """
    check_inputs(config, inputs)
    image = inputs.images.get("image")
    kind = "image" if image is not None else "text"
    model = (IMAGE_MODEL if kind == "image" else TEXT_MODEL) if config.model.strip() == AUTO_MODEL \
        else config.model.strip()
    bundle = ctx.models.get(load_shap_e, model, ctx.device)
    pipe = bundle.pipeline(kind)
    if pipe is None:
        other = IMAGE_MODEL if kind == "image" else TEXT_MODEL
        raise ParamError(f"model {model!r} is conditioned on {' and '.join(bundle.conditions)}, not on "
                         f"{'images' if kind == 'image' else 'text'}; use {other} (or model 'auto')")
    guidance_scale = config.guidance_scale or DEFAULT_GUIDANCE[kind]
    timings: dict[str, float] = {}

    # 1. Denoise: diffusers' Heun sampler with classifier-free guidance, progress and cancellation per step.
    t0 = time.perf_counter()
    condition = {"image": _pil_on_white(image)} if kind == "image" else {"prompt": config.prompt}
    generator = torch.Generator(device=bundle.device).manual_seed(config.seed)
    with _StepProgress(pipe, config.num_inference_steps, ctx):
        latents = pipe(**condition, num_images_per_prompt=config.num_samples,
                       num_inference_steps=config.num_inference_steps, guidance_scale=guidance_scale,
                       generator=generator, output_type="latent").images
    latents = latents.float()
    timings["denoise"] = time.perf_counter() - t0

    # 2. Each latent's field → mesh (+ vertex colours, + optional baked texture) → Blender frame.
    t0 = time.perf_counter()
    meshes = []
    for i in range(config.num_samples):
        ctx.progress("extract", i, config.num_samples)
        meshes.append(_decode(bundle.renderer, latents[i], i, config, ctx))
    ctx.progress("extract", config.num_samples, config.num_samples)
    timings["extract"] = time.perf_counter() - t0

    metadata = {"pipeline": "shap_e", "prompt": config.prompt, "image": image is not None, "model": model,
                "seed": config.seed, "num_samples": config.num_samples, "guidance_scale": guidance_scale,
                "num_inference_steps": config.num_inference_steps, "grid_resolution": config.grid_resolution,
                "meshes": len(meshes), "faces": [int(len(m.mesh.t_pos_idx)) for m in meshes],
                "bake_texture": config.bake_texture}
    return PipelineResult(meshes=meshes, metadata=metadata, timings=timings, extras={"latents": latents})


class _StepProgress:
    """Per-step progress and cancellation for a diffusers Shap-E call, from hooks on its prior.

    diffusers' Shap-E pipelines take no step callback (``callback_on_step_end``), so the prior's forward hooks count
    its calls: cancellation is checked before each call, and ``ctx.progress("denoise", step, N)`` is reported when a
    step completes, step = ⌊calls · N / total calls⌋ with the total read from the scheduler's timesteps for N steps.
    Shap-E's ``HeunDiscreteScheduler`` makes 2N − 1 calls: steps 1..N−1 take two (an Euler prediction, then the
    trapezoidal correction) and the last, to σ = 0, one; a first-order scheduler makes N.
    """

    def __init__(self, pipe, num_inference_steps: int, ctx: JobContext):
        self.prior, self.steps, self.ctx = pipe.prior, num_inference_steps, ctx
        pipe.scheduler.set_timesteps(num_inference_steps)  # the pipeline sets them again (same values)
        self.total_calls = len(pipe.scheduler.timesteps)
        self.calls = self.reported = 0
        self.handles: list = []

    def _before(self, _module, _args) -> None:
        self.ctx.check_cancelled()

    def _after(self, _module, _args, _output) -> None:
        self.calls += 1
        step = self.calls * self.steps // self.total_calls
        if step > self.reported:
            self.reported = step
            self.ctx.progress("denoise", step, self.steps)

    def __enter__(self) -> "_StepProgress":
        self.ctx.progress("denoise", 0, self.steps)
        self.handles = [self.prior.register_forward_pre_hook(self._before),
                        self.prior.register_forward_hook(self._after)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


def _pil_on_white(image: np.ndarray):
    """(H, W, 3|4) uint8 (row 0 = top) → an RGB PIL image, alpha composited on white (as the shape_ldm pipeline)."""
    from PIL import Image

    rgb = image[..., :3].astype(np.float32)
    if image.shape[-1] == 4:
        alpha = image[..., 3:].astype(np.float32) / 255.0
        rgb = rgb * alpha + 255.0 * (1.0 - alpha)
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), mode="RGB")


def _decode(renderer, latent: torch.Tensor, index: int, config: ShapEConfig, ctx: JobContext) -> ResultMesh:
    """One latent → a :class:`ResultMesh` in Blender's frame with linear vertex colours (+ texture when baking).

    The signed distance is sampled on ``grid_resolution``³ points over [-1, 1]³ and padded with one layer of
    :data:`OUTSIDE` (the padded grid spans [-1 - h, 1 + h]³, h = the grid step), marching cubes at 0, clean-up.

    Raises:
        MeshError: no surface (the field is outside everywhere). JobCancelled.
    """
    sdf_fn, color_fn = stf_fields(renderer, latent.to(ctx.device))

    def field(points: torch.Tensor) -> torch.Tensor:
        ctx.check_cancelled()
        return sdf_fn(points)

    grid = sample_grid(field, config.grid_resolution, SHAP_E_BOUNDS, chunk=QUERY_CHUNK, device=ctx.device)
    if grid.max() <= 0.0:
        raise MeshError(f"sample {index} has no surface: its signed distance is negative (outside) everywhere in "
                        f"[-1, 1]³ (max {grid.max():.3g}); try another seed or prompt")
    step = 2.0 * SHAP_E_BOUNDS / (config.grid_resolution - 1)
    padded = np.pad(grid, 1, mode="constant", constant_values=OUTSIDE)
    mesh = marching_cubes(padded, 0.0, SHAP_E_BOUNDS + step, inside="above")
    mesh = clean_mesh(mesh, min_component_ratio=config.min_component_ratio, face_budget=config.face_budget or None)
    srgb = vertex_colors(mesh, color_fn, chunk=QUERY_CHUNK, device=ctx.device)
    v_color = srgb_to_linear(srgb)
    texture = None
    if config.bake_texture:
        ctx.check_cancelled()
        uv, uv_idx, texels = bake_texture(mesh, color_fn, config.texture_size, make_rasterizer(ctx.device),
                                          chunk=QUERY_CHUNK)
        mesh = TriMesh(mesh.v_pos, mesh.t_pos_idx, uv, uv_idx)
        # Texels are sRGB-encoded already (the colour head's own encoding), rows bottom-first → image rows.
        texture = to_uint8_image(bottom_up_to_top_down(torch.from_numpy(texels), 0).permute(2, 0, 1))
    world = TriMesh(shap_e_to_blender(mesh.v_pos).astype(np.float32), np.ascontiguousarray(mesh.t_pos_idx, np.int32),
                    mesh.uv, mesh.uv_idx)
    return ResultMesh(world, v_color=v_color, texture=texture)
