"""Which device and dtype the backend computes with."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None → CUDA when available, else CPU; anything else is parsed by ``torch.device``.

    Raises:
        ValueError: a CUDA device was requested but CUDA is not available.
    """
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available on this machine")
    return device


def default_dtype(device: torch.device) -> torch.dtype:
    """fp16 weights on CUDA (memory, speed), fp32 on CPU (fp16 matmuls are slow or missing there)."""
    return torch.float16 if device.type == "cuda" else torch.float32
