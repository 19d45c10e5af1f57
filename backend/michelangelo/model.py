"""Loading a complete Michelangelo model (shape VAE + ASLDM denoiser + CLIP conditioner) for the shape pipelines.

:func:`load_michelangelo` resolves one model string to a :class:`MichelangeloBundle`:

- ``"tiny-random"``: the ``tiny`` preset with seeded random weights, built in-process (no file, no network); its
  denoiser takes text or image context (the tiny CLIP towers have equal widths). Tests and CPU smoke runs.
- ``"text-ASLDM-256"``, ``"image-ASLDM-256"``, ``"shapevae-256"``: the public checkpoints by name, read from the
  Hugging Face cache (repository :data:`PUBLIC_REPO`, files :data:`PUBLIC_FILES`); fetched only with
  ``allow_download`` (``python -m backend download text-ASLDM-256``).
- a path to a public ``.ckpt`` file (Zhao et al. 2023's Lightning checkpoints; the preset is detected from its keys,
  :func:`.checkpoint.build_public_models`).
- a folder written by our training (``python -m backend train shape_vae|shape_ldm``, :func:`.checkpoint.save_checkpoint`).

CLIP (ViT-L/14, ``openai/clip-vit-large-patch14``, as the public code) comes from the Hugging Face cache too, through
open_clip when it imports and has the weights cached, else through transformers' ``CLIPModel``. Nothing downloads
unless ``allow_download``; nothing is loaded at import.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..models.devices import default_dtype, resolve_device
from ..models.base import TINY_RANDOM, ModelNotFoundError
from .asldm import ASLDMDenoiser
from .conditioner import CLIPConditioner
from .checkpoint import CheckpointError, build_public_models, is_our_checkpoint, load_checkpoint
from .config import MichelangeloConfig, get_preset
from .sampling import ddim_scheduler
from .shape_vae import ShapeVAE

log = logging.getLogger(__name__)

__all__ = ["PUBLIC_REPO", "PUBLIC_FILES", "DEFAULT_TEXT_MODEL", "DEFAULT_IMAGE_MODEL", "MichelangeloBundle",
           "load_michelangelo", "build_tiny_random", "download_public_checkpoint", "public_checkpoint_path"]

PUBLIC_REPO = "Maikou/Michelangelo"
"""Hugging Face repository of the public checkpoints (linked from github.com/NeuralCarver/Michelangelo)."""
PUBLIC_FILES = {
    "shapevae-256": "checkpoints/aligned_shape_latents/shapevae-256.ckpt",
    "image-ASLDM-256": "checkpoints/image_cond_diffuser_asl/image-ASLDM-256.ckpt",
    "text-ASLDM-256": "checkpoints/text_cond_diffuser_asl/text-ASLDM-256.ckpt",
}
"""Public model name -> file in :data:`PUBLIC_REPO` (the paths of the public inference scripts)."""
DEFAULT_TEXT_MODEL = "text-ASLDM-256"
DEFAULT_IMAGE_MODEL = "image-ASLDM-256"


@dataclass
class MichelangeloBundle:
    """Everything the shape pipelines need from one model.

    Attributes:
        config: the architecture and the diffusion/extraction settings (``bounds``, ``z_scale_factor``, β schedule).
        vae: :class:`~.shape_vae.ShapeVAE` in eval mode, no gradients.
        denoiser: :class:`~.asldm.ASLDMDenoiser` or ``None`` (a VAE-only model: shapevae-256, or a ``train shape_vae``
            folder).
        conditioner: :class:`~.conditioner.CLIPConditioner`, or ``None`` when there is no denoiser.
        conditions: the context kinds the denoiser accepts, ``("text",)``, ``("image",)`` or both (tiny-random);
            empty without a denoiser.
        model_id: what was asked for (recorded in job metadata).
        device: where the weights are; ``dtype``: the VAE/denoiser weight dtype.
    """

    config: MichelangeloConfig
    vae: ShapeVAE
    denoiser: ASLDMDenoiser | None
    conditioner: CLIPConditioner | None
    conditions: tuple[str, ...]
    model_id: str
    device: torch.device
    dtype: torch.dtype

    def scheduler_config(self) -> dict:
        """The ``DDIMScheduler`` settings (diffusers ``config`` dict) of this model."""
        return dict(ddim_scheduler(self.config).config)

    def make_scheduler(self):
        """A fresh ``diffusers.DDIMScheduler`` (schedulers are stateful: one per job)."""
        return ddim_scheduler(self.config)


def build_tiny_random(seed: int = 0) -> tuple[MichelangeloConfig, ShapeVAE, ASLDMDenoiser, CLIPConditioner]:
    """The ``tiny`` preset with random weights: a pure function of ``seed``; the global RNG state is left untouched."""
    config = get_preset("tiny")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = ShapeVAE(config.vae)
        denoiser = ASLDMDenoiser(config.denoiser)
    conditioner = CLIPConditioner.tiny_random(seed, config.clip)
    return config, vae, denoiser, conditioner


def public_checkpoint_path(name: str, allow_download: bool = False) -> Path:
    """The local file of public checkpoint ``name`` (a key of :data:`PUBLIC_FILES`) in the Hugging Face cache.

    Raises:
        ModelNotFoundError: not cached (and downloading not allowed, or it failed); the message says how to get it.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        return Path(hf_hub_download(PUBLIC_REPO, PUBLIC_FILES[name], local_files_only=not allow_download))
    except Exception as err:  # LocalEntryNotFoundError, network errors, …
        first = str(err).splitlines()[0] if str(err) else ""
        raise ModelNotFoundError(
            f"Michelangelo checkpoint {name!r} ({PUBLIC_REPO}/{PUBLIC_FILES[name]}) is not on this machine (looked in "
            f"the Hugging Face cache {HF_HUB_CACHE}). Download it once with `python -m backend download {name}`, or "
            f"pass the path of the .ckpt file as the model. ({type(err).__name__}: {first})") from err


def download_public_checkpoint(name: str) -> Path:
    """Fetch public checkpoint ``name`` and the CLIP ViT-L/14 it needs into the Hugging Face cache (the only function
    here that downloads). Returns the checkpoint's local path."""
    path = public_checkpoint_path(name, allow_download=True)
    if name != "shapevae-256":
        CLIPConditioner.from_pretrained(get_preset(name).clip.model_id, "transformers", "cpu", allow_download=True)
    return path


def _conditioner(config: MichelangeloConfig, device: torch.device, allow_download: bool) -> CLIPConditioner:
    """CLIP for ``config.clip``: open_clip when it imports and has its weights cached, else transformers from the cache,
    else (``allow_download``) transformers downloaded — never two copies of the weights."""
    clip_dtype = default_dtype(device)
    if config.clip.model_id == TINY_RANDOM:
        return CLIPConditioner.from_config(config.clip, device, torch.float32)

    def with_backend(backend: str):
        return replace(config.clip, backend=backend)

    try:
        import open_clip  # noqa: F401  (imports torchvision; absent on CPU-only installs)
    except Exception:  # ImportError, or torchvision failing inside open_clip's import
        pass
    else:
        try:
            return CLIPConditioner.from_config(with_backend("open_clip"), device, clip_dtype, allow_download=False)
        except (ImportError, ModelNotFoundError) as err:
            log.info("open_clip CLIP not usable here (%s); using transformers", err)
    try:
        return CLIPConditioner.from_config(with_backend("transformers"), device, clip_dtype, allow_download=False)
    except ModelNotFoundError:
        if not allow_download:
            raise
        return CLIPConditioner.from_config(with_backend("transformers"), device, clip_dtype, allow_download=True)


def load_michelangelo(model: str, device: str | torch.device = "auto", dtype: torch.dtype | None = None,
                      allow_download: bool = False) -> MichelangeloBundle:
    """Load a Michelangelo model for generation.

    Args:
        model: ``"tiny-random"``, a public model name (``"text-ASLDM-256"``, ``"image-ASLDM-256"``,
            ``"shapevae-256"``), a path to a public ``.ckpt``, or a folder written by ``python -m backend train``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, …
        dtype: VAE/denoiser weight dtype; default float32 (the public inference runs in fp32, and the occupancy
            level set is sensitive to precision). CLIP runs in fp16 on CUDA, fp32 on CPU.
        allow_download: fetch a named public checkpoint / CLIP from the Hub when missing from the cache.

    Returns:
        :class:`MichelangeloBundle` on ``device``, modules in eval mode with ``requires_grad=False``.

    Raises:
        ModelNotFoundError: an unknown name, a missing path, an uncached public checkpoint or CLIP, or a file/folder
            that is not a Michelangelo checkpoint (the message says which and what to do).
        ValueError: empty model string; a CUDA device without CUDA.
    """

    if not isinstance(model, str) or not model.strip():
        raise ValueError("model must be a non-empty string ('tiny-random', 'text-ASLDM-256', a .ckpt or a folder)")
    model = model.strip()
    device = resolve_device(device)
    dtype = dtype or torch.float32
    conditions: tuple[str, ...] | None = None

    if model == TINY_RANDOM:
        config, vae, denoiser, conditioner = build_tiny_random(0)
        conditions = ("text", "image")  # equal tiny CLIP widths: the tiny denoiser takes either context
        vae, denoiser = vae.to(device, dtype), denoiser.to(device, dtype)
        conditioner = conditioner.to(device, torch.float32)
    else:
        path = Path(model).expanduser()
        try:
            if model in PUBLIC_FILES:
                config, vae, denoiser, _ = build_public_models(public_checkpoint_path(model, allow_download),
                                                               model, device, dtype)
            elif path.is_file():
                config, vae, denoiser, _ = build_public_models(path, None, device, dtype)
            elif path.is_dir():
                if not is_our_checkpoint(path):
                    raise ModelNotFoundError(f"folder {str(path)!r} is not a Michelangelo model: it has no config.json "
                                             f"written by `python -m backend train`")
                loaded = load_checkpoint(path, device, dtype)
                if loaded.vae is None:
                    raise ModelNotFoundError(f"{str(path)!r} has no shape VAE (vae.safetensors); train shape_vae first")
                config, vae, denoiser = loaded.config, loaded.vae, loaded.denoiser
            elif model.startswith((".", "/", "~")) or "\\" in model or path.suffix:
                raise ModelNotFoundError(f"Michelangelo model path {model!r} does not exist")
            else:
                known = ", ".join([TINY_RANDOM, *PUBLIC_FILES])
                raise ModelNotFoundError(f"unknown Michelangelo model {model!r}: expected one of {known}, the path "
                                         f"of a public .ckpt file, or a folder written by `python -m backend train`")
        except CheckpointError as err:
            raise ModelNotFoundError(f"could not load {model!r} as a Michelangelo model: {err}") from err
        conditioner = _conditioner(config, device, allow_download) if denoiser is not None else None
    for module in (vae, denoiser):
        if module is not None:
            module.eval().requires_grad_(False)
    if conditions is None:
        conditions = (config.condition,) if denoiser is not None else ()
    return MichelangeloBundle(config=config, vae=vae, denoiser=denoiser, conditioner=conditioner,
                              conditions=conditions, model_id=model, device=device, dtype=dtype)
