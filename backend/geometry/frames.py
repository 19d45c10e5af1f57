"""Every change of axes and of image-row order in the backend, as named pairs.

The backend's frame is Blender's world frame: right-handed, Z up, metres. Other frames meet it only here:

- glTF / OBJ files and Michelangelo's model frame are Y up: :func:`blender_to_gltf` / :func:`gltf_to_blender`.
"""

from __future__ import annotations

import numpy as np


def blender_to_gltf(v: np.ndarray) -> np.ndarray:
    """Z-up Blender coordinates (N, 3) → Y-up glTF coordinates: (x, y, z) ↦ (x, z, −y)."""
    return np.stack([v[:, 0], v[:, 2], -v[:, 1]], axis=1)


def gltf_to_blender(v: np.ndarray) -> np.ndarray:
    """Y-up glTF coordinates (N, 3) → Z-up Blender coordinates: (x, y, z) ↦ (x, −z, y)."""
    return np.stack([v[:, 0], -v[:, 2], v[:, 1]], axis=1)
