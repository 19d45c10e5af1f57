"""The generators. ``PIPELINES`` maps a pipeline name to its module's ``(config class, run_job)``.

Each ``run_job(config, inputs, context) -> PipelineResult`` takes the parsed config, the submitted arrays (protocol
names such as ``mesh.v_pos``) and a :class:`~backend.pipelines.base.JobContext`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import latent_paint


@dataclass(frozen=True)
class PipelineSpec:
    """A registered pipeline: its config dataclass, its job entry point and the input arrays it requires."""

    config_class: type
    run_job: Callable
    required_inputs: tuple[str, ...]
    summary: str


PIPELINES: dict[str, PipelineSpec] = {
    "latent_paint": PipelineSpec(latent_paint.LatentPaintConfig, latent_paint.run_job,
                                 ("mesh.v_pos", "mesh.t_pos_idx"),
                                 "Texture a mesh from text (Latent-Paint: SDS on a latent UV texture)."),
}
