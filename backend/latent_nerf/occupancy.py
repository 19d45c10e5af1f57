"""Empty-space skipping for Latent-NeRF: an occupancy grid over the scene box, updated during training.

Instant-NGP (Müller et al., SIGGRAPH 2022, §4 "Accelerated ray marching") keeps a coarse grid of occupancy bits over
the scene and skips the field wherever a bit is off; nerfacc's ``OccGridEstimator`` (Li et al., "NerfAcc", ICCV 2023)
updates it as used here, with its defaults:

- every ``update_every`` = 16 steps, each updated cell is evaluated at one uniformly random point inside it; its value
  is the opacity of one render sample there, ``1 − exp(−σ · step_size)`` (nerfacc's ``occ_eval_fn`` = density times
  the render step);
- an exponential moving average with decay 0.95 that keeps the maximum: ``occ ← max(occ · 0.95, new)``;
- a cell is occupied when ``occ > min(mean(occ), threshold)``, threshold 0.01 (the mean keeps a grid whose field is
  still faint from going empty);
- during the first ``warmup_steps`` = 256 steps every cell is updated; afterwards a quarter of the cells drawn
  uniformly plus as many drawn among the occupied ones.

Before its first update every cell is occupied (nothing is skipped). nerfacc itself does not serve here: its ray
marching (``traverse_grids``) is a CUDA extension compiled from source at first use, so it needs nvcc and does not
run with the CPU build of torch; this module is the same bookkeeping in plain torch, on any device.

Frames: the grid spans the NeRF frame's box [-bound, bound]³; cell (i, j, k) covers
``[-bound + i h, -bound + (i + 1) h] × …`` with ``h = 2 bound / R``; flat cell index ``i R² + j R + k``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = ["OccupancyGrid"]


class OccupancyGrid:
    """A resolution³ grid of occupancy bits over [-bound, bound]³, updated from a field's density (nerfacc's rule).

    Args:
        bound: half-side of the box (the field's ``config.bound``), > 0.
        resolution: R cells per axis, in [1, 512].
        step_size: the render's sample spacing δ used to turn a density into a sample opacity ``1 − exp(−σ δ)``
            (NeRF-frame units, > 0; for stratified rendering with S samples the longest spacing, the box diagonal
            over S, is the conservative choice: a larger δ marks more cells).
        threshold: opacity under which a cell may be empty, in (0, 1) (nerfacc: 0.01).
        decay: EMA decay of the per-cell occupancy, in (0, 1] (nerfacc: 0.95).
        update_every: steps between updates, >= 1 (nerfacc: 16).
        warmup_steps: steps during which every cell is updated (nerfacc: 256).
        device: where the grid lives.

    Attributes:
        occs: (R³,) float32 EMA of each cell's sample opacity (0 before the first update).
        binary: (R³,) bool occupancy bits (all True before the first update).
        always_occupied: (R³,) bool or None, cells kept occupied whatever the field (:meth:`keep_occupied`).

    Raises:
        ValueError: an argument out of range (naming it).
    """

    def __init__(self, bound: float, resolution: int = 64, step_size: float = 0.05, threshold: float = 0.01,
                 decay: float = 0.95, update_every: int = 16, warmup_steps: int = 256,
                 device: torch.device | str = "cpu"):
        checks = {"bound": (bound, 0.0, math.inf), "step_size": (step_size, 0.0, math.inf),
                  "threshold": (threshold, 0.0, 1.0)}
        for name, (value, low, high) in checks.items():
            if not (isinstance(value, (int, float)) and low < value < high):
                raise ValueError(f"{name} must be a number in ({low}, {high}), got {value!r}")
        if not (isinstance(decay, (int, float)) and 0.0 < decay <= 1.0):
            raise ValueError(f"decay must be a number in (0, 1], got {decay!r}")
        if int(resolution) != resolution or not 1 <= resolution <= 512:
            raise ValueError(f"resolution must be an integer in [1, 512], got {resolution!r}")
        if int(update_every) != update_every or update_every < 1:
            raise ValueError(f"update_every must be a positive integer, got {update_every!r}")
        if int(warmup_steps) != warmup_steps or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        self.bound, self.resolution, self.step_size = float(bound), int(resolution), float(step_size)
        self.threshold, self.decay = float(threshold), float(decay)
        self.update_every, self.warmup_steps = int(update_every), int(warmup_steps)
        self.device = torch.device(device)
        cells = self.resolution ** 3
        self.occs = torch.zeros(cells, device=self.device)
        self.binary = torch.ones(cells, dtype=torch.bool, device=self.device)
        self.always_occupied: torch.Tensor | None = None
        r = torch.arange(self.resolution, device=self.device)
        self._coords = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 3)  # (R³, 3) i, j, k

    @property
    def occupied_fraction(self) -> float:
        """Share of occupied cells, in [0, 1]."""
        return float(self.binary.float().mean())

    def cell_centers(self) -> torch.Tensor:
        """(R³, 3) float32 NeRF-frame centres of the cells, flat index order (i slowest)."""
        return (self._coords.float() + 0.5) * (2.0 * self.bound / self.resolution) - self.bound

    def keep_occupied(self, cells: torch.Tensor | None) -> None:
        """Cells that stay occupied whatever the field says (e.g. inside a sketch that a loss must be able to fill):
        (R³,) bool, or None to clear. Applied now and at every update. Raises ValueError on a wrong shape."""
        if cells is not None:
            if cells.shape != (self.resolution ** 3,):
                raise ValueError(f"cells must have shape ({self.resolution ** 3},), got {tuple(cells.shape)}")
            cells = cells.to(device=self.device, dtype=torch.bool)
            self.binary |= cells
        self.always_occupied = cells

    def cell_index(self, points: torch.Tensor) -> torch.Tensor:
        """(..., 3) NeRF-frame points (clamped to the box) → (...,) int64 flat cell index."""
        ijk = ((points + self.bound) * (self.resolution / (2.0 * self.bound))).long().clamp(0, self.resolution - 1)
        return (ijk[..., 0] * self.resolution + ijk[..., 1]) * self.resolution + ijk[..., 2]

    def occupied(self, points: torch.Tensor) -> torch.Tensor:
        """(..., 3) NeRF-frame points → (...,) bool: the point's cell is occupied (points outside the box: the
        nearest cell)."""
        return self.binary[self.cell_index(points.to(self.device))].to(points.device)

    @torch.no_grad()
    def update(self, step: int, density_fn: Callable[[torch.Tensor], torch.Tensor], generator: torch.Generator,
               chunk: int = 1 << 18) -> bool:
        """Update the grid at ``step`` when ``step % update_every == 0`` (nerfacc's rule; see the module docstring).

        Args:
            step: the training step (0-based: the first call with step 0 updates).
            density_fn: (N, 3) NeRF-frame points → (N,) density >= 0 (called without gradients, ``chunk`` at a time).
            generator: torch.Generator on the grid's device, for the cell choice and the points inside cells.
            chunk: points per ``density_fn`` call.

        Returns:
            True when the grid was updated.
        """
        if step % self.update_every:
            return False
        cells = self.resolution ** 3
        if step < self.warmup_steps:
            indices = torch.arange(cells, device=self.device)
        else:
            quarter = max(cells // 4, 1)
            uniform = torch.randint(cells, (quarter,), generator=generator, device=self.device)
            occupied = torch.nonzero(self.binary)[:, 0]
            if quarter < len(occupied):
                occupied = occupied[torch.randint(len(occupied), (quarter,), generator=generator, device=self.device)]
            indices = torch.cat([uniform, occupied])
        jitter = torch.rand(len(indices), 3, generator=generator, device=self.device)
        points = (self._coords[indices].float() + jitter) * (2.0 * self.bound / self.resolution) - self.bound
        density = torch.cat([density_fn(points[s:s + chunk]).reshape(-1) for s in range(0, len(points), chunk)])
        opacity = 1.0 - torch.exp(-density.float().to(self.device) * self.step_size)
        self.occs[indices] = torch.maximum(self.occs[indices] * self.decay, opacity)
        self.binary = self.occs > self.occs.mean().clamp(max=self.threshold)
        if self.always_occupied is not None:
            self.binary |= self.always_occupied
        return True
