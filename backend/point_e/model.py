"""Loading Point-E models for the pipeline (one loader per network, for the shared model cache).

:func:`load_point_e` resolves one name to a :class:`PointENet`:

- a public preset name (``base40M-textvec``, ``base40M``, ``base300M``, ``base1B``, ``upsample``, ``sdf``): the file in
  :func:`.checkpoint.cache_dir`, fetched only with ``allow_download``;
- a path to a ``.pt`` (or ``.safetensors``) state dict with the public keys; the architecture is detected from its keys
  (:func:`.checkpoint.detect_preset`);
- ``tiny-textvec``, ``tiny-image_grid``, ``tiny-upsample``, ``tiny-sdf``: our tiny presets with seeded random weights
  (what the ``tiny-random`` model of the pipeline uses), no file, no network.

:func:`load_point_e_clip` loads the CLIP tower a base model needs (``"text:<id>"`` or ``"image:<id>"``;
``<id>`` = ``tiny-random`` for the tiny towers). Nothing downloads unless ``allow_download``; nothing loads at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..models.base import TINY_RANDOM, ModelNotFoundError
from ..models.devices import check_fits, resolve_device, weight_bytes
from .checkpoint import (CheckpointError, checkpoint_path, detect_preset, download_checkpoint, load_state_dict_checked,
                         read_state_dict)
from .clip import PointECLIP
from .config import PRESETS, TINY_PRESETS, PointEPreset, get_preset
from .transformer import PointCloudSDFModel, PointDiffusionTransformer

__all__ = ["PointENet", "build_net", "load_point_e", "load_point_e_clip", "download_point_e"]


@dataclass
class PointENet:
    """One loaded Point-E network.

    Attributes:
        preset: its architecture and sampling defaults.
        net: :class:`~.transformer.PointDiffusionTransformer` or :class:`~.transformer.PointCloudSDFModel`, eval,
            no gradients.
        model_id: what was asked for (job metadata).
        device, dtype: where and in what precision the weights are.
    """

    preset: PointEPreset
    net: nn.Module
    model_id: str
    device: torch.device
    dtype: torch.dtype


def build_net(preset: PointEPreset) -> nn.Module:
    """An uninitialised-by-file module for ``preset`` (random public init; build under ``torch.device('meta')`` for
    shapes only)."""
    return PointCloudSDFModel(preset.sdf) if preset.sdf is not None else PointDiffusionTransformer(preset.model)


def load_point_e(model: str, device: str | torch.device = "auto", dtype: torch.dtype | None = None,
                 allow_download: bool = False) -> PointENet:
    """Load one Point-E network (see the module docstring for the accepted names).

    Args:
        model: a public preset name, a ``.pt`` / ``.safetensors`` path, or a tiny preset name.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``…; dtype: weight dtype (default float32, as the public code).
        allow_download: fetch a missing public file.

    Raises:
        ModelNotFoundError: unknown name, missing path, a public file not on this machine, or a file whose keys do
            not match (the message lists every bad key).
    """
    if not isinstance(model, str) or not model.strip():
        raise ModelNotFoundError("Point-E model must be a non-empty string (e.g. base40M-textvec or a .pt file)")
    model = model.strip()
    device = resolve_device(device)
    dtype = dtype or torch.float32
    if model in TINY_PRESETS:
        preset = get_preset(model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = build_net(preset)
            for layer in net.modules():  # unit-gain weights: the public init (small, output layer zero) would make
                if isinstance(layer, nn.Linear):  # a tiny model's outputs almost ignore its inputs
                    nn.init.normal_(layer.weight, std=layer.in_features ** -0.5)
    else:
        path = Path(model).expanduser()
        try:
            if model in PRESETS:
                source = checkpoint_path(model, allow_download)
            elif path.is_file():
                source = path
            else:
                raise ModelNotFoundError(f"unknown Point-E model {model!r}: expected one of "
                                         f"{', '.join([*PRESETS, TINY_RANDOM])} or the path of a .pt file")
            state = read_state_dict(source)
            preset = get_preset(model) if model in PRESETS else detect_preset(state)
            with torch.device("meta"):
                net = build_net(preset)
            net = net.to_empty(device="cpu")
            load_state_dict_checked(net, state, str(source))
        except CheckpointError as err:
            raise ModelNotFoundError(f"could not load {model!r} as a Point-E model: {err}") from err
    check_fits(device, weight_bytes([net], dtype), f"Point-E model {model!r}")
    net = net.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return PointENet(preset=preset, net=net, model_id=model, device=device, dtype=dtype)


def load_point_e_clip(model: str, device: str | torch.device = "auto", dtype: torch.dtype | None = None,
                      allow_download: bool = False) -> PointECLIP:
    """The CLIP tower named ``"<kind>:<model id>"`` (kind ``text`` or ``image``; id ``tiny-random`` for the tiny
    towers, else a Hugging Face id or folder).

    Raises:
        ValueError: a malformed name. ModelNotFoundError: not cached and downloading not allowed.
    """
    kind, _, model_id = model.partition(":")
    if kind not in ("text", "image") or not model_id:
        raise ValueError(f"CLIP name must be 'text:<id>' or 'image:<id>', got {model!r}")
    device = resolve_device(device)
    if model_id == TINY_RANDOM:
        return PointECLIP.tiny_random(0).to(device)
    return PointECLIP.from_pretrained(model_id, kind, device, dtype or torch.float32, allow_download)


def download_point_e(name: str) -> Path:
    """Fetch public checkpoint ``name`` (a key of :data:`.config.PRESETS`) and the CLIP tower it is conditioned on
    (text for ``base40M-textvec``, vision for the image-grid models and the upsampler; none for ``sdf``) — the only
    function here that downloads. Returns the checkpoint's local path.

    Raises:
        ValueError: unknown name. OSError / ModelNotFoundError: the download failed.
    """
    path = download_checkpoint(name)
    preset = get_preset(name)
    if preset.model is not None:
        kind = "text" if preset.model.kind == "textvec" else "image"
        PointECLIP.from_pretrained(preset.clip_model_id, kind, "cpu", allow_download=True)
    return path
