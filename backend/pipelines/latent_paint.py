"""Latent-Paint: texture a given mesh from text by score distillation in Stable Diffusion's latent space.

After Metzer et al., "Latent-NeRF for Shape-Guided Generation of 3D Shapes and Textures" (CVPR 2023), §Latent-Paint:
the texture is a 4-channel SD latent image on the mesh's UV atlas (4×128×128); each step renders the mesh at 64×64
latent pixels from a random camera, SDS (:mod:`backend.guidance.sds`) gives ∂L/∂latents, and Adam (lr 1e-2) updates the
texture. The final texture is the VAE decode of the latent texture (128 → 1024 pixels). ``guidance="vsd"`` replaces SDS
by ProlificDreamer's variational score distillation (:mod:`backend.guidance.vsd`, CFG 7.5, a camera-conditioned LoRA
of the same UNet trained on the renders as they go); ``anneal_start`` lowers t_max late in the run (either guidance).

Frames: the mesh arrives in Blender world coordinates; it is centred and scaled to radius 0.6 for the cameras (the
result keeps the caller's vertices untouched). Textures: latent/RGB texture tensors follow the rasterizer convention
(row 0 ↔ v ≈ 0, bottom); result images have row 0 at the top (:mod:`backend.geometry.frames` converts, once).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..geometry.bake import dilate_texture
from ..geometry.cameras import CameraBatch, sample_cameras
from ..geometry.frames import bottom_up_to_top_down
from ..geometry.mesh import TriMesh, normalize_vertices, unwrap_uv, validate_mesh
from ..geometry.render import Rasterizer, make_rasterizer
from ..guidance.sds import Guidance
from ..params import param
from .base import JobContext, PipelineInputs, PipelineResult, ResultMesh, to_uint8_image
from .sds_common import SDSPipelineConfig, VaeCodec, build_guidance, maybe_preview, preview_camera


@dataclass
class LatentPaintConfig(SDSPipelineConfig):
    """Settings of one Latent-Paint run (defaults from the paper and its official code)."""

    lr: float = param(1e-2, doc="Adam learning rate of the latent texture.", low=1e-6, high=10.0)
    latent_texture_size: int = param(128, doc="Side of the 4-channel latent texture (texels).", low=16, high=512)
    texture_size: int = param(1024, doc="Side of the final RGB texture in pixels (VAE decode, resized if != 8x latent).", low=64, high=8192)


class LatentPaintPipeline:
    """Latent-Paint on one mesh.

    Args:
        vae: ``diffusers.AutoencoderKL`` of the SD model (final decode, background latent, VAE previews).
        latent_scaling: SD latent scale (0.18215 for SD 1.x/2.x).
        rasterizer: nvdiffrast on CUDA or the torch rasterizer (:func:`backend.geometry.render.make_rasterizer`).
        device: where optimisation runs.
    """

    name = "latent_paint"
    config_class = LatentPaintConfig

    def __init__(self, vae, latent_scaling: float, rasterizer: Rasterizer, device: torch.device):
        self.codec = VaeCodec(vae, latent_scaling)
        self.rasterizer = rasterizer
        self.device = torch.device(device)

    # ---- pieces, each usable on its own (tests, benchmarks) -------------------------------------------------------

    def prepare_mesh(self, mesh: TriMesh) -> tuple[TriMesh, str]:
        """Validate the mesh and make sure it has UVs (xatlas when it has none). Returns ``(mesh, uv_source)``."""
        mesh = validate_mesh(mesh)
        if mesh.has_uv:
            return mesh, "input"
        uv, uv_idx = unwrap_uv(mesh.v_pos, mesh.t_pos_idx)
        return TriMesh(mesh.v_pos, mesh.t_pos_idx, uv, uv_idx), "xatlas"

    def mesh_tensors(self, mesh: TriMesh) -> dict[str, torch.Tensor]:
        """Normalised tensors for rendering: ``v_pos_h`` (N, 4) homogeneous, ``tri``, ``uv``, ``uv_idx`` on device."""
        v_norm, _, _ = normalize_vertices(mesh.v_pos)
        v = torch.from_numpy(v_norm).to(self.device)
        return {"v_pos_h": torch.cat([v, torch.ones_like(v[:, :1])], dim=1),
                "tri": torch.from_numpy(mesh.t_pos_idx).to(self.device),
                "uv": torch.from_numpy(mesh.uv).to(self.device),
                "uv_idx": torch.from_numpy(mesh.uv_idx).to(self.device)}

    def render(self, texture: torch.Tensor, tensors: dict[str, torch.Tensor], cameras: CameraBatch,
               resolution: int, background: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Render the textured mesh.

        Args:
            texture: (1, C, Ht, Wt) texture (latent or RGB), row 0 ↔ v ≈ 0.
            tensors: from :meth:`mesh_tensors`.
            cameras: B cameras.
            resolution: output side in pixels.
            background: (C,) colour of empty pixels.

        Returns:
            ``image`` (B, C, H, W) upright (row 0 = top), differentiable wrt ``texture``; ``mask`` (B, 1, H, W) float.
        """
        pos_clip = torch.einsum("vi,bji->bvj", tensors["v_pos_h"], cameras.mvp.to(self.device))
        rast_out = self.rasterizer.rasterize(pos_clip.contiguous(), tensors["tri"], (resolution, resolution))
        uv = self.rasterizer.interpolate(tensors["uv"], rast_out, tensors["uv_idx"])
        tex = texture.permute(0, 2, 3, 1).expand(len(cameras), -1, -1, -1).contiguous()
        feat = self.rasterizer.texture(tex, uv, filter_mode="linear")
        mask = (rast_out[..., 3:] > 0).float()
        image = feat * mask + background.view(1, 1, 1, -1) * (1.0 - mask)
        # rasterizer rows start at the bottom (NDC y = −1); images for the UNet are upright.
        return (bottom_up_to_top_down(image, 1).permute(0, 3, 1, 2),
                bottom_up_to_top_down(mask, 1).permute(0, 3, 1, 2))

    def encode_color(self, rgb: tuple[float, float, float]) -> torch.Tensor:
        """(4,) scaled SD latent of a flat colour (the render background)."""
        return self.codec.encode_color(rgb, self.device)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 4, h, w) scaled latents → (B, 3, 8h, 8w) RGB float32 in [0, 1] with the VAE."""
        return self.codec.decode(latents)

    def uv_coverage(self, tensors: dict[str, torch.Tensor], size: int) -> torch.Tensor:
        """(size, size) bool mask of texels covered by the UV atlas (row 0 ↔ v ≈ 0), by rasterizing in UV space."""
        uv = tensors["uv"]
        pos = torch.cat([uv * 2.0 - 1.0, torch.zeros_like(uv[:, :1]), torch.ones_like(uv[:, :1])], dim=1)
        rast = self.rasterizer.rasterize(pos[None].contiguous(), tensors["uv_idx"], (size, size))
        return rast[0, :, :, 3] > 0

    # ---- the run ----------------------------------------------------------------------------------------------------

    def __call__(self, mesh: TriMesh, config: LatentPaintConfig, sds: Guidance,
                 context: JobContext | None = None, initial_texture: torch.Tensor | None = None) -> PipelineResult:
        """Optimise a latent texture for ``mesh`` with ``sds``.

        Args:
            mesh: world-space triangle mesh (UVs optional; xatlas unwraps when missing).
            config: run settings (seed, iterations, sizes, cameras…).
            sds: the guidance: SDS with a Stable Diffusion or an oracle denoiser, or VSD
                (:func:`backend.pipelines.sds_common.build_guidance`); called with the 1-based step for annealing.
            context: progress/preview/cancel hooks; a silent one is used when None.
            initial_texture: (1, 4, S, S) latent texture to start from (default: seeded N(0, 0.5²) around the
                background latent).

        Returns:
            :class:`PipelineResult` with one mesh: the caller's vertices and face order with UVs, and its ``texture``
            (texture_size, texture_size, 3) uint8, row 0 = top; metadata incl. ``uv_source``; timings;
            ``extras['latent_texture']`` (1, 4, S, S).

        Raises:
            MeshError: unusable mesh. JobCancelled: cancelled through ``context``.
        """
        context = context or JobContext(device=self.device, models=None)
        timings = {"render": 0.0, "guidance": 0.0, "backward": 0.0}
        t_setup = time.perf_counter()

        # 1. Mesh: validate, unwrap if needed, normalise for the cameras.
        mesh, uv_source = self.prepare_mesh(mesh)
        tensors = self.mesh_tensors(mesh)

        # 2. Seeded randomness: one generator for init, cameras, timesteps and noise.
        generator = torch.Generator(device=self.device).manual_seed(config.seed)
        background = self.encode_color((1.0, 1.0, 1.0))
        size = config.latent_texture_size
        if initial_texture is None:
            noise = torch.randn((1, 4, size, size), generator=generator, device=self.device)
            initial_texture = background.view(1, 4, 1, 1) + 0.5 * noise
        texture = torch.nn.Parameter(initial_texture.detach().clone().float().to(self.device))
        optimizer = torch.optim.Adam([texture], lr=config.lr, eps=1e-15 if self.device.type == "cuda" else 1e-8)
        preview_cam = preview_camera(self.device)
        timings["setup"] = time.perf_counter() - t_setup

        # 3. Optimisation loop: render → SDS → Adam.
        for step in range(1, config.iterations + 1):
            context.check_cancelled()
            t0 = time.perf_counter()
            cameras = sample_cameras(config.batch_size, generator, device=self.device, **config.camera_ranges())
            latents, _ = self.render(texture, tensors, cameras, config.render_size, background)
            t1 = time.perf_counter()
            out = sds(latents, cameras, generator, step=step)
            t2 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            t3 = time.perf_counter()
            timings["render"] += t1 - t0
            timings["guidance"] += t2 - t1
            timings["backward"] += t3 - t2
            loss = float(out.loss.detach())
            if not math.isfinite(loss):
                raise FloatingPointError(f"SDS loss became {loss} at step {step}")
            context.progress("optimize", step, config.iterations, {"sds": loss, **out.losses, "grad_norm": out.grad_norm,
                                                                    "t": float(out.timesteps.float().mean())})
            maybe_preview(step, config, lambda: self.render(texture, tensors, preview_cam, config.render_size, background)[0],
                          self.codec, context)

        # 4. Final texture: fill the chart gutters, VAE decode, resize, flip to image row order.
        t_dec = time.perf_counter()
        context.progress("decode", config.iterations, config.iterations)
        with torch.no_grad():
            coverage = self.uv_coverage(tensors, size)
            latent_tex = dilate_texture(texture.detach()[0].permute(1, 2, 0), coverage, iterations=max(2, size // 16))
            latent_tex = latent_tex.permute(2, 0, 1)[None]
            rgb = self.decode_latents(latent_tex)
            if rgb.shape[-1] != config.texture_size:
                rgb = F.interpolate(rgb, size=(config.texture_size, config.texture_size), mode="bicubic",
                                    align_corners=False, antialias=True).clamp(0, 1)
        timings["decode"] = time.perf_counter() - t_dec
        texture_img = to_uint8_image(bottom_up_to_top_down(rgb[0], 1))
        metadata = {"pipeline": self.name, "prompt": config.prompt, "negative_prompt": config.negative_prompt,
                    "seed": config.seed, "model": config.model, "iterations": config.iterations,
                    "guidance": config.guidance, "guidance_scale": config.guidance_scale,
                    "texture_size": config.texture_size,
                    "uv_source": uv_source}
        return PipelineResult(meshes=[ResultMesh(mesh, texture=texture_img)], metadata=metadata, timings=timings,
                              extras={"latent_texture": texture.detach()})


def run(config: LatentPaintConfig, inputs: PipelineInputs, context: JobContext) -> PipelineResult:
    """Job entry point: load (or reuse) the model, build the guidance (SDS or VSD), run Latent-Paint on
    ``inputs.meshes['mesh']``; VSD's adapter leaves the cached UNet when the run ends, however it ends.
    ``result.extras['guidance_state']``: the guidance's learned state (VSD: the LoRA adapter and camera MLP as CPU
    tensors, e.g. for ``safetensors.torch.save_file``; SDS: empty).

    Raises:
        MeshError, ModelNotFoundError, ParamError, JobCancelled.
    """
    context.progress("load_model", 0, config.iterations)
    sd = context.models.stable_diffusion(config.model, context.device)
    pipeline = LatentPaintPipeline(sd.vae, sd.latent_scaling, make_rasterizer(context.device), context.device)
    with build_guidance(sd, config) as guidance:
        result = pipeline(inputs.meshes["mesh"], config, guidance, context)
        result.extras["guidance_state"] = guidance.state_dict()  # VSD: the trained LoRA + camera MLP (CPU tensors)
    return result
