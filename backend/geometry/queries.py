"""Point and volume queries on triangle meshes: generalized winding numbers, point–surface distances, signed volume.

Generalized winding numbers (Jacobson et al., "Robust Inside-Outside Segmentation using Generalized Winding Numbers",
SIGGRAPH 2013, via libigl) make "inside" well defined for the meshes artists make: open, self-intersecting,
multi-part blockouts. Positions are in whatever frame the mesh is given in; distances in the same units.
"""

from __future__ import annotations

import numpy as np

# Below this many faces the exact generalized winding number beats libigl's fast (octree) approximation on a grid
# (it is also exact); above it the fast one wins by far (measured: 140 faces 0.6 s vs 5 s, 82k faces 26 s vs 0.8 s).
_EXACT_WINDING_MAX_FACES = 1000


def signed_volume(v_pos: np.ndarray, t_pos_idx: np.ndarray) -> float:
    """Signed volume enclosed by a closed triangle mesh (divergence theorem), in cubic units of ``v_pos``.

    Positive when the faces are wound counter-clockwise seen from outside (normals point outward). ``v_pos`` (N, 3),
    ``t_pos_idx`` (F, 3). Meaningful for closed meshes only.
    """
    v = np.asarray(v_pos, dtype=np.float64)
    tri = np.asarray(t_pos_idx)
    return float(np.einsum("ij,ij->i", v[tri[:, 0]], np.cross(v[tri[:, 1]], v[tri[:, 2]])).sum() / 6.0)


def winding_number(v_pos: np.ndarray, t_pos_idx: np.ndarray, points: np.ndarray,
                          fast: bool | None = None) -> np.ndarray:
    """Generalized winding number of a triangle mesh at points (libigl), evaluated directly.

    Args:
        v_pos: (V, 3) vertices; t_pos_idx: (F, 3) triangles; points: (N, 3) queries — one frame, any float dtype.
        fast: use libigl's octree approximation ``fast_winding_number`` (what the official Latent-NeRF code calls)
            instead of the exact ``winding_number``; None = exact for small meshes (<= 1000 faces), fast above.

    Returns:
        (N,) float64 winding numbers: ~1 inside a closed outward-oriented surface, 0 outside, fractional near holes.
    """
    import igl

    v = np.ascontiguousarray(v_pos, dtype=np.float64)
    f = np.ascontiguousarray(t_pos_idx, dtype=np.int64)
    q = np.ascontiguousarray(points, dtype=np.float64)
    if fast is None:
        fast = len(f) > _EXACT_WINDING_MAX_FACES
    return igl.fast_winding_number(v, f, q) if fast else igl.winding_number(v, f, q)


def surface_distance(v_pos: np.ndarray, t_pos_idx: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N,) float64 unsigned distance from each point to the mesh surface (libigl ``point_mesh_squared_distance``)."""
    import igl

    sq, _, _ = igl.point_mesh_squared_distance(np.ascontiguousarray(points, dtype=np.float64),
                                               np.ascontiguousarray(v_pos, dtype=np.float64),
                                               np.ascontiguousarray(t_pos_idx, dtype=np.int64))
    return np.sqrt(np.maximum(sq, 0.0))
