"""LION checkpoints: the released files, our own format, and the checked load onto :class:`~.model.LionModel`.

Released files (github.com/nv-tlabs/LION README, ``models/lion.py``, ``trainers/train_prior.py``): one archive
``lion_ckpt.zip`` in the Hugging Face repository ``xiaohui2022/lion_ckpt`` (sha256 5a31da22…a4146, the public
``script/check_sum.py``) holding ``unconditional/<category>/checkpoints/model.pt`` (+ its ``cfg.yml``). Each
``model.pt`` is a ``torch.save`` dict: ``vae_state_dict`` (the VAE ``models/vae_adain.Model``: ``style_encoder.*``,
``encoder.layers.*``, ``decoder.layers.*``), ``dae_state_dict`` (``nn.ModuleList([global prior, local prior])``:
``0.*``, ``1.*``), plus training state we ignore (``epoch``, ``global_step``, ``grad_scalar``, optimisers and
schedulers). Our module names are the public ones, so the mapping is ``vae.<key>`` / ``priors.<key>``; a leading
``module.`` (DistributedDataParallel) is dropped. Loading is strict: a missing, unexpected or wrong-shape key raises
:class:`CheckpointError` listing every such key with expected vs found shapes.

A conditioned public checkpoint (``script/train_prior_clip.sh``: ``clipforge.enable``, the shape-latent prior a
``PriorSEClip``) has the same VAE and the extra prior keys ``0.clip_feat_mapping.{weight,bias}`` (Conv1d, (nf,
feat_dim, 1)), ``0.all_modules.<i>.conv1.weight`` (nf, 2·nf, 1, 1) instead of (nf, nf, 1, 1), and
``1.clip_forge_mapping.{weight,bias}`` (Linear feat_dim → time_dim), ``1.style_clip.{weight,bias}`` (Linear
style_dim + time_dim → style_dim). :func:`public_config` reads ``clip_dim`` from ``clip_feat_mapping``; the CLIP is
the public scripts' ViT-B/32 (``ViT-B-32/openai``). None has been released (the public ``demo.py`` names one that
"is not released yet").

Where files are looked for: ``$LATENTFORGE_LION_CKPT`` (the unzipped ``lion_ckpt`` folder), else
``~/.cache/latentforge/lion``. Only :func:`download_checkpoint` (or ``allow_download``) touches the network.
Files are read with ``torch.load(weights_only=True)``.

Our format (:func:`save_checkpoint`): a folder with ``config.json`` (``format``, ``config``, ``metadata``) and
``model.safetensors`` (our state dict).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import zipfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..models.base import TINY_RANDOM, ModelNotFoundError
from ..models.devices import resolve_device
from ..models.state_dicts import CheckpointError, check_state_dict, load_state_dict_checked, preview_keys
from ..params import ParamError, config_from_dict, config_to_dict
from .config import HF_REPO, PRESETS, TINY_PRESETS, LionConfig, get_preset
from .model import LionModel

__all__ = ["CheckpointError", "ARCHIVE", "FORMAT_NAME", "cache_dir", "public_member", "checkpoint_path",
           "download_checkpoint", "read_public_state_dict", "check_state_dict", "load_state_dict_checked",
           "public_config", "build_model", "save_checkpoint", "load_checkpoint", "load_lion"]

ARCHIVE = "lion_ckpt.zip"
CACHE_ENV = "LATENTFORGE_LION_CKPT"
FORMAT_NAME = "latentforge-lion"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def cache_dir() -> Path:
    """The unzipped release folder: ``$LATENTFORGE_LION_CKPT`` or ``~/.cache/latentforge/lion``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "latentforge" / "lion"


def public_member(name: str) -> str:
    """Path of preset ``name``'s ``model.pt`` inside the release: ``unconditional/<name>/checkpoints/model.pt``."""
    return f"unconditional/{name}/checkpoints/model.pt"


def checkpoint_path(name: str, allow_download: bool = False) -> Path:
    """The local ``model.pt`` of released preset ``name`` (fetched first when missing and ``allow_download``).

    Raises:
        ValueError: unknown name. ModelNotFoundError: not on this machine and downloading not allowed or failed.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown LION checkpoint {name!r}; known: {', '.join(PRESETS)}")
    path = cache_dir() / public_member(name)
    if path.is_file():
        return path
    if not allow_download:
        raise ModelNotFoundError(
            f"LION checkpoint {name!r} is not on this machine (looked for {path}). Allow downloads once (it fetches "
            f"{ARCHIVE} from huggingface.co/{HF_REPO}), unzip that archive into ${CACHE_ENV}, or pass the path of "
            f"its model.pt as the model.")
    try:
        return download_checkpoint(name)
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(f"could not download LION checkpoint {name!r}: {err}") from err


def download_checkpoint(name: str) -> Path:
    """Fetch ``lion_ckpt.zip`` (Hugging Face cache) and extract preset ``name``'s ``model.pt`` (and ``cfg.yml``)
    into :func:`cache_dir`; kept if already there.

    Raises:
        ValueError: unknown name, or the archive lacks the member. OSError: network or disk errors.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown LION checkpoint {name!r}; known: {', '.join(PRESETS)}")
    target = cache_dir() / public_member(name)
    if target.is_file():
        return target
    from huggingface_hub import hf_hub_download

    archive = Path(hf_hub_download(HF_REPO, ARCHIVE))
    with zipfile.ZipFile(archive) as zf:
        wanted = {public_member(name): target,
                  public_member(name).replace("checkpoints/model.pt", "cfg.yml"): target.parent.parent / "cfg.yml"}
        for member in zf.namelist():
            for suffix, dest in wanted.items():
                if member.endswith(suffix):
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    tmp = dest.with_suffix(dest.suffix + ".part")
                    with zf.open(member) as src, open(tmp, "wb") as out:
                        shutil.copyfileobj(src, out, length=1 << 20)
                    os.replace(tmp, dest)
    if not target.is_file():
        raise ValueError(f"{archive} has no member ending in {public_member(name)}")
    return target


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({first})") from exc


def _strip(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def read_public_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Our flat state dict (``vae.*``, ``priors.*``) from a released ``model.pt`` (path or its loaded dict), or from
    a mapping already in our names.

    Raises:
        CheckpointError: unreadable file, no ``vae_state_dict`` / ``dae_state_dict``, or non-tensor entries.
    """
    if isinstance(source, Mapping):
        data, where = source, "<checkpoint>"
    else:
        path = Path(source).expanduser()
        where = str(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint file not found: {path}")
        data = _torch_load(path)
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{where}: expected a dict, got {type(data).__name__}")
    if "vae_state_dict" in data or "dae_state_dict" in data:
        missing = [k for k in ("vae_state_dict", "dae_state_dict") if not isinstance(data.get(k), Mapping)]
        if missing:
            raise CheckpointError(f"{where}: a LION checkpoint needs both vae_state_dict and dae_state_dict; "
                                  f"missing or not a dict: {', '.join(missing)}")
        state = {f"vae.{_strip(k)}": v for k, v in data["vae_state_dict"].items()}
        state.update({f"priors.{_strip(k)}": v for k, v in data["dae_state_dict"].items()})
    elif all(isinstance(k, str) and k.startswith(("vae.", "priors.")) for k in data) and data:
        state = dict(data)
    else:
        keys = ", ".join(sorted(str(k) for k in data)[:10])
        raise CheckpointError(f"{where}: not a LION checkpoint (no vae_state_dict / dae_state_dict; keys: {keys})")
    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{where}: {len(bad)} entries are not tensors: {preview_keys(bad)}")
    return state


CLIP_KEY = "priors.0.clip_feat_mapping.weight"
"""The key that marks a CLIP-conditioned checkpoint (public ``PriorSEClip.clip_feat_mapping``)."""


def public_config(state: Mapping[str, torch.Tensor], base: LionConfig) -> LionConfig:
    """The config of a public-format state dict (our names): ``base`` (a released preset), with ``clip_dim`` =
    ``clip_feat_mapping``'s input width when the checkpoint is CLIP-conditioned (else ``base`` unchanged; the strict
    load then checks every other key and shape)."""
    weight = state.get(CLIP_KEY)
    if weight is None or weight.dim() != 3:
        return base
    return replace(base, clip_dim=int(weight.shape[1]))


def build_model(config: LionConfig, seed: int | None = 0) -> LionModel:
    """A :class:`LionModel` with random weights (public init), seeded when ``seed`` is not None (torch's global
    generator is restored afterwards)."""
    if seed is None:
        return LionModel(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LionModel(config)


def save_checkpoint(directory: str | os.PathLike, model: LionModel, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` of ``model`` into ``directory`` (created; files replaced).

    Raises:
        ValueError: metadata that is not JSON-serialisable.
    """
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT_NAME, "version": 1, "config": config_to_dict(model.config),
              "metadata": dict(metadata or {})}
    try:
        text = json.dumps(header, indent=2, sort_keys=True)
    except TypeError as exc:
        raise ValueError(f"metadata is not JSON-serialisable: {exc}") from exc
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = out / (WEIGHTS_FILE + ".part")
    save_file(tensors, str(tmp), metadata={"format": FORMAT_NAME})
    os.replace(tmp, out / WEIGHTS_FILE)
    (out / (CONFIG_FILE + ".part")).write_text(text + "\n")
    os.replace(out / (CONFIG_FILE + ".part"), out / CONFIG_FILE)
    return out


def load_checkpoint(directory: str | os.PathLike) -> tuple[LionModel, dict[str, Any]]:
    """A model (CPU, float32) and its metadata from a :func:`save_checkpoint` folder.

    Raises:
        CheckpointError: missing files, another format, a bad config or mismatching weights.
    """
    folder = Path(directory).expanduser()
    cfg_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not cfg_path.is_file() or not weights.is_file():
        raise CheckpointError(f"{folder}: not a LION checkpoint folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        header = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{cfg_path}: unreadable ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{cfg_path}: format is not {FORMAT_NAME!r}")
    try:
        config = config_from_dict(LionConfig, header.get("config") or {})
    except ParamError as exc:
        raise CheckpointError(f"{cfg_path}: bad config ({exc})") from exc
    from safetensors.torch import load_file

    with torch.device("meta"):
        model = LionModel(config)
    model = model.to_empty(device="cpu")
    load_state_dict_checked(model, load_file(str(weights), device="cpu"), str(weights))
    return model, dict(header.get("metadata") or {})


def load_lion(model: str, device: str | torch.device = "auto", dtype: torch.dtype | None = None,
              allow_download: bool = False) -> LionModel:
    """Load a LION model for the model cache (eval mode, no gradients).

    ``model`` is a released preset (``chair``, ``airplane``, ``car``: the file in :func:`cache_dir`), a path to a
    public-format ``model.pt`` (the chair architecture, which all released models share; CLIP-conditioned when its
    keys say so, :func:`public_config`), a :func:`save_checkpoint` folder,
    or ``tiny`` / ``tiny-random`` (seeded random weights, no file).

    Raises:
        ModelNotFoundError: unknown name, missing file, or a file whose keys do not match (every bad key listed).
    """
    if not isinstance(model, str) or not model.strip():
        raise ModelNotFoundError("LION model must be a non-empty string (e.g. chair, tiny-random or a model.pt path)")
    model = model.strip()
    device = resolve_device(device)
    try:
        if model in TINY_PRESETS or model == TINY_RANDOM:
            net = build_model(get_preset("tiny"), seed=0)
        elif Path(model).expanduser().is_dir():
            net, _ = load_checkpoint(model)
        else:
            path = Path(model).expanduser()
            if model in PRESETS:
                source, config = checkpoint_path(model, allow_download), get_preset(model)
            elif path.is_file():
                source, config = path, get_preset("chair")
            else:
                raise ModelNotFoundError(f"unknown LION model {model!r}: expected one of "
                                         f"{', '.join([*PRESETS, 'tiny', TINY_RANDOM])}, a model.pt path or a "
                                         f"checkpoint folder")
            state = read_public_state_dict(source)
            config = public_config(state, config)
            with torch.device("meta"):
                net = LionModel(config)
            net = net.to_empty(device="cpu")
            load_state_dict_checked(net, state, str(source))
    except CheckpointError as err:
        raise ModelNotFoundError(f"could not load {model!r} as a LION model: {err}") from err
    return net.to(device=device, dtype=dtype or torch.float32).eval().requires_grad_(False)
