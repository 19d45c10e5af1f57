"""Point-voxel CNN (PVCNN, Liu et al. NeurIPS 2019) as LION uses it, in plain torch (no custom CUDA build).

The point-voxel operators of the public code (``third_party/pvcnn/functional``: ``avg_voxelize``,
``trilinear_devoxelize``, ``furthest_point_sample``, ``ball_query``, ``grouping``, ``nearest_neighbor_interpolate``)
are written here with scatter / gather ops; their semantics follow the public CUDA kernels:

- voxel coordinates: points centred on their mean, divided by twice the largest centred norm, + 0.5, times R,
  clamped to [0, R − 1]; a point's voxel is the rounded coordinate; grid index = x·R² + y·R + z;
- voxelize: the mean of the features of the points in each voxel (empty voxels 0);
- devoxelize: trilinear interpolation of the grid at the continuous (unrounded) coordinates;
- farthest point sampling starts at point 0; ball query takes the first K points (in index order) with squared
  distance < radius², padding with the first one; feature propagation weights the 3 nearest centres by inverse
  squared distance (clamped to [1e-10, 1e10]).

:func:`avg_voxelize_reference` (a dense one-hot product) and :func:`trilinear_devoxelize_reference` (the CUDA kernel's
8-corner gather, one corner at a time) are independent, simple versions used by the tests and the benchmark.

The modules keep the public parameter names (``models/pvcnn2_ada.py``, ``models/pvcnn2.py``) so a released state dict
maps by name: ``SharedMLP.layers``, ``PVConv.voxel_layers`` / ``point_features`` / ``attn``, ``AdaGN.norm`` / ``emd``,
``SE3d.fc``, ``LinearAttention.to_qkv`` / ``to_out``, ``PointNetSAModule.mlps``, ``PointNetFPModule.mlp``. Features are
channels-first: (B, C, N) for points, (B, C, R, R, R) for grids; coordinates (B, 3, N) in the model frame.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["voxel_coordinates", "avg_voxelize", "trilinear_devoxelize", "avg_voxelize_reference",
           "trilinear_devoxelize_reference", "farthest_point_sample", "ball_query", "grouping",
           "three_nn_interpolate", "Swish", "SE3d", "LinearAttention", "AdaGN", "SharedMLP", "PVConv",
           "PointNetSAModule", "PointNetFPModule", "build_sa_stages", "build_fp_stages", "run_stage"]


# ---------------------------------------------------------------------------------------------------------------------
# Point-voxel operators
# ---------------------------------------------------------------------------------------------------------------------

def voxel_coordinates(coords: torch.Tensor, resolution: int, normalize: bool = True, eps: float = 0.0) -> torch.Tensor:
    """Continuous voxel coordinates of points (public ``Voxelization``), no gradient.

    Args:
        coords: (B, 3, N) float points.
        resolution: R, the grid size.
        normalize: centre on the mean and scale by twice the largest centred norm (else map [−1, 1] → [0, 1]).
    Returns:
        (B, 3, N) float in [0, R − 1].
    """
    coords = coords.detach()
    norm = coords - coords.mean(2, keepdim=True)
    if normalize:
        radius = norm.norm(dim=1, keepdim=True).amax(dim=2, keepdim=True)
        norm = norm / (radius * 2.0 + eps).clamp_min(1e-12) + 0.5
    else:
        norm = (norm + 1) / 2.0
    return torch.clamp(norm * resolution, 0, resolution - 1)


def _flat_index(vox: torch.Tensor, r: int) -> torch.Tensor:
    return vox[:, 0] * (r * r) + vox[:, 1] * r + vox[:, 2]


def avg_voxelize(features: torch.Tensor, coords: torch.Tensor, resolution: int) -> torch.Tensor:
    """Mean of point features per voxel (scatter mean; differentiable in ``features``).

    Args:
        features: (B, C, N) float.
        coords: (B, 3, N) continuous voxel coordinates in [0, R − 1] (:func:`voxel_coordinates`); rounded here.
        resolution: R.
    Returns:
        (B, C, R, R, R); voxels without points are 0.
    """
    b, c, n = features.shape
    r = int(resolution)
    idx = _flat_index(torch.round(coords).long(), r)  # (B, N)
    count = torch.zeros(b, r ** 3, device=features.device, dtype=features.dtype)
    count.scatter_add_(1, idx, torch.ones_like(idx, dtype=features.dtype))
    total = torch.zeros(b, c, r ** 3, device=features.device, dtype=features.dtype)
    total = total.scatter_add(2, idx[:, None, :].expand(b, c, n), features)
    return (total / count.clamp_min(1.0)[:, None, :]).view(b, c, r, r, r)


def trilinear_devoxelize(grid: torch.Tensor, coords: torch.Tensor, resolution: int) -> torch.Tensor:
    """Trilinear interpolation of a voxel grid at continuous voxel coordinates (``F.grid_sample``, trilinear,
    ``align_corners=True``; the grid's [x, y, z] index order is grid_sample's (D, H, W), so the sample points are
    given as (z, y, x)).

    Args:
        grid: (B, C, R, R, R) float, indexed [x, y, z].
        coords: (B, 3, N) float in [0, R − 1].
        resolution: R.
    Returns:
        (B, C, N) float; differentiable in ``grid``.
    """
    r = int(resolution)
    if r == 1:
        return grid.reshape(*grid.shape[:2], 1).expand(-1, -1, coords.shape[2])
    norm = coords.to(grid.dtype) / (r - 1) * 2 - 1  # (B, 3, N) in [-1, 1]
    sample = torch.stack([norm[:, 2], norm[:, 1], norm[:, 0]], dim=-1)[:, :, None, None, :]  # (B, N, 1, 1, 3)
    out = F.grid_sample(grid, sample, mode="bilinear", padding_mode="border", align_corners=True)
    return out[:, :, :, 0, 0]


def avg_voxelize_reference(features: torch.Tensor, coords: torch.Tensor, resolution: int) -> torch.Tensor:
    """Reference of :func:`avg_voxelize`: a dense (B, R³, N) one-hot matrix times the features (memory R³·N)."""
    b, c, _ = features.shape
    r = int(resolution)
    idx = _flat_index(torch.round(coords).long(), r)
    onehot = (idx[:, None, :] == torch.arange(r ** 3, device=idx.device)[None, :, None]).to(features.dtype)
    sums = torch.einsum("bcn,bvn->bcv", features, onehot)
    counts = onehot.sum(2)
    return (sums / counts.clamp_min(1.0)[:, None, :]).view(b, c, r, r, r)


def trilinear_devoxelize_reference(grid: torch.Tensor, coords: torch.Tensor, resolution: int) -> torch.Tensor:
    """Reference of :func:`trilinear_devoxelize`, as the public CUDA kernel: the 8 corners (lo = ⌊c⌋, hi = lo + 1
    where the fraction is > 0) gathered one by one and weighted by the products of the fractions.

    Args:
        grid: (B, C, R, R, R) float, indexed [x, y, z].
        coords: (B, 3, N) float in [0, R − 1].
        resolution: R.
    Returns:
        (B, C, N) float; differentiable in ``grid``.
    """
    b, c = grid.shape[:2]
    r = int(resolution)
    n = coords.shape[2]
    flat = grid.reshape(b, c, r ** 3)
    lo = torch.floor(coords)
    frac = coords - lo
    lo = lo.long()
    hi = torch.where(frac > 0, lo + 1, lo).clamp_max(r - 1)
    out = torch.zeros(b, c, n, device=grid.device, dtype=grid.dtype)
    for cx in (0, 1):
        x = hi[:, 0] if cx else lo[:, 0]
        wx = frac[:, 0] if cx else 1 - frac[:, 0]
        for cy in (0, 1):
            y = hi[:, 1] if cy else lo[:, 1]
            wy = frac[:, 1] if cy else 1 - frac[:, 1]
            for cz in (0, 1):
                z = hi[:, 2] if cz else lo[:, 2]
                wz = frac[:, 2] if cz else 1 - frac[:, 2]
                idx = x * (r * r) + y * r + z
                out = out + torch.gather(flat, 2, idx[:, None, :].expand(b, c, n)) * (wx * wy * wz)[:, None, :]
    return out


def farthest_point_sample(coords: torch.Tensor, num_centers: int) -> torch.Tensor:
    """Farthest point sampling from point 0 (public ``furthest_point_sample``).

    Args:
        coords: (B, 3, N) float; num_centers: M ≤ N.
    Returns:
        (B, 3, M) the chosen points.
    """
    b, _, n = coords.shape
    m = int(num_centers)
    pts = coords.detach().transpose(1, 2)  # (B, N, 3)
    chosen = torch.zeros(b, m, dtype=torch.long, device=coords.device)
    dist = torch.full((b, n), float("inf"), device=coords.device, dtype=pts.dtype)
    last = torch.zeros(b, dtype=torch.long, device=coords.device)
    rows = torch.arange(b, device=coords.device)
    for i in range(1, m):
        d = ((pts - pts[rows, last][:, None, :]) ** 2).sum(-1)
        dist = torch.minimum(dist, d)
        last = dist.argmax(1)
        chosen[:, i] = last
    return torch.gather(coords, 2, chosen[:, None, :].expand(b, 3, m))


def ball_query(centers: torch.Tensor, points: torch.Tensor, radius: float, num_neighbors: int) -> torch.Tensor:
    """Indices of the first ``K`` points (in index order) within ``radius`` of each centre (public ``ball_query``).

    Args:
        centers: (B, 3, M); points: (B, 3, N); radius: strict bound on the distance; num_neighbors: K.
    Returns:
        (B, M, K) long; slots past the neighbours found repeat the first one (0 when none is found).
    """
    n = points.shape[2]
    d2 = ((centers.detach().transpose(1, 2)[:, :, None, :] - points.detach().transpose(1, 2)[:, None, :, :]) ** 2
          ).sum(-1)  # (B, M, N)
    order = torch.arange(n, device=points.device).expand_as(d2)
    key = torch.where(d2 < radius * radius, order, torch.full_like(order, n))
    k = min(int(num_neighbors), n)
    first = torch.topk(key, k, dim=2, largest=False, sorted=True).values  # (B, M, k) ascending
    head = torch.where(first[:, :, :1] < n, first[:, :, :1], torch.zeros_like(first[:, :, :1]))
    idx = torch.where(first < n, first, head)
    if k < num_neighbors:
        idx = torch.cat([idx, head.expand(-1, -1, num_neighbors - k)], dim=2)
    return idx


def grouping(features: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Gather point features by neighbour indices: (B, C, N), (B, M, K) → (B, C, M, K)."""
    b, c, _ = features.shape
    _, m, k = indices.shape
    flat = indices.reshape(b, 1, m * k).expand(b, c, m * k)
    return torch.gather(features, 2, flat).view(b, c, m, k)


def three_nn_interpolate(points: torch.Tensor, centers: torch.Tensor, center_features: torch.Tensor) -> torch.Tensor:
    """Features at ``points`` from their 3 nearest ``centers``, weighted by inverse squared distance.

    Args:
        points: (B, 3, N); centers: (B, 3, M); center_features: (B, C, M).
    Returns:
        (B, C, N).
    """
    b, c, m = center_features.shape
    n = points.shape[2]
    d2 = ((points.detach().transpose(1, 2)[:, :, None, :] - centers.detach().transpose(1, 2)[:, None, :, :]) ** 2
          ).sum(-1)  # (B, N, M)
    k = min(3, m)
    dist, idx = torch.topk(d2, k, dim=2, largest=False, sorted=True)
    inv = 1.0 / dist.clamp(1e-10, 1e10)
    weight = inv / inv.sum(2, keepdim=True)  # (B, N, k)
    gathered = torch.gather(center_features, 2, idx.reshape(b, 1, n * k).expand(b, c, n * k)).view(b, c, n, k)
    return (gathered * weight[:, None]).sum(-1)


# ---------------------------------------------------------------------------------------------------------------------
# Layers (public names)
# ---------------------------------------------------------------------------------------------------------------------

class Swish(nn.Module):
    """x · sigmoid(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class SE3d(nn.Module):
    """Squeeze-excitation over a voxel grid (B, C, R, R, R): channel gates from the grid mean (``fc``)."""

    def __init__(self, channel: int, reduction: int = 8):
        super().__init__()
        hidden = max(channel // reduction, 1)
        self.fc = nn.Sequential(nn.Linear(channel, hidden, bias=False), nn.ReLU(),
                                nn.Linear(hidden, channel, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3, 4)))[:, :, None, None, None]


class LinearAttention(nn.Module):
    """Linear attention over points (Katharopoulos-style softmax on keys; public ``LinearAttention``).

    (B, C, N) → (B, C, N); ``heads`` × ``dim_head`` hidden channels (4 × 32 in PVConv, 8 × 32 for the global layer).
    """

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.heads = heads
        hidden = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, n = x.shape
        qkv = self.to_qkv(x[..., None])[..., 0]  # (B, 3·hidden, N)
        q, k, v = qkv.view(b, 3, self.heads, -1, n).unbind(1)  # (B, heads, d, N) each
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q).reshape(b, -1, n)
        return self.to_out(out[..., None])[..., 0]


class AdaGN(nn.Module):
    """Adaptive group norm: GroupNorm(groups, C)(x) · (1 + …) scale and shift from the shape latent (``emd``).

    ``emd`` = Linear(style_dim, 2C) initialised with bias (1…1, 0…0); out = GN(x) · factor + bias, factor and bias
    broadcast over the spatial axes of x ((B, C, N), (B, C, M, K) or (B, C, R, R, R)).
    """

    def __init__(self, channels: int, style_dim: int, groups: int = 8, init_scale: float = 0.1):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.emd = nn.Linear(style_dim, channels * 2)
        _variance_scaling_(self.emd.weight, init_scale)
        with torch.no_grad():
            self.emd.bias[:channels] = 1.0
            self.emd.bias[channels:] = 0.0

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        factor, bias = self.emd(style).chunk(2, dim=1)
        shape = factor.shape + (1,) * (x.dim() - 2)
        return self.norm(x) * factor.view(shape) + bias.view(shape)


def _variance_scaling_(weight: torch.Tensor, scale: float) -> None:
    """The public ``dense`` init: uniform with variance scale / fan_avg (scale 0 → 1e-10)."""
    fan_out, fan_in = weight.shape[0], weight.shape[1]
    bound = math.sqrt(3.0 * (scale or 1e-10) / max(1.0, (fan_in + fan_out) / 2))
    with torch.no_grad():
        weight.uniform_(-bound, bound)


class SharedMLP(nn.Module):
    """Point-wise convs (1×1), each followed by a norm (AdaGN when ``style_dim`` else GroupNorm) and Swish.

    ``layers`` = [Conv, Norm, Swish] per output width; ``dim`` 1 → Conv1d on (B, C, N), 2 → Conv2d on (B, C, M, K).
    """

    def __init__(self, in_channels: int, out_channels: int | list[int], dim: int = 1, style_dim: int = 0,
                 groups: int = 8, init_scale: float = 0.1):
        super().__init__()
        conv = nn.Conv1d if dim == 1 else nn.Conv2d
        widths = list(out_channels) if isinstance(out_channels, (list, tuple)) else [out_channels]
        layers: list[nn.Module] = []
        for oc in widths:
            layers.append(conv(in_channels, oc, 1))
            layers.append(AdaGN(oc, style_dim, groups, init_scale) if style_dim else nn.GroupNorm(groups, oc))
            layers.append(Swish())
            in_channels = oc
        self.layers = nn.ModuleList(layers)
        self.out_channels = widths[-1]

    def forward(self, x: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, style) if isinstance(layer, AdaGN) else layer(x)
        return x


class PVConv(nn.Module):
    """Point-voxel convolution: voxel branch (voxelize → 2 × (Conv3d k, norm) with Swish + dropout → SE →
    devoxelize) + point branch (:class:`SharedMLP`), then optional :class:`LinearAttention`.

    forward((B, C_in, N) features, (B, 3, N) coords, (B, style_dim) style or None) → (B, C_out, N).
    """

    def __init__(self, in_channels: int, out_channels: int, resolution: int, kernel_size: int = 3,
                 with_se: bool = True, attention: bool = False, dropout: float = 0.1, style_dim: int = 0,
                 groups: int = 8, init_scale: float = 0.1):
        super().__init__()
        self.resolution = int(resolution)

        def norm(c: int) -> nn.Module:
            return AdaGN(c, style_dim, groups, init_scale) if style_dim else nn.GroupNorm(groups, c)

        layers = [nn.Conv3d(in_channels, out_channels, kernel_size, stride=1, padding=kernel_size // 2),
                  norm(out_channels), Swish(), nn.Dropout(dropout),
                  nn.Conv3d(out_channels, out_channels, kernel_size, stride=1, padding=kernel_size // 2),
                  norm(out_channels)]
        if with_se:
            layers.append(SE3d(out_channels))
        self.voxel_layers = nn.ModuleList(layers)
        self.attn = LinearAttention(out_channels) if attention else None
        self.point_features = SharedMLP(in_channels, out_channels, 1, style_dim, groups, init_scale)

    def forward(self, features: torch.Tensor, coords: torch.Tensor, style: torch.Tensor | None = None
                ) -> torch.Tensor:
        r = self.resolution
        vcoords = voxel_coordinates(coords[:, :3], r)
        grid = avg_voxelize(features, vcoords, r)
        for layer in self.voxel_layers:
            grid = layer(grid, style) if isinstance(layer, AdaGN) else layer(grid)
        fused = trilinear_devoxelize(grid, vcoords, r) + self.point_features(features, style)
        if self.attn is not None:
            fused = self.attn(fused)
        return fused


class PointNetSAModule(nn.Module):
    """Set abstraction: farthest-point centres, ball-query groups (relative xyz ++ features), shared MLP, max.

    forward((B, C, N) features, (B, 3, N) coords, style) → ((B, C_out, M) features, (B, 3, M) centres).
    """

    def __init__(self, num_centers: int, radius: float, num_neighbors: int, in_channels: int,
                 out_channels: list[int], style_dim: int = 0, groups: int = 8, init_scale: float = 0.1):
        super().__init__()
        self.num_centers, self.radius, self.num_neighbors = int(num_centers), float(radius), int(num_neighbors)
        self.mlps = nn.ModuleList([SharedMLP(in_channels + 3, list(out_channels), 2, style_dim, groups, init_scale)])
        self.out_channels = out_channels[-1]

    def forward(self, features: torch.Tensor, coords: torch.Tensor, style: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        coords = coords[:, :3]
        centers = farthest_point_sample(coords, self.num_centers)
        idx = ball_query(centers, coords, self.radius, self.num_neighbors)
        rel = grouping(coords, idx) - centers[..., None]
        grouped = torch.cat([rel, grouping(features, idx)], dim=1)
        return self.mlps[0](grouped, style).amax(dim=-1), centers


class PointNetFPModule(nn.Module):
    """Feature propagation: 3-NN interpolation of centre features to points, ++ skip features, shared MLP.

    forward((B, 3, N) points, (B, 3, M) centres, (B, C, M) centre features, (B, C_skip, N) skip features, style)
    → (B, C_out, N).
    """

    def __init__(self, in_channels: int, out_channels: list[int], style_dim: int = 0, groups: int = 8,
                 init_scale: float = 0.1):
        super().__init__()
        self.mlp = SharedMLP(in_channels, list(out_channels), 1, style_dim, groups, init_scale)

    def forward(self, points: torch.Tensor, centers: torch.Tensor, center_features: torch.Tensor,
                skip: torch.Tensor | None, style: torch.Tensor | None = None) -> torch.Tensor:
        x = three_nn_interpolate(points, centers, center_features)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.mlp(x, style)


# ---------------------------------------------------------------------------------------------------------------------
# Stage builders (public ``create_pointnet2_sa_components`` / ``create_pointnet2_fp_modules``)
# ---------------------------------------------------------------------------------------------------------------------

def _stage(blocks: list[nn.Module]) -> nn.Module:
    return blocks[0] if len(blocks) == 1 else nn.ModuleList(blocks)


def run_stage(stage: nn.Module) -> list[nn.Module]:
    """The blocks of a stage built by :func:`build_sa_stages` / :func:`build_fp_stages` (one module or a list)."""
    return list(stage) if isinstance(stage, nn.ModuleList) else [stage]


def build_sa_stages(sa_blocks, in_channels: int, embed_dim: int, use_att: bool, dropout: float, with_se: bool,
                    width: float, voxel: float, centers: tuple[int, ...] | None, num_neighbors: int | None,
                    style_dim: int, groups: int, init_scale: float, force_att: bool = False
                    ) -> tuple[list[nn.Module], list[int], int]:
    """The set-abstraction stages of a public ``sa_blocks`` table.

    ``sa_blocks`` rows are ``(conv (out, blocks, resolution) or None, sa (centres, radius, neighbours, widths))``.
    As the public builder: the first stage gets all its PVConvs, later stages only their first one (which takes the
    time embedding, ``embed_dim`` extra input channels); a stage without convs feeds the embedding to its SA
    module; attention on the first PVConv of odd stages. ``centers`` / ``num_neighbors`` override the table's.

    Returns:
        (stages, input channels of each stage, output channels of the last).
    """
    stages, stage_in = [], []
    extra = in_channels
    for c, (conv, sa) in enumerate(sa_blocks):
        k = 0
        stage_in.append(in_channels)
        blocks: list[nn.Module] = []
        if conv is not None:
            out, num_blocks, res = conv
            out = int(width * out)
            for p in range(num_blocks):
                attention = ((c + 1) % 2 == 0 and use_att and p == 0) or (force_att and c > 0)
                if c == 0 or k == 0:
                    blocks.append(PVConv(in_channels + (embed_dim if c > 0 else 0), out, int(voxel * res),
                                         with_se=with_se, attention=attention, dropout=dropout,
                                         style_dim=style_dim, groups=groups, init_scale=init_scale))
                in_channels = out
                k += 1
            extra = in_channels
        m, radius, neighbors, widths = sa
        widths = [int(width * w) for w in widths]
        blocks.append(PointNetSAModule(centers[c] if centers else m, radius, num_neighbors or neighbors,
                                       extra + (embed_dim if k == 0 else 0), widths, style_dim, groups, init_scale))
        in_channels = extra = widths[-1]
        stages.append(_stage(blocks))
    return stages, stage_in, in_channels


def build_fp_stages(fp_blocks, in_channels: int, sa_in_channels: list[int], embed_dim: int, dropout: float,
                    with_se: bool, width: float, voxel: float, style_dim: int, groups: int, init_scale: float
                    ) -> tuple[list[nn.Module], int]:
    """The feature-propagation stages of a public ``fp_blocks`` table (rows ``(fp widths, conv or None)``); each
    starts with a :class:`PointNetFPModule` fed the coarser features ++ time embedding ++ the skip features, then
    its PVConvs (the public builder never gives them attention). Returns (stages, output channels)."""
    stages = []
    for i, (fp, conv) in enumerate(fp_blocks):
        widths = [int(width * w) for w in fp]
        blocks: list[nn.Module] = [PointNetFPModule(in_channels + sa_in_channels[-1 - i] + embed_dim, widths,
                                                    style_dim, groups, init_scale)]
        in_channels = widths[-1]
        if conv is not None:
            out, num_blocks, res = conv
            out = int(width * out)
            for _ in range(num_blocks):
                blocks.append(PVConv(in_channels, out, int(voxel * res), with_se=with_se, attention=False,
                                     dropout=dropout, style_dim=style_dim, groups=groups, init_scale=init_scale))
                in_channels = out
        stages.append(_stage(blocks))
    return stages, in_channels
