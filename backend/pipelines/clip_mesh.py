"""CLIP-Mesh: a textured, normal-mapped mesh from text, from a sphere or from the artist's mesh.

After Khalid et al., "CLIP-Mesh: Generating textured meshes from text using pretrained image-text models" (SIGGRAPH
Asia 2022). Optimised by Adam: the control vertices of a Loop subdivision surface (shape modes), a diffuse texture
and a tangent-space normal map on the UV atlas (texture modes). Each step renders a batch of random views of the
limit surface (:mod:`backend.geometry.subdivision`) with the rasterizer, shades them (diffuse under a point light
near the camera, perturbed by the normal map), and :class:`~backend.guidance.clip.CLIPGuidance` scores
``−cos(CLIP(augment(render on a random background)), target)``; the target is the image embedding a DALL-E 2 style
diffusion prior predicts from the text when ``use_prior`` and its weights exist, else the text embedding. Shape
regularisers: the uniform Laplacian of the limit surface (weight annealed 30 → 0.6, the official schedule) and the
mean squared deviation of the control vertices from where they started.

Defaults follow the official code's ``configs/single.yml`` (ViT-B/32, lr 0.01 decayed by 10^(−0.0002·step), batch
25, renders at 356 px, 512² textures blurred by a 7×7 Gaussian of σ 3 before rendering, half the batch rendered
untextured during the first half of the steps, cameras at distance 5–8 with fovy 30–90° around a mesh scaled to
fit [−1, 1]³, elevation 60°·Beta(1, 5), any azimuth). Differences: the camera target is not jittered
(``aug_loc``), the light direction is the camera's plus Gaussian noise (``light_jitter``; the official code
cosine-samples it), RGB textures (no alpha channel), no specular map.

Frames: the control mesh is scaled to fit [−1, 1]³ around its bounding-box centre for the cameras (the "unit"
frame, a similarity of the world frame); results are mapped back to the input's world frame (user's mesh) or stay
around the origin (the sphere, radius 1 m). Textures: parameters follow the rasterizer's rows (row 0 ↔ v ≈ 0);
result images have row 0 at the top (:mod:`backend.geometry.frames` converts, once). Normal maps: OpenGL convention
(:mod:`backend.geometry.tangents`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from ..geometry.bake import dilate_texture
from ..geometry.cameras import CameraBatch, cameras_from_angles
from ..geometry.frames import bottom_up_to_top_down
from ..geometry.mesh import TriMesh, unwrap_uv, validate_mesh
from ..geometry.render import Rasterizer, antialias_silhouettes, make_rasterizer
from ..geometry.shading import shade, vertex_normals
from ..geometry.subdivision import LoopSurface, scipy_to_torch
from ..geometry.tangents import perturb_normals, unit_to_normal_map, uv_tangents
from ..guidance.augment import BACKGROUNDS, ViewAugmentConfig, ViewAugmenter, augment_config_of
from ..guidance.clip import CLIPGuidance
from ..models.clip import DEFAULT_CLIP_MODEL, load_clip
from ..models.clip_prior import CLIP_MESH_PRIOR, clip_target, load_prior
from ..params import Config, ParamError, param
from .base import JobContext, PipelineInputs, PipelineResult, ResultMesh, to_uint8_image

log = logging.getLogger(__name__)

MODES = ("shape_texture", "texture", "shape")
"""What is optimised: shape + texture + normal map (default), texture + normal map only, or the shape only."""
OUTPUT_SURFACES = ("limit", "control")
"""The mesh handed back: the Loop limit surface (smooth, denser) or the control mesh."""
UNTEXTURED_ALBEDO = 0.5
"""Grey albedo of the untextured renders (the official code's plain shape renders)."""


@dataclass
class CLIPMeshConfig(Config):
    """Settings of one CLIP-Mesh run (defaults from the official code's single-mesh config)."""

    prompt: str = param("", doc="What the mesh should look like, e.g. 'a carved wooden vase'.")
    mode: str = param("shape_texture", doc="What is optimised: shape_texture (control vertices, texture and normal "
                                           "map), texture (texture and normal map; the mesh is kept exactly), or "
                                           "shape (control vertices only).", choices=MODES)
    model: str = param(DEFAULT_CLIP_MODEL, doc="CLIP model: an open_clip '<arch>/<tag>' (ViT-B-32/openai, "
                                               "ViT-L-14/openai…; '<arch>/random' for random weights), a "
                                               "transformers CLIP id or folder, or 'tiny-random'.")
    use_prior: bool = param(True, doc="Also pull toward the image embedding a DALL-E 2 diffusion prior predicts from "
                                      "the text, when its weights are present (else the text embedding alone, and "
                                      "the job says so).")
    prior_model: str = param(CLIP_MESH_PRIOR, doc="Diffusion prior: CLIP-Mesh's public one (Hub id), a local .pth "
                                                  "file, or 'tiny-random'; it must live in the CLIP model's space.")
    prior_weight: float = param(0.33, doc="Weight of the prior's image-embedding term beside the text term (weight "
                                          "1); the target is normalize(text + prior_weight · prior).",
                                low=0.0, high=100.0)
    seed: int = param(99, doc="Seed of the initial texture, cameras, lights, backgrounds and augmentations.",
                      low=0, high=2**63 - 1)
    iterations: int = param(2000, doc="Optimisation steps.", low=1, high=100_000)
    batch_size: int = param(25, doc="Views rendered per step.", low=1, high=64)
    render_size: int = param(356, doc="Side of the renders in pixels (resized to CLIP's input size).",
                             low=16, high=1024)
    lr: float = param(0.01, doc="Adam learning rate (vertices, texture, normal map).", low=1e-6, high=1.0)
    lr_decay: float = param(2e-4, doc="Learning-rate decay: lr · 10^(−lr_decay · step).", low=0.0, high=0.1)
    texture_size: int = param(512, doc="Side of the diffuse texture and of the normal map, texels.",
                              low=16, high=4096)
    blur_kernel: int = param(7, doc="Side of the Gaussian kernel that low-pass filters the texture maps before "
                                    "rendering (odd; 1 = none).", low=1, high=31)
    blur_sigma: float = param(3.0, doc="Sigma of that Gaussian, texels.", low=0.1, high=20.0)
    shape_render_fraction: float = param(0.5, doc="Fraction of the steps during which half of each batch is "
                                                  "rendered untextured (grey), so the shape has to carry the "
                                                  "prompt too (shape_texture mode).", low=0.0, high=1.0)
    laplacian_weight: float = param(30.0, doc="Initial weight of the uniform Laplacian smoothness of the limit "
                                              "surface.", low=0.0, high=1e4)
    laplacian_min: float = param(0.6, doc="Weight the Laplacian decays toward.", low=0.0, high=1e4)
    laplacian_decay: float = param(1e-6, doc="Laplacian weight = (start − min) · 10^(−decay · step) + min.",
                                   low=0.0, high=1.0)
    deviation_weight: float = param(0.0, doc="Weight of the mean squared distance of the control vertices from "
                                             "their start, in the unit frame (keeps an artist's mesh recognisable).",
                                    low=0.0, high=1e6)
    sphere_subdivisions: int = param(3, doc="Subdivisions of the icosphere control mesh (no input mesh): 3 = 642 "
                                            "vertices.", low=0, high=6)
    subdivision_levels: int = param(1, doc="Loop subdivision levels of the rendered surface (then Loop's limit "
                                           "positions); 0 = limit positions of the control vertices.", low=0, high=4)
    output_surface: str = param("limit", doc="Mesh handed back: the limit surface or the control mesh.",
                                choices=OUTPUT_SURFACES)
    camera_distances: tuple[float, float] = param((5.0, 8.0), doc="Camera distance range, in units of the mesh's "
                                                                   "half size (it is scaled to fit [-1, 1]^3).",
                                                  low=0.5, high=100.0)
    fovy: tuple[float, float] = param((30.0, 90.0), doc="Vertical field of view range, degrees.", low=1.0,
                                      high=179.0)
    elevation_max: float = param(60.0, doc="Largest camera elevation, degrees (elevation = max · Beta(1, b)).",
                                 low=0.0, high=90.0)
    elevation_beta: float = param(5.0, doc="b of that Beta(1, b): larger = views nearer the horizon.",
                                  low=0.1, high=100.0)
    azimuth: tuple[float, float] = param((-180.0, 180.0), doc="Camera azimuth range, degrees (0 = front, -Y).",
                                         low=-360.0, high=360.0)
    light_jitter: float = param(1.0, doc="Std of the Gaussian noise added to the camera direction to place the "
                                         "light (0 = a headlight at the camera).", low=0.0, high=10.0)
    background: str = param("mixed", doc="Background behind the renders: mixed (solid / noise / checkerboard per "
                                         "image) or one kind.", choices=BACKGROUNDS)
    num_augmentations: int = param(1, doc="Augmented copies of each render scored by CLIP.", low=1, high=32)
    crop_scale: tuple[float, float] = param((0.8, 1.0), doc="Random resized crop: kept area range (1, 1 = none).",
                                            low=0.05, high=1.0)
    perspective: float = param(0.5, doc="Random perspective warp: distortion scale (0 = none).", low=0.0, high=1.0)
    perspective_probability: float = param(0.5, doc="Probability of the perspective warp per image.",
                                           low=0.0, high=1.0)
    preview_every: int = param(50, doc="Steps between preview renders (0 = only at the end).", low=0, high=100_000)
    partial_every: int = param(100, doc="Steps between intermediate meshes in shape modes (0 = none).",
                               low=0, high=100_000)

    def validate(self) -> None:
        if not self.prompt.strip():
            raise ParamError("prompt must not be empty")
        if not self.model.strip():
            raise ParamError("model must not be empty")
        if self.use_prior and not self.prior_model.strip():
            raise ParamError("prior_model must not be empty when use_prior is on")
        if self.blur_kernel % 2 == 0:
            raise ParamError(f"blur_kernel = {self.blur_kernel} must be odd")
        if self.azimuth[1] - self.azimuth[0] > 360.0:
            raise ParamError(f"azimuth = {self.azimuth} spans more than 360 degrees")

    @property
    def optimises_shape(self) -> bool:
        """Whether control vertices move (shape modes)."""
        return self.mode in ("shape_texture", "shape")

    @property
    def optimises_texture(self) -> bool:
        """Whether the texture and normal map are optimised (texture modes)."""
        return self.mode in ("shape_texture", "texture")

    def augment_config(self) -> ViewAugmentConfig:
        """The backgrounds and augmentations of :class:`~backend.guidance.augment.ViewAugmenter` from this config."""
        return augment_config_of(self)


def check_inputs(config: CLIPMeshConfig, inputs: PipelineInputs) -> None:
    """Submit-time rule: texture mode paints a given mesh, so it needs one. Raises ParamError."""
    if not config.optimises_shape and "mesh" not in inputs.meshes:
        raise ParamError("mode = 'texture' needs an input mesh (mesh.v_pos and mesh.t_pos_idx); the shape modes "
                         "start from a sphere without one")


# ---- pieces: cameras, lights, shading, rendering, regularisers ------------------------------------------------------

def sample_views(config: CLIPMeshConfig, batch_size: int, generator: torch.Generator,
                 device: torch.device | str = "cpu") -> CameraBatch:
    """CLIP-Mesh's random views around the origin of the unit frame.

    Distance and fovy uniform in their ranges, azimuth uniform, elevation = ``elevation_max · Beta(1, b)`` drawn by
    inversion (``1 − (1 − u)^(1/b)``), all from ``generator`` (same state, same cameras).

    Returns:
        :class:`~backend.geometry.cameras.CameraBatch` of ``batch_size`` look-at cameras on ``device``.
    """
    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(batch_size, generator=generator, device=generator.device)

    distances = uniform(*config.camera_distances)
    fovy = uniform(*config.fovy)
    azimuth = uniform(*config.azimuth)
    u = torch.rand(batch_size, generator=generator, device=generator.device)
    elevation = config.elevation_max * (1.0 - (1.0 - u).pow(1.0 / config.elevation_beta))
    return cameras_from_angles(elevation.to(device), azimuth.to(device), distances.to(device), fovy.to(device))


def sample_lights(cameras: CameraBatch, jitter: float, generator: torch.Generator | None) -> torch.Tensor:
    """(B, 3) point-light positions: the camera's direction plus N(0, jitter²) noise, at the camera's distance
    (``jitter = 0``, or no generator: a headlight at the camera, a function of the cameras alone)."""
    position = cameras.camera_positions.float()
    if jitter <= 0 or generator is None:
        return position
    distance = position.norm(dim=-1, keepdim=True)
    noise = torch.randn(position.shape, generator=generator, device=generator.device).to(position.device)
    return F.normalize(position / distance + jitter * noise, dim=-1) * distance


@dataclass
class Surface:
    """A mesh as the renderer takes it, in the unit frame, on one device.

    Attributes:
        v_pos: (V, 3) float32 positions (differentiable in shape modes). tri: (F, 3) int32.
        uv: (M, 2) float32 UVs, (0, 0) = bottom-left. uv_idx: (F, 3) int32.
    """

    v_pos: torch.Tensor
    tri: torch.Tensor
    uv: torch.Tensor
    uv_idx: torch.Tensor


def render_views(rasterizer: Rasterizer, surface: Surface, albedo: torch.Tensor | None,
                 normal_map: torch.Tensor | None, cameras: CameraBatch, lights: torch.Tensor,
                 size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Render a textured, normal-mapped surface with diffuse shading and antialiased silhouettes.

    Shading: :func:`backend.geometry.shading.shade` ("lambertian": ambient 0.1 + diffuse 0.9 · max(0, n · l̂)) with
    the normal-mapped normals; silhouettes: :func:`backend.geometry.render.antialias_silhouettes` of the
    premultiplied colour and coverage (outline gradients reach the positions), then un-premultiplied.

    Args:
        rasterizer: nvdiffrast or the torch rasterizer.
        surface: the mesh (unit frame).
        albedo: (1|B, S, S, 3) base colour in [0, 1] (display values, rasterizer rows: row 0 ↔ v ≈ 0), or None
            for untextured grey renders.
        normal_map: (1|B, S, S, 3) tangent-space normals in [−1, 1] (same rows), or None for the geometric normals.
        cameras: B cameras (unit frame). lights: (B, 3) point-light positions (unit frame).
        size: output side in pixels.

    Returns:
        ``rgb`` (B, 3, H, W) straight colour in [0, 1] and ``alpha`` (B, 1, H, W), both upright (row 0 = top),
        differentiable wrt the positions (shading, silhouettes), the albedo and the normal map.
    """
    v = surface.v_pos
    pos_clip = torch.einsum("vi,bji->bvj", torch.cat([v, torch.ones_like(v[:, :1])], dim=1),
                            cameras.mvp.to(v)).contiguous()
    rast = rasterizer.rasterize(pos_clip, surface.tri, (size, size))
    mask = (rast[..., 3:] > 0).to(v.dtype)
    normals = F.normalize(rasterizer.interpolate(vertex_normals(v, surface.tri), rast, surface.tri), dim=-1,
                          eps=1e-20)
    points = rasterizer.interpolate(v, rast, surface.tri)
    uv = rasterizer.interpolate(surface.uv, rast, surface.uv_idx)
    if normal_map is not None:
        tangents = rasterizer.interpolate(uv_tangents(v, surface.tri, surface.uv, surface.uv_idx), rast,
                                          surface.uv_idx)
        sampled = rasterizer.texture(normal_map.contiguous(), uv, filter_mode="linear")
        normals = perturb_normals(normals, tangents, sampled)
    if albedo is None:
        base = torch.full_like(points, UNTEXTURED_ALBEDO)
    else:
        base = rasterizer.texture(albedo.contiguous(), uv, filter_mode="linear")
    color = shade(base, normals, points, lights.to(v), "lambertian") * mask
    layers = antialias_silhouettes(torch.cat([color, mask], dim=-1), rast, pos_clip, surface.tri)
    alpha = layers[..., 3:].clamp(0.0, 1.0)
    rgb = (layers[..., :3] / alpha.clamp(min=1e-6)).clamp(0.0, 1.0) * (alpha > 0).to(v.dtype)
    return (bottom_up_to_top_down(rgb, 1).permute(0, 3, 1, 2), bottom_up_to_top_down(alpha, 1).permute(0, 3, 1, 2))


def gaussian_blur(texture: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian low-pass of a (1, S, S, C) texture (reflect padding); ``kernel`` 1 returns it as is."""
    if kernel <= 1:
        return texture
    x = torch.arange(kernel, dtype=texture.dtype, device=texture.device) - (kernel - 1) / 2
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    w = w / w.sum()
    image = texture.permute(0, 3, 1, 2)
    channels = image.shape[1]
    pad = kernel // 2
    image = F.conv2d(F.pad(image, (pad, pad, 0, 0), mode="reflect"), w.view(1, 1, 1, -1).expand(channels, 1, 1, -1),
                     groups=channels)
    image = F.conv2d(F.pad(image, (0, 0, pad, pad), mode="reflect"), w.view(1, 1, -1, 1).expand(channels, 1, -1, 1),
                     groups=channels)
    return image.permute(0, 2, 3, 1)


def uniform_laplacian(t_pos_idx: np.ndarray, num_vertices: int) -> sp.csr_matrix:
    """(V, V) uniform Laplacian ``(L v)_i = v_i − mean_{j ~ i} v_j`` of a triangle mesh (rows of unused vertices
    are 0); the smoothness term is ``mean((L v)²)`` (nvdiffmodeling's ``laplace_regularizer_const``)."""
    tri = np.asarray(t_pos_idx, dtype=np.int64)
    edges = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    rows = np.concatenate([edges[:, 0], edges[:, 1]])
    cols = np.concatenate([edges[:, 1], edges[:, 0]])
    adjacency = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(num_vertices, num_vertices))
    degree = np.asarray(adjacency.sum(axis=1)).reshape(-1)
    inv = np.where(degree > 0, 1.0 / np.maximum(degree, 1.0), 0.0)
    used = (degree > 0).astype(np.float64)
    return (sp.diags(used) - sp.diags(inv) @ adjacency).tocsr()


def roughness(v_pos: torch.Tensor, t_pos_idx: torch.Tensor) -> float:
    """Surface roughness: mean ``1 − cos`` between the unit normals of the two faces of each interior edge (0 for
    a plane, larger for a bumpy surface; in [0, 2])."""
    tri = t_pos_idx.long()
    fn = F.normalize(torch.linalg.cross(v_pos[tri[:, 1]] - v_pos[tri[:, 0]], v_pos[tri[:, 2]] - v_pos[tri[:, 0]]),
                     dim=-1, eps=1e-20)
    edges = torch.cat([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]]).sort(dim=1).values
    keys = edges[:, 0] * v_pos.shape[0] + edges[:, 1]
    faces = torch.arange(tri.shape[0], device=tri.device).repeat(3)
    keys, order = keys.sort(stable=True)
    faces = faces[order]
    _, counts = torch.unique_consecutive(keys, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    pair = counts == 2
    f0, f1 = faces[starts[pair]], faces[starts[pair] + 1]
    return float((1.0 - (fn[f0] * fn[f1]).sum(-1)).mean()) if f0.numel() else 0.0


# ---- the run --------------------------------------------------------------------------------------------------------

@dataclass
class _Run:
    """State shared by the steps of one run."""

    control: torch.Tensor          # (V0, 3) control vertices, unit frame (a Parameter in shape modes)
    control_init: torch.Tensor     # (V0, 3) where they started
    control_tri: np.ndarray        # (F0, 3) int32 control faces
    control_uv: np.ndarray         # (M0, 2) control UVs
    control_uv_idx: np.ndarray     # (F0, 3)
    loop: LoopSurface | None       # control → rendered surface (None in texture mode: the mesh itself)
    tri: torch.Tensor              # (F, 3) int32 rendered faces
    uv: torch.Tensor               # (M, 2) rendered UVs
    uv_idx: torch.Tensor           # (F, 3)
    laplacian: torch.Tensor | None  # sparse (V, V0): the Laplacian of the rendered surface from control vertices
    albedo: torch.Tensor           # (1, S, S, 3) texture parameter, rasterizer rows
    normal_map: torch.Tensor       # (1, S, S, 3) tangent-space normal parameter in [−1, 1]
    center: np.ndarray             # world = unit / scale + center
    scale: float
    uv_source: str

    def surface(self) -> Surface:
        """The rendered surface at the current control vertices."""
        v = self.loop(self.control) if self.loop is not None else self.control
        return Surface(v, self.tri, self.uv, self.uv_idx)


class CLIPMeshPipeline:
    """CLIP-Mesh on a sphere or a given mesh.

    Args:
        rasterizer: nvdiffrast on CUDA or the torch rasterizer (:func:`backend.geometry.render.make_rasterizer`).
        device: where optimisation runs.
    """

    name = "clip_mesh"
    config_class = CLIPMeshConfig

    def __init__(self, rasterizer: Rasterizer, device: torch.device | str):
        self.rasterizer = rasterizer
        self.device = torch.device(device)

    # ---- setup ----------------------------------------------------------------------------------------------------

    @staticmethod
    def control_mesh(config: CLIPMeshConfig, mesh: TriMesh | None) -> TriMesh:
        """The validated input mesh, or the icosphere of radius 1 m around the origin (``sphere_subdivisions``).

        Raises:
            MeshError: an unusable input mesh; ParamError: texture mode without a mesh.
        """
        if mesh is not None:
            return validate_mesh(mesh)
        if not config.optimises_shape:
            raise ParamError("mode = 'texture' needs an input mesh")
        import trimesh

        sphere = trimesh.creation.icosphere(subdivisions=config.sphere_subdivisions, radius=1.0)
        return TriMesh(np.asarray(sphere.vertices, dtype=np.float32), np.asarray(sphere.faces, dtype=np.int32))

    def setup(self, config: CLIPMeshConfig, mesh: TriMesh, generator: torch.Generator) -> _Run:
        """Unit frame, UVs, the subdivision operator, the Laplacian and the initial texture maps.

        Raises:
            MeshError: a non-manifold mesh in a shape mode (Loop subdivision needs one).
        """
        v = mesh.v_pos.astype(np.float64)
        used = v[np.unique(mesh.t_pos_idx)]
        center = (used.min(axis=0) + used.max(axis=0)) * 0.5
        half = float((used.max(axis=0) - used.min(axis=0)).max()) * 0.5
        scale = 1.0 / half
        unit = torch.from_numpy(((v - center) * scale).astype(np.float32)).to(self.device)
        if mesh.has_uv:
            uv, uv_idx, uv_source = mesh.uv, mesh.uv_idx, "input"
        else:
            uv, uv_idx = unwrap_uv(mesh.v_pos, mesh.t_pos_idx)
            uv_source = "xatlas"
        loop = laplacian = None
        tri, r_uv, r_uv_idx = mesh.t_pos_idx, uv, uv_idx
        if config.optimises_shape:
            loop = LoopSurface(mesh.t_pos_idx, len(v), config.subdivision_levels, limit=True, device=self.device,
                               uv=uv, uv_idx=uv_idx)
            tri, r_uv, r_uv_idx = loop.t_pos_idx, loop.uv, loop.uv_idx
            lap = uniform_laplacian(loop.t_pos_idx, loop.num_vertices) @ loop.matrix_scipy
            laplacian = scipy_to_torch(lap, self.device)
        size = config.texture_size
        albedo = torch.rand((1, size, size, 3), generator=generator, device=generator.device).to(self.device)
        normal_map = torch.zeros((1, size, size, 3), device=self.device)
        normal_map[..., 2] = 1.0
        control = unit.clone()
        return _Run(control=torch.nn.Parameter(control) if config.optimises_shape else control,
                     control_init=unit.clone(), control_tri=mesh.t_pos_idx, control_uv=uv, control_uv_idx=uv_idx,
                     loop=loop, tri=torch.from_numpy(np.ascontiguousarray(tri, dtype=np.int32)).to(self.device),
                     uv=torch.from_numpy(np.ascontiguousarray(r_uv, dtype=np.float32)).to(self.device),
                     uv_idx=torch.from_numpy(np.ascontiguousarray(r_uv_idx, dtype=np.int32)).to(self.device),
                     laplacian=laplacian,
                     albedo=torch.nn.Parameter(albedo) if config.optimises_texture else albedo,
                     normal_map=torch.nn.Parameter(normal_map) if config.optimises_texture else normal_map,
                     center=center, scale=scale, uv_source=uv_source)

    def render(self, run: _Run, config: CLIPMeshConfig, cameras: CameraBatch, lights: torch.Tensor,
               textured: bool = True, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Render ``run``'s current surface with the blurred maps (texture modes); grey albedo when not ``textured``
        (the normal map still applies, as in the official plain shape renders); grey with geometric normals in shape
        mode. Returns ``rgb`` (B, 3, H, W), ``alpha`` (B, 1, H, W), upright."""
        maps = config.optimises_texture
        albedo = gaussian_blur(run.albedo, config.blur_kernel, config.blur_sigma) if maps and textured else None
        normal = gaussian_blur(run.normal_map, config.blur_kernel, config.blur_sigma) if maps else None
        return render_views(self.rasterizer, run.surface(), albedo, normal, cameras, lights,
                            size or config.render_size)

    # ---- the loop -------------------------------------------------------------------------------------------------

    def __call__(self, mesh: TriMesh | None, config: CLIPMeshConfig, guidance: CLIPGuidance,
                 context: JobContext | None = None, target: str = "text", target_note: str = "") -> PipelineResult:
        """Optimise the mesh and/or its maps toward ``guidance``'s target.

        Args:
            mesh: the artist's mesh (world frame; UVs kept when present) or None for the sphere.
            config: run settings.
            guidance: CLIP guidance (a real CLIP and an embedding target, or the oracle and reference views).
            context: progress / preview / partial / cancel; a silent one when None.
            target: what ``guidance`` aims at, for the metadata: "prior", "text" or "reference".
            target_note: why, when the prior was asked for and not used.

        Returns:
            :class:`PipelineResult` with one mesh (texture modes: ``texture`` and ``normal_map``; texture mode returns
            the input's vertices, faces and UVs exactly), metadata, timings and extras (``surface`` / ``control``
            (V, 3) unit-frame tensors, ``albedo`` and ``normal_map`` parameters, ``clip_scores`` per step).

        Raises:
            MeshError, ParamError, JobCancelled, FloatingPointError (a non-finite loss).
        """
        context = context or JobContext(device=self.device, models=None)
        timings = {"render": 0.0, "clip": 0.0, "backward": 0.0}
        t_setup = time.perf_counter()

        # 1. Control mesh, unit frame, UVs, subdivision operator, maps; one seeded generator for every draw.
        generator = torch.Generator(device=self.device).manual_seed(config.seed)
        mesh = self.control_mesh(config, mesh)
        run = self.setup(config, mesh, generator)
        params = ([run.control] if config.optimises_shape else []) + \
                 ([run.albedo, run.normal_map] if config.optimises_texture else [])
        optimizer = torch.optim.Adam(params, lr=config.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 10.0 ** (-it * config.lr_decay))
        preview_cam = cameras_from_angles(30.0, 30.0, float(np.mean(config.camera_distances)), 60.0).to(self.device)
        timings["setup"] = time.perf_counter() - t_setup
        scores: list[float] = []

        # 2. Optimisation: random views → render → CLIP guidance + regularisers → Adam.
        for step in range(1, config.iterations + 1):
            context.check_cancelled()
            t0 = time.perf_counter()
            cameras = sample_views(config, config.batch_size, generator, self.device)
            lights = sample_lights(cameras, config.light_jitter, generator)
            plain = config.mode == "shape_texture" and step <= config.iterations * config.shape_render_fraction \
                and config.batch_size > 1
            if plain:
                half = config.batch_size // 2
                rgb_t, a_t = self.render(run, config, _subset(cameras, 0, half), lights[:half])
                rgb_p, a_p = self.render(run, config, _subset(cameras, half, config.batch_size), lights[half:],
                                         textured=False)
                rgb, alpha = torch.cat([rgb_t, rgb_p]), torch.cat([a_t, a_p])
            else:
                rgb, alpha = self.render(run, config, cameras, lights)
            t1 = time.perf_counter()
            out = guidance(rgb, alpha, cameras, generator)
            loss = out.loss
            losses = {"clip_score": out.score, "clip_loss": float(out.loss.detach())}
            if config.optimises_shape:
                lap_w = (config.laplacian_weight - config.laplacian_min) * 10.0 ** (-step * config.laplacian_decay) \
                    + config.laplacian_min
                lap = torch.sparse.mm(run.laplacian, run.control).pow(2).mean()
                dev = (run.control - run.control_init).pow(2).sum(-1).mean()
                loss = loss + lap_w * lap + config.deviation_weight * dev
                losses.update(laplacian=float(lap.detach()), deviation=float(dev.detach()))
            t2 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                if config.optimises_texture:
                    run.albedo.clamp_(0.0, 1.0)
                    run.normal_map.clamp_(-1.0, 1.0)
            t3 = time.perf_counter()
            timings["render"] += t1 - t0
            timings["clip"] += t2 - t1
            timings["backward"] += t3 - t2
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"CLIP-Mesh loss became {value} at step {step}")
            scores.append(out.score)
            context.progress("optimize", step, config.iterations, losses)
            if (config.preview_every and step % config.preview_every == 0) or step == config.iterations:
                self._preview(run, config, preview_cam, step, context)
            if config.optimises_shape and config.partial_every and step % config.partial_every == 0 \
                    and step < config.iterations and context.wants_partial:
                with torch.no_grad():
                    context.partial(step, [ResultMesh(self._output_mesh(run, config, mesh))])

        # 3. Result: the limit (or control) mesh in the input's frame, UVs, texture and normal map as images.
        t_out = time.perf_counter()
        with torch.no_grad():
            out_mesh = self._output_mesh(run, config, mesh)
            texture = normal_image = None
            if config.optimises_texture:
                texture, normal_image = self._maps(run, config)
        timings["output"] = time.perf_counter() - t_out
        metadata = {"pipeline": self.name, "prompt": config.prompt, "mode": config.mode, "seed": config.seed,
                    "model": config.model, "iterations": config.iterations, "target": target,
                    "uv_source": run.uv_source, "output_surface": config.output_surface
                    if config.optimises_shape else "input", "texture_size": config.texture_size,
                    "vertices": int(len(out_mesh.v_pos)), "faces": int(len(out_mesh.t_pos_idx)),
                    "final_clip_score": scores[-1]}
        if target_note:
            metadata["target_note"] = target_note
        with torch.no_grad():
            surface = run.surface().v_pos.detach().clone()
        return PipelineResult(meshes=[ResultMesh(out_mesh, texture=texture, normal_map=normal_image)],
                              metadata=metadata, timings=timings,
                              extras={"surface": surface, "control": run.control.detach().clone(),
                                      "surface_tri": run.tri, "albedo": run.albedo.detach(),
                                      "normal_map": run.normal_map.detach(), "clip_scores": scores})

    # ---- outputs ----------------------------------------------------------------------------------------------------

    def _output_mesh(self, run: _Run, config: CLIPMeshConfig, mesh: TriMesh) -> TriMesh:
        """The result mesh in the world frame: the input itself (texture mode), or the limit / control surface."""
        if not config.optimises_shape:
            return TriMesh(mesh.v_pos, mesh.t_pos_idx, run.control_uv, run.control_uv_idx)
        if config.output_surface == "control":
            v, tri, uv, uv_idx = run.control.detach(), run.control_tri, run.control_uv, run.control_uv_idx
        else:
            v, tri, uv, uv_idx = run.surface().v_pos.detach(), run.loop.t_pos_idx, run.loop.uv, run.loop.uv_idx
        world = v.double().cpu().numpy() / run.scale + run.center
        return TriMesh(world.astype(np.float32), np.ascontiguousarray(tri, dtype=np.int32),
                       np.ascontiguousarray(uv, dtype=np.float32), np.ascontiguousarray(uv_idx, dtype=np.int32))

    def _maps(self, run: _Run, config: CLIPMeshConfig) -> tuple[np.ndarray, np.ndarray]:
        """The blurred texture and normal map as rendered, gutters filled, as (S, S, 3) uint8 images (row 0 = top)."""
        size = config.texture_size
        pos = torch.cat([run.uv * 2.0 - 1.0, torch.zeros_like(run.uv[:, :1]), torch.ones_like(run.uv[:, :1])], 1)
        coverage = self.rasterizer.rasterize(pos[None].contiguous(), run.uv_idx, (size, size))[0, :, :, 3] > 0
        albedo = gaussian_blur(run.albedo, config.blur_kernel, config.blur_sigma)[0]
        normal = unit_to_normal_map(gaussian_blur(run.normal_map, config.blur_kernel, config.blur_sigma)[0])
        if bool(coverage.any()):
            albedo = dilate_texture(albedo, coverage, iterations=max(2, size // 64))
            normal = dilate_texture(normal, coverage, iterations=max(2, size // 64))
        return (to_uint8_image(bottom_up_to_top_down(albedo.permute(2, 0, 1), 1)),
                to_uint8_image(bottom_up_to_top_down(normal.permute(2, 0, 1), 1)))

    def _preview(self, run: _Run, config: CLIPMeshConfig, camera: CameraBatch, step: int,
                 context: JobContext) -> None:
        """A three-quarter view on white, at least 256 px, sent through ``context.preview``."""
        if context.on_preview is None:
            return
        with torch.no_grad():
            rgb, alpha = self.render(run, config, camera, sample_lights(camera, 0.0, None),
                                     size=max(config.render_size, 256))
            image = rgb[0] * alpha[0] + (1.0 - alpha[0])
        context.preview(step, to_uint8_image(image), "linear")


def _subset(cameras: CameraBatch, start: int, stop: int) -> CameraBatch:
    """Cameras ``start`` … ``stop − 1`` of a batch."""
    return CameraBatch(c2w=cameras.c2w[start:stop], mvp=cameras.mvp[start:stop],
                       elevation=cameras.elevation[start:stop], azimuth=cameras.azimuth[start:stop],
                       camera_distances=cameras.camera_distances[start:stop], fovy=cameras.fovy[start:stop])


def build_guidance(embedder, target: torch.Tensor, config: CLIPMeshConfig) -> CLIPGuidance:
    """CLIP guidance with this config's backgrounds and augmentations at the embedder's input size."""
    return CLIPGuidance(embedder, target, ViewAugmenter(config.augment_config(), embedder.image_size))


def target_embedding(config: CLIPMeshConfig, embedder, context: JobContext) -> tuple[torch.Tensor, str, str]:
    """The CLIP target of a run: ``(embedding (D,), kind "prior" | "text", note)``.

    With the prior (``use_prior`` and its weights present, in the CLIP's space), the official code's loss
    ``1.0 · (−cos(img, text)) + prior_weight · (−cos(img, prior))`` equals ``−cos(img, text + prior_weight · prior)``
    up to a positive scale, so the target is that sum (normalised by the cosine). Otherwise the text embedding, and
    the note says why (as :func:`backend.models.clip_prior.clip_target` words it). The prior's DDPM steps report as
    stage "prior" (and can be cancelled).
    """
    prior_model = config.prior_model if config.use_prior else None
    target = clip_target(config.prompt, embedder, prior_model,
                         load=lambda model: context.models.get(load_prior, model, context.device), seed=config.seed,
                         progress=lambda done, total: context.progress("prior", done, total))
    if target.prior is None:
        return target.text, "text", target.note
    combined = target.text + config.prior_weight * target.prior.to(target.text)
    return combined, "prior", target.note


def run(config: CLIPMeshConfig, inputs: PipelineInputs, context: JobContext) -> PipelineResult:
    """Job entry point: load (or reuse) CLIP and the prior, embed the target, run CLIP-Mesh on
    ``inputs.meshes.get('mesh')`` (None = the sphere).

    Raises:
        MeshError, ModelNotFoundError, ParamError, JobCancelled.
    """
    check_inputs(config, inputs)
    context.progress("load_model", 0, config.iterations)
    embedder = context.models.get(load_clip, config.model, context.device)
    with torch.no_grad():
        embedding, kind, note = target_embedding(config, embedder, context)
    log.info("clip_mesh %s", note)
    guidance = build_guidance(embedder, embedding.float().to(context.device), config)
    pipeline = CLIPMeshPipeline(make_rasterizer(context.device), context.device)
    result = pipeline(inputs.meshes.get("mesh"), config, guidance, context, target=kind, target_note=note)
    result.metadata["model"] = getattr(embedder, "model_id", config.model)
    return result
