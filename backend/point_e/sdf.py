"""Point cloud → mesh with Point-E's SDF regression model (public ``point_e/util/pc_to_mesh.py`` facts).

The SDF is queried on a ``grid_resolution``³ grid (128 as the public evaluation) over the cube of side 1.02 centred at
the origin (bound 0.51, Point-E's model frame), in chunks of ``query_chunk`` points (4096 as public), then marching
cubes at level 0 with the solid where the SDF is positive. When the field has one sign everywhere (an untrained or
confused model), the public code subtracts its mean so that marching cubes still finds a surface; so do we, and say
so (``recentred``). Vertex colours are those of the nearest cloud point (as the public ``fill_vertex_channels``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..geometry.extract import clean_mesh, marching_cubes, sample_grid
from ..geometry.mesh import TriMesh
from .transformer import PointCloudSDFModel

__all__ = ["SDF_BOUND", "SDF_LEVEL", "SDFMesh", "sdf_to_mesh", "nearest_colors", "PointCloudSDFModel"]

SDF_BOUND = 0.51
"""Half the public grid's side length (1.02), Point-E model units."""
SDF_LEVEL = 0.0


@dataclass
class SDFMesh:
    """A mesh extracted from an SDF, in Point-E's model frame.

    Attributes:
        mesh: the surface (float32 / int32), cleaned (floaters dropped, closed parts wound outward).
        recentred: the field had one sign everywhere and its mean was subtracted (the public fallback).
        sdf_range: (min, max) of the raw SDF on the grid.
    """

    mesh: TriMesh
    recentred: bool
    sdf_range: tuple[float, float]


@torch.no_grad()
def sdf_to_mesh(model: PointCloudSDFModel | Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor | None,
                grid_resolution: int = 128, query_chunk: int = 4096, face_budget: int | None = None,
                min_component_ratio: float = 0.02, check_cancelled: Callable[[], None] | None = None) -> SDFMesh:
    """Marching cubes on the SDF of one point cloud.

    Args:
        model: the SDF model, or any field ``fn(query (n, 3)) -> (n,)`` (then ``points`` is ignored; tests use an
            analytic SDF).
        points: (N, 3) float xyz of the cloud, model frame (the model's device).
        grid_resolution: samples per axis (>= 8).
        query_chunk: query points per model call.
        face_budget: decimate to at most this many triangles (None = keep all).
        min_component_ratio: drop parts smaller than this fraction of the largest one's area.
        check_cancelled: called before every chunk (may raise to cancel).

    Returns:
        :class:`SDFMesh` in the model frame.

    Raises:
        MeshError: no surface even after recentring (a constant field).
    """
    if isinstance(model, PointCloudSDFModel):
        device = next(model.parameters()).device
        latents = model.encode_point_clouds(points.T[None].to(device, torch.float32))

        def field(q: torch.Tensor) -> torch.Tensor:
            if check_cancelled is not None:
                check_cancelled()
            return model.predict_sdf(q.T[None], latents)[0]
    else:
        device, field = torch.device("cpu"), model
    grid = sample_grid(field, grid_resolution, SDF_BOUND, chunk=query_chunk, device=device)
    lo, hi = float(grid.min()), float(grid.max())
    recentred = not (lo < SDF_LEVEL < hi)
    if recentred:
        grid = grid - grid.mean()
    raw = marching_cubes(grid, SDF_LEVEL, SDF_BOUND, inside="above")
    mesh = clean_mesh(raw, min_component_ratio=min_component_ratio, face_budget=face_budget)
    return SDFMesh(mesh, recentred, (lo, hi))


def nearest_colors(v_pos: np.ndarray, points: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Per-vertex colours (V, 3) float32 = ``colors`` of each vertex's nearest point (``points`` (N, 3), same frame)."""
    from scipy.spatial import cKDTree

    _, idx = cKDTree(points).query(v_pos, k=1)
    return np.ascontiguousarray(colors[idx], dtype=np.float32)
