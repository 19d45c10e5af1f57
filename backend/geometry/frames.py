"""Every change of axes and of image-row order in the backend, as named pairs.

The backend's frame is Blender's world frame: right-handed, Z up, metres. Other frames meet it only here:

Axes (positions (N, 3), same units on both sides):

- glTF / OBJ files are Y up: :func:`blender_to_gltf` / :func:`gltf_to_blender`, (x, y, z)_blender ↔ (x, z, −y)_gltf,
  as Blender's glTF exporter writes "+Y up".
- Michelangelo's model frame is its training data's glTF frame: :func:`blender_to_michelangelo` /
  :func:`michelangelo_to_blender`.
- Point-E's model frame is Blender's (Z up, front −Y; its training renders were made in Blender):
  :func:`point_e_to_blender` / :func:`blender_to_point_e` are copies, kept so the fact has one home.
- Shap-E's frame is Blender's own (Z up, front toward −Y, units = metres for generated shapes):
  :func:`shap_e_to_blender` / :func:`blender_to_shap_e` are identities that name the fact (sources in their docs).
- LION's released models (ShapeNet, PointFlow's clouds) are Y up: :func:`blender_to_lion_shapenet` /
  :func:`lion_shapenet_to_blender` (the glTF rule, as Michelangelo's ShapeNet-derived frame). LION models trained
  here (``train lion_vae``) keep Blender's axes.
- Latent-NeRF's normalised frame differs from the world frame by a similarity only (no axis change): see
  :mod:`backend.latent_nerf.sketch`.

Image rows:

- Rows top-first: PNG files, the wire (``image``, ``texture``), images the UNet sees.
- Rows bottom-first: the rasterizer's output (row 0 at NDC y = −1), UV-space textures (row 0 ↔ v ≈ 0), Blender's
  ``Image.pixels``. :func:`bottom_up_to_top_down` / :func:`top_down_to_bottom_up` convert.

``tests/test_frames.py`` checks that no other backend module swaps axes or flips rows.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

ArrayLike = TypeVar("ArrayLike", np.ndarray, torch.Tensor)


def blender_to_gltf(v: np.ndarray) -> np.ndarray:
    """Z-up Blender coordinates (N, 3) → Y-up glTF coordinates: (x, y, z) ↦ (x, z, −y)."""
    return np.stack([v[:, 0], v[:, 2], -v[:, 1]], axis=1)


def gltf_to_blender(v: np.ndarray) -> np.ndarray:
    """Y-up glTF coordinates (N, 3) → Z-up Blender coordinates: (x, y, z) ↦ (x, −z, y)."""
    return np.stack([v[:, 0], -v[:, 2], v[:, 1]], axis=1)


def blender_to_michelangelo(v: np.ndarray) -> np.ndarray:
    """Blender world (Z up) → Michelangelo's model frame (Y up, its training data's glTF frame); (N, 3) → (N, 3)."""
    return blender_to_gltf(v)


def michelangelo_to_blender(v: np.ndarray) -> np.ndarray:
    """Michelangelo's model frame (Y up) → Blender world (Z up); inverse of :func:`blender_to_michelangelo`."""
    return gltf_to_blender(v)


def shap_e_to_blender(v: np.ndarray) -> np.ndarray:
    """Shap-E's frame → Blender world; (N, 3) → (N, 3), a copy with the same axes (the frames are the same).

    The fact: Shap-E's training data are Blender scenes. Its rendering script (openai/shap-e,
    ``shap_e/rendering/blender/blender_script.py``) imports every object with Blender's importers (glTF/OBJ → Blender's
    Z-up frame), scales it to a largest bounding-box side of 1, centres it on the origin, and renders it with
    cameras orbiting the Z axis; the latents encode those scenes' coordinates as they are. Objaverse's glTF objects
    face glTF +Z, which Blender's importer turns into −Y: Blender's front. diffusers agrees: the first of its pan
    cameras (``diffusers.pipelines.shap_e.camera.create_pan_cameras``, angle 0) stands at −Y above the object, looking
    toward +Y, image up ≈ +Z — the view a Shap-E GIF starts with. So Shap-E's STF field and meshes are Z up, front
    toward −Y, in the cube [−1, 1]³, shapes about 1 unit across (here: metres).
    """
    return np.array(v, dtype=np.float32 if np.asarray(v).dtype == np.float32 else np.float64, copy=True)


def blender_to_shap_e(v: np.ndarray) -> np.ndarray:
    """Blender world → Shap-E's frame; inverse of :func:`shap_e_to_blender` (the same axes, a copy)."""
    return np.array(v, dtype=np.float32 if np.asarray(v).dtype == np.float32 else np.float64, copy=True)


def bottom_up_to_top_down(image: ArrayLike, row_dim: int) -> ArrayLike:
    """Rows bottom-first (rasterizer output: row 0 at NDC y = −1; UV textures: row 0 ↔ v ≈ 0; Blender's
    ``Image.pixels``) → rows top-first (PNG, the wire, images fed to the UNet). ``row_dim``: the rows' axis."""
    return image.flip(row_dim) if isinstance(image, torch.Tensor) else np.flip(image, axis=row_dim)


def top_down_to_bottom_up(image: ArrayLike, row_dim: int) -> ArrayLike:
    """Rows top-first → rows bottom-first; inverse of :func:`bottom_up_to_top_down` (a numpy result is a view)."""
    return image.flip(row_dim) if isinstance(image, torch.Tensor) else np.flip(image, axis=row_dim)


def point_e_to_blender(v: np.ndarray) -> np.ndarray:
    """Point-E's model frame → Blender world; (N, 3) → (N, 3) float32 copy, same units (1 model unit = 1 m).

    Point-E's frame IS Blender's: Z up, front toward −Y. Sources: its training renders come from a Blender script
    (public ``point_e/evals/scripts/blender_script.py``: cameras circle the Z axis, ``pan_camera(axis="Z")``) and its
    plots rotate clouds about Z (``point_e/util/plotting.py``); the public example clouds agree (``pc_cube_stack.npz``:
    the largest cube at the lowest z; ``pc_corgi.npz``: the body along Y, the head and snout at −Y and high z, so the
    dog faces −Y). Shapes fit in about [−0.5, 0.5]³ (the SDF grid is the cube of side 1.02).
    """
    return np.array(v, dtype=np.float32, copy=True)


def blender_to_point_e(v: np.ndarray) -> np.ndarray:
    """Blender world → Point-E's model frame; inverse of :func:`point_e_to_blender` (the same axes)."""
    return np.array(v, dtype=np.float32, copy=True)


def lion_shapenet_to_blender(v: np.ndarray) -> np.ndarray:
    """The frame of LION's released models → Blender world; (N, 3) → (N, 3), same units.

    Their data are PointFlow's ShapeNetCore.v2 clouds (``ShapeNetCore.v2.PC15k``), Y up as ShapeNet's meshes; the
    same glTF rule as :func:`michelangelo_to_blender` ((x, y, z) ↦ (x, −z, y)). The up axis is ShapeNet's documented
    one; which horizontal direction is the front was not checked against the released files.
    """
    return gltf_to_blender(v)


def blender_to_lion_shapenet(v: np.ndarray) -> np.ndarray:
    """Blender world → the frame of LION's released models; inverse of :func:`lion_shapenet_to_blender`."""
    return blender_to_gltf(v)
