"""Variational score distillation (VSD) in Stable Diffusion's latent space.

After Wang et al., "ProlificDreamer: High-Fidelity and Diverse Text-to-3D Generation with Variational Score
Distillation" (NeurIPS 2023). SDS pushes a render toward the modes of the pretrained model with ε̂ − ε; VSD replaces the
random noise ε by the score of the distribution of the current renders themselves, estimated by a LoRA of the same
UNet, conditioned on the camera::

    z_t = √ᾱ_t z + √(1−ᾱ_t) ε,            t ~ U[t_min, t_max]·T (annealed, :class:`~.sds.TimestepSchedule`)
    ∂L/∂z = w(t)·(ε_pretrained(z_t, t, y) − ε_lora(z_t, t, c, y))          (ε_pretrained with CFG 7.5)

and after each 3D step one LoRA step on the detached render z = x_0 with the usual diffusion loss at a random
t' ~ U{0, …, T−1}: ||ε_lora(√ᾱ_t' z + √(1−ᾱ_t') ε', t', c, y) − ε'||² (the v target for v-prediction models).

How it sits on the UNet:

- ε_lora is the SAME ``diffusers.UNet2DConditionModel`` as ε_pretrained with a peft LoRA adapter (``LoraConfig`` on the
  attention projections ``to_q``, ``to_k``, ``to_v``, ``to_out.0``: what the official code's LoRA attention processors
  adapt), attached with ``unet.add_adapter`` and switched per forward with ``unet.enable_adapters`` /
  ``unet.disable_adapters``: ε_pretrained always runs with the adapter off. The base weights never change
  (``requires_grad=False``; the optimiser holds only the LoRA and camera parameters).
- Camera conditioning: the camera's c2w (4×4 flattened to 16, Blender world frame) through a 2-layer MLP
  (16 → D → D, SiLU; D = the UNet's time-embedding width, 1280 for SD) whose output is added to the timestep
  embedding, as the paper (and its official code, ``camera_emb``). The UNet takes it through its ``class_labels``
  input: with ``config.class_embed_type=None`` diffusers calls ``unet.class_embedding(class_labels)`` and adds the
  result to the time embedding (``emb = emb + class_emb``) — exactly the paper's sum, after the pretrained time MLP.
  The MLP is set as ``unet.class_embedding`` only inside the LoRA forwards and removed afterwards, so a pretrained
  SD 1.5 UNet (whose ``class_embedding`` is None) is unchanged for ε_pretrained and for other jobs. ``timestep_cond``
  was not chosen: it needs a ``cond_proj`` layer the pretrained time embedding does not have, and it adds before the
  time MLP (to the sinusoidal features), not to the timestep embedding.
- Classifier-free guidance of the LoRA (``lora_guidance_scale``, 1 = the conditional branch only, the official
  default): the LoRA is trained with the text replaced by the negative prompt and the camera by zeros with probability
  ``lora_condition_dropout`` (0.1), so its unconditional branch exists.
- Particles: VSD's n particles are n 3D models sharing this one LoRA. A pipeline with n > 1 particles renders each
  with its own camera and passes the renders stacked along the batch dimension (``latents`` (n·B, 4, H, W) and the
  matching cameras) in ONE call per step: every particle gets its own gradient slice, and the LoRA takes one step on
  all of them. The pipelines here run one particle (n = 1, the paper's default and most of its results).
- Lifetime: the adapter lives on a shared, cached UNet. Use the guidance as a context manager (or call
  :meth:`VariationalScoreDistillation.close`): leaving removes the adapter and the UNet is bit-identical to before.
  :meth:`~VariationalScoreDistillation.save_adapter` / :meth:`~VariationalScoreDistillation.load_adapter` keep a
  trained adapter (LoRA + camera MLP) in one safetensors file.

Defaults (ProlificDreamer's official code): CFG 7.5, LoRA rank 4 (diffusers' LoRA attention processor default),
LoRA learning rate 1e-4 (``--unet_lr``; AdamW), condition dropout 0.1 (``--uncond_p``), t_max annealed from 0.98 to
0.5 after 5000 steps (``--t5_iters``), w(t) = 1 − ᾱ_t.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from ..geometry.cameras import CameraBatch
from ..params import check_config, param
from .denoiser import StableDiffusionDenoiser, to_epsilon
from .sds import SDSConfig, SDSOutput, TimestepSchedule, add_noise, distillation_loss, timestep_weight

LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
"""The attention projections the LoRA adapts (in every self- and cross-attention of the UNet)."""

ADAPTER_FORMAT = "latentforge-vsd-adapter-1"


@dataclass
class VSDConfig(SDSConfig):
    """Variational score distillation settings (defaults: ProlificDreamer's official code).

    Checked on construction (:class:`backend.params.Config`); raises ParamError naming the bad field and value.
    """

    guidance_scale: float = param(7.5, doc="Classifier-free guidance scale of ε_pretrained (ProlificDreamer: 7.5).",
                                  low=0.0)
    lora_rank: int = param(4, doc="Rank of the LoRA on the UNet's attention projections.", low=1, high=256)
    lora_lr: float = param(1e-4, doc="AdamW learning rate of the LoRA and the camera MLP.", low=1e-7, high=1.0)
    camera_condition: bool = param(True, doc="Condition ε_lora on the camera (c2w through an MLP added to the "
                                             "timestep embedding).")
    lora_guidance_scale: float = param(1.0, doc="Classifier-free guidance scale of ε_lora (1 = conditional only).",
                                       low=0.0, high=100.0)
    lora_condition_dropout: float = param(0.1, doc="Probability of training the LoRA on the negative prompt and a "
                                                   "zero camera (its unconditional branch).", low=0.0, high=1.0)
    seed: int = param(0, doc="Seed of the LoRA and camera-MLP initialisation.", low=0, high=2**63 - 1)


@dataclass
class VSDOutput(SDSOutput):
    """One VSD evaluation: the :class:`~.sds.SDSOutput` fields (``loss`` whose gradient wrt the render is
    w(t)(ε_pretrained − ε_lora)) with ``losses['lora']``, the LoRA's diffusion loss of this step's update."""


class CameraEmbedding(torch.nn.Module):
    """c2w → an embedding added to the UNet's timestep embedding (ProlificDreamer's camera MLP).

    Args:
        embedding_dim: D, the UNet's time-embedding width (``unet.time_embedding.linear_2.out_features``).

    Input ``class_labels``: (B, 16) float, the row-major flattened (B, 4, 4) c2w; output (B, D) float32.
    """

    def __init__(self, embedding_dim: int):
        super().__init__()
        self.linear_1 = torch.nn.Linear(16, embedding_dim)
        self.act = torch.nn.SiLU()
        self.linear_2 = torch.nn.Linear(embedding_dim, embedding_dim)

    def forward(self, class_labels: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(class_labels.float())))


class VariationalScoreDistillation:
    """VSD with a Stable Diffusion UNet and a camera-conditioned LoRA of it (see the module doc).

    The same contract as :class:`~.sds.ScoreDistillation`: ``guidance(latents, cameras, generator, step)`` returns an
    :class:`~.sds.SDSOutput`-like :class:`VSDOutput`; each call also takes one LoRA step on the detached ``latents``.

    Args:
        components: :class:`backend.models.stable_diffusion.StableDiffusionComponents` (its UNet gets the adapter).
        denoiser: ε_pretrained: a :class:`StableDiffusionDenoiser` on the same components (its CFG scale and
            view-dependent text embeddings are used; the LoRA sees the same per-camera text).
        config: timesteps, annealing, weighting and the LoRA settings.
        adapter_name: the peft adapter's name on the UNet.

    Raises:
        ValueError: ``denoiser`` runs on other components, the UNet already has an adapter of that name (another
            VSD still attached: close it first), or camera conditioning on a UNet that has its own class embedding.
    """

    def __init__(self, components, denoiser: StableDiffusionDenoiser, config: VSDConfig | None = None,
                 adapter_name: str = "vsd"):
        from peft import LoraConfig

        self.config = check_config(config or VSDConfig())
        if denoiser.components is not components:
            raise ValueError("denoiser must wrap the same Stable Diffusion components as the VSD (one UNet)")
        self.components = components
        self.unet = components.unet
        self.denoiser = denoiser
        self.adapter_name = adapter_name
        self.alphas_cumprod = components.scheduler.alphas_cumprod.detach().float()
        self.num_train_timesteps = int(self.alphas_cumprod.shape[0])
        self.schedule = TimestepSchedule(self.num_train_timesteps, self.config)
        if adapter_name in (getattr(self.unet, "peft_config", None) or {}):
            raise ValueError(f"the UNet already has an adapter named {adapter_name!r}; close the VSD that made it")
        if self.config.camera_condition and self.unet.class_embedding is not None:
            raise ValueError("this UNet already takes class labels (its class_embedding is set), so the camera cannot "
                             "ride on them; use camera_condition=False")
        device = components.device
        cuda = [device] if device.type == "cuda" else []
        lora = LoraConfig(r=self.config.lora_rank, lora_alpha=self.config.lora_rank, init_lora_weights="gaussian",
                          target_modules=list(LORA_TARGET_MODULES))
        with torch.random.fork_rng(devices=cuda):  # peft and the MLP initialise on the CPU: same init on any device
            torch.manual_seed(self.config.seed)
            self.unet.add_adapter(lora, adapter_name=adapter_name)
            self._closed = False
            try:
                width = self.unet.time_embedding.linear_2.out_features
                self.camera_embedding = CameraEmbedding(width).to(device)
            except BaseException:
                self.camera_embedding = None
                self.close()
                raise
        self.lora_parameters = [p for n, p in self.unet.named_parameters() if f".{adapter_name}." in n]
        for p in self.lora_parameters:  # fp32 LoRA on an fp16 UNet: peft casts the input to the LoRA's dtype
            p.data = p.data.float()
        self.unet.disable_adapters()  # the shared UNet is the base model outside the LoRA forwards
        params = self.lora_parameters + (list(self.camera_embedding.parameters()) if self.config.camera_condition else [])
        self.optimizer = torch.optim.AdamW(params, lr=self.config.lora_lr)

    # ---- the adapter switch ----------------------------------------------------------------------------------------

    @contextmanager
    def lora_enabled(self) -> Iterator[None]:
        """Inside: the UNet is ε_lora (adapter on, camera MLP as ``class_embedding``); on leaving, the base model."""
        self._check_open()
        previous = self.unet.class_embedding
        self.unet.set_adapter(self.adapter_name)
        self.unet.enable_adapters()
        if self.config.camera_condition:
            self.unet.class_embedding = self.camera_embedding
        try:
            yield
        finally:
            self.unet.class_embedding = previous
            self.unet.disable_adapters()

    def _camera_labels(self, cameras: CameraBatch, device: torch.device) -> torch.Tensor | None:
        """(B, 16) float32 flattened c2w for the LoRA's ``class_labels``, or None without camera conditioning."""
        if not self.config.camera_condition:
            return None
        return cameras.c2w.to(device=device, dtype=torch.float32).reshape(len(cameras), 16)

    def _lora_forward(self, latents_noisy, timesteps, text, labels) -> torch.Tensor:
        """Raw UNet output of ε_lora (B, 4, H, W) float32; differentiable wrt the LoRA and camera parameters. Call
        (and backpropagate) inside :meth:`lora_enabled`: peft turns ``requires_grad`` off when the adapter is
        disabled, and gradients reach only parameters that still require them at backward time."""
        dtype = self.components.dtype
        kwargs = {"class_labels": labels} if labels is not None else {}
        out = self.unet(latents_noisy.to(dtype), timesteps, encoder_hidden_states=text.to(dtype), **kwargs)
        return out.sample.float()

    # ---- predictions ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def predict_pretrained(self, latents_noisy: torch.Tensor, timesteps: torch.Tensor,
                           cameras: CameraBatch) -> torch.Tensor:
        """ε_pretrained (B, 4, H, W) float32: the denoiser (CFG, view-dependent prompts) with the adapter off."""
        self._check_open()
        self.unet.disable_adapters()
        return self.denoiser.predict_noise(latents_noisy, timesteps, cameras).float()

    @torch.no_grad()
    def predict_lora(self, latents_noisy: torch.Tensor, timesteps: torch.Tensor, cameras: CameraBatch) -> torch.Tensor:
        """ε_lora (B, 4, H, W) float32: the adapted UNet conditioned on the cameras' c2w, with CFG
        ``lora_guidance_scale`` (1 = the conditional branch only; else the unconditional branch has the negative
        prompt and a zero camera, as the LoRA was trained)."""
        cond, uncond = self.denoiser.embeddings(cameras)
        labels = self._camera_labels(cameras, latents_noisy.device)
        s = self.config.lora_guidance_scale
        with self.lora_enabled():
            if s == 1.0:
                out = self._lora_forward(latents_noisy, timesteps, cond, labels)
            else:
                both = None if labels is None else torch.cat([torch.zeros_like(labels), labels])
                out_uncond, out_cond = self._lora_forward(torch.cat([latents_noisy] * 2), torch.cat([timesteps] * 2),
                                                          torch.cat([uncond, cond]), both).chunk(2)
                out = out_uncond + s * (out_cond - out_uncond)
        return to_epsilon(out, latents_noisy, timesteps, self.components.scheduler)

    # ---- the LoRA step ----------------------------------------------------------------------------------------------

    def train_lora(self, latents: torch.Tensor, cameras: CameraBatch, generator: torch.Generator) -> float:
        """One AdamW step of the LoRA (and camera MLP) on renders ``latents`` (B, 4, H, W) (detached) with the
        diffusion loss at t' ~ U{0, …, T−1}; ε target (v for v-prediction models). Returns the loss."""
        device = latents.device
        x0 = latents.detach().float()
        batch = x0.shape[0]
        timesteps = torch.randint(0, self.num_train_timesteps, (batch,), generator=generator, device=device)
        noise, a, latents_noisy = add_noise(x0, timesteps, self.alphas_cumprod, generator)
        if self.components.scheduler.config.prediction_type == "v_prediction":
            target = a.sqrt() * noise - (1.0 - a).sqrt() * x0
        else:
            target = noise
        cond, uncond = self.denoiser.embeddings(cameras)
        labels = self._camera_labels(cameras, device)
        drop = torch.rand((batch,), generator=generator, device=device) < self.config.lora_condition_dropout
        text = torch.where(drop.view(-1, 1, 1), uncond, cond)
        if labels is not None:
            labels = torch.where(drop.view(-1, 1), torch.zeros_like(labels), labels)
        with self.lora_enabled(), torch.enable_grad():
            pred = self._lora_forward(latents_noisy, timesteps, text, labels)
            loss = F.mse_loss(pred, target)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    # ---- the guidance call ------------------------------------------------------------------------------------------

    def __call__(self, latents: torch.Tensor, cameras: CameraBatch, generator: torch.Generator,
                 step: int | None = None) -> VSDOutput:
        """VSD loss for ``latents`` (B, 4, H, W) float32 rendered from ``cameras`` (len B) at optimisation ``step``
        (1-based, for annealing; None = none), then one LoRA step on the detached ``latents``.

        The gradient uses ε_lora from before this call's LoRA step (ProlificDreamer's Algorithm 1: update θ, then φ
        on the same render). ``generator`` draws every t, ε and dropout, so a seeded run is reproducible; it must
        live on ``latents.device``.
        """
        timesteps = self.schedule.sample(latents.shape[0], generator, latents.device, step)
        _, a, latents_noisy = add_noise(latents, timesteps, self.alphas_cumprod, generator)
        with torch.no_grad():
            eps_pretrained = self.predict_pretrained(latents_noisy, timesteps, cameras)
            eps_lora = self.predict_lora(latents_noisy, timesteps, cameras)
        grad = torch.nan_to_num(timestep_weight(a, self.config.weighting) * (eps_pretrained - eps_lora))
        lora_loss = self.train_lora(latents, cameras, generator)
        return VSDOutput(loss=distillation_loss(latents, grad), timesteps=timesteps, grad_norm=float(grad.norm()),
                         losses={"lora": lora_loss})

    # ---- keeping the adapter ------------------------------------------------------------------------------------------

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained adapter as CPU tensors: ``lora.<peft key>`` (peft's names without the adapter name) and
        ``camera_embedding.<name>``."""
        from peft import get_peft_model_state_dict

        self._check_open()
        state = {f"lora.{k}": v.detach().cpu().contiguous()
                 for k, v in get_peft_model_state_dict(self.unet, adapter_name=self.adapter_name).items()}
        state.update({f"camera_embedding.{k}": v.detach().cpu().contiguous()
                      for k, v in self.camera_embedding.state_dict().items()})
        return state

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What a job may keep of this guidance: :meth:`adapter_state_dict` (the :class:`~.sds.Guidance` contract)."""
        return self.adapter_state_dict()

    def save_adapter(self, path: str | Path) -> Path:
        """Write the adapter (LoRA + camera MLP, float32) to one ``.safetensors`` file with its rank and target
        modules in the header. Returns the path."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": ADAPTER_FORMAT, "lora_rank": str(self.config.lora_rank),
                "target_modules": json.dumps(list(LORA_TARGET_MODULES)),
                "camera_condition": str(self.config.camera_condition)}
        save_file({k: v.float() for k, v in self.adapter_state_dict().items()}, str(path), metadata=meta)
        return path

    def load_adapter(self, path: str | Path) -> None:
        """Load an adapter written by :meth:`save_adapter` into this VSD's LoRA and camera MLP.

        Raises:
            FileNotFoundError: no such file. ValueError: not a VSD adapter file, or another LoRA rank or UNet.
        """
        from peft import set_peft_model_state_dict
        from safetensors import safe_open
        from safetensors.torch import load_file

        self._check_open()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"adapter file {str(path)!r} does not exist")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != ADAPTER_FORMAT:
            raise ValueError(f"{str(path)!r} is not a VSD adapter file (format {meta.get('format')!r})")
        if int(meta.get("lora_rank", -1)) != self.config.lora_rank:
            raise ValueError(f"adapter {str(path)!r} has lora_rank {meta.get('lora_rank')}, "
                             f"this VSD has {self.config.lora_rank}")
        state = load_file(str(path))
        lora = {k[len("lora."):]: v for k, v in state.items() if k.startswith("lora.")}
        camera = {k[len("camera_embedding."):]: v for k, v in state.items() if k.startswith("camera_embedding.")}
        expected = {k[len("lora."):] for k in self.adapter_state_dict() if k.startswith("lora.")}
        if set(lora) != expected:
            raise ValueError(f"adapter {str(path)!r} does not fit this UNet "
                             f"({len(set(lora) ^ expected)} LoRA keys differ)")
        set_peft_model_state_dict(self.unet, lora, adapter_name=self.adapter_name)
        self.camera_embedding.load_state_dict(camera)
        for p in self.lora_parameters:
            p.data = p.data.float()

    # ---- lifetime -----------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Remove the adapter from the shared UNet (its modules and weights are then as before); idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.camera_embedding is not None and self.unet.class_embedding is self.camera_embedding:
            self.unet.class_embedding = None
        self.unet.delete_adapters(self.adapter_name)
        if not getattr(self.unet, "peft_config", None):
            self.unet.unload_lora()  # no adapter left: back to the plain diffusers modules

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this VSD is closed: its adapter was removed from the UNet")

    def __enter__(self) -> "VariationalScoreDistillation":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
