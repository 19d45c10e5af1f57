"""Loading CLIP (Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", 2021) for
CLIP guidance: one :class:`~backend.guidance.clip.CLIPEmbedder` whatever library the weights come through.

Two libraries give the same contract:

- ``open_clip`` (``open_clip_torch``; imports when torchvision matches torch, which ``install.py`` pins as one pair):
  the default where it imports. CLIP-Mesh (Khalid et al. 2022; its public configs ``clip_model: ViT-B/32``) and Dream
  Fields score renders with OpenAI's ViT-B/32, here ``ViT-B-32/openai``.
- ``transformers`` (``CLIPModel``): always available; used when open_clip cannot import, or when asked.

:func:`load_clip` resolves one model string (the signature of :meth:`~backend.models.cache.ModelCache.get`):

- ``"<arch>/<tag>"``: an open_clip architecture and pretrained tag (``ViT-B-32/openai`` — the default —,
  ``ViT-B-16/openai``, ``ViT-L-14/openai``, ``ViT-L-14-336/openai``, ``ViT-B-32/laion2b_s34b_b79k``, …), read from
  the Hugging Face cache (open_clip's weights live on the Hub); ``"<arch>/<file>"`` a local weight file;
  ``"<arch>/random"`` the architecture with seeded random weights (benchmarks, no download). Through transformers
  the OpenAI tags map to the same weights' Hub ids (:data:`OPENAI_HF_IDS`).
- a transformers Hub id (``openai/clip-vit-base-patch32``, ``openai/clip-vit-large-patch14``, …) or a local folder
  with ``config.json``; through open_clip the OpenAI ids map back to ``<arch>/openai``.
- ``"tiny-random"``: both libraries' real classes at tiny widths (open_clip's ``CLIP`` from a model config dict with
  open_clip's own BPE tokenizer — a file inside the package, no download; transformers' ``CLIPModel`` from a tiny
  ``CLIPConfig`` with the project's byte-level tokenizer), seeded, no file or network access.

A ``"open_clip:"`` or ``"transformers:"`` prefix on the model string picks the library (as ``backend`` does), so the
model cache, which passes one string, can ask for either.

Preprocessing is differentiable in torch: a centre crop to a square, an antialiased bicubic resize to the model's
``image_size``, then the model's mean/std (OpenAI's CLIP statistics for every model here unless its preprocessing
config says otherwise).

Nothing here runs at import; nothing downloads unless asked (:func:`download_clip`).
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .base import TINY_RANDOM, ModelNotFoundError
from .devices import default_dtype, resolve_device
from .tokenizers import byte_level_clip_tokenizer, check_texts

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CLIP_MODEL", "CLIP_BACKENDS", "CLIP_MEAN", "CLIP_STD", "OPENAI_HF_IDS", "RANDOM_TAG",
           "TorchCLIPEmbedder", "open_clip_available", "parse_clip_model", "load_clip", "build_tiny_clip",
           "is_clip_model", "download_clip"]

DEFAULT_CLIP_MODEL = "ViT-B-32/openai"
"""CLIP-Mesh's CLIP (its public configs: ``clip_model: ViT-B/32``, OpenAI's weights)."""
CLIP_BACKENDS = ("auto", "open_clip", "transformers")
"""``auto``: open_clip where it imports, transformers otherwise."""
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
"""OpenAI CLIP's per-channel image mean (RGB in [0, 1]); open_clip's ``OPENAI_DATASET_MEAN`` and transformers'
``OPENAI_CLIP_MEAN`` are these numbers."""
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""OpenAI CLIP's per-channel image std."""
RANDOM_TAG = "random"
"""Pretrained tag of seeded random weights at a public architecture (``"ViT-B-32/random"``: benchmarks)."""
OPENAI_HF_IDS = {
    "ViT-B-32": "openai/clip-vit-base-patch32",
    "ViT-B-16": "openai/clip-vit-base-patch16",
    "ViT-L-14": "openai/clip-vit-large-patch14",
    "ViT-L-14-336": "openai/clip-vit-large-patch14-336",
}
"""open_clip architecture (tag ``openai``) → the Hugging Face id of the same OpenAI weights for transformers."""

# The architectures open_clip ships configs for, known without importing it (for parsing when it cannot import).
_KNOWN_ARCHS = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336",
                "ViT-H-14", "ViT-g-14", "ViT-bigG-14", "ViT-B-32-quickgelu", "ViT-B-16-plus-240")

_OPEN_CLIP_ARCH_PREFIXES = ("RN", "ViT", "EVA", "convnext", "coca", "xlm", "roberta", "mt5", "nllb", "MobileCLIP",
                            "ViTamin", "vit")

# Tiny widths: enough for every code path, a few seconds to build. open_clip's text tower keeps the real vocabulary
# size (its BPE tokenizer emits ids up to 49407); transformers' uses the byte-level tokenizer's ids (< 514).
_TINY_EMBED_DIM = 16
_TINY_IMAGE_SIZE = 32
_TINY_OPEN_CLIP = dict(
    embed_dim=_TINY_EMBED_DIM, quick_gelu=True,
    vision_cfg=dict(image_size=_TINY_IMAGE_SIZE, layers=2, width=32, head_width=16, patch_size=8),
    text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2))
_TINY_TRANSFORMERS = dict(
    projection_dim=_TINY_EMBED_DIM,
    text_config=dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                     max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
                     projection_dim=_TINY_EMBED_DIM, hidden_act="quick_gelu"),
    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       image_size=_TINY_IMAGE_SIZE, patch_size=8, projection_dim=_TINY_EMBED_DIM,
                       hidden_act="quick_gelu"))


# ---------------------------------------------------------------------------------------------------------------------
# The embedder.
# ---------------------------------------------------------------------------------------------------------------------

class TorchCLIPEmbedder:
    """A loaded CLIP model meeting :class:`backend.guidance.clip.CLIPEmbedder`, through open_clip or transformers.

    Build it with :func:`load_clip`; the constructor only wraps an already built model.

    Args:
        backend: ``"open_clip"`` (``model`` an open_clip ``CLIP``, ``tokenizer`` open_clip's tokenizer callable) or
            ``"transformers"`` (``model`` a ``transformers.CLIPModel``, ``tokenizer`` a ``CLIPTokenizer``).
        model_id: what was loaded (job metadata).
        mean, std: the model's per-channel image normalisation (RGB in [0, 1]).

    Attributes:
        image_size: square input side of the image tower, pixels (224 for ViT-B/32; 32 for ``tiny-random``).
        embed_dim: D, the joint embedding's width (512 for ViT-B/32, 768 for ViT-L/14; 16 for ``tiny-random``).
        context_length: text tokens (77).

    Raises:
        ValueError: unknown backend.
    """

    def __init__(self, backend: str, model: Any, tokenizer: Any, model_id: str,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
        if backend not in ("open_clip", "transformers"):
            raise ValueError(f"CLIP backend must be 'open_clip' or 'transformers', got {backend!r}")
        self.backend = backend
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if backend == "open_clip":
            size = model.visual.image_size
            self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
            self.embed_dim = int(model.visual.output_dim)
            self.context_length = int(model.context_length)
        else:
            config = model.config
            self.image_size = int(config.vision_config.image_size)
            self.embed_dim = int(config.projection_dim)
            self.context_length = int(config.text_config.max_position_embeddings)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> TorchCLIPEmbedder:
        """Move the weights (in place) and return ``self``."""
        self.model.to(device=device, dtype=dtype)
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's input from display-RGB images, differentiably.

        Args:
            images: ``(B, 3, H, W)`` float, display RGB (sRGB-encoded) in [0, 1], any H, W >= 1.

        Returns:
            ``(B, 3, image_size, image_size)`` in the model's dtype on its device: the centred square crop (side
            min(H, W)), resized with antialiased bicubic interpolation (torch's ``antialias=True``; CLIP's own
            preprocessing is a bicubic resize of the short side and a centre crop, which this equals for square
            renders), normalised ``(x − mean) / std``.

        Raises:
            ValueError: not a float ``(B, 3, H, W)`` tensor.
        """
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3 \
                or not images.is_floating_point() or images.shape[0] == 0:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a float (B, 3, H, W) tensor with B >= 1, got {shape}")
        x = images.to(device=self.device, dtype=torch.float32)
        h, w = x.shape[-2:]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = x[..., top:top + side, left:left + side]
        if side != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False,
                              antialias=True)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.dtype)

    def encode_images(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``(B, 3, H, W)`` display-RGB images in [0, 1] (see :meth:`preprocess`) → ``(B, D)`` float32 unit vectors:
        the projected pooled image embedding (``encode_image`` / ``get_image_features``), L2-normalised (as is, in
        float32, with ``normalize=False``); differentiable with respect to ``images`` (the weights are frozen).

        Raises:
            ValueError: as :meth:`preprocess`.
        """
        pixels = self.preprocess(images)
        if self.backend == "open_clip":
            embeds = self.model.encode_image(pixels)
        else:
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output
            embeds = self.model.visual_projection(pooled)
        return F.normalize(embeds.float(), dim=-1) if normalize else embeds.float()

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(ids (N, context_length) int64, attention mask or None)`` on the model's device; prompts longer than the
        context are truncated (CLIP's tokenizers keep the end token)."""
        texts = check_texts(texts)
        if self.backend == "open_clip":
            return self.tokenizer(texts, context_length=self.context_length).to(self.device), None
        batch = self.tokenizer(texts, truncation=True, max_length=self.context_length, padding="max_length",
                               return_tensors="pt")
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """``N`` prompts → ``(N, D)`` float32 unit vectors (the projected end-token embedding, ``encode_text`` /
        ``get_text_features``, L2-normalised; as is, in float32, with ``normalize=False``); no gradient.

        Raises:
            ValueError: ``texts`` not a non-empty list of strings.
        """
        ids, mask = self.tokenize(texts)
        if self.backend == "open_clip":
            embeds = self.model.encode_text(ids)
        else:
            pooled = self.model.text_model(input_ids=ids, attention_mask=mask).pooler_output
            embeds = self.model.text_projection(pooled)
        return F.normalize(embeds.float(), dim=-1) if normalize else embeds.float()


# ---------------------------------------------------------------------------------------------------------------------
# Model strings.
# ---------------------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def open_clip_available() -> bool:
    """Whether ``open_clip`` imports here (it needs a torchvision built for this torch; checked once per process)."""
    try:
        importlib.import_module("open_clip")
    except Exception as err:  # ImportError, or torchvision failing inside open_clip's import
        log.info("open_clip does not import here (%s: %s); CLIP loads through transformers", type(err).__name__, err)
        return False
    return True


def _open_clip_archs() -> tuple[str, ...]:
    if open_clip_available():
        import open_clip

        return tuple(open_clip.list_models())
    return _KNOWN_ARCHS


def parse_clip_model(model: str, backend: str = "auto") -> tuple[str, str, str]:
    """Which library loads ``model`` and from what.

    Args:
        model: see the module docstring (an optional ``"open_clip:"`` / ``"transformers:"`` prefix included).
        backend: ``"auto"``, ``"open_clip"`` or ``"transformers"``.

    Returns:
        ``(backend, kind, source)`` with backend ``"open_clip"`` or ``"transformers"`` and
        kind ``"tiny"`` (source ``"tiny-random"``), ``"open_clip"`` (source ``"<arch>/<tag or file>"``),
        ``"hub"`` (a transformers Hub id) or ``"folder"`` (a local transformers folder).

    Raises:
        ValueError: empty model, unknown backend, a prefix that contradicts ``backend``.
        ModelNotFoundError: an id neither library can load here (the message lists the forms), or an open_clip model
            asked of transformers that has no transformers equivalent, or open_clip asked for where it cannot import.
    """
    if backend not in CLIP_BACKENDS:
        raise ValueError(f"CLIP backend must be one of {CLIP_BACKENDS}, got {backend!r}")
    if not isinstance(model, str) or not model.strip():
        raise ValueError("CLIP model must be a non-empty string (e.g. 'ViT-B-32/openai', "
                         "'openai/clip-vit-base-patch32', a local folder, or 'tiny-random')")
    model = model.strip()
    for prefix in ("open_clip", "transformers"):
        if model.startswith(prefix + ":"):
            if backend not in ("auto", prefix):
                raise ValueError(f"CLIP model {model!r} names backend {prefix!r} but backend {backend!r} was asked")
            backend, model = prefix, model[len(prefix) + 1:].strip()
    if backend == "open_clip" and not open_clip_available():
        raise ModelNotFoundError("CLIP backend 'open_clip' was asked but open_clip cannot be imported here (it needs "
                                 "torchvision matching torch: re-run install.py); use backend 'transformers'")
    if backend == "auto":
        backend = "open_clip" if open_clip_available() else "transformers"
    if model == TINY_RANDOM:
        return backend, "tiny", TINY_RANDOM

    arch, _, tag = model.partition("/")
    if arch in _open_clip_archs() and tag:
        if backend == "open_clip":
            return backend, "open_clip", model
        if tag == "openai" and arch in OPENAI_HF_IDS:
            return backend, "hub", OPENAI_HF_IDS[arch]
        raise ModelNotFoundError(f"CLIP model {model!r} is an open_clip model without a transformers equivalent "
                                 f"here (transformers knows the OpenAI tags: "
                                 f"{', '.join(a + '/openai' for a in OPENAI_HF_IDS)}); use backend 'open_clip'")
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")) or "\\" in model:
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"CLIP model path {model!r} is not a transformers CLIP folder (no config.json); "
                                     f"an open_clip weight file is given as '<arch>/<file>', e.g. 'ViT-B-32/{model}'")
        return "transformers", "folder", str(path)
    if backend == "open_clip":
        for arch_, hub_id in OPENAI_HF_IDS.items():
            if model == hub_id:
                return backend, "open_clip", f"{arch_}/openai"
        # another transformers id: transformers loads it whatever the default library
    if model.count("/") == 1:
        return "transformers", "hub", model
    raise ModelNotFoundError(f"unknown CLIP model {model!r}: expected an open_clip '<arch>/<tag>' (e.g. "
                             f"{DEFAULT_CLIP_MODEL!r}), a Hugging Face id (e.g. 'openai/clip-vit-base-patch32'), a "
                             f"local transformers folder, or {TINY_RANDOM!r}")


def is_clip_model(model: str) -> bool:
    """Whether ``python -m backend download <model>`` should treat ``model`` as a CLIP model: an open_clip
    ``<arch>/<tag>`` (not ``random``) or one of the OpenAI transformers ids (:data:`OPENAI_HF_IDS`)."""
    if not isinstance(model, str):
        return False
    model = model.strip()
    for prefix in ("open_clip:", "transformers:"):
        model = model[len(prefix):] if model.startswith(prefix) else model
    arch, _, tag = model.partition("/")
    if model in OPENAI_HF_IDS.values():
        return True
    if not tag or tag == RANDOM_TAG or not arch.startswith(_OPEN_CLIP_ARCH_PREFIXES):
        return False  # (no open_clip import for Stable Diffusion ids and the like)
    return arch in _KNOWN_ARCHS or arch in _open_clip_archs()


# ---------------------------------------------------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------------------------------------------------

def build_tiny_clip(backend: str = "auto", seed: int = 0) -> TorchCLIPEmbedder:
    """A tiny CLIP with seeded random weights through the real classes (no files, no network).

    Args:
        backend: ``"open_clip"`` (open_clip's ``CLIP`` from a model config dict with embed_dim 16, 32-wide towers,
            32² images in 8² patches, and open_clip's BPE tokenizer — a file shipped inside the package),
            ``"transformers"`` (``CLIPModel`` from a tiny ``CLIPConfig`` of the same widths, the project's byte-level
            tokenizer) or ``"auto"``.
        seed: the weights are a pure function of ``(backend, seed)``; the global RNG state is left untouched.

    Returns:
        A CPU float32 :class:`TorchCLIPEmbedder` (``image_size`` 32, ``embed_dim`` 16, ``model_id`` "tiny-random").
    """
    backend, _, _ = parse_clip_model(TINY_RANDOM, backend)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if backend == "open_clip":
            import open_clip
            from open_clip.model import CLIP

            model = CLIP(**_TINY_OPEN_CLIP)
            tokenizer = open_clip.get_tokenizer("ViT-B-32")  # the BPE vocabulary file inside the package
        else:
            from transformers import CLIPConfig, CLIPModel

            model = CLIPModel(CLIPConfig(**_TINY_TRANSFORMERS))
            tokenizer = byte_level_clip_tokenizer(77)
    return TorchCLIPEmbedder(backend, model, tokenizer, TINY_RANDOM)


def load_clip(model: str = DEFAULT_CLIP_MODEL, device: str | torch.device = "auto", dtype: torch.dtype | None = None,
              allow_download: bool = False, backend: str = "auto") -> TorchCLIPEmbedder:
    """Load a CLIP model as a :class:`~backend.guidance.clip.CLIPEmbedder` (a loader for
    :meth:`backend.models.cache.ModelCache.get`).

    Args:
        model: ``"ViT-B-32/openai"`` (default), another open_clip ``"<arch>/<tag>"``, ``"<arch>/<file>"``,
            ``"<arch>/random"``, a transformers Hub id or folder, or ``"tiny-random"``; optionally prefixed with
            ``"open_clip:"`` / ``"transformers:"`` (see the module docstring).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``…; dtype: default fp16 on CUDA, fp32 on CPU.
        allow_download: fetch missing weights from the Hugging Face Hub; otherwise never touch the network.
        backend: ``"auto"`` (open_clip where it imports), ``"open_clip"`` or ``"transformers"``.

    Returns:
        A :class:`TorchCLIPEmbedder` on ``device`` in eval mode with frozen weights.

    Raises:
        ModelNotFoundError: weights not on this machine (the message names the ``download`` command), a path that
            is not a CLIP model, an unknown id.
        ValueError: empty model string, unknown backend.
    """
    backend, kind, source = parse_clip_model(model, backend)
    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    if kind == "tiny":
        embedder = build_tiny_clip(backend)
    elif kind == "open_clip":
        embedder = _load_open_clip(source, allow_download)
    else:
        embedder = _load_transformers(source, kind == "folder", allow_download)
    return embedder.to(device, dtype)


def _download_hint(model: str) -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return (f"CLIP model {model!r} is not on this machine (looked in the Hugging Face cache {HF_HUB_CACHE}). "
            f"Download it once with `python -m backend download {model}` (needs internet), or pass a local file or "
            f"folder.")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def _open_clip_weights(arch: str, tag: str, allow_download: bool) -> str:
    """The local weight file of open_clip ``arch``/``tag`` (from the Hugging Face cache; fetched when allowed)."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)[:8])
        raise ModelNotFoundError(f"open_clip has no pretrained tag {tag!r} for {arch!r} (and no such file); known tags "
                                 f"include {tags}; or '{arch}/{RANDOM_TAG}' for random weights")
    hub = cfg.get("hf_hub", "").strip("/")
    if not hub:
        raise ModelNotFoundError(f"open_clip weights {arch}/{tag} are only published by URL ({cfg.get('url', '?')}); "
                                 f"download the file and pass '{arch}/<file>'")
    parts = hub.split("/")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import hf_hub_download

    errors = []
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    for name in names:
        try:
            return hf_hub_download(repo_id, name, local_files_only=not allow_download)
        except Exception as err:  # LocalEntryNotFoundError, EntryNotFoundError, network errors
            errors.append(err)
    raise ModelNotFoundError(f"{_download_hint(f'{arch}/{tag}')} ({repo_id}; {_first_line(errors[-1])})") \
        from errors[-1]


def _load_open_clip(source: str, allow_download: bool) -> TorchCLIPEmbedder:
    import open_clip

    arch, _, tag = source.partition("/")
    file = Path(tag).expanduser()
    cfg = {} if tag == RANDOM_TAG or file.is_file() else open_clip.get_pretrained_cfg(arch, tag)
    quick_gelu = bool(cfg.get("quick_gelu", False))
    if tag == RANDOM_TAG:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = open_clip.create_model(arch, pretrained=None)
    else:
        weights = os.fspath(file) if file.is_file() else _open_clip_weights(arch, tag, allow_download)
        try:
            model = open_clip.create_model(arch, pretrained=weights, force_quick_gelu=quick_gelu)
        except (RuntimeError, OSError, ValueError) as err:
            raise ModelNotFoundError(f"could not load open_clip {arch!r} with weights {tag!r}: "
                                     f"{_first_line(err)}") from err
    mean, std = cfg.get("mean") or CLIP_MEAN, cfg.get("std") or CLIP_STD
    return TorchCLIPEmbedder("open_clip", model, open_clip.get_tokenizer(arch), source, mean, std)


def _load_transformers(source: str, is_folder: bool, allow_download: bool) -> TorchCLIPEmbedder:
    from transformers import CLIPModel, CLIPTokenizer

    local_only = is_folder or not allow_download
    try:
        model = CLIPModel.from_pretrained(source, local_files_only=local_only)
        tokenizer = CLIPTokenizer.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError) as err:
        if is_folder:
            raise ModelNotFoundError(f"could not load CLIP from {source!r}: {_first_line(err)}") from err
        raise ModelNotFoundError(f"{_download_hint(source)} ({_first_line(err)})") from err
    mean, std = _transformers_mean_std(source, local_only)
    return TorchCLIPEmbedder("transformers", model, tokenizer, source, mean, std)


def _transformers_mean_std(source: str, local_only: bool) -> tuple[Sequence[float], Sequence[float]]:
    """``image_mean`` / ``image_std`` of the model's ``preprocessor_config.json`` when it has one, else OpenAI's."""
    try:
        path = Path(source) / "preprocessor_config.json"
        if not path.is_file():
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source, "preprocessor_config.json", local_files_only=local_only))
        config = json.loads(path.read_text(encoding="utf-8"))
        return config.get("image_mean") or CLIP_MEAN, config.get("image_std") or CLIP_STD
    except Exception:  # no preprocessing config: OpenAI's statistics, which every public CLIP here uses
        return CLIP_MEAN, CLIP_STD


def download_clip(model: str = DEFAULT_CLIP_MODEL) -> Path:
    """Fetch a CLIP model's files into the Hugging Face cache (the only function here that downloads).

    Args:
        model: an open_clip ``"<arch>/<tag>"`` (its weight file) or a transformers Hub id (config, tokenizer,
            preprocessing config and ``.safetensors`` weights when the repository has them); an optional
            ``"open_clip:"`` / ``"transformers:"`` prefix picks the library as in :func:`load_clip`.

    Returns:
        The local weight file (open_clip) or snapshot folder (transformers).

    Raises:
        ModelNotFoundError: not a downloadable CLIP id. Hub and network errors pass through.
    """
    backend, kind, source = parse_clip_model(model)
    if kind == "open_clip":
        arch, _, tag = source.partition("/")
        if tag == RANDOM_TAG or Path(tag).expanduser().is_file():
            raise ModelNotFoundError(f"{model!r} needs no download")
        return Path(_open_clip_weights(arch, tag, allow_download=True))
    if kind != "hub":
        raise ModelNotFoundError(f"{model!r} needs no download")
    from huggingface_hub import HfApi, snapshot_download

    files = HfApi().list_repo_files(source)
    weights = ["*.safetensors"] if any(f.endswith(".safetensors") for f in files) else ["*.bin"]
    return Path(snapshot_download(source, allow_patterns=["*.json", "*.txt"] + weights))
