"""What the score-distillation pipelines (Latent-Paint, Latent-NeRF) share: their common settings, building the
guidance (SDS or VSD, :func:`build_guidance`) from a Stable Diffusion model, the VAE codec and previews."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..geometry.cameras import CameraBatch, cameras_from_angles
from ..guidance.denoiser import StableDiffusionDenoiser
from ..guidance.sds import Guidance, ScoreDistillation, SDSConfig
from ..guidance.vsd import VariationalScoreDistillation, VSDConfig
from ..models.latent_rgb import latents_to_rgb_linear
from ..models.stable_diffusion import DEFAULT_SD_MODEL
from ..params import Config, ParamError, param
from .base import JobContext, to_uint8_image


@dataclass
class SDSPipelineConfig(Config):
    """Settings every score-distillation pipeline has (each pipeline's config extends this)."""

    prompt: str = param(doc="What to generate, e.g. 'a rusty metal barrel'.")
    negative_prompt: str = param("", doc="What to steer away from (the unconditional branch of CFG).")
    model: str = param(DEFAULT_SD_MODEL, doc="Stable Diffusion: Hugging Face id, local folder, .safetensors file, or 'tiny-random'.")
    seed: int = param(0, doc="Seed of init, cameras, timesteps and noise; same seed, same result.", low=0, high=2**63 - 1)
    iterations: int = param(5000, doc="Optimisation steps.", low=1, high=100_000)
    guidance_scale: float = param(100.0, doc="Classifier-free guidance scale of SDS.", low=0.0, high=1000.0)
    render_size: int = param(64, doc="Side of the latent renders fed to the UNet (64 = 512 px images).", low=16, high=128)
    batch_size: int = param(1, doc="Cameras per step.", low=1, high=16)
    view_dependent_prompts: bool = param(True, doc="Append ', front view' / ', side view' / ... per camera.")
    min_step_percent: float = param(0.02, doc="Smallest SDS timestep as a fraction of T.", low=0.0, high=1.0)
    max_step_percent: float = param(0.98, doc="Largest SDS timestep as a fraction of T.", low=0.0, high=1.0)
    weighting: str = param("sds", doc="SDS weight w(t).", choices=("sds", "sqrt_alpha", "uniform"))
    anneal_start: int = param(0, doc="Step after which t_max decays to anneal_max_step_percent (0 = never; "
                                     "ProlificDreamer: 5000).", low=0, high=1_000_000)
    anneal_max_step_percent: float = param(0.5, doc="Largest timestep once annealed, as a fraction of T "
                                                    "(ProlificDreamer: 0.5).", low=0.0, high=1.0)
    anneal_steps: int = param(0, doc="Steps over which t_max decays linearly (0 = at once, as ProlificDreamer).",
                              low=0, high=1_000_000)
    guidance: str = param("sds", doc="Score distillation: \"sds\" (DreamFusion / Latent-NeRF) or \"vsd\" "
                                     "(ProlificDreamer: a camera-conditioned LoRA of the UNet as the render's score).",
                          choices=("sds", "vsd"))
    vsd_guidance_scale: float = param(7.5, doc="Classifier-free guidance scale of the pretrained UNet under "
                                               "--guidance vsd (ProlificDreamer: 7.5).", low=0.0, high=1000.0)
    lora_rank: int = param(4, doc="VSD: rank of the LoRA on the UNet's attention projections.", low=1, high=256)
    lora_lr: float = param(1e-4, doc="VSD: AdamW learning rate of the LoRA and its camera MLP.", low=1e-7, high=1.0)
    lora_camera_condition: bool = param(True, doc="VSD: condition the LoRA on the camera (c2w through an MLP added "
                                                  "to the timestep embedding).")
    lora_guidance_scale: float = param(1.0, doc="VSD: classifier-free guidance scale of the LoRA (1 = conditional "
                                                "only).", low=0.0, high=100.0)
    save_adapter: bool = param(False, doc="VSD: keep the trained LoRA adapter with the job (vsd_adapter.safetensors; "
                                          "written beside the GLB by run --out and jobs --export).")
    radius_range: tuple[float, float] = param((1.0, 1.5), doc="Camera distance range (Latent-Paint: the mesh is "
                                              "normalised to radius 0.6; Latent-NeRF: the scene box is [-1, 1]³).",
                                              low=0.1, high=100.0)
    elevation_range: tuple[float, float] = param((-15.0, 45.0), doc="Camera elevation range, degrees.", low=-90.0, high=90.0)
    fovy_range: tuple[float, float] = param((40.0, 70.0), doc="Vertical field of view range, degrees.", low=1.0, high=179.0)
    preview_every: int = param(10, doc="Steps between linear-decoded previews (0 = never).", low=0, high=100_000)
    vae_preview_every: int = param(500, doc="Steps between VAE-decoded previews (0 = never).", low=0, high=100_000)

    def validate(self) -> None:
        if not self.prompt.strip():
            raise ParamError("prompt must not be empty")
        if not self.model.strip():
            raise ParamError("model must not be empty")
        if self.min_step_percent > self.max_step_percent:
            raise ParamError("min_step_percent must be <= max_step_percent")
        if self.anneal_start and self.min_step_percent > self.anneal_max_step_percent:
            raise ParamError("min_step_percent must be <= anneal_max_step_percent when anneal_start > 0")

    def camera_ranges(self) -> dict:
        """Keyword arguments of :func:`backend.geometry.cameras.sample_cameras` from this config."""
        return {"radius_range": self.radius_range, "elevation_range": self.elevation_range,
                "fovy_range": self.fovy_range}


def _schedule_fields(config: SDSPipelineConfig) -> dict:
    return {"min_step_percent": config.min_step_percent, "max_step_percent": config.max_step_percent,
            "weighting": config.weighting, "anneal_start": config.anneal_start,
            "anneal_max_step_percent": config.anneal_max_step_percent, "anneal_steps": config.anneal_steps}


def build_sds(sd, config: SDSPipelineConfig) -> ScoreDistillation:
    """SDS with a Stable Diffusion denoiser (view-dependent prompts, CFG ``guidance_scale``) configured from ``config``."""
    denoiser = StableDiffusionDenoiser(sd, config.prompt, config.negative_prompt, config.guidance_scale,
                                       config.view_dependent_prompts)
    return ScoreDistillation(sd.scheduler.alphas_cumprod, denoiser,
                             SDSConfig(guidance_scale=config.guidance_scale, **_schedule_fields(config)))


def build_vsd(sd, config: SDSPipelineConfig) -> VariationalScoreDistillation:
    """VSD on ``sd``'s UNet (ε_pretrained with CFG ``vsd_guidance_scale``, a LoRA seeded by ``config.seed``)."""
    denoiser = StableDiffusionDenoiser(sd, config.prompt, config.negative_prompt, config.vsd_guidance_scale,
                                       config.view_dependent_prompts)
    return VariationalScoreDistillation(sd, denoiser, VSDConfig(
        guidance_scale=config.vsd_guidance_scale, lora_rank=config.lora_rank, lora_lr=config.lora_lr,
        camera_condition=config.lora_camera_condition, lora_guidance_scale=config.lora_guidance_scale,
        seed=config.seed, **_schedule_fields(config)))


def build_guidance(sd, config: SDSPipelineConfig) -> Guidance:
    """The guidance ``config.guidance`` names: :func:`build_sds` (``"sds"``) or :func:`build_vsd` (``"vsd"``).

    Args:
        sd: :class:`backend.models.stable_diffusion.StableDiffusionComponents` (from the model cache).
        config: any :class:`SDSPipelineConfig` (its prompt, CFG, timestep/annealing and VSD fields).

    Returns:
        A :class:`backend.guidance.sds.Guidance`: call it as ``guidance(latents, cameras, generator, step=step)``
        every step. Use it as a context manager (``with build_guidance(sd, config) as guidance: ...``): VSD attaches
        a LoRA adapter to the cached UNet and removes it on leaving, even when the job fails or is cancelled.
    """
    if config.guidance == "vsd":
        return build_vsd(sd, config)
    return build_sds(sd, config)


ADAPTER_FILE = "vsd_adapter.safetensors"
"""The result file that holds VSD's trained adapter when ``save_adapter`` is set."""


def keep_guidance_state(guidance: Guidance, config: SDSPipelineConfig, result) -> None:
    """Record what the guidance learned in ``result`` (a :class:`~backend.pipelines.base.PipelineResult`) before the
    guidance closes: ``extras['guidance_state']`` (tensors, in-process) always, and under ``--guidance vsd
    --save-adapter`` the adapter file :data:`ADAPTER_FILE` in ``result.files`` (named in ``metadata['files']``)."""
    result.extras["guidance_state"] = guidance.state_dict()  # VSD: the trained LoRA + camera MLP (CPU tensors)
    if config.guidance == "vsd" and config.save_adapter:
        result.files[ADAPTER_FILE] = guidance.adapter_bytes()
        result.metadata["files"] = sorted(result.files)


class VaeCodec:
    """Stable Diffusion's VAE between RGB images in [0, 1] and *scaled* latents (× ``latent_scaling``)."""

    def __init__(self, vae, latent_scaling: float):
        self.vae = vae
        self.latent_scaling = latent_scaling

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @torch.no_grad()
    def encode_color(self, rgb: tuple[float, float, float], device: torch.device) -> torch.Tensor:
        """(4,) scaled latent of a flat colour (a render background), via one small VAE encode."""
        img = torch.tensor(rgb, device=device, dtype=self._dtype).view(1, 3, 1, 1).expand(1, 3, 64, 64)
        return self.encode(img).float().mean(dim=(0, 2, 3))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] → (B, 4, H/8, W/8) scaled latents (posterior mean); differentiable."""
        latents = self.vae.encode(images.to(self._dtype) * 2.0 - 1.0).latent_dist.mean
        return latents * self.latent_scaling

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 4, h, w) scaled latents → (B, 3, 8h, 8w) RGB float32 in [0, 1]."""
        images = self.vae.decode(latents.to(self._dtype) / self.latent_scaling).sample
        return ((images.float() + 1.0) * 0.5).clamp(0.0, 1.0)


def preview_camera(device: torch.device) -> CameraBatch:
    """The fixed three-quarter front view used for previews (elevation 15°, azimuth 30°, distance 1.3, fovy 50°)."""
    return cameras_from_angles(15.0, 30.0, 1.3, 50.0).to(device)


def maybe_preview(step: int, config: SDSPipelineConfig, render_latents: Callable[[], torch.Tensor], codec: VaeCodec,
                  context: JobContext, decode_rgb: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
    """Send a preview at the configured cadence (and at the last step).

    Args:
        render_latents: renders the preview camera → (1, 4, h, w) latents (or RGB when ``decode_rgb`` is given).
        decode_rgb: for pipelines whose renders are already RGB (RGB refinement): (1, 3, h, w) → itself.
    """
    vae_now = config.vae_preview_every and step % config.vae_preview_every == 0
    linear_now = config.preview_every and step % config.preview_every == 0
    if not (vae_now or linear_now or step == config.iterations):
        return
    with torch.no_grad():
        rendered = render_latents()
        if decode_rgb is not None:
            image, decoder = decode_rgb(rendered)[0], "linear"
        elif vae_now:
            image, decoder = codec.decode(rendered)[0], "vae"
        else:
            image, decoder = latents_to_rgb_linear(rendered)[0], "linear"
        if image.shape[-1] < 256:
            image = F.interpolate(image[None], scale_factor=max(1, 256 // image.shape[-1]), mode="nearest")[0]
    context.preview(step, to_uint8_image(image), decoder)
