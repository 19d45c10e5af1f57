"""Colour fields onto meshes: per-vertex colours and UV textures baked from a field, and gutter dilation.

Generic like :mod:`backend.geometry.extract`: every function takes a plain callable ``color_fn(points) -> (P, C)``.

Texture convention: textures are ``(H, W, C)`` with row 0 ↔ v ≈ 0 (the rasterizer's, bottom row first); converting
to image rows (top first) is :mod:`backend.geometry.frames`' job.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .extract import check_chunk, eval_field_chunk
from .mesh import MeshError, TriMesh, unwrap_uv
from .render import Rasterizer

FieldFn = Callable[[torch.Tensor], torch.Tensor]
_INT64_MAX = torch.iinfo(torch.int64).max


@torch.no_grad()
def _eval_points(color_fn: FieldFn, points: torch.Tensor, chunk: int) -> torch.Tensor:
    """color_fn over (n, 3) points in chunks; (n, C) float32 on the points' device, C fixed by the first chunk."""
    outs = []
    channels = 0
    for start in range(0, points.shape[0], chunk):
        out = eval_field_chunk(color_fn, points[start:start + chunk], "color_fn", channels=channels)
        channels = out.shape[1]
        outs.append(out.to(device=points.device, dtype=torch.float32))
    return torch.cat(outs, dim=0)


def vertex_colors(mesh: TriMesh, color_fn: FieldFn, chunk: int = 65_536,
                  device: torch.device | str = "cpu") -> np.ndarray:
    """Evaluate a colour (or latent) field at the mesh vertices.

    Args:
        mesh: triangle mesh; ``color_fn`` is evaluated at ``mesh.v_pos`` as given (same frame as the field: colour
            before :func:`transform_mesh`).
        color_fn: ``fn(points (n, 3) float32 on device) -> (n, C) float tensor``, n <= ``chunk``, no grad.
        chunk: points per call.
        device: where the points are created.

    Returns:
        (N, C) float32 array, row i = ``color_fn(v_pos[i])``; the range is ``color_fn``'s.

    Raises:
        ValueError: bad chunk, ``color_fn`` returning a wrong shape or NaN/Inf; MeshError: mesh without vertices.
    """
    chunk = check_chunk(chunk)
    v_pos = np.asarray(mesh.v_pos, dtype=np.float32)
    if v_pos.ndim != 2 or v_pos.shape[1] != 3 or len(v_pos) == 0:
        raise MeshError(f"mesh has no vertices (v_pos shape {v_pos.shape})")
    points = torch.from_numpy(np.ascontiguousarray(v_pos)).to(device)
    return _eval_points(color_fn, points, chunk).cpu().numpy()


def dilate_texture(texture: torch.Tensor, mask: torch.Tensor, iterations: int, fill_rest: bool = True) -> torch.Tensor:
    """Fill the texels outside ``mask`` from the covered ones (gutter padding for baked UV textures).

    Each iteration gives every uncovered texel with a covered 8-neighbour the mean of its covered neighbours, so
    charts grow ``iterations`` texels outward; then (``fill_rest``) texels still uncovered get the mean of the
    covered texels, so mipmaps and wide filters average chart colours, not an arbitrary background.

    Args:
        texture: (H, W, C) float tensor; values outside ``mask`` are ignored.
        mask: (H, W) bool, True where the texel is covered by a chart.
        iterations: >= 0.
        fill_rest: fill the texels the dilation did not reach with the covered mean.

    Returns:
        (H, W, C) tensor, equal to ``texture`` inside ``mask``.

    Raises:
        ValueError: shapes disagree, negative iterations, or an empty mask.
    """
    if texture.dim() != 3 or mask.shape != texture.shape[:2] or mask.dtype != torch.bool:
        raise ValueError(f"texture must be (H, W, C) and mask (H, W) bool, got {tuple(texture.shape)} and "
                         f"{tuple(mask.shape)} {mask.dtype}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if not bool(mask.any()):
        raise ValueError("dilate_texture: the mask covers no texel")
    tex = (texture * mask[..., None]).permute(2, 0, 1)[:, None]  # (C, 1, H, W)
    covered = mask[None, None].to(texture.dtype)  # (1, 1, H, W)
    kernel = torch.ones(1, 1, 3, 3, dtype=texture.dtype, device=texture.device)
    for _ in range(iterations):
        count = F.conv2d(covered, kernel, padding=1)
        grow = (count > 0) & (covered == 0)
        if not bool(grow.any()):
            break
        summed = F.conv2d(tex, kernel, padding=1)
        tex = torch.where(grow, summed / count.clamp(min=1), tex)
        covered = torch.maximum(covered, grow.to(covered.dtype))
    out = tex[:, 0].permute(1, 2, 0)
    if fill_rest:
        mean = texture[mask].mean(dim=0)
        out = torch.where(covered[0, 0, :, :, None] > 0, out, mean)
    return out


def _cross2(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _point_triangle_distance_2d(p: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    """Euclidean distance from points p (n, 2) to filled triangles tri (n, 3, 2); 0 inside (either winding)."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    d0, d1, d2 = _cross2(b - a, p - a), _cross2(c - b, p - b), _cross2(a - c, p - c)
    inside = ((d0 >= 0) & (d1 >= 0) & (d2 >= 0)) | ((d0 <= 0) & (d1 <= 0) & (d2 <= 0))
    inside &= _cross2(b - a, c - a).abs() > 0

    def segment(s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        e = s1 - s0
        t = (((p - s0) * e).sum(-1) / (e * e).sum(-1).clamp(min=1e-20)).clamp(0.0, 1.0)
        return (p - (s0 + t[:, None] * e)).norm(dim=-1)

    dist = torch.minimum(torch.minimum(segment(a, b), segment(b, c)), segment(c, a))
    return torch.where(inside, torch.zeros_like(dist), dist)


def _nearest_triangle_texels(tri_px: torch.Tensor, size: int, radius: float,
                             max_pairs: int = 1 << 22) -> torch.Tensor:
    """For every texel, the triangle nearest to its centre among those within ``radius`` texels.

    Args:
        tri_px: (F, 3, 2) float32 triangle corners in texel units (x = u·S − 0.5, y = v·S − 0.5: texel centres at
            integer coordinates, x = column, y = row).
        size: S.
        radius: search radius in texels (> 0).
        max_pairs: (triangle, texel) candidate pairs processed at once (bounds memory).

    Returns:
        (S, S) int64 triangle index + 1 of the nearest triangle, 0 where none lies within ``radius``.
    """
    device = tri_px.device
    lo = torch.ceil(tri_px.amin(dim=1) - radius).long().clamp(0, size - 1)  # (F, 2)
    hi = torch.floor(tri_px.amax(dim=1) + radius).long().clamp(0, size - 1)
    extent = (hi - lo + 1).clamp(min=0)
    counts = extent[:, 0] * extent[:, 1]
    ends = torch.cumsum(counts, dim=0)
    best = torch.full((size * size,), _INT64_MAX, dtype=torch.int64, device=device)
    total = int(ends[-1]) if len(ends) else 0
    for start in range(0, total, max_pairs):
        k = torch.arange(start, min(start + max_pairs, total), device=device)
        t = torch.searchsorted(ends, k, right=True)
        local = k - (ends[t] - counts[t])
        dy = torch.div(local, extent[t, 0], rounding_mode="floor")
        col = lo[t, 0] + local - dy * extent[t, 0]
        row = lo[t, 1] + dy
        p = torch.stack([col, row], dim=1).to(tri_px.dtype)
        dist = _point_triangle_distance_2d(p, tri_px[t])
        near = dist <= radius
        # Key: quantised distance in the high bits, triangle index in the low 32 bits; amin = nearest (ties: lowest id).
        key = ((dist[near] / radius * (1 << 30)).long() << 32) | t[near]
        best.scatter_reduce_(0, (row * size + col)[near], key, reduce="amin")
    face_id = torch.where(best == _INT64_MAX, torch.zeros_like(best), (best & 0xFFFFFFFF) + 1)
    return face_id.view(size, size)


def _gutter_barycentrics(p: torch.Tensor, tri: torch.Tensor, min_height: float = 0.1) -> torch.Tensor:
    """Barycentrics (n, 3) of points p (n, 2) in triangles tri (n, 3, 2), both in texel units.

    Extrapolated (some negative) when the triangle is well shaped in UV: its smallest altitude is at least
    ``min_height`` texels, so a point a texel or two outside stays near the surface. For thinner triangles (slivers
    of marching-cubes meshes), whose plane extrapolation would fly off, those of the closest point on the triangle.
    """
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    area2 = _cross2(b - a, c - a)  # twice the signed area
    edges = torch.stack([(c - b).norm(dim=-1), (a - c).norm(dim=-1), (b - a).norm(dim=-1)], dim=-1)  # opposite 0/1/2
    well_shaped = area2.abs() >= min_height * edges.amax(dim=-1)  # smallest altitude = 2A / longest edge
    safe = torch.where(area2.abs() > 0, area2, torch.ones_like(area2))
    w0 = _cross2(b - p, c - p) / safe
    w1 = _cross2(c - p, a - p) / safe
    extrapolated = torch.stack([w0, w1, 1.0 - w0 - w1], dim=-1)
    # Closest point: inside a non-degenerate triangle its own barycentrics, else the nearest point of an edge.
    inside = (extrapolated >= 0).all(dim=-1) & (area2.abs() > 0)
    rows = torch.arange(len(p), device=p.device)
    best_dist = torch.full_like(w0, torch.inf)
    closest = torch.zeros_like(extrapolated)
    for i in range(3):
        j = (i + 1) % 3
        s0, s1 = tri[:, i], tri[:, j]
        e = s1 - s0
        t = (((p - s0) * e).sum(-1) / (e * e).sum(-1).clamp(min=1e-20)).clamp(0.0, 1.0)
        dist = (p - (s0 + t[:, None] * e)).norm(dim=-1)
        better = dist < best_dist
        on_edge = torch.zeros_like(extrapolated)
        on_edge[rows, i] = 1.0 - t
        on_edge[rows, j] = t
        closest = torch.where(better[:, None], on_edge, closest)
        best_dist = torch.minimum(best_dist, dist)
    closest = torch.where(inside[:, None], extrapolated, closest)
    return torch.where(well_shaped[:, None], extrapolated, closest)


@torch.no_grad()
def bake_texture(mesh: TriMesh, color_fn: FieldFn, texture_size: int, rasterizer: Rasterizer, chunk: int = 65_536,
                 extrapolate: int = 2, dilation: int = 8, uv_padding: int = 4,
                 reuse_uv: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bake a colour (or latent) field into a UV texture of ``mesh``.

    1. UVs: the mesh's own when it has them (and ``reuse_uv``), else an xatlas unwrap (:func:`backend.geometry.mesh.unwrap_uv`
       with ``uv_padding`` texels between charts at ``texture_size``).
    2. The UV layout is rasterized in texture space (``pos_clip = (2u - 1, 2v - 1, 0, 1)``, one rasterizer vertex per
       face corner so any UV layout works); the 3-D position of every covered texel centre is interpolated.
    3. ``extrapolate`` rings of texels around the charts get positions on the plane of their nearest triangle
       (barycentrics extrapolated), so bilinear lookups at chart borders stay on the chart's own values.
    4. ``color_fn`` is evaluated at all those positions (in chunks).
    5. The rest of the gutter is filled with :func:`dilate_texture` (``dilation`` texels, then the covered mean).

    Args:
        mesh: triangle mesh in the field's frame (``color_fn`` is evaluated at positions on ``mesh.v_pos``'s
            triangles: bake before :func:`transform_mesh`; UVs do not change under it).
        color_fn: ``fn(points (n, 3) float32 on rasterizer.device) -> (n, C) float tensor``; C is free (3 for RGB,
            4 for SD latents the caller decodes afterwards). Points of the extrapolated rings lie up to
            ``extrapolate`` texels (in surface units) off the triangles.
        texture_size: S, texture side in texels, in [8, 8192].
        rasterizer: any :class:`backend.geometry.render.Rasterizer` (TorchRasterizer on CPU, nvdiffrast on CUDA).
        chunk: points per ``color_fn`` call.
        extrapolate: rings of texels evaluated by extrapolation around the charts (>= 0; 1 suffices for bilinear
            filtering, keep it below half of ``uv_padding`` so neighbouring charts do not compete).
        dilation: further gutter texels grown by averaging (>= 0).
        uv_padding: xatlas padding in texels (when unwrapping).
        reuse_uv: keep ``mesh.uv`` / ``mesh.uv_idx`` when present.

    Returns:
        ``(uv (M, 2) float32 in [0, 1], uv_idx (F, 3) int32, texture (S, S, C) float32)``. Texture convention as the
        rasterizer's: texel (row r, col c) is centred at uv = ((c + 0.5) / S, (r + 0.5) / S), so **row 0 <-> v ≈ 0**
        (the bottom of the image); :func:`backend.geometry.frames.bottom_up_to_top_down` for a PNG / the wire, whose row 0 is the top.
        Sampling it with ``rasterizer.texture`` at a surface point's uv returns ``color_fn`` there.

    Raises:
        MeshError: mesh without faces, or xatlas failure; ValueError: bad texture_size / chunk / extrapolate /
        dilation, a UV layout covering no texel centre, or ``color_fn`` returning a wrong shape or NaN/Inf.
    """
    if isinstance(texture_size, bool) or not isinstance(texture_size, (int, np.integer)) or not 8 <= texture_size <= 8192:
        raise ValueError(f"texture_size must be an int in [8, 8192], got {texture_size!r}")
    chunk = check_chunk(chunk)
    if extrapolate < 0 or dilation < 0:
        raise ValueError(f"extrapolate and dilation must be >= 0, got {extrapolate} and {dilation}")
    v_pos = np.asarray(mesh.v_pos, dtype=np.float32)
    tri = np.asarray(mesh.t_pos_idx, dtype=np.int32)
    if tri.ndim != 2 or tri.shape[1] != 3 or len(tri) == 0:
        raise MeshError(f"cannot bake a texture on a mesh without faces (t_pos_idx shape {tri.shape})")
    # 1. UVs.
    if reuse_uv and mesh.has_uv:
        uv = np.asarray(mesh.uv, dtype=np.float32)
        uv_idx = np.asarray(mesh.uv_idx, dtype=np.int32)
        if uv_idx.shape != tri.shape:
            raise MeshError(f"uv_idx shape {uv_idx.shape} does not match t_pos_idx {tri.shape}")
    else:
        uv, uv_idx = unwrap_uv(v_pos, tri, padding=uv_padding, resolution=int(texture_size))
    # 2. Rasterize the layout in texture space, one vertex per face corner.
    device = rasterizer.device
    size = int(texture_size)
    corner_uv = torch.from_numpy(uv[uv_idx.reshape(-1)]).to(device)  # (3F, 2)
    corner_pos = torch.from_numpy(v_pos[tri.reshape(-1)]).to(device)  # (3F, 3)
    corner_tri = torch.arange(corner_uv.shape[0], dtype=torch.int32, device=device).reshape(-1, 3)
    ones = torch.ones_like(corner_uv[:, :1])
    pos_clip = torch.cat([corner_uv * 2.0 - 1.0, ones * 0.0, ones], dim=1)[None].contiguous()
    rast_out = rasterizer.rasterize(pos_clip, corner_tri, (size, size))[0]  # (S, S, 4)
    covered = rast_out[..., 3] > 0
    if not bool(covered.any()):
        raise ValueError(f"the UV layout covers no texel centre at texture_size {size}")
    texel_pos = rasterizer.interpolate(corner_pos, rast_out[None], corner_tri)[0]  # (S, S, 3)
    # 3. Gutter texels within `extrapolate` texels of a triangle: the nearest triangle's plane, barycentrics
    #    extrapolated (exact continuation of a field linear over the triangle), so bilinear lookups at chart borders
    #    and on charts thinner than a texel read their own chart's values.
    filled = covered
    if extrapolate > 0:
        tri_px = corner_uv.reshape(-1, 3, 2) * size - 0.5
        face_id = _nearest_triangle_texels(tri_px, size, float(extrapolate))
        ring = (face_id > 0) & ~covered
        if bool(ring.any()):
            rows, cols = torch.nonzero(ring, as_tuple=True)
            face = face_id[rows, cols] - 1
            p = torch.stack([cols, rows], dim=1).to(tri_px.dtype)
            bary = _gutter_barycentrics(p, tri_px[face])  # (K, 3)
            texel_pos[rows, cols] = (bary[:, :, None] * corner_pos.reshape(-1, 3, 3)[face]).sum(dim=1)
            filled = covered | ring
    # 4. Evaluate the field.
    values = _eval_points(color_fn, texel_pos[filled].contiguous(), chunk)  # (K, C)
    texture = torch.zeros(size, size, values.shape[1], dtype=torch.float32, device=device)
    texture[filled] = values
    # 5. Gutter.
    texture = dilate_texture(texture, filled, int(dilation))
    return uv, uv_idx, texture.cpu().numpy()
