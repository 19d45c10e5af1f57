"""Michelangelo (Zhao et al., NeurIPS 2023): the shape-image-text aligned VAE (SITA-VAE) and the aligned shape latent
diffusion model (ASLDM), written for LatentForge.

Modules:

- :mod:`.config`: typed configs and the presets of the public checkpoints (``shapevae-256``, ``image-ASLDM-256``,
  ``text-ASLDM-256``) plus ``tiny`` for tests.
- :mod:`.layers`: the attention blocks both networks are made of.
- :mod:`.shape_vae`: :class:`~.shape_vae.ShapeVAE`, point cloud + normals -> 256x64 latents -> occupancy logits.
- :mod:`.asldm`: :class:`~.asldm.ASLDMDenoiser`, the ε-prediction transformer over those latents.
- :mod:`.checkpoint`: reading the public Lightning checkpoints onto these modules, and our own saved format.

Nothing here downloads or loads weights at import time.
"""
