"""Job bookkeeping (bpy side; main thread only): what this session submitted, each job's pipeline and result target
(persisted in the scene so a result finds its place after Blender restarted), and the job rows and active-job line
shown in the panel (``window_manager.latentforge``)."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

import bpy

from . import results
from .results import ResultTarget
from .runtime import runtime_state

MAX_SAVED_JOB_TARGETS = 200
"""Most job targets kept in a scene's :data:`SCENE_JOBS_KEY` (the oldest are dropped)."""

SCENE_JOBS_KEY = "latentforge_jobs"
"""Scene ID property: job id -> ``{"pipeline", **target.to_record()}`` (e.g. latent_paint: "object", "n_vertices",
"uv_map"; latent_nerf: "sketch"; shape_ldm: "label", "location", "gap", "image"), so that a result can find its
object (or its place) after Blender restarted (saved with the .blend)."""


@dataclass
class PendingRequest:
    """A ``submit`` sent but not yet answered by ``accepted``."""

    request_id: str
    pipeline: str
    target: ResultTarget | None
    submitted: float = field(default_factory=time.monotonic)


class JobBook:
    """The jobs this session knows about.

    Attributes:
        pending: request id -> :class:`PendingRequest` (submitted, not yet accepted), oldest first.
        pipelines: job id -> pipeline name (jobs submitted by this session).
        targets: job id -> its result target (in memory; the scene keeps a copy, see :meth:`remember_target`).
        live_jobs: jobs queued or running (their streams are re-attached after a reconnect).
        applied: jobs whose result was applied (a second ``result`` is ignored unless asked for).
        wanted_results: jobs whose result was asked for with ``get_result`` (applied even if not ours).
        deleting: jobs a ``delete_job`` was sent for and not yet answered.
        list_requests: the ``list_jobs`` sent and not yet answered, oldest first, as ``(cursor, generation)``
            (cursor None = the first page); the server answers them in order.
        list_generation: bumped by every first-page request: an answer to an older generation's later page is
            dropped (Refresh was pressed meanwhile).
    """

    def __init__(self):
        self.pending: collections.OrderedDict[str, PendingRequest] = collections.OrderedDict()
        self.pipelines: dict[str, str] = {}
        self.targets: dict[str, ResultTarget] = {}
        self.live_jobs: set[str] = set()
        self.applied: set[str] = set()
        self.wanted_results: set[str] = set()
        self.deleting: set[str] = set()
        self.list_requests: collections.deque[tuple[str | None, int]] = collections.deque()
        self.list_generation = 0

    def add_pending(self, request_id: str, pipeline: str, target: ResultTarget | None) -> None:
        """Remember a sent ``submit`` until its ``accepted`` arrives."""
        self.pending[request_id] = PendingRequest(request_id, pipeline, target)

    def accept(self, job_id: str, request_id: str) -> PendingRequest | None:
        """The backend accepted ``request_id`` as ``job_id``: record its pipeline and target; returns the request
        (None when it was not ours)."""
        req = self.pending.pop(request_id, None)
        if req is not None:
            self.remember_target(job_id, req.pipeline, req.target)
        self.live_jobs.add(job_id)
        return req

    def remember_target(self, job_id: str, pipeline: str, target: ResultTarget | None) -> None:
        """Record ``job_id``'s pipeline and target, in memory and in the scene (:data:`SCENE_JOBS_KEY`)."""
        self.pipelines[job_id] = pipeline
        if target is None:
            return
        self.targets[job_id] = target
        try:
            scene = bpy.context.scene
            jobs = {k: dict(v) for k, v in scene.get(SCENE_JOBS_KEY, {}).items()}
            jobs[job_id] = {**target.to_record(), "pipeline": pipeline}
            scene[SCENE_JOBS_KEY] = dict(list(jobs.items())[-MAX_SAVED_JOB_TARGETS:])
        except (AttributeError, TypeError):
            pass

    def target_for(self, job_id: str, pipeline: str) -> ResultTarget | None:
        """The target recorded for ``job_id``: in memory, else in any scene's saved mapping (read with
        ``pipeline``'s target class), else None."""
        if job_id in self.targets:
            return self.targets[job_id]
        for scene in bpy.data.scenes:
            rec = scene.get(SCENE_JOBS_KEY, {}).get(job_id)
            if rec is not None and str(rec.get("pipeline", pipeline)) == pipeline:
                return results.target_from_record(pipeline, rec)
        return None

    def forget(self, job_id: str) -> None:
        """Drop everything known about ``job_id`` (it was deleted, or the backend no longer has it): in memory and in
        every scene's saved targets (:data:`SCENE_JOBS_KEY`)."""
        for known in (self.pipelines, self.targets):
            known.pop(job_id, None)
        for known in (self.live_jobs, self.applied, self.wanted_results, self.deleting):
            known.discard(job_id)
        for scene in bpy.data.scenes:
            try:
                saved = scene.get(SCENE_JOBS_KEY)
                if saved is not None and job_id in saved:
                    del saved[job_id]
            except (AttributeError, TypeError, KeyError):
                pass

    def list_sent(self, cursor: str | None) -> None:
        """Record a sent ``list_jobs`` (``cursor`` None = the first page: a new generation)."""
        if cursor is None:
            self.list_generation += 1
        self.list_requests.append((cursor, self.list_generation))

    def list_answered(self) -> tuple[bool, bool]:
        """Pair a ``jobs`` answer with its request: ``(first_page, current)``. An answer nothing waits for (e.g.
        a request queued before a reconnect) counts as a current first page."""
        if not self.list_requests:
            return True, True
        cursor, generation = self.list_requests.popleft()
        return cursor is None, generation == self.list_generation

    def fail_pending(self, why: str) -> None:
        """Drop every pending submit (nothing will answer them) and show ``failed: why``."""
        if self.pending:
            self.pending.clear()
            runtime_state().stage = f"failed: {why}"


# ------------------------------------------------------------------------------------- panel state of jobs

def begin_submit() -> None:
    """Reset the active-job line for a new submit (stage "submitted")."""
    state = runtime_state()
    state.active_job_id = ""
    state.progress = 0.0
    state.eta_s = -1.0
    state.stage = "submitted"
    state.last_error = ""


def finish_active(stage: str) -> None:
    """End the active job's line with ``stage`` ("done", "cancelled", "failed: …"); progress stays full when done."""
    state = runtime_state()
    state.stage = stage
    state.active_job_id = ""
    state.eta_s = -1.0
    if stage != "done":
        state.progress = 0.0


def update_job_row(job_id: str, status: str | None = None, pipeline: str = "", error: str = "") -> None:
    """Update (or add at the top) the row of ``job_id`` in ``window_manager.latentforge.jobs``."""
    rows = runtime_state().jobs
    row = rows.get(job_id)
    if row is None:
        row = rows.add()
        row.name = row.job_id = job_id
        rows.move(len(rows) - 1, 0)
        row = rows[0]
    if status:
        row.status = status
    if pipeline:
        row.pipeline = pipeline
    if error:
        row.error = error


def remove_job_row(job_id: str) -> bool:
    """Remove the row of ``job_id`` (the selection stays on a neighbour); returns whether there was one."""
    state = runtime_state()
    rows = state.jobs
    index = rows.find(job_id)
    if index < 0:
        return False
    rows.remove(index)
    if state.jobs_index > index or state.jobs_index >= len(rows):
        state.jobs_index = max(state.jobs_index - 1, 0)
    return True


def fill_job_rows(jobs: list[dict], next_cursor: str | None, append: bool = False, me: str | None = None) -> None:
    """Show one page of a ``jobs`` message: the first page replaces the rows, a later (older) page is appended
    below them (a job that already has a row updates it in place: no duplicates). ``next_cursor`` is kept for Load
    More ("" = the list is complete). A job owned by another identity than ``me`` (an admin's view of a studio
    backend) shows its owner."""
    state = runtime_state()
    rows = state.jobs
    if not append:
        rows.clear()
    for job in jobs:
        job_id = str(job.get("job_id", ""))
        if not job_id:
            continue
        row = rows.get(job_id)
        if row is None:
            row = rows.add()
            row.name = row.job_id = job_id
        row.pipeline = str(job.get("pipeline") or "")
        row.status = str(job.get("status") or "")
        row.prompt = str(job.get("prompt") or "")
        row.error = str(job.get("error") or "")
        owner = str(job.get("owner") or "")
        row.owner = owner if me is not None and owner != me else ""
        created = job.get("created")
        row.created = time.strftime("%Y-%m-%d %H:%M", time.localtime(created)) \
            if isinstance(created, (int, float)) else str(created or "")
    state.jobs_next_cursor = next_cursor or ""
    if state.jobs_index >= len(rows):
        state.jobs_index = max(len(rows) - 1, 0)
