"""What every pipeline gets from whoever runs it (the job worker, the CLI, a test) and what it hands back."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch


class JobCancelled(Exception):
    """Raised inside a pipeline at the next step boundary after cancellation was requested."""


@dataclass
class JobContext:
    """Runtime services for one pipeline run.

    Attributes:
        device: torch device to compute on.
        models: a :class:`backend.models.cache.ModelCache` (kept warm across jobs by the service).
        cancel_event: set by the service when the user cancels; checked at every :meth:`progress` call.
        on_progress: ``(stage, step, total, losses: dict[str, float], eta_s: float | None) -> None``.
        on_preview: ``(step, image (H, W, 3) uint8 row 0 = top, decoder: "linear" | "vae") -> None``.
        on_partial: ``(step, arrays: dict[str, np.ndarray]) -> None`` (intermediate meshes, later pipelines).
    """

    device: torch.device
    models: Any
    cancel_event: threading.Event = field(default_factory=threading.Event)
    on_progress: Callable[..., None] | None = None
    on_preview: Callable[..., None] | None = None
    on_partial: Callable[..., None] | None = None
    _t0: float = field(default_factory=time.monotonic)

    def check_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise JobCancelled()

    def progress(self, stage: str, step: int, total: int, losses: dict[str, float] | None = None) -> None:
        """Report progress (ETA from the mean step time so far) and raise :class:`JobCancelled` if cancelled."""
        self.check_cancelled()
        if self.on_progress is not None:
            elapsed = time.monotonic() - self._t0
            eta = elapsed / step * (total - step) if step > 0 else None
            self.on_progress(stage, step, total, dict(losses or {}), eta)

    def restart_clock(self) -> None:
        """Start ETA timing now (after model loading / set-up)."""
        self._t0 = time.monotonic()

    def preview(self, step: int, image: np.ndarray, decoder: str) -> None:
        if self.on_preview is not None:
            self.on_preview(step, image, decoder)


@dataclass
class PipelineResult:
    """A finished run: wire arrays (protocol kinds: ``mesh.v_pos`` …, ``texture``), JSON metadata, timings (s),
    and ``extras``: in-process values (tensors) for tests and benchmarks, never sent or stored."""

    arrays: dict[str, np.ndarray]
    metadata: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


def to_uint8_image(image: torch.Tensor) -> np.ndarray:
    """``(3|4, H, W)`` float in [0, 1], row 0 = top → ``(H, W, 3|4)`` uint8 numpy."""
    return (image.detach().float().clamp(0, 1).permute(1, 2, 0) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
