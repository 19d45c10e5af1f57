"""The CLIP features a conditioned LION is trained and sampled with (LION's text-driven generation and single-view
reconstruction, CLIP-Forge style; Sanghi et al., "CLIP-Forge", CVPR 2022).

Facts from the public code (github.com/nv-tlabs/LION): ``trainers/train_2prior.py`` conditions both priors on
``clip_model.encode_image(views).view(B, nimg, -1).mean(1).float()`` — several rendered views of each training shape,
embedded by CLIP's image tower and AVERAGED over the views, raw (not L2-normalised); ``demo.py`` samples with
``clip_model.encode_text(tokens).float()``, raw as well. CLIP's joint space makes the text embedding of a caption a
stand-in for the image embedding of its shape.

The public renders are ShapeNet's (occupancy networks' views); ours are made here, from the training meshes, by
:func:`render_views`: ``views`` cameras evenly spaced in azimuth (starting at :data:`FIRST_AZIMUTH` from Blender's
front), :data:`ELEVATION` above, around the mesh's bounding-box centre, looking at it with a vertical field of view of
:data:`FOVY`, at the distance where the mesh's bounding sphere fills the frame; grey Lambertian shading (albedo
:data:`ALBEDO`, ambient 0.1 + diffuse 0.9 from a light at the camera: :func:`backend.geometry.shading.shade`) on a
white background, at the CLIP's input size. The mesh is in Blender's world frame (Z up), the cameras' convention is
:mod:`backend.geometry.cameras`'.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..geometry.cameras import cameras_from_angles
from ..geometry.frames import bottom_up_to_top_down
from ..geometry.mesh import MeshError, TriMesh
from ..geometry.render import Rasterizer, make_rasterizer
from ..geometry.shading import rasterize_surface, shade
from ..guidance.clip import CLIPEmbedder

__all__ = ["ELEVATION", "FOVY", "FIRST_AZIMUTH", "ALBEDO", "MAX_VIEWS", "render_views", "shape_features",
           "text_features", "image_features"]

ELEVATION = 20.0
"""Camera elevation of every view, degrees above the mesh's centre."""
FOVY = 40.0
"""Vertical field of view, degrees."""
FIRST_AZIMUTH = 45.0
"""Azimuth of the first view, degrees (0 = Blender's front, camera on −Y; +90 = camera on +X); the others follow
every 360 / views degrees."""
ALBEDO = 0.7
"""Grey albedo of the renders (display value)."""
MAX_VIEWS = 64
"""Most views per shape."""


def render_views(mesh: TriMesh, views: int, size: int, device: torch.device | str = "cpu",
                 rasterizer: Rasterizer | None = None) -> torch.Tensor:
    """Grey shaded renders of a mesh on white, around its centre (see the module docstring).

    Args:
        mesh: the shape, Blender's world frame (any unit: it is framed by its bounding sphere).
        views: number of views in 1..:data:`MAX_VIEWS`.
        size: side of the square images, pixels (the CLIP's ``image_size``).
        device: where to render; rasterizer: reuse one (default :func:`backend.geometry.render.make_rasterizer`).

    Returns:
        (views, 3, size, size) float32 display RGB in [0, 1], row 0 = top.

    Raises:
        ValueError: views or size out of range. MeshError: a mesh with no extent (all vertices at one point).
    """
    if not isinstance(views, int) or isinstance(views, bool) or not 1 <= views <= MAX_VIEWS:
        raise ValueError(f"views = {views!r} must be an integer in 1..{MAX_VIEWS}")
    if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= 2048:
        raise ValueError(f"size = {size!r} must be an integer in 8..2048")
    device = torch.device(device)
    v = mesh.v_pos.astype(np.float64)
    centre = (v.min(axis=0) + v.max(axis=0)) / 2
    radius = float(np.linalg.norm(v - centre, axis=1).max())
    if not math.isfinite(radius) or radius <= 0:
        raise MeshError("the mesh has no extent to render (all its vertices at one point)")
    v_pos = torch.from_numpy(((v - centre) / radius).astype(np.float32)).to(device)
    tri = torch.from_numpy(np.asarray(mesh.t_pos_idx, np.int64)).to(device)
    distance = 1.05 / math.sin(math.radians(FOVY / 2))
    azimuth = FIRST_AZIMUTH + torch.arange(views, dtype=torch.float32) * (360.0 / views)
    cameras = cameras_from_angles(torch.full((views,), ELEVATION), azimuth, distance, FOVY).to(device)
    surface = rasterize_surface(rasterizer or make_rasterizer(device), v_pos, tri, cameras.mvp, size)
    albedo = torch.full_like(surface["points"], ALBEDO)
    colour = shade(albedo, surface["normals"], surface["points"], cameras.camera_positions, "lambertian")
    mask = surface["mask"]
    image = colour * mask + (1.0 - mask)  # white background
    return bottom_up_to_top_down(image, 1).permute(0, 3, 1, 2).clamp(0.0, 1.0).contiguous()


@torch.no_grad()
def shape_features(embedder: CLIPEmbedder, meshes: Sequence[TriMesh], views: int,
                   rasterizer: Rasterizer | None = None) -> torch.Tensor:
    """Each mesh's conditioning feature as LION is trained with: the raw CLIP image embeddings of ``views`` renders
    (:func:`render_views` at ``embedder.image_size``) averaged over the views.

    Returns:
        (len(meshes), D) float32 on the CPU.

    Raises:
        ValueError: no meshes, views out of range. MeshError: a mesh that cannot be rendered.
    """
    if not meshes:
        raise ValueError("meshes is empty: need at least one mesh")
    device = _device_of(embedder)
    rasterizer = rasterizer or make_rasterizer(device)
    out = []
    for mesh in meshes:
        images = render_views(mesh, views, int(embedder.image_size), device, rasterizer)
        out.append(embedder.encode_images(images, normalize=False).float().mean(0).cpu())
    return torch.stack(out)


@torch.no_grad()
def text_features(embedder: CLIPEmbedder, prompts: Sequence[str]) -> torch.Tensor:
    """Raw CLIP text embeddings (public ``demo.py``: ``encode_text(tokens).float()``): N prompts → (N, D) float32.

    Raises:
        ValueError: no prompt or a blank one (named by its index).
    """
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"prompt {i} is empty: LION's text conditioning needs a description")
    return embedder.encode_texts(list(prompts), normalize=False).float()


@torch.no_grad()
def image_features(embedder: CLIPEmbedder, image: np.ndarray) -> torch.Tensor:
    """The raw CLIP image embedding of one picture (LION's single-view reconstruction: the image tower's embedding
    stands in for the view-averaged one of training).

    Args:
        image: (H, W, 3|4) uint8, row 0 = top; RGBA is composited on white (the renders' background).
    Returns:
        (1, D) float32.
    Raises:
        ValueError: not an (H, W, 3|4) uint8 array.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        shape = getattr(image, "shape", None)
        raise ValueError(f"image must be an (H, W, 3|4) uint8 array, got {shape} {getattr(image, 'dtype', '')}")
    x = torch.from_numpy(np.ascontiguousarray(image)).float() / 255.0
    if x.shape[2] == 4:
        alpha = x[..., 3:]
        x = x[..., :3] * alpha + (1.0 - alpha)
    return embedder.encode_images(x.permute(2, 0, 1)[None].to(_device_of(embedder)), normalize=False).float()


def _device_of(embedder: CLIPEmbedder) -> torch.device:
    device = getattr(embedder, "device", None)
    return torch.device(device) if device is not None else torch.device("cpu")
