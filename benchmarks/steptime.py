"""Per-step timing split into named parts, shared by the step-time benchmarks.

A step is a function that calls ``mark(name)`` after each part; CUDA work is synchronised before every clock read,
so each part's time is its own GPU time too.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def time_steps(step: Callable[[Callable[[str], None]], None], steps: int, warmup: int,
               device: torch.device) -> dict[str, list[float]]:
    """Run ``warmup + steps`` steps and return part name -> seconds of each timed step (warm-up steps dropped).

    Args:
        step: ``step(mark)``; calls ``mark("render")`` etc. at the end of each part, in the same order every step.
        steps, warmup: timed steps (>= 1) and untimed warm-up steps before them.
        device: synchronised before each clock read when CUDA.
    """
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    parts: dict[str, list[float]] = {}
    for i in range(warmup + steps):
        sync()
        last = time.perf_counter()

        def mark(name: str) -> None:
            nonlocal last
            sync()
            now = time.perf_counter()
            if i >= warmup:
                parts.setdefault(name, []).append(now - last)
            last = now

        step(mark)
    return parts


def print_split(title: str, parts: dict[str, list[float]]) -> None:
    """Print each part's median milliseconds and its share of the median step, then the step and steps/s."""
    total = statistics.median([sum(p) for p in zip(*parts.values())])
    print(title)
    print(f"{'part':<12}{'median ms':>12}{'share of step':>16}")
    for key, values in parts.items():
        med = statistics.median(values)
        print(f"{key:<12}{med * 1e3:>12.2f}{med / total:>15.1%}")
    print(f"{'step':<12}{total * 1e3:>12.2f}{1:>15.1%}")
    print(f"{'steps/s':<12}{1 / total:>12.2f}")


def guidance_floor(sds, latents: torch.Tensor, cameras, generator: torch.Generator, steps: int, warmup: int,
                   device: torch.device) -> list[float]:
    """Seconds of the SDS guidance alone (noise, UNet with CFG, the SDS target) on fixed ``latents``, no graph.

    The baseline of a step benchmark: what a score-distillation step costs at least, whatever the 3D representation;
    ``step / floor`` is the price of the representation (render + backward) on top of it.
    """
    latents = latents.detach()

    def step(mark) -> None:
        with torch.no_grad():
            sds(latents, cameras, generator)
        mark("guidance")

    return time_steps(step, steps, warmup, device)["guidance"]


def print_ratio(parts: dict[str, list[float]], floor: list[float]) -> None:
    """Print the baseline (guidance alone, measured in this run) and the step's ratio to it."""
    step = statistics.median([sum(p) for p in zip(*parts.values())])
    base = statistics.median(floor)
    print(f"baseline: SDS guidance alone (same UNet, same latents size) {base * 1e3:.2f} ms; "
          f"step / baseline = {step / base:.2f}x")


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
