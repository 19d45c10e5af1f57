"""Frozen CLIP towers for Michelangelo: the denoiser's condition tokens and the embeddings the shape VAE aligns with.

Facts from the public code (github.com/NeuralCarver/Michelangelo, ``models/conditional_encoders/encoder_factory.py``
and ``models/tsal/clip_asl_module.py``), all with Hugging Face ``openai/clip-vit-large-patch14``:

- text condition (``FrozenAlignedCLIPTextEmbedder``): the prompt is tokenised with ``CLIPTokenizer`` padded with
  ``<|endoftext|>`` to 77 tokens (truncated beyond), the text tower runs on ``input_ids`` alone (causal mask, no
  padding mask), and the context is its ``last_hidden_state`` — after the final LayerNorm — (B, 77, 768).
  Unconditional embedding for classifier-free guidance: the same encoding of the empty prompt ``""``; in training
  the prompt is replaced by ``""`` with probability ``zero_embedding_radio = 0.1``.
- image condition (``FrozenCLIPImageGridEmbedder``): pixels in [0, 1] are resized so the short side is 224
  (bilinear, antialiased), centre-cropped to 224², normalised with CLIP's mean/std, and the context is the vision
  tower's ``last_hidden_state`` (B, 257, 1024): CLS + 16×16 patch tokens, *without* ``post_layernorm`` (which HF
  applies to the pooled CLS only). Unconditional embedding: zeros of that shape; in training the embedding is
  zeroed with probability 0.1.
- alignment (SITA-VAE contrastive loss): ``get_text_features`` / ``get_image_features``, i.e. the projected pooled
  embeddings (EOS token after the final LayerNorm → ``text_projection``; CLS after ``post_layernorm`` →
  ``visual_projection``), L2-normalised, and CLIP's own frozen ``logit_scale.exp()`` as the temperature.

Two interchangeable backends give that contract: ``"transformers"`` (``CLIPModel``; always available, what the public
code used) and ``"open_clip"`` (``ViT-L-14`` / ``openai``; imported only when chosen — it needs torchvision). The open_clip
backend pads prompts with ``<|endoftext|>`` as the HF tokenizer does (open_clip pads with 0), so both backends produce
the same tokens for the same weights.

Images: (H, W, 3) RGB or (H, W, 4) RGBA uint8, row 0 = top. RGBA is composited on white (the public inference reads
images with OpenCV, which drops alpha; white is the usual render background of shape datasets). Sides below
:data:`MIN_IMAGE_SIDE` px are rejected.

Nothing here downloads at import or construction; :meth:`CLIPConditioner.from_pretrained` reads the Hugging Face
cache unless ``allow_download=True``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..models.devices import default_dtype, resolve_device
from ..models.base import TINY_RANDOM, ModelNotFoundError
from ..models.tokenizers import byte_level_clip_tokenizer, check_texts
from .config import CLIP_BACKENDS, CONDITIONS, CLIPConditionerConfig, get_preset

log = logging.getLogger(__name__)

__all__ = ["CLIP_MEAN", "CLIP_STD", "MIN_IMAGE_SIDE", "TINY_RANDOM", "CLIPConditioner", "load_image", "check_images",
           "preprocess_images", "tiny_clip_config"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
"""Per-channel mean of CLIP's image normalisation (RGB, pixels in [0, 1])."""
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""Per-channel std of CLIP's image normalisation."""
MIN_IMAGE_SIDE = 16
"""Smallest accepted image side in pixels (a 1×1 or thumbnail image carries no shape information)."""
OPENAI_CLIP_L14 = "openai/clip-vit-large-patch14"
_OPEN_CLIP_EOT = 49407  # <|endoftext|> of CLIP's BPE vocabulary


# ---------------------------------------------------------------------------------------------------------------------
# Images.
# ---------------------------------------------------------------------------------------------------------------------

def load_image(path: str | Path) -> np.ndarray:
    """Read an image file (PNG, JPEG, … anything PIL reads) for :meth:`CLIPConditioner.encode_image`.

    Returns:
        (H, W, 3) RGB or (H, W, 4) RGBA uint8, row 0 = top (alpha kept when the file has one; palette, grey and
        16-bit images are converted).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable image, or a side is below :data:`MIN_IMAGE_SIDE` px.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"image file {str(path)!r} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
            array = np.asarray(im.convert("RGBA" if has_alpha else "RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ValueError(f"could not read image {str(path)!r}: {err}") from err
    _check_one(array, str(path))
    return np.ascontiguousarray(array)


def _check_one(image: Any, name: str) -> None:
    is_uint8 = image.dtype == torch.uint8 if isinstance(image, torch.Tensor) else image.dtype == np.uint8
    if not is_uint8:
        raise ValueError(f"{name} must be uint8 (0..255), got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"{name} must be (H, W, 3) RGB or (H, W, 4) RGBA, got shape {tuple(image.shape)}")
    h, w = int(image.shape[0]), int(image.shape[1])
    if min(h, w) < MIN_IMAGE_SIDE:
        raise ValueError(f"{name} is {w}×{h} pixels; at least {MIN_IMAGE_SIDE}×{MIN_IMAGE_SIDE} is needed")


def check_images(images: np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor]) -> list[torch.Tensor]:
    """Validate a batch of images and return them as a list of (H, W, 3|4) uint8 CPU tensors.

    Args:
        images: a (B, H, W, 3|4) uint8 array/tensor, or a non-empty sequence of (H, W, 3|4) uint8 arrays/tensors (sizes
            may differ). Row 0 = top.

    Raises:
        ValueError: empty batch, wrong dtype (not uint8), wrong shape or channel count, a side < 16 px.
    """
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim != 4:
            raise ValueError(f"images must be (B, H, W, 3|4) uint8 or a list of (H, W, 3|4), got shape "
                             f"{tuple(images.shape)}")
        items = list(images)
    elif isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        items = list(images)
    else:
        raise ValueError(f"images must be an array or a list of arrays, got {type(images).__name__}")
    if not items:
        raise ValueError("images is empty: need at least one image")
    out = []
    for i, im in enumerate(items):
        if not isinstance(im, (np.ndarray, torch.Tensor)):
            raise ValueError(f"image {i} must be a uint8 array, got {type(im).__name__}")
        _check_one(im, f"image {i}")
        out.append(torch.from_numpy(np.require(im, requirements=("C", "W"))) if isinstance(im, np.ndarray) else im.cpu())
    return out


def preprocess_images(images: np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor], image_size: int,
                      device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The public image transform: RGBA over white, [0, 1], short side → ``image_size`` (bilinear, antialiased),
    centre crop ``image_size``², CLIP mean/std normalisation.

    Args:
        images: see :func:`check_images`.
        image_size: the vision tower's input side (224 for ViT-L/14).

    Returns:
        (B, 3, image_size, image_size) ``dtype`` tensor on ``device`` (CLIP-normalised pixels).

    Raises:
        ValueError: as :func:`check_images`.
    """
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32, device=device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32, device=device).view(3, 1, 1)
    batch = []
    for im in check_images(images):
        x = im.to(device=device, dtype=torch.float32) / 255.0  # (H, W, C)
        if x.shape[-1] == 4:
            alpha = x[..., 3:]
            x = x[..., :3] * alpha + (1.0 - alpha)  # composite on white
        x = x.permute(2, 0, 1)[None]  # (1, 3, H, W)
        h, w = x.shape[-2:]
        # torchvision Resize(int): the short side becomes image_size, the long side int(image_size * long / short).
        if h <= w:
            size = (image_size, int(image_size * w / h))
        else:
            size = (int(image_size * h / w), image_size)
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        h, w = size
        top, left = int(round((h - image_size) / 2.0)), int(round((w - image_size) / 2.0))
        x = x[..., top:top + image_size, left:left + image_size]
        batch.append((x[0] - mean) / std)
    return torch.stack(batch).to(dtype)


# ---------------------------------------------------------------------------------------------------------------------
# The conditioner.
# ---------------------------------------------------------------------------------------------------------------------

def tiny_clip_config() -> CLIPConditionerConfig:
    """The conditioner config of the ``tiny`` preset (text/vision width 32, 32² images in 8² patches: 17 tokens)."""

    return get_preset("tiny").clip


class CLIPConditioner:
    """Frozen CLIP text + vision towers with Michelangelo's output contract (see the module docstring).

    Build it with :meth:`from_pretrained`, :meth:`from_config` or :meth:`tiny_random`; the constructor only wraps an
    already built model.

    Args:
        config: the :class:`~.config.CLIPConditionerConfig` the model matches (widths, token counts, image size).
        backend: ``"transformers"`` (``model`` is a ``transformers.CLIPModel``, ``tokenizer`` a ``CLIPTokenizer``) or
            ``"open_clip"`` (``model`` an ``open_clip`` CLIP model, ``tokenizer`` its tokenizer callable).
        model_id: what was loaded (recorded in checkpoints and job metadata).

    Raises:
        ValueError: unknown backend, or the model's widths/token counts differ from ``config``.
    """

    def __init__(self, config: CLIPConditionerConfig, backend: str, model: Any, tokenizer: Any, model_id: str = ""):
        if backend not in CLIP_BACKENDS:
            raise ValueError(f"CLIP backend must be one of {CLIP_BACKENDS}, got {backend!r}")
        self.config = config
        self.backend = backend
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.model_id = model_id or config.model_id
        self._uncond_text: torch.Tensor | None = None
        self._check_dims()

    # -- construction ------------------------------------------------------------------------------------------------

    @classmethod
    def tiny_random(cls, seed: int = 0, config: CLIPConditionerConfig | None = None) -> CLIPConditioner:
        """A tiny ``transformers.CLIPModel`` with seeded random weights and a byte-level tokenizer (no files, no network).

        Args:
            seed: the weights are a pure function of ``(config, seed)``; the global RNG state is left untouched.
            config: widths and sizes (default: the ``tiny`` preset's, :func:`tiny_clip_config`).
        """
        from transformers import CLIPConfig, CLIPModel

        config = config or tiny_clip_config()

        def heads(width: int) -> int:
            return 2 if width % 2 == 0 else 1

        clip_config = CLIPConfig(
            text_config=dict(vocab_size=1000, hidden_size=config.text_width, intermediate_size=2 * config.text_width,
                             num_hidden_layers=2, num_attention_heads=heads(config.text_width),
                             max_position_embeddings=config.text_tokens, bos_token_id=0, eos_token_id=1,
                             pad_token_id=1, projection_dim=config.projection_dim),
            vision_config=dict(hidden_size=config.vision_width, intermediate_size=2 * config.vision_width,
                               num_hidden_layers=2, num_attention_heads=heads(config.vision_width),
                               image_size=config.image_size, patch_size=config.patch_size,
                               projection_dim=config.projection_dim),
            projection_dim=config.projection_dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CLIPModel(clip_config)
        tokenizer = byte_level_clip_tokenizer(config.text_tokens)
        return cls(config, "transformers", model, tokenizer, model_id=TINY_RANDOM)

    @classmethod
    def from_pretrained(cls, model_id_or_path: str = OPENAI_CLIP_L14, backend: str = "transformers",
                        device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                        allow_download: bool = False, config: CLIPConditionerConfig | None = None) -> CLIPConditioner:
        """Load pretrained CLIP (ViT-L/14 by default) without ever touching the network unless allowed.

        Args:
            model_id_or_path: backend ``transformers``: a Hugging Face id (``openai/clip-vit-large-patch14``) or a
                local folder with ``config.json`` + weights + tokenizer files, or ``"tiny-random"``. Backend
                ``open_clip``: ``"<architecture>"`` (pretrained tag from ``config.open_clip_pretrained``),
                ``"<architecture>:<tag>"`` (``"ViT-L-14:openai"``), or ``"<architecture>:<checkpoint file>"``.
            backend: ``"transformers"`` or ``"open_clip"``.
            device, dtype: where to put the weights (default dtype fp16 on CUDA, fp32 on CPU).
            allow_download: fetch missing files from the Hugging Face Hub; otherwise the local cache only.
            config: expected sizes (default: ViT-L/14's, :class:`~.config.CLIPConditionerConfig` defaults); the
                loaded model must match it.

        Raises:
            ModelNotFoundError: not in the cache / path missing (the message says how to get it).
            ImportError: backend ``open_clip`` chosen but ``open_clip`` (or its torchvision dependency) cannot be
                imported here.
            ValueError: unknown backend, or the model does not match ``config``.
        """
        if backend not in CLIP_BACKENDS:
            raise ValueError(f"CLIP backend must be one of {CLIP_BACKENDS}, got {backend!r}")
        if not isinstance(model_id_or_path, str) or not model_id_or_path.strip():
            raise ValueError(f"CLIP model must be a non-empty string, got {model_id_or_path!r}")
        model_id_or_path = model_id_or_path.strip()
        if model_id_or_path == TINY_RANDOM:
            cond = cls.tiny_random(0, config)
            device = resolve_device(device)
            return cond.to(device, dtype or default_dtype(device))
        config = config or CLIPConditionerConfig(backend=backend, model_id=model_id_or_path)
        if backend == "transformers":
            cond = cls._load_transformers(model_id_or_path, allow_download, config)
        else:
            cond = cls._load_open_clip(model_id_or_path, allow_download, config)
        device = resolve_device(device)
        return cond.to(device, dtype or default_dtype(device))

    @classmethod
    def from_config(cls, config: CLIPConditionerConfig, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None, allow_download: bool = False, seed: int = 0) -> CLIPConditioner:
        """The conditioner a :class:`~.config.CLIPConditionerConfig` names: ``model_id == "tiny-random"`` → a tiny
        seeded model of the config's sizes; else :meth:`from_pretrained` with the config's backend and model
        (for open_clip: ``open_clip_model`` / ``open_clip_pretrained``)."""
        if config.model_id == TINY_RANDOM:
            device = resolve_device(device)
            return cls.tiny_random(seed, config).to(device, dtype or default_dtype(device))
        name = config.model_id if config.backend == "transformers" else \
            f"{config.open_clip_model}:{config.open_clip_pretrained}"
        return cls.from_pretrained(name, config.backend, device, dtype, allow_download, config)

    @classmethod
    def _load_transformers(cls, model: str, allow_download: bool, config: CLIPConditionerConfig) -> CLIPConditioner:
        from transformers import CLIPModel, CLIPTokenizer

        path = Path(model).expanduser()
        is_path = path.exists() or model.startswith((".", "/", "~")) or "\\" in model
        if is_path and not path.is_dir():
            raise ModelNotFoundError(f"CLIP model folder {str(path)!r} does not exist (or is not a folder)")
        source = str(path) if is_path else model
        try:
            clip = CLIPModel.from_pretrained(source, local_files_only=not allow_download or is_path)
            tokenizer = CLIPTokenizer.from_pretrained(source, local_files_only=not allow_download or is_path)
        except (OSError, ValueError) as err:
            first = str(err).splitlines()[0] if str(err) else ""
            if is_path:
                raise ModelNotFoundError(f"could not load CLIP from {source!r}: {first}") from err
            from huggingface_hub.constants import HF_HUB_CACHE

            raise ModelNotFoundError(
                f"CLIP model {model!r} is not on this machine (looked in the Hugging Face cache {HF_HUB_CACHE}). "
                f"Download it once with `huggingface-cli download {model}` (needs internet), or pass a local "
                f"folder. ({type(err).__name__}: {first})") from err
        return cls(config, "transformers", clip, tokenizer, model_id=model)

    @classmethod
    def _load_open_clip(cls, model: str, allow_download: bool, config: CLIPConditionerConfig) -> CLIPConditioner:
        try:
            import open_clip
        except Exception as err:  # ImportError, or torchvision failing inside open_clip's import
            raise ImportError(
                f"the 'open_clip' CLIP backend needs the open_clip_torch package and torchvision, which cannot be "
                f"imported here ({type(err).__name__}: {err}); use backend 'transformers' (same model, "
                f"{OPENAI_CLIP_L14})") from err
        arch, _, tag = model.partition(":")
        tag = tag or config.open_clip_pretrained
        pretrained_cfg = open_clip.get_pretrained_cfg(arch, tag) if not Path(tag).expanduser().is_file() else {}
        source = tag
        if pretrained_cfg and not allow_download:
            source = _open_clip_cached_file(arch, tag, pretrained_cfg)
        try:
            clip = open_clip.create_model(arch, pretrained=source,
                                          force_quick_gelu=bool(pretrained_cfg.get("quick_gelu", False)))
        except RuntimeError as err:
            raise ModelNotFoundError(f"could not load open_clip {arch!r} with weights {tag!r}: {err}") from err
        tokenizer = open_clip.get_tokenizer(arch)
        return cls(config, "open_clip", clip, tokenizer, model_id=f"{arch}:{tag}")

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> CLIPConditioner:
        """Move the weights (in place) and return ``self``."""
        self.model.to(device=device, dtype=dtype)
        self._uncond_text = None
        return self

    # -- sizes -------------------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def text_width(self) -> int:
        """Channels of a text context token (768 for ViT-L/14)."""
        return self.config.text_width

    @property
    def vision_width(self) -> int:
        """Channels of an image context token (1024 for ViT-L/14)."""
        return self.config.vision_width

    @property
    def projection_dim(self) -> int:
        """Dim of the aligned embeddings of :meth:`text_embeds` / :meth:`image_embeds` (768 for ViT-L/14)."""
        return self.config.projection_dim

    @property
    def image_tokens(self) -> int:
        """Tokens of an image context (257 for ViT-L/14 at 224 px)."""
        return self.config.image_tokens

    def context_shape(self, condition: str) -> tuple[int, int]:
        """``(tokens, channels)`` of one context of ``condition`` ("text" → (77, 768), "image" → (257, 1024))."""
        if condition == "text":
            return self.config.text_tokens, self.text_width
        if condition == "image":
            return self.image_tokens, self.vision_width
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")

    @property
    def logit_scale(self) -> float:
        """CLIP's learned inverse temperature ``exp(logit_scale)`` (100 for ViT-L/14), the public contrastive scale."""
        return float(self.model.logit_scale.detach().float().exp())

    def _check_dims(self) -> None:
        if self.backend == "transformers":
            text, vision = self.model.config.text_config, self.model.config.vision_config
            found = dict(text_width=text.hidden_size, vision_width=vision.hidden_size,
                         projection_dim=self.model.config.projection_dim, text_tokens=text.max_position_embeddings,
                         image_size=vision.image_size, patch_size=vision.patch_size)
        else:
            visual = self.model.visual
            image_size = visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else visual.image_size
            patch = visual.patch_size[0] if isinstance(visual.patch_size, (tuple, list)) else visual.patch_size
            found = dict(text_width=self.model.ln_final.weight.shape[0], vision_width=visual.ln_pre.weight.shape[0],
                         projection_dim=visual.output_dim, text_tokens=self.model.positional_embedding.shape[0],
                         image_size=image_size, patch_size=patch)
        wrong = {k: (v, getattr(self.config, k)) for k, v in found.items() if v != getattr(self.config, k)}
        if wrong:
            detail = ", ".join(f"{k}: model {v} vs config {c}" for k, (v, c) in wrong.items())
            raise ValueError(f"CLIP model {self.model_id!r} does not match its CLIPConditionerConfig ({detail})")

    # -- tokens ------------------------------------------------------------------------------------------------------

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """(B, text_tokens) int64 ids: start token, prompt, end token, padded with the end token, truncated to fit."""
        prompts = check_texts(prompts, "prompt")
        n = self.config.text_tokens
        if self.backend == "transformers":
            ids = self.tokenizer(prompts, truncation=True, max_length=n, padding="max_length",
                                 return_tensors="pt")["input_ids"]
        else:
            ids = self.tokenizer(prompts, context_length=n)
            # open_clip pads with 0; the public (HF) tokenizer pads with <|endoftext|>, which changes the causal
            # hidden states of the padding positions the denoiser attends to.
            after_end = torch.cumsum(ids == _OPEN_CLIP_EOT, dim=1) > 0
            ids = torch.where(after_end & (ids == 0), torch.full_like(ids, _OPEN_CLIP_EOT), ids)
        return ids.to(device=self.device, dtype=torch.int64)

    @torch.no_grad()
    def _text_forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, L) → (hidden (B, L, text_width), projected pooled (B, projection_dim))."""
        m = self.model
        if self.backend == "transformers":
            out = m.text_model(input_ids=ids)
            return out.last_hidden_state, m.text_projection(out.pooler_output)
        cast = m.token_embedding.weight.dtype
        x = m.token_embedding(ids).to(cast) + m.positional_embedding.to(cast)
        x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask))
        pooled = x[torch.arange(len(x), device=x.device), ids.argmax(dim=-1)]  # first <|endoftext|>
        proj = m.text_projection
        return x, (proj(pooled) if isinstance(proj, torch.nn.Module) else pooled @ proj)

    @torch.no_grad()
    def _image_forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels (B, 3, S, S) → (hidden (B, tokens, vision_width) before post-LN, projected pooled (B, proj))."""
        m = self.model
        if self.backend == "transformers":
            out = m.vision_model(pixel_values=pixels)
            return out.last_hidden_state, m.visual_projection(out.pooler_output)
        v = m.visual
        x = v.conv1(pixels).flatten(2).transpose(1, 2)  # (B, grid², width)
        cls_token = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(len(x), 1, -1)
        x = torch.cat([cls_token, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.transformer(v.ln_pre(x))
        pooled = v.ln_post(x[:, 0])
        return x, pooled @ v.proj

    # -- the contract ------------------------------------------------------------------------------------------------

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text context of the ASLDM: (B, 77, text_width) float32 = the text tower's ``last_hidden_state``.

        Raises:
            ValueError: ``prompts`` not a non-empty list of strings.
        """
        hidden, _ = self._text_forward(self.tokenize(prompts))
        return hidden.float()

    def encode_image(self, images: np.ndarray | torch.Tensor | Sequence[np.ndarray]) -> torch.Tensor:
        """Image context of the ASLDM: (B, image_tokens, vision_width) float32 = CLS + patch tokens of the vision
        tower's ``last_hidden_state`` (no post-LayerNorm).

        Args:
            images: (B, H, W, 3|4) uint8, row 0 = top (or a list of (H, W, 3|4)); RGBA is composited on white.

        Raises:
            ValueError: see :func:`check_images` (dtype, shape, sides < 16 px).
        """
        pixels = preprocess_images(images, self.config.image_size, self.device, self.dtype)
        hidden, _ = self._image_forward(pixels)
        return hidden.float()

    def unconditional(self, batch_size: int, condition: str) -> torch.Tensor:
        """The embedding the public code uses for classifier-free guidance (and for dropped conditions in training).

        Args:
            batch_size: B >= 1.
            condition: ``"text"`` → the encoding of the empty prompt ``""``, (B, 77, text_width);
                ``"image"`` → zeros, (B, image_tokens, vision_width).

        Returns:
            float32 tensor on :attr:`device`.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        tokens, width = self.context_shape(condition)
        if condition == "image":
            return torch.zeros(batch_size, tokens, width, device=self.device)
        if self._uncond_text is None:
            self._uncond_text = self.encode_text([""])
        return self._uncond_text.expand(batch_size, -1, -1).clone()

    def encode(self, condition: str, values: Sequence[str] | np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """:meth:`encode_text` (``condition == "text"``, values = prompts) or :meth:`encode_image` (images)."""
        if condition == "text":
            return self.encode_text(values)
        if condition == "image":
            return self.encode_image(values)
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")

    def text_embeds(self, prompts: Sequence[str]) -> torch.Tensor:
        """(B, projection_dim) float32 L2-normalised projected text embeddings (``get_text_features``) for the
        SITA-VAE alignment loss."""
        _, proj = self._text_forward(self.tokenize(prompts))
        return F.normalize(proj.float(), dim=-1)

    def image_embeds(self, images: np.ndarray | torch.Tensor | Sequence[np.ndarray]) -> torch.Tensor:
        """(B, projection_dim) float32 L2-normalised projected image embeddings (``get_image_features``)."""
        pixels = preprocess_images(images, self.config.image_size, self.device, self.dtype)
        _, proj = self._image_forward(pixels)
        return F.normalize(proj.float(), dim=-1)


def _open_clip_cached_file(arch: str, tag: str, pretrained_cfg: dict) -> str:
    """The local file of open_clip weights ``arch``/``tag`` in the Hugging Face cache, never downloading."""
    hub = pretrained_cfg.get("hf_hub", "")
    if not hub:
        raise ModelNotFoundError(f"open_clip weights {arch}:{tag} are only available by URL; download them and pass "
                                 f"'{arch}:<file>' (or allow downloads)")
    from huggingface_hub import snapshot_download

    repo = hub.rstrip("/").split("/")
    repo_id = "/".join(repo[:2])
    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as err:  # LocalEntryNotFoundError and friends
        raise ModelNotFoundError(f"open_clip weights {arch}:{tag} ({repo_id}) are not in the Hugging Face cache; "
                                 f"download them once (`huggingface-cli download {repo_id}`) or allow downloads "
                                 f"({type(err).__name__})") from err
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if (folder / name).is_file():
            return os.fspath(folder / name)
    raise ModelNotFoundError(f"no open_clip weight file in the cached {repo_id} at {str(folder)!r}")
