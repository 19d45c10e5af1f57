"""LION (Zeng et al., NeurIPS 2022): latent point diffusion — a hierarchical point-cloud VAE (shape latent z0 +
latent points h0, PVCNN networks in plain torch) and two latent DDMs. See :mod:`.model` for the API."""

from .config import PRESETS, TINY_PRESETS, LionConfig, get_preset
from .data import denormalize_points, normalize_points
from .model import LionLatents, LionModel

__all__ = ["LionConfig", "PRESETS", "TINY_PRESETS", "get_preset", "LionModel", "LionLatents", "normalize_points",
           "denormalize_points"]
