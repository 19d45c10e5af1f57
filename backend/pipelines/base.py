"""What every pipeline gets from whoever runs it (the job worker, the CLI, a test) and what it hands back.

A pipeline is one module of :mod:`backend.pipelines` with a config dataclass and one entry point with one signature,
``run(config, inputs: PipelineInputs, context: JobContext) -> PipelineResult``. Inputs and results are typed here;
:mod:`backend.pipelines.io` alone turns them into and out of wire arrays.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..geometry.mesh import TriMesh


class JobCancelled(Exception):
    """Raised inside a pipeline at the next step boundary after cancellation was requested."""


@dataclass
class ResultMesh:
    """One mesh a pipeline hands back, in Blender's world frame (right-handed, Z up, metres).

    Attributes:
        mesh: geometry, with per-corner UVs when the mesh is textured (:class:`~backend.geometry.mesh.TriMesh`).
        v_color: (N, 3|4) float32 per-vertex linear RGB(A) in [0, 1], or None.
        texture: (H, W, 3|4) uint8 sRGB base colour for ``mesh.uv``, image rows (row 0 = top, V = 1), or None.
        normal_map: (H, W, 3) uint8 tangent-space normal map for ``mesh.uv`` (OpenGL convention: rgb = (n + 1) / 2,
            red = +U tangent, green = +V bitangent, flat = (128, 128, 255); :mod:`backend.geometry.tangents`), image
            rows (row 0 = top), non-colour data; or None.
    """

    mesh: TriMesh
    v_color: np.ndarray | None = None
    texture: np.ndarray | None = None
    normal_map: np.ndarray | None = None


@dataclass
class ResultPointCloud:
    """One point cloud a pipeline hands back (Point-E, LION), in Blender's world frame (right-handed, Z up, metres).

    Attributes:
        points: (N, 3) float32 positions, N >= 1, finite.
        colors: (N, 3) float32 per-point linear RGB in [0, 1], or None.
    """

    points: np.ndarray
    colors: np.ndarray | None = None


@dataclass
class PipelineInputs:
    """A job's inputs, decoded and validated by :func:`backend.pipelines.io.inputs_from_arrays`.

    Attributes:
        meshes: input group → mesh (``"mesh"``, ``"mesh_b"``, ``"sketch"``…, as the pipeline's
            :class:`MeshInput` names them), Blender world frame, validated (float32 / int32, finite, with faces).
        images: input name → (H, W, 3|4) uint8 image, row 0 = top.
        point_clouds: input group → (N, 3) float32 C-contiguous positions (``"points"``, ``"points_b"``, as the
            pipeline's :class:`PointCloudInput` names them), Blender world frame, metres; validated (N >= 1, finite,
            within ``MAX_COORDINATE``, not all at one point). A scan, or a point cloud object.
        point_colors: input group → (N, 3|4) float32 linear RGB(A) in [0, 1] of the cloud of that group, when the
            client sent colours (validated; no pipeline reads them yet).
    """

    meshes: dict[str, TriMesh] = field(default_factory=dict)
    images: dict[str, np.ndarray] = field(default_factory=dict)
    point_clouds: dict[str, np.ndarray] = field(default_factory=dict)
    point_colors: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class PipelineResult:
    """A finished run.

    Attributes:
        meshes: the output meshes, in order (several for samples, variations, interpolations).
        point_clouds: the output point clouds, in order (pipelines that make points; empty otherwise).
        metadata: JSON-able facts about the run (pipeline, prompt, seed, model, counts…), stored and sent as is.
        timings: seconds per phase.
        files: named files kept with the job but never sent to the client (e.g. VSD's ``vsd_adapter.safetensors``):
            the job store writes them into the job's ``files/`` folder, ``run --out`` and ``jobs --export`` beside
            the GLB as ``<out>_<name>``. Names are plain file names (letters, digits, ``._-``).
        extras: in-process values (tensors) for tests and benchmarks; never sent or stored.
    """

    meshes: list[ResultMesh]
    metadata: dict[str, Any]
    point_clouds: list[ResultPointCloud] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MeshInput:
    """A mesh a pipeline takes as input, by group name: wire arrays ``<group>.v_pos``/``<group>.t_pos_idx`` (and
    optional ``<group>.uv``/``<group>.uv_idx``); CLI flag ``--<group> FILE`` (underscores as dashes: ``--mesh-b``)."""

    group: str
    required: bool
    help: str


@dataclass(frozen=True)
class PointCloudInput:
    """A point cloud a pipeline takes as input, by group name: wire arrays ``<group>.v_pos`` (N, 3) float32 (Blender
    world frame, metres) and optional ``<group>.v_color`` (N, 3|4) float32; CLI flag ``--<group> FILE`` (underscores
    as dashes: ``--points-b``; a PLY/XYZ/OBJ point cloud, or a mesh file whose vertices are the points).

    Attributes:
        group: the wire group (``"points"``).
        help: one line for ``--help`` and the add-on.
        alternative_to: the :class:`MeshInput` group this cloud stands in for (``"mesh"``): the two are one role, and
            exactly one of them is given when that mesh input is required (at most one otherwise). Empty = an input
            of its own.
        required: an input of its own that must be given (ignored with ``alternative_to``).
    """

    group: str
    help: str
    alternative_to: str = ""
    required: bool = False


@dataclass(frozen=True)
class ImageInput:
    """An image a pipeline takes as input: wire array ``<name>`` (H, W, 3|4) uint8, row 0 = top; CLI flag
    ``--<name> FILE`` (PNG, JPEG, …)."""

    name: str
    required: bool
    help: str


@dataclass(frozen=True)
class PipelineSpec:
    """A pipeline's row in :data:`backend.pipelines.PIPELINES`.

    Attributes:
        config_class: its config dataclass (fields made with :func:`backend.params.param`).
        run: ``run(config, inputs, context) -> PipelineResult``, the same signature for every pipeline.
        summary: one line for ``--help`` and the add-on.
        mesh_inputs, image_inputs, point_inputs: what it takes besides its parameters (a point cloud may stand in
            for a mesh: :attr:`PointCloudInput.alternative_to`).
        check_inputs: ``(config, inputs) -> None`` run at submit time, after the inputs decoded, raising
            ``ParamError``/``ValueError`` for inputs the pipeline cannot use (e.g. neither a prompt nor an image).
        textured: its result carries a texture (the CLI writes it beside the GLB as PNG).
    """

    config_class: type
    run: Callable[[Any, PipelineInputs, "JobContext"], PipelineResult]
    summary: str
    mesh_inputs: tuple[MeshInput, ...] = ()
    image_inputs: tuple[ImageInput, ...] = ()
    point_inputs: tuple[PointCloudInput, ...] = ()
    check_inputs: Callable[[Any, PipelineInputs], None] | None = None
    textured: bool = False


@dataclass
class JobContext:
    """Runtime services for one pipeline run.

    Attributes:
        device: torch device to compute on.
        models: a :class:`backend.models.cache.ModelCache` (kept warm across jobs by the service).
        cancel_event: set by the service when the user cancels; checked at every :meth:`progress` call.
        on_progress: ``(stage, step, total, losses: dict[str, float], eta_s: float | None) -> None``.
        on_preview: ``(step, image (H, W, 3) uint8 row 0 = top, decoder: "linear" | "vae") -> None``.
        on_partial: ``(step, meshes: list[ResultMesh]) -> None`` (intermediate meshes, world frame); called with a
            third argument ``point_clouds: list[ResultPointCloud]`` only when the partial carries point clouds.
    """

    device: torch.device
    models: Any
    cancel_event: threading.Event = field(default_factory=threading.Event)
    on_progress: Callable[..., None] | None = None
    on_preview: Callable[..., None] | None = None
    on_partial: Callable[..., None] | None = None
    _stage: str | None = field(default=None, repr=False)
    _stage_t0: float = field(default=0.0, repr=False)
    _stage_step0: int = field(default=0, repr=False)

    def check_cancelled(self) -> None:
        """Raise :class:`JobCancelled` when cancellation was requested."""
        if self.cancel_event.is_set():
            raise JobCancelled()

    def progress(self, stage: str, step: int, total: int, losses: dict[str, float] | None = None) -> None:
        """Report progress and raise :class:`JobCancelled` if cancelled.

        The ETA (seconds) is the stage's own: its clock starts at the stage's first report, so model loading and
        earlier stages do not count, ``(total - step)`` × the mean time of the steps since then (None until one step
        is timed).
        """
        self.check_cancelled()
        now = time.monotonic()
        if stage != self._stage:
            self._stage, self._stage_t0, self._stage_step0 = stage, now, step
        if self.on_progress is not None:
            done = step - self._stage_step0
            eta = (now - self._stage_t0) / done * (total - step) if done > 0 else None
            self.on_progress(stage, step, total, dict(losses or {}), eta)

    def preview(self, step: int, image: np.ndarray, decoder: str) -> None:
        """Stream a preview image, (H, W, 3) uint8, row 0 = top."""
        if self.on_preview is not None:
            self.on_preview(step, image, decoder)

    @property
    def wants_partial(self) -> bool:
        """Whether anyone listens for intermediate meshes (skip extracting them otherwise)."""
        return self.on_partial is not None

    def partial(self, step: int, meshes: list[ResultMesh], point_clouds: list[ResultPointCloud] | None = None) -> None:
        """Stream intermediate meshes and/or point clouds (world frame) shown before the result."""
        if self.on_partial is not None:
            if point_clouds:
                self.on_partial(step, meshes, point_clouds)
            else:
                self.on_partial(step, meshes)


def to_uint8_image(image: torch.Tensor) -> np.ndarray:
    """``(3|4, H, W)`` float in [0, 1] → ``(H, W, 3|4)`` uint8 numpy (rows kept as they are)."""
    return (image.detach().float().clamp(0, 1).permute(1, 2, 0) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
