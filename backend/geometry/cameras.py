"""Cameras for rendering-based optimization: look-at poses, OpenGL projections and random view sampling.

Frames and conventions (docs/architecture.md, *Frames and conventions*):

- World frame: Blender's, right-handed, Z up, metres.
- Camera frame: OpenGL's. The camera looks down its own -Z axis, +X is right and +Y is up in the image.
  ``c2w`` maps camera coordinates to world coordinates (columns: right, up, back, position).
- Angles, in degrees: ``azimuth`` 0 is the front view (camera on -Y looking toward +Y, Blender's Front view);
  azimuth +90 puts the camera on +X (Blender's Right view); azimuth is reported in [-180, 180).
  ``elevation`` > 0 is above the target, in [-90, 90].
- Camera position = target + camera_distances * (cos(el) sin(az), -cos(el) cos(az), sin(el)).
- ``mvp`` = projection @ inverse(c2w) maps homogeneous world points (x, y, z, 1) to clip space, ready for
  :meth:`backend.geometry.render.Rasterizer.rasterize` as ``pos_clip = v_pos_h @ mvp.transpose(-1, -2)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["CameraBatch", "perspective", "look_at_c2w", "cameras_from_angles", "sample_cameras"]


@dataclass
class CameraBatch:
    """A batch of B pinhole cameras (see the module docstring for frames and angle conventions)."""

    c2w: torch.Tensor
    """(B, 4, 4) float32, world-from-camera rigid transform (OpenGL camera axes: looks down -Z, +Y up)."""
    mvp: torch.Tensor
    """(B, 4, 4) float32, clip-from-world: ``projection @ inverse(c2w)``."""
    elevation: torch.Tensor
    """(B,) float32, degrees in [-90, 90]; > 0 is above the target."""
    azimuth: torch.Tensor
    """(B,) float32, degrees in [-180, 180); 0 = front (camera on -Y), +90 = camera on +X."""
    camera_distances: torch.Tensor
    """(B,) float32, metres from the camera to its look-at target, > 0."""
    fovy: torch.Tensor
    """(B,) float32, vertical field of view in degrees, in (0, 180)."""

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    def to(self, device: torch.device | str) -> "CameraBatch":
        """Return a copy with every tensor on ``device``."""
        return CameraBatch(
            c2w=self.c2w.to(device),
            mvp=self.mvp.to(device),
            elevation=self.elevation.to(device),
            azimuth=self.azimuth.to(device),
            camera_distances=self.camera_distances.to(device),
            fovy=self.fovy.to(device),
        )

    @property
    def camera_positions(self) -> torch.Tensor:
        """(B, 3) float32 camera centres in world coordinates (metres)."""
        return self.c2w[:, :3, 3]

    def view_labels(self, overhead_threshold: float = 60.0, front_half_angle: float = 45.0) -> list[str]:
        """Name each camera's view for view-dependent prompts (Latent-NeRF's ", front view" suffixes).

        Args:
            overhead_threshold: degrees; elevation >= this is "overhead" (checked first).
            front_half_angle: degrees in [0, 90]; |azimuth| <= this is "front", |azimuth| >= 180 - this is
                "back", anything else is "side".

        Returns:
            B strings, each one of "front", "side", "back", "overhead".

        Raises:
            ValueError: front_half_angle outside [0, 90].
        """
        if not 0.0 <= front_half_angle <= 90.0:
            raise ValueError(f"front_half_angle must be in [0, 90] degrees, got {front_half_angle}")
        elevation = self.elevation.detach().cpu().tolist()
        azimuth = self.azimuth.detach().cpu().tolist()
        labels = []
        for el, az in zip(elevation, azimuth):
            if el >= overhead_threshold:
                labels.append("overhead")
            elif abs(az) <= front_half_angle:
                labels.append("front")
            elif abs(az) >= 180.0 - front_half_angle:
                labels.append("back")
            else:
                labels.append("side")
        return labels


def perspective(fovy_deg: torch.Tensor, aspect: float = 1.0, near: float = 0.01, far: float = 100.0) -> torch.Tensor:
    """OpenGL perspective projection matrices (clip-from-camera; camera looks down -Z, NDC z in [-1, 1]).

    Args:
        fovy_deg: (B,) vertical field of view in degrees, each in (0, 180).
        aspect: image width / height, > 0.
        near, far: clip plane distances in metres, 0 < near < far.

    Returns:
        (B, 4, 4) tensor, dtype/device of ``fovy_deg`` (float32 if it is an integer tensor). Clip w = -z_camera.

    Raises:
        ValueError: fovy outside (0, 180), or bad aspect/near/far.
    """
    fovy_deg = torch.as_tensor(fovy_deg)
    if not fovy_deg.is_floating_point():
        fovy_deg = fovy_deg.float()
    if fovy_deg.dim() != 1:
        raise ValueError(f"fovy_deg must have shape (B,), got {tuple(fovy_deg.shape)}")
    if fovy_deg.numel() and not bool(((fovy_deg > 0) & (fovy_deg < 180)).all()):
        raise ValueError(f"fovy must be in (0, 180) degrees, got {fovy_deg.tolist()}")
    if not aspect > 0:
        raise ValueError(f"aspect must be > 0, got {aspect}")
    if not 0 < near < far:
        raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
    focal = 1.0 / torch.tan(torch.deg2rad(fovy_deg) / 2)
    proj = torch.zeros(fovy_deg.shape[0], 4, 4, dtype=fovy_deg.dtype, device=fovy_deg.device)
    proj[:, 0, 0] = focal / aspect
    proj[:, 1, 1] = focal
    proj[:, 2, 2] = (far + near) / (near - far)
    proj[:, 2, 3] = 2.0 * far * near / (near - far)
    proj[:, 3, 2] = -1.0
    return proj


def look_at_c2w(elevation: torch.Tensor, azimuth: torch.Tensor, camera_distances: torch.Tensor,
                target: torch.Tensor | None = None) -> torch.Tensor:
    """World-from-camera matrices of cameras orbiting ``target`` and looking at it, world up +Z.

    The right axis is (cos az, sin az, 0) for every elevation, so straight-down/up views (|elevation| = 90)
    are well defined (image up then points away from the front, resp. toward it) instead of degenerate.

    Args:
        elevation, azimuth: (B,) degrees (elevation in [-90, 90]).
        camera_distances: (B,) metres, > 0.
        target: (3,) or (B, 3) look-at point in world metres; None = origin.

    Returns:
        (B, 4, 4) c2w (columns right, up, back, position), dtype/device of ``elevation``.
    """
    el = torch.deg2rad(elevation)
    az = torch.deg2rad(azimuth)
    cos_el, sin_el = torch.cos(el), torch.sin(el)
    cos_az, sin_az = torch.cos(az), torch.sin(az)
    # Unit vector from the target to the camera = the camera's back (+Z) axis.
    back = torch.stack([cos_el * sin_az, -cos_el * cos_az, sin_el], dim=-1)
    right = torch.stack([cos_az, sin_az, torch.zeros_like(az)], dim=-1)
    up = torch.linalg.cross(back, right)
    position = camera_distances[:, None] * back
    if target is not None:
        position = position + target.to(position).expand_as(position)
    c2w = torch.zeros(el.shape[0], 4, 4, dtype=el.dtype, device=el.device)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = up
    c2w[:, :3, 2] = back
    c2w[:, :3, 3] = position
    c2w[:, 3, 3] = 1.0
    return c2w


def _rigid_inverse(c2w: torch.Tensor) -> torch.Tensor:
    """(B, 4, 4) inverse of rigid transforms [R t; 0 1] -> [R^T -R^T t; 0 1]."""
    rot_t = c2w[:, :3, :3].transpose(1, 2)
    w2c = torch.zeros_like(c2w)
    w2c[:, :3, :3] = rot_t
    w2c[:, :3, 3] = -(rot_t @ c2w[:, :3, 3:4])[..., 0]
    w2c[:, 3, 3] = 1.0
    return w2c


def _as_batch(name: str, value) -> torch.Tensor:
    """``value`` as a 0-d or 1-d floating tensor; ValueError if it has more dims or is not finite."""
    t = torch.as_tensor(value)
    if t.dim() > 1:
        raise ValueError(f"{name} must be a scalar or have shape (B,), got {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    return t


def cameras_from_angles(elevation, azimuth, camera_distances, fovy, target: torch.Tensor | None = None,
                        near: float = 0.01, far: float = 100.0) -> CameraBatch:
    """Build look-at cameras from spherical coordinates around ``target``.

    Args:
        elevation: (B,) or scalar, degrees in [-90, 90].
        azimuth: (B,) or scalar, degrees (any value; stored wrapped to [-180, 180)).
        camera_distances: (B,) or scalar, metres > 0 from ``target``.
        fovy: (B,) or scalar, vertical field of view in degrees in (0, 180).
        target: (3,) or (B, 3) world-space look-at point in metres; None = origin.
        near, far: clip planes in metres for ``mvp`` (square aspect).
        Scalars broadcast against the (B,) tensors; all must share one B.

    Returns:
        CameraBatch with float32 tensors on the device of ``elevation`` (if it is a tensor).

    Raises:
        ValueError: mismatched batch sizes, non-finite values, or values outside the ranges above.
    """
    elevation = _as_batch("elevation", elevation)
    device = elevation.device
    azimuth = _as_batch("azimuth", azimuth).to(device)
    camera_distances = _as_batch("camera_distances", camera_distances).to(device)
    fovy = _as_batch("fovy", fovy).to(device)
    try:
        elevation, azimuth, camera_distances, fovy = torch.broadcast_tensors(
            *torch.atleast_1d(elevation, azimuth, camera_distances, fovy))
    except RuntimeError as exc:
        raise ValueError(f"elevation, azimuth, camera_distances, fovy must share one batch size B: {exc}") from None
    elevation, azimuth, camera_distances, fovy = (x.to(torch.float32).contiguous()
                                                  for x in (elevation, azimuth, camera_distances, fovy))
    if bool(((elevation < -90) | (elevation > 90)).any()):
        raise ValueError(f"elevation must be in [-90, 90] degrees, got {elevation.tolist()}")
    if bool((camera_distances <= 0).any()):
        raise ValueError(f"camera_distances must be > 0, got {camera_distances.tolist()}")
    if target is not None:
        target = torch.as_tensor(target, dtype=torch.float32, device=device)
        if target.shape not in ((3,), (elevation.shape[0], 3)):
            raise ValueError(f"target must have shape (3,) or (B, 3) with B={elevation.shape[0]}, "
                             f"got {tuple(target.shape)}")
    azimuth = torch.remainder(azimuth + 180.0, 360.0) - 180.0
    c2w = look_at_c2w(elevation, azimuth, camera_distances, target)
    proj = perspective(fovy, aspect=1.0, near=near, far=far)
    mvp = proj @ _rigid_inverse(c2w)
    return CameraBatch(c2w=c2w, mvp=mvp, elevation=elevation, azimuth=azimuth,
                       camera_distances=camera_distances, fovy=fovy)


def _check_range(name: str, value_range: tuple[float, float], low: float | None = None, high: float | None = None,
                 open_bounds: bool = False) -> tuple[float, float]:
    if len(value_range) != 2:
        raise ValueError(f"{name} must be a (low, high) pair, got {value_range!r}")
    lo, hi = float(value_range[0]), float(value_range[1])
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"{name} must be finite with low <= high, got {value_range!r}")
    if open_bounds:
        bad = (low is not None and lo <= low) or (high is not None and hi >= high)
    else:
        bad = (low is not None and lo < low) or (high is not None and hi > high)
    if bad:
        bracket = "()" if open_bounds else "[]"
        raise ValueError(f"{name} must lie in {bracket[0]}{low}, {high}{bracket[1]}, got {value_range!r}")
    return lo, hi


def sample_cameras(batch_size: int, generator: torch.Generator, radius_range: tuple[float, float] = (1.0, 1.5),
                   elevation_range: tuple[float, float] = (-15.0, 45.0),
                   azimuth_range: tuple[float, float] = (-180.0, 180.0),
                   fovy_range: tuple[float, float] = (40.0, 70.0), device: torch.device | str = "cpu") -> CameraBatch:
    """Sample ``batch_size`` random look-at cameras around the origin (Latent-NeRF / Latent-Paint defaults).

    camera_distances, elevation, azimuth and fovy are each drawn uniformly from their range (degrees for angles,
    metres for the radius), in that order, with ``torch.rand(..., generator=generator)``; the result depends only on
    the generator's state (same seed -> same cameras), on the generator's device, then moved to ``device``.

    Args:
        batch_size: B >= 1.
        generator: torch.Generator that drives every draw.
        radius_range: metres, 0 < low <= high.
        elevation_range: degrees, -90 <= low <= high <= 90.
        azimuth_range: degrees, low <= high, high - low <= 360; wrapped to [-180, 180) afterwards.
        fovy_range: degrees, 0 < low <= high < 180.
        device: where the returned tensors live.

    Returns:
        CameraBatch of B cameras, float32.

    Raises:
        ValueError: batch_size < 1 or any range invalid (named in the message).
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    r_lo, r_hi = _check_range("radius_range", radius_range, low=0.0, open_bounds=True)
    el_lo, el_hi = _check_range("elevation_range", elevation_range, low=-90.0, high=90.0)
    az_lo, az_hi = _check_range("azimuth_range", azimuth_range)
    if az_hi - az_lo > 360.0:
        raise ValueError(f"azimuth_range must span at most 360 degrees, got {azimuth_range!r}")
    fov_lo, fov_hi = _check_range("fovy_range", fovy_range, low=0.0, high=180.0, open_bounds=True)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        u = torch.rand(batch_size, generator=generator, device=generator.device, dtype=torch.float32)
        return lo + (hi - lo) * u

    camera_distances = uniform(r_lo, r_hi)
    elevation = uniform(el_lo, el_hi)
    azimuth = uniform(az_lo, az_hi)
    fovy = uniform(fov_lo, fov_hi)
    return cameras_from_angles(elevation.to(device), azimuth.to(device), camera_distances.to(device),
                               fovy.to(device))
