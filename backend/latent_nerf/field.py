"""Latent-NeRF field and volume rendering in plain torch (no custom CUDA).

After Metzer et al., "Latent-NeRF for Shape-Guided Generation of 3D Shapes and Textures" (CVPR 2023): a NeRF whose
field maps a point to a density and 4 Stable Diffusion latent channels, volume-rendered at 64×64 for SDS.

- Encoding: a multi-resolution hash grid (Müller et al., "Instant Neural Graphics Primitives", SIGGRAPH 2022), written
  here in torch (hashing, trilinear interpolation of the 8 cell corners) in two equivalent forms — ``reference`` (the
  readable definition: all levels' corners gathered at once from the whole table) and ``fast`` (gathering from
  each level's table in turn, which stays in cache, int32 corner arithmetic laid out so that every operation runs
  along the points, a few dozen operations per chunk) — or NeRF's frequency (positional) encoding.
- MLP: ReLU layers → 1 density pre-activation + 4 linear feature channels (latents are not squashed).
- Density: ``activation(h_density + blob(x))`` with a Gaussian density blob ``blob_density · exp(−‖x‖² / (2 r²))`` at
  the scene centre (Latent-NeRF / stable-dreamfusion add the blob before the activation, so training can remove it).
  The density output's bias starts at ``density_bias`` < 0 so that empty space starts (almost) empty: this module has
  no occupancy grid of its own; :class:`backend.latent_nerf.occupancy.OccupancyGrid` skips empty space at render
  time.

Frames and units: the scene lives in the box [-bound, bound]³ of the NeRF frame, which is Blender's world frame (Z up)
up to a similarity (the sketch normalisation of :mod:`backend.latent_nerf.sketch`); distances along rays are in the same units.
Rays are cast from :class:`backend.geometry.cameras.CameraBatch` cameras; images come back upright (row 0 = top), matching
the pipelines' rasterized renders after their ``flip(1)``.
"""

from __future__ import annotations

import math
from typing import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..params import Config, check_config, param


__all__ = ["NeRFConfig", "HashGridEncoding", "FrequencyEncoding", "LatentNeRF", "trunc_exp"]

# Instant-NGP's spatial hash primes (the first is 1 so that the lowest hashed levels stay coherent along x).
_HASH_PRIMES = (1, 2654435761, 805459861)
# The 8 corners of a grid cell, (8, 3) offsets in {0, 1}.
_CORNERS = torch.tensor([[(c >> 0) & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)], dtype=torch.int64)


@dataclass
class NeRFConfig(Config):
    """Architecture of a :class:`LatentNeRF` (defaults: Latent-NeRF's official grid network, sized for plain torch).

    Checked on construction (:class:`backend.params.Config`); raises ParamError naming the bad field and value.
    """

    encoding: str = param("hashgrid", doc="Position encoding: \"hashgrid\" (multi-resolution hash grid) or "
                                          "\"frequency\" (NeRF positional encoding).", choices=("hashgrid", "frequency"))
    hashgrid_impl: str = param("fast", doc="Hash grid implementation: \"fast\" (vectorised, level-major gathers; "
                                           "equal to the reference within float32 rounding, ~1e-6) or \"reference\" "
                                           "(the plain definition).", choices=("fast", "reference"))
    num_levels: int = param(16, doc="Hash grid: number of resolution levels L.", low=1, high=32)
    features_per_level: int = param(2, doc="Hash grid: feature channels F stored per level (the encoding has L·F "
                                           "channels).", low=1, high=16)
    log2_hashmap_size: int = param(17, doc="Hash grid: log2 of the table size T per level (Instant-NGP uses 19; 17 "
                                           "keeps CPU runs light); levels with at most T vertices are stored densely "
                                           "(no hash).", low=4, high=24)
    base_resolution: int = param(16, doc="Hash grid: cells per axis of the coarsest level, over [-bound, bound].",
                                 low=1, high=1 << 16)
    max_resolution: int = param(2048, doc="Hash grid: cells per axis of the finest level (Latent-NeRF: 2048 · bound; "
                                          ">= base_resolution); levels grow geometrically.", low=1, high=1 << 16)
    num_frequencies: int = param(6, doc="Frequency encoding: octaves k = 0..n-1 of sin/cos(2^k · π · x / bound), plus "
                                        "x itself.", low=0, high=20)
    mlp_width: int = param(64, doc="Hidden width of the MLP.", low=1, high=4096)
    mlp_layers: int = param(3, doc="Linear layers of the MLP (ReLU between them).", low=1, high=32)
    feature_dim: int = param(4, doc="Feature channels of the field: 4 for Stable Diffusion latents (linear output, no "
                                    "squashing), 3 for an RGB field.", low=1, high=64)
    feature_activation: str = param("none", doc="Activation of the feature channels: \"none\" (linear, SD latents) "
                                                "or \"sigmoid\" (colours in [0, 1], NeRF's RGB head).",
                                    choices=("none", "sigmoid"))
    bound: float = param(1.0, doc="Half-side of the scene box [-bound, bound]³ (NeRF frame; the sketch is normalised "
                                  "to radius 0.7 inside it).", low=0.0, low_exclusive=True)
    density_activation: str = param("softplus", doc="Density activation: \"softplus\" or \"trunc_exp\" (exp with the "
                                                    "gradient's exponent clamped at 15, Latent-NeRF's).",
                                    choices=("softplus", "trunc_exp"))
    blob_density: float = param(10.0, doc="Peak of the Gaussian density blob added to the density pre-activation at "
                                          "the origin (0 = no blob).")
    blob_radius: float = param(0.3, doc="Std. dev. of the Gaussian blob, NeRF-frame units (Latent-NeRF: 0.2; "
                                        "stable-dreamfusion: 0.2-0.5).", low=0.0, low_exclusive=True)
    density_bias: float = param(-4.0, doc="Initial bias of the density pre-activation: negative keeps space outside "
                                          "the blob nearly empty at init (with the defaults and softplus: density ~6 at "
                                          "the origin, ~2 at radius 0.3, < 0.1 beyond radius 0.5).")

    def validate(self) -> None:
        """Cross-field rule: ``max_resolution >= base_resolution``. Raises ValueError."""
        if self.max_resolution < self.base_resolution:
            raise ValueError(f"max_resolution ({self.max_resolution}) must be >= base_resolution "
                             f"({self.base_resolution})")


class _TruncExp(torch.autograd.Function):
    """exp(x) whose backward uses exp(min(x, 15)) (stable-dreamfusion / torch-ngp's trunc_exp)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x.clamp(max=15.0))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    """``exp(min(x, 15))`` elementwise; the gradient is ``exp(min(x, 15))`` too (no overflow, no exploding steps)."""
    return _TruncExp.apply(x)


class HashGridEncoding(nn.Module):
    """Multi-resolution hash encoding (Instant-NGP) in torch.

    Level l has ``N_l = floor(base_resolution · b^l)`` cells per axis over [-bound, bound] with
    ``b = (max_resolution / base_resolution)^(1 / (L − 1))``, i.e. (N_l + 1)³ vertices. A level whose vertices fit in
    its table (at most 2^log2_hashmap_size) indexes them densely, ``i + j (N+1) + k (N+1)²``; finer levels hash
    ``(i · 1) xor (j · 2654435761) xor (k · 805459861) mod T``. Each point's feature at a level is the trilinear
    interpolation of its cell's 8 corner entries; the levels' features are concatenated.

    Entries are initialised uniformly in [-1e-4, 1e-4] from torch's global generator (seed it for reproducibility).

    Two implementations compute the same function (``impl``): ``"reference"`` computes the (N, L, 8) int64 corner
    indices and weights level by level, then gathers all levels at once from the whole table (reads that hop between
    levels) and keeps indices and weights for the backward; ``"fast"`` (:class:`_HashGridFast`) gathers level-major
    (each level's table in turn), with int32 corner arithmetic laid out so that every operation runs along the
    points, ``FAST_CHUNK`` points at a time, and keeps int32 indices only when the table's gradient is wanted. Outputs agree to float32 rounding (the same products summed in
    another order); so do the table gradients.

    Args:
        num_levels, features_per_level, log2_hashmap_size, base_resolution, max_resolution: see :class:`NeRFConfig`.
        bound: inputs are expected in [-bound, bound]³; points outside are clamped to the box.
        impl: ``"fast"`` or ``"reference"`` (ValueError otherwise).
    """

    def __init__(self, num_levels: int, features_per_level: int, log2_hashmap_size: int, base_resolution: int,
                 max_resolution: int, bound: float, impl: str = "fast"):
        super().__init__()
        if impl not in ("fast", "reference"):
            raise ValueError(f"impl must be 'fast' or 'reference', got {impl!r}")
        self.impl = impl
        self.num_levels = int(num_levels)
        self.features_per_level = int(features_per_level)
        self.bound = float(bound)
        table_size = 1 << int(log2_hashmap_size)
        growth = (max_resolution / base_resolution) ** (1.0 / max(self.num_levels - 1, 1))
        resolutions = [int(math.floor(base_resolution * growth ** level + 1e-6)) for level in range(self.num_levels)]
        sizes = [min(table_size, (n + 1) ** 3) for n in resolutions]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        self._resolutions = resolutions
        self._table_sizes = sizes
        self._offsets = [int(o) for o in offsets[:-1]]
        self._dense = [(n + 1) ** 3 <= table_size for n in resolutions]
        self.register_buffer("primes", torch.tensor(_HASH_PRIMES, dtype=torch.int64), persistent=False)
        self.register_buffer("corners", _CORNERS.clone(), persistent=False)
        self.register_buffer("strides", torch.tensor([[1, n + 1, (n + 1) ** 2] for n in resolutions]), persistent=False)
        self.embeddings = nn.Parameter(torch.empty(int(offsets[-1]), self.features_per_level).uniform_(-1e-4, 1e-4))
        # The fast path's per-level constants. Resolutions never decrease with the level, so the dense levels (whose
        # vertices fit in their table) are a prefix: levels [0, num_dense) dense, [num_dense, L) hashed.
        self._num_dense = sum(self._dense)
        self.register_buffer("level_res", torch.tensor(resolutions, dtype=torch.float32), persistent=False)
        self.register_buffer("level_offsets", torch.tensor(self._offsets, dtype=torch.int32), persistent=False)

    @property
    def output_dim(self) -> int:
        """Channels of the encoding, L · F."""
        return self.num_levels * self.features_per_level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode points.

        Args:
            x: (N, 3) float32 positions in the NeRF frame (clamped to [-bound, bound]³).

        Returns:
            (N, L · F) float32 features, level-major. Differentiable wrt ``embeddings`` only (not wrt ``x``).
        """
        u = ((x.detach() + self.bound) / (2.0 * self.bound)).clamp(0.0, 1.0)  # (N, 3) in [0, 1]
        if self.impl == "fast":
            return _HashGridFast.apply(self.embeddings, u, self).reshape(x.shape[0], self.output_dim)
        bits = self.corners  # (8, 3) corner offsets
        index = torch.empty(x.shape[0], self.num_levels, 8, dtype=torch.int64, device=x.device)
        weights = torch.empty(x.shape[0], self.num_levels, 8, dtype=self.embeddings.dtype, device=x.device)
        # One level at a time keeps the temporaries at (N, 8) instead of (N, L, 8, 3).
        for level, n in enumerate(self._resolutions):
            pos = u * n  # (N, 3) in vertex units
            cell = pos.floor().clamp(max=n - 1)
            frac = pos - cell  # (N, 3) in [0, 1]
            # Per axis, the two candidate vertex coordinates (c, c + 1) → per corner via the bit table.
            lo_hi = torch.stack([cell, cell + 1], dim=1).long()  # (N, 2, 3)
            if self._dense[level]:
                keys = lo_hi * self.strides[level]
                idx = keys[:, bits[:, 0], 0] + keys[:, bits[:, 1], 1] + keys[:, bits[:, 2], 2]  # (N, 8)
            else:
                keys = lo_hi * self.primes
                idx = (keys[:, bits[:, 0], 0] ^ keys[:, bits[:, 1], 1] ^ keys[:, bits[:, 2], 2]) \
                    & (self._table_sizes[level] - 1)
            index[:, level] = idx + self._offsets[level]
            w_axis = torch.stack([1.0 - frac, frac], dim=1)  # (N, 2, 3) trilinear factors per axis
            weights[:, level] = w_axis[:, bits[:, 0], 0] * w_axis[:, bits[:, 1], 1] * w_axis[:, bits[:, 2], 2]
        return _InterpolateRows.apply(self.embeddings, index, weights).reshape(x.shape[0], self.output_dim)


class _InterpolateRows(torch.autograd.Function):
    """``out[n, l] = Σ_c weights[n, l, c] · table[index[n, l, c]]`` with a scatter-add backward for ``table``.

    (torch's embedding backward on the CPU sorts the indices and is ~25x slower than ``index_add_``.)
    """

    @staticmethod
    def forward(ctx, table, index, weights):
        ctx.save_for_backward(index, weights)
        ctx.num_rows = table.shape[0]
        rows = table.index_select(0, index.reshape(-1)).view(*index.shape, table.shape[1])  # (N, L, 8, F)
        return torch.einsum("nlc,nlcf->nlf", weights, rows)

    @staticmethod
    def backward(ctx, grad_out):
        index, weights = ctx.saved_tensors
        grad_rows = weights[..., None] * grad_out[:, :, None, :]  # (N, L, 8, F)
        grad_table = torch.zeros(ctx.num_rows, grad_out.shape[-1], dtype=grad_out.dtype, device=grad_out.device)
        grad_table.index_add_(0, index.reshape(-1), grad_rows.reshape(-1, grad_out.shape[-1]))
        return grad_table, None, None


FAST_CHUNK = {"cpu": 1 << 16, "cuda": 1 << 20}
"""Points per chunk of the fast hash grid (bounds its temporaries: (L, 8, chunk) arrays, ~25 MB on the CPU at the
defaults; fewer launches on CUDA). Other devices use the CPU value."""


def _group_corners(enc: HashGridEncoding, ut: torch.Tensor, first: int, last: int,
                   hashed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Corner rows and trilinear weights of levels [first, last) of ``enc`` (all dense or all hashed): the
    reference's formula in int32, level-major and corner-major.

    Args:
        ut: (3, n) float32 positions in [0, 1]³ (the box mapped to the unit cube), one row per axis.

    Returns:
        ``index`` (l, 8, n) int32 rows of ``enc.embeddings`` (level offsets included) and ``weights`` (l, 8, n) float32,
        corner c = x-bit + 2 y-bit + 4 z-bit. Laid out so that every elementwise operation runs along the n points
        (vectorised, not along size-2 dimensions) and a gather in this order reads one level's table (~1 MB at the
        defaults, cache-resident) before the next. Hashed levels reduce each axis term modulo the (power-of-two)
        table size before the corners combine (xor commutes with that modulo), so the corner arithmetic fits int32;
        dense terms are already below the level's size.
    """
    res = enc.level_res[first:last, None, None]  # (l, 1, 1)
    pos = ut[None] * res  # (l, 3, n) in vertex units
    cell = torch.minimum(pos.floor(), res - 1.0)
    frac = pos - cell
    lo = cell.long()
    mult = enc.primes[None, :, None] if hashed else enc.strides[first:last, :, None]  # (1 or l, 3, 1)
    terms = torch.stack([lo * mult, (lo + 1) * mult], dim=2)  # (l, 3, 2, n): per axis, vertex c and c + 1
    if hashed:
        terms &= enc._table_sizes[first] - 1
    terms = terms.to(torch.int32)
    tx, ty, tz = terms[:, 0, None, None], terms[:, 1, None, :, None], terms[:, 2, :, None, None]  # → (l, 2, 2, 2, n)
    index = (tz ^ ty ^ tx) if hashed else (tz + ty + tx)
    index = index.reshape(last - first, 8, -1) + enc.level_offsets[first:last, None, None]
    w_axis = torch.stack([1.0 - frac, frac], dim=2)  # (l, 3, 2, n)
    weights = w_axis[:, 2, :, None, None] * w_axis[:, 1, None, :, None] * w_axis[:, 0, None, None]
    return index, weights.reshape(last - first, 8, -1)


def _fast_groups(enc: HashGridEncoding) -> list[tuple[int, int, bool]]:
    """The (first, last, hashed) level ranges: the dense levels, then the hashed ones (resolutions never decrease)."""
    groups = [(0, enc._num_dense, False), (enc._num_dense, enc.num_levels, True)]
    return [g for g in groups if g[1] > g[0]]


class _HashGridFast(torch.autograd.Function):
    """The fast hash-grid encoding: ``out[n, l] = Σ_c w[n, l, c] · table[index[n, l, c]]`` (the reference's sum).

    Per chunk of ``FAST_CHUNK`` points and per group of levels (dense, hashed): the corners
    (:func:`_group_corners`, int32, level-major so each level's table stays in cache while it is read, where the
    reference reads all levels interleaved from the whole table), then per feature channel one ``index_select`` from
    the table's column and a sum over the 8 corners — a few dozen vectorised operations in all. Indices (int32) and
    weights are kept for the backward only when the table's gradient is wanted. Backward, per chunk, group and
    channel: ``index_add_`` of ``w · grad`` into the column of the table gradient (indices widened to int64: torch's
    CPU ``index_add_`` is ~10× slower with int32). No gradient wrt the positions (as the reference).
    """

    @staticmethod
    def forward(ctx, table, u, enc):
        chunk = FAST_CHUNK.get(u.device.type, FAST_CHUNK["cpu"])
        num_levels, features, num_points = enc.num_levels, table.shape[1], u.shape[0]
        out = torch.empty(num_points, num_levels, features, dtype=table.dtype, device=u.device)
        keep = ctx.needs_input_grad[0]  # indices and weights are kept only when the table's gradient is wanted
        saved = []
        columns = table.t().contiguous()  # (F, rows)
        ut = u.t().contiguous()  # (3, N)
        for start in range(0, num_points, chunk):
            sl = slice(start, start + chunk)
            for first, last, hashed in _fast_groups(enc):
                index, weights = _group_corners(enc, ut[:, sl], first, last, hashed)
                flat = index.view(-1)
                for f in range(features):
                    rows = columns[f].index_select(0, flat).view_as(weights)  # (l, 8, n)
                    out[sl, first:last, f] = (rows * weights).sum(dim=1).t()
                if keep:
                    saved += [index, weights]
        ctx.save_for_backward(*saved)
        ctx.enc, ctx.chunk, ctx.num_points = enc, chunk, num_points
        return out

    @staticmethod
    def backward(ctx, grad_out):
        saved = list(ctx.saved_tensors)
        enc, chunk = ctx.enc, ctx.chunk
        features = grad_out.shape[-1]
        grad_columns = torch.zeros(features, enc.embeddings.shape[0], dtype=grad_out.dtype, device=grad_out.device)
        for start in range(0, ctx.num_points, chunk):
            sl = slice(start, start + chunk)
            for first, last, _ in _fast_groups(enc):
                index, weights = saved.pop(0), saved.pop(0)
                flat = index.view(-1).long()
                for f in range(features):
                    grad = grad_out[sl, first:last, f].t()[:, None, :]  # (l, 1, n)
                    grad_columns[f].index_add_(0, flat, (weights * grad).reshape(-1))
        return grad_columns.t(), None, None


class FrequencyEncoding(nn.Module):
    """NeRF positional encoding: ``[x, sin(2^k π x / bound), cos(2^k π x / bound)]`` for k = 0..n-1.

    Args:
        num_frequencies: n >= 0.
        bound: half-side of the scene box (so the lowest octave spans the box once).
    """

    def __init__(self, num_frequencies: int, bound: float):
        super().__init__()
        self.bound = float(bound)
        self.register_buffer("freqs", (2.0 ** torch.arange(int(num_frequencies), dtype=torch.float32)) * math.pi,
                             persistent=False)

    @property
    def output_dim(self) -> int:
        """Channels of the encoding, 3 + 6 n."""
        return 3 + 6 * int(self.freqs.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3) float32 positions → (N, 3 + 6n) float32 (x, then all sines, then all cosines)."""
        xb = x / self.bound
        angles = (xb[:, None, :] * self.freqs[None, :, None]).reshape(x.shape[0], -1)  # (N, 3n)
        return torch.cat([xb, torch.sin(angles), torch.cos(angles)], dim=-1)


class LatentNeRF(nn.Module):
    """The Latent-NeRF field: point → (density, 4 SD-latent features) — or, with ``feature_dim=3`` and
    ``feature_activation="sigmoid"``, an RGB radiance field (Dream Fields).

    Args:
        config: architecture (validated; ValueError names a bad field). None = defaults.

    Parameters are initialised from torch's global generator: seed it (``torch.manual_seed``) for reproducibility.
    """

    def __init__(self, config: NeRFConfig | None = None):
        super().__init__()
        self.config = check_config(config or NeRFConfig())
        cfg = self.config
        if cfg.encoding == "hashgrid":
            self.encoder: nn.Module = HashGridEncoding(cfg.num_levels, cfg.features_per_level, cfg.log2_hashmap_size,
                                                      cfg.base_resolution, cfg.max_resolution, cfg.bound,
                                                      impl=cfg.hashgrid_impl)
        else:
            self.encoder = FrequencyEncoding(cfg.num_frequencies, cfg.bound)
        dims = [self.encoder.output_dim] + [cfg.mlp_width] * (cfg.mlp_layers - 1) + [1 + cfg.feature_dim]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers.append(nn.ReLU(inplace=True))
        self.mlp = nn.Sequential(*layers)
        with torch.no_grad():
            self.mlp[-1].bias[0] = cfg.density_bias

    def density_blob(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 3) points → (...,) Gaussian blob ``blob_density · exp(−‖x‖² / (2 blob_radius²))`` (pre-activation)."""
        cfg = self.config
        return cfg.blob_density * torch.exp(-(x * x).sum(-1) / (2.0 * cfg.blob_radius ** 2))

    def _activation(self, h: torch.Tensor) -> torch.Tensor:
        return F.softplus(h) if self.config.density_activation == "softplus" else trunc_exp(h)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluate the field.

        Args:
            x: (..., 3) float32 points in the NeRF frame; the encoding clamps them to [-bound, bound]³.

        Returns:
            ``density`` (...,) float32 >= 0 (per unit length of the NeRF frame) and ``features`` (..., feature_dim)
            float32 (SD latents, unbounded; in [0, 1] with ``feature_activation="sigmoid"``). Differentiable wrt every parameter.

        Raises:
            ValueError: last dimension is not 3.
        """
        if x.shape[-1] != 3:
            raise ValueError(f"points must have shape (..., 3), got {tuple(x.shape)}")
        lead = x.shape[:-1]
        flat = x.reshape(-1, 3)
        h = self.mlp(self.encoder(flat))
        density = self._activation(h[:, 0] + self.density_blob(flat))
        features = torch.sigmoid(h[:, 1:]) if self.config.feature_activation == "sigmoid" else h[:, 1:]
        return density.reshape(lead), features.reshape(*lead, self.config.feature_dim)

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 3) points → (...,) density >= 0 (see :meth:`forward`)."""
        return self(x)[0]

    def param_groups(self, lr: float) -> list[dict]:
        """Adam parameter groups (Latent-NeRF): the encoding at ``10 · lr``, the MLP at ``lr``.

        Returns:
            ``[{"name": "encoding", "params": [...], "lr": 10 lr}, {"name": "mlp", "params": [...], "lr": lr}]``;
            the encoding group is empty for the (parameter-free) frequency encoding.

        Raises:
            ValueError: lr not a finite number > 0.
        """
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        return [{"name": "encoding", "params": list(self.encoder.parameters()), "lr": lr * 10.0},
                {"name": "mlp", "params": list(self.mlp.parameters()), "lr": lr}]


class BackgroundField(torch.nn.Module):
    """The background seen along a ray: a small MLP of the view direction (Latent-NeRF's background model) or a
    constant colour. ``forward(rays_d (N, 3)) -> (N, C)``."""

    def __init__(self, channels: int, mode: str, constant: torch.Tensor | None = None):
        super().__init__()
        self.mode = mode
        self.mlp = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.ReLU(), torch.nn.Linear(32, channels)) \
            if mode == "learned" else None
        self.register_buffer("constant", constant if constant is not None else torch.zeros(channels))

    def forward(self, rays_d: torch.Tensor) -> torch.Tensor:
        if self.mlp is not None:
            return self.mlp(F.normalize(rays_d, dim=-1)) + self.constant
        return self.constant.expand(rays_d.shape[0], -1)


def density_normals(density_fn: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor,
                    eps: float = 0.01) -> torch.Tensor:
    """Surface normals of a density field: −∇σ / ‖∇σ‖ by central differences (DreamFusion's normals from the density
    gradient; finite differences because the hash grid has no gradient w.r.t. its input, as threestudio's
    ``finite_difference`` normals, step 0.01).

    Args:
        density_fn: ``(n, 3) -> (n,)`` density (e.g. :meth:`LatentNeRF.density`).
        points: (n, 3) float32 positions, NeRF frame.
        eps: half the difference step, NeRF-frame units (> 0).

    Returns:
        (n, 3) unit normals pointing out of the dense region (where σ decreases), differentiable w.r.t. the field's
        parameters (six extra density evaluations per point); (0, 0, 0) where the density is flat.
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    offsets = torch.eye(3, dtype=points.dtype, device=points.device) * eps  # (3, 3)
    probes = torch.cat([points[:, None, :] + offsets, points[:, None, :] - offsets], dim=1)  # (n, 6, 3)
    sigma = density_fn(probes.reshape(-1, 3)).view(-1, 6)
    grad = (sigma[:, :3] - sigma[:, 3:]) / (2.0 * eps)
    return F.normalize(-grad, dim=-1, eps=1e-12)
