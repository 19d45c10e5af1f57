"""bpy-free array packing for the add-on: transforms, per-corner UVs, texture pixels. numpy only.

Blender hands out flat buffers (``foreach_get``); these helpers turn them into the protocol's arrays and back,
vectorized, so that ``mesh_io`` (the bpy side) stays a thin layer of ``foreach_get``/``foreach_set`` calls and the
logic is testable without Blender.

Conventions: ``v_pos`` (N,3) float32 in Blender's world frame (right-handed, Z up, metres); ``t_pos_idx`` (F,3)
int32 vertex indices; ``tri_loops`` (F,3) int32 Blender loop (face-corner) indices of each triangle corner, from
``mesh.loop_triangles`` "loops"; ``loop_uv`` (L,2) float32 one UV per loop; wire images have row 0 at the TOP,
Blender's ``Image.pixels`` start at the BOTTOM-left, RGBA float in [0, 1].
"""

from __future__ import annotations

import numpy as np


def transform_points(co: np.ndarray, matrix_world: np.ndarray) -> np.ndarray:
    """Apply an affine 4x4 object->world matrix to points.

    Args:
        co: (N,3) float, object-space coordinates, metres.
        matrix_world: (4,4) float, Blender's ``Object.matrix_world`` (column vectors: ``p_w = M @ [p, 1]``);
            its last row must be (0, 0, 0, 1).

    Returns:
        (N,3) float32 world-space coordinates (computed in float64).

    Raises:
        ValueError: wrong shapes, a projective matrix, or non-finite input.
    """
    co = np.asarray(co)
    m = np.asarray(matrix_world, dtype=np.float64)
    if co.ndim != 2 or co.shape[1] != 3:
        raise ValueError(f"co must be (N,3), got {co.shape}")
    if m.shape != (4, 4):
        raise ValueError(f"matrix_world must be (4,4), got {m.shape}")
    if not np.allclose(m[3], (0.0, 0.0, 0.0, 1.0)):
        raise ValueError(f"matrix_world is not affine: last row {m[3].tolist()}")
    if not (np.isfinite(m).all() and np.isfinite(co).all()):
        raise ValueError("co / matrix_world contain NaN or Inf")
    return (co.astype(np.float64) @ m[:3, :3].T + m[:3, 3]).astype(np.float32)


def loop_uvs_to_wire(loop_uv: np.ndarray, tri_loops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The protocol's ``uv``/``uv_idx`` for a triangulated Blender mesh: one UV per loop, indexed by loop.

    Args:
        loop_uv: (L,2) float UVs of one UV map, one per loop (face corner).
        tri_loops: (F,3) int loop index of each triangle corner, in [0, L).

    Returns:
        ``uv`` (L,2) float32 and ``uv_idx`` (F,3) int32 (= ``tri_loops``), so ``uv[uv_idx[f, k]]`` is the UV of
        corner k of triangle f.

    Raises:
        ValueError: wrong shapes, indices out of range, or non-finite UVs.
    """
    loop_uv = np.asarray(loop_uv)
    tri_loops = np.asarray(tri_loops)
    if loop_uv.ndim != 2 or loop_uv.shape[1] != 2:
        raise ValueError(f"loop_uv must be (L,2), got {loop_uv.shape}")
    _check_index_array("tri_loops", tri_loops, loop_uv.shape[0])
    if not np.isfinite(loop_uv).all():
        raise ValueError("loop_uv contains NaN or Inf")
    return np.ascontiguousarray(loop_uv, dtype=np.float32), np.ascontiguousarray(tri_loops, dtype=np.int32)


def scatter_corner_uvs(uv: np.ndarray, uv_idx: np.ndarray, tri_loops: np.ndarray, n_loops: int,
                       atol: float = 1e-6) -> tuple[np.ndarray, int, int]:
    """Turn per-triangle-corner UVs back into one UV per Blender loop.

    A quad or n-gon is split into triangles that share loops (a quad's two diagonal corners are in both of its
    triangles). When a UV unwrapper that saw only triangles (xatlas) puts a seam along such a diagonal, a shared
    loop receives two different UVs: Blender can store only one, so that loop is a *conflict*. The first triangle's
    value is kept.

    Args:
        uv: (M,2) float UVs.
        uv_idx: (F,3) int indices into ``uv`` per triangle corner.
        tri_loops: (F,3) int loop index per triangle corner, in [0, n_loops).
        n_loops: L, the number of loops of the mesh.
        atol: UV distance (per coordinate, UV units) above which two values for one loop conflict.

    Returns:
        ``(loop_uv, n_conflicts, n_unassigned)``: (L,2) float32 UVs per loop (0 for loops no triangle uses);
        the number of loops that received conflicting UVs; the number of loops no triangle uses.

    Raises:
        ValueError: mismatched shapes or indices out of range.
    """
    uv = np.asarray(uv)
    uv_idx = np.asarray(uv_idx)
    tri_loops = np.asarray(tri_loops)
    if uv.ndim != 2 or uv.shape[1] != 2:
        raise ValueError(f"uv must be (M,2), got {uv.shape}")
    _check_index_array("uv_idx", uv_idx, uv.shape[0])
    _check_index_array("tri_loops", tri_loops, n_loops)
    if uv_idx.shape != tri_loops.shape:
        raise ValueError(f"uv_idx {uv_idx.shape} and tri_loops {tri_loops.shape} differ in shape")
    corner_uv = uv[uv_idx.reshape(-1)].astype(np.float32)  # (3F,2)
    loops = tri_loops.reshape(-1).astype(np.int64)  # (3F,)
    order = np.argsort(loops, kind="stable")
    loops_sorted = loops[order]
    uv_sorted = corner_uv[order]
    starts = np.flatnonzero(np.r_[True, loops_sorted[1:] != loops_sorted[:-1]])  # first corner of each loop
    group = np.cumsum(np.r_[True, loops_sorted[1:] != loops_sorted[:-1]]) - 1  # group id per sorted corner
    first_uv = uv_sorted[starts]  # (G,2)
    differs = np.abs(uv_sorted - first_uv[group]).max(axis=1) > atol
    n_conflicts = int(np.unique(group[differs]).size)
    loop_uv = np.zeros((n_loops, 2), dtype=np.float32)
    loop_uv[loops_sorted[starts]] = first_uv
    n_unassigned = int(n_loops - starts.size)
    return loop_uv, n_conflicts, n_unassigned


def top_down_to_bottom_up(image: np.ndarray) -> np.ndarray:
    """Image rows top-first (the wire, PNG files) → rows bottom-first (Blender's ``Image.pixels`` and preview icons);
    ``image`` is (H, W, ...), the result a view. The add-on's ONE row flip (with :func:`bottom_up_to_top_down`)."""
    return np.asarray(image)[::-1]


def bottom_up_to_top_down(image: np.ndarray) -> np.ndarray:
    """Rows bottom-first (Blender) → rows top-first; inverse of :func:`top_down_to_bottom_up`."""
    return np.asarray(image)[::-1]


def texture_to_pixels(texture: np.ndarray) -> np.ndarray:
    """Wire texture -> Blender ``Image.pixels`` buffer.

    Args:
        texture: (H,W,C) uint8 in [0, 255] or float16 in [0, 1] (clipped), C in {1, 3, 4}; row 0 = TOP.

    Returns:
        (H*W*4,) float32 RGBA in [0, 1], row 0 = BOTTOM (Blender's order); grey is copied to RGB, alpha is 1
        when the texture has none.

    Raises:
        ValueError: wrong rank, channel count or dtype.
    """
    texture = np.asarray(texture)
    if texture.ndim != 3 or texture.shape[2] not in (1, 3, 4):
        raise ValueError(f"texture must be (H,W,C) with C in 1,3,4, got {texture.shape}")
    if texture.dtype == np.uint8:
        rgba_src = texture.astype(np.float32) / 255.0
    elif texture.dtype == np.float16:
        rgba_src = np.clip(texture.astype(np.float32), 0.0, 1.0)
    else:
        raise ValueError(f"texture dtype must be uint8 or float16, got {texture.dtype}")
    h, w, c = texture.shape
    rgba = np.ones((h, w, 4), dtype=np.float32)
    if c == 1:
        rgba[..., :3] = rgba_src
    else:
        rgba[..., :c] = rgba_src
    return np.ascontiguousarray(top_down_to_bottom_up(rgba)).reshape(-1)


def pixels_to_texture(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Blender ``Image.pixels`` buffer -> (H,W,4) uint8 image with row 0 = TOP (the inverse of
    :func:`texture_to_pixels` up to 8-bit rounding).

    Raises:
        ValueError: the buffer size is not ``width * height * 4``.
    """
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.size != width * height * 4:
        raise ValueError(f"pixels has {pixels.size} values, expected {width}*{height}*4")
    img = bottom_up_to_top_down(pixels.reshape(height, width, 4))
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _check_index_array(name: str, idx: np.ndarray, n: int) -> None:
    if idx.ndim != 2 or idx.shape[1] != 3:
        raise ValueError(f"{name} must be (F,3), got {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{name} must be integer, got {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"{name} has indices outside [0, {n}): min {idx.min()}, max {idx.max()}")


def srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
    """sRGB-encoded values -> scene-linear values (IEC 61966-2-1 transfer function), both float in [0, 1]; the
    inverse of :func:`linear_to_srgb`.

    Args:
        srgb: float array of any shape; values are clipped to [0, 1] first.

    Returns:
        float32 array of the same shape.
    """
    x = np.clip(np.asarray(srgb, dtype=np.float32), 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """Scene-linear values -> sRGB-encoded values (IEC 61966-2-1 transfer function), both float in [0, 1].

    Args:
        linear: float array of any shape; values are clipped to [0, 1] first.

    Returns:
        float32 array of the same shape.
    """
    x = np.clip(np.asarray(linear, dtype=np.float32), 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055).astype(np.float32)
