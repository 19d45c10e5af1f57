"""DreamFusion shading of rasterized surfaces: albedo, Lambertian diffuse under a point light, and "textureless".

After Poole et al., "DreamFusion: Text-to-3D using 2D Diffusion" (2022), §3.1 "Shading": a surface point with albedo
ρ, unit normal n and a point light at ℓ is coloured

    c = ρ ∘ (ℓ_a + ℓ_p · max(0, n · (ℓ − x) / ‖ℓ − x‖))

with an ambient term ℓ_a and a diffuse term ℓ_p (here 0.1 and 0.9, the values of threestudio's DreamFusion material
and of stable-dreamfusion's ``ambient_ratio``). "textureless" renders replace ρ by white so the geometry is judged by
its shading alone; "albedo" renders return ρ unlit. The light is sampled around the camera as DreamFusion does:
its direction is the camera's position plus isotropic Gaussian noise (std 1, threestudio's ``light_position_perturb``),
normalised, at a distance drawn uniformly from (0.8, 1.5) (threestudio's ``light_distance_range``).

Everything here is in one frame, the caller's (the pipelines use the world frame or a similarity of it): points,
normals, light and camera positions. Normals of a rasterized mesh come from :func:`vertex_normals` (area-weighted,
interpolated by the rasterizer) or :func:`face_normals`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["SHADING_MODES", "AMBIENT", "DIFFUSE", "face_normals", "vertex_normals", "lambertian", "shade",
           "sample_point_lights", "sample_shading", "normal_consistency", "rasterize_surface"]

SHADING_MODES = ("albedo", "lambertian", "textureless")
"""The shading a render can get: ρ unlit, ρ under ambient + Lambertian diffuse light, white under the same light."""

AMBIENT = 0.1
"""Ambient light ℓ_a (DreamFusion's shading as threestudio and stable-dreamfusion set it)."""

DIFFUSE = 0.9
"""Diffuse (point) light ℓ_p; ``AMBIENT + DIFFUSE = 1``, so a surface facing the light shows its albedo."""


def face_normals(v_pos: torch.Tensor, t_pos_idx: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Face normals of a triangle mesh: ``(v1 − v0) × (v2 − v0)``, outward for counter-clockwise winding.

    Args:
        v_pos: (V, 3) float vertex positions, any frame; gradients flow to it.
        t_pos_idx: (F, 3) integer vertex indices.
        normalize: unit length (True) or the raw cross product (length = twice the face area).

    Returns:
        (F, 3) normals, dtype of ``v_pos``; degenerate faces give (0, 0, 0) when normalised.
    """
    tri = t_pos_idx.long()
    v0, v1, v2 = v_pos[tri[:, 0]], v_pos[tri[:, 1]], v_pos[tri[:, 2]]
    n = torch.linalg.cross(v1 - v0, v2 - v0)
    return F.normalize(n, dim=-1, eps=1e-20) if normalize else n


def vertex_normals(v_pos: torch.Tensor, t_pos_idx: torch.Tensor) -> torch.Tensor:
    """Area-weighted vertex normals: the normalised sum of the raw face normals around each vertex.

    Args:
        v_pos: (V, 3) float positions; gradients flow to it. t_pos_idx: (F, 3) integer indices, wound
            counter-clockwise seen from outside (as :func:`backend.geometry.dmtet.marching_tets` makes them).

    Returns:
        (V, 3) unit normals, dtype of ``v_pos``; a vertex no face uses gets (0, 0, 1).
    """
    tri = t_pos_idx.long()
    fn = face_normals(v_pos, tri, normalize=False)
    acc = torch.zeros_like(v_pos)
    for k in range(3):
        acc = acc.index_add(0, tri[:, k], fn)
    unused = acc.norm(dim=-1, keepdim=True) == 0
    acc = torch.where(unused, torch.tensor([0.0, 0.0, 1.0], dtype=v_pos.dtype, device=v_pos.device), acc)
    return F.normalize(acc, dim=-1, eps=1e-20)


def lambertian(normals: torch.Tensor, points: torch.Tensor, light_positions: torch.Tensor,
               ambient: float = AMBIENT, diffuse: float = DIFFUSE) -> torch.Tensor:
    """The light a surface point receives: ``ambient + diffuse · max(0, n · l)``, l the unit vector to the light.

    Args:
        normals: (B, H, W, 3) unit normals (or any (B, ..., 3)); points: same shape, surface positions; both in the
            light's frame and units.
        light_positions: (B, 3) point-light positions, one per batch item.
        ambient, diffuse: the two light intensities (>= 0).

    Returns:
        (B, H, W, 1) light factor in [ambient, ambient + diffuse], differentiable w.r.t. normals and points.

    Raises:
        ValueError: shapes that do not match, negative intensities.
    """
    if normals.shape != points.shape or normals.shape[-1] != 3:
        raise ValueError(f"normals and points must share one (B, ..., 3) shape, got {tuple(normals.shape)} and "
                         f"{tuple(points.shape)}")
    if light_positions.shape != (normals.shape[0], 3):
        raise ValueError(f"light_positions must have shape ({normals.shape[0]}, 3), got {tuple(light_positions.shape)}")
    if ambient < 0 or diffuse < 0:
        raise ValueError(f"ambient and diffuse must be >= 0, got {ambient} and {diffuse}")
    light = light_positions.view(normals.shape[0], *([1] * (normals.dim() - 2)), 3).to(points.dtype)
    to_light = F.normalize(light - points, dim=-1, eps=1e-20)
    cos = (normals * to_light).sum(dim=-1, keepdim=True)
    return ambient + diffuse * cos.clamp(min=0.0)


def shade(albedo: torch.Tensor, normals: torch.Tensor, points: torch.Tensor, light_positions: torch.Tensor,
          mode: str, ambient: float = AMBIENT, diffuse: float = DIFFUSE) -> torch.Tensor:
    """DreamFusion's shading of surface samples (see the module docstring).

    Args:
        albedo: (B, H, W, 3) float albedo ρ in [0, 1] (sRGB-encoded values, as the image model sees them).
        normals, points: (B, H, W, 3) unit normals and positions; light_positions: (B, 3); one frame.
        mode: "albedo" (ρ), "lambertian" (ρ · light), "textureless" (white · light, ρ unused).
        ambient, diffuse: light intensities.

    Returns:
        (B, H, W, 3) colour; "textureless" has no gradient w.r.t. ``albedo``.

    Raises:
        ValueError: unknown mode, shapes that do not match.
    """
    if mode not in SHADING_MODES:
        raise ValueError(f"shading mode must be one of {SHADING_MODES}, got {mode!r}")
    if mode == "albedo":
        return albedo
    light = lambertian(normals, points, light_positions, ambient, diffuse)
    if mode == "textureless":
        return light.expand(*light.shape[:-1], 3)
    return albedo * light


def sample_point_lights(camera_positions: torch.Tensor, generator: torch.Generator,
                        distance_range: tuple[float, float] = (0.8, 1.5), perturb: float = 1.0) -> torch.Tensor:
    """DreamFusion's light sampling: a point light near the camera's direction, around the origin.

    direction = normalize(camera_position + perturb · N(0, I)), position = direction · U(distance_range): the light
    comes from the camera's side of the object, most often, at a distance independent of the camera's.

    Args:
        camera_positions: (B, 3) float camera centres, in the frame whose origin is the object's centre.
        generator: drives the draws (on ``camera_positions.device``); same state, same lights.
        distance_range: (low, high) light distance from the origin, 0 < low <= high; (d, d) fixes it.
        perturb: std of the direction noise (>= 0); 0 puts the light exactly on the camera's ray through the origin.

    Returns:
        (B, 3) float32 light positions.

    Raises:
        ValueError: a bad range or perturb.
    """
    lo, hi = (float(x) for x in distance_range)
    if not 0.0 < lo <= hi:
        raise ValueError(f"distance_range must satisfy 0 < low <= high, got {distance_range!r}")
    if perturb < 0:
        raise ValueError(f"perturb must be >= 0, got {perturb}")
    batch = camera_positions.shape[0]
    device = camera_positions.device
    noise = torch.randn((batch, 3), generator=generator, device=device, dtype=torch.float32)
    u = torch.rand((batch,), generator=generator, device=device, dtype=torch.float32)
    direction = F.normalize(camera_positions.float() + perturb * noise, dim=-1)
    return direction * (lo + (hi - lo) * u)[:, None]


def sample_shading(generator: torch.Generator, albedo_probability: float, textureless_probability: float) -> str:
    """Draw one render's shading: "albedo" with ``albedo_probability``, "textureless" with ``textureless_probability``,
    "lambertian" otherwise (one uniform draw from ``generator``, so it is reproducible).

    Raises:
        ValueError: probabilities outside [0, 1] or summing above 1.
    """
    if not (0.0 <= albedo_probability <= 1.0 and 0.0 <= textureless_probability <= 1.0) \
            or albedo_probability + textureless_probability > 1.0 + 1e-9:
        raise ValueError(f"need albedo and textureless probabilities in [0, 1] with a sum <= 1, got "
                         f"{albedo_probability} and {textureless_probability}")
    u = float(torch.rand((), generator=generator, device=generator.device))
    if u < albedo_probability:
        return "albedo"
    if u < albedo_probability + textureless_probability:
        return "textureless"
    return "lambertian"


def normal_consistency(v_pos: torch.Tensor, t_pos_idx: torch.Tensor) -> torch.Tensor:
    """Mean ``1 − cos`` between the normals of the two faces of each interior edge (Magic3D's fine stage smooths its
    DMTet surface with it; threestudio weights it 1e4). Edges used by one face, or by more than two, are skipped.

    Args:
        v_pos: (V, 3) float positions (gradients flow to it); t_pos_idx: (F, 3) integer indices.

    Returns:
        A scalar, 0 for a flat surface, at most 2; 0 when there is no interior edge.
    """
    tri = t_pos_idx.long()
    fn = face_normals(v_pos, tri)
    with torch.no_grad():
        edges = torch.cat([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]], dim=0)
        edges = torch.sort(edges, dim=1).values
        keys = edges[:, 0] * v_pos.shape[0] + edges[:, 1]
        face_of = torch.arange(tri.shape[0], device=tri.device).repeat(3)
        keys, order = torch.sort(keys, stable=True)
        face_of = face_of[order]
        _, counts = torch.unique_consecutive(keys, return_counts=True)
        starts = torch.cumsum(counts, dim=0) - counts
        pair = counts == 2
        f0, f1 = face_of[starts[pair]], face_of[starts[pair] + 1]
    if f0.numel() == 0:
        return v_pos.sum() * 0.0
    return (1.0 - (fn[f0] * fn[f1]).sum(dim=-1)).mean()


def rasterize_surface(rasterizer, v_pos: torch.Tensor, t_pos_idx: torch.Tensor, mvp: torch.Tensor,
                      resolution: int) -> dict[str, torch.Tensor]:
    """Rasterize a mesh and interpolate what shading needs, per pixel.

    Args:
        rasterizer: a :class:`backend.geometry.render.Rasterizer`.
        v_pos: (V, 3) float32 positions in the cameras' frame; gradients flow to it (through the barycentrics and
            the normals; coverage itself is not differentiable).
        t_pos_idx: (F, 3) integer indices, wound counter-clockwise seen from outside.
        mvp: (B, 4, 4) clip-from-world matrices (:attr:`backend.geometry.cameras.CameraBatch.mvp`).
        resolution: side S of the square image in pixels.

    Returns:
        dict with ``rast_out`` (B, S, S, 4), ``mask`` (B, S, S, 1) float 1 on the surface, ``points`` (B, S, S, 3)
        surface positions, ``normals`` (B, S, S, 3) unit interpolated vertex normals (:func:`vertex_normals`),
        zeros off the surface, and the ``pos_clip`` (B, V, 4) / ``tri`` (F, 3) int32 it rasterized (for
        :func:`backend.geometry.render.antialias_silhouettes`). Rows are the rasterizer's: **row 0 is the bottom** (flip with
        :func:`backend.geometry.frames.bottom_up_to_top_down`).
    """
    tri = t_pos_idx.to(device=v_pos.device, dtype=torch.int32).contiguous()
    v_h = torch.cat([v_pos, torch.ones_like(v_pos[:, :1])], dim=1)
    pos_clip = torch.einsum("vi,bji->bvj", v_h, mvp.to(v_pos.device, v_pos.dtype)).contiguous()
    rast_out = rasterizer.rasterize(pos_clip, tri, (resolution, resolution))
    mask = (rast_out[..., 3:] > 0).to(v_pos.dtype)
    points = rasterizer.interpolate(v_pos, rast_out, tri)
    normals = rasterizer.interpolate(vertex_normals(v_pos, tri), rast_out, tri)
    normals = F.normalize(normals, dim=-1, eps=1e-20) * mask
    return {"rast_out": rast_out, "mask": mask, "points": points, "normals": normals, "pos_clip": pos_clip, "tri": tri}
