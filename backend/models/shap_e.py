"""Loading Shap-E (Jun & Nichol, "Shap-E: Generating Conditional 3D Implicit Functions", 2023) through diffusers, and
reading its implicit function.

Shap-E's latent diffusion model (diffusers ``PriorTransformer``, 24 layers, width 1024) samples a (1024, 1024) latent by
Heun's method (Karras et al. 2022 sigmas) with classifier-free guidance, conditioned on the CLIP ViT-L/14 text
embedding of a prompt (``diffusers.ShapEPipeline``, ``openai/shap-e``) or on the 256 CLIP ViT-L/14 patch tokens of an
image (``diffusers.ShapEImg2ImgPipeline``, ``openai/shap-e-img2img``). The latent is the set of weights of an MLP (the
"STF" implicit function: a signed distance and an RGB colour at every point of [-1, 1]³); ``diffusers.ShapERenderer``
projects it to those weights (``params_proj``) and evaluates the MLP (``mlp``). :func:`stf_fields` turns one latent into
plain ``fn(points)`` callables so the mesh is extracted with the project's own marching cubes
(:mod:`backend.geometry.extract`).

:func:`load_shap_e` resolves one model string to a :class:`ShapEBundle`:

- ``"openai/shap-e"`` (text) / ``"openai/shap-e-img2img"`` (image): Hugging Face ids, read from the local cache;
  fetched only with ``allow_download`` (``python -m backend download openai/shap-e``, :func:`download_shap_e`);
- a local diffusers folder (``model_index.json`` naming ``ShapEPipeline`` or ``ShapEImg2ImgPipeline``);
- ``"tiny-random"``: both pipelines at a few thousand parameters, built from configs with the real classes
  (``PriorTransformer``, ``ShapERenderer``, ``CLIPTextModelWithProjection`` with the project's byte-level tokenizer,
  ``CLIPVisionModel`` with the PIL image processor, ``HeunDiscreteScheduler`` with Shap-E's settings), seeded, no
  file or network access (tests, CPU smoke runs);
- ``"random-shap-e"``: both pipelines at the public architecture (configs of ``openai/shap-e`` and
  ``openai/shap-e-img2img``) with random weights (benchmarks of step time, no download).

Not in diffusers: Shap-E's encoder (the "transmitter" that turns a mesh's point cloud and renders into a latent), so a
given mesh cannot be encoded; see :mod:`backend.pipelines.shap_e`.

Nothing here runs at import; nothing downloads unless asked.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .base import TINY_RANDOM, ModelNotFoundError
from .devices import check_fits, default_dtype, resolve_device, weight_bytes
from .tokenizers import byte_level_clip_tokenizer

log = logging.getLogger(__name__)

__all__ = ["TEXT_MODEL", "IMAGE_MODEL", "RANDOM_SHAP_E", "SHAP_E_MODELS", "SHAP_E_BOUNDS", "ShapEBundle",
           "load_shap_e", "build_random_shap_e", "download_shap_e", "stf_fields"]

TEXT_MODEL = "openai/shap-e"
"""Hugging Face id of the text-conditional model (diffusers ``ShapEPipeline``)."""
IMAGE_MODEL = "openai/shap-e-img2img"
"""Hugging Face id of the image-conditional model (diffusers ``ShapEImg2ImgPipeline``)."""
SHAP_E_MODELS = (TEXT_MODEL, IMAGE_MODEL)
"""The public ids ``python -m backend download`` knows."""
RANDOM_SHAP_E = "random-shap-e"
"""Model name of the full public architecture with random weights (benchmarks)."""
SHAP_E_BOUNDS = 1.0
"""Half side of the cube [-1, 1]³ the STF function lives in (``ShapERenderer.volume``, a ``BoundingBoxVolume``);
training shapes are normalised to a largest side of 1 around the origin, so shapes span about [-0.5, 0.5]."""

_PIPELINE_CLASSES = {"ShapEPipeline": "text", "ShapEImg2ImgPipeline": "image"}

# Shap-E's sampler: diffusers' HeunDiscreteScheduler with the settings of the public scheduler config (the Karras et al.
# sigmas of Shap-E's `sample_latents(..., use_karras=True)`, exponential β schedule over 1024 steps, x0 prediction).
SCHEDULER_CONFIG = dict(beta_schedule="exp", num_train_timesteps=1024, prediction_type="sample", use_karras_sigmas=True,
                        clip_sample=True, clip_sample_range=1.0)

# Architecture facts of the public checkpoints: prior/config.json of openai/shap-e and openai/shap-e-img2img (the same
# but for the image prior's 8 heads of 128, its 1024-wide LayerNormed input), scheduler_config.json (above), the
# ShapERenderer defaults; the CLIP towers are ViT-L/14 (text: 768 wide, projected to 768; image: 1024 wide, 256 patch
# tokens, as the image prior's embedding_proj_dim and the paper say).
_PRIOR_FULL = dict(num_attention_heads=16, attention_head_dim=64, num_layers=24, embedding_dim=1024,
                   num_embeddings=1024, additional_embeddings=0, time_embed_act_fn="gelu", norm_in_type="layer",
                   encoder_hid_proj_type=None, added_emb_type=None, time_embed_dim=4096, clip_embed_dim=2048)
_IMAGE_PRIOR_FULL = dict(_PRIOR_FULL, num_attention_heads=8, attention_head_dim=128)  # openai/shap-e-img2img
_PRIOR_TINY = dict(num_attention_heads=2, attention_head_dim=8, num_layers=1, embedding_dim=16, num_embeddings=16,
                   additional_embeddings=0, time_embed_act_fn="gelu", norm_in_type="layer", encoder_hid_proj_type=None,
                   added_emb_type=None, time_embed_dim=32, clip_embed_dim=32)
_RENDERER_FULL: dict = {}  # ShapERenderer defaults: the public renderer (MLP width 256, 6 layers, d_latent 1024)
_RENDERER_TINY = dict(param_shapes=((4, 93), (4, 4), (4, 4), (4, 4)), d_latent=16, d_hidden=4, n_output=12)
_TEXT_FULL = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu", max_position_embeddings=77)
_TEXT_TINY = dict(vocab_size=1000, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                  projection_dim=16, max_position_embeddings=77)
_VISION_FULL = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    image_size=224, patch_size=14, hidden_act="quick_gelu")
_VISION_TINY = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                    patch_size=8)

_SDF_OUTPUT = 0  # row of the renderer MLP's output holding the signed distance (MLPNeRSTFModel.map_indices_to_keys)
_RANDOM_SDF_SHIFT = 0.4


@dataclass
class ShapEBundle:
    """One loaded Shap-E model: the diffusers pipeline(s) and where they live.

    Attributes:
        text: ``diffusers.ShapEPipeline`` (prompt → latents), or None.
        image: ``diffusers.ShapEImg2ImgPipeline`` (image → latents), or None. ``tiny-random`` and ``random-shap-e``
            carry both; a public model or a folder one.
        model_id: what was asked for (recorded in job metadata).
        device, dtype: where the weights are (fp16 on CUDA, fp32 on CPU by default).
    """

    text: Any | None
    image: Any | None
    model_id: str
    device: torch.device
    dtype: torch.dtype

    @property
    def conditions(self) -> tuple[str, ...]:
        """The condition kinds this model takes: ``("text",)``, ``("image",)`` or both."""
        return tuple(kind for kind in ("text", "image") if getattr(self, kind) is not None)

    def pipeline(self, kind: str):
        """The pipeline for ``kind`` (``"text"`` or ``"image"``), or None when the model has none."""
        return getattr(self, kind)

    @property
    def renderer(self):
        """The ``diffusers.ShapERenderer`` (latent → STF MLP weights and the MLP)."""
        return (self.text or self.image).shap_e_renderer


# ---------------------------------------------------------------------------------------------------------------------
# Random presets.
# ---------------------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_libraries():
    """transformers and diffusers at ERROR level inside: importing diffusers' Shap-E img2img module names
    transformers' ``CLIPImageProcessor``, whose torchvision backend is missing on CPU-only installs (transformers
    warns that it falls back to the PIL class, which :func:`_image_processor` uses anyway), and diffusers'
    ``ModelMixin.to(dtype)`` warns about fp32-pinned modules that Shap-E's models do not have. Their loading progress
    bars are off inside too (a job reports its own progress)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = (transformers_logging, diffusers_logging)
    saved = [(lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in libraries]
    for lib in libraries:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, (level, bars) in zip(libraries, saved):
            lib.set_verbosity(level)
            if bars:
                lib.enable_progress_bar()


def _scheduler():
    from diffusers import HeunDiscreteScheduler

    return HeunDiscreteScheduler(**SCHEDULER_CONFIG)


def _image_processor(image_size: int):
    """CLIP's preprocessing (short side → ``image_size`` bicubic, centre crop, CLIP mean/std) with PIL: the PIL
    backend works without torchvision and is named directly, so transformers has nothing to warn about."""
    from transformers.models.clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size,
                                                                                "width": image_size})


def build_random_shap_e(arch: str = TINY_RANDOM, seed: int = 0) -> ShapEBundle:
    """Both Shap-E pipelines with random weights, built from configs with the real classes (no files, no network).

    Args:
        arch: ``"tiny-random"`` (latent (16, 16), a few thousand parameters per part) or ``"random-shap-e"`` (the
            public architecture: prior 24 × 1024 with a (1024, 1024) latent, CLIP ViT-L/14 towers, renderer MLP 256).
            The renderer's signed-distance output bias is raised by 0.4 so that random latents decode to solids.
        seed: weights are a pure function of ``(arch, seed)``; the global RNG state is left untouched. The two
            pipelines share one renderer (the public models' renderers have the same architecture).

    Returns:
        A :class:`ShapEBundle` on the CPU in float32 with ``text`` and ``image`` set.

    Raises:
        ValueError: unknown ``arch``.
    """
    with _quiet_libraries():
        from diffusers import PriorTransformer, ShapEImg2ImgPipeline, ShapEPipeline
        from diffusers.pipelines.shap_e import ShapERenderer
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig, CLIPVisionModel

    if arch == TINY_RANDOM:
        prior_cfg, image_prior_cfg = _PRIOR_TINY, _PRIOR_TINY
        renderer_cfg, text_cfg, vision_cfg = _RENDERER_TINY, _TEXT_TINY, _VISION_TINY
    elif arch == RANDOM_SHAP_E:
        prior_cfg, image_prior_cfg = _PRIOR_FULL, _IMAGE_PRIOR_FULL
        renderer_cfg, text_cfg, vision_cfg = _RENDERER_FULL, _TEXT_FULL, _VISION_FULL
    else:
        raise ValueError(f"unknown random architecture {arch!r}; expected {TINY_RANDOM!r} or {RANDOM_SHAP_E!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_prior = PriorTransformer(embedding_proj_dim=text_cfg["projection_dim"], **prior_cfg)
        # The image prior reads the vision tower's patch tokens through a LayerNorm (embedding_proj_norm_type).
        image_prior = PriorTransformer(embedding_proj_dim=vision_cfg["hidden_size"], embedding_proj_norm_type="layer",
                                       **image_prior_cfg)
        renderer = ShapERenderer(**renderer_cfg)
        # Random latents give a signed distance below 0 (outside) almost everywhere; raising the bias of the SDF output
        # by _RANDOM_SDF_SHIFT gives seeded arbitrary solids instead of empty space (the public weights need nothing).
        with torch.no_grad():
            renderer.mlp.mlp[-1].bias[_SDF_OUTPUT] += _RANDOM_SDF_SHIFT
        text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1,
                                                                  **text_cfg))
        image_encoder = CLIPVisionModel(CLIPVisionConfig(**vision_cfg))
    for module in (text_prior, image_prior, renderer, text_encoder, image_encoder):
        module.eval().requires_grad_(False)
    text = ShapEPipeline(prior=text_prior, text_encoder=text_encoder, tokenizer=byte_level_clip_tokenizer(),
                         scheduler=_scheduler(), shap_e_renderer=renderer)
    image = ShapEImg2ImgPipeline(prior=image_prior, image_encoder=image_encoder,
                                 image_processor=_image_processor(vision_cfg["image_size"]), scheduler=_scheduler(),
                                 shap_e_renderer=renderer)
    return ShapEBundle(text=text, image=image, model_id=arch, device=torch.device("cpu"), dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------------------------------------------------

def load_shap_e(model: str = TEXT_MODEL, device: str | torch.device = "auto", dtype: torch.dtype | None = None,
                allow_download: bool = False) -> ShapEBundle:
    """Load a Shap-E model for :func:`backend.models.cache.ModelCache.get`.

    Args:
        model: ``"openai/shap-e"``, ``"openai/shap-e-img2img"``, another Hugging Face id of a diffusers Shap-E
            pipeline, a local diffusers folder, ``"tiny-random"`` or ``"random-shap-e"``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``…; dtype: default fp16 on CUDA, fp32 on CPU.
        allow_download: fetch from the Hub when missing from the cache; otherwise never touch the network.

    Returns:
        A :class:`ShapEBundle` on ``device`` in eval mode without gradients, its progress bars off.

    Raises:
        ModelNotFoundError: the id/path cannot be resolved locally or is not a Shap-E pipeline; the message says how
            to get it. ValueError: an empty model string.
    """
    if not isinstance(model, str) or not model.strip():
        raise ValueError("model must be a non-empty string (a Hugging Face id, a local folder, or 'tiny-random')")
    model = model.strip()
    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    if model in (TINY_RANDOM, RANDOM_SHAP_E):
        bundle = build_random_shap_e(model)
    else:
        path = Path(model).expanduser()
        if path.exists():
            bundle = _load(str(path), model, _kind_of_folder(path), local_files_only=True)
        elif model.startswith((".", "/", "~")) or "\\" in model:
            raise ModelNotFoundError(f"Shap-E model path {model!r} does not exist")
        else:
            bundle = _load(model, model, _kind_of_hub_model(model, allow_download), not allow_download)
    pipes = [pipe for pipe in (bundle.text, bundle.image) if pipe is not None]
    modules = {id(m): m for pipe in pipes for m in pipe.components.values() if isinstance(m, torch.nn.Module)}
    check_fits(device, weight_bytes(modules.values(), dtype), f"Shap-E model {model!r}")
    for pipe in (bundle.text, bundle.image):
        if pipe is not None:
            with _quiet_libraries():
                pipe.to(device=device, dtype=dtype)
            pipe.set_progress_bar_config(disable=True)
    bundle.device, bundle.dtype = device, dtype
    return bundle


def _kind_of_index(index: dict, where: str) -> str:
    name = index.get("_class_name")
    if name not in _PIPELINE_CLASSES:
        raise ModelNotFoundError(f"{where} is not a Shap-E model: its model_index.json names {name!r}, expected one of "
                                 f"{sorted(_PIPELINE_CLASSES)}")
    return _PIPELINE_CLASSES[name]


def _kind_of_folder(path: Path) -> str:
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ModelNotFoundError(f"{str(path)!r} is not a diffusers Shap-E folder: no model_index.json")
    try:
        return _kind_of_index(json.loads(index_file.read_text(encoding="utf-8")), repr(str(path)))
    except json.JSONDecodeError as err:
        raise ModelNotFoundError(f"{str(index_file)!r} is not valid JSON: {err}") from err


def _not_found(model: str, err: Exception) -> ModelNotFoundError:
    from huggingface_hub.constants import HF_HUB_CACHE

    first = str(err).splitlines()[0] if str(err) else ""
    return ModelNotFoundError(
        f"Shap-E model {model!r} is not on this machine (looked in the Hugging Face cache {HF_HUB_CACHE}). Download it "
        f"once with `python -m backend download {model}`, or pass a local diffusers folder as the model. "
        f"({type(err).__name__}: {first})")


def _kind_of_hub_model(model: str, allow_download: bool) -> str:
    from huggingface_hub import hf_hub_download

    try:
        index_file = hf_hub_download(model, "model_index.json", local_files_only=not allow_download)
    except Exception as err:  # LocalEntryNotFoundError, bad ids, network errors, …
        raise _not_found(model, err) from err
    return _kind_of_index(json.loads(Path(index_file).read_text(encoding="utf-8")), repr(model))


def _load(source: str, model: str, kind: str, local_files_only: bool) -> ShapEBundle:
    with _quiet_libraries():
        from diffusers import ShapEImg2ImgPipeline, ShapEPipeline

    try:
        with _quiet_libraries():
            if kind == "text":
                pipe = ShapEPipeline.from_pretrained(source, local_files_only=local_files_only)
            else:
                # The PIL image processor (no torchvision needed), named here so diffusers does not pick another.
                from transformers.models.clip import CLIPImageProcessorPil

                processor = CLIPImageProcessorPil.from_pretrained(source, subfolder="image_processor",
                                                                  local_files_only=local_files_only)
                pipe = ShapEImg2ImgPipeline.from_pretrained(source, image_processor=processor,
                                                            local_files_only=local_files_only)
    except (OSError, ValueError) as err:
        raise _not_found(model, err) from err
    for name in ("prior", "text_encoder", "image_encoder", "shap_e_renderer"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.eval().requires_grad_(False)
    return ShapEBundle(text=pipe if kind == "text" else None, image=pipe if kind == "image" else None,
                       model_id=model, device=torch.device("cpu"), dtype=torch.float32)


def download_shap_e(model: str = TEXT_MODEL) -> Path:
    """Fetch a diffusers Shap-E pipeline into the Hugging Face cache (the only function here that downloads).

    Weights come as ``.safetensors`` when the repository has them (``.bin`` duplicates are skipped).

    Returns:
        The local snapshot folder.
    """
    from huggingface_hub import HfApi, snapshot_download

    files = HfApi().list_repo_files(model)
    ignore = ["*.bin", "*.ckpt"] if any(f.endswith(".safetensors") for f in files) else []
    return Path(snapshot_download(model, ignore_patterns=ignore + ["*.gif", "*.png", "*.jpg"]))


# ---------------------------------------------------------------------------------------------------------------------
# The implicit function of one latent.
# ---------------------------------------------------------------------------------------------------------------------

def stf_fields(renderer, latent: torch.Tensor) -> tuple[Callable[[torch.Tensor], torch.Tensor],
                                                         Callable[[torch.Tensor], torch.Tensor]]:
    """The signed distance and colour fields (Shap-E's "STF" output) of one latent.

    The latent's rows are projected to the weights of the renderer's MLP (``renderer.params_proj``) and the MLP is
    called with those weights (``torch.func.functional_call``: the renderer itself is left unchanged, unlike
    ``ShapERenderer.decode_to_mesh``, which copies them into its MLP).

    Args:
        renderer: a ``diffusers.ShapERenderer``.
        latent: (num_embeddings, embedding_dim) one sampled latent, e.g. (1024, 1024).

    Returns:
        ``(sdf_fn, color_fn)``: ``sdf_fn(points (n, 3)) -> (n,)`` float32 signed distance in (-1, 1) (tanh), positive
        inside the shape; ``color_fn(points (n, 3)) -> (n, 3)`` float32 sRGB-encoded RGB in [0, 1] (the training
        renders were sRGB-encoded; :func:`blender_addon.core.arrays.srgb_to_linear` for scene-linear). Points in
        Shap-E's frame (:func:`backend.geometry.frames.shap_e_to_blender`), in the cube [-1, 1]³
        (:data:`SHAP_E_BOUNDS`).
    """
    mlp = renderer.mlp
    dtype = next(mlp.parameters()).dtype
    with torch.no_grad():
        projected = renderer.params_proj(latent[None].to(dtype))
    prefix = "nerstf."  # projected names are the original Shap-E parameter names, "nerstf.mlp.<i>.weight"
    weights = {name[len(prefix):]: value[0] for name, value in projected.items()}

    def query(points: torch.Tensor):
        with torch.no_grad():
            return torch.func.functional_call(mlp, weights, (), dict(position=points[None].to(dtype), direction=None,
                                                                    ts=None, nerf_level="fine", rendering_mode="stf"))

    def sdf_fn(points: torch.Tensor) -> torch.Tensor:
        return query(points).signed_distance[0, :, 0].float()

    def color_fn(points: torch.Tensor) -> torch.Tensor:
        return query(points).channels[0].float()

    return sdf_fn, color_fn



