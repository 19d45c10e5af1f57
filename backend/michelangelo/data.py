"""Training data for the shape VAE and the denoiser: a folder of meshes → surface samples and labelled query points.

Michelangelo (Zhao et al., 2023, §3.1, §4.1) trains the shape VAE on

- ``surface``: points sampled on each mesh's surface with their normals, (N, 6) = xyz + normal (4096 points in the
  public configs, ``point_feats: 3``);
- ``geo_points``: query points with a binary occupancy label, the first half drawn uniformly in the volume, the
  second half near the surface; the occupancy loss weighs them separately (BCE volume + 0.1 · BCE near).

:class:`ShapeDataset` builds both from a plain folder of meshes:

- each mesh is read with :func:`backend.geometry.mesh.load_mesh` (OBJ, PLY, STL, GLB/GLTF, OFF) into Blender's
  frame, moved into the *model frame* (Y up, like the ShapeNet-style public data; the axis change is
  :func:`backend.geometry.frames.blender_to_michelangelo`) and normalised like the public data: bounding-box centre
  at the origin, largest half-extent :data:`MODEL_EXTENT` = 1.0 (the public example ``surface.npz`` spans exactly [-1, 1] on its long axis);
- surface points are sampled area-weighted (trimesh) with the normal of the face they lie on;
- volume points are uniform in ``[-VOLUME_BOUND, VOLUME_BOUND]³``; near-surface points are surface points plus
  isotropic Gaussian noise at two scales (half of them each);
- labels are ``|w| > 0.5`` with ``w`` the generalised winding number (libigl; Jacobson et al. 2013), which is robust
  to the open, multi-part meshes artists make (Suzanne's eyes, holes).

Samples are computed once per shape (a pool several times larger than one item needs, cached in memory) and each item
draws a random subset of the pool, so epochs see different points at no extra cost.

Optional conditioning data beside the meshes:

- captions: ``captions.json`` = ``{"chair.obj": "a wooden chair", "lamp.ply": ["a desk lamp", "a lamp"]}``, or a
  ``<stem>.txt`` file next to the mesh with one caption per non-empty line;
- images: ``<stem>.png``, ``<stem>.jpg`` or ``<stem>.jpeg`` next to the mesh (RGB or RGBA, any size ≥ 16 px).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..geometry.frames import blender_to_michelangelo
from ..geometry.mesh import MeshError, TriMesh, load_mesh, validate_mesh
from ..geometry.queries import signed_volume, winding_number
from .conditioner import load_image

log = logging.getLogger(__name__)

__all__ = ["MESH_SUFFIXES", "IMAGE_SUFFIXES", "MODEL_EXTENT", "VOLUME_BOUND", "NEAR_SIGMAS", "DatasetError",
           "ShapeSamples", "ShapeDataset", "to_model_frame", "sample_surface", "inside_mesh", "grid_points",
           "collate_shapes"]

MESH_SUFFIXES = (".obj", ".ply", ".stl", ".glb", ".gltf", ".off")
"""Mesh files :class:`ShapeDataset` picks up (case-insensitive)."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MODEL_EXTENT = 1.0
"""Largest half-extent of a normalised shape in the model frame (the public data spans [-1, 1] on its long axis)."""
VOLUME_BOUND = 1.05
"""Volume query points are uniform in [-VOLUME_BOUND, VOLUME_BOUND]³ (a margin around the normalised shape)."""
NEAR_SIGMAS = (0.01, 0.05)
"""Standard deviations (model-frame units) of the Gaussian offsets of near-surface query points: half at each."""


class DatasetError(ValueError):
    """The training folder or its side files (captions, images) cannot be used; the message names the path."""


def to_model_frame(v_pos: np.ndarray, extent: float = MODEL_EXTENT) -> tuple[np.ndarray, np.ndarray, float]:
    """Blender-frame vertices → Michelangelo's normalised model frame.

    The axis change is :func:`backend.geometry.frames.blender_to_michelangelo` ((x, y, z) ↦ (x, z, −y): Z up → Y up);
    then the bounding box is centred on the origin and scaled so its largest half-extent is ``extent``.

    Args:
        v_pos: (N, 3) float vertex positions, Blender world frame (Z up), any unit.
        extent: largest half-extent after normalisation (model-frame units).

    Returns:
        ``(v_model (N, 3) float32, center (3,) float64, scale float)`` with
        ``v_model = (blender_to_michelangelo(v_pos) − center) · scale``; the inverse is
        ``michelangelo_to_blender(v_model / scale + center)``.

    Raises:
        MeshError: empty, non-finite or zero-size input.
    """
    v = np.asarray(v_pos, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
        raise MeshError(f"expected (N, 3) vertices with N >= 1, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise MeshError("vertices contain NaN/Inf")
    v = blender_to_michelangelo(v)
    lo, hi = v.min(axis=0), v.max(axis=0)
    center = (lo + hi) * 0.5
    half = float((hi - lo).max()) * 0.5
    if half <= 0.0:
        raise MeshError("cannot normalise a mesh of zero size")
    scale = extent / half
    return ((v - center) * scale).astype(np.float32), center, scale


def sample_surface(v_pos: np.ndarray, t_pos_idx: np.ndarray, count: int,
                   rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Area-weighted random points on a triangle mesh with the unit normal of the face each lies on.

    Args:
        v_pos: (V, 3) float vertices (any frame; the result is in the same frame).
        t_pos_idx: (F, 3) int triangles, counter-clockwise seen from outside (normals point outward).
        count: number of points.
        rng: a numpy Generator, a seed, or None (fresh entropy).

    Returns:
        (count, 6) float32: xyz, then the unit face normal (zero-area faces are never picked).
    """
    import trimesh

    rng = np.random.default_rng(rng)
    mesh = trimesh.Trimesh(np.asarray(v_pos, dtype=np.float64), np.asarray(t_pos_idx, dtype=np.int64), process=False)
    points, face_index = trimesh.sample.sample_surface(mesh, int(count), seed=rng)
    normals = np.asarray(mesh.face_normals)[face_index]
    return np.concatenate([points, normals], axis=1).astype(np.float32)


def inside_mesh(v_pos: np.ndarray, t_pos_idx: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Occupancy labels: ``|w(p)| > 0.5`` with ``w`` the generalised winding number (libigl).

    The absolute value makes inside-out meshes (clockwise faces) label the same as outward ones.

    Args:
        v_pos: (V, 3) vertices; t_pos_idx: (F, 3) triangles; points: (N, 3) queries — all in one frame.

    Returns:
        (N,) bool, True inside.
    """
    return np.abs(winding_number(v_pos, t_pos_idx, points)) > 0.5


@dataclass
class ShapeSamples:
    """The precomputed sample pools of one shape, model frame (see the module docstring).

    Attributes:
        name: the mesh file name.
        v_pos: (V, 3) float32 normalised vertices; t_pos_idx: (F, 3) int32 triangles.
        surface: (S, 6) float32 surface points + unit outward face normals.
        volume_points: (P, 3) float32 uniform in [-VOLUME_BOUND, VOLUME_BOUND]³; volume_labels: (P,) bool inside.
        near_points: (Q, 3) float32 near the surface; near_labels: (Q,) bool inside.
    """

    name: str
    v_pos: np.ndarray
    t_pos_idx: np.ndarray
    surface: np.ndarray
    volume_points: np.ndarray
    volume_labels: np.ndarray
    near_points: np.ndarray
    near_labels: np.ndarray


def _read_captions(root: Path, files: list[Path]) -> list[list[str]]:
    names = {p.name for p in files}
    captions: list[list[str]] = [[] for _ in files]
    index = {p.name: i for i, p in enumerate(files)}
    path = root / "captions.json"
    if path.is_file():
        try:
            table = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DatasetError(f"could not read {str(path)!r}: {err}") from err
        if not isinstance(table, dict):
            raise DatasetError(f"{str(path)!r} must be a JSON object {{mesh file name: caption or [captions]}}, "
                               f"got {type(table).__name__}")
        for key, value in table.items():
            if key not in names:
                raise DatasetError(f"{str(path)!r} names {key!r}, which is not a mesh file in {str(root)!r}")
            values = [value] if isinstance(value, str) else value
            if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.strip() for v in values):
                raise DatasetError(f"{str(path)!r}: the caption of {key!r} must be a non-empty string or a list of "
                                   f"them, got {value!r}")
            captions[index[key]] = [v.strip() for v in values]
    for i, p in enumerate(files):
        txt = p.with_suffix(".txt")
        if txt.is_file() and not captions[i]:
            try:
                lines = [line.strip() for line in txt.read_text(encoding="utf-8").splitlines()]
            except (OSError, UnicodeDecodeError) as err:
                raise DatasetError(f"could not read caption file {str(txt)!r}: {err}") from err
            captions[i] = [line for line in lines if line]
            if not captions[i]:
                raise DatasetError(f"caption file {str(txt)!r} is empty")
    return captions


def _find_image(mesh_path: Path) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        for candidate in (mesh_path.with_suffix(suffix), mesh_path.with_suffix(suffix.upper())):
            if candidate.is_file():
                return candidate
    return None


class ShapeDataset(torch.utils.data.Dataset):
    """A folder of meshes (+ optional captions and images) as training items for the shape VAE and the denoiser.

    Each item is a dict:

    - ``surface``: (num_surface_points, 6) float32 tensor, xyz (model frame, in [-1, 1]³) + unit outward normals;
    - ``queries``: (num_volume_points + num_near_points, 3) float32 tensor, the volume points first, then the
      near-surface ones (the order the occupancy loss relies on);
    - ``labels``: (num_volume_points + num_near_points,) float32 tensor, 1.0 inside, 0.0 outside;
    - ``caption``: one of the shape's captions (picked at random) or None;
    - ``image``: (H, W, 3|4) uint8 numpy array, row 0 = top, or None;
    - ``name``: the mesh file name; ``index``: the item index.

    Args:
        root: the folder; mesh files directly inside it (not in sub-folders) are used, sorted by name.
        num_surface_points: surface points per item (the VAE encoder input; 4096 in the public configs).
        num_volume_points, num_near_points: labelled query points per item (1024 each in the public data loader).
        up_axis: up axis of the files, as :func:`backend.geometry.mesh.load_mesh` (``"auto"``: Y for glb/gltf/obj, else Z).
        extent: largest half-extent of each normalised shape (model frame).
        near_sigmas: the two noise scales of the near-surface points.
        pool_factor: pools hold this many times the per-item counts (items draw subsets without replacement).
        seed: seeds the pools and the internal generator used by ``__getitem__``.
        preload: compute every shape's pools now (errors in any mesh surface at construction); otherwise on first use.

    Raises:
        DatasetError: ``root`` missing or not a folder, no mesh files, unreadable captions, bad sizes.
        MeshError: a mesh cannot be read or is degenerate (with ``preload``; otherwise when first used); the message
            names the file.
    """

    def __init__(self, root: str | Path, num_surface_points: int = 4096, num_volume_points: int = 1024,
                 num_near_points: int = 1024, up_axis: str = "auto", extent: float = MODEL_EXTENT,
                 near_sigmas: tuple[float, float] = NEAR_SIGMAS, pool_factor: int = 4, seed: int = 0,
                 preload: bool = True):
        root = Path(root).expanduser()
        if not root.exists():
            raise DatasetError(f"training data folder {str(root)!r} does not exist")
        if not root.is_dir():
            raise DatasetError(f"training data path {str(root)!r} is not a folder")
        for name, value in (("num_surface_points", num_surface_points), ("num_volume_points", num_volume_points),
                            ("num_near_points", num_near_points), ("pool_factor", pool_factor)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DatasetError(f"{name} must be a positive integer, got {value!r}")
        if not (extent > 0 and len(near_sigmas) == 2 and all(s > 0 for s in near_sigmas)):
            raise DatasetError(f"extent and near_sigmas must be positive, got {extent!r} and {near_sigmas!r}")
        self.root = root
        self.files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in MESH_SUFFIXES)
        if not self.files:
            raise DatasetError(f"no mesh files ({', '.join(MESH_SUFFIXES)}) in {str(root)!r}")
        self.num_surface_points = num_surface_points
        self.num_volume_points = num_volume_points
        self.num_near_points = num_near_points
        self.up_axis = up_axis
        self.extent = float(extent)
        self.near_sigmas = (float(near_sigmas[0]), float(near_sigmas[1]))
        self.pool_factor = pool_factor
        self.seed = seed
        self.captions = _read_captions(root, self.files)
        self.image_paths = [_find_image(p) for p in self.files]
        self._samples: list[ShapeSamples | None] = [None] * len(self.files)
        self._images: dict[int, np.ndarray] = {}
        self.rng = np.random.default_rng(seed)
        if preload:
            for i in range(len(self.files)):
                self.shape(i)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def has_captions(self) -> bool:
        """True when every shape has at least one caption."""
        return all(self.captions)

    @property
    def has_images(self) -> bool:
        """True when every shape has an image."""
        return all(p is not None for p in self.image_paths)

    def shape(self, index: int) -> ShapeSamples:
        """The cached sample pools of shape ``index`` (computed on first call).

        Raises:
            MeshError: the mesh file cannot be read or is degenerate (message names the file).
        """
        cached = self._samples[index]
        if cached is not None:
            return cached
        path = self.files[index]
        mesh = load_mesh(path, self.up_axis)  # MeshError names the file
        try:
            v, _, _ = to_model_frame(mesh.v_pos, self.extent)
        except MeshError as err:
            raise MeshError(f"{path.name}: {err}") from err
        mesh = validate_mesh(TriMesh(v, mesh.t_pos_idx), name=path.name)
        rng = np.random.default_rng([self.seed, index])
        tri = mesh.t_pos_idx
        n_surface = self.num_surface_points * self.pool_factor
        n_volume = self.num_volume_points * self.pool_factor
        n_near = self.num_near_points * self.pool_factor
        surface = sample_surface(mesh.v_pos, tri, n_surface + n_near, rng)
        volume_points = rng.uniform(-VOLUME_BOUND, VOLUME_BOUND, size=(n_volume, 3)).astype(np.float32)
        near_base = surface[n_surface:, :3]
        sigma = np.where(np.arange(n_near) % 2 == 0, self.near_sigmas[0], self.near_sigmas[1])[:, None]
        near_points = (near_base + rng.normal(size=near_base.shape) * sigma).astype(np.float32)
        labels = inside_mesh(mesh.v_pos, tri, np.concatenate([volume_points, near_points]))
        volume_labels, near_labels = labels[:n_volume], labels[n_volume:]
        if not volume_labels.any() and not near_labels.any():
            raise MeshError(f"{path.name} encloses no volume (no query point is inside it: is it a flat or open "
                            f"sheet?)")
        # Inside-out meshes: flip the normals so that they point outward, as the labels (|w|) already assume.

        if signed_volume(mesh.v_pos, tri) < 0:
            surface[:, 3:] *= -1.0
        samples = ShapeSamples(name=path.name, v_pos=mesh.v_pos, t_pos_idx=tri, surface=surface[:n_surface],
                               volume_points=volume_points, volume_labels=volume_labels,
                               near_points=near_points, near_labels=near_labels)
        self._samples[index] = samples
        log.debug("%s: %d faces, inside fraction volume %.3f near %.3f", path.name, len(tri),
                  volume_labels.mean(), near_labels.mean())
        return samples

    def image(self, index: int) -> np.ndarray | None:
        """The shape's conditioning image, (H, W, 3|4) uint8, row 0 = top, or None (cached after the first read).

        Raises:
            ValueError: the image file is unreadable or smaller than 16 px (see ``conditioner.load_image``).
        """
        path = self.image_paths[index]
        if path is None:
            return None
        if index not in self._images:
            self._images[index] = load_image(path)
        return self._images[index]

    def sample(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """Item ``index`` with its random subsets drawn from ``rng`` (reproducible; see the class docstring)."""
        if not 0 <= index < len(self.files):
            raise IndexError(f"index {index} out of range for {len(self.files)} shapes")
        s = self.shape(index)
        surface = s.surface[rng.choice(len(s.surface), self.num_surface_points, replace=False)]
        vi = rng.choice(len(s.volume_points), self.num_volume_points, replace=False)
        ni = rng.choice(len(s.near_points), self.num_near_points, replace=False)
        queries = np.concatenate([s.volume_points[vi], s.near_points[ni]])
        labels = np.concatenate([s.volume_labels[vi], s.near_labels[ni]]).astype(np.float32)
        captions = self.captions[index]
        caption = captions[int(rng.integers(len(captions)))] if captions else None
        return {"surface": torch.from_numpy(surface), "queries": torch.from_numpy(queries),
                "labels": torch.from_numpy(labels), "caption": caption, "image": self.image(index),
                "name": s.name, "index": index}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.sample(index, self.rng)

    def occupancy_grid(self, index: int, resolution: int, bound: float = VOLUME_BOUND) -> np.ndarray:
        """Ground-truth occupancy of shape ``index`` on a regular grid (for IoU evaluation).

        Args:
            resolution: R, points per axis; bound: the grid spans [-bound, bound]³ of the model frame, end points
                included (the layout of :func:`backend.geometry.extract.sample_grid`).

        Returns:
            (R, R, R) bool, index order [x, y, z], True inside.
        """
        s = self.shape(index)
        return inside_mesh(s.v_pos, s.t_pos_idx, grid_points(resolution, bound)).reshape((resolution,) * 3)


def grid_points(resolution: int, bound: float) -> np.ndarray:
    """(R³, 3) float32 points of the regular grid over [-bound, bound]³, x slowest (``sample_grid``'s order)."""
    axis = np.linspace(-bound, bound, resolution, dtype=np.float32)
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)


def collate_shapes(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch :class:`ShapeDataset` items: tensors are stacked; ``caption``, ``image``, ``name`` become lists;
    ``index`` an int64 tensor. Usable as a ``DataLoader`` ``collate_fn``."""
    if not items:
        raise ValueError("cannot collate an empty list of items")
    return {"surface": torch.stack([it["surface"] for it in items]),
            "queries": torch.stack([it["queries"] for it in items]),
            "labels": torch.stack([it["labels"] for it in items]),
            "caption": [it["caption"] for it in items],
            "image": [it["image"] for it in items],
            "name": [it["name"] for it in items],
            "index": torch.tensor([it["index"] for it in items], dtype=torch.int64)}
