"""Loading model components: the one place where weights come from.

Pipelines take components as arguments; this module builds them from

- a Hugging Face model id (read from the local Hugging Face cache; downloaded only when ``allow_download=True``,
  e.g. by ``python -m backend download <id>``),
- a local diffusers folder (``model_index.json`` + ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``),
- a local single-file checkpoint (``.safetensors`` / ``.ckpt``, as shared by most SD fine-tunes),
- ``tiny-random``: the real diffusers/transformers classes at a few thousand parameters, seeded, built in-process with
  no file or network access (tests and CPU smoke runs),
- ``random-sd15``: the full Stable Diffusion 1.5 architecture with random weights (benchmarks of step time).

Nothing here runs at import; constructors of pipelines never load weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .devices import check_fits, default_dtype, resolve_device, weight_bytes
from .base import TINY_RANDOM, ModelNotFoundError
from .tokenizers import byte_level_clip_tokenizer

log = logging.getLogger(__name__)

DEFAULT_SD_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
RANDOM_SD15 = "random-sd15"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
SD_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class StableDiffusionComponents:
    """The parts of a Stable Diffusion 1.x/2.x model that score distillation needs.

    Attributes:
        unet: ``diffusers.UNet2DConditionModel`` predicting ε (or v, see ``scheduler.config.prediction_type``).
        vae: ``diffusers.AutoencoderKL``; ``latent_scaling`` multiplies its posterior sample (0.18215 for SD 1.x/2.x).
        text_encoder: ``transformers.CLIPTextModel``; its ``last_hidden_state`` (B, 77, D) conditions the UNet.
        tokenizer: ``transformers.CLIPTokenizer``.
        scheduler: ``diffusers.DDPMScheduler`` carrying the training noise schedule (``alphas_cumprod``).
        model_id: what the user asked for (HF id, path, or preset name); recorded in job metadata.
        device, dtype: where the weights live; fp16 on CUDA, fp32 on CPU.
    """

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    model_id: str
    device: torch.device
    dtype: torch.dtype

    @property
    def latent_scaling(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (8 for SD)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def _sd_scheduler():
    from diffusers import DDPMScheduler

    # Stable Diffusion 1.x/2.x training schedule (β 0.00085–0.012, scaled linear, 1000 steps).
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, steps_offset=1)


def build_random_stable_diffusion(arch: str = TINY_RANDOM, seed: int = 0) -> StableDiffusionComponents:
    """Stable Diffusion components with random weights, built from configs with the real classes (no files, no network).

    Args:
        arch: ``"tiny-random"`` (a few thousand parameters per part; runs at 64×64 on a CPU in milliseconds) or
            ``"random-sd15"`` (the full SD 1.5 architecture: UNet 860M, VAE 84M, CLIP ViT-L/14 text encoder 123M).
        seed: weights are a pure function of ``(arch, seed)``; the global RNG state is left untouched.

    Raises:
        ValueError: unknown ``arch``.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if arch == TINY_RANDOM:
        unet_cfg = dict(sample_size=64, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                        cross_attention_dim=16, attention_head_dim=4)
        vae_cfg = dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
                       mid_block_add_attention=False)
        text_cfg = dict(vocab_size=1000, bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                        num_attention_heads=2, projection_dim=16)
    elif arch == RANDOM_SD15:
        # Architecture facts of runwayml/stable-diffusion-v1-5 (unet/vae/text_encoder config.json).
        unet_cfg = dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                        norm_num_groups=32, cross_attention_dim=768, attention_head_dim=8,
                        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
        vae_cfg = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
                       sample_size=512)
        text_cfg = dict(vocab_size=49408, bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu")
    else:
        raise ValueError(f"unknown random architecture {arch!r}; expected {TINY_RANDOM!r} or {RANDOM_SD15!r}")

    n_blocks = len(vae_cfg["block_out_channels"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, **unet_cfg)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * n_blocks,
                            up_block_types=("UpDecoderBlock2D",) * n_blocks, **vae_cfg)
        text_encoder = CLIPTextModel(CLIPTextConfig(max_position_embeddings=77, **text_cfg))
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    return StableDiffusionComponents(unet=unet, vae=vae, text_encoder=text_encoder,
                                     tokenizer=byte_level_clip_tokenizer(), scheduler=_sd_scheduler(),
                                     model_id=arch, device=torch.device("cpu"), dtype=torch.float32)


def _not_found(model: str, err: Exception) -> ModelNotFoundError:
    from huggingface_hub.constants import HF_HUB_CACHE

    return ModelNotFoundError(
        f"Stable Diffusion model {model!r} is not on this machine (looked in the Hugging Face cache {HF_HUB_CACHE}). "
        f"Download it once with `python -m backend download {model}` (needs internet and, for gated models, "
        f"`huggingface-cli login`), or pass a local diffusers folder or a .safetensors checkpoint as the model. "
        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    )


def load_stable_diffusion(model: str = DEFAULT_SD_MODEL, device: str | torch.device = "auto",
                          dtype: torch.dtype | None = None, allow_download: bool = False,
                          low_vram: bool = False) -> StableDiffusionComponents:
    """Load Stable Diffusion components for score distillation.

    Args:
        model: a Hugging Face id (``"stable-diffusion-v1-5/stable-diffusion-v1-5"``), a local diffusers folder, a local
            ``.safetensors``/``.ckpt`` single file, ``"tiny-random"`` or ``"random-sd15"``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``…
        dtype: weight dtype; default fp16 on CUDA, fp32 on CPU.
        allow_download: fetch from the Hub when missing from the cache; otherwise never touch the network.
        low_vram: trade speed for accelerator memory (``--low-vram``), see :func:`apply_low_vram`.

    Returns:
        Components on ``device`` in eval mode with ``requires_grad=False`` (the text encoder on the CPU in fp32 under
        ``low_vram``).

    Raises:
        ModelNotFoundError: the id/path cannot be resolved locally; the message names it and says how to get it.
        ValueError: empty model string or a CUDA device on a machine without CUDA.
    """
    if not isinstance(model, str) or not model.strip():
        raise ValueError("model must be a non-empty string (a Hugging Face id, a local path, or 'tiny-random')")
    model = model.strip()
    device = resolve_device(device)
    dtype = dtype or default_dtype(device)

    if model in (TINY_RANDOM, RANDOM_SD15):
        comps = build_random_stable_diffusion(model)
    else:
        path = Path(model).expanduser()
        if path.suffix.lower() in SINGLE_FILE_SUFFIXES or path.exists():
            comps = _load_local(path, model, allow_download)
        elif model.startswith((".", "/", "~")) or "\\" in model:
            raise ModelNotFoundError(f"model path {model!r} does not exist")
        else:
            comps = _load_hub(model, allow_download)
    modules = (comps.unet, comps.vae) if low_vram else (comps.unet, comps.vae, comps.text_encoder)
    what = "UNet + VAE" if low_vram else "UNet + VAE + text encoder"
    check_fits(device, weight_bytes(modules, dtype), f"model {model!r} ({what})")
    for module in modules:
        module.to(device) if next(module.parameters()).dtype == dtype else module.to(device=device, dtype=dtype)
    comps.device, comps.dtype = device, dtype
    if low_vram:
        apply_low_vram(comps)
    return comps


def apply_low_vram(comps: StableDiffusionComponents) -> None:
    """Switch ``comps`` to the low-memory mode of ``--low-vram`` (in place), with diffusers' own switches.

    - UNet: sliced attention (``set_attention_slice("auto")``: the attention of the heads is computed in two halves,
      so the (B·heads, HW, HW) score tensor of the 64² level is never whole at once).
    - VAE: sliced (one image at a time) and tiled (512² tiles with blended seams) encode/decode, and gradient
      checkpointing, so SDS through the VAE encoder (RGB renders) keeps activations of one block at a time.
    - Text encoder: kept on the CPU in fp32; prompts are encoded once per job there and the embeddings moved to the
      device (:meth:`backend.guidance.denoiser.StableDiffusionDenoiser.encode_prompt` follows the encoder's device).

    Results do not change beyond floating-point rounding; steps get slower (measure: ``benchmarks/bench_pipelines.py
    --low-vram``).
    """
    comps.unet.set_attention_slice("auto")
    comps.vae.enable_slicing()
    comps.vae.enable_tiling()
    comps.vae.enable_gradient_checkpointing()
    comps.text_encoder.to(device="cpu", dtype=torch.float32)


def _from_pipeline(pipe, model: str) -> StableDiffusionComponents:
    comps = StableDiffusionComponents(unet=pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder,
                                      tokenizer=pipe.tokenizer, scheduler=None, model_id=model,
                                      device=torch.device("cpu"), dtype=torch.float32)
    from diffusers import DDPMScheduler

    comps.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    for module in (comps.unet, comps.vae, comps.text_encoder):
        module.eval().requires_grad_(False)
    return comps


def _load_local(path: Path, model: str, allow_download: bool) -> StableDiffusionComponents:
    from diffusers import StableDiffusionPipeline

    if not path.exists():
        raise ModelNotFoundError(f"model file {str(path)!r} does not exist")
    try:
        if path.is_file():
            if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
                raise ModelNotFoundError(f"{str(path)!r} is a file but not a .safetensors/.ckpt checkpoint")
            # Single-file checkpoints need the architecture config; diffusers takes it from its cached default repo.
            pipe = StableDiffusionPipeline.from_single_file(str(path), local_files_only=not allow_download,
                                                            safety_checker=None)
        else:
            missing = [s for s in SD_SUBFOLDERS if not (path / s).is_dir()]
            if missing:
                raise ModelNotFoundError(f"{str(path)!r} is not a diffusers Stable Diffusion folder: missing {missing}")
            pipe = StableDiffusionPipeline.from_pretrained(str(path), safety_checker=None, requires_safety_checker=False,
                                                           local_files_only=True)
    except ModelNotFoundError:
        raise
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(f"could not load {str(path)!r} as Stable Diffusion: {err}") from err
    return _from_pipeline(pipe, model)


def _load_hub(model: str, allow_download: bool) -> StableDiffusionComponents:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    kw = dict(local_files_only=not allow_download)
    try:
        comps = StableDiffusionComponents(
            unet=UNet2DConditionModel.from_pretrained(model, subfolder="unet", **kw),
            vae=AutoencoderKL.from_pretrained(model, subfolder="vae", **kw),
            text_encoder=CLIPTextModel.from_pretrained(model, subfolder="text_encoder", **kw),
            tokenizer=CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", **kw),
            scheduler=DDPMScheduler.from_pretrained(model, subfolder="scheduler", **kw),
            model_id=model, device=torch.device("cpu"), dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise _not_found(model, err) from err
    for module in (comps.unet, comps.vae, comps.text_encoder):
        module.eval().requires_grad_(False)
    return comps


def download_stable_diffusion(model: str = DEFAULT_SD_MODEL) -> Path:
    """Fetch the diffusers-format files SDS needs into the Hugging Face cache (the only place that downloads).

    Returns:
        The local snapshot folder.
    """
    from huggingface_hub import snapshot_download

    patterns = [f"{s}/*.json" for s in SD_SUBFOLDERS] + ["tokenizer/*.txt", "model_index.json"]
    patterns += [f"{s}/diffusion_pytorch_model.safetensors" for s in ("unet", "vae")]
    patterns += ["text_encoder/model.safetensors"]
    return Path(snapshot_download(model, allow_patterns=patterns))


