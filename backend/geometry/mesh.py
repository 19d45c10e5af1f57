"""Triangle meshes: validation, normalisation, UV unwrapping (xatlas), file I/O (trimesh).

Frame: Blender world everywhere (right-handed, Z up, metres). This module is the ONE place where axes change: glTF
files are Y up by specification, so :func:`save_glb` / :func:`load_mesh` convert between Z-up and Y-up
(x, y, z)_blender ↔ (x, z, −y)_gltf, exactly as Blender's glTF exporter does with "+Y up".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .frames import blender_to_gltf, gltf_to_blender


class MeshError(ValueError):
    """The input mesh cannot be used (empty, non-finite, bad indices, degenerate); the message says why."""


@dataclass
class TriMesh:
    """A triangle mesh with optional per-corner UVs.

    Attributes:
        v_pos: (N, 3) float32 vertex positions, metres, Blender world frame.
        t_pos_idx: (F, 3) int32 vertex indices per triangle, counter-clockwise seen from outside.
        uv: (M, 2) float32 texture coordinates, (0, 0) = bottom-left of the texture image, or None.
        uv_idx: (F, 3) int32 indices into ``uv`` per triangle corner, or None.
    """

    v_pos: np.ndarray
    t_pos_idx: np.ndarray
    uv: np.ndarray | None = None
    uv_idx: np.ndarray | None = None

    @property
    def has_uv(self) -> bool:
        return self.uv is not None and self.uv_idx is not None


def validate_mesh(mesh: TriMesh, name: str = "mesh", max_faces: int = 5_000_000) -> TriMesh:
    """Check a mesh is usable and return it with canonical dtypes (float32 / int32, C-contiguous).

    Raises:
        MeshError: no vertices/faces, wrong shapes, NaN/Inf positions, indices out of range, more than ``max_faces``
            triangles, every triangle of zero area, or a zero-size bounding box.
    """
    v_pos = np.asarray(mesh.v_pos)
    tri = np.asarray(mesh.t_pos_idx)
    if v_pos.ndim != 2 or v_pos.shape[1] != 3 or len(v_pos) == 0:
        raise MeshError(f"{name} has no vertices (v_pos shape {v_pos.shape}, expected (N, 3) with N >= 1)")
    if tri.ndim != 2 or tri.shape[1] != 3 or len(tri) == 0:
        raise MeshError(f"{name} has no triangles (t_pos_idx shape {tri.shape}, expected (F, 3) with F >= 1)")
    if len(tri) > max_faces:
        raise MeshError(f"{name} has {len(tri)} triangles; the limit is {max_faces} (decimate it first)")
    bad = ~np.isfinite(v_pos).all(axis=1)
    if bad.any():
        raise MeshError(f"{name} has {int(bad.sum())} vertices with NaN/Inf coordinates (first: vertex {int(np.argmax(bad))})")
    if tri.min() < 0 or tri.max() >= len(v_pos):
        raise MeshError(f"{name} has face indices outside [0, {len(v_pos)}): min {int(tri.min())}, max {int(tri.max())}")
    v_pos = np.ascontiguousarray(v_pos, dtype=np.float32)
    tri = np.ascontiguousarray(tri, dtype=np.int32)
    extent = np.ptp(v_pos[np.unique(tri)], axis=0)
    if float(extent.max()) <= 0.0:
        raise MeshError(f"{name} has zero size (all used vertices coincide)")
    e1 = v_pos[tri[:, 1]] - v_pos[tri[:, 0]]
    e2 = v_pos[tri[:, 2]] - v_pos[tri[:, 0]]
    area = 0.5 * np.linalg.norm(np.cross(e1, e2), axis=1)
    if not (area > 1e-12 * float(extent.max()) ** 2).any():
        raise MeshError(f"{name} has only zero-area triangles")
    uv = uv_idx = None
    if mesh.uv is not None or mesh.uv_idx is not None:
        if mesh.uv is None or mesh.uv_idx is None:
            raise MeshError(f"{name}: uv and uv_idx must be given together")
        uv = np.ascontiguousarray(mesh.uv, dtype=np.float32)
        uv_idx = np.ascontiguousarray(mesh.uv_idx, dtype=np.int32)
        if uv.ndim != 2 or uv.shape[1] != 2 or uv_idx.shape != tri.shape:
            raise MeshError(f"{name}: uv must be (M, 2) and uv_idx {tri.shape}, got {uv.shape} and {uv_idx.shape}")
        if not np.isfinite(uv).all():
            raise MeshError(f"{name} has NaN/Inf texture coordinates")
        if uv_idx.min() < 0 or uv_idx.max() >= len(uv):
            raise MeshError(f"{name} has uv indices outside [0, {len(uv)})")
    return TriMesh(v_pos, tri, uv, uv_idx)


def normalize_vertices(v_pos: np.ndarray, radius: float = 0.6) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre on the bounding-box centre and scale so the farthest vertex is ``radius`` from the origin.

    Returns:
        ``(v_norm (N, 3) float32, center (3,) float32, scale float)`` with ``v_norm = (v_pos − center) · scale``;
        the inverse is ``v_pos = v_norm / scale + center``.
    """
    center = ((v_pos.min(axis=0) + v_pos.max(axis=0)) * 0.5).astype(np.float32)
    dist = float(np.linalg.norm(v_pos - center, axis=1).max())
    if dist <= 0:
        raise MeshError("cannot normalise a mesh of zero size")
    scale = radius / dist
    return ((v_pos - center) * scale).astype(np.float32), center, scale


def unwrap_uv(v_pos: np.ndarray, t_pos_idx: np.ndarray, padding: int = 4, resolution: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """UV-unwrap a triangle mesh with xatlas, keeping its vertices and faces.

    Args:
        v_pos: (N, 3) float32; t_pos_idx: (F, 3) int32.
        padding: texels between charts at ``resolution`` (so texture filtering and VAE decoding do not bleed).

    Returns:
        ``uv`` (M, 2) float32 in [0, 1] and ``uv_idx`` (F, 3) int32: corner k of face f has texture coordinate
        ``uv[uv_idx[f, k]]``. Faces keep their order; vertices are split only in UV space.
    """
    import xatlas

    # xatlas skips faces below an absolute area epsilon (FLT_EPSILON) and leaves their UVs at (0, 0): small triangles
    # of a mesh in a unit frame (marching-cubes slivers) fall below it. Layouts do not depend on scale, so unwrap a
    # copy scaled to a bounding-box diagonal of 1000.
    diag = float(np.linalg.norm(np.ptp(v_pos[np.asarray(t_pos_idx).reshape(-1)], axis=0)))
    if not np.isfinite(diag) or diag <= 0:
        raise MeshError(f"cannot unwrap a mesh of size {diag}")
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(v_pos * (1000.0 / diag), dtype=np.float32),
                   np.ascontiguousarray(t_pos_idx, dtype=np.uint32))
    pack = xatlas.PackOptions()
    pack.padding = padding
    pack.resolution = resolution
    pack.bilinear = True
    atlas.generate(pack_options=pack)
    _vmapping, indices, uvs = atlas[0]
    if len(indices) != len(t_pos_idx):
        raise MeshError(f"xatlas returned {len(indices)} faces for {len(t_pos_idx)} (degenerate input?)")
    return np.ascontiguousarray(uvs, dtype=np.float32), np.ascontiguousarray(indices, dtype=np.int32)


def split_by_uv(mesh: TriMesh) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-vertex UV layout for formats that need one UV per vertex (glTF): split vertices on UV seams.

    Returns:
        ``(v_pos (K, 3), uv (K, 2), faces (F, 3) int32)`` where K = number of distinct (vertex, uv) corners.
    """
    # One int64 key per corner (a 1-D unique is ~20x faster than np.unique(axis=0) on row pairs).
    key = mesh.t_pos_idx.reshape(-1).astype(np.int64) * len(mesh.uv) + mesh.uv_idx.reshape(-1)
    unique, inverse = np.unique(key, return_inverse=True)
    v_idx, uv_idx = np.divmod(unique, len(mesh.uv))
    return mesh.v_pos[v_idx], mesh.uv[uv_idx], inverse.reshape(-1, 3).astype(np.int32)


def _rgba8(colors: np.ndarray, n: int, what: str) -> np.ndarray:
    """(n, 3|4) float linear colours in [0, 1] → (n, 4) uint8, rounded (glTF ``COLOR_0`` is linear; alpha 255 when
    absent). Raises ValueError naming ``what`` when the shape is not (n, 3|4)."""
    colors = np.asarray(colors, dtype=np.float32)
    if colors.ndim != 2 or colors.shape[0] != n or colors.shape[1] not in (3, 4):
        raise ValueError(f"vertex colours of {what} must be ({n}, 3|4), got {colors.shape}")
    rgba = np.full((n, 4), 255, dtype=np.uint8)
    rgba[:, :colors.shape[1]] = np.rint(np.clip(colors, 0.0, 1.0) * 255.0).astype(np.uint8)
    return rgba


def save_glb(path: str | Path, mesh: TriMesh | Sequence[TriMesh], texture: np.ndarray | None = None,
             names: Sequence[str] | None = None, offsets: np.ndarray | None = None,
             v_colors: Sequence[np.ndarray | None] | None = None,
             point_clouds: Sequence[tuple[np.ndarray, np.ndarray | None]] = (),
             point_offsets: np.ndarray | None = None, normal_map: np.ndarray | None = None) -> Path:
    """Write a binary glTF: one mesh, or several meshes and point clouds as separate nodes of one scene.

    Args:
        mesh: a Blender-frame :class:`TriMesh`, or a sequence of them (converted to glTF's Y-up here); may be empty
            when ``point_clouds`` is not.
        texture: (H, W, 3|4) uint8, row 0 = top of the image (PNG convention); base colour of the FIRST mesh, which
            must have UVs (the protocol's rule: ``texture`` belongs to group ``mesh``).
        names: node/mesh names, one per mesh (default ``mesh``, ``mesh_1``, … as the protocol's groups).
        offsets: (K, 3) float translations of the K nodes in the Blender frame, metres (e.g. to lay samples out side
            by side); the vertex data stays as given. Default: no translation.
        v_colors: per mesh, (N, 3|4) float linear RGB(A) in [0, 1] or None; written as the glTF vertex colour
            ``COLOR_0`` (linear, as glTF specifies; 8-bit). A textured first mesh keeps its texture instead.
        point_clouds: ``(points (N, 3) float Blender frame, colors (N, 3|4) float linear in [0, 1] or None)`` each,
            written as nodes ``points``, ``points_1``, … whose mesh is one POINTS primitive (with ``COLOR_0``).
        point_offsets: (P, 3) translations of the point-cloud nodes, Blender frame, metres (default none).
        normal_map: (H, W, 3) uint8 tangent-space normal map of the FIRST mesh (row 0 = top, OpenGL convention =
            glTF's), written as its material's ``normalTexture``; needs UVs. A normal map without a texture gets a
            white base colour.

    Raises:
        ValueError: neither a mesh nor a point cloud, ``names``/``offsets``/``v_colors``/``point_offsets`` of the
            wrong length, or colours not (N, 3|4).
    """
    import trimesh
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meshes = [mesh] if isinstance(mesh, TriMesh) else list(mesh)
    clouds = list(point_clouds)
    if not meshes and not clouds:
        raise ValueError("save_glb needs at least one mesh or point cloud")
    names = list(names) if names is not None else [f"mesh_{i}" if i else "mesh" for i in range(len(meshes))]
    offsets = np.zeros((len(meshes), 3)) if offsets is None else np.asarray(offsets, dtype=np.float64)
    v_colors = list(v_colors) if v_colors is not None else [None] * len(meshes)
    if len(names) != len(meshes) or offsets.shape != (len(meshes), 3) or len(v_colors) != len(meshes):
        raise ValueError(f"save_glb got {len(meshes)} meshes, {len(names)} names, {len(v_colors)} colour arrays and "
                         f"offsets of shape {offsets.shape}")
    point_offsets = np.zeros((len(clouds), 3)) if point_offsets is None else np.asarray(point_offsets, np.float64)
    if point_offsets.shape != (len(clouds), 3):
        raise ValueError(f"save_glb got {len(clouds)} point clouds and point offsets of shape {point_offsets.shape}")
    parts = []
    for i, (m, colors) in enumerate(zip(meshes, v_colors)):
        if i == 0 and (texture is not None or normal_map is not None) and m.has_uv:
            v, uv, faces = split_by_uv(m)
            base = Image.fromarray(texture) if texture is not None else None
            normal = Image.fromarray(np.ascontiguousarray(normal_map, dtype=np.uint8)) \
                if normal_map is not None else None
            material = trimesh.visual.material.PBRMaterial(baseColorTexture=base, normalTexture=normal,
                                                           metallicFactor=0.0, roughnessFactor=0.8)
            visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
            parts.append(trimesh.Trimesh(blender_to_gltf(v), faces, visual=visual, process=False))
        else:
            rgba = _rgba8(colors, len(m.v_pos), f"mesh {i}") if colors is not None else None
            parts.append(trimesh.Trimesh(blender_to_gltf(m.v_pos), m.t_pos_idx, vertex_colors=rgba, process=False))
    for i, (points, colors) in enumerate(clouds):
        rgba = _rgba8(colors, len(points), f"point cloud {i}") if colors is not None else None
        parts.append(trimesh.PointCloud(blender_to_gltf(np.asarray(points, dtype=np.float64)), colors=rgba))
    names = names + ["points"] + [f"points_{i}" for i in range(1, len(clouds))] if clouds else names
    all_offsets = np.concatenate([offsets, point_offsets]) if clouds else offsets
    scene = trimesh.Scene()  # always named nodes: one sample is `mesh` too, not trimesh's `geometry_0`
    for part, name, offset in zip(parts, names, blender_to_gltf(all_offsets)):
        scene.add_geometry(part, node_name=name, geom_name=name,
                           transform=trimesh.transformations.translation_matrix(offset))
    scene.export(path, file_type="glb")
    return path


def side_by_side(meshes: Sequence[TriMesh | np.ndarray], gap: float = 0.2) -> np.ndarray:
    """Translations that lay meshes (or point clouds, (N, 3) arrays) out in a row along +X (Blender frame), first
    one in place.

    Each next item's bounding box starts ``gap`` × (the widest item's X extent) after the previous one's; Y and Z
    are unchanged. Returns (K, 3) float64 offsets (metres) for :func:`save_glb`.
    """
    points = [m.v_pos if isinstance(m, TriMesh) else np.asarray(m) for m in meshes]
    lo = np.array([p[:, 0].min() for p in points], dtype=np.float64)
    hi = np.array([p[:, 0].max() for p in points], dtype=np.float64)
    spacing = gap * float((hi - lo).max()) if len(points) else 0.0
    offsets = np.zeros((len(points), 3))
    for i in range(1, len(points)):
        offsets[i, 0] = (hi[i - 1] + offsets[i - 1, 0]) + spacing - lo[i]
    return offsets


def load_mesh(path: str | Path, up_axis: str = "auto") -> TriMesh:
    """Read a mesh file (OBJ, PLY, STL, GLB/GLTF, OFF…) with trimesh into the Blender frame.

    Args:
        up_axis: ``"Y"`` (convert from Y-up: glTF by spec, OBJ as Blender exports it), ``"Z"`` (already Z-up) or
            ``"auto"`` (Y for .glb/.gltf/.obj, Z otherwise).

    Raises:
        MeshError: unreadable file, no triangles, or invalid geometry.
    """
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise MeshError(f"mesh file {str(path)!r} does not exist")
    try:
        tm = trimesh.load(path, force="mesh", process=False)
    except Exception as err:  # trimesh raises many types for malformed files
        raise MeshError(f"could not read {str(path)!r}: {err}") from err
    if not isinstance(tm, trimesh.Trimesh) or len(tm.faces) == 0:
        raise MeshError(f"{str(path)!r} contains no triangles")
    if up_axis == "auto":
        up_axis = "Y" if path.suffix.lower() in (".glb", ".gltf", ".obj") else "Z"
    if up_axis not in ("Y", "Z"):
        raise MeshError(f"up_axis must be 'Y', 'Z' or 'auto', got {up_axis!r}")
    v = np.asarray(tm.vertices, dtype=np.float64)
    v = gltf_to_blender(v) if up_axis == "Y" else v
    uv = getattr(tm.visual, "uv", None)
    faces = np.asarray(tm.faces, dtype=np.int32)
    mesh = TriMesh(v.astype(np.float32), faces)
    if uv is not None and len(uv) == len(v):
        mesh.uv, mesh.uv_idx = np.asarray(uv, dtype=np.float32), faces.copy()
    return validate_mesh(mesh, name=path.name)



def load_point_cloud(path: str | Path, up_axis: str = "auto") -> np.ndarray:
    """Read a point cloud file (PLY of vertices, XYZ, OBJ of ``v`` lines…) with trimesh into the Blender frame; a
    mesh file gives its vertices (a scan saved with faces is still its points).

    Args:
        up_axis: as :func:`load_mesh` (``"auto"``: Y for .glb/.gltf/.obj, Z otherwise).

    Returns:
        (N, 3) float32 positions, metres, Blender world frame. Colours in the file are not read.

    Raises:
        MeshError: a missing or unreadable file, or one without points.
    """
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise MeshError(f"point cloud file {str(path)!r} does not exist")
    try:
        loaded = trimesh.load(path, process=False)
    except Exception as err:  # trimesh raises many types for malformed files
        raise MeshError(f"could not read {str(path)!r}: {err}") from err
    geometries = loaded.dump() if isinstance(loaded, trimesh.Scene) else [loaded]
    parts = [np.asarray(g.vertices, dtype=np.float64).reshape(-1, 3) for g in geometries if hasattr(g, "vertices")]
    v = np.concatenate(parts) if parts else np.zeros((0, 3))
    if len(v) == 0:
        raise MeshError(f"{str(path)!r} contains no points")
    if up_axis == "auto":
        up_axis = "Y" if path.suffix.lower() in (".glb", ".gltf", ".obj") else "Z"
    if up_axis not in ("Y", "Z"):
        raise MeshError(f"up_axis must be 'Y', 'Z' or 'auto', got {up_axis!r}")
    v = gltf_to_blender(v) if up_axis == "Y" else v
    return np.ascontiguousarray(v, dtype=np.float32)