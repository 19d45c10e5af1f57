"""Refine a mesh: Magic3D's fine stage — a DMTet surface with a colour field, rasterized at high resolution, SDS.

After Lin et al., "Magic3D: High-Resolution Text-to-3D Content Creation" (CVPR 2023), §4.2 (the fine stage): the
coarse shape (here any mesh: a Latent-NeRF or shape-model result, or the artist's blockout) becomes a DMTet
(:mod:`backend.geometry.dmtet`: SDF values and bounded deformations on a tetrahedral grid), initialised from the
coarse shape's signed distance; a colour field on 3-D surface points gives the texture; each step extracts the surface
by differentiable marching tetrahedra, rasterizes it at ``render_size``² (512 as the paper) with DreamFusion's shading
(:mod:`backend.geometry.shading`: albedo / Lambertian / textureless renders under a point light near the camera),
encodes the RGB render with Stable Diffusion's VAE into 64² latents and applies SDS (:mod:`backend.guidance.sds`), or
ProlificDreamer's VSD with ``guidance="vsd"`` (:mod:`backend.guidance.vsd`); ``anneal_start`` lowers t_max late in the
run.
Losses besides SDS: normal consistency between neighbouring faces (Magic3D's fine-stage smoothness, weight 1e4 as
threestudio's magic3d-refine) and DMTet's SDF sign regulariser. Defaults of the optimiser, timesteps and guidance are
threestudio's magic3d-refine configuration (Adam lr 0.01, betas (0.9, 0.99); t in [0.02, 0.5]·T; CFG 100).

Colour: a field, not a UV texture, because marching tetrahedra changes the surface's topology from step to step (a
UV atlas would have to be remade every step); the field is a multi-resolution hash grid
(:class:`backend.latent_nerf.field.HashGridEncoding`) and a one-hidden-layer MLP with a sigmoid, as Magic3D's and
threestudio's texture network, and it is baked into a UV texture (xatlas) once at the end.

Frames: the input arrives in Blender's world frame; it is normalised by a similarity (bounding-box centre at the
origin, farthest vertex at 0.6, Latent-Paint's convention for its cameras) into the DMTet box [−0.8, 0.8]³; the
result is mapped back by the inverse similarity, so it stands where the input stands, at its size.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from ..geometry.bake import bake_texture
from ..geometry.cameras import CameraBatch, sample_cameras
from ..geometry.dmtet import DMTetGeometry
from ..geometry.extract import clean_mesh, transform_mesh
from ..geometry.frames import bottom_up_to_top_down
from ..geometry.mesh import MeshError, TriMesh, normalize_vertices, validate_mesh
from ..geometry.queries import surface_distance, winding_number
from ..geometry.render import Rasterizer, antialias_silhouettes, make_rasterizer
from ..geometry.shading import (AMBIENT, DIFFUSE, normal_consistency, rasterize_surface, sample_point_lights,
                                sample_shading, shade)
from ..guidance.sds import Guidance
from ..latent_nerf.field import HashGridEncoding
from ..params import ParamError, param
from .base import JobContext, PipelineInputs, PipelineResult, ResultMesh, to_uint8_image
from .sds_common import (SDSPipelineConfig, VaeCodec, build_guidance, keep_guidance_state, maybe_preview,
                          preview_camera)

NORMALIZED_RADIUS = 0.6
"""Farthest input vertex from the bounding-box centre in the normalised frame (Latent-Paint's camera convention)."""

DMTET_BOUND = 0.8
"""Half-side of the DMTet grid's box in the normalised frame: room around the input for the surface to grow."""


@dataclass
class RefineMeshConfig(SDSPipelineConfig):
    """Settings of one mesh refinement (Magic3D fine stage; defaults: the paper and threestudio's magic3d-refine)."""

    render_size: int = param(512, doc="Side of the RGB renders in pixels, encoded by the VAE to render_size/8 latents "
                                      "(512 as Magic3D's fine stage; a multiple of 8).", low=64, high=1024)
    max_step_percent: float = param(0.5, doc="Largest SDS timestep as a fraction of T (Magic3D's fine stage: 0.5).",
                                    low=0.0, high=1.0)
    stage: str = param("both", doc="What is optimised: the geometry (SDF + deformations), the texture (colour field), "
                                   "or both together.", choices=("geometry", "texture", "both"))
    dmtet_resolution: int = param(128, doc="Cells per axis of the DMTet tetrahedral grid (Magic3D: 128).",
                                  low=8, high=256)
    lr_geometry: float = param(0.01, doc="Adam learning rate of the SDF values and deformations.", low=1e-6, high=1.0)
    lr_texture: float = param(0.01, doc="Adam learning rate of the colour field (hash grid and MLP).", low=1e-6,
                              high=1.0)
    albedo_probability: float = param(0.0, doc="Share of renders with unlit albedo (DreamFusion shading; "
                                               "the rest after textureless is Lambertian).", low=0.0, high=1.0)
    textureless_probability: float = param(0.5, doc="Share of renders with white albedo, so geometry is judged by "
                                                    "its shading (threestudio's 0.5).", low=0.0, high=1.0)
    ambient: float = param(AMBIENT, doc="Ambient light of Lambertian and textureless renders (DreamFusion: 0.1).",
                           low=0.0, high=1.0)
    diffuse: float = param(DIFFUSE, doc="Point-light intensity of Lambertian and textureless renders (0.9).",
                           low=0.0, high=1.0)
    light_distance_range: tuple[float, float] = param((0.8, 1.5), doc="Distance of the point light from the object's "
                                                      "centre (normalised frame; DreamFusion sampling).", low=0.01,
                                                      high=100.0)
    light_position_perturb: float = param(1.0, doc="Std of the noise added to the camera position to place the light "
                                                   "(0 = the light sits on the camera's side, on its axis).", low=0.0,
                                          high=10.0)
    lambda_normal_consistency: float = param(1e4, doc="Weight of the normal consistency between neighbouring faces "
                                                      "(threestudio's magic3d-refine: 1e4).", low=0.0, high=1e8)
    lambda_sdf: float = param(0.01, doc="Weight of DMTet's SDF sign regulariser (cross-entropy across sign changes).",
                              low=0.0, high=1e4)
    color_log2_hashmap_size: int = param(19, doc="log2 of the colour field's hash table size per level (16 levels, "
                                                 "2 features, finest 4096 cells as Magic3D).", low=8, high=24)
    texture_resolution: int = param(1024, doc="Side of the baked RGB texture in pixels.", low=64, high=8192)
    face_budget: int = param(0, doc="Decimate the final mesh to at most this many triangles (0 = keep all).", low=0,
                             high=10_000_000)
    partial_every: int = param(500, doc="Steps between intermediate meshes streamed to the client (0 = never).", low=0,
                               high=100_000)
    vae_preview_every: int = param(0, doc="Steps between extra previews (renders are RGB already: a preview is the "
                                          "render itself, no VAE decode; 0 = none besides preview_every).", low=0,
                                   high=100_000)

    @property
    def optimizes_geometry(self) -> bool:
        """Whether the SDF values and deformations are optimised (stage geometry or both)."""
        return self.stage in ("geometry", "both")

    @property
    def optimizes_texture(self) -> bool:
        """Whether the colour field is optimised (stage texture or both)."""
        return self.stage in ("texture", "both")

    def validate(self) -> None:
        super().validate()
        if self.render_size % 8:
            raise ParamError(f"render_size = {self.render_size} must be a multiple of 8 (the VAE's downsampling)")
        if self.albedo_probability + self.textureless_probability > 1.0:
            raise ParamError(f"albedo_probability + textureless_probability = "
                             f"{self.albedo_probability + self.textureless_probability} must be <= 1")


class ColorField(nn.Module):
    """Albedo on 3-D points: a multi-resolution hash grid and a small MLP with a sigmoid (Magic3D's texture network).

    ``forward(points (N, 3) float32, normalised frame) -> (N, 3)`` albedo in (0, 1), sRGB-encoded values. Initialised
    from torch's global generator (seed it); the table starts near 0, so the field starts near grey 0.5.

    Args:
        bound: the encoding covers [−bound, bound]³ (points outside are clamped).
        log2_hashmap_size: table size per level (16 levels of 2 features, base 16, finest 4096 cells).
    """

    def __init__(self, bound: float, log2_hashmap_size: int = 19):
        super().__init__()
        self.encoding = HashGridEncoding(16, 2, log2_hashmap_size, 16, 4096, bound)
        self.mlp = nn.Sequential(nn.Linear(self.encoding.output_dim, 64), nn.ReLU(inplace=True), nn.Linear(64, 3))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(self.encoding(points)))


def mesh_sdf(mesh: TriMesh) -> Callable[[torch.Tensor], torch.Tensor]:
    """The signed distance of a mesh as ``fn(points (n, 3) torch) -> (n,) float32`` (negative inside).

    Magnitude: the distance to the surface (:func:`backend.geometry.queries.surface_distance`); sign: the generalized
    winding number > 0.5 is inside (:func:`backend.geometry.queries.winding_number`), which is what makes open,
    self-intersecting and multi-part meshes usable (a hole's interior counts by how much of it the surface wraps).
    """
    v_pos, tri = mesh.v_pos, mesh.t_pos_idx

    def fn(points: torch.Tensor) -> torch.Tensor:
        p = points.detach().cpu().numpy()
        inside = winding_number(v_pos, tri, p) > 0.5
        dist = surface_distance(v_pos, tri, p)
        return torch.from_numpy(np.where(inside, -dist, dist).astype(np.float32)).to(points.device)

    return fn


@dataclass
class _Run:
    """What one run's steps share: the DMTet, the colour field, the optimiser, the guidance, the seeded generator,
    the settings, the hooks, the timing sums, and the fixed surface of a texture-only run."""

    config: RefineMeshConfig
    dmtet: DMTetGeometry
    color: ColorField
    optimizer: torch.optim.Optimizer
    sds: Guidance
    generator: torch.Generator
    context: JobContext
    timings: dict[str, float]
    center: np.ndarray
    scale: float
    fixed_surface: tuple[torch.Tensor, torch.Tensor] | None = None


class RefineMeshPipeline:
    """Magic3D's fine stage on one mesh.

    Args:
        codec: RGB (B, 3, H, W) in [0, 1] → what the guidance sees, via ``codec.encode`` (differentiable):
            :class:`~backend.pipelines.sds_common.VaeCodec` for Stable Diffusion (64² latents from 512² renders);
            tests may pass any other differentiable map with an oracle that knows its output.
        rasterizer: nvdiffrast on CUDA or the torch rasterizer (:func:`backend.geometry.render.make_rasterizer`).
        device: where optimisation runs.
    """

    name = "refine_mesh"
    config_class = RefineMeshConfig

    def __init__(self, codec, rasterizer: Rasterizer, device: torch.device):
        self.codec = codec
        self.rasterizer = rasterizer
        self.device = torch.device(device)

    # ---- pieces ------------------------------------------------------------------------------------------------------

    @staticmethod
    def normalize(mesh: TriMesh) -> tuple[TriMesh, np.ndarray, float]:
        """Validate and normalise the input: ``(mesh in the normalised frame, center (3,), scale)`` with
        ``v_norm = (v_world − center) · scale`` (farthest vertex at :data:`NORMALIZED_RADIUS`).

        Raises:
            MeshError: no faces, NaN/Inf vertices, bad indices, a mesh of zero size.
        """
        mesh = validate_mesh(mesh)
        v_norm, center, scale = normalize_vertices(mesh.v_pos, NORMALIZED_RADIUS)
        return TriMesh(v_norm, mesh.t_pos_idx), center, scale

    def surface(self, run: _Run) -> tuple[torch.Tensor, torch.Tensor]:
        """The current surface (normalised frame): ``(v_pos (N, 3), faces (F, 3) int64)``, differentiable unless the
        geometry is frozen (texture stage).

        Raises:
            MeshError: the SDF lost its surface (all of one sign).
        """
        if run.fixed_surface is not None:
            return run.fixed_surface
        return run.dmtet.extract()

    def render(self, v_pos: torch.Tensor, faces: torch.Tensor, color: ColorField, cameras: CameraBatch,
               size: int, shading: str, light_positions: torch.Tensor, ambient: float = AMBIENT,
               diffuse: float = DIFFUSE) -> torch.Tensor:
        """Render the shaded surface over a white background.

        Args:
            v_pos, faces: the surface (normalised frame). color: the albedo field. cameras: B cameras.
            size: side in pixels. shading: "albedo" | "lambertian" | "textureless". light_positions: (B, 3).
            ambient, diffuse: light intensities (:func:`backend.geometry.shading.shade`).

        Returns:
            (B, 3, size, size) RGB in [0, 1], upright (row 0 = top), differentiable w.r.t. the surface (shading, and
            the outline through :func:`backend.geometry.render.antialias_silhouettes`) and the field.
        """
        surf = rasterize_surface(self.rasterizer, v_pos, faces, cameras.mvp, size)
        mask = surf["mask"]
        albedo = torch.zeros_like(surf["points"])
        if shading != "textureless":
            covered = mask[..., 0] > 0
            albedo = albedo.index_put((covered,), color(surf["points"][covered]))
        rgb = shade(albedo, surf["normals"], surf["points"], light_positions, shading, ambient, diffuse)
        image = antialias_silhouettes(rgb * mask + (1.0 - mask), surf["rast_out"], surf["pos_clip"], surf["tri"])
        return bottom_up_to_top_down(image, 1).permute(0, 3, 1, 2)

    def to_world(self, mesh: TriMesh, run: _Run) -> TriMesh:
        """Map a normalised-frame mesh back to where the input stands, at its size."""
        return transform_mesh(mesh, run.scale, run.center)

    # ---- the run -----------------------------------------------------------------------------------------------------

    def __call__(self, mesh: TriMesh, config: RefineMeshConfig, sds: Guidance,
                 context: JobContext | None = None) -> PipelineResult:
        """Refine ``mesh`` toward ``config.prompt`` (guided by ``sds``: SDS with a Stable Diffusion or an oracle
        denoiser, or VSD, :func:`backend.pipelines.sds_common.build_guidance`; called with the 1-based step, for
        timestep annealing).

        Returns:
            :class:`PipelineResult` with one world-frame mesh (cleaned, optionally decimated, xatlas UVs) and its
            ``texture`` (S, S, 3) uint8 row 0 = top; metadata; timings; ``extras['dmtet']``, ``['color']``,
            ``['normalized']`` (the input in the normalised frame), ``['center']``, ``['scale']``.

        Raises:
            MeshError: unusable input, or the surface vanished. JobCancelled: cancelled through ``context``.
            FloatingPointError: the loss became NaN/Inf.
        """
        context = context or JobContext(device=self.device, models=None)
        timings = {"render": 0.0, "guidance": 0.0, "backward": 0.0}
        t0 = time.perf_counter()

        # 1. Input: validate, normalise into the DMTet box, its signed distance on the grid.
        normalized, center, scale = self.normalize(mesh)
        context.progress("init_sdf", 0, config.iterations)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(config.seed)
            dmtet = DMTetGeometry(config.dmtet_resolution, DMTET_BOUND).to(self.device)
            color = ColorField(DMTET_BOUND, config.color_log2_hashmap_size).to(self.device)
        dmtet.init_from_sdf(mesh_sdf(normalized))
        try:
            dmtet.extract()
        except MeshError:
            raise MeshError(f"the mesh has no surface on a {config.dmtet_resolution}³ DMTet grid (too thin for it: "
                            f"raise dmtet_resolution)") from None
        timings["init_sdf"] = time.perf_counter() - t0

        # 2. Optimiser over what the stage optimises.
        groups = []
        if config.optimizes_geometry:
            groups.append({"params": [dmtet.sdf, dmtet.deform], "lr": config.lr_geometry})
        else:
            dmtet.requires_grad_(False)
        if config.optimizes_texture:
            groups.append({"params": list(color.parameters()), "lr": config.lr_texture})
        else:
            color.requires_grad_(False)
        optimizer = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)
        generator = torch.Generator(device=self.device).manual_seed(config.seed)
        run = _Run(config, dmtet, color, optimizer, sds, generator, context, timings, center, scale)
        if not config.optimizes_geometry:
            with torch.no_grad():
                run.fixed_surface = dmtet.extract()
        preview_cam = preview_camera(self.device)
        preview_light = sample_point_lights(preview_cam.camera_positions, torch.Generator(self.device).manual_seed(0),
                                            (1.2, 1.2), 0.0)

        # 3. Optimisation: extract → render (shaded) → encode → SDS (+ regularisers) → Adam.
        for step in range(1, config.iterations + 1):
            self._step(run, step)
            maybe_preview(step, config, lambda: self.render(*self.surface(run), color, preview_cam,
                                                            min(config.render_size, 256), "lambertian",
                                                            preview_light, config.ambient, config.diffuse),
                          self.codec, context, decode_rgb=lambda x: x)
            self._maybe_partial(run, step)

        # 4. Result: extract → clean (face budget) → UVs + baked texture → world frame.
        context.progress("extract_mesh", config.iterations, config.iterations)
        t1 = time.perf_counter()
        with torch.no_grad():
            v_pos, faces = dmtet.extract()
            raw = TriMesh(v_pos.detach().cpu().numpy().astype(np.float32), faces.cpu().numpy().astype(np.int32))
            cleaned = clean_mesh(raw, face_budget=config.face_budget or None)
            uv, uv_idx, texture = bake_texture(cleaned, color, config.texture_resolution, self.rasterizer)
        timings["extract"] = time.perf_counter() - t1
        world = self.to_world(TriMesh(cleaned.v_pos, cleaned.t_pos_idx, uv, uv_idx), run)
        texture_img = to_uint8_image(bottom_up_to_top_down(torch.from_numpy(texture).permute(2, 0, 1), 1))
        metadata = {"pipeline": self.name, "prompt": config.prompt, "negative_prompt": config.negative_prompt,
                    "seed": config.seed, "model": config.model, "iterations": config.iterations,
                    "stage": config.stage, "dmtet_resolution": config.dmtet_resolution,
                    "render_size": config.render_size, "guidance": config.guidance,
                    "guidance_scale": config.guidance_scale,
                    "faces": int(len(world.t_pos_idx))}
        return PipelineResult(meshes=[ResultMesh(world, texture=texture_img)], metadata=metadata, timings=timings,
                              extras={"dmtet": dmtet, "color": color, "normalized": normalized, "center": center,
                                      "scale": scale})

    def _step(self, run: _Run, step: int) -> None:
        """One optimisation step; reports progress."""
        config, context, generator, timings = run.config, run.context, run.generator, run.timings
        context.check_cancelled()
        t0 = time.perf_counter()
        cameras = sample_cameras(config.batch_size, generator, device=self.device, **config.camera_ranges())
        shading = sample_shading(generator, config.albedo_probability, config.textureless_probability)
        if not config.optimizes_geometry and shading == "textureless":
            shading = "lambertian"  # a white render teaches the colour field nothing
        lights = sample_point_lights(cameras.camera_positions, generator, config.light_distance_range,
                                     config.light_position_perturb)
        try:
            v_pos, faces = self.surface(run)
        except MeshError:
            raise MeshError(f"the surface vanished at step {step} (every SDF value has one sign); lower lr_geometry "
                            f"or lambda_sdf") from None
        image = self.render(v_pos, faces, run.color, cameras, config.render_size, shading, lights, config.ambient,
                            config.diffuse)
        latents = self.codec.encode(image).float()
        t1 = time.perf_counter()
        out = run.sds(latents, cameras, generator, step=step)
        loss = out.loss
        losses = {"sds": float(out.loss.detach()), **out.losses}
        if config.optimizes_geometry:
            if config.lambda_normal_consistency > 0:
                nc = normal_consistency(v_pos, faces)
                loss = loss + config.lambda_normal_consistency * nc
                losses["normal_consistency"] = float(nc.detach())
            if config.lambda_sdf > 0:
                reg = run.dmtet.sdf_regularizer()
                loss = loss + config.lambda_sdf * reg
                losses["sdf"] = float(reg.detach())
        t2 = time.perf_counter()
        run.optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
            run.optimizer.step()
        t3 = time.perf_counter()
        timings["render"] += t1 - t0
        timings["guidance"] += t2 - t1
        timings["backward"] += t3 - t2
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"refine_mesh loss became {value} at step {step}")
        context.progress("refine", step, config.iterations, {**losses, "t": float(out.timesteps.float().mean())})

    def _maybe_partial(self, run: _Run, step: int) -> None:
        """Every ``partial_every`` steps, stream the surface so far (world frame, raw) when someone listens."""
        config = run.config
        if not config.partial_every or step % config.partial_every or step == config.iterations:
            return
        if not run.context.wants_partial:
            return
        with torch.no_grad():
            v_pos, faces = run.dmtet.extract(allow_empty=True)
            if len(faces) == 0:
                return
            mesh = TriMesh(v_pos.cpu().numpy().astype(np.float32), faces.cpu().numpy().astype(np.int32))
        run.context.partial(step, [ResultMesh(self.to_world(mesh, run))])


def run(config: RefineMeshConfig, inputs: PipelineInputs, context: JobContext) -> PipelineResult:
    """Job entry point: the model from the cache, the guidance (SDS or VSD, :func:`~.sds_common.build_guidance`), then
    refine ``inputs.meshes['mesh']``. ``result.extras['guidance_state']`` holds what VSD learned (SDS: empty).

    Raises:
        MeshError (bad mesh), ModelNotFoundError, ParamError, JobCancelled.
    """
    RefineMeshPipeline.normalize(inputs.meshes["mesh"])  # an unusable mesh fails before the model loads
    context.progress("load_model", 0, config.iterations)
    sd = context.models.stable_diffusion(config.model, context.device)
    pipeline = RefineMeshPipeline(VaeCodec(sd.vae, sd.latent_scaling), make_rasterizer(context.device),
                                  context.device)
    with build_guidance(sd, config) as guidance:  # VSD's adapter leaves the cached UNet however the run ends
        result = pipeline(inputs.meshes["mesh"], config, guidance, context)
        keep_guidance_state(guidance, config, result)
    return result
