"""Rays and volume rendering of a :class:`~backend.latent_nerf.field.LatentNeRF` in plain torch.

Rays are cast from :class:`backend.geometry.cameras.CameraBatch` cameras through pixel centres; images come back
upright (row 0 = top). Quadrature of NeRF (Mildenhall et al., ECCV 2020): wᵢ = Tᵢ (1 − exp(−σᵢ δᵢ)). With an
:class:`~backend.latent_nerf.occupancy.OccupancyGrid` the field is evaluated only at the samples in occupied cells.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry.cameras import CameraBatch
from ..geometry.extract import sample_grid
from .field import LatentNeRF
from .occupancy import OccupancyGrid


def get_rays(cameras: CameraBatch, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """World-frame rays through the pixel centres of upright (row 0 = top) images.

    The projection is read back from the cameras themselves (``P = mvp @ c2w``, OpenGL clip-from-camera), so a world
    point that ``cameras.mvp`` projects to NDC (x, y) lies on the ray of pixel (row, col) with
    ``col = (x + 1) / 2 · W − 0.5`` and ``row = (1 − y) / 2 · H − 0.5`` — the pixel it lands on in
    :class:`backend.geometry.render.Rasterizer` output after the pipelines' ``flip(1)``.

    Args:
        cameras: B cameras (perspective projections with P[0, 0], P[1, 1] > 0).
        height, width: image size in pixels, >= 1.

    Returns:
        ``rays_o`` (B, H, W, 3) camera centres and ``rays_d`` (B, H, W, 3) unit directions, float32, world frame,
        on the cameras' device.

    Raises:
        ValueError: bad size, or a camera whose projection is not a forward-looking perspective.
    """
    if int(height) != height or int(width) != width or height < 1 or width < 1:
        raise ValueError(f"height and width must be positive integers, got {height!r} x {width!r}")
    c2w = cameras.c2w.float()
    proj = cameras.mvp.float() @ c2w  # (B, 4, 4) clip-from-camera
    fx, fy = proj[:, 0, 0], proj[:, 1, 1]
    if not bool(((fx > 0) & (fy > 0)).all()):
        raise ValueError(f"camera projections must have positive focal terms, got {fx.tolist()} and {fy.tolist()}")
    device = c2w.device
    cols = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2.0 - 1.0  # NDC x
    rows = 1.0 - (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2.0  # NDC y, top = +1
    ndc_y, ndc_x = torch.meshgrid(rows, cols, indexing="ij")  # (H, W)
    # Camera-frame direction of NDC (x, y) for clip = P @ (X, Y, Z, 1), w = −Z: x = (P00 X + P02 Z) / −Z, same for y.
    dir_x = (ndc_x[None] + proj[:, 0, 2, None, None]) / fx[:, None, None]
    dir_y = (ndc_y[None] + proj[:, 1, 2, None, None]) / fy[:, None, None]
    dirs_cam = torch.stack([dir_x, dir_y, -torch.ones_like(dir_x)], dim=-1)  # (B, H, W, 3)
    rays_d = F.normalize(torch.einsum("bij,bhwj->bhwi", c2w[:, :3, :3], dirs_cam), dim=-1)
    rays_o = c2w[:, None, None, :3, 3].expand_as(rays_d).contiguous()
    return rays_o, rays_d


def ray_box_intersection(rays_o: torch.Tensor, rays_d: torch.Tensor, bound: float,
                         min_near: float = 0.05) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where rays cross the box [-bound, bound]³ (slab test).

    Args:
        rays_o, rays_d: (..., 3) origins and directions (any length, not 0).
        bound: half-side of the box, > 0.
        min_near: smallest allowed near distance (cameras inside the box start here), in units of ``rays_d``.

    Returns:
        ``near``, ``far`` (...,) ray parameters t (point = o + t d) with near <= far, and ``hit`` (...,) bool; rays
        that miss the box (or only touch it behind ``min_near``) get ``near == far`` and ``hit`` False.
    """
    safe_d = torch.where(rays_d.abs() < 1e-12, torch.full_like(rays_d, 1e-12), rays_d)
    inv_d = 1.0 / safe_d
    t0 = (-bound - rays_o) * inv_d
    t1 = (bound - rays_o) * inv_d
    near = torch.minimum(t0, t1).amax(dim=-1).clamp(min=min_near)
    far = torch.maximum(t0, t1).amin(dim=-1)
    hit = far > near
    far = torch.where(hit, far, near)
    return near, far, hit


Shader = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
"""``shader(points (n, 3), ray_ids (n,), features (n, C)) -> (features (n, C), extra (n, K) | None)``."""


def volume_render(nerf: LatentNeRF, rays_o: torch.Tensor, rays_d: torch.Tensor, num_samples: int = 64,
                  perturb: bool = False, generator: torch.Generator | None = None,
                  background: torch.Tensor | None = None, min_near: float = 0.05, chunk: int = 4096,
                  occupancy: OccupancyGrid | None = None, shader: Shader | None = None) -> dict:
    """Render rays through the field by stratified sampling and alpha compositing.

    Each ray's segment [near, far] inside the box [-bound, bound]³ is split into ``num_samples`` equal bins of width
    δ = (far − near) / S; sample i sits at the bin centre (or uniformly inside its bin when ``perturb``). With
    αᵢ = 1 − exp(−σᵢ δ) and Tᵢ = exp(−Σ_{j<i} σⱼ δ), the weights are wᵢ = Tᵢ αᵢ, the image is
    Σ wᵢ fᵢ + (1 − Σ wᵢ) · background, the opacity Σ wᵢ and the depth Σ wᵢ tᵢ (expected ray distance; 0 where
    empty). Rays are processed ``chunk`` at a time (the result does not depend on ``chunk``).

    Empty-space skipping (``occupancy`` given): the field is evaluated only at samples whose grid cell is occupied and
    whose ray hits the box; the others get density 0 and features 0 (no gradient). The samples, their spacing and the
    compositing are the same as without the grid, so kept samples contribute exactly what they contribute without
    it, and the render changes only by what the dropped samples carried: with ``D = 1 − Π_dropped (1 − αᵢ) ≤
    Σ_dropped αᵢ`` per ray, the opacity changes by at most D and each image channel by at most 2 D · max |fᵢ − b|
    along the ray (b the background). That is 0 for rays that miss the box (δ = 0) and for a field that is
    exactly 0 in empty cells, and small where the grid's rule holds (a dropped cell's sample opacity under
    ``min(mean, threshold)`` when last measured).

    Args:
        nerf: the field (its ``config.bound`` gives the box).
        rays_o, rays_d: (B, H, W, 3) float32 world-frame origins and unit directions (:func:`get_rays`).
        num_samples: S >= 1 samples per ray.
        perturb: jitter samples inside their bins (training); False = bin centres (deterministic).
        generator: torch.Generator for the jitter (any device; required when ``perturb``).
        background: (C,) features of empty space, composited behind the field; None = zeros (no background).
        min_near: nearest sample distance, for cameras inside the box.
        chunk: rays per field evaluation, >= 1.
        occupancy: the occupancy grid of the field (same box), or None = evaluate every sample (the reference).
        shader: ``shader(points (n, 3), ray_ids (n,) int64, features (n, C)) -> (features' (n, C), extra (n, K) or
            None)``, applied to the evaluated samples before compositing (e.g. DreamFusion's shading of an albedo
            field, :mod:`backend.geometry.shading`); ``ray_ids`` index the flattened (B·H·W) rays, so the shader can
            look up each sample's ray direction and batch item. None = the features as they are.

    Returns:
        dict with
        ``image`` (B, C, H, W) float32, upright as the rays;
        ``opacity`` (B, 1, H, W) in [0, 1]; ``depth`` (B, 1, H, W) ray distance >= 0;
        ``weights`` (B, H, W, S); ``z_vals`` (B, H, W, S) sample distances t along the rays;
        ``points`` (B·H·W·S, 3) the sample positions (ray-major, then sample) and ``density`` (B·H·W·S,) the field's
        density there — the very samples the image was made from, for the Sketch-Shape loss. Samples are clamped
        into the box; rays that miss it have zero weights (their samples all sit at one point of the box).
        Everything is differentiable wrt the field's parameters. With ``occupancy``: ``sample_mask``
        (B·H·W·S,) bool, True where the field was evaluated (ray-major, as ``points``). With a ``shader`` that
        returns an extra: ``shader_extra`` (B, H, W, S, K), zeros at samples that were not evaluated.

    Raises:
        ValueError: bad shapes, num_samples, chunk, background size, perturb without a generator, or an occupancy
            grid over another box.
    """
    if occupancy is not None and abs(occupancy.bound - nerf.config.bound) > 1e-6 * nerf.config.bound:
        raise ValueError(f"occupancy grid bound {occupancy.bound} differs from the field's bound {nerf.config.bound}")
    if rays_o.dim() != 4 or rays_o.shape[-1] != 3 or rays_d.shape != rays_o.shape:
        raise ValueError(f"rays_o and rays_d must both have shape (B, H, W, 3), got {tuple(rays_o.shape)} and "
                         f"{tuple(rays_d.shape)}")
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    if perturb and generator is None:
        raise ValueError("perturb=True needs a generator (torch.Generator) for the jitter")
    channels = nerf.config.feature_dim
    device = rays_o.device
    if background is None:
        background = torch.zeros(channels, device=device)
    if background.shape != (channels,):
        raise ValueError(f"background must have shape ({channels},), got {tuple(background.shape)}")
    batch, height, width, _ = rays_o.shape
    num_rays = batch * height * width
    bound = nerf.config.bound
    o = rays_o.reshape(-1, 3)
    d = rays_d.reshape(-1, 3)
    near, far, hit = ray_box_intersection(o, d, bound, min_near)
    bins = torch.arange(num_samples, device=device, dtype=torch.float32)
    if perturb:
        jitter = torch.rand(num_rays, num_samples, generator=generator, device=generator.device).to(device)
    else:
        jitter = torch.full((num_rays, num_samples), 0.5, device=device)
    delta = ((far - near) / num_samples)[:, None]  # (R, 1) bin width
    z_vals = near[:, None] + (bins[None] + jitter) * delta  # (R, S)
    points = (o[:, None, :] + z_vals[..., None] * d[:, None, :]).clamp(-bound, bound)  # (R, S, 3)

    outs: dict[str, list[torch.Tensor]] = {"image": [], "opacity": [], "depth": [], "weights": [], "density": [],
                                           "sample_mask": [], "shader_extra": []}
    for start in range(0, num_rays, int(chunk)):
        sl = slice(start, min(start + int(chunk), num_rays))
        pts = points[sl]
        if occupancy is None:
            density, features = nerf(pts.reshape(-1, 3))
        else:
            density, features, mask = _evaluate_occupied(nerf, pts, hit[sl], occupancy)
            outs["sample_mask"].append(mask)
        if shader is not None:
            features, extra = _shade_samples(shader, pts, features, sl, num_samples,
                                             None if occupancy is None else outs["sample_mask"][-1])
            if extra is not None:
                outs["shader_extra"].append(extra)
        density = density.view(pts.shape[0], num_samples)
        features = features.view(pts.shape[0], num_samples, channels)
        sigma_delta = density * delta[sl]
        alpha = 1.0 - torch.exp(-sigma_delta)
        # Transmittance before each sample: exp(−Σ_{j<i} σⱼ δ) (exclusive cumulative sum).
        transmittance = torch.exp(-(torch.cumsum(sigma_delta, dim=1) - sigma_delta))
        weights = alpha * transmittance  # (r, S)
        opacity = weights.sum(dim=1, keepdim=True)
        image = (weights[..., None] * features).sum(dim=1) + (1.0 - opacity) * background[None]
        outs["image"].append(image)
        outs["opacity"].append(opacity)
        outs["depth"].append((weights * z_vals[sl]).sum(dim=1, keepdim=True))
        outs["weights"].append(weights)
        outs["density"].append(density)
    cat = {k: torch.cat(v, dim=0) for k, v in outs.items() if v}
    extra = {"sample_mask": cat["sample_mask"]} if occupancy is not None else {}
    if "shader_extra" in cat:
        extra["shader_extra"] = cat["shader_extra"].view(batch, height, width, num_samples, -1)
    return {**extra,
        "image": cat["image"].view(batch, height, width, channels).permute(0, 3, 1, 2),
        "opacity": cat["opacity"].view(batch, height, width, 1).permute(0, 3, 1, 2),
        "depth": cat["depth"].view(batch, height, width, 1).permute(0, 3, 1, 2),
        "weights": cat["weights"].view(batch, height, width, num_samples),
        "z_vals": z_vals.view(batch, height, width, num_samples),
        "points": points.reshape(-1, 3),
        "density": cat["density"].reshape(-1),
    }


def _shade_samples(shader: Shader, pts: torch.Tensor, features: torch.Tensor, rays: slice, num_samples: int,
                   mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply ``shader`` to one chunk's samples (only the evaluated ones when ``mask`` is given); returns the shaded
    features (r·S, C) and the extra (r·S, K) or None, zeros where not evaluated."""
    flat = pts.reshape(-1, 3)
    ray_ids = torch.arange(rays.start, rays.stop, device=flat.device).repeat_interleave(num_samples)
    if mask is None:
        return shader(flat, ray_ids, features)
    kept = torch.nonzero(mask)[:, 0]
    shaded, extra = shader(flat[kept], ray_ids[kept], features[kept])
    out = torch.zeros_like(features).index_copy(0, kept, shaded)
    if extra is not None:
        extra = torch.zeros(flat.shape[0], extra.shape[1], dtype=extra.dtype, device=extra.device).index_copy(0, kept, extra)
    return out, extra


def _evaluate_occupied(nerf: LatentNeRF, pts: torch.Tensor, hit: torch.Tensor,
                       occupancy: OccupancyGrid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The field at the samples ``pts`` (r, S, 3) of rays that ``hit`` (r,) the box and lie in occupied cells; zeros
    elsewhere. Returns density (r·S,), features (r·S, C) (differentiable through the kept samples) and the kept mask
    (r·S,) bool."""
    flat = pts.reshape(-1, 3)
    mask = (occupancy.occupied(pts) & hit[:, None]).reshape(-1)
    kept = torch.nonzero(mask)[:, 0]
    density_kept, features_kept = nerf(flat[kept])
    density = torch.zeros(flat.shape[0], dtype=density_kept.dtype, device=flat.device).index_copy(0, kept, density_kept)
    features = torch.zeros(flat.shape[0], features_kept.shape[-1], dtype=features_kept.dtype,
                           device=flat.device).index_copy(0, kept, features_kept)
    return density, features, mask


def density_grid(nerf: LatentNeRF, resolution: int, bound: float | None = None, chunk: int = 262_144) -> np.ndarray:
    """The field's density on a regular grid, for marching cubes.

    Args:
        nerf: the field (evaluated on the device of its parameters, under ``torch.no_grad()``).
        resolution: R samples per axis, in [8, 1024].
        bound: the grid spans [-bound, bound]³ (end points included); None = ``nerf.config.bound``.
        chunk: points per field evaluation.

    Returns:
        (R, R, R) float32 numpy array, index order [x, y, z]:
        ``grid[i, j, k] = density(-b + 2b (i, j, k) / (R − 1))`` — as :func:`backend.geometry.extract.sample_grid`.

    Raises:
        ValueError: resolution, bound or chunk out of range, or a non-finite density (naming the point).
    """
    bound = nerf.config.bound if bound is None else bound
    device = next(nerf.parameters()).device
    with torch.no_grad():
        return sample_grid(lambda x: nerf.density(x), resolution, bound, chunk=chunk, device=device)


def query_features(nerf: LatentNeRF, points: torch.Tensor | np.ndarray, chunk: int = 262_144) -> torch.Tensor:
    """The field's features (SD latents) at arbitrary points, without gradients.

    Args:
        nerf: the field.
        points: (N, 3) float points in the NeRF frame (tensor on any device, or numpy).
        chunk: points per field evaluation, >= 1.

    Returns:
        (N, feature_dim) float32 tensor on the field's device.

    Raises:
        ValueError: points not (N, 3), chunk < 1.
    """
    device = next(nerf.parameters()).device
    points = torch.as_tensor(points, dtype=torch.float32).to(device)
    if points.dim() != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {tuple(points.shape)}")
    if int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    out = torch.empty(points.shape[0], nerf.config.feature_dim, device=device)
    with torch.no_grad():
        for start in range(0, points.shape[0], int(chunk)):
            out[start:start + int(chunk)] = nerf(points[start:start + int(chunk)])[1]
    return out
