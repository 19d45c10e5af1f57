"""Which device and dtype the backend computes with, how much memory it has, and what an out-of-memory looks like.

Devices, in the order ``"auto"`` picks them: CUDA (NVIDIA; nvdiffrast rasterizer, float16 weights), MPS (Apple
Silicon's Metal; the torch rasterizer, float32 weights), CPU (float32).
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Iterable

import torch

HEADROOM = 1.10
"""A model is refused when its weights × this exceed the device's free memory (allocator slack, first activations)."""


class InsufficientMemoryError(RuntimeError):
    """The device has too little free memory for what a job is about to load (raised before loading, so nothing is
    half-done); the service reports it with the ``out_of_memory`` code."""


def mps_available() -> bool:
    """Whether Apple's Metal (MPS) backend of torch is usable on this machine."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None → CUDA when available, else MPS (Apple Silicon), else CPU; anything else is parsed by
    ``torch.device``.

    Raises:
        ValueError: a CUDA or MPS device was requested but is not available on this machine.
    """
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available on this machine")
    if device.type == "mps" and not mps_available():
        raise ValueError(f"device {str(device)!r} requested but MPS (Apple Silicon's Metal) is not available on this "
                         f"machine")
    return device


def default_dtype(device: torch.device) -> torch.dtype:
    """float16 weights on CUDA (half the memory, tensor cores); float32 on MPS and CPU.

    On MPS float16 would halve the weights too, but the score-distillation gradients flow through the UNet and some
    MPS float16 kernels lose precision there; Apple Silicon's unified memory makes float32 affordable, so it is the
    safe default. CPUs lack fast float16 matmuls.
    """
    return torch.float16 if device.type == "cuda" else torch.float32


@dataclass(frozen=True)
class DeviceMemory:
    """Memory of a compute device, bytes.

    Attributes:
        total: the device's memory (CUDA: the GPU's; MPS: Metal's recommended working set; CPU: RAM).
        free: what can still be allocated (CUDA: free on the GPU, all processes counted; MPS: total − what Metal's
            driver holds for this process; CPU: the kernel's MemAvailable).
    """

    total: int
    free: int


def device_memory(device: torch.device) -> DeviceMemory | None:
    """The device's total and free memory, or None where the platform does not tell."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return DeviceMemory(int(total), int(free))
    if device.type == "mps":
        total = int(torch.mps.recommended_max_memory())
        return DeviceMemory(total, max(0, total - int(torch.mps.driver_allocated_memory())))
    if device.type == "cpu":
        return _ram()
    return None


def _ram() -> DeviceMemory | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.split()[1:2]}
        return DeviceMemory(info["MemTotal"], info.get("MemAvailable", info.get("MemFree", 0)))
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return DeviceMemory(os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page)
    except (ValueError, OSError, AttributeError):
        return None


def describe_memory(memory: DeviceMemory | None) -> str:
    """``"23.5 GB, 20.1 GB free"`` (decimal GB), or ``"memory unknown"``."""
    return "memory unknown" if memory is None else f"{memory.total / 1e9:.1f} GB, {memory.free / 1e9:.1f} GB free"


def weight_bytes(modules: Iterable[torch.nn.Module], dtype: torch.dtype | None = None) -> int:
    """Bytes the parameters and buffers of ``modules`` take in ``dtype`` (floating ones; None = as they are)."""
    total = 0
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            size = torch.empty((), dtype=dtype).element_size() if dtype is not None and t.is_floating_point() \
                else t.element_size()
            total += t.numel() * size
    return total


def check_fits(device: torch.device, needed: int, what: str) -> None:
    """Refuse early, before loading, what would not fit in an accelerator's free memory.

    Args:
        device: where it would go; CPU is not checked (the OS pages rather than failing).
        needed: bytes it needs (e.g. :func:`weight_bytes` of a model's weights); refused above free / :data:`HEADROOM`.
        what: what it is, for the message (``"model 'stable-diffusion-v1-5/…' (UNet + VAE + text encoder)"``).

    Raises:
        InsufficientMemoryError: not enough free memory; the message gives both sizes and what to try.
    """
    if device.type == "cpu":
        return
    memory = device_memory(device)
    if memory is None or needed * HEADROOM <= memory.free:
        return
    raise InsufficientMemoryError(
        f"{what} needs {needed / 1e9:.2f} GB for its weights but {device} has {memory.free / 1e9:.2f} GB free of "
        f"{memory.total / 1e9:.2f} GB; close other programs using the GPU, let the backend keep fewer models "
        f"(--keep-models 1), or use a smaller model")


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` means the device (or the host) ran out of memory: torch's CUDA OOM, MPS's "out of memory"
    RuntimeError, Python's MemoryError, or an early :class:`InsufficientMemoryError`."""
    if isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError, InsufficientMemoryError)):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def release_memory(device: torch.device | None = None) -> None:
    """Hand cached allocator blocks back after a failure or an eviction (garbage-collect, then empty the CUDA / MPS
    caching allocators)."""
    gc.collect()
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        torch.cuda.empty_cache()
    if mps_available() and (device is None or device.type == "mps"):
        torch.mps.empty_cache()
