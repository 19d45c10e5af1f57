"""DALL-E 2's diffusion prior (Ramesh et al., "Hierarchical Text-Conditional Image Generation with CLIP Latents",
2022, §2.2): a CLIP text embedding → a CLIP image embedding, CLIP-Mesh's target (Khalid et al. 2022, §3.3), through
``dalle2_pytorch`` (``DiffusionPriorNetwork``, ``DiffusionPrior``).

The public prior CLIP-Mesh uses (its README: ``wget …/spaces/NasirKhalid24/Dalle2-Diffusion-Prior/resolve/main/
larger-model.pth``; here :data:`CLIP_MESH_PRIOR`, a file of a Hugging Face *Space*) lives in the space of OpenAI's CLIP
ViT-B/32 (512-d; CLIP-Mesh's ``clip_model: ViT-B/32`` feeds it and scores renders with the same CLIP). Its
architecture, from CLIP-Mesh's configs (``paper.yml``, ``single.yml``): ``DiffusionPriorNetwork(dim=512, depth=12,
dim_head=64, heads=12, normformer=False)`` and ``DiffusionPrior(image_embed_dim=512, timesteps=1000,
cond_drop_prob=0.1, loss_type="l2", condition_on_text_encodings=False)``; the weights are ``torch.load(file)["model"]``
loaded strictly. CLIP-Mesh pins DALLE2-pytorch at commit ``2eac799`` (version 0.1.9, May 2022); the installed
dalle2-pytorch (1.15.6) names and computes a few things differently, so :func:`build_prior` adjusts the modern
classes to compute the pinned function and :func:`convert_clip_mesh_state_dict` renames the checkpoint's keys:

- time embedding ``net.time_embeddings.*`` → ``net.to_time_embeds.0.*`` (the same sinusoid + 2-layer MLP);
- LayerNorm ``gamma`` → ``g``; the pinned LayerNorm's ``beta`` buffers are zeros (checked) and dropped;
- the attention's output norm ``layers.i.0.post_norm`` → ``layers.i.0.to_out.1`` (both apply one LayerNorm after the
  output projection);
- the pinned attention is the plain scaled dot product (``q·k / √dim_head``); modern dalle2 defaults to cosine-sim
  attention: switched off per layer (modern code multiplies q by ``scale`` and q, k by ``√scale``, so
  ``scale = dim_head^-1/4`` gives ``1/√dim_head``);
- the final norm: the pinned plain LayerNorm (modern ``stable=True`` divides by the row max first: switched off);
- modern dalle2 pads the text encodings to ``max_text_len`` learned null tokens even when the prior does not
  condition on them: ``max_text_len=0`` keeps the pinned token sequence (text embed, time, noised image, query);
- the diffusion schedule buffers (cosine, 1000 steps) are recomputed by the modern scheduler (checked to agree with
  the checkpoint's ``betas``) and dropped; the modern null embeddings (``null_text_embeds``, ``null_image_embed``;
  used only when a condition is dropped, which sampling never does here) are zeros.

Sampling as the official code: one DDPM sample over all 1000 steps (``p_sample_loop((1, 512), text_cond=dict(
text_embed=…))``) from the unit text embedding, no classifier-free guidance (``cond_scale`` 1: the pinned code trained
x0-predicting priors without condition dropout). One difference, on purpose: the pinned network's ``forward`` kept a
default ``cond_drop_prob=0.2`` that the official sampler did not override, so each denoising step there hid the text
embedding with probability 0.2 — an accident of defaults for a model never trained with dropped conditions; here the
condition is always kept. ``num_samples > 1`` keeps the sample closest to the text embedding (the DALL-E 2 paper's
rule, dalle2's ``DiffusionPrior.sample``).

When the guidance CLIP is not the prior's CLIP (say ViT-L/14 for the loss, the prior in ViT-B/32's space), the
prior's embedding cannot be compared with the renders' embeddings: CLIP-Mesh has one CLIP for both, so
:func:`clip_target` uses the text embedding then and says so, as it does when the prior's weights are absent.

Nothing here runs at import; nothing downloads unless asked (:func:`download_prior`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..params import Config, param
from .base import TINY_RANDOM, ModelNotFoundError
from .clip import OPENAI_HF_IDS
from .devices import resolve_device

log = logging.getLogger(__name__)

__all__ = ["CLIP_MESH_PRIOR", "CLIP_MESH_PRIOR_FILE", "PRIOR_MODELS", "DiffusionPriorConfig", "CLIP_MESH_PRIOR_CONFIG",
           "TINY_PRIOR_CONFIG", "PriorModel", "CLIPTarget", "build_prior", "convert_clip_mesh_state_dict",
           "load_prior", "download_prior", "predict_image_embedding", "clip_target", "prior_or_text_embedding",
           "canonical_clip_id"]

CLIP_MESH_PRIOR = "NasirKhalid24/Dalle2-Diffusion-Prior"
"""Hugging Face Space holding CLIP-Mesh's public prior (the id ``download`` and :func:`load_prior` take)."""
CLIP_MESH_PRIOR_FILE = "larger-model.pth"
"""The checkpoint file in :data:`CLIP_MESH_PRIOR` (``{"model": state_dict, …}``, the pinned module's key names)."""
CLIP_MESH_PRIOR_CLIP = "ViT-B-32/openai"
"""The CLIP whose embedding space the public prior maps within (CLIP-Mesh's ``clip_model: ViT-B/32``)."""
PRIOR_MODELS = (CLIP_MESH_PRIOR,)
"""The public prior ids ``python -m backend download`` knows."""


@dataclass
class DiffusionPriorConfig(Config):
    """Architecture of a DALL-E 2 diffusion prior (``dalle2_pytorch`` arguments; defaults: CLIP-Mesh's public prior).

    Checked on construction (:class:`backend.params.Config`); raises ParamError naming the bad field and value.
    """

    dim: int = param(512, doc="DiffusionPriorNetwork: token width (= the CLIP embedding width it maps).", low=2,
                     high=4096)
    depth: int = param(12, doc="DiffusionPriorNetwork: causal transformer layers.", low=1, high=64)
    dim_head: int = param(64, doc="DiffusionPriorNetwork: attention head width.", low=2, high=512)
    heads: int = param(12, doc="DiffusionPriorNetwork: attention heads.", low=1, high=64)
    normformer: bool = param(False, doc="DiffusionPriorNetwork: NormFormer post-activation norm in the feedforward.")
    image_embed_dim: int = param(512, doc="DiffusionPrior: CLIP image embedding width D (512 for ViT-B/32).", low=2,
                                 high=4096)
    timesteps: int = param(1000, doc="DiffusionPrior: DDPM steps of the cosine schedule (training and sampling).",
                           low=2, high=4000)
    cond_drop_prob: float = param(0.1, doc="DiffusionPrior: condition dropout of training (recorded; the pinned code "
                                           "trained x0-predicting priors with none).", low=0.0, high=1.0)
    loss_type: str = param("l2", doc="DiffusionPrior: training loss.", choices=("l1", "l2", "huber"))
    condition_on_text_encodings: bool = param(False, doc="DiffusionPrior: attend to CLIP's per-token text encodings "
                                                         "(the public prior does not; not supported here).")
    clip_model: str = param(CLIP_MESH_PRIOR_CLIP, doc="The CLIP whose embedding space the prior maps within "
                                                      "(a backend.models.clip model id).")

    def validate(self) -> None:
        """Rules: ``dim == image_embed_dim`` (the prior's tokens are embeddings); ``condition_on_text_encodings``
        False (CLIPEmbedder gives pooled embeddings, not per-token encodings). Raises ValueError."""
        if self.condition_on_text_encodings:
            raise ValueError("DiffusionPriorConfig.condition_on_text_encodings = True is not supported (the guidance "
                             "CLIPs give pooled text embeddings, not per-token encodings)")
        if self.dim != self.image_embed_dim:
            raise ValueError(f"DiffusionPriorConfig.dim ({self.dim}) must equal image_embed_dim "
                             f"({self.image_embed_dim})")


CLIP_MESH_PRIOR_CONFIG = DiffusionPriorConfig()
"""CLIP-Mesh's public prior (``configs/paper.yml`` / ``single.yml`` of the official code)."""
TINY_PRIOR_CONFIG = DiffusionPriorConfig(dim=16, depth=1, dim_head=8, heads=2, image_embed_dim=16, timesteps=64,
                                         clip_model=TINY_RANDOM)
"""The ``tiny-random`` prior: the same classes at the ``tiny-random`` CLIP's 16-d embedding, 64 DDPM steps."""

# Schedule buffers of the pinned DiffusionPrior (unprefixed keys of the checkpoint; recomputed by modern dalle2).
_PINNED_SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                            "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
                            "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
                            "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2")
# Modern parameters the pinned module has not; unused at sampling without dropped conditions (zeros).
_MODERN_ONLY = ("net.null_text_encodings", "net.null_text_embeds", "net.null_image_embed")
_SCHEDULE_TOLERANCE = 1e-3  # modern (float64) vs pinned (float32) cosine betas differ by ~3e-5


# ---------------------------------------------------------------------------------------------------------------------
# The module.
# ---------------------------------------------------------------------------------------------------------------------

def build_prior(config: DiffusionPriorConfig = CLIP_MESH_PRIOR_CONFIG) -> torch.nn.Module:
    """A ``dalle2_pytorch.DiffusionPrior`` computing the pinned (CLIP-Mesh) prior's function, random weights.

    Built on the current default device (``with torch.device("meta"):`` builds it without memory). The modern classes
    are adjusted as the module docstring lists (plain dot-product attention, plain final LayerNorm, no null text
    tokens).

    Raises:
        ImportError: dalle2_pytorch cannot be imported (it needs torchvision).
    """
    from dalle2_pytorch import DiffusionPrior, DiffusionPriorNetwork

    net = DiffusionPriorNetwork(dim=config.dim, depth=config.depth, dim_head=config.dim_head, heads=config.heads,
                                normformer=config.normformer, max_text_len=0)
    prior = DiffusionPrior(net=net, clip=None, image_embed_dim=config.image_embed_dim, timesteps=config.timesteps,
                           cond_drop_prob=config.cond_drop_prob, loss_type=config.loss_type,
                           condition_on_text_encodings=config.condition_on_text_encodings)
    for attn, _ in net.causal_transformer.layers:
        attn.cosine_sim = False
        attn.scale = config.dim_head ** -0.25  # q·scale·√scale · k·√scale = q·k / √dim_head
    if hasattr(net.causal_transformer.norm, "stable"):
        net.causal_transformer.norm.stable = False
    return prior.eval().requires_grad_(False)


def convert_clip_mesh_state_dict(state: dict[str, torch.Tensor],
                                 reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The CLIP-Mesh prior checkpoint's state dict (the pinned DALLE2-pytorch module's names) → the names of
    :func:`build_prior`'s module.

    Args:
        state: the checkpoint's ``"model"`` dict (tensors; meta tensors skip the value checks).
        reference: :func:`build_prior`'s ``state_dict()`` (its schedule buffers and modern-only entries fill in).

    Returns:
        A complete state dict for :func:`build_prior`'s module (``load_state_dict(strict=True)``).

    Raises:
        ModelNotFoundError: not that checkpoint: missing or unexpected keys (named), a shape that differs, a non-zero
            LayerNorm bias, a diffusion schedule that is not the configured one.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in _PINNED_SCHEDULE_BUFFERS:
            ours = reference.get(f"noise_scheduler.{key}")
            if key == "betas" and ours is not None and not value.is_meta and not ours.is_meta and (
                    value.shape != ours.shape or (value.double().cpu() - ours.double().cpu()).abs().max()
                    > _SCHEDULE_TOLERANCE):
                raise ModelNotFoundError("the prior checkpoint's diffusion schedule (betas) is not the configured "
                                         "cosine schedule; is it CLIP-Mesh's prior?")
            continue
        if key.endswith(".beta"):  # the pinned LayerNorm's bias buffer: zeros by construction
            if not value.is_meta and value.abs().max() > 0:
                raise ModelNotFoundError(f"the prior checkpoint's LayerNorm bias {key!r} is not zero")
            continue
        new = key.replace("net.time_embeddings.", "net.to_time_embeds.0.", 1)
        new = re.sub(r"(layers\.\d+\.0)\.post_norm\.", r"\1.to_out.1.", new)
        new = re.sub(r"\.gamma$", ".g", new)
        out[new] = value
    unexpected = sorted(set(out) - set(reference))
    missing = sorted(k for k in set(reference) - set(out)
                     if not k.startswith("noise_scheduler.") and k not in _MODERN_ONLY)
    if unexpected or missing:
        raise ModelNotFoundError(f"not a CLIP-Mesh prior checkpoint for this architecture: "
                                 f"{len(missing)} missing key(s) {missing[:4]}, {len(unexpected)} unexpected "
                                 f"{unexpected[:4]}")
    for key, value in out.items():
        if tuple(value.shape) != tuple(reference[key].shape):
            raise ModelNotFoundError(f"prior checkpoint key {key!r} has shape {tuple(value.shape)}, expected "
                                     f"{tuple(reference[key].shape)}")
    for key, value in reference.items():
        if key not in out:
            out[key] = value if key.startswith("noise_scheduler.") else torch.zeros_like(value)
    return out


@dataclass
class PriorModel:
    """A loaded diffusion prior.

    Attributes:
        prior: the ``dalle2_pytorch.DiffusionPrior`` (eval, frozen, float32).
        config: its :class:`DiffusionPriorConfig` (``clip_model``: the CLIP space it maps within).
        model_id: what was loaded (job metadata).
    """

    prior: Any
    config: DiffusionPriorConfig
    model_id: str

    @property
    def device(self) -> torch.device:
        return next(self.prior.parameters()).device

    def matches(self, clip: Any) -> bool:
        """Whether ``clip`` (a CLIPEmbedder) embeds into this prior's space: the same canonical CLIP id
        (:func:`canonical_clip_id`; ``tiny-random`` matches either library's tiny CLIP) and width."""
        return getattr(clip, "embed_dim", None) == self.config.image_embed_dim and \
            canonical_clip_id(getattr(clip, "model_id", "")) == canonical_clip_id(self.config.clip_model)

    @torch.no_grad()
    def sample(self, text_embeds: torch.Tensor, num_samples: int = 1, cond_scale: float = 1.0, seed: int = 0,
               progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Image embeddings for text embeddings by DDPM ancestral sampling over all ``config.timesteps`` steps.

        Args:
            text_embeds: ``(N, D)`` CLIP text embeddings of the prior's CLIP (unit vectors, as CLIP-Mesh feeds).
            num_samples: samples drawn per text; the one with the highest cosine to its text is kept (1: the
                official code's single sample).
            cond_scale: classifier-free guidance scale; only 1 (the public prior was trained without condition
                dropout, so there is no unconditional model to guide with).
            seed: the draws are a pure function of ``seed`` (the global RNG state is left untouched).
            progress: called as ``progress(done, total)`` after every denoising step (a job reports progress and
                raises ``JobCancelled`` from it; the public prior's 1000 steps take about two minutes on one CPU
                core, a second or two on a GPU).

        Returns:
            ``(N, D)`` float32 unit vectors on the prior's device.

        Raises:
            ValueError: wrong shape, ``num_samples < 1``, ``cond_scale != 1``.
        """
        dim = self.config.image_embed_dim
        if text_embeds.dim() != 2 or text_embeds.shape[1] != dim:
            raise ValueError(f"text_embeds must be (N, {dim}), got {tuple(text_embeds.shape)}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
        if float(cond_scale) != 1.0:
            raise ValueError(f"cond_scale must be 1 for this prior (trained without condition dropout), got "
                             f"{cond_scale!r}")
        device = self.device
        text = F.normalize(text_embeds.float().to(device), dim=-1).repeat_interleave(num_samples, dim=0)
        text_cond = dict(text_embed=text)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            if device.type == "cuda":
                torch.cuda.manual_seed(seed)
            x = torch.randn(text.shape, device=device)
            total = self.config.timesteps
            for step in reversed(range(total)):
                t = torch.full((len(text),), step, device=device, dtype=torch.long)
                x, _ = self.prior.p_sample(x, t, text_cond=text_cond, cond_scale=1.0)
                if progress is not None:
                    progress(total - step, total)
        embeds = F.normalize(x.float(), dim=-1).view(-1, num_samples, dim)
        best = (embeds * text.view(-1, num_samples, dim)).sum(-1).argmax(dim=1)
        return embeds[torch.arange(len(embeds), device=device), best]


# ---------------------------------------------------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------------------------------------------------

def load_prior(model: str = CLIP_MESH_PRIOR, device: str | torch.device = "auto", dtype: torch.dtype | None = None,
               allow_download: bool = False) -> PriorModel:
    """Load a diffusion prior (a loader for :meth:`backend.models.cache.ModelCache.get`).

    Args:
        model: :data:`CLIP_MESH_PRIOR` (its file from the Hugging Face cache; fetched only with ``allow_download``),
            a local checkpoint file of that prior (``.pth``: ``{"model": state_dict}`` or the state dict), or
            ``"tiny-random"`` (:data:`TINY_PRIOR_CONFIG`, seeded random weights, no file or network).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``…; dtype: ignored (the prior is small and samples in float32).
        allow_download: fetch the public file when it is not cached.

    Returns:
        A :class:`PriorModel` on ``device``.

    Raises:
        ModelNotFoundError: weights not on this machine (the message names the ``download`` command), not a prior
            checkpoint, an unknown id. ValueError: an empty model string. ImportError: dalle2_pytorch cannot import.
    """
    if not isinstance(model, str) or not model.strip():
        raise ValueError("prior model must be a non-empty string (e.g. 'NasirKhalid24/Dalle2-Diffusion-Prior', a "
                         "local .pth file, or 'tiny-random')")
    model = model.strip()
    device = resolve_device(device)
    if model == TINY_RANDOM:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            prior = build_prior(TINY_PRIOR_CONFIG)
        return PriorModel(prior.to(device), TINY_PRIOR_CONFIG, TINY_RANDOM)
    path = Path(model).expanduser()
    if path.is_file():
        file = path
    elif model.startswith((".", "/", "~")) or "\\" in model or model.endswith((".pth", ".pt", ".ckpt")):
        raise ModelNotFoundError(f"prior checkpoint {model!r} does not exist")
    elif model in PRIOR_MODELS:
        file = _cached_prior_file(model, allow_download)
    else:
        raise ModelNotFoundError(f"unknown prior {model!r}: expected {CLIP_MESH_PRIOR!r}, a local checkpoint file, or "
                                 f"{TINY_RANDOM!r}")
    state = _read_checkpoint(file)
    prior = build_prior(CLIP_MESH_PRIOR_CONFIG)
    prior.load_state_dict(convert_clip_mesh_state_dict(state, prior.state_dict()), strict=True)
    return PriorModel(prior.to(device), CLIP_MESH_PRIOR_CONFIG, model)


def _cached_prior_file(model: str, allow_download: bool) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        return Path(hf_hub_download(model, CLIP_MESH_PRIOR_FILE, repo_type="space",
                                    local_files_only=not allow_download))
    except Exception as err:  # LocalEntryNotFoundError, network errors
        text = str(err).strip()
        raise ModelNotFoundError(
            f"prior {model!r} is not on this machine (looked for {CLIP_MESH_PRIOR_FILE} in the Hugging Face cache "
            f"{HF_HUB_CACHE}). Download it once with `python -m backend download {model}`, or pass the local file. "
            f"({type(err).__name__}: {text.splitlines()[0] if text else ''})") from err


def _read_checkpoint(file: Path) -> dict[str, torch.Tensor]:
    """The state dict of a prior checkpoint file: ``torch.load(file)["model"]`` as the official code reads it (or the
    file's top-level dict), tensors only (``weights_only``: no code runs from the file)."""
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError on a damaged file, …
        raise ModelNotFoundError(f"could not read prior checkpoint {str(file)!r}: {type(err).__name__}: "
                                 f"{str(err).splitlines()[0] if str(err) else ''}") from err
    state = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelNotFoundError(f"{str(file)!r} is not a prior checkpoint (expected a state dict, or a dict with "
                                 f"one under 'model')")
    return state


def download_prior(model: str = CLIP_MESH_PRIOR) -> Path:
    """Fetch the public prior's checkpoint into the Hugging Face cache (the only function here that downloads).

    Returns:
        The local file.

    Raises:
        ModelNotFoundError: an id other than :data:`PRIOR_MODELS`. Hub and network errors pass through.
    """
    if model not in PRIOR_MODELS:
        raise ModelNotFoundError(f"unknown prior {model!r}: the public one is {CLIP_MESH_PRIOR!r}")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(model, CLIP_MESH_PRIOR_FILE, repo_type="space"))


# ---------------------------------------------------------------------------------------------------------------------
# Targets for CLIP guidance.
# ---------------------------------------------------------------------------------------------------------------------

def canonical_clip_id(model_id: str) -> str:
    """One name per CLIP weights: the OpenAI transformers ids become their open_clip ``<arch>/openai`` form,
    prefixes ``open_clip:`` / ``transformers:`` are dropped (``"openai/clip-vit-base-patch32"`` →
    ``"ViT-B-32/openai"``)."""
    model_id = (model_id or "").strip()
    for prefix in ("open_clip:", "transformers:"):
        model_id = model_id[len(prefix):] if model_id.startswith(prefix) else model_id
    for arch, hub_id in OPENAI_HF_IDS.items():
        if model_id == hub_id:
            return f"{arch}/openai"
    return model_id


def predict_image_embedding(prompt: str, clip: Any, prior: PriorModel, num_samples: int = 1, cond_scale: float = 1.0,
                            seed: int = 0, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """The prior's image embedding for ``prompt``: CLIP text embedding (``clip.encode_texts``) → DDPM sample.

    Args:
        prompt: the text.
        clip: a :class:`~backend.guidance.clip.CLIPEmbedder` of the prior's CLIP (:meth:`PriorModel.matches`).
        prior: a :class:`PriorModel`.
        num_samples, cond_scale, seed, progress: see :meth:`PriorModel.sample` (the official code: 1 sample,
            scale 1).

    Returns:
        ``(D,)`` float32 unit vector on the prior's device.

    Raises:
        ValueError: empty prompt, a CLIP of another embedding space, bad sampling arguments.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt must be a non-empty string")
    if not prior.matches(clip):
        raise ValueError(f"the prior maps within {prior.config.clip_model!r} embeddings "
                         f"({prior.config.image_embed_dim}-d); the CLIP given is "
                         f"{getattr(clip, 'model_id', type(clip).__name__)!r} ({getattr(clip, 'embed_dim', '?')}-d)")
    text = clip.encode_texts([prompt])
    return prior.sample(text, num_samples=num_samples, cond_scale=cond_scale, seed=seed, progress=progress)[0]


@dataclass
class CLIPTarget:
    """What CLIP guidance pulls renders toward for one prompt.

    Attributes:
        text: ``(D,)`` unit CLIP text embedding of the prompt (CLIP-Mesh's ``clip_weight`` term).
        prior: ``(D,)`` unit image embedding from the diffusion prior, or None when the prior was not asked for, is
            absent, or lives in another CLIP's space (CLIP-Mesh's ``diff_loss_weight`` term, 0.33 in its configs).
        note: one line for the job's log and metadata saying which target is used and why.
    """

    text: torch.Tensor
    prior: torch.Tensor | None
    note: str

    @property
    def embedding(self) -> torch.Tensor:
        """The prior's embedding when there is one, else the text embedding."""
        return self.prior if self.prior is not None else self.text


def clip_target(prompt: str, clip: Any, prior_model: str | None = CLIP_MESH_PRIOR,
                load: Callable[[str], PriorModel] | None = None, num_samples: int = 1, cond_scale: float = 1.0,
                seed: int = 0, progress: Callable[[int, int], None] | None = None) -> CLIPTarget:
    """The text embedding of ``prompt`` and, when the prior is available for ``clip``, its image embedding.

    Args:
        prompt: the text.
        clip: the guidance :class:`~backend.guidance.clip.CLIPEmbedder`.
        prior_model: a :func:`load_prior` model id, or None / ``""`` for no prior.
        load: ``model → PriorModel`` (pipelines: ``lambda m: context.models.get(load_prior, m, device)``); default
            :func:`load_prior` on ``clip``'s device without downloading.
        num_samples, cond_scale, seed, progress: see :meth:`PriorModel.sample`.

    Returns:
        A :class:`CLIPTarget`; ``prior`` is None, and ``note`` says why, when the prior's weights are absent
        (ModelNotFoundError), dalle2_pytorch cannot import, or the prior lives in another CLIP's space.

    Raises:
        ValueError: empty prompt, bad sampling arguments.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt must be a non-empty string")
    text = clip.encode_texts([prompt])[0]
    if not prior_model:
        return CLIPTarget(text, None, "target: the prompt's CLIP text embedding (no prior asked for)")
    if load is None:
        device = getattr(clip, "device", text.device)

        def load(model: str) -> PriorModel:
            return load_prior(model, device)
    try:
        prior = load(prior_model)
    except (ModelNotFoundError, ImportError) as err:
        log.info("prior %s not used: %s", prior_model, err)
        first = str(err).split(". ")[0]
        return CLIPTarget(text, None, f"target: the prompt's CLIP text embedding; the diffusion prior is not used "
                                      f"({first}; `python -m backend download {CLIP_MESH_PRIOR}` fetches it)")
    if not prior.matches(clip):
        return CLIPTarget(text, None, f"target: the prompt's CLIP text embedding; the diffusion prior "
                                      f"{prior_model!r} maps within {prior.config.clip_model!r} embeddings, not the "
                                      f"guidance CLIP's ({getattr(clip, 'model_id', type(clip).__name__)!r})")
    image = prior.sample(text[None].to(prior.device), num_samples=num_samples, cond_scale=cond_scale, seed=seed,
                         progress=progress)[0]
    return CLIPTarget(text, image.to(text.device),
                      f"target: the prompt's CLIP text embedding and the diffusion prior's image embedding "
                      f"({prior_model}, {num_samples} sample{'s' if num_samples > 1 else ''})")


def prior_or_text_embedding(prompt: str, clip: Any, prior_model: str | None = CLIP_MESH_PRIOR,
                            load: Callable[[str], PriorModel] | None = None, num_samples: int = 1,
                            cond_scale: float = 1.0, seed: int = 0,
                            progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, str]:
    """``(embedding (D,), note)``: the prior's image embedding of ``prompt`` when the prior is available for
    ``clip``, else the prompt's text embedding; ``note`` says which and why (arguments as :func:`clip_target`)."""
    target = clip_target(prompt, clip, prior_model, load, num_samples, cond_scale, seed, progress)
    return target.embedding, target.note

