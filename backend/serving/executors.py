"""Where jobs run: the executor interface the job service drives, and the local executor (the default).

The service (:mod:`backend.serving.service`) owns the queue, the store and the listeners; an executor owns the
*workers* a job can run on. The service starts one worker thread per worker; each thread takes the next queued job,
hands it to its worker as a :class:`JobRequest` (the pipeline, its stored params and its stored input arrays) with
head-side :class:`JobEvents` callbacks, and gets a :class:`JobOutput` (the result's wire arrays, metadata, timings)
back, which the service saves in the store. So the store on the head stays the single source of truth, whatever ran
the job.

- :class:`LocalExecutor` (default): one worker, ``"local"``, running pipelines in this process on the service's
  device with the service's model cache (one GPU job at a time).
- :class:`backend.serving.ray_executor.RayExecutor` (optional, needs Ray): one worker per Ray actor, one actor per GPU.

A worker's :meth:`Worker.run` returns the output, or raises:

- :class:`~backend.pipelines.base.JobCancelled` when ``events.cancel_event`` stopped the job;
- :class:`JobFailed` when the job failed elsewhere and its error code and message are already final;
- :class:`WorkerLost` when the worker itself died (its process or its machine) while running the job: the service
  re-queues the job once, then calls :meth:`Worker.recover` before the worker takes another job;
- any other exception: the job failed here (the service turns it into a code and a message).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch

from ..params import parse_config
from ..pipelines import PIPELINES
from ..pipelines.base import JobContext
from ..pipelines.io import inputs_from_arrays, result_to_arrays


@dataclass(frozen=True)
class JobRequest:
    """One job as a worker receives it (what the store holds for it).

    Attributes:
        job_id: the store's id.
        pipeline: a key of :data:`backend.pipelines.PIPELINES`.
        params: the stored, already validated params (JSON values; parsed again by the worker).
        inputs: the stored input wire arrays (``mesh.v_pos`` (N, 3) float32, ``image`` (H, W, 3|4) uint8, …).
    """

    job_id: str
    pipeline: str
    params: dict
    inputs: dict[str, np.ndarray]


@dataclass
class JobEvents:
    """Head-side callbacks of one running job (the signatures of :class:`~backend.pipelines.base.JobContext`'s).

    Attributes:
        cancel_event: set by the service when the job is cancelled; a worker stops at the job's next step.
        on_progress: ``(stage, step, total, losses: dict[str, float], eta_s: float | None) -> None``.
        on_preview: ``(step, image (H, W, 3) uint8 row 0 = top, decoder) -> None``.
        on_partial: ``(step, meshes: list[ResultMesh], point_clouds: list[ResultPointCloud] = ()) -> None``
            (intermediate results, world frame).
    """

    cancel_event: threading.Event = field(default_factory=threading.Event)
    on_progress: Callable[..., None] | None = None
    on_preview: Callable[..., None] | None = None
    on_partial: Callable[..., None] | None = None


@dataclass
class JobOutput:
    """A finished job as the worker hands it back.

    Attributes:
        arrays: the result's wire arrays (:func:`backend.pipelines.io.result_to_arrays`).
        metadata: the pipeline's JSON-able facts about the run.
        timings: seconds per phase, as the pipeline measured them.
        files: the result's named files (:attr:`backend.pipelines.base.PipelineResult.files`), kept with the job.
    """

    arrays: dict[str, np.ndarray]
    metadata: dict
    timings: dict[str, float]
    files: dict[str, bytes] = field(default_factory=dict)


class JobFailed(Exception):
    """A job failed on a worker that already turned the error into a protocol code and a message (and recovered
    from it, e.g. emptied its model cache after an out-of-memory)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class WorkerLost(Exception):
    """The worker running a job died (its process was killed, or its machine left the cluster).

    Attributes:
        worker: the lost worker's name (as stored in the job's ``worker`` column).
        reason: one line saying what happened.
    """

    def __init__(self, worker: str, reason: str):
        super().__init__(f"worker {worker} was lost: {reason}")
        self.worker = worker
        self.reason = reason


class Worker(Protocol):
    """One place a job runs (one GPU): :attr:`name` goes into the job's ``worker`` column."""

    name: str

    def run(self, request: JobRequest, events: JobEvents) -> JobOutput:
        """Run one job to its end; see the module docstring for what it raises."""

    def recover(self) -> None:
        """Make the worker usable again after a :class:`WorkerLost` (may block; may change :attr:`name`)."""


class Executor(Protocol):
    """A set of workers; the service runs one job at a time on each."""

    workers: list

    def describe(self) -> str:
        """One line for the log: what runs the jobs."""

    def shutdown(self) -> None:
        """Release the workers (the service has stopped its threads)."""


def run_pipeline(request: JobRequest, device: torch.device, models, events: JobEvents) -> JobOutput:
    """Run ``request`` here: parse its params, decode its inputs, ``spec.run(config, inputs, context)``, and turn the
    result into wire arrays. Every executor's workers call this, so a job computes the same thing wherever it runs.

    Args:
        device: the torch device to compute on.
        models: the worker's :class:`~backend.models.cache.ModelCache` (kept warm between its jobs).
    Raises:
        JobCancelled: ``events.cancel_event`` was set. ParamError / MeshError / ValueError / ModelNotFoundError /
        anything the pipeline raises.
    """
    spec = PIPELINES[request.pipeline]
    context = JobContext(device=device, models=models, cancel_event=events.cancel_event,
                         on_progress=events.on_progress, on_preview=events.on_preview, on_partial=events.on_partial)
    config = parse_config(spec.config_class, request.params)
    inputs = inputs_from_arrays(request.pipeline, spec, request.inputs)
    result = spec.run(config, inputs, context)
    return JobOutput(result_to_arrays(result), result.metadata, result.timings, dict(result.files))


class LocalWorker:
    """Runs jobs in this process (the service's worker thread) on ``device`` with ``models``."""

    name = "local"

    def __init__(self, device: torch.device, models):
        self.device = torch.device(device)
        self.models = models

    def run(self, request: JobRequest, events: JobEvents) -> JobOutput:
        return run_pipeline(request, self.device, self.models, events)

    def recover(self) -> None:
        """Nothing to do: a local worker is never lost (it dies with the service)."""


class LocalExecutor:
    """The default executor: one :class:`LocalWorker` (one job at a time in this process); no Ray needed."""

    def __init__(self, device: torch.device, models):
        self.workers = [LocalWorker(device, models)]

    def describe(self) -> str:
        return f"local executor on {self.workers[0].device}"

    def shutdown(self) -> None:
        """Nothing to release: the worker thread belongs to the service."""
