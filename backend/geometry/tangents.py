"""Tangent-space normal maps: tangent frames from UVs and the normals a normal map makes.

Convention: OpenGL's (Blender's Normal Map node, glTF ``normalTexture``): a texel stores the unit normal in the
surface's tangent frame (T, B, N) as ``rgb = (n + 1) / 2`` with red along the tangent T = ∂p/∂u, green along the
bitangent B = ∂p/∂v (+V = up in the image, "+Y green up") and blue along the geometric normal; the flat value is
(0.5, 0.5, 1.0). UVs are Blender's, (0, 0) = bottom-left of the texture.

Tangent frames (a MikkTSpace-like construction, not bit-exact MikkTSpace): per face, the tangent and bitangent that
map its UV triangle onto its 3D triangle (Lengyel, "Computing Tangent Space Basis Vectors for an Arbitrary Mesh",
2001); accumulated, area-weighted, on the face's UV corners (``uv_idx``: each UV chart keeps its own frames, so seams
do not average unrelated charts); per pixel the interpolated tangent is Gram-Schmidt-orthogonalised against the
interpolated normal and the bitangent is ``sign · N × T`` with the handedness sign of the UV mapping (mirrored
charts get −1), as MikkTSpace's shaders rebuild it.

Frame of positions and normals: the caller's (Blender world frame in the pipelines).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["FLAT_NORMAL", "uv_tangents", "perturb_normals", "normal_map_to_unit", "unit_to_normal_map"]

FLAT_NORMAL = (0.0, 0.0, 1.0)
"""The tangent-space normal of a flat normal map (unit vector along the geometric normal)."""


def uv_tangents(v_pos: torch.Tensor, t_pos_idx: torch.Tensor, uv: torch.Tensor,
                uv_idx: torch.Tensor) -> torch.Tensor:
    """Per-UV-vertex tangents with handedness.

    Args:
        v_pos: (V, 3) float positions; gradients flow to it.
        t_pos_idx: (F, 3) integer vertex indices.
        uv: (M, 2) float texture coordinates, (0, 0) = bottom-left.
        uv_idx: (F, 3) integer indices into ``uv`` per face corner.

    Returns:
        (M, 4) float: xyz = the area-weighted sum of the faces' ∂p/∂u (not normalised, not orthogonalised; the
        renderer does both per pixel), w = ±1 the handedness (sign of the summed ``(∂p/∂u × ∂p/∂v) · n_face``; +1
        where undefined). UV vertices no face uses get (1, 0, 0, 1).
    """
    tri = t_pos_idx.long()
    tuv = uv_idx.long()
    p0, p1, p2 = v_pos[tri[:, 0]], v_pos[tri[:, 1]], v_pos[tri[:, 2]]
    w0, w1, w2 = uv[tuv[:, 0]].to(v_pos), uv[tuv[:, 1]].to(v_pos), uv[tuv[:, 2]].to(v_pos)
    e1, e2 = p1 - p0, p2 - p0
    d1, d2 = w1 - w0, w2 - w0
    det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
    # ∂p/∂u, ∂p/∂v times det (the face's UV area ×2): area-weighted, and no division by a zero UV area.
    tangent = e1 * d2[:, 1:2] - e2 * d1[:, 1:2]
    bitangent = e2 * d1[:, 0:1] - e1 * d2[:, 0:1]
    sign_det = torch.where(det < 0, -1.0, 1.0).to(v_pos)[:, None]
    tangent, bitangent = tangent * sign_det, bitangent * sign_det  # make the weight |det|, keep the direction
    face_n = torch.linalg.cross(e1, e2)
    handed = (torch.linalg.cross(tangent, bitangent) * face_n).sum(-1, keepdim=True)
    num_uv = uv.shape[0]
    acc = torch.zeros((num_uv, 3), dtype=v_pos.dtype, device=v_pos.device)
    hand = torch.zeros((num_uv, 1), dtype=v_pos.dtype, device=v_pos.device)
    for k in range(3):
        acc = acc.index_add(0, tuv[:, k], tangent)
        hand = hand.index_add(0, tuv[:, k], handed)
    unused = acc.norm(dim=-1, keepdim=True) == 0
    acc = torch.where(unused, torch.tensor([1.0, 0.0, 0.0], dtype=v_pos.dtype, device=v_pos.device), acc)
    return torch.cat([acc, torch.where(hand < 0, -1.0, 1.0).to(v_pos)], dim=-1)


def perturb_normals(normals: torch.Tensor, tangents: torch.Tensor, normal_map: torch.Tensor) -> torch.Tensor:
    """Shading normals from a tangent-space normal map, per pixel.

    Args:
        normals: (..., 3) interpolated geometric normals (normalised here).
        tangents: (..., 4) interpolated :func:`uv_tangents` (xyz Gram-Schmidt-orthogonalised to the normal here;
            w's sign is the handedness).
        normal_map: (..., 3) sampled tangent-space normals as unit-ish vectors in [−1, 1]³
            (:func:`normal_map_to_unit` of the stored colours).

    Returns:
        (..., 3) unit normals ``normalize(m_x T + m_y B + m_z N)``, B = sign · N × T; differentiable in all three.
    """
    n = F.normalize(normals, dim=-1, eps=1e-12)
    t = tangents[..., :3]
    t = F.normalize(t - (t * n).sum(-1, keepdim=True) * n, dim=-1, eps=1e-12)
    sign = torch.where(tangents[..., 3:4] < 0, -1.0, 1.0).to(n)
    b = sign * torch.linalg.cross(n, t)
    out = normal_map[..., 0:1] * t + normal_map[..., 1:2] * b + normal_map[..., 2:3] * n
    return F.normalize(out, dim=-1, eps=1e-12)


def normal_map_to_unit(colors: torch.Tensor) -> torch.Tensor:
    """Stored normal-map colours in [0, 1] (rgb = (n + 1) / 2) → tangent-space vectors ``2 rgb − 1`` in [−1, 1]."""
    return colors * 2.0 - 1.0


def unit_to_normal_map(vectors: torch.Tensor) -> torch.Tensor:
    """Tangent-space vectors (..., 3) → normal-map colours in [0, 1]: normalised, z clamped to >= 0 (a normal map
    cannot point into the surface), then ``(n + 1) / 2``."""
    n = F.normalize(vectors, dim=-1, eps=1e-12)
    n = torch.cat([n[..., :2], n[..., 2:3].clamp(min=0.0)], dim=-1)
    n = F.normalize(n, dim=-1, eps=1e-12)
    return (n + 1.0) * 0.5
