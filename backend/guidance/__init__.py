"""Guidance: what turns a rendered image into a gradient. The :class:`~backend.guidance.denoiser.Denoiser` protocol,
score distillation and the :class:`~backend.guidance.sds.Guidance` contract with timestep annealing (:mod:`.sds`),
ProlificDreamer's variational score distillation (:mod:`.vsd`) and the oracle denoiser for tests (:mod:`.oracle`)."""
