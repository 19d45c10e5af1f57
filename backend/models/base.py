"""What every model loader shares: the error for a model that cannot be found, and the name of the random presets."""

from __future__ import annotations

TINY_RANDOM = "tiny-random"
"""Model name of the in-memory random presets (the real classes at a few thousand parameters; tests, CPU smoke runs)."""


class ModelNotFoundError(RuntimeError):
    """A model id / path could not be resolved to weights on this machine (message says what to do)."""
