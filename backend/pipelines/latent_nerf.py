"""Latent-NeRF: text (and optionally a sketch shape) to a textured mesh by score distillation in SD's latent space.

After Metzer et al., "Latent-NeRF for Shape-Guided Generation of 3D Shapes and Textures" (CVPR 2023): a NeRF whose
field outputs a density and 4 Stable Diffusion latent channels is volume-rendered at 64×64 from random cameras; SDS
(:mod:`backend.guidance.sds`) supervises the rendered latents directly. With a sketch shape, the Sketch-Shape loss
(:mod:`backend.latent_nerf.sketch`) ties the NeRF's occupancy to the sketch's winding-number occupancy away from its surface.
An optional RGB refinement stage replaces the latent output by a linear 4→3 head (initialised from the latent→RGB
matrix) and continues SDS through the VAE encoder. The result is extracted by marching cubes, cleaned, UV-unwrapped,
baked (latent texture → VAE decode) and mapped back from the normalised NeRF frame to the sketch's world frame.
DreamFusion's options (Poole et al., 2022): ``space="rgb"`` makes the field output RGB albedo (3 sigmoid features),
rendered at ``refine_render_size`` and encoded by the VAE for SDS (as the RGB refinement does), shaded per sample by a
schedule of albedo / Lambertian / textureless renders under a point light near the camera (:mod:`backend.geometry.shading`;
normals from the density gradient by central differences), with the orientation loss (weight 1e-2) pushing normals
to face the camera; ``lambda_opacity`` adds DreamFusion's penalty on the accumulated opacity.
``guidance="vsd"`` uses ProlificDreamer's variational score distillation instead of SDS (:mod:`backend.guidance.vsd`;
one particle, the same LoRA through both stages); ``anneal_start`` lowers t_max late in the run (either guidance).

Frames: Blender world, Z up. With a sketch the NeRF frame is the sketch normalised (vertex mean at the origin, largest
vertex norm 0.7, Latent-NeRF's convention); without one the NeRF frame is the world frame around the origin.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry.bake import bake_texture
from ..geometry.cameras import CameraBatch, sample_cameras
from ..geometry.extract import clean_mesh, marching_cubes, sample_grid
from ..geometry.frames import bottom_up_to_top_down
from ..geometry.mesh import MeshError, TriMesh
from ..geometry.render import make_rasterizer
from ..guidance.sds import Guidance
from ..geometry.shading import sample_point_lights, sample_shading, shade
from ..latent_nerf.field import BackgroundField, LatentNeRF, NeRFConfig, density_normals
from ..latent_nerf.occupancy import OccupancyGrid
from ..latent_nerf.sketch import OCCUPANCY_DELTA, SketchShape, sketch_loss
from ..latent_nerf.volume import get_rays, volume_render
from ..models.latent_rgb import LATENT_RGB_FACTORS
from ..params import ParamError, param
from .base import JobContext, PipelineInputs, PipelineResult, ResultMesh, to_uint8_image
from .sds_common import SDSPipelineConfig, VaeCodec, build_guidance, maybe_preview, preview_camera


@dataclass
class LatentNeRFConfig(SDSPipelineConfig):
    """Settings of one Latent-NeRF run (defaults: the paper's official configuration)."""

    lr: float = param(1e-3, doc="Adam learning rate of the MLP (x10 for the hash grid).", low=1e-6, high=1.0)
    encoding: str = param("hashgrid", doc="Position encoding of the field.", choices=("hashgrid", "frequency"))
    hashgrid_impl: str = param("fast", doc="Hash grid implementation: \"fast\" (vectorised, level-major gathers) "
                                           "or \"reference\" (the plain definition); equal to float32 rounding.",
                               choices=("fast", "reference"))
    num_samples: int = param(64, doc="Samples per ray in volume rendering.", low=8, high=512)
    occupancy_resolution: int = param(64, doc="Cells per axis of the occupancy grid that skips empty space while "
                                              "training (instant-NGP / nerfacc; updated every 16 steps); 0 = off, "
                                              "every sample is evaluated.", low=0, high=256)
    occupancy_threshold: float = param(0.01, doc="Sample opacity under which an occupancy cell may be skipped "
                                                 "(nerfacc's 0.01; the grid's mean if lower).", low=1e-6, high=0.5)
    background: str = param("learned", doc="Background behind the object: a learned function of the view direction "
                                           "(Latent-NeRF's background model) or white.", choices=("learned", "white"))
    lambda_shape: float = param(5e-6, doc="Weight of the Sketch-Shape loss (summed over samples, as in the official code).", low=0.0, high=1.0)
    lambda_sparsity: float = param(5e-4, doc="Weight of the opacity entropy loss (crisp silhouettes).", low=0.0, high=1.0)
    sketch_sigma: float = param(0.3, doc="Proximity sigma of the Sketch-Shape loss: near the sketch surface the shape is free.", low=1e-3, high=2.0)
    sketch_grid_resolution: int = param(96, doc="Grid on which the sketch's occupancy and distance are precomputed.", low=16, high=512)
    sketch_init_iterations: int = param(200, doc="Steps fitting the density to the sketch alone before SDS starts "
                                                 "(unweighted Sketch-Shape cross-entropy, half the points near the sketch surface; 0 = start from the blob, as the paper).", low=0, high=100_000)
    sketch_init_points: int = param(16384, doc="Points per sketch-initialisation step (half uniform in the box, half near the sketch surface).", low=256, high=1_000_000)
    refine_iterations: int = param(0, doc="Steps of the optional RGB refinement stage (0 = off).", low=0, high=100_000)
    refine_render_size: int = param(128, doc="Side of the RGB renders of the refinement stage and of space rgb "
                                             "(encoded by the VAE).", low=64, high=512)
    space: str = param("latent", doc="What the field's features are: Stable Diffusion latents rendered at render_size "
                                     "(Latent-NeRF), or RGB albedo rendered at refine_render_size, shaded, and encoded "
                                     "by the VAE for SDS (DreamFusion).", choices=("latent", "rgb"))
    albedo_probability: float = param(0.0, doc="Space rgb: share of unlit albedo renders (DreamFusion shading; the "
                                               "rest after textureless is Lambertian).", low=0.0, high=1.0)
    textureless_probability: float = param(0.5, doc="Space rgb: share of white-albedo renders judged by their shading "
                                                    "alone (threestudio's DreamFusion: 0.5).", low=0.0, high=1.0)
    lambda_orient: float = param(1e-2, doc="Space rgb: weight of DreamFusion's orientation loss, Σ sg(wᵢ)·max(0, "
                                           "nᵢ·d)² per ray (normals facing away from the camera; DreamFusion / "
                                           "stable-dreamfusion: 1e-2).", low=0.0, high=1e4)
    lambda_opacity: float = param(0.0, doc="Weight of the opacity penalty mean √(opacity² + 0.01) of the renders "
                                           "(DreamFusion's regularisation against filling space; 0 = off).", low=0.0,
                                  high=1e4)
    mesh_resolution: int = param(256, doc="Marching-cubes grid of the final mesh.", low=32, high=512)
    partial_every: int = param(500, doc="Steps between intermediate meshes streamed to the client (0 = never).", low=0, high=100_000)
    partial_resolution: int = param(64, doc="Marching-cubes grid of the intermediate meshes.", low=16, high=256)
    face_budget: int = param(0, doc="Decimate the final mesh to at most this many triangles (0 = keep all).", low=0, high=10_000_000)
    texture_size: int = param(1024, doc="Side of the baked RGB texture in pixels.", low=64, high=8192)

    def validate(self) -> None:
        super().validate()
        if self.albedo_probability + self.textureless_probability > 1.0:
            raise ParamError(f"albedo_probability + textureless_probability = "
                             f"{self.albedo_probability + self.textureless_probability} must be <= 1")
        if self.space == "rgb" and self.refine_iterations:
            raise ParamError("refine_iterations is the RGB refinement of space latent; with space rgb the whole run "
                             "is RGB already (set refine_iterations = 0)")


@dataclass
class _Run:
    """What one run's steps share: the field, its background, the optimiser, the guidance, the seeded generator, the
    optional sketch, the settings, the hooks, the timing sums (seconds of render / guidance / backward) and the
    optional occupancy grid with its own generator (so the cameras do not depend on whether it is on)."""

    config: LatentNeRFConfig
    nerf: LatentNeRF
    background: BackgroundField
    optimizer: torch.optim.Optimizer
    sds: Guidance
    generator: torch.Generator
    sketch: SketchShape | None
    context: JobContext
    timings: dict[str, float]
    occupancy: OccupancyGrid | None = None
    occupancy_generator: torch.Generator | None = None


class LatentNeRFPipeline:
    """Latent-NeRF generation.

    Args:
        vae, latent_scaling: Stable Diffusion's VAE (backgrounds, previews, RGB refinement, texture decode).
        device: where optimisation runs.
    """

    name = "latent_nerf"
    config_class = LatentNeRFConfig

    def __init__(self, vae, latent_scaling: float, device: torch.device):
        self.codec = VaeCodec(vae, latent_scaling)
        self.device = torch.device(device)
        self.rasterizer = make_rasterizer(self.device)

    # ---- pieces ------------------------------------------------------------------------------------------------------

    def render(self, nerf: LatentNeRF, background: BackgroundField, cameras: CameraBatch, size: int,
               num_samples: int, generator: torch.Generator | None, head: torch.nn.Module | None = None,
               occupancy: OccupancyGrid | None = None, shading: str | None = None,
               lights: torch.Tensor | None = None, normals: bool = False) -> dict:
        """Volume-render ``cameras`` at ``size``² → dict with ``image`` (B, C, H, W) upright, ``opacity``,
        ``points``/``density`` of the samples (for the Sketch-Shape loss). ``head`` maps 4 latent channels to RGB;
        ``occupancy`` skips empty space (:func:`volume_render`). An RGB field (space rgb) is shaded per sample with
        ``shading`` ("albedo" | "lambertian" | "textureless", :func:`backend.geometry.shading.shade`) under ``lights``
        (B, 3); with ``normals`` (or a lit shading) the density-gradient normals are computed and ``out["orient"]``
        is DreamFusion's orientation penalty per ray, Σ sg(wᵢ)·max(0, nᵢ·d)², (B, 1, H, W)."""
        rays_o, rays_d = get_rays(cameras, size, size)
        shader = None
        if nerf.config.feature_dim == 3:
            shader = self._rgb_shader(nerf, rays_d.reshape(-1, 3), lights, shading or "albedo", size * size, normals)
        out = volume_render(nerf, rays_o, rays_d, num_samples=num_samples, perturb=generator is not None,
                            generator=generator, background=torch.zeros(nerf.config.feature_dim, device=self.device),
                            occupancy=occupancy, shader=shader)
        if "shader_extra" in out:
            orient = (out["weights"].detach() * out["shader_extra"][..., 0]).sum(dim=-1)
            out["orient"] = orient[:, None]
        bg = background(rays_d.reshape(-1, 3)).reshape(*rays_d.shape[:3], -1).permute(0, 3, 1, 2)
        image, opacity = out["image"], out["opacity"]
        if head is not None:  # linear head on composited features: W·Σwᵢfᵢ + b·opacity = Σwᵢ·head(fᵢ)
            image = torch.einsum("oc,bchw->bohw", head.weight, image) + head.bias.view(1, -1, 1, 1) * opacity
            bg = head(bg.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        out["image"] = image + (1.0 - opacity) * bg
        return out

    @staticmethod
    def _rgb_shader(nerf: LatentNeRF, rays_d: torch.Tensor, lights: torch.Tensor | None, shading: str,
                    pixels: int, normals: bool):
        """The per-sample shader of an RGB field (:func:`volume_render`'s ``shader``): its features (in [0, 1], the
        field's sigmoid) are the albedo, shaded by DreamFusion's model; the extra is max(0, n·d)² (orientation) when
        normals are computed."""
        need_normals = normals or shading != "albedo"

        def shader(points, ray_ids, albedo):
            if not need_normals:
                return albedo, None
            n = density_normals(nerf.density, points)
            facing_away = (n * rays_d[ray_ids]).sum(dim=-1, keepdim=True).clamp(min=0.0) ** 2
            if shading == "albedo":
                return albedo, facing_away
            return shade(albedo, n, points, lights[torch.div(ray_ids, pixels, rounding_mode="floor")], shading), \
                facing_away

        return shader

    def make_background(self, config: LatentNeRFConfig) -> BackgroundField:
        mode = "learned" if config.background == "learned" else "constant"
        if config.space == "rgb":
            return BackgroundField(3, mode, torch.ones(3, device=self.device)).to(self.device)
        white = self.codec.encode_color((1.0, 1.0, 1.0), self.device)
        return BackgroundField(4, mode, white).to(self.device)

    def to_world(self, mesh: TriMesh, sketch: SketchShape | None) -> TriMesh:
        """Map a mesh from the NeRF frame back to the world frame (the sketch's place and size)."""
        if sketch is None:
            return mesh
        v = sketch.to_world(mesh.v_pos).astype(np.float32)
        return TriMesh(v, mesh.t_pos_idx, mesh.uv, mesh.uv_idx)

    def extract(self, nerf: LatentNeRF, resolution: int, face_budget: int = 0) -> TriMesh:
        """Marching cubes of the NeRF occupancy α = 1 − exp(−0.2 σ) at 0.5 (the Sketch-Shape loss's surface), cleaned;
        NeRF frame. The occupancy, not the raw density, is interpolated: a density that jumps from hundreds to 0 between
        two grid samples would put the linearly interpolated crossing at the outer sample, one cell outside."""
        grid = sample_grid(lambda x: 1.0 - torch.exp(-OCCUPANCY_DELTA * nerf.density(x)), resolution,
                           nerf.config.bound, device=self.device)
        mesh = marching_cubes(grid, 0.5, nerf.config.bound, inside="above")
        return clean_mesh(mesh, face_budget=face_budget or None)

    # ---- the run -----------------------------------------------------------------------------------------------------

    def __call__(self, config: LatentNeRFConfig, sds: Guidance, sketch: SketchShape | None = None,
                 context: JobContext | None = None, rgb_sds: Guidance | None = None) -> PipelineResult:
        """Optimise a Latent-NeRF for ``config.prompt`` (guided by ``sds``), optionally constrained by ``sketch``.

        Returns:
            :class:`PipelineResult` with one world-frame mesh with UVs, ``v_color`` (N, 3) in [0, 1] and ``texture``
            (S, S, 3) uint8 row 0 = top; ``extras['nerf']``, ``['background']``, ``['head']``.

        Raises:
            MeshError: the field has no surface at the end. JobCancelled: cancelled through ``context``.
        """
        context = context or JobContext(device=self.device, models=None)
        generator = torch.Generator(device=self.device).manual_seed(config.seed)

        # 1. Field, background, optimiser (hash grid at 10x the MLP's learning rate).
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(config.seed)
            nerf = LatentNeRF(NeRFConfig(encoding=config.encoding, hashgrid_impl=config.hashgrid_impl,
                                         feature_dim=3 if config.space == "rgb" else 4,
                                         feature_activation="sigmoid" if config.space == "rgb" else "none")
                              ).to(self.device)
            background = self.make_background(config)
        params = nerf.param_groups(config.lr) + [{"params": list(background.parameters()), "lr": config.lr}]
        optimizer = torch.optim.Adam([g for g in params if g["params"]], betas=(0.9, 0.99), eps=1e-15)
        run = _Run(config, nerf, background, optimizer, sds, generator, sketch, context,
                   {"render": 0.0, "guidance": 0.0, "backward": 0.0})
        preview_cam = preview_camera(self.device)
        if sketch is not None and config.sketch_init_iterations:
            self._fit_sketch(run)
        run.occupancy = self.make_occupancy(config, nerf, sketch)
        run.occupancy_generator = torch.Generator(device=self.device).manual_seed(config.seed + 1)

        # 2. Latent stage: SDS on rendered latents (+ Sketch-Shape loss, + opacity sparsity); space rgb: shaded RGB
        #    renders at refine_render_size through the VAE encoder (+ orientation loss).
        total_steps = config.iterations + config.refine_iterations
        rgb = config.space == "rgb"
        size = config.refine_render_size if rgb else config.render_size
        for step in range(1, config.iterations + 1):
            self._step(run, step, total_steps, "optimize", head=None, render_size=size)
            maybe_preview(step, config, lambda: self.render(nerf, background, preview_cam, size, config.num_samples,
                                                            None, occupancy=run.occupancy)["image"],
                          self.codec, context, decode_rgb=(lambda x: x.clamp(0, 1)) if rgb else None)
            self._maybe_partial(run, step)

        # 3. Optional RGB refinement: a linear 4→3 head initialised from the latent→RGB matrix, SDS through the encoder.
        head = None
        if config.refine_iterations:
            head = torch.nn.Linear(4, 3).to(self.device)
            with torch.no_grad():
                head.weight.copy_(torch.tensor(LATENT_RGB_FACTORS, device=self.device).T * 0.5)
                head.bias.fill_(0.5)
            optimizer.add_param_group({"params": list(head.parameters()), "lr": config.lr})
            run.sds = rgb_sds or sds
            for i in range(1, config.refine_iterations + 1):
                self._step(run, config.iterations + i, total_steps, "refine_rgb", head=head,
                           render_size=config.refine_render_size)

        # 4. Mesh: marching cubes → clean → bake (latent texture decoded by the VAE, or RGB) → world frame.
        context.progress("extract_mesh", total_steps, total_steps)
        t0 = time.perf_counter()
        with torch.no_grad():
            mesh = self.extract(nerf, config.mesh_resolution, config.face_budget)
            texture_rgb, uv, uv_idx = self._bake(nerf, mesh, config, head)
            v_color = self._vertex_colors(texture_rgb, mesh.t_pos_idx, uv, uv_idx, len(mesh.v_pos))
        run.timings["extract"] = time.perf_counter() - t0
        world = self.to_world(TriMesh(mesh.v_pos, mesh.t_pos_idx, uv, uv_idx), sketch)
        texture = to_uint8_image(bottom_up_to_top_down(texture_rgb, 1))
        metadata = {"pipeline": self.name, "prompt": config.prompt, "negative_prompt": config.negative_prompt,
                    "seed": config.seed, "model": config.model, "iterations": config.iterations,
                    "refine_iterations": config.refine_iterations, "space": config.space, "guidance": config.guidance,
                    "guidance_scale": config.guidance_scale,
                    "sketch": sketch is not None, "faces": int(len(world.t_pos_idx))}
        return PipelineResult(meshes=[ResultMesh(world, v_color=v_color, texture=texture)], metadata=metadata,
                              timings=run.timings, extras={"nerf": nerf, "background": background, "head": head})

    def make_occupancy(self, config: LatentNeRFConfig, nerf: LatentNeRF,
                       sketch: SketchShape | None) -> OccupancyGrid | None:
        """The occupancy grid of a run (nerfacc's update rule, :mod:`backend.latent_nerf.occupancy`), or None when
        ``config.occupancy_resolution`` is 0. Its step size is the render's longest sample spacing (box diagonal /
        samples), the conservative choice. With a sketch, the cells inside the sketch stay occupied: the Sketch-Shape
        loss must be able to raise the density there even where the field is still empty."""
        if not config.occupancy_resolution:
            return None
        bound = nerf.config.bound
        grid = OccupancyGrid(bound, config.occupancy_resolution, threshold=config.occupancy_threshold,
                             step_size=2.0 * math.sqrt(3.0) * bound / config.num_samples, device=self.device)
        if sketch is not None:
            grid.keep_occupied(sketch.query(grid.cell_centers())[0].to(self.device) > 0.5)
        return grid

    def _fit_sketch(self, run: _Run) -> None:
        """Shape initialisation: the NeRF occupancy fitted to the sketch's occupancy on points of the box, half uniform,
        half near the sketch surface (one grid cell of noise) (the Sketch-Shape cross-entropy WITHOUT the proximity weight, so the surface starts on the sketch's surface), with its
        own Adam at 10× the learning rate. SDS then starts from the blockout instead of a blob, and the weighted loss
        (σ_S) lets it move near the surface only. An addition to the paper, which starts from the blob and relies on
        the weighted loss during SDS alone: with few iterations that leaves the sketch barely followed, and the
        weighted loss alone leaves a band ~σ_S wide around the surface unconstrained (measured: the surface settled
        0.05–0.11 normalised units outside a thin sketch)."""
        nerf, sketch, config, generator, context = run.nerf, run.sketch, run.config, run.generator, run.context
        optimizer = torch.optim.Adam(nerf.param_groups(config.lr * 10), betas=(0.9, 0.99), eps=1e-15)
        bound = nerf.config.bound
        near_std = 2.0 * bound / (sketch.resolution - 1)  # one cell of the sketch's occupancy grid
        for step in range(1, config.sketch_init_iterations + 1):
            context.check_cancelled()
            n_near = config.sketch_init_points // 2
            uniform = (torch.rand((config.sketch_init_points - n_near, 3), generator=generator, device=self.device) * 2 - 1) * bound
            near = sketch.sample_near_surface(n_near, near_std, generator)
            points = torch.cat([uniform, near.clamp(-bound, bound)])
            loss = sketch_loss(points, nerf.density(points), sketch, sigma=None)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            context.progress("fit_sketch", step, config.sketch_init_iterations, {"shape": float(loss.detach())})

    def _step(self, run: _Run, step: int, total: int, stage: str, head: torch.nn.Module | None,
              render_size: int) -> None:
        """One optimisation step: render random cameras, SDS (+ Sketch-Shape and sparsity losses), Adam; reports
        progress. ``head``: the RGB head of the refinement stage (renders go through the VAE encoder), else None."""
        config, context, generator, sketch, timings = run.config, run.context, run.generator, run.sketch, run.timings
        context.check_cancelled()
        t0 = time.perf_counter()
        if run.occupancy is not None:  # steps count from 1, nerfacc's from 0: the first step updates
            run.occupancy.update(step - 1, run.nerf.density, run.occupancy_generator)
        cameras = sample_cameras(config.batch_size, generator, device=self.device, **config.camera_ranges())
        rgb_field = config.space == "rgb"
        shading, lights = None, None
        if rgb_field:  # DreamFusion: a shading and a point light near the camera per step
            shading = sample_shading(generator, config.albedo_probability, config.textureless_probability)
            lights = sample_point_lights(cameras.camera_positions, generator)
        out = self.render(run.nerf, run.background, cameras, render_size, config.num_samples, generator, head=head,
                          occupancy=run.occupancy, shading=shading, lights=lights,
                          normals=rgb_field and config.lambda_orient > 0)
        image = out["image"]
        if head is not None or rgb_field:  # RGB renders: SDS on their VAE encoding
            image = self.codec.encode(image.clamp(0, 1)).float()
        t1 = time.perf_counter()
        sds_out = run.sds(image, cameras, generator, step=step)
        losses = {"sds": float(sds_out.loss.detach()), **sds_out.losses}
        loss = sds_out.loss
        if sketch is not None and config.lambda_shape > 0:  # skipped samples count with density 0 (no gradient)
            shape = sketch_loss(out["points"], out["density"], sketch, config.sketch_sigma, reduction="sum")
            loss = loss + config.lambda_shape * shape
            losses["shape"] = float(shape.detach()) * config.lambda_shape
        if "orient" in out and config.lambda_orient > 0:
            orient = out["orient"].mean()
            loss = loss + config.lambda_orient * orient
            losses["orient"] = float(orient.detach())
        if config.lambda_opacity > 0:
            opacity_penalty = torch.sqrt(out["opacity"] ** 2 + 0.01).mean()
            loss = loss + config.lambda_opacity * opacity_penalty
            losses["opacity"] = float(opacity_penalty.detach())
        if config.lambda_sparsity > 0:
            o = out["opacity"].clamp(1e-5, 1 - 1e-5)
            entropy = (-o * torch.log2(o) - (1 - o) * torch.log2(1 - o)).mean()
            loss = loss + config.lambda_sparsity * entropy
        t2 = time.perf_counter()
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        t3 = time.perf_counter()
        timings["render"] += t1 - t0
        timings["guidance"] += t2 - t1
        timings["backward"] += t3 - t2
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"Latent-NeRF loss became {float(loss.detach())} at step {step}")
        context.progress(stage, step, total, {**losses, "t": float(sds_out.timesteps.float().mean())})

    def _maybe_partial(self, run: _Run, step: int) -> None:
        """Every ``partial_every`` steps, stream the surface so far (world frame) when someone listens."""
        config = run.config
        if not config.partial_every or step % config.partial_every or step == config.iterations:
            return
        if not run.context.wants_partial:
            return
        with torch.no_grad():
            try:
                mesh = self.to_world(self.extract(run.nerf, config.partial_resolution), run.sketch)
            except MeshError:  # no surface yet: nothing to show
                return
        run.context.partial(step, [ResultMesh(mesh)])

    def _bake(self, nerf, mesh, config, head) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """(3, S, S) RGB texture in [0, 1] (row 0 ↔ v ≈ 0) + UVs. Latent fields bake at S/8 and decode with the VAE."""
        if head is not None or config.space == "rgb":
            color = (lambda x: head(nerf(x)[1]).clamp(0, 1)) if head is not None else (lambda x: nerf(x)[1])
            uv, uv_idx, tex = bake_texture(mesh, color, config.texture_size, self.rasterizer)
            return torch.from_numpy(tex).permute(2, 0, 1).to(self.device), uv, uv_idx
        latent_size = max(64, config.texture_size // 8)  # coarser latent atlases lose whole charts
        uv, uv_idx, latent_tex = bake_texture(mesh, lambda x: nerf(x)[1], latent_size, self.rasterizer)
        rgb = self.codec.decode(torch.from_numpy(latent_tex).permute(2, 0, 1)[None].to(self.device))[0]
        if rgb.shape[-1] != config.texture_size:
            rgb = F.interpolate(rgb[None], size=(config.texture_size,) * 2, mode="bicubic", align_corners=False,
                                antialias=True)[0].clamp(0, 1)
        return rgb, uv, uv_idx

    @staticmethod
    def _vertex_colors(texture_rgb, t_pos_idx, uv, uv_idx, n_vertices) -> np.ndarray:
        """(N, 3) float32 per-vertex colour: the baked texture sampled at each vertex's (first) corner UV."""
        corner_v = t_pos_idx.reshape(-1)
        corner_uv = uv[uv_idx.reshape(-1)]
        first = np.zeros(n_vertices, dtype=np.int64)  # a vertex no face uses reads corner 0 (any colour will do)
        used, first_corner = np.unique(corner_v, return_index=True)
        first[used] = first_corner
        vertex_uv = torch.from_numpy(corner_uv[first]).to(texture_rgb.device)
        grid = (vertex_uv * 2.0 - 1.0).view(1, 1, -1, 2)  # grid_sample: x = u, y = v (row 0 ↔ v ≈ 0)
        colors = F.grid_sample(texture_rgb[None], grid, mode="bilinear", align_corners=False)[0, :, 0].T
        return colors.clamp(0, 1).cpu().numpy().astype(np.float32)


def run(config: LatentNeRFConfig, inputs: PipelineInputs, context: JobContext) -> PipelineResult:
    """Job entry point: the optional sketch ``inputs.meshes['sketch']``, the model from the cache, the guidance
    (SDS or VSD, :func:`~.sds_common.build_guidance`), then generate. VSD's adapter leaves the cached UNet when the run
    ends, however it ends; ``result.extras['guidance_state']`` holds what it learned (SDS: empty).

    Raises:
        MeshError (bad sketch), ModelNotFoundError, ParamError, JobCancelled.
    """
    sketch = None
    if "sketch" in inputs.meshes:
        context.progress("sketch", 0, config.iterations)
        sketch = SketchShape(inputs.meshes["sketch"], resolution=config.sketch_grid_resolution, device=context.device)
    context.progress("load_model", 0, config.iterations)
    sd = context.models.stable_diffusion(config.model, context.device)
    pipeline = LatentNeRFPipeline(sd.vae, sd.latent_scaling, context.device)
    with build_guidance(sd, config) as guidance:  # VSD's adapter leaves the cached UNet however the run ends
        result = pipeline(config, guidance, sketch, context)
        result.extras["guidance_state"] = guidance.state_dict()  # VSD: the trained LoRA + camera MLP (CPU tensors)
    return result
