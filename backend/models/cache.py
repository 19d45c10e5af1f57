"""One least-recently-used cache for every method's loaded models, kept warm between jobs."""

from __future__ import annotations

import inspect
import threading
from typing import Any, Callable, TypeVar

import torch

from .devices import release_memory
from .stable_diffusion import load_stable_diffusion

T = TypeVar("T")


class ModelCache:
    """Keeps recently used models loaded between jobs (the service runs one GPU job at a time).

    Thread-safe. Holds at most ``capacity`` entries, evicting the least recently used (and emptying the CUDA cache).

    Args:
        capacity: models kept loaded (``serve --keep-models``).
        allow_download: loaders may fetch missing weights from the Hub.
        low_vram: ``--low-vram``: passed as ``low_vram=True`` to every loader that declares a ``low_vram`` parameter
            (e.g. :func:`~backend.models.stable_diffusion.load_stable_diffusion`: attention slicing, VAE tiling and
            checkpointing, text encoder on the CPU); loaders without one load as usual.
    """

    def __init__(self, capacity: int = 1, allow_download: bool = False, low_vram: bool = False):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.allow_download = allow_download
        self.low_vram = bool(low_vram)
        self._entries: dict[tuple, Any] = {}
        self._lock = threading.Lock()
        self.loads = 0  # how many real loads happened (tests assert warm reuse)

    def get(self, loader: Callable[..., T], model: str, device: torch.device, dtype: torch.dtype | None = None) -> T:
        """``loader(model, device, dtype, allow_download=...)`` for ``(loader, model, device, dtype)``, loaded at most
        once while cached.

        Every method family's loader has that signature (:func:`~backend.models.stable_diffusion.load_stable_diffusion`,
        :func:`backend.michelangelo.model.load_michelangelo`, …), so this cache knows none of them: a new method adds a
        loader, not a method here.

        Raises:
            whatever ``loader`` raises (:class:`~backend.models.base.ModelNotFoundError` for unknown models); nothing
            is cached then.
        """
        options = {"allow_download": self.allow_download}
        if self.low_vram and "low_vram" in inspect.signature(loader).parameters:
            options["low_vram"] = True
        key = (f"{loader.__module__}.{loader.__qualname__}", model, str(device), str(dtype), options.get("low_vram"))
        return self._get(key, lambda: loader(model, device, dtype, **options))

    def stable_diffusion(self, model: str, device: torch.device, dtype: torch.dtype | None = None):
        """Shorthand for ``get(load_stable_diffusion, model, device, dtype)`` (Stable Diffusion components)."""
        return self.get(load_stable_diffusion, model, device, dtype)

    def clear(self) -> None:
        """Drop every loaded model and hand the memory back (after an out-of-memory, so the next job starts from an
        empty device)."""
        with self._lock:
            self._entries.clear()
        release_memory()

    def _get(self, key: tuple, load) -> Any:
        """The cached value for ``key``, else ``load()`` (evicting least recently used entries first) and cache it."""
        with self._lock:
            if key in self._entries:
                self._entries[key] = self._entries.pop(key)  # mark most recently used
                return self._entries[key]
            while len(self._entries) >= self.capacity:
                self._entries.pop(next(iter(self._entries)))
                release_memory()
            value = load()
            self.loads += 1
            self._entries[key] = value
            return value
