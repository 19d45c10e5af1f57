"""Dream Fields: text to a textured mesh by optimising a NeRF so that CLIP sees the prompt in its renders.

After Jain et al., "Zero-Shot Text-Guided Object Generation with Dream Fields" (CVPR 2022): a radiance field
(density + RGB) is volume-rendered from a random camera around the scene, composited on random backgrounds and
augmented (random crops), and scored by CLIP against the prompt's text embedding; the loss

    L = −cos(CLIP_image(augment(render)), CLIP_text(prompt)) − λ_T · min(τ, mean transmittance)

adds the paper's transmittance loss, which rewards transparent pixels up to a target transmittance τ so the object
stays sparse instead of filling the frame. τ is annealed (the official configuration): the target opacity 1 − τ
decays exponentially from 0.6 to 0.12 over the first 500 steps (τ: 0.4 → 0.88), and scales with the object's apparent
area for cameras closer or more zoomed in than the default ones (:func:`effective_tau`). Other choices from the
official code: the scene box [-1, 1]³, cameras at distance 4 and elevation 30° looking at the tracked scene origin (an exponential
moving average, decay 0.999, of the density-weighted centre of the samples), focal length × 1.2 of NeRF's Blender
cameras (fovy 33.4°), 8 augmented crops of 80/88 of the render per view, transmittance weight 0.5, a learning rate
warmed up exponentially from a tenth of its value over 1500 steps, Adam ε = 1e-5, 10 000 steps. The backgrounds are
:mod:`backend.guidance.augment`'s (solid / Gaussian noise / checkerboard; Dream Fields draw Gaussian noise,
checkerboards and blurred random Fourier textures). CLIP defaults to OpenAI's ViT-B/32 (the official configuration
scores with ViT-B/16, selectable with ``model``).

The field is this project's NeRF (:mod:`backend.latent_nerf`: the fast hash grid, the occupancy grid that skips empty
space, stratified volume rendering) with 3 sigmoid colour channels instead of Latent-NeRF's 4 latent channels — in
place of the paper's mip-NeRF MLP; so the learning rate defaults to the hash-grid field's (Latent-NeRF's 1e-3, ×10
for the grid) rather than the MLP's 1e-4. The mesh is extracted as Latent-NeRF's (marching cubes of the occupancy
1 − exp(−0.2 σ) at 0.5, cleaned) with vertex colours and a baked texture sampled from the field.

Frames: the NeRF frame is Blender's world frame (Z up, metres); the object lands in the box [-1, 1]³ around the
origin, about a metre or two across.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..geometry.bake import bake_texture, vertex_colors
from ..geometry.cameras import CameraBatch, cameras_from_angles, sample_cameras
from ..geometry.extract import clean_mesh, marching_cubes, sample_grid
from ..geometry.frames import bottom_up_to_top_down
from ..geometry.mesh import TriMesh
from ..geometry.render import make_rasterizer
from ..guidance.augment import BACKGROUNDS, ViewAugmentConfig, ViewAugmenter, augment_config_of
from ..guidance.clip import CLIPEmbedder, CLIPGuidance, ReferenceViews
from ..latent_nerf.field import LatentNeRF, NeRFConfig
from ..latent_nerf.occupancy import OccupancyGrid
from ..latent_nerf.sketch import OCCUPANCY_DELTA
from ..latent_nerf.volume import get_rays, volume_render
from ..models.clip import DEFAULT_CLIP_MODEL, load_clip
from ..params import Config, ParamError, param
from .base import JobContext, PipelineInputs, PipelineResult, ResultMesh, to_uint8_image

ORIGIN_DECAY = 0.999
"""Decay of the exponential moving average of the scene origin (Dream Fields' ``scene.EMA(decay=0.999)``)."""


@dataclass
class DreamFieldsConfig(Config):
    """Settings of one Dream Fields run (defaults: the paper's official configuration where the field allows)."""

    prompt: str = param(doc="What to generate, e.g. 'a bouquet of flowers in a glass vase'.")
    model: str = param(DEFAULT_CLIP_MODEL, doc="CLIP model: an open_clip '<arch>/<tag>' (OpenAI's ViT-B/32 by "
                                                 "default), a Hugging Face id, a local folder, or 'tiny-random'.")
    seed: int = param(0, doc="Seed of init, cameras, backgrounds and augmentations; same seed, same result.",
                      low=0, high=2**63 - 1)
    iterations: int = param(10_000, doc="Optimisation steps (Dream Fields: 10 000).", low=1, high=100_000)
    batch_size: int = param(1, doc="Cameras per step (Dream Fields: one view per step).", low=1, high=16)
    render_size: int = param(88, doc="Side of the volume renders in pixels, before the crops (Dream Fields' low "
                                     "quality: 88).", low=16, high=512)
    num_samples: int = param(192, doc="Samples per ray in volume rendering (Dream Fields: 192).", low=8, high=1024)
    lr: float = param(1e-3, doc="Adam learning rate of the MLP (x10 for the hash grid) after the warm-up.",
                      low=1e-7, high=1.0)
    lr_warmup_iterations: int = param(1500, doc="Steps over which the learning rate grows exponentially from a tenth "
                                                "of lr to lr (Dream Fields: 1500; 0 = none).", low=0, high=100_000)
    lambda_transmittance: float = param(0.5, doc="Weight λ_T of the transmittance loss −min(τ, mean transmittance) "
                                                 "(Dream Fields: 0.5; 0 = off).", low=0.0, high=100.0)
    transmittance_start: float = param(0.4, doc="Target transmittance τ at the first step (Dream Fields: 0.4).",
                                       low=0.0, high=0.999)
    transmittance_target: float = param(0.88, doc="Target transmittance τ after the annealing (Dream Fields: 0.88).",
                                        low=0.0, high=0.999)
    transmittance_anneal_iterations: int = param(500, doc="Steps over which 1 − τ decays exponentially from its start "
                                                          "to its target value (Dream Fields: 500; 0 = the target "
                                                          "from the first step).", low=0, high=100_000)
    background: str = param("mixed", doc="Background behind the renders CLIP scores: mixed (solid / Gaussian noise / "
                                         "checkerboard per image), or one kind for every image.", choices=BACKGROUNDS)
    num_augmentations: int = param(8, doc="Augmented copies of each render scored by CLIP (Dream Fields: 8 per "
                                                "accelerator).",
                                   low=1, high=32)
    crop_scale: tuple[float, float] = param((0.8264, 0.8264), doc="Random resized crop: range of the kept area as a "
                                            "fraction of the render (Dream Fields: (80/88)²).", low=0.05, high=1.0)
    perspective: float = param(0.0, doc="Random perspective warp: distortion scale (0 = none, as Dream Fields).",
                               low=0.0, high=1.0)
    perspective_probability: float = param(0.5, doc="Probability of the perspective warp per image.",
                                           low=0.0, high=1.0)
    radius_range: tuple[float, float] = param((4.0, 4.0), doc="Camera distance range (Dream Fields: 4; the scene box "
                                              "is [-1, 1]³).", low=0.5, high=100.0)
    elevation_range: tuple[float, float] = param((30.0, 30.0), doc="Camera elevation range, degrees (Dream Fields: "
                                                 "30).", low=-90.0, high=90.0)
    fovy_range: tuple[float, float] = param((33.4, 33.4), doc="Vertical field of view range, degrees (Dream Fields: "
                                            "NeRF's Blender cameras with the focal length x 1.2).", low=1.0,
                                            high=179.0)
    track_origin: bool = param(True, doc="Cameras look at the tracked scene origin (moving average of the density's "
                                         "centre, Dream Fields) instead of the box centre.")
    blob_density: float = param(10.0, doc="Peak of the Gaussian density blob at the origin that the field starts "
                                          "from (0 = none).", low=0.0, high=100.0)
    occupancy_resolution: int = param(64, doc="Cells per axis of the occupancy grid that skips empty space while "
                                              "training (0 = off).", low=0, high=256)
    mesh_resolution: int = param(256, doc="Marching-cubes grid of the final mesh.", low=32, high=512)
    face_budget: int = param(0, doc="Decimate the final mesh to at most this many triangles (0 = keep all).",
                             low=0, high=10_000_000)
    texture_size: int = param(1024, doc="Side of the baked RGB texture in pixels.", low=64, high=8192)
    preview_every: int = param(100, doc="Steps between preview renders (0 = only the last step).",
                               low=0, high=100_000)

    def validate(self) -> None:
        """Cross-field rules: a non-blank prompt and model, ranges with min <= max. Raises ParamError."""
        if not self.prompt.strip():
            raise ParamError("prompt must not be empty")
        if not self.model.strip():
            raise ParamError("model must not be empty")
        if self.radius_range[0] <= math.sqrt(3.0):
            raise ParamError(f"radius_range = {self.radius_range}: cameras must stay outside the scene box [-1, 1]³ "
                             f"(distance > √3 ≈ 1.73)")

    def augment_config(self) -> ViewAugmentConfig:
        """The backgrounds and augmentations of this run (:class:`backend.guidance.augment.ViewAugmentConfig`)."""
        return augment_config_of(self)

    def nerf_config(self) -> NeRFConfig:
        """The field: the project's hash-grid NeRF over [-1, 1]³ with 3 sigmoid colour channels (an RGB head)."""
        return NeRFConfig(feature_dim=3, feature_activation="sigmoid", bound=1.0, blob_density=self.blob_density)


def transmittance_schedule(step: int, start: float, target: float, iterations: int) -> float:
    """Dream Fields' target transmittance τ at ``step`` (0-based).

    The target opacity 1 − τ is annealed exponentially (``schedule.anneal_exponentially`` of the official code):
    ``1 − τ(s) = exp((1 − t) log(1 − start) + t log(1 − target))`` with ``t = min(s / iterations, 1)``; so τ goes from
    ``start`` at step 0 to ``target`` at ``iterations`` and stays there (``iterations`` = 0: ``target`` throughout).

    Args:
        step: >= 0. start, target: transmittances in [0, 1). iterations: >= 0.

    Raises:
        ValueError: a value out of range.
    """
    if step < 0 or iterations < 0 or not (0.0 <= start < 1.0 and 0.0 <= target < 1.0):
        raise ValueError(f"need step >= 0, iterations >= 0 and start, target in [0, 1), got step={step}, "
                         f"start={start}, target={target}, iterations={iterations}")
    t = 1.0 if iterations == 0 else min(step / iterations, 1.0)
    return 1.0 - math.exp((1.0 - t) * math.log(1.0 - start) + t * math.log(1.0 - target))


REFERENCE_TAN_HALF_FOVY = 0.3
"""tan(fovy / 2) of Dream Fields' training cameras: NeRF's Blender cameras (focal 1111.1 px for 800 px) with the focal
length × 1.2 → 400 / 1333.3 = 0.3 (fovy ≈ 33.4°)."""
REFERENCE_DISTANCE = 4.0
"""Camera distance of Dream Fields' training cameras (scene units)."""


def effective_tau(tau: float, cameras: CameraBatch) -> float:
    """The target transmittance for ``cameras``: the target opacity 1 − τ scaled by the object's apparent area
    relative to Dream Fields' cameras (the official code's ``focal_mult² / (radius / 4)²`` factor — its extra 1 / 1.2
    is folded into τ's defaults here), averaged over the batch, capped at opacity 1.

    ``scale = mean((0.3 / tan(fovy / 2))² · (4 / camera_distances)²)``, ``τ_eff = 1 − min(1, scale · (1 − τ))``: 1 at
    the default cameras, 4× the opacity at half the distance.
    """
    tan_half = torch.tan(torch.deg2rad(cameras.fovy.detach().double().cpu()) / 2.0)
    distance = cameras.camera_distances.detach().double().cpu()
    scale = float(((REFERENCE_TAN_HALF_FOVY / tan_half) ** 2 * (REFERENCE_DISTANCE / distance) ** 2).mean())
    return 1.0 - min(1.0, scale * (1.0 - tau))


def lr_factor(step: int, warmup_iterations: int, start_factor: float = 0.1) -> float:
    """Learning-rate multiplier at ``step`` (0-based): exponential warm-up from ``start_factor`` to 1 over
    ``warmup_iterations`` steps, then 1 (Dream Fields' ``lr_fn`` with lr0 = lr1 / 10 and lr2 = lr1)."""
    if warmup_iterations <= 0 or step >= warmup_iterations:
        return 1.0
    return math.exp((1.0 - step / warmup_iterations) * math.log(start_factor))


def transmittance_loss(opacity: torch.Tensor, tau: float) -> tuple[torch.Tensor, float]:
    """Dream Fields' transmittance loss ``−min(τ, mean(1 − opacity))`` (without its weight λ_T).

    Args:
        opacity: (B, 1, H, W) rendered opacity (1 − transmittance) in [0, 1].
        tau: target transmittance in [0, 1].

    Returns:
        The scalar loss (differentiable; zero gradient once the mean transmittance exceeds τ) and the mean
        transmittance as a float.
    """
    transmittance = 1.0 - opacity.mean()
    return -torch.clamp(transmittance, max=tau), float(transmittance.detach())


@dataclass
class _Run:
    """What one run's steps share: the field, its optimiser (with each group's base learning rate), the guidance,
    the seeded generators, the occupancy grid, the tracked scene origin (3,), the hooks and the timing sums."""

    config: DreamFieldsConfig
    nerf: LatentNeRF
    optimizer: torch.optim.Optimizer
    base_lrs: list[float]
    guidance: CLIPGuidance
    generator: torch.Generator
    context: JobContext
    timings: dict[str, float]
    origin: torch.Tensor
    occupancy: OccupancyGrid | None = None
    occupancy_generator: torch.Generator | None = None


class DreamFieldsPipeline:
    """Dream Fields generation with any :class:`~backend.guidance.clip.CLIPEmbedder`.

    Args:
        embedder: the CLIP model (its ``image_size`` sets the augmented crops' size).
        device: where optimisation runs.
    """

    name = "dream_fields"
    config_class = DreamFieldsConfig

    def __init__(self, embedder: CLIPEmbedder, device: torch.device):
        self.embedder = embedder
        self.device = torch.device(device)
        self.rasterizer = make_rasterizer(self.device)

    # ---- pieces ------------------------------------------------------------------------------------------------------

    def render(self, nerf: LatentNeRF, cameras: CameraBatch, size: int, num_samples: int,
               generator: torch.Generator | None, occupancy: OccupancyGrid | None = None) -> dict:
        """Volume-render ``cameras`` at ``size``² → :func:`~backend.latent_nerf.volume.volume_render`'s dict plus
        ``rgb`` (B, 3, H, W): the straight (not premultiplied) colour ``Σ wᵢ cᵢ / opacity``, upright, in [0, 1]
        where the opacity is not ~0 — what the augmenter composites over its backgrounds with ``opacity``."""
        rays_o, rays_d = get_rays(cameras, size, size)
        out = volume_render(nerf, rays_o, rays_d, num_samples=num_samples, perturb=generator is not None,
                            generator=generator, occupancy=occupancy)
        # Premultiplied C = Σ wᵢ cᵢ <= opacity; composite(C / α, α, bg) = C + (1 − α) bg, exactly the volume render.
        out["rgb"] = out["image"] / out["opacity"].clamp_min(1e-6)
        return out

    def preview_cameras(self, config: DreamFieldsConfig, origin: torch.Tensor) -> CameraBatch:
        """The preview view: azimuth 45°, the middle of the elevation / distance / fovy ranges, at the origin."""
        mid = [sum(r) / 2.0 for r in (config.elevation_range, config.radius_range, config.fovy_range)]
        return cameras_from_angles(mid[0], 45.0, mid[1], mid[2], target=origin.cpu()).to(self.device)

    def extract(self, nerf: LatentNeRF, resolution: int, face_budget: int = 0) -> TriMesh:
        """Marching cubes of the occupancy α = 1 − exp(−0.2 σ) at 0.5 (Latent-NeRF's surface rule), cleaned; NeRF
        frame = world frame. Raises MeshError when the field has no surface."""
        grid = sample_grid(lambda x: 1.0 - torch.exp(-OCCUPANCY_DELTA * nerf.density(x)), resolution,
                           nerf.config.bound, device=self.device)
        mesh = marching_cubes(grid, 0.5, nerf.config.bound, inside="above")
        return clean_mesh(mesh, face_budget=face_budget or None)

    # ---- the run -----------------------------------------------------------------------------------------------------

    def __call__(self, config: DreamFieldsConfig, target: torch.Tensor | ReferenceViews,
                 context: JobContext | None = None, nerf_config: NeRFConfig | None = None,
                 extract_mesh: bool = True) -> PipelineResult:
        """Optimise a Dream Field toward ``target`` and extract its mesh.

        Args:
            config: the settings.
            target: the prompt's CLIP text embedding (D,), or a :class:`~backend.guidance.clip.ReferenceViews`
                (tests: a reference object rendered from the same cameras).
            context: progress / preview / cancellation hooks (None = none).
            nerf_config: the field's architecture (None = ``config.nerf_config()``; tests pass a smaller one). Its
                features must be 3 sigmoid channels.
            extract_mesh: False skips the mesh (tests of the optimisation alone): ``meshes`` is then empty.

        Returns:
            :class:`PipelineResult` with one world-frame mesh with UVs, ``v_color`` (N, 3) linear RGB in [0, 1] and
            ``texture`` (S, S, 3) uint8 row 0 = top; ``extras['nerf']``, ``['origin']`` (3,), ``['history']``
            (per step: ``score``, ``transmittance``, ``tau``).

        Raises:
            ValueError: a field config without 3 sigmoid channels. MeshError: no surface at the end.
            FloatingPointError: the loss diverged. JobCancelled: cancelled through ``context``.
        """
        context = context or JobContext(device=self.device, models=None)
        nerf_config = nerf_config or config.nerf_config()
        if nerf_config.feature_dim != 3 or nerf_config.feature_activation != "sigmoid":
            raise ValueError("Dream Fields need an RGB field: feature_dim=3, feature_activation='sigmoid'")
        generator = torch.Generator(device=self.device).manual_seed(config.seed)

        # 1. Field, optimiser (hash grid at 10x the MLP's rate; Adam ε = 1e-5 as Dream Fields), guidance.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(config.seed)
            nerf = LatentNeRF(nerf_config).to(self.device)
        groups = [g for g in nerf.param_groups(config.lr) if g["params"]]
        optimizer = torch.optim.Adam(groups, betas=(0.9, 0.999), eps=1e-5)
        guidance = CLIPGuidance(self.embedder, target, ViewAugmenter(config.augment_config(),
                                                                     self.embedder.image_size))
        run = _Run(config, nerf, optimizer, [g["lr"] for g in optimizer.param_groups], guidance, generator, context,
                   {"render": 0.0, "guidance": 0.0, "backward": 0.0}, torch.zeros(3, device=self.device))
        if config.occupancy_resolution:
            run.occupancy = OccupancyGrid(nerf.config.bound, config.occupancy_resolution,
                                          step_size=2.0 * math.sqrt(3.0) * nerf.config.bound / config.num_samples,
                                          device=self.device)
            run.occupancy_generator = torch.Generator(device=self.device).manual_seed(config.seed + 1)

        # 2. Optimise: CLIP loss on augmented renders + transmittance loss; previews.
        history: list[dict[str, float]] = []
        for step in range(1, config.iterations + 1):
            history.append(self._step(run, step))
            if step == config.iterations or (config.preview_every and step % config.preview_every == 0):
                self._preview(run, step)

        # 3. Mesh: marching cubes → clean → UVs + baked texture and vertex colours from the field.
        extras = {"nerf": nerf, "origin": run.origin.detach().cpu(), "history": history}
        metadata = {"pipeline": self.name, "prompt": config.prompt, "seed": config.seed, "model": config.model,
                    "iterations": config.iterations}
        if not extract_mesh:
            return PipelineResult(meshes=[], metadata=metadata, timings=run.timings, extras=extras)
        context.progress("extract_mesh", config.iterations, config.iterations)
        t0 = time.perf_counter()
        with torch.no_grad():
            mesh = self.extract(nerf, config.mesh_resolution, config.face_budget)
            uv, uv_idx, texture = bake_texture(mesh, lambda x: nerf(x)[1], config.texture_size, self.rasterizer)
            mesh = TriMesh(mesh.v_pos, mesh.t_pos_idx, uv, uv_idx)
            v_color = vertex_colors(mesh, lambda x: nerf(x)[1])
        run.timings["extract"] = time.perf_counter() - t0
        texture = to_uint8_image(bottom_up_to_top_down(torch.from_numpy(texture).permute(2, 0, 1), 1))
        metadata["faces"] = int(len(mesh.t_pos_idx))
        return PipelineResult(meshes=[ResultMesh(mesh, v_color=v_color, texture=texture)], metadata=metadata,
                              timings=run.timings, extras=extras)

    def _cameras(self, run: _Run) -> CameraBatch:
        """This step's random cameras (uniform azimuth, the config's ranges) looking at the tracked origin."""
        config = run.config
        cams = sample_cameras(config.batch_size, run.generator, radius_range=config.radius_range,
                              elevation_range=config.elevation_range, fovy_range=config.fovy_range)
        if not config.track_origin:
            return cams.to(self.device)
        return cameras_from_angles(cams.elevation, cams.azimuth, cams.camera_distances, cams.fovy,
                                   target=run.origin.cpu()).to(self.device)

    def _step(self, run: _Run, step: int) -> dict[str, float]:
        """One optimisation step; reports progress (``score``: the mean CLIP cosine, = −CLIP loss; ``transmittance``:
        the renders' mean transmittance; ``tau``: its target for this step's cameras) and returns those values."""
        config, context, timings = run.config, run.context, run.timings
        context.check_cancelled()
        t0 = time.perf_counter()
        for group, base in zip(run.optimizer.param_groups, run.base_lrs):
            group["lr"] = base * lr_factor(step - 1, config.lr_warmup_iterations)
        if run.occupancy is not None:  # steps count from 1, nerfacc's from 0: the first step updates
            run.occupancy.update(step - 1, run.nerf.density, run.occupancy_generator)
        cameras = self._cameras(run)
        out = self.render(run.nerf, cameras, config.render_size, config.num_samples, run.generator, run.occupancy)
        t1 = time.perf_counter()
        clip = run.guidance(out["rgb"], out["opacity"], cameras, run.generator)
        tau = effective_tau(transmittance_schedule(step - 1, config.transmittance_start, config.transmittance_target,
                                                   config.transmittance_anneal_iterations), cameras)
        sparsity, transmittance = transmittance_loss(out["opacity"], tau)
        loss = clip.loss + config.lambda_transmittance * sparsity
        t2 = time.perf_counter()
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"Dream Fields loss became {float(loss.detach())} at step {step}")
        run.optimizer.step()
        t3 = time.perf_counter()
        if config.track_origin:
            z_vals = out["z_vals"].detach()  # rays that miss the box have all their samples at one point: left out
            hit = (z_vals[..., -1] > z_vals[..., 0]).reshape(-1, 1).expand(-1, z_vals.shape[-1]).reshape(-1)
            self._update_origin(run, out["points"].detach(), out["density"].detach() * hit)
        timings["render"] += t1 - t0
        timings["guidance"] += t2 - t1
        timings["backward"] += t3 - t2
        values = {"score": clip.score, "transmittance": transmittance, "tau": tau}
        context.progress("optimize", step, config.iterations, values)
        return values

    @staticmethod
    def _update_origin(run: _Run, points: torch.Tensor, density: torch.Tensor) -> None:
        """Dream Fields' scene origin: EMA (decay 0.999) of the density-weighted mean of this step's samples
        ``points`` (N, 3), NeRF frame, with ``density`` (N,) (0 for samples that do not count)."""
        total = density.sum()
        if float(total) > 0 and bool(torch.isfinite(total)):
            centre = (points * density[:, None]).sum(0) / total
            run.origin = run.origin * ORIGIN_DECAY + centre * (1.0 - ORIGIN_DECAY)

    def _preview(self, run: _Run, step: int) -> None:
        """Stream the preview view's RGB render on white (at least 256 px across)."""
        config = run.config
        with torch.no_grad():
            out = self.render(run.nerf, self.preview_cameras(config, run.origin), config.render_size,
                              config.num_samples, None, run.occupancy)
            image = (out["image"] + (1.0 - out["opacity"]))[0]  # premultiplied colour over white
            if image.shape[-1] < 256:
                image = F.interpolate(image[None], scale_factor=math.ceil(256 / image.shape[-1]), mode="nearest")[0]
        run.context.preview(step, to_uint8_image(image), "linear")


def run(config: DreamFieldsConfig, inputs: PipelineInputs, context: JobContext) -> PipelineResult:
    """Job entry point: the CLIP model from the cache, the prompt's text embedding, then generate.

    Raises:
        ModelNotFoundError, ParamError, MeshError (no surface), JobCancelled.
    """
    context.progress("load_model", 0, config.iterations)
    embedder = context.models.get(load_clip, config.model, context.device)
    with torch.no_grad():
        target = embedder.encode_texts([config.prompt])[0].float()
    return DreamFieldsPipeline(embedder, context.device)(config, target, context)
