"""Weights of the Michelangelo networks: the public Lightning checkpoints, and our own saved format.

Public checkpoints (``huggingface.co/Maikou/Michelangelo``, ``checkpoints/aligned_shape_latents/shapevae-256.ckpt``,
``checkpoints/image_cond_diffuser_asl/image-ASLDM-256.ckpt``, ``checkpoints/text_cond_diffuser_asl/
text-ASLDM-256.ckpt``) are PyTorch Lightning files whose ``state_dict`` holds the parameters of

- ``AlignedShapeAsLatentPLModule`` (``michelangelo/models/tsal/asl_pl_module.py``) for shapevae-256:
  ``self.model`` = ``CLIPAlignedShapeAsLatentModule`` (``clip_asl_module.py``) with children ``shape_model``
  (``AlignedShapeLatentPerceiver``), the parameter ``shape_projection`` and ``clip_model`` (a full Hugging Face
  ``CLIPModel``, frozen; its ``logit_scale`` is the contrastive temperature);
- ``ClipASLDiffuser`` (``michelangelo/models/asl_diffusion/clip_asl_diffuser_pl_module.py``) for the two ASLDMs:
  ``first_stage_model`` = the module above after ``set_shape_model_only()`` (``clip_model`` set to ``None``, so no
  CLIP weights under it), ``cond_stage_model`` = ``FrozenCLIPImageGridEmbedder`` / ``FrozenAlignedCLIPTextEmbedder``
  (``conditional_encoders/encoder_factory.py``), which keep their ``CLIPModel`` in a plain ``OrderedDict``, so
  NOTHING of it is in the state dict; ``model`` = ``ConditionalASLUDTDenoiser``. ``z_scale_factor`` is a plain float
  (1.0) unless ``scale_by_std`` (false in both configs), in which case it is a buffer ``z_scale_factor``.

Key mapping (our module paths equal the public sub-paths, so it is a prefix rename):

=====================================================  ==============================  ===========================
public key                                             ours                            file
=====================================================  ==============================  ===========================
``model.shape_model.<p>``                              ``ShapeVAE.<p>``                shapevae-256
``model.shape_projection``                             ``ShapeVAE.shape_projection``   shapevae-256
``model.clip_model.logit_scale`` (optional)            ``ShapeVAE.logit_scale``        shapevae-256
``model.clip_model.<p>``                               skipped -> ``clip_state[<p>]``  shapevae-256
``first_stage_model.model.shape_model.<p>``            ``ShapeVAE.<p>``                *-ASLDM-256
``first_stage_model.model.shape_projection``           ``ShapeVAE.shape_projection``   *-ASLDM-256
``model.<p>``                                          ``ASLDMDenoiser.<p>``           *-ASLDM-256
``z_scale_factor`` (optional buffer)                   ``PublicCheckpoint.z_scale...`` *-ASLDM-256
``first_stage_model.model.clip_model.<p>``,            skipped -> ``clip_state[<p>]``  *-ASLDM-256 (not expected)
``cond_stage_model.clip*.<p>`` / ``cond_stage_model.<p>``
=====================================================  ==============================  ===========================

The CLIP tower is not one of our modules: the conditioner (helper module ``conditioner.py``) loads
``openai/clip-vit-large-patch14`` itself (the same weights the public code loads from
``./checkpoints/clip/clip-vit-large-patch14``); CLIP keys found in a checkpoint are returned, prefix-stripped, in
``PublicCheckpoint.clip_state`` and otherwise ignored. Everything else is strict: a missing key, an unexpected key or a
wrong shape raises :class:`CheckpointError` listing every such key (with expected vs found shapes).
``logit_scale`` is absent from the ASLDM files; it is then filled with ``config.vae.logit_scale_init`` and listed in
``PublicCheckpoint.filled_defaults``.

Reading: ``torch.load(weights_only=True)``; a Lightning file that also pickles its ``hyper_parameters`` (OmegaConf
objects, refused by the weights-only unpickler) is read again with an unpickler restricted to torch's weights-only
allowlist that replaces every other object by an inert placeholder: the tensors load, no code from the file runs.
``.safetensors`` files with the same keys are read too.

Our format (what ``python -m backend train shape_vae|shape_ldm`` writes, see :func:`save_checkpoint`): a directory
with ``config.json`` (``{"format": "latentforge-michelangelo", "version": 1, "config": config_to_dict(config),
"modules": [...], "metadata": {...}}``) and one ``<name>.safetensors`` per module (``vae``, ``denoiser``).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..params import config_from_dict, config_to_dict
from .asldm import ASLDMDenoiser
from .config import MichelangeloConfig, get_preset
from .shape_vae import ShapeVAE

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointError", "PublicCheckpoint", "PUBLIC_PREFIXES", "read_state_dict", "detect_public_preset",
    "load_public_checkpoint", "build_public_models", "save_checkpoint", "load_checkpoint", "is_our_checkpoint",
    "FORMAT_NAME", "FORMAT_VERSION", "CONFIG_FILE",
]

FORMAT_NAME = "latentforge-michelangelo"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MODULE_NAMES = ("vae", "denoiser")


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not match the expected architecture (the message lists what and why)."""


@dataclass(frozen=True)
class _Layout:
    vae_prefix: str
    projection_key: str
    logit_scale_key: str | None
    denoiser_prefix: str | None
    clip_prefixes: tuple[str, ...]


PUBLIC_PREFIXES: dict[str, _Layout] = {
    "vae": _Layout(vae_prefix="model.shape_model.", projection_key="model.shape_projection",
                   logit_scale_key="model.clip_model.logit_scale", denoiser_prefix=None,
                   clip_prefixes=("model.clip_model.",)),
    "asldm": _Layout(vae_prefix="first_stage_model.model.shape_model.",
                     projection_key="first_stage_model.model.shape_projection", logit_scale_key=None,
                     denoiser_prefix="model.",
                     clip_prefixes=("first_stage_model.model.clip_model.", "cond_stage_model.")),
}
"""Key layouts of the public checkpoint files: ``"vae"`` = shapevae-256.ckpt, ``"asldm"`` = image/text-ASLDM-256."""

Z_SCALE_KEY = "z_scale_factor"


@dataclass
class PublicCheckpoint:
    """A public checkpoint's tensors, renamed to our module paths and checked against ``config``.

    Attributes:
        config: the architecture the tensors were checked against.
        vae_state: ``ShapeVAE`` state dict (every key of ``ShapeVAE(config.vae).state_dict()``).
        denoiser_state: ``ASLDMDenoiser`` state dict, or ``None`` for a VAE-only file.
        clip_state: CLIP tower tensors found in the file, prefix stripped (Hugging Face ``CLIPModel`` names for
            ``model.clip_model.*``); not validated, not needed (the conditioner loads CLIP separately).
        z_scale_factor: the file's ``z_scale_factor`` buffer if it has one, else ``None`` (use the config's).
        filled_defaults: our keys the file does not carry and that were filled from the config (``logit_scale``).
        source: where the tensors came from (path or ``"<state_dict>"``).
    """

    config: MichelangeloConfig
    vae_state: dict[str, torch.Tensor]
    denoiser_state: dict[str, torch.Tensor] | None
    clip_state: dict[str, torch.Tensor] = field(default_factory=dict)
    z_scale_factor: float | None = None
    filled_defaults: list[str] = field(default_factory=list)
    source: str = "<state_dict>"


# ---------------------------------------------------------------------------------------------------------------------
# Reading files.
# ---------------------------------------------------------------------------------------------------------------------

class _Skipped(dict):
    """Stand-in for any pickled object outside torch's weights-only allowlist (e.g. the OmegaConf configs or
    ``AttributeDict`` of a Lightning checkpoint's ``hyper_parameters``): absorbs construction arguments, items,
    appends and state, and runs no code."""

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        super().__init__()

    def __call__(self, *args, **kwargs):
        return _Skipped()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass

    def __repr__(self):
        return f"<skipped {type(self).__name__}>"


def _restricted_pickle_module():
    """A ``pickle_module`` for ``torch.load`` whose unpickler resolves only the globals of torch's weights-only
    allowlist (tensor/storage rebuilders, dtypes, OrderedDict, …) and maps every other global to a :class:`_Skipped`
    subclass named after it. Nothing named by the file is imported or called."""
    import types

    allowed = dict(torch._weights_only_unpickler._get_allowed_globals())  # noqa: SLF001 - torch's own allowlist

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            full = f"{module}.{name}"
            if full in allowed:
                return allowed[full]
            return type(full, (_Skipped,), {})

    mod = types.ModuleType("latentforge_restricted_pickle")
    mod.Unpickler = Unpickler  # type: ignore[attr-defined]
    mod.load = lambda file, **kw: Unpickler(file, **kw).load()  # type: ignore[attr-defined]
    mod.__version__ = "1"  # type: ignore[attr-defined]
    return mod


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``; if the file also pickles non-tensor objects that torch's weights-only
    unpickler refuses (Lightning ``hyper_parameters`` hold OmegaConf configs), load again with an unpickler restricted
    to the same allowlist that replaces every other object by an inert placeholder. No code from the file runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as first:
        if not hasattr(getattr(torch, "_weights_only_unpickler", None), "_get_allowed_globals"):
            raise CheckpointError(f"{path}: weights-only load failed ({first}); convert it to .safetensors") from first
        log.info("%s: pickles non-tensor objects; loading tensors only", path)
        try:
            return torch.load(path, map_location="cpu", weights_only=False,
                              pickle_module=_restricted_pickle_module())
        except Exception as exc:  # noqa: BLE001 - any failure means the file is not a readable checkpoint
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({exc})") from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({exc})") from exc


def read_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The flat ``{key: tensor}`` of a checkpoint.

    Args:
        source: a ``.ckpt`` / ``.pt`` / ``.pth`` / ``.bin`` torch file (a Lightning checkpoint's ``"state_dict"`` is
            taken; a bare state dict is used as is), a ``.safetensors`` file, or an in-memory mapping (either form).

    Raises:
        CheckpointError: missing/unreadable file, unknown suffix, or a non-tensor value where a tensor must be.
    """
    if isinstance(source, Mapping):
        data: Any = source
        where = "<state_dict>"
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint file not found: {path}")
        suffix = path.suffix.lower()
        if suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load_file
            try:
                data = load_file(str(path), device="cpu")
            except (SafetensorError, OSError) as exc:
                raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
        elif suffix in (".ckpt", ".pt", ".pth", ".bin"):
            data = _torch_load(path)
        else:
            raise CheckpointError(f"{path}: unknown checkpoint suffix {suffix!r}; expected .ckpt, .pt, .pth, .bin "
                                  f"or .safetensors")
    if isinstance(data, Mapping) and "state_dict" in data and isinstance(data["state_dict"], Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{where}: expected a state dict (mapping of names to tensors), "
                              f"got {type(data).__name__}")
    bad = sorted(str(k) for k, v in data.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{where}: {len(bad)} entries are not (str -> tensor): {_preview(bad)}")
    return dict(data)


def _preview(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _mismatches(unexpected: list[str], missing: list[str], wrong_shape: list[str]) -> list[str]:
    """One sentence per non-empty kind of state-dict mismatch (keys sorted, long lists shortened)."""
    kinds = (("unexpected key(s)", unexpected), ("missing key(s)", missing), ("key(s) with the wrong shape", wrong_shape))
    return [f"{len(keys)} {what}: {_preview(sorted(keys))}" for what, keys in kinds if keys]


# ---------------------------------------------------------------------------------------------------------------------
# The public checkpoints.
# ---------------------------------------------------------------------------------------------------------------------

def detect_public_preset(state: Mapping[str, torch.Tensor]) -> str:
    """Which public file a state dict is: ``"shapevae-256"``, ``"image-ASLDM-256"`` or ``"text-ASLDM-256"``.

    shapevae-256 has ``model.shape_model.*``; the ASLDMs have ``first_stage_model.*`` and ``model.backbone.*`` and
    differ in the context width (``model.context_embed.1.weight`` (768, 1024) image vs (768, 768) text) and depth
    (6 vs 8 encoder blocks). Raises CheckpointError if the keys match none of them.
    """
    keys = list(state)
    if any(k.startswith(PUBLIC_PREFIXES["vae"].vae_prefix) for k in keys):
        return "shapevae-256"
    if any(k.startswith(PUBLIC_PREFIXES["asldm"].vae_prefix) for k in keys) and \
            any(k.startswith("model.backbone.") for k in keys):
        ctx = state.get("model.context_embed.1.weight", state.get("model.context_embed.weight"))
        layers = len({k.split(".")[3] for k in keys if k.startswith("model.backbone.encoder.")})
        for name in ("image-ASLDM-256", "text-ASLDM-256"):
            d = get_preset(name).denoiser
            if ctx is not None and ctx.shape[-1] == d.context_dim and layers == d.layers:
                return name
        raise CheckpointError(f"an ASLDM checkpoint with context dim "
                              f"{None if ctx is None else ctx.shape[-1]} and {layers} encoder blocks matches no "
                              f"public preset (image: 1024 / 6, text: 768 / 8); pass its MichelangeloConfig")
    raise CheckpointError(f"not a public Michelangelo checkpoint: no 'model.shape_model.*' or "
                          f"'first_stage_model.model.shape_model.*' keys (first keys: {_preview(sorted(keys), 5)})")


def _expected_shapes(config: MichelangeloConfig) -> tuple[dict[str, tuple], dict[str, tuple] | None]:
    with torch.device("meta"):
        vae = {k: tuple(v.shape) for k, v in ShapeVAE(config.vae).state_dict().items()}
        den = None if config.denoiser is None else \
            {k: tuple(v.shape) for k, v in ASLDMDenoiser(config.denoiser).state_dict().items()}
    return vae, den


def load_public_checkpoint(source: str | os.PathLike | Mapping[str, Any],
                           config: str | MichelangeloConfig | None = None) -> PublicCheckpoint:
    """Read a public Michelangelo checkpoint and rename its tensors to our modules' keys.

    Args:
        source: path to the ``.ckpt`` (or a ``.safetensors`` with the same keys) or an in-memory state dict.
        config: a preset name (``"shapevae-256"``, ``"image-ASLDM-256"``, ``"text-ASLDM-256"``) or a
            :class:`MichelangeloConfig` (its ``denoiser`` decides the layout: ``None`` -> shapevae file, else ASLDM
            file); ``None`` detects the preset from the keys (:func:`detect_public_preset`).

    Returns:
        :class:`PublicCheckpoint` whose ``vae_state`` / ``denoiser_state`` load with ``strict=True`` into
        ``ShapeVAE(config.vae)`` / ``ASLDMDenoiser(config.denoiser)``.

    Raises:
        CheckpointError: unreadable file, or keys missing / unexpected / of the wrong shape (all listed, each with
            its public key name, and expected vs found shapes).
    """
    where = "<state_dict>" if isinstance(source, Mapping) else str(source)
    state = read_state_dict(source)
    if config is None:
        config = detect_public_preset(state)
    if isinstance(config, str):
        try:
            config = get_preset(config)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from exc
    if not isinstance(config, MichelangeloConfig):
        raise CheckpointError(f"config must be a preset name or MichelangeloConfig, got {type(config).__name__}")
    layout = PUBLIC_PREFIXES["vae" if config.denoiser is None else "asldm"]
    want_vae, want_den = _expected_shapes(config)

    vae_state: dict[str, torch.Tensor] = {}
    den_state: dict[str, torch.Tensor] = {}
    clip_state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    z_scale: float | None = None
    # ours-key -> public key, for messages
    origin: dict[str, str] = {}
    for key, tensor in state.items():
        if key == layout.projection_key:
            vae_state["shape_projection"], origin["vae:shape_projection"] = tensor, key
        elif layout.logit_scale_key is not None and key == layout.logit_scale_key:
            vae_state["logit_scale"], origin["vae:logit_scale"] = tensor, key
            clip_state[key[len(layout.clip_prefixes[0]):]] = tensor
        elif key.startswith(layout.vae_prefix):
            ours = key[len(layout.vae_prefix):]
            vae_state[ours], origin["vae:" + ours] = tensor, key
        elif any(key.startswith(p) for p in layout.clip_prefixes):
            prefix = next(p for p in layout.clip_prefixes if key.startswith(p))
            clip_state[key[len(prefix):]] = tensor
        elif layout.denoiser_prefix is not None and key.startswith(layout.denoiser_prefix):
            ours = key[len(layout.denoiser_prefix):]
            den_state[ours], origin["den:" + ours] = tensor, key
        elif key == Z_SCALE_KEY and layout.denoiser_prefix is not None and tensor.numel() == 1:
            z_scale = float(tensor.float().item())
        else:
            unexpected.append(key)

    filled: list[str] = []
    if "logit_scale" not in vae_state and "logit_scale" in want_vae:
        vae_state["logit_scale"] = torch.tensor(float(config.vae.logit_scale_init))
        filled.append("logit_scale")

    def public_name(group: str, ours: str) -> str:
        if group == "vae":
            if ours == "shape_projection":
                return layout.projection_key
            if ours == "logit_scale" and layout.logit_scale_key:
                return layout.logit_scale_key
            return layout.vae_prefix + ours
        return (layout.denoiser_prefix or "") + ours

    missing: list[str] = []
    wrong: list[str] = []
    for group, got, want in (("vae", vae_state, want_vae), ("den", den_state, want_den or {})):
        missing += [public_name(group, k) for k in want if k not in got]
        unexpected += [origin.get(f"{group}:{k}", k) for k in got if k not in want]
        wrong += [f"{public_name(group, k)}: expected {list(want[k])}, found {list(got[k].shape)}"
                  for k in want if k in got and tuple(got[k].shape) != want[k]]
    problems = _mismatches(unexpected, missing, wrong)
    if problems:
        name = "shapevae" if config.denoiser is None else f"{config.condition}-ASLDM"
        raise CheckpointError(f"{where} does not match the {name} architecture "
                              f"(width {config.vae.width}, {config.vae.num_latents} latents): " + "; ".join(problems))
    return PublicCheckpoint(config=config, vae_state=vae_state,
                            denoiser_state=den_state if config.denoiser is not None else None,
                            clip_state=clip_state, z_scale_factor=z_scale, filled_defaults=filled, source=where)


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    try:
        result = module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{what}: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:  # pragma: no cover - strict=True raises first
        raise CheckpointError(f"{what}: missing {result.missing_keys}, unexpected {result.unexpected_keys}")


def build_public_models(source: str | os.PathLike | Mapping[str, Any],
                        config: str | MichelangeloConfig | None = None, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32,
                        ) -> tuple[MichelangeloConfig, ShapeVAE, ASLDMDenoiser | None, PublicCheckpoint]:
    """:func:`load_public_checkpoint`, then build the modules (in eval mode) on ``device`` in ``dtype`` and load them.

    The returned config's ``z_scale_factor`` is the file's when it has one. Raises CheckpointError.
    """
    ckpt = load_public_checkpoint(source, config)
    cfg = ckpt.config
    if ckpt.z_scale_factor is not None:
        cfg = replace(cfg, z_scale_factor=ckpt.z_scale_factor)
    with torch.device("meta"):
        vae = ShapeVAE(cfg.vae)
        den = ASLDMDenoiser(cfg.denoiser) if cfg.denoiser is not None else None
    vae = vae.to_empty(device=device)
    _load_strict(vae, ckpt.vae_state, f"{ckpt.source} (vae)")
    vae = vae.to(dtype).eval()
    if den is not None:
        den = den.to_empty(device=device)
        _load_strict(den, ckpt.denoiser_state or {}, f"{ckpt.source} (denoiser)")
        den = den.to(dtype).eval()
    return cfg, vae, den, ckpt


# ---------------------------------------------------------------------------------------------------------------------
# Our format.
# ---------------------------------------------------------------------------------------------------------------------

def save_checkpoint(directory: str | os.PathLike, config: MichelangeloConfig, modules: Mapping[str, nn.Module],
                    metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``config.json`` + ``<name>.safetensors`` for each module into ``directory`` (created if needed).

    Args:
        directory: output folder; existing files of the same names are replaced atomically (write + rename).
        config: the full model config (its ``config_to_dict`` goes into ``config.json``).
        modules: ``{"vae": ShapeVAE, "denoiser": ASLDMDenoiser}`` (either may be absent; at least one).
        metadata: JSON-serialisable extras (step, losses, data folder, …), stored under ``"metadata"``.

    Returns the directory. Raises ValueError on unknown module names, a module whose config differs from
    ``config``, or non-JSON metadata.
    """
    from safetensors.torch import save_file

    if not modules:
        raise ValueError("save_checkpoint needs at least one module")
    unknown = sorted(set(modules) - set(MODULE_NAMES))
    if unknown:
        raise ValueError(f"unknown module name(s) {unknown}; expected some of {list(MODULE_NAMES)}")
    if "vae" in modules and getattr(modules["vae"], "config", None) != config.vae:
        raise ValueError("modules['vae'].config differs from config.vae")
    if "denoiser" in modules and getattr(modules["denoiser"], "config", None) != config.denoiser:
        raise ValueError("modules['denoiser'].config differs from config.denoiser")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": config_to_dict(config),
              "modules": sorted(modules), "metadata": dict(metadata or {})}
    try:
        text = json.dumps(header, indent=2, sort_keys=True)
    except TypeError as exc:
        raise ValueError(f"metadata is not JSON-serialisable: {exc}") from exc
    for name, module in modules.items():
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
        _atomic_write(out / f"{name}.safetensors", lambda p, t=tensors: save_file(t, str(p), metadata={
            "format": FORMAT_NAME, "module": name}))
    _atomic_write(out / CONFIG_FILE, lambda p: p.write_text(text + "\n"))
    return out


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def is_our_checkpoint(path: str | os.PathLike) -> bool:
    """True if ``path`` is a directory written by :func:`save_checkpoint` (has a ``config.json`` of our format)."""
    cfg = Path(path) / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


@dataclass
class LoadedCheckpoint:
    """What :func:`load_checkpoint` returns: the config, the modules found (eval mode), and the metadata."""

    config: MichelangeloConfig
    vae: ShapeVAE | None
    denoiser: ASLDMDenoiser | None
    metadata: dict[str, Any]


def load_checkpoint(directory: str | os.PathLike, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> LoadedCheckpoint:
    """Read a directory written by :func:`save_checkpoint`; modules are built from its config and loaded strictly.

    Raises:
        CheckpointError: no/invalid ``config.json``, wrong format or version, a listed module file missing, or a
            state dict that does not match the config (missing / unexpected / wrong-shape keys).
    """
    from safetensors.torch import load_file

    root = Path(directory)
    cfg_path = root / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"{root}: no {CONFIG_FILE}; not a LatentForge Michelangelo checkpoint")
    try:
        header = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{cfg_path}: unreadable JSON ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{cfg_path}: format is not {FORMAT_NAME!r}")
    if header.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{cfg_path}: version {header.get('version')!r} not supported "
                              f"(this code reads {FORMAT_VERSION})")
    try:
        config = config_from_dict(MichelangeloConfig, header["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{cfg_path}: invalid config ({exc})") from exc
    names = header.get("modules") or []
    unknown = sorted(set(names) - set(MODULE_NAMES))
    if unknown:
        raise CheckpointError(f"{cfg_path}: unknown module name(s) {unknown}")
    if "denoiser" in names and config.denoiser is None:
        raise CheckpointError(f"{cfg_path}: lists a denoiser but config.denoiser is null")
    built: dict[str, nn.Module] = {}
    for name in names:
        file = root / f"{name}.safetensors"
        if not file.is_file():
            raise CheckpointError(f"{root}: {file.name} listed in {CONFIG_FILE} but missing")
        state = load_file(str(file), device="cpu")
        with torch.device("meta"):  # no random init: every tensor comes from the file
            module: nn.Module = ShapeVAE(config.vae) if name == "vae" else ASLDMDenoiser(config.denoiser)
        _check_state(module, state, str(file))
        module = module.to_empty(device="cpu")
        _load_strict(module, state, str(file))
        built[name] = module.to(device=device, dtype=dtype).eval()
    return LoadedCheckpoint(config=config, vae=built.get("vae"), denoiser=built.get("denoiser"),  # type: ignore
                            metadata=dict(header.get("metadata") or {}))


def _check_state(module: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    problems = _mismatches([k for k in state if k not in want], [k for k in want if k not in state],
                           [f"{k}: expected {list(want[k])}, found {list(state[k].shape)}"
                            for k in want if k in state and tuple(state[k].shape) != want[k]])
    if problems:
        raise CheckpointError(f"{where} does not match its config: " + "; ".join(problems))
