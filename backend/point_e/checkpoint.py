"""The public Point-E checkpoints: where they are, how they are fetched, and the checked load onto our modules.

Files (public ``point_e/models/download.py``, ``MODEL_PATHS``): ``https://openaipublic.azureedge.net/main/point-e/
<file>`` with ``<file>`` = ``base_40m_textvec.pt``, ``base_40m.pt``, ``base_300m.pt``, ``base_1b.pt``,
``upsample_40m.pt``, ``sdf.pt`` (:data:`.config.PRESETS` ``.file``). Each is a bare ``state_dict`` of the public module;
the CLIP towers are NOT in them (the public models hold CLIP in a plain attribute). Our modules use the public
parameter names (:mod:`.transformer`), so the mapping is the identity; loading is strict: a missing key, an unexpected
key or a wrong shape raises :class:`CheckpointError` listing every such key with expected vs found shapes.

Downloads go to :func:`cache_dir` (``$LATENTFORGE_POINT_E_CACHE``, else ``~/.cache/latentforge/point-e``) and happen
only in :func:`download_checkpoint` (``python -m backend download base40M-textvec``) or with ``allow_download``.
Files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import torch

from ..models.base import ModelNotFoundError
from ..models.state_dicts import CheckpointError, check_state_dict, load_state_dict_checked, preview_keys
from .config import PRESETS, PointEPreset, get_preset

__all__ = ["BASE_URL", "CheckpointError", "cache_dir", "checkpoint_url", "checkpoint_path", "download_checkpoint",
           "read_state_dict", "check_state_dict", "load_state_dict_checked", "detect_preset"]

BASE_URL = "https://openaipublic.azureedge.net/main/point-e/"
CACHE_ENV = "LATENTFORGE_POINT_E_CACHE"


def cache_dir() -> Path:
    """Where public Point-E files are kept: ``$LATENTFORGE_POINT_E_CACHE`` or ``~/.cache/latentforge/point-e``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "latentforge" / "point-e"


def checkpoint_url(name: str) -> str:
    """The public URL of preset ``name`` (a key of :data:`.config.PRESETS`)."""
    return BASE_URL + PRESETS[name].file


def checkpoint_path(name: str, allow_download: bool = False) -> Path:
    """The local file of public checkpoint ``name``; fetched first when missing and ``allow_download``.

    Raises:
        ModelNotFoundError: not on this machine and downloading not allowed (or failed); the message says how to get it.
    """
    path = cache_dir() / PRESETS[name].file
    if path.is_file():
        return path
    if not allow_download:
        raise ModelNotFoundError(
            f"Point-E checkpoint {name!r} ({checkpoint_url(name)}) is not on this machine (looked for {path}). "
            f"Download it once with `python -m backend download {name}`, or pass the path of the .pt file as the "
            f"model.")
    try:
        return download_checkpoint(name)
    except OSError as err:
        raise ModelNotFoundError(f"could not download Point-E checkpoint {name!r} from {checkpoint_url(name)}: "
                                 f"{err}") from err


def download_checkpoint(name: str) -> Path:
    """Fetch public checkpoint ``name`` into :func:`cache_dir` (atomic rename; kept if already there).

    Raises:
        ValueError: unknown name. OSError: network or disk errors.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown Point-E checkpoint {name!r}; known: {', '.join(PRESETS)}")
    path = cache_dir() / PRESETS[name].file
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(checkpoint_url(name), timeout=60) as response:
            shutil.copyfileobj(response, out, length=1 << 20)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_state_dict(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{key: tensor}`` of a ``.pt`` / ``.pth`` / ``.bin`` file (weights-only load), a ``.safetensors`` file, or a
    mapping (used as is).

    Raises:
        CheckpointError: missing or unreadable file, or entries that are not (str → tensor).
    """
    if isinstance(source, Mapping):
        data, where = source, "<state_dict>"
    else:
        path = Path(source).expanduser()
        where = str(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint file not found: {path}")
        try:
            if path.suffix.lower() == ".safetensors":
                from safetensors.torch import load_file
                data = load_file(str(path), device="cpu")
            else:
                data = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable checkpoint ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{where}: expected a state dict, got {type(data).__name__}")
    bad = sorted(str(k) for k, v in data.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{where}: {len(bad)} entries are not (str -> tensor): {preview_keys(bad)}")
    return dict(data)


def detect_preset(state: Mapping[str, torch.Tensor]) -> PointEPreset:
    """The public preset whose architecture a state dict has, from its keys and shapes.

    ``encoder_input_proj.weight`` → ``sdf``; ``cond_point_proj.weight`` → ``upsample``; a 2-D ``clip_embed.weight``
    → ``base40M-textvec``; ``clip_embed.1.weight`` → the image-grid base model of that width (512 / 1024 / 2048).

    Raises:
        CheckpointError: none matches (the message names what was found).
    """
    if "encoder_input_proj.weight" in state:
        return get_preset("sdf")
    if "cond_point_proj.weight" in state:
        return get_preset("upsample")
    if "clip_embed.weight" in state:
        return get_preset("base40M-textvec")
    grid = state.get("clip_embed.1.weight")
    if grid is not None:
        for name in ("base40M", "base300M", "base1B"):
            if PRESETS[name].model.width == grid.shape[0]:
                return get_preset(name)
    raise CheckpointError(f"not a Point-E checkpoint: no sdf / upsampler / textvec / image-grid keys with a known width "
                          f"(clip_embed.1.weight {None if grid is None else list(grid.shape)}; "
                          f"{len(state)} keys)")
