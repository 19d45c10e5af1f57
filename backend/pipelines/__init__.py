"""The generators. ``PIPELINES`` maps a pipeline name to its module's ``(config class, run_job)``.

Each ``run_job(config, inputs, context) -> PipelineResult`` takes the parsed config, the submitted arrays (protocol
names such as ``mesh.v_pos``) and a :class:`~backend.pipelines.base.JobContext`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import latent_nerf, latent_paint, shape_ldm


@dataclass(frozen=True)
class MeshInput:
    """A mesh a pipeline takes as input: arrays ``<group>.v_pos``/``<group>.t_pos_idx``; CLI flag ``--<group> FILE``
    (underscores written as dashes: ``mesh_b`` → ``--mesh-b``)."""

    group: str
    required: bool
    help: str

    @property
    def arrays(self) -> tuple[str, str]:
        return f"{self.group}.v_pos", f"{self.group}.t_pos_idx"


@dataclass(frozen=True)
class ImageInput:
    """An image a pipeline takes as input: array ``<name>`` (H, W, 3|4) uint8, row 0 = top; CLI flag ``--<name> FILE``
    (PNG, JPEG, …)."""

    name: str
    required: bool
    help: str


@dataclass(frozen=True)
class PipelineSpec:
    """A registered pipeline: its config dataclass, its job entry point and the meshes and images it takes.

    ``check_inputs(config, inputs)``, when set, runs at submit time after the meshes are validated and raises
    ``ParamError``/``ValueError`` for inputs the pipeline cannot use (e.g. neither a prompt nor an image).
    """

    config_class: type
    run_job: Callable
    mesh_inputs: tuple[MeshInput, ...]
    summary: str
    image_inputs: tuple[ImageInput, ...] = ()
    check_inputs: Callable | None = None

    @property
    def required_inputs(self) -> tuple[str, ...]:
        return tuple([name for m in self.mesh_inputs if m.required for name in m.arrays]
                     + [i.name for i in self.image_inputs if i.required])

    @property
    def optional_inputs(self) -> tuple[str, ...]:
        return tuple([name for m in self.mesh_inputs if not m.required for name in m.arrays]
                     + [i.name for i in self.image_inputs if not i.required])


PIPELINES: dict[str, PipelineSpec] = {
    "latent_paint": PipelineSpec(latent_paint.LatentPaintConfig, latent_paint.run_job,
                                 (MeshInput("mesh", True, "mesh to texture (UVs kept if it has them, else xatlas)"),),
                                 "Texture a mesh from text (Latent-Paint: SDS on a latent UV texture)."),
    "latent_nerf": PipelineSpec(latent_nerf.LatentNeRFConfig, latent_nerf.run_job,
                                (MeshInput("sketch", False, "sketch shape: a rough blockout the result follows"),),
                                "Generate a textured mesh from text, optionally following a sketch shape (Latent-NeRF)."),
    "shape_ldm": PipelineSpec(shape_ldm.ShapeLDMConfig, shape_ldm.run_shape_ldm, (),
                              "Generate shapes from text or an image in seconds (Michelangelo: aligned shape latent "
                              "diffusion); one mesh per sample.",
                              image_inputs=(ImageInput("image", False, "concept image (RGB or RGBA; alpha composited on "
                                                                       "white) instead of a prompt"),),
                              check_inputs=shape_ldm.check_shape_ldm_inputs),
    "shape_variations": PipelineSpec(shape_ldm.ShapeVariationsConfig, shape_ldm.run_shape_variations,
                                     (MeshInput("mesh", True, "mesh to make variations of"),),
                                     "Variations of a mesh: encode it, diffuse to a strength and denoise (optionally "
                                     "prompted); results stand where the mesh stands.",
                                     check_inputs=shape_ldm.check_mesh_inputs("shape_variations", ("mesh",))),
    "shape_interpolate": PipelineSpec(shape_ldm.ShapeInterpolateConfig, shape_ldm.run_shape_interpolate,
                                      (MeshInput("mesh", True, "start mesh"), MeshInput("mesh_b", True, "end mesh")),
                                      "In-between shapes of two meshes (interpolated shape latents).",
                                      check_inputs=shape_ldm.check_mesh_inputs("shape_interpolate",
                                                                               ("mesh", "mesh_b"))),
}
