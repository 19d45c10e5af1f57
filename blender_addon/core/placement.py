"""bpy-free placement math: where the objects a result makes go in the scene. numpy only.

Every result that makes new objects places each of its meshes by a pair ``(anchor, location)``: the object's local
vertices are ``v_pos - anchor`` and its origin (``matrix_world`` translation, no rotation, scale 1) is ``location``,
so a world vertex ends up at ``v_pos - anchor + location``. The layouts below compute those pairs from the meshes'
axis-aligned boxes; the per-job targets of :mod:`..results` pick one layout each. All positions are in Blender's
world frame (right-handed, Z up), metres.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Box = tuple[np.ndarray, np.ndarray]
"""An axis-aligned box ``(lo (3,), hi (3,))``, metres."""

Placement = tuple[np.ndarray, np.ndarray]
"""``(anchor (3,) float64, location (3,) float64)`` of one mesh, metres (see the module docstring)."""


def mesh_boxes(v_pos_list: Sequence[np.ndarray]) -> list[Box]:
    """The axis-aligned box of each (N,3) vertex array; an empty mesh gets the zero box at the origin."""
    return [(np.asarray(v).min(axis=0), np.asarray(v).max(axis=0)) if len(v) else (np.zeros(3), np.zeros(3))
            for v in v_pos_list]


def row_offsets(x_min: np.ndarray, x_max: np.ndarray, gap: float, start: float | None = None) -> np.ndarray:
    """X shifts that lay boxes out side by side along +X, in order, ``gap`` apart.

    Box ``i`` spans ``[x_min[i], x_max[i]]`` before the shift and ``[x_min[i] + s[i], x_max[i] + s[i]]`` after it.

    Args:
        x_min, x_max: (N,) float, each box's extent along X, metres (``x_max >= x_min``).
        gap: free space between neighbouring boxes, metres (>= 0).
        start: where the left edge of box 0 goes; None = centre the whole row on x = 0.

    Returns:
        (N,) float64 shifts ``s``.

    Raises:
        ValueError: shapes differ, a box has ``x_max < x_min``, a negative gap, or non-finite input.
    """
    x_min = np.asarray(x_min, dtype=np.float64).reshape(-1)
    x_max = np.asarray(x_max, dtype=np.float64).reshape(-1)
    if x_min.shape != x_max.shape:
        raise ValueError(f"x_min has {x_min.size} boxes, x_max {x_max.size}")
    if not (np.isfinite(x_min).all() and np.isfinite(x_max).all() and np.isfinite(gap)):
        raise ValueError("x_min / x_max / gap contain NaN or Inf")
    if (x_max < x_min).any():
        raise ValueError(f"box {int(np.argmax(x_max < x_min))} has x_max < x_min")
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    widths = x_max - x_min
    lefts = np.concatenate([[0.0], np.cumsum(widths + gap)[:-1]])
    if start is None:
        start = -(widths.sum() + gap * max(widths.size - 1, 0)) / 2.0
    return start + lefts - x_min


def _x_extents(boxes: Sequence[Box]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([lo[0] for lo, _ in boxes], dtype=np.float64), np.array([hi[0] for _, hi in boxes],
                                                                            dtype=np.float64)


def row_centred_on(boxes: Sequence[Box], centre: Sequence[float], gap: float) -> list[Placement]:
    """Meshes made around the world origin, laid out side by side along +X, ``gap`` apart, the row centred on
    ``centre`` (3,); each object's origin is its mesh's model origin moved with it (anchor = 0)."""
    shifts = row_offsets(*_x_extents(boxes), gap)
    base = np.asarray(centre, dtype=np.float64)
    return [(np.zeros(3), base + (s, 0.0, 0.0)) for s in shifts]


def row_starting_at(boxes: Sequence[Box], origin: Sequence[float], gap: float,
                    start_x: float | None = None) -> list[Placement]:
    """Meshes that stand on a source object moved along +X into a row whose first box's left edge is ``start_x``
    (None = ``gap`` right of the rightmost box), ``gap`` apart. Each object's origin keeps the source's ``origin`` (3,)
    relative to its mesh (anchor = ``origin``)."""
    x_min, x_max = _x_extents(boxes)
    start = start_x if start_x is not None else float(x_max.max()) + gap
    shifts = row_offsets(x_min, x_max, gap, start=start)
    origin = np.asarray(origin, dtype=np.float64)
    return [(origin, origin + (s, 0.0, 0.0)) for s in shifts]


def in_place_at_box_centres(boxes: Sequence[Box]) -> list[Placement]:
    """Meshes that stay where they are, each object's origin at its box centre (anchor = location = centre)."""
    return [(c, c) for c in ((np.asarray(lo, dtype=np.float64) + hi) / 2.0 for lo, hi in boxes)]


def join_placed(meshes: Sequence[tuple[np.ndarray, np.ndarray]], placements: Sequence[Placement],
                tints: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Join placed meshes into one, mesh ``i`` tinted ``tints[i % len(tints)]``.

    Args:
        meshes: ``(v_pos (N_i,3) float, t_pos_idx (F_i,3) int)`` per mesh, where the backend put them.
        placements: one ``(anchor, location)`` per mesh.
        tints: (K,3) float32 linear RGB colours.

    Returns:
        ``(v_pos (N,3) float32 world, t_pos_idx (F,3) int32, v_color (N,3) float32)``.

    Raises:
        ValueError: no meshes, or as many placements as meshes were not given.
    """
    if not meshes or len(meshes) != len(placements):
        raise ValueError(f"{len(meshes)} meshes and {len(placements)} placements (need as many, at least one)")
    v_parts, t_parts, c_parts = [], [], []
    offset = 0
    for i, ((v_pos, t_pos_idx), (anchor, location)) in enumerate(zip(meshes, placements)):
        v_parts.append((np.asarray(v_pos, dtype=np.float64) - anchor + location).astype(np.float32))
        t_parts.append(np.asarray(t_pos_idx, dtype=np.int32) + offset)
        c_parts.append(np.broadcast_to(tints[i % len(tints)], (len(v_pos), 3)))
        offset += len(v_pos)
    return np.concatenate(v_parts), np.concatenate(t_parts), np.concatenate(c_parts).astype(np.float32)
