"""Stable Diffusion 1.x/2.x latent space → RGB without the VAE: the linear approximation used for cheap previews."""

from __future__ import annotations

import torch


# Linear approximation latent → RGB for SD 1.x/2.x latents (rows: latent channels L1..L4, columns: R, G, B), as used by
# Latent-NeRF for cheap previews and to initialise its RGB refinement head. Output is roughly in [−1, 1].
LATENT_RGB_FACTORS = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)


def latents_to_rgb_linear(latents: torch.Tensor) -> torch.Tensor:
    """Cheap preview decode: ``(B, 4, H, W)`` SD latents → ``(B, 3, H, W)`` float in [0, 1] via the 4×3 matrix."""
    if latents.ndim != 4 or latents.shape[1] != 4:
        raise ValueError(f"latents must be (B, 4, H, W), got {tuple(latents.shape)}")
    m = torch.tensor(LATENT_RGB_FACTORS, dtype=latents.dtype, device=latents.device)
    rgb = torch.einsum("bchw,cd->bdhw", latents, m)
    return ((rgb + 1.0) * 0.5).clamp(0.0, 1.0)
