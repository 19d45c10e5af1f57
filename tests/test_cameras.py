"""Tests for backend.geometry.cameras: conventions (Blender frame, OpenGL camera), projection, sampling, view labels."""

from __future__ import annotations

import math

import pytest
import torch

from backend.geometry.cameras import CameraBatch, cameras_from_angles, perspective, sample_cameras


def _project(mvp: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(B, 4, 4) mvp, (N, 3) world points -> (B, N, 4) clip coordinates."""
    points_h = torch.cat([points, torch.ones(points.shape[0], 1)], dim=1)
    return points_h @ mvp.transpose(-1, -2)


def test_front_camera_sits_on_minus_y_looking_toward_plus_y():
    cams = cameras_from_angles(0.0, 0.0, 2.0, 60.0)
    c2w = cams.c2w[0]
    torch.testing.assert_close(cams.camera_positions[0], torch.tensor([0.0, -2.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(-c2w[:3, 2], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0)  # forward = -Z
    torch.testing.assert_close(c2w[:3, 0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6, rtol=0)  # image right = +X
    torch.testing.assert_close(c2w[:3, 1], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6, rtol=0)  # image up = +Z
    assert cams.view_labels() == ["front"]


def test_azimuth_90_is_on_plus_x_and_elevation_is_above():
    cams = cameras_from_angles(torch.tensor([0.0, 30.0]), torch.tensor([90.0, -90.0]), torch.tensor([1.5, 1.0]),
                               torch.tensor([50.0, 50.0]))
    torch.testing.assert_close(cams.camera_positions[0], torch.tensor([1.5, 0.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(-cams.c2w[0, :3, 2], torch.tensor([-1.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    expected = torch.tensor([-math.cos(math.radians(30)), 0.0, math.sin(math.radians(30))])
    torch.testing.assert_close(cams.camera_positions[1], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("elevation", [90.0, -90.0, 89.999])
def test_straight_down_and_up_views_are_well_defined(elevation):
    cams = cameras_from_angles(elevation, 30.0, 2.0, 45.0)
    c2w = cams.c2w[0]
    assert torch.isfinite(c2w).all()
    rot = c2w[:3, :3]
    torch.testing.assert_close(rot.T @ rot, torch.eye(3), atol=1e-5, rtol=0)
    sign = 1.0 if elevation > 0 else -1.0
    assert abs(float(-c2w[2, 2]) + sign) < 1e-3  # looks straight down (up)
    origin_clip = _project(cams.mvp, torch.zeros(1, 3))[0, 0]
    assert abs(float(origin_clip[0] / origin_clip[3])) < 1e-5 and abs(float(origin_clip[1] / origin_clip[3])) < 1e-5


def test_sampled_c2w_are_rotations_and_origin_projects_to_image_centre():
    cams = sample_cameras(64, torch.Generator().manual_seed(0), elevation_range=(-90, 90))
    rot = cams.c2w[:, :3, :3]
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, torch.eye(3).expand(64, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(64), atol=1e-5, rtol=0)
    torch.testing.assert_close(cams.c2w[:, 3], torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(64, 4))
    torch.testing.assert_close(cams.camera_positions.norm(dim=1), cams.camera_distances, atol=1e-5, rtol=0)
    clip = _project(cams.mvp, torch.zeros(1, 3))[:, 0]
    assert (clip[:, 3] > 0).all()
    torch.testing.assert_close(clip[:, 3], cams.camera_distances, atol=1e-5, rtol=0)  # w = depth along the view axis
    torch.testing.assert_close(clip[:, :2] / clip[:, 3:], torch.zeros(64, 2), atol=1e-5, rtol=0)


def test_mvp_is_projection_times_inverse_c2w():
    cams = sample_cameras(8, torch.Generator().manual_seed(3))
    expected = perspective(cams.fovy) @ torch.linalg.inv(cams.c2w)
    torch.testing.assert_close(cams.mvp, expected, atol=1e-5, rtol=1e-5)


def test_image_axes_of_front_view_are_world_x_and_z():
    cams = cameras_from_angles(0.0, 0.0, 3.0, 40.0)
    clip = _project(cams.mvp, torch.tensor([[0.2, 0.0, 0.0], [0.0, 0.0, 0.2], [0.0, 0.5, 0.0]]))[0]
    ndc = clip[:, :3] / clip[:, 3:]
    assert ndc[0, 0] > 0.05 and abs(float(ndc[0, 1])) < 1e-6  # +X is image right
    assert ndc[1, 1] > 0.05 and abs(float(ndc[1, 0])) < 1e-6  # +Z is image up
    assert ndc[2, 2] > ndc[0, 2]  # farther along +Y is deeper


def test_target_is_looked_at_from_camera_distance():
    target = torch.tensor([1.0, -2.0, 0.5])
    cams = cameras_from_angles(torch.tensor([20.0, -10.0]), torch.tensor([45.0, 170.0]), 2.5, 55.0, target=target)
    torch.testing.assert_close((cams.camera_positions - target).norm(dim=1), torch.full((2,), 2.5))
    clip = _project(cams.mvp, target[None])[:, 0]
    torch.testing.assert_close(clip[:, :2] / clip[:, 3:], torch.zeros(2, 2), atol=1e-5, rtol=0)


def test_perspective_maps_frustum_edges_to_ndc_bounds():
    fovy, near, far, aspect = 50.0, 0.1, 20.0, 1.5
    proj = perspective(torch.tensor([fovy]), aspect=aspect, near=near, far=far)[0]
    d = 4.0
    half_h = d * math.tan(math.radians(fovy) / 2)
    points = torch.tensor([[0.0, half_h, -d, 1.0],             # top edge
                           [half_h * aspect, 0.0, -d, 1.0],    # right edge
                           [0.0, 0.0, -near, 1.0],             # near plane
                           [0.0, 0.0, -far, 1.0]])             # far plane
    clip = points @ proj.T
    ndc = clip[:, :3] / clip[:, 3:]
    torch.testing.assert_close(ndc[0, 1], torch.tensor(1.0))
    torch.testing.assert_close(ndc[1, 0], torch.tensor(1.0))
    torch.testing.assert_close(ndc[2, 2], torch.tensor(-1.0))
    torch.testing.assert_close(ndc[3, 2], torch.tensor(1.0))
    torch.testing.assert_close(clip[:, 3], -points[:, 2])


def test_sampling_is_reproducible_and_within_ranges():
    kwargs = dict(radius_range=(1.0, 1.5), elevation_range=(-15.0, 45.0), fovy_range=(40.0, 70.0))
    a = sample_cameras(256, torch.Generator().manual_seed(123), **kwargs)
    b = sample_cameras(256, torch.Generator().manual_seed(123), **kwargs)
    c = sample_cameras(256, torch.Generator().manual_seed(124), **kwargs)
    for name in ("c2w", "mvp", "elevation", "azimuth", "camera_distances", "fovy"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.azimuth, c.azimuth)
    assert len(a) == 256 and a.c2w.dtype == torch.float32
    assert ((a.camera_distances >= 1.0) & (a.camera_distances <= 1.5)).all()
    assert ((a.elevation >= -15.0) & (a.elevation <= 45.0)).all()
    assert ((a.azimuth >= -180.0) & (a.azimuth < 180.0)).all()
    assert ((a.fovy >= 40.0) & (a.fovy <= 70.0)).all()
    # Uniform: the means of 256 draws sit near the range centres (4 standard errors).
    for value, lo, hi in ((a.camera_distances, 1.0, 1.5), (a.elevation, -15.0, 45.0), (a.azimuth, -180.0, 180.0)):
        stderr = (hi - lo) / math.sqrt(12 * 256)
        assert abs(float(value.mean()) - (lo + hi) / 2) < 4 * stderr


def test_sampling_a_fixed_value_range_gives_that_value():
    cams = sample_cameras(4, torch.Generator().manual_seed(0), radius_range=(2.0, 2.0), elevation_range=(10.0, 10.0),
                          azimuth_range=(200.0, 200.0), fovy_range=(45.0, 45.0))
    torch.testing.assert_close(cams.camera_distances, torch.full((4,), 2.0))
    torch.testing.assert_close(cams.elevation, torch.full((4,), 10.0))
    torch.testing.assert_close(cams.azimuth, torch.full((4,), -160.0))  # wrapped into [-180, 180)
    torch.testing.assert_close(cams.fovy, torch.full((4,), 45.0))


@pytest.mark.parametrize("kwargs, match", [
    (dict(radius_range=(1.5, 1.0)), "radius_range"),
    (dict(radius_range=(0.0, 1.0)), "radius_range"),
    (dict(elevation_range=(10.0, -10.0)), "elevation_range"),
    (dict(elevation_range=(-100.0, 10.0)), "elevation_range"),
    (dict(azimuth_range=(0.0, 400.0)), "azimuth_range"),
    (dict(fovy_range=(0.0, 60.0)), "fovy_range"),
    (dict(fovy_range=(40.0, 180.0)), "fovy_range"),
    (dict(fovy_range=(70.0, 40.0)), "fovy_range"),
    (dict(batch_size=0), "batch_size"),
])
def test_sampling_rejects_bad_ranges(kwargs, match):
    args = dict(batch_size=4, generator=torch.Generator().manual_seed(0))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sample_cameras(**args)


@pytest.mark.parametrize("kwargs, match", [
    (dict(elevation=95.0), "elevation"),
    (dict(camera_distances=-1.0), "camera_distances"),
    (dict(fovy=180.0), "fovy"),
    (dict(azimuth=torch.zeros(3)), "batch size"),
    (dict(elevation=float("nan")), "elevation"),
])
def test_cameras_from_angles_rejects_bad_values(kwargs, match):
    args = dict(elevation=torch.zeros(2), azimuth=torch.zeros(2), camera_distances=1.0, fovy=60.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        cameras_from_angles(**args)


def test_view_labels():
    elevation = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 10.0, 70.0, 60.0, 59.0])
    azimuth = torch.tensor([0.0, 45.0, 46.0, -90.0, 180.0, 135.0, -134.0, 0.0, 180.0, -170.0])
    cams = cameras_from_angles(elevation, azimuth, 1.2, 50.0)
    assert cams.view_labels() == ["front", "front", "side", "side", "back", "back", "side", "overhead", "overhead",
                                  "back"]
    assert cams.view_labels(overhead_threshold=80.0, front_half_angle=30.0) == [
        "front", "side", "side", "side", "back", "side", "side", "front", "back", "back"]
    with pytest.raises(ValueError, match="front_half_angle"):
        cams.view_labels(front_half_angle=100.0)


def test_to_and_len():
    cams = sample_cameras(3, torch.Generator().manual_seed(1))
    moved = cams.to("cpu")
    assert isinstance(moved, CameraBatch) and len(moved) == 3
    assert torch.equal(moved.mvp, cams.mvp)
