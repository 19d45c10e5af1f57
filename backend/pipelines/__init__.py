"""The generators. ``PIPELINES`` maps a pipeline name to its module's ``(config class, run_job)``.

Each ``run_job(config, inputs, context) -> PipelineResult`` takes the parsed config, the submitted arrays (protocol
names such as ``mesh.v_pos``) and a :class:`~backend.pipelines.base.JobContext`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import latent_nerf, latent_paint


@dataclass(frozen=True)
class MeshInput:
    """A mesh a pipeline takes as input: arrays ``<group>.v_pos``/``<group>.t_pos_idx``; CLI flag ``--<group> FILE``."""

    group: str
    required: bool
    help: str

    @property
    def arrays(self) -> tuple[str, str]:
        return f"{self.group}.v_pos", f"{self.group}.t_pos_idx"


@dataclass(frozen=True)
class PipelineSpec:
    """A registered pipeline: its config dataclass, its job entry point and the meshes it takes."""

    config_class: type
    run_job: Callable
    mesh_inputs: tuple[MeshInput, ...]
    summary: str

    @property
    def required_inputs(self) -> tuple[str, ...]:
        return tuple(name for m in self.mesh_inputs if m.required for name in m.arrays)


PIPELINES: dict[str, PipelineSpec] = {
    "latent_paint": PipelineSpec(latent_paint.LatentPaintConfig, latent_paint.run_job,
                                 (MeshInput("mesh", True, "mesh to texture (UVs kept if it has them, else xatlas)"),),
                                 "Texture a mesh from text (Latent-Paint: SDS on a latent UV texture)."),
    "latent_nerf": PipelineSpec(latent_nerf.LatentNeRFConfig, latent_nerf.run_job,
                                (MeshInput("sketch", False, "sketch shape: a rough blockout the result follows"),),
                                "Generate a textured mesh from text, optionally following a sketch shape (Latent-NeRF)."),
}
