"""``LionModel``: the hierarchical VAE, its two latent DDMs and everything others build on (sampling, editing,
losses).

Latent spaces (Zeng et al. 2022, §3): the shape latent z0 (B, style_dim) and the latent points h0 (B, N, 3 +
latent_dim) — xyz (in the normalised model frame of :mod:`.data`) + features. Generation samples z0 with the
shape-latent DDM, then h0 with the latent-point DDM conditioned on z0, then decodes (h0, z0) to points.

Module names match the released checkpoints: ``vae.*`` is the public ``vae_state_dict`` and ``priors.0.*`` /
``priors.1.*`` its ``dae_state_dict`` (see :mod:`.checkpoint`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import LionConfig
from .data import check_points
from .diffusion import (Schedule, StepCallback, ddim_sample, ddpm_sample, mixed_eps, ode_decode, ode_encode, q_sample,
                        randn)
from .networks import LionVAE, PriorSEClip, PriorSEDrop, PVCNN2Prior, check_clip_feat

__all__ = ["LionLatents", "LionModel", "SAMPLERS"]

SAMPLERS = ("ddpm", "ddim")


@dataclass
class LionLatents:
    """LION's two latents for a batch.

    Attributes:
        z: (B, style_dim) float, the global shape latent z0.
        h: (B, N, 3 + latent_dim) float, the latent points h0 (xyz in the normalised model frame, then features).
    """

    z: torch.Tensor
    h: torch.Tensor

    def __len__(self) -> int:
        return int(self.z.shape[0])

    def to(self, device: torch.device | str) -> "LionLatents":
        """A copy on ``device``."""
        return LionLatents(self.z.to(device), self.h.to(device))

    def detach(self) -> "LionLatents":
        """Both tensors detached."""
        return LionLatents(self.z.detach(), self.h.detach())

    @property
    def points(self) -> torch.Tensor:
        """(B, N, 3) the latent points' xyz (a preview of the shape)."""
        return self.h[..., :3]


def _kl_normal(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, σ²) ‖ N(0, 1)) per element: 0.5 σ² + 0.5 μ² − log σ − 0.5 (public ``kl_term_close``)."""
    return 0.5 * torch.exp(2 * log_sigma) + 0.5 * mu ** 2 - log_sigma - 0.5


class LionModel(nn.Module):
    """LION: ``vae`` (:class:`~.networks.LionVAE`) + ``priors`` = [shape-latent DDM
    (:class:`~.networks.PriorSEDrop`, or :class:`~.networks.PriorSEClip` when ``config.clip_dim`` > 0), latent-point
    DDM (:class:`~.networks.PVCNN2Prior`)].

    A conditioned model (``config.clip_dim`` > 0, LION's text / single-view-image application, CLIP-Forge style) takes
    ``clip_feat``: (B, clip_dim), (1, clip_dim) or (clip_dim,) float raw CLIP embeddings (the public code trains on
    the view-averaged image embeddings of each shape and samples from ``encode_text``, neither normalised) in every
    DDM method (:meth:`eps_z`, :meth:`eps_h`, :meth:`ddm_loss`, :meth:`sample`, :meth:`diffuse_denoise`,
    :meth:`to_noise`, :meth:`from_noise`); there it is required, and an unconditional model refuses it (a ValueError
    naming ``clip_feat``). The VAE is the same either way.

    Point clouds in and out are (B, N, 3) float in the normalised model frame (:func:`.data.normalize_points`);
    N ≥ ``config.sa_centers[0]`` for the VAE, N = ``config.num_points`` for generation (and for the prior when it has
    mixing logits). Every random draw comes from the ``generator`` argument (dropout, in training mode, from torch's
    global generator).
    """

    def __init__(self, config: LionConfig):
        super().__init__()
        self.config = config
        self.vae = LionVAE(config)
        shape_prior = PriorSEClip(config) if config.clip_dim > 0 else PriorSEDrop(config)
        self.priors = nn.ModuleList([shape_prior, PVCNN2Prior(config)])
        self._schedule: Schedule | None = None

    # -- helpers -------------------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        return next(self.parameters()).device

    def schedule(self) -> Schedule:
        """The diffusion schedule on the model's device (cached)."""
        if self._schedule is None or self._schedule.betas.device != self.device:
            c = self.config
            self._schedule = Schedule.linear(c.timesteps, c.beta_start, c.beta_end, self.device)
        return self._schedule

    def _check_latents(self, latents: LionLatents, name: str = "latents") -> None:
        c = self.config
        if not isinstance(latents, LionLatents):
            raise ValueError(f"{name} must be LionLatents, got {type(latents).__name__}")
        z, h = latents.z, latents.h
        if z.dim() != 2 or z.shape[1] != c.style_dim:
            raise ValueError(f"{name}.z must have shape (B, {c.style_dim}), got {tuple(z.shape)}")
        if h.dim() != 3 or h.shape[0] != z.shape[0] or h.shape[2] != c.latent_point_dim:
            raise ValueError(f"{name}.h must have shape ({z.shape[0]}, N, {c.latent_point_dim}), got {tuple(h.shape)}")
        if h.shape[1] < c.sa_centers[0]:
            raise ValueError(f"{name}.h has {h.shape[1]} points; the networks need at least {c.sa_centers[0]}")
        if not (bool(torch.isfinite(z).all()) and bool(torch.isfinite(h).all())):
            raise ValueError(f"{name} contains NaN or infinite values")

    def _clip(self, clip_feat: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        feat = check_clip_feat(clip_feat, self.config.clip_dim, batch)
        return None if feat is None else feat.to(self.device, torch.float32)

    def _eps_z_of(self, feat: torch.Tensor | None):
        """``eps(x, t)`` of the shape-latent DDM (with ``feat`` bound; :meth:`eps_z` itself when unconditional)."""
        return self.eps_z if feat is None else (lambda x, t: self.eps_z(x, t, feat))

    def _eps_h_of(self, z: torch.Tensor, feat: torch.Tensor | None):
        """``eps(x, t)`` of the latent-point DDM given z0 (and ``feat`` when conditioned)."""
        return (lambda x, t: self.eps_h(x, t, z)) if feat is None else (lambda x, t: self.eps_h(x, t, z, feat))

    def _check_prior_points(self, h: torch.Tensor, name: str) -> None:
        if self.config.mixed_prediction and h.shape[1] != self.config.num_points:
            raise ValueError(f"{name} has {h.shape[1]} latent points; this prior (mixing logits) needs "
                             f"{self.config.num_points}")

    def eps_z(self, z_t: torch.Tensor, t: torch.Tensor, clip_feat: torch.Tensor | None = None) -> torch.Tensor:
        """Mixed ε̂ of the shape-latent DDM: z_t (B, style_dim), t (B,) float in 1..T[, clip_feat (B, clip_dim)] →
        (B, style_dim).

        Raises:
            ValueError: ``clip_feat`` missing for a conditioned model, given to an unconditional one, or mis-shaped.
        """
        prior = self.priors[0]
        feat = self._clip(clip_feat, z_t.shape[0])
        out = prior(z_t, t) if feat is None else prior(z_t, t, feat)
        return mixed_eps(out, z_t, t, self.schedule(), prior.mixing_coeff())

    def eps_h(self, h_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor, clip_feat: torch.Tensor | None = None
              ) -> torch.Tensor:
        """Mixed ε̂ of the latent-point DDM: h_t (B, N, 3 + latent_dim), t (B,), condition z0 (B, style_dim)[,
        clip_feat (B, clip_dim)].

        Raises:
            ValueError: as :meth:`eps_z`.
        """
        prior = self.priors[1]
        feat = self._clip(clip_feat, h_t.shape[0])
        return mixed_eps(prior(h_t, t, z, feat), h_t, t, self.schedule(), prior.mixing_coeff())

    def _run(self, sampler: str, eps_fn, x: torch.Tensor, start: int, steps: int, generator, callback, offset: int,
             total: int, eta: float) -> torch.Tensor:
        def cb(step: int, _n: int, value: torch.Tensor) -> None:
            if callback is not None:
                callback(offset + step, total, value)

        if sampler == "ddpm":
            return ddpm_sample(eps_fn, x, self.schedule(), start, steps, generator, cb)
        return ddim_sample(eps_fn, x, self.schedule(), start, steps, eta, generator, cb)

    def _steps(self, sampler: str, steps: int | None, start: int) -> int:
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler = {sampler!r} must be one of {', '.join(SAMPLERS)}")
        if steps is None:
            steps = start if sampler == "ddpm" else min(self.config.ddim_steps, start)
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= start:
            raise ValueError(f"steps = {steps!r} must be an integer in 1..{start}")
        return steps

    # -- the VAE -------------------------------------------------------------------------------------------------------

    def encode_distributions(self, points: torch.Tensor, generator: torch.Generator | None = None,
                             sample: bool = True) -> dict[str, torch.Tensor]:
        """q(z0 | x) and q(h0 | x, z0): ``mu_z``, ``log_sigma_z`` (B, style_dim), ``z`` (the z0 h0 was encoded with:
        a sample or the mean), ``mu_h``, ``log_sigma_h`` (B, N, 3 + latent_dim; ``log_sigma_offset`` applied), ``h``.

        Raises:
            ValueError: points not finite (B, N, 3) with N ≥ sa_centers[0].
        """
        check_points(points, "points", min_points=self.config.sa_centers[0])
        mu_z, ls_z = self.vae.style_encoder(points)
        z = mu_z + torch.exp(ls_z) * randn(mu_z.shape, generator, mu_z.device, mu_z.dtype) if sample else mu_z
        mu_h, ls_h = self.vae.encoder(points, z)
        ls_h = ls_h - self.config.log_sigma_offset
        h = mu_h + torch.exp(ls_h) * randn(mu_h.shape, generator, mu_h.device, mu_h.dtype) if sample else mu_h
        return {"mu_z": mu_z, "log_sigma_z": ls_z, "z": z, "mu_h": mu_h, "log_sigma_h": ls_h, "h": h}

    def encode(self, points: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None
               ) -> LionLatents:
        """Encode normalised points (B, N, 3) to latents: z0 ~ q(z0 | x), then h0 ~ q(h0 | x, z0) (means when
        ``sample`` is false).

        Raises:
            ValueError: empty, non-finite or mis-shaped points (N ≥ ``config.sa_centers[0]``).
        """
        d = self.encode_distributions(points, generator, sample)
        return LionLatents(d["z"], d["h"])

    def decode(self, latents: LionLatents) -> torch.Tensor:
        """Points (B, N, 3) in the normalised model frame from latents (the decoder conditioned on z0)."""
        self._check_latents(latents)
        return self.vae.decoder(latents.h, latents.z)

    def vae_loss(self, points: torch.Tensor, lambda_z: float = 1.0, lambda_h: float = 1.0,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The VAE objective (the paper's ELBO with KL weights, public ``vae_adain.Model.get_loss``).

        recon = Σ over points and xyz of |x̂ − x| (``l1_sum``), kl_z = Σ KL(q(z0|x) ‖ N(0, I)), kl_h = Σ KL(q(h0|x,
        z0) ‖ N(0, I)) (xyz and feature parts, each weight 1 in the released configs), all per shape and averaged over
        the batch; loss = recon + lambda_z · kl_z + lambda_h · kl_h (the trainer anneals the lambdas; the public code
        anneals both from 1e-7 to 0.5). Unlike the public code (which sums recon over the batch but averages the
        KL), everything here is per shape.

        Returns:
            {"loss", "recon", "kl_z", "kl_h"}: 0-d tensors (loss differentiable).
        Raises:
            ValueError: bad points (see :meth:`encode`) or negative lambdas.
        """
        for name, value in (("lambda_z", lambda_z), ("lambda_h", lambda_h)):
            if not float(value) >= 0:
                raise ValueError(f"{name} = {value!r} must be >= 0")
        d = self.encode_distributions(points, generator, sample=True)
        recon_points = self.vae.decoder(d["h"], d["z"])
        b = points.shape[0]
        recon = F.l1_loss(recon_points, points, reduction="none").reshape(b, -1).sum(1).mean()
        kl_z = _kl_normal(d["mu_z"], d["log_sigma_z"]).reshape(b, -1).sum(1).mean()
        kl_h = _kl_normal(d["mu_h"], d["log_sigma_h"]).reshape(b, -1).sum(1).mean()
        loss = recon + lambda_z * kl_z + lambda_h * kl_h
        return {"loss": loss, "recon": recon, "kl_z": kl_z, "kl_h": kl_h}

    # -- the latent DDMs -----------------------------------------------------------------------------------------------

    def ddm_loss(self, latents: LionLatents, which: str = "z", generator: torch.Generator | None = None,
                 clip_feat: torch.Tensor | None = None) -> torch.Tensor:
        """ε-prediction loss of one latent DDM (public ``train_2prior``, ``pvd_mse_loss``): t ~ U{1..T},
        x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, loss = mean (ε̂ − ε)² with the mixed ε̂. ``which`` = ``z`` (shape latent) or
        ``h`` (latent points, conditioned on ``latents.z``). Latents are the VAE's (detach them for prior-only
        training). ``clip_feat`` (B, clip_dim): each shape's raw CLIP feature, for a conditioned model.

        Raises:
            ValueError: unknown ``which``, bad latents, ``clip_feat`` missing / refused / mis-shaped.
        """
        if which not in ("z", "h"):
            raise ValueError(f"which = {which!r} must be 'z' or 'h'")
        self._check_latents(latents)
        feat = self._clip(clip_feat, len(latents))
        x0 = latents.z if which == "z" else latents.h
        if which == "h":
            self._check_prior_points(x0, "latents.h")
        b = x0.shape[0]
        gen_device = generator.device if generator is not None else x0.device
        t = torch.randint(1, self.config.timesteps + 1, (b,), generator=generator, device=gen_device).to(x0.device)
        noise = randn(x0.shape, generator, x0.device, x0.dtype)
        x_t = q_sample(self.schedule(), x0, t, noise)
        eps_fn = self._eps_z_of(feat) if which == "z" else self._eps_h_of(latents.z, feat)
        eps = eps_fn(x_t, t.float())
        return F.mse_loss(eps, noise)

    @torch.no_grad()
    def sample(self, num: int, steps: int | None = None, sampler: str = "ddpm",
               generator: torch.Generator | None = None, callback: StepCallback | None = None,
               eta: float | None = None, clip_feat: torch.Tensor | None = None) -> LionLatents:
        """Generate ``num`` latents: z0 from the shape-latent DDM, then h0 (``config.num_points`` points) from the
        latent-point DDM conditioned on z0. Decode them with :meth:`decode`.

        Args:
            steps: denoising steps per DDM (default T for ``ddpm``, ``config.ddim_steps`` for ``ddim``).
            sampler: ``ddpm`` (ancestral) or ``ddim``.
            eta: DDIM noise (default ``config.ddim_eta``); ignored by ddpm.
            callback: ``callback(step, total, x)`` with total = 2 · steps (both DDMs); may raise to cancel.
            clip_feat: (num | 1, clip_dim) raw CLIP features of a conditioned model (public ``demo.py``:
                ``encode_text(tokens).float()``); None for an unconditional one.
        Raises:
            ValueError: num < 1, unknown sampler, steps outside 1..T, ``clip_feat`` missing / refused / mis-shaped.
        """
        if not isinstance(num, int) or isinstance(num, bool) or num < 1:
            raise ValueError(f"num = {num!r} must be a positive integer")
        feat = self._clip(clip_feat, num)
        c = self.config
        steps = self._steps(sampler, steps, c.timesteps)
        eta = c.ddim_eta if eta is None else float(eta)
        device = self.device
        z_T = randn((num, c.style_dim), generator, device)
        z = self._run(sampler, self._eps_z_of(feat), z_T, c.timesteps, steps, generator, callback, 0,
                      2 * steps, eta)
        h_T = randn((num, c.num_points, c.latent_point_dim), generator, device)
        h = self._run(sampler, self._eps_h_of(z, feat), h_T, c.timesteps, steps, generator, callback,
                      steps, 2 * steps, eta)
        return LionLatents(z, h)

    @torch.no_grad()
    def diffuse_denoise(self, latents: LionLatents, tau: int, steps: int | None = None, sampler: str = "ddpm",
                        generator: torch.Generator | None = None, callback: StepCallback | None = None,
                        diffuse_z: bool = True, eta: float | None = None, clip_feat: torch.Tensor | None = None
                        ) -> LionLatents:
        """Diffuse latents to timestep ``tau`` with q(x_τ | x_0), then denoise back (LION §3.3: multimodal generation,
        voxel-guided synthesis and denoising; public ``trainers/denoise_pts.py``). z0 first (unless ``diffuse_z`` is
        false: z0 kept), then h0 conditioned on the new z0. Small τ keeps the input, τ near T forgets it.

        Args:
            tau: integer in 1..T. steps: denoising steps per DDM in 1..τ (default τ for ddpm, min(ddim_steps, τ)).
            clip_feat: (B | 1, clip_dim) raw CLIP features (conditioned models only).
        Raises:
            ValueError: tau outside 1..T (the message names ``tau``), bad steps / sampler / latents / ``clip_feat``.
        """
        c = self.config
        if not isinstance(tau, int) or isinstance(tau, bool) or not 1 <= tau <= c.timesteps:
            raise ValueError(f"tau = {tau!r} must be an integer in 1..{c.timesteps}")
        self._check_latents(latents)
        self._check_prior_points(latents.h, "latents.h")
        feat = self._clip(clip_feat, len(latents))
        steps = self._steps(sampler, steps, tau)
        eta = c.ddim_eta if eta is None else float(eta)
        schedule = self.schedule()
        b = len(latents)
        t = torch.full((b,), tau, device=latents.z.device)
        stages = 2 if diffuse_z else 1
        z = latents.z
        if diffuse_z:
            z_t = q_sample(schedule, z, t, randn(z.shape, generator, z.device, z.dtype))
            z = self._run(sampler, self._eps_z_of(feat), z_t, tau, steps, generator, callback, 0,
                          stages * steps, eta)
        h = latents.h
        h_t = q_sample(schedule, h, t, randn(h.shape, generator, h.device, h.dtype))
        h = self._run(sampler, self._eps_h_of(z, feat), h_t, tau, steps, generator, callback,
                      (stages - 1) * steps, stages * steps, eta)
        return LionLatents(z, h)

    @torch.no_grad()
    def to_noise(self, latents: LionLatents, steps: int = 50, callback: StepCallback | None = None,
                 clip_feat: torch.Tensor | None = None) -> LionLatents:
        """Deterministic encoding of latents into the DDMs' noise through the probability-flow ODE (DDIM η = 0):
        z0 → z_T, then h0 → h_T conditioned on z0 (and ``clip_feat`` (B | 1, clip_dim) for a conditioned model).
        Interpolate in this space, then :meth:`from_noise`.

        Raises:
            ValueError: steps outside 2..T, bad latents, ``clip_feat`` missing / refused / mis-shaped.
        """
        steps = self._ode_steps(steps)
        self._check_latents(latents)
        self._check_prior_points(latents.h, "latents.h")
        feat = self._clip(clip_feat, len(latents))
        z0 = latents.z
        z_T = ode_encode(self._eps_z_of(feat), z0, self.schedule(), steps,
                         self._offset(callback, 0, 2 * (steps - 1)))
        h_T = ode_encode(self._eps_h_of(z0, feat), latents.h, self.schedule(), steps,
                         self._offset(callback, steps - 1, 2 * (steps - 1)))
        return LionLatents(z_T, h_T)

    @torch.no_grad()
    def from_noise(self, noise: LionLatents, steps: int = 50, callback: StepCallback | None = None,
                   clip_feat: torch.Tensor | None = None) -> LionLatents:
        """Inverse of :meth:`to_noise`: z_T → z0, then h_T → h0 conditioned on the new z0 (probability-flow ODE;
        ``clip_feat`` as :meth:`to_noise`).

        Raises:
            ValueError: steps outside 2..T, bad noise latents, ``clip_feat`` missing / refused / mis-shaped.
        """
        steps = self._ode_steps(steps)
        self._check_latents(noise, "noise")
        self._check_prior_points(noise.h, "noise.h")
        feat = self._clip(clip_feat, len(noise))
        z0 = ode_decode(self._eps_z_of(feat), noise.z, self.schedule(), steps,
                        self._offset(callback, 0, 2 * (steps - 1)))
        h0 = ode_decode(self._eps_h_of(z0, feat), noise.h, self.schedule(), steps,
                        self._offset(callback, steps - 1, 2 * (steps - 1)))
        return LionLatents(z0, h0)

    def _ode_steps(self, steps: int) -> int:
        if not isinstance(steps, int) or isinstance(steps, bool) or not 2 <= steps <= self.config.timesteps:
            raise ValueError(f"steps = {steps!r} must be an integer in 2..{self.config.timesteps}")
        return steps

    @staticmethod
    def _offset(callback: StepCallback | None, offset: int, total: int) -> StepCallback | None:
        if callback is None:
            return None
        return lambda step, _n, x: callback(offset + step, total, x)
