"""CLIP ViT-L/14 conditioning of Point-E, through transformers (torchvision is not needed).

Facts from the public code (``point_e/models/pretrained_clip.py``, OpenAI ``clip`` package, ``ViT-L/14``):

- text vector (``base40M-textvec``): ``encode_text`` = the final-LayerNorm state of the end-of-text token times
  ``text_projection`` (768), L2-normalised. Here: ``CLIPTextModelWithProjection.text_embeds`` of
  ``openai/clip-vit-large-patch14`` (the same weights and the same pooling), normalised; prompts tokenised to 77
  tokens, truncated. The model multiplies it by √768 itself (:mod:`.transformer`).
- image grid (``base40M`` … ``base1B``, ``upsample``): the vision tower's token states after its last block, before
  ``ln_post`` (no projection), CLS dropped: (B, 1024, 256), channels first. Here: ``CLIPVisionModel``'s
  ``last_hidden_state[:, 1:]`` (HF applies ``post_layernorm`` to the pooled CLS only).
- image preprocessing (the ``clip`` package's transform): short side → 224 (bicubic), centre crop 224², RGB in [0, 1],
  CLIP mean/std. Here written in torch (``F.interpolate(mode="bicubic", antialias=True)``; PIL's bicubic filter also
  antialiases when shrinking); RGBA is composited on white (the public code drops alpha; its example images are on
  white).
- unconditional condition (classifier-free guidance): zeros of the condition's shape.

``tiny-random`` builds a 32-wide CLIP (text projection 32; 32² images in 8² patches: 16 grid tokens) from configs with
the real transformers classes and the project's byte-level tokenizer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..michelangelo.conditioner import CLIP_MEAN, CLIP_STD, check_images
from ..models.base import ModelNotFoundError
from ..models.tokenizers import byte_level_clip_tokenizer

__all__ = ["IMAGE_SIZE", "PointECLIP", "preprocess_images"]

IMAGE_SIZE = 224
"""ViT-L/14 input side (16 × 16 patches of 14 px)."""


def preprocess_images(images, image_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W, 3|4) uint8 images (row 0 = top; a list or a (B, H, W, C) array) → (B, 3, S, S) float32 CLIP input.

    RGBA over white, short side → ``image_size`` (bicubic, antialiased), centre crop, CLIP mean/std.

    Raises:
        ValueError: empty batch, not uint8, wrong shape, a side below 16 px (names the image).
    """
    mean = torch.tensor(CLIP_MEAN, device=device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(3, 1, 1)
    out = []
    for im in check_images(images):
        x = im.to(device=device, dtype=torch.float32) / 255.0
        if x.shape[-1] == 4:
            x = x[..., :3] * x[..., 3:] + (1.0 - x[..., 3:])
        x = x.permute(2, 0, 1)[None]
        h, w = x.shape[-2:]
        size = (image_size, round(image_size * w / h)) if h <= w else (round(image_size * h / w), image_size)
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (size[0] - image_size) // 2, (size[1] - image_size) // 2
        out.append((x[0, :, top:top + image_size, left:left + image_size] - mean) / std)
    return torch.stack(out)


class PointECLIP:
    """The frozen CLIP towers a Point-E model needs: ``text`` (``CLIPTextModelWithProjection``) and/or ``vision``
    (``CLIPVisionModel``), with their tokenizer; build with :meth:`from_pretrained` or :meth:`tiny_random`.

    Attributes:
        text, vision: the towers (eval, no gradients) or None when not loaded.
        tokenizer: a ``CLIPTokenizer`` (text only).
        image_size: the vision tower's input side.
    """

    def __init__(self, text=None, vision=None, tokenizer=None, image_size: int = IMAGE_SIZE):
        self.text, self.vision, self.tokenizer, self.image_size = text, vision, tokenizer, image_size
        for tower in (text, vision):
            if tower is not None:
                tower.eval().requires_grad_(False)

    @classmethod
    def tiny_random(cls, seed: int = 0) -> "PointECLIP":
        """Both towers at width 32, seeded (a pure function of ``seed``; the global RNG is left untouched)."""
        from transformers import (CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig,
                                  CLIPVisionModel)

        tokenizer = byte_level_clip_tokenizer()
        text_cfg = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=2, projection_dim=32,
                                  max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
        vision_cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, image_size=32, patch_size=8, projection_dim=32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            text = CLIPTextModelWithProjection(text_cfg)
            vision = CLIPVisionModel(vision_cfg)
        return cls(text, vision, tokenizer, image_size=32)

    @classmethod
    def from_pretrained(cls, model_id: str, kind: str, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32, allow_download: bool = False) -> "PointECLIP":
        """The ``kind`` tower (``"text"`` or ``"image"``) of ``model_id`` from the Hugging Face cache (or a folder).

        Raises:
            ModelNotFoundError: not cached and downloading not allowed (or it failed); the message says what to do.
        """
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModel

        try:
            if kind == "text":
                text = CLIPTextModelWithProjection.from_pretrained(model_id, local_files_only=not allow_download,
                                                                   dtype=dtype)
                tokenizer = CLIPTokenizer.from_pretrained(model_id, local_files_only=not allow_download)
                return cls(text.to(device), None, tokenizer)
            vision = CLIPVisionModel.from_pretrained(model_id, local_files_only=not allow_download, dtype=dtype)
            return cls(None, vision.to(device), None, image_size=vision.config.image_size)
        except (OSError, ValueError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ModelNotFoundError(
                f"CLIP {model_id!r} ({kind} tower) is not on this machine (Hugging Face cache). Download it with "
                f"`python -m backend download base40M-textvec` (or base40M), or run with --allow-download. ({first})"
            ) from err

    def to(self, device: torch.device | str) -> "PointECLIP":
        for tower in (self.text, self.vision):
            if tower is not None:
                tower.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next((self.text or self.vision).parameters()).device

    @torch.no_grad()
    def embed_text(self, prompts: list[str]) -> torch.Tensor:
        """Prompts → (B, D) float32 unit-norm projected text embeddings (D = 768 for ViT-L/14).

        Raises:
            ValueError: no text tower loaded.
        """
        if self.text is None:
            raise ValueError("this CLIP has no text tower")
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=77, truncation=True,
                                return_tensors="pt")
        emb = self.text(input_ids=tokens.input_ids.to(self.device)).text_embeds.float()
        return emb / emb.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def embed_images_grid(self, images) -> torch.Tensor:
        """(H, W, 3|4) uint8 images → (B, 1024, 256) float32 grid tokens, channels first (see the module docstring).

        Raises:
            ValueError: bad images (as :func:`preprocess_images`), or no vision tower loaded.
        """
        if self.vision is None:
            raise ValueError("this CLIP has no vision tower")
        pixels = preprocess_images(images, self.image_size, self.device)
        dtype = next(self.vision.parameters()).dtype
        states = self.vision(pixel_values=pixels.to(dtype)).last_hidden_state
        return states[:, 1:].float().permute(0, 2, 1).contiguous()

