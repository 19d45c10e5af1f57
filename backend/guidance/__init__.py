"""Guidance: what turns a rendered image into a gradient. The :class:`~backend.guidance.denoiser.Denoiser` protocol,
score distillation (:mod:`.sds`) and the oracle denoiser for tests (:mod:`.oracle`)."""
