"""Point clouds in and out of LION's normalised frame, and the checks every entry point applies.

The released models were trained on ShapeNetCore.v2.PC15k (PointFlow's point clouds) with ``normalize_global``
(public ``datasets/pointflow_datasets.py``): x ↦ (x − μ) / s with μ the training set's mean point (3,) and s ONE
standard deviation of all coordinates of all training points. A single shape has no training set, so
:func:`normalize_points` uses the same form per shape — μ = the shape's mean point, s = the standard deviation of all
3N coordinates (PointFlow's ``normalize_per_shape`` without ``normalize_std_per_axis``) — which gives the unit-variance
clouds the networks saw. No axis change happens here (the model frame's axes are the data's; see the pipelines).
"""

from __future__ import annotations

import torch

__all__ = ["normalize_points", "denormalize_points", "check_points"]


def check_points(points: torch.Tensor, name: str = "points", min_points: int = 1) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``points`` is a finite float (B, N, 3) tensor with B ≥ 1 and
    N ≥ ``min_points``."""
    if not isinstance(points, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, N, 3), got {type(points).__name__}")
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (B, N, 3), got {tuple(points.shape)}")
    if points.shape[0] < 1 or points.shape[1] < min_points:
        raise ValueError(f"{name} has shape {tuple(points.shape)}: need at least 1 cloud of at least {min_points} "
                         f"points")
    if not points.is_floating_point():
        raise ValueError(f"{name} must be a float tensor, got {points.dtype}")
    if not bool(torch.isfinite(points).all()):
        raise ValueError(f"{name} contains NaN or infinite coordinates")


def normalize_points(points: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Per-shape normalisation to LION's frame: (points − centre) / scale.

    Args:
        points: (B, N, 3) float, any frame and unit.
    Returns:
        (normalised (B, N, 3), (centre (B, 1, 3), scale (B, 1, 1))); centre = mean point, scale = population
        standard deviation of the 3N coordinates of each cloud.
    Raises:
        ValueError: not (B, N, 3) with N ≥ 2, non-finite values, or a cloud of identical points (scale 0).
    """
    check_points(points, "points", min_points=2)
    centre = points.mean(dim=1, keepdim=True)
    scale = (points - centre).reshape(points.shape[0], -1).std(dim=1, unbiased=False).view(-1, 1, 1)
    if bool((scale <= 1e-12).any()):
        raise ValueError("points: a cloud has all its points at one place (zero spread); cannot normalise it")
    return (points - centre) / scale, (centre, scale)


def denormalize_points(points: torch.Tensor, centre: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize_points`: points (B, N, 3) · scale (B, 1, 1) + centre (B, 1, 3)."""
    return points * scale + centre
