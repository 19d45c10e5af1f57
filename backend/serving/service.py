"""The job service: a persistent job store and a single GPU worker, independent of any socket.

- Every job's parameters, status, timings and outputs are persisted: a row in ``<data_dir>/jobs.sqlite3`` and files in
  ``<data_dir>/jobs/<job_id>/`` (``inputs.npz``, ``result.npz``, ``texture.png``, ``result.glb``, ``preview.png``).
  A client that disconnects loses nothing; a backend restart re-queues queued jobs and marks interrupted ones failed.
- One worker thread per worker of the executor (:mod:`backend.serving.executors`) runs one job at a time on it (a
  worker is a GPU): the local executor (default) has one worker in this process, whose model cache stays warm between
  jobs; the Ray executor has one per Ray actor. Whatever ran a job, its result is saved here, and the job's row names
  the worker (``local``, ``ray:actor-2@host``). A job whose worker dies is re-queued once, then failed.
- Listeners (socket connections, the CLI) subscribe to a job and receive its events:
  ``listener(msg_type, fields, arrays)`` with the protocol's message types (status, progress, preview, result,
  error, cancelled). Listeners are called on the worker thread and must not block (connections enqueue).
- A failing job never takes the worker down: errors become a ``failed`` status with a code and a message.
- Ownership: every job records the identity that submitted it (``owner``). The requests about existing jobs take
  ``owner``: the identity whose jobs the caller may touch (an artist), or None for every job (an admin, the CLI).
  Another owner's job is ``not_found``, with the same message as an unknown id, so ids of others are not confirmed.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from blender_addon.core import protocol
from blender_addon.core.protocol import safe_text

from ..geometry.mesh import MeshError
from ..models.cache import ModelCache
from ..models.base import ModelNotFoundError
from ..models.devices import InsufficientMemoryError, describe_memory, device_memory, is_out_of_memory
from ..params import ParamError, parse_config
from ..pipelines import PIPELINES
from ..pipelines.base import JobCancelled
from ..pipelines.io import inputs_from_arrays, partial_to_arrays, preview_to_arrays
from .executors import Executor, JobEvents, JobFailed, JobRequest, LocalExecutor, Worker, WorkerLost
from .identities import ADMIN_NAME
from .store import TERMINAL, JobStore, StoreError

log = logging.getLogger(__name__)

Listener = Callable[[str, dict, dict], None]

MAX_PARAMS = 256
"""Most keys (at every level together) a submit's ``params`` may hold."""

_BAD_CONTROL = {c for c in range(32) if chr(c) not in "\t\n"} | {127}


class JobError(Exception):
    """A request about a job that cannot be served (unknown id, result not ready…); ``code`` goes on the wire."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def error_code(err: BaseException) -> str:
    """Wire error code for an exception raised while validating or running a job."""
    if isinstance(err, ParamError):
        return "bad_params"
    if isinstance(err, MeshError):
        return "bad_mesh"
    if isinstance(err, ModelNotFoundError):
        return "model_not_found"
    if is_out_of_memory(err):
        return "out_of_memory"
    if isinstance(err, (JobError, StoreError)):
        return err.code
    if isinstance(err, ValueError):
        return "bad_input"
    return "internal"


def describe_failure(err: BaseException, models: ModelCache, device: torch.device, job_id: str) -> tuple[str, str]:
    """``(code, message)`` of job ``job_id`` that raised ``err`` on a worker with ``models`` on ``device`` (call it in
    the ``except`` block): the wire code (:func:`error_code`), the message (an internal error is logged with its
    traceback and named by its type), and after an out-of-memory the worker's model cache is emptied so that its next
    job runs (the message says so). The message is not scrubbed yet (:meth:`JobService.scrub`)."""
    code = error_code(err)
    message = str(err) or type(err).__name__
    if code == "internal":
        log.error("job %s failed:\n%s", job_id, traceback.format_exc())
        message = f"{type(err).__name__}: {message}"
    if code == "out_of_memory":
        message = after_out_of_memory(err, message, models, device)
    return code, message


def after_out_of_memory(err: BaseException, message: str, models: ModelCache, device: torch.device) -> str:
    """Recover from an out-of-memory so that the next job runs: drop every cached model and hand the allocator's
    blocks back. Returns the job's error message, saying what ran out and what to try."""
    models.clear()
    memory = describe_memory(device_memory(device))
    if isinstance(err, InsufficientMemoryError):
        return message
    return (f"out of memory on {device} ({memory} after freeing the models): {message}. The backend emptied "
            f"its model cache and takes the next job; try smaller settings (render size, batch size, texture size, "
            f"grid resolution, samples) or close other programs using the device")


@dataclass
class _LiveJob:
    """In-memory state of a queued/running job (what ``attach`` replays)."""

    job_id: str
    cancel_event: threading.Event = field(default_factory=threading.Event)
    listeners: list[Listener] = field(default_factory=list)
    last_progress: dict | None = None
    last_preview: tuple[dict, np.ndarray] | None = None  # (fields, image (H, W, 3) uint8 row 0 = top)
    cancel_requested_by: list[Listener] = field(default_factory=list)
    lost_on: list[str] = field(default_factory=list)  # names of the workers that died running it (re-queued once)
    lost_slots: set[int] = field(default_factory=set)  # id() of those workers: a replacement there is skipped too


def check_params_text(params: dict) -> None:
    """Refuse params whose text cannot be stored and shown safely: more than :data:`MAX_PARAMS` entries, a string
    longer than ``protocol.MAX_PROMPT_CHARS``, a lone surrogate, or a control character other than tab/newline.
    The message names the parameter, never quotes its value. Raises ParamError."""
    stack: list[tuple[str, Any]] = [("params", params)]
    count = 0
    while stack:
        path, value = stack.pop()
        count += 1
        if count > MAX_PARAMS:
            raise ParamError(f"params hold more than {MAX_PARAMS} entries")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str) or len(key) > protocol.MAX_NAME_CHARS:
                    raise ParamError(f"{path} has a key longer than {protocol.MAX_NAME_CHARS} characters")
                _check_text(f"{path} key {safe_text(key, 40)!r}", key)
                stack.append((f"{path}.{safe_text(key, 40)}" if path != "params" else safe_text(key, 40), item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, str):
            if len(value) > protocol.MAX_PROMPT_CHARS:
                raise ParamError(f"{path} has {len(value)} characters, the limit is {protocol.MAX_PROMPT_CHARS}")
            _check_text(path, value)


def _check_text(what: str, text: str) -> None:
    if text.isascii() and text.isprintable():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ParamError(f"{what} is not valid Unicode text (it holds a lone surrogate)") from None
    bad = next((i for i, ch in enumerate(text) if ord(ch) in _BAD_CONTROL), None)
    if bad is not None:
        raise ParamError(f"{what} holds a control character (U+{ord(text[bad]):04X} at position {bad}); only tab "
                         f"and newline are allowed")


class JobService:
    """Queue + worker + store. See the module docstring.

    Args:
        data_dir: job store folder (created).
        device: torch device every job runs on.
        models: model cache shared by all jobs (default: one model kept warm).
        start_worker: start the worker threads now (the CLI's ``run`` drives :meth:`run_job` by hand).
        executor: where jobs run (:mod:`backend.serving.executors`); default: a
            :class:`~backend.serving.executors.LocalExecutor` on ``device`` with ``models``.
    """

    def __init__(self, data_dir: Path, device: torch.device, models: ModelCache | None = None, start_worker: bool = True,
                 max_store_bytes: int | None = None, max_job_age_s: float | None = None,
                 executor: Executor | None = None):
        self.store = JobStore(Path(data_dir))
        self.max_store_bytes = max_store_bytes
        self.max_job_age_s = max_job_age_s
        self.device = torch.device(device)
        self.models = models or ModelCache()
        self.executor = executor or LocalExecutor(self.device, self.models)
        self._queue: deque[str] = deque()
        self._live: dict[str, _LiveJob] = {}
        self._running: dict[int, str] = {}  # id(worker) -> the job it runs
        self._cond = threading.Condition()
        self._stopping = False
        self._recover()
        self.prune()
        workers = self.executor.workers
        self._threads = [threading.Thread(target=self._work, args=(w,), daemon=True,
                                          name="latentforge-worker" + (f"-{i}" if len(workers) > 1 else ""))
                         for i, w in enumerate(workers)]
        if start_worker:
            for thread in self._threads:
                thread.start()

    def running_jobs(self) -> list[str]:
        """The ids of the jobs running now, one per busy worker."""
        with self._cond:
            return list(self._running.values())

    # ---- client-facing API ------------------------------------------------------------------------------------------

    def submit(self, pipeline: str, params: dict, inputs: dict[str, np.ndarray], listener: Listener | None = None,
               owner: str = ADMIN_NAME) -> tuple[str, int]:
        """Validate and queue a job owned by ``owner`` (an identity name). Returns ``(job_id, queue_position)``
        (0 = runs next/now).

        Raises:
            ParamError: unknown pipeline, bad params or missing inputs. MeshError: unusable input mesh. ValueError:
            another unusable input (e.g. a 1×1 image).
        """
        spec = PIPELINES.get(pipeline)
        if spec is None:
            raise ParamError(f"unknown pipeline {safe_text(pipeline, 64)!r}; available: {sorted(PIPELINES)}")
        if not isinstance(params, dict):
            raise ParamError("params must be an object")
        check_params_text(params)
        config = parse_config(spec.config_class, params)
        decoded = inputs_from_arrays(pipeline, spec, inputs)  # bad meshes are refused before they take a place
        if spec.check_inputs is not None:  # pipeline-specific input rules (e.g. a prompt or an image)
            spec.check_inputs(config, decoded)
        job_id = uuid.uuid4().hex[:12]
        stored_params = {f: getattr(config, f) for f in config.__dataclass_fields__}
        self.store.insert(job_id, pipeline, stored_params, inputs, owner=owner)
        with self._cond:
            live = self._live[job_id] = _LiveJob(job_id)
            if listener:
                live.listeners.append(listener)
            self._queue.append(job_id)
            position = len(self._queue) - 1 + self._busy_offset()
            self._cond.notify_all()
        return job_id, position

    def cancel(self, job_id: str, requester: Listener | None = None, owner: str | None = None) -> str:
        """Request cancellation. A queued job is cancelled at once, a running one at its next step.

        Returns ``"cancelled"`` (the job's listeners got ``cancelled``) or ``"cancelling"`` (running: ``cancelled``
        follows when it stops; should it finish first, ``requester`` gets ``error job_finished``).
        Raises JobError("not_found" (also another ``owner``'s job) | "job_finished").
        """
        job = self._require(job_id, owner)
        with self._cond:
            if job_id in self._queue:
                self._queue.remove(job_id)
                self.store.update(job_id, status="cancelled", finished=time.time())
                live = self._live.pop(job_id, None)
                self._emit(live, "cancelled", {"job_id": job_id})
                if requester is not None and (live is None or requester not in live.listeners):
                    requester("cancelled", {"job_id": job_id}, {})
                self._announce_positions()
                return "cancelled"
            live = self._live.get(job_id)
            if live is not None:
                live.cancel_event.set()
                if requester is not None:
                    live.cancel_requested_by.append(requester)
                return "cancelling"
        raise JobError("job_finished", f"job {job_id} is already {job['status']}; there is nothing to cancel")

    def delete(self, job_id: str, owner: str | None = None) -> None:
        """Delete a finished job's row and files. Raises JobError("not_found" (also another ``owner``'s job) |
        "job_active")."""
        job = self._require(job_id, owner)
        with self._cond:
            if job_id in self._live or job["status"] not in TERMINAL:
                raise JobError("job_active", f"job {job_id} is {job['status']}; cancel it before deleting it")
            self.store.delete(job_id)

    def prune(self) -> list[tuple[str, str]]:
        """Apply the store's cap policy (see :meth:`JobStore.prune`); never touches queued or running jobs."""
        if not (self.max_store_bytes or self.max_job_age_s):
            return []
        with self._cond:  # no job changes state while the policy picks its victims
            return self.store.prune(self.max_store_bytes, self.max_job_age_s)

    def attach(self, job_id: str, listener: Listener, owner: str | None = None) -> None:
        """Subscribe ``listener`` to a job and replay its current state (status, last progress/preview, result).
        Raises JobError("not_found", also for another ``owner``'s job)."""
        job = self._require(job_id, owner)
        with self._cond:
            live = self._live.get(job_id)
            if live is not None:
                if listener not in live.listeners:
                    live.listeners.append(listener)
                listener("status", self._status_fields(job_id, job["status"]), {})
                if live.last_progress:
                    listener("progress", live.last_progress, {})
                if live.last_preview:
                    fields, image = live.last_preview
                    listener("preview", fields, preview_to_arrays(image))
                return
        self._replay_finished(job_id, listener)

    def detach(self, listener: Listener) -> None:
        """Remove ``listener`` from every job (the connection closed)."""
        with self._cond:
            for live in self._live.values():
                if listener in live.listeners:
                    live.listeners.remove(listener)

    def list_jobs(self, limit: int = protocol.LIST_JOBS_DEFAULT_LIMIT, cursor: str | None = None,
                  owner: str | None = None) -> tuple[list[dict], str | None]:
        """One page of job records (only ``owner``'s when given), newest first, and the next page's cursor
        (None = last page)."""
        return self.store.page(limit, cursor, owner=owner)

    def get(self, job_id: str, owner: str | None = None) -> dict:
        """The stored row of a job. Raises JobError("not_found", also for another ``owner``'s job)."""
        return self._require(job_id, owner)

    def get_result(self, job_id: str, owner: str | None = None) -> tuple[dict, dict[str, np.ndarray]]:
        """``(metadata, arrays)`` of a finished job. Raises JobError("not_found" (also another ``owner``'s job) |
        "not_ready" | "job_failed"), StoreError("result_damaged")."""
        job = self._require(job_id, owner)
        if job["status"] != "done":
            code = "not_ready" if job["status"] in ("queued", "running") else "job_failed"
            error = f": {safe_text(job['error'], 1000)}" if job["error"] else ""
            raise JobError(code, f"job {job_id} is {job['status']}{error}")
        return job["metadata"] or {}, self.store.load_result(job_id)

    def queue_position(self, job_id: str) -> int | None:
        with self._cond:
            if job_id in self._queue:
                return self._queue.index(job_id) + self._busy_offset()
        return None

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the workers after cancelling the running jobs; queued jobs stay queued in the store."""
        with self._cond:
            self._stopping = True
            for live in self._live.values():
                if live.job_id in self._running.values():
                    live.cancel_event.set()
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        try:
            self.executor.shutdown()
        except Exception:  # noqa: BLE001 — the store must still close
            log.exception("executor shutdown failed")
        self.store.close()

    # ---- worker -----------------------------------------------------------------------------------------------------

    def _work(self, worker: Worker) -> None:
        while True:
            with self._cond:
                while not self._stopping and (job_id := self._next_job_for(worker)) is None:
                    self._cond.wait()
                if self._stopping:
                    return
                self._queue.remove(job_id)
                self._running[id(worker)] = job_id
                self._announce_positions()
            lost = False
            try:
                self.run_job(job_id, worker)
            except WorkerLost:
                lost = True
            except BaseException:  # the worker must survive anything a job does
                log.exception("unexpected failure around job %s", job_id)
            finally:
                with self._cond:
                    self._running.pop(id(worker), None)
                    if job_id not in self._queue and job_id not in self._running.values():  # re-queued: stays live
                        self._live.pop(job_id, None)
                    self._cond.notify_all()
            if lost:
                self._recover_worker(worker)
            try:
                self.prune()
            except Exception:  # noqa: BLE001 — housekeeping must not stop the worker
                log.exception("job store cap policy failed")

    def _next_job_for(self, worker: Worker) -> str | None:
        """The first queued job ``worker`` may take (called with the condition held): a job re-queued after a worker
        died goes to another worker when there is one (not to the dead one's replacement in the same place)."""
        for job_id in self._queue:
            live = self._live.get(job_id)
            if live is not None and id(worker) in live.lost_slots and len(self.executor.workers) > 1:
                continue
            return job_id
        return None

    def _recover_worker(self, worker: Worker) -> None:
        """Bring a lost worker back (e.g. a new Ray actor), retrying until it works or the service stops."""
        delay = 1.0
        while not self._stopping:
            try:
                lost = worker.name
                worker.recover()
                log.warning("worker %s was lost; %s takes its place", lost, worker.name)
                return
            except Exception as err:  # noqa: BLE001 — no GPU free yet, cluster unreachable, …: try again
                log.warning("worker %s cannot be brought back yet (%s); retrying in %.0f s", worker.name, err, delay)
                with self._cond:
                    self._cond.wait(delay)
                delay = min(delay * 2, 60.0)

    def run_job(self, job_id: str, worker: Worker | None = None) -> None:
        """Run one job to a terminal status on ``worker`` (default: the executor's first), emitting its events and
        persisting everything.

        Raises:
            WorkerLost: the worker died while running the job; the job was re-queued (first time) or failed
            (second time), and the caller must :meth:`~backend.serving.executors.Worker.recover` the worker.
        """
        worker = worker or self.executor.workers[0]
        job = self.store.get(job_id)
        live = self._live.setdefault(job_id, _LiveJob(job_id))
        started = time.time()
        self.store.update(job_id, status="running", started=started, worker=worker.name)
        self._emit(live, "status", {"job_id": job_id, "status": "running"})

        def on_progress(stage, step, total, losses, eta):
            fields = {"job_id": job_id, "stage": stage, "step": int(step), "total": int(total),
                      "losses": {k: float(v) for k, v in losses.items()}, "eta_s": None if eta is None else float(eta)}
            live.last_progress = fields
            self._emit(live, "progress", fields)

        def on_preview(step, image, decoder):
            fields = {"job_id": job_id, "step": int(step), "decoder": decoder}
            live.last_preview = (fields, image)
            self._emit(live, "preview", fields, preview_to_arrays(image))

        def on_partial(step, meshes, point_clouds=()):
            self._emit(live, "partial", {"job_id": job_id, "step": int(step)}, partial_to_arrays(meshes, point_clouds))

        events = JobEvents(cancel_event=live.cancel_event, on_progress=on_progress, on_preview=on_preview,
                           on_partial=on_partial)
        try:
            request = JobRequest(job_id, job["pipeline"], job["params"], self.store.load_inputs(job_id))
            output = worker.run(request, events)
            arrays = output.arrays
            self.store.save_result(job_id, arrays, output.files)
            if live.last_preview:
                self.store.save_preview(job_id, live.last_preview[1])
        except JobCancelled:
            self.store.update(job_id, status="cancelled", finished=time.time())
            self._emit(live, "cancelled", {"job_id": job_id})
            for requester in live.cancel_requested_by:
                if requester not in live.listeners:
                    requester("cancelled", {"job_id": job_id}, {})
            return
        except WorkerLost as err:
            self._worker_lost(live, err, worker)
            raise
        except BaseException as err:  # noqa: BLE001 — every failure becomes a failed job, never a dead worker
            if isinstance(err, JobFailed):  # described where it ran
                code, message = err.code, err.message
            else:
                code, message = describe_failure(err, self.models, self.device, job_id)
            self._fail(live, code, self.scrub(message))
            if not isinstance(err, Exception):
                raise
            return
        finished = time.time()
        timings = {**output.timings, "total": finished - started}
        metadata = {**output.metadata, "job_id": job_id, "timings": timings}
        self.store.update(job_id, status="done", finished=finished, metadata=metadata, timings=timings)
        self._emit(live, "status", {"job_id": job_id, "status": "done"})
        self._emit(live, "result", {"job_id": job_id, "metadata": metadata}, arrays)
        self._cancel_too_late(live, "done")

    # ---- helpers ----------------------------------------------------------------------------------------------------

    def _require(self, job_id: str, owner: str | None = None) -> dict:
        job = self.store.get(job_id) if isinstance(job_id, str) else None
        if job is None or (owner is not None and job["owner"] != owner):
            among = "" if owner is None else f" among the jobs of {owner}"
            raise JobError("not_found", f"no job with id {safe_text(job_id, 80)!r}{among}")
        return job

    def _fail(self, live: _LiveJob, code: str, message: str) -> None:
        """Persist and announce a failed job (``message`` already scrubbed)."""
        job_id = live.job_id
        self.store.update(job_id, status="failed", finished=time.time(), error=message, error_code=code)
        self._emit(live, "status", {"job_id": job_id, "status": "failed", "error": message})
        self._emit(live, "error", {"job_id": job_id, "code": code, "message": message})
        self._cancel_too_late(live, "failed")

    def _worker_lost(self, live: _LiveJob, err: WorkerLost, worker: Worker) -> None:
        """The worker running ``live`` died: re-queue the job at the head of the queue the first time (another
        worker takes it), fail it with ``interrupted`` the second time; a job being cancelled is cancelled."""
        job_id = live.job_id
        log.warning("job %s: %s", job_id, err)
        if live.cancel_event.is_set():
            self.store.update(job_id, status="cancelled", finished=time.time())
            self._emit(live, "cancelled", {"job_id": job_id})
            return
        if live.lost_on:
            message = self.scrub(f"interrupted: worker {err.worker} was lost while running this job ({err.reason}); "
                                 f"it had already been re-queued once after worker {live.lost_on[0]} was lost, so "
                                 f"it is not tried again: submit it again")
            self._fail(live, "interrupted", message)
            return
        with self._cond:
            live.lost_on.append(err.worker)
            live.lost_slots.add(id(worker))
            live.last_progress = None
            self.store.update(job_id, status="queued", started=None, worker=None)
            self._queue.appendleft(job_id)
            self._announce_positions()
            self._cond.notify_all()

    def scrub(self, message: str) -> str:
        """A job error as the client may see it: no server path (the data folder becomes ``<data>``), capped."""
        for path, alias in ((str(self.store.data_dir.resolve()), "<data>"), (str(self.store.data_dir), "<data>"),
                            (str(Path.home()), "~")):
            if path and path not in ("/", "."):
                message = message.replace(path, alias)
        return safe_text(message, protocol.MAX_MESSAGE_CHARS // 2)

    @staticmethod
    def _cancel_too_late(live: _LiveJob, status: str) -> None:
        for requester in live.cancel_requested_by:
            try:
                requester("error", {"job_id": live.job_id, "code": "job_finished",
                                    "message": f"job {live.job_id} was {status} before the cancel took effect"}, {})
            except Exception:  # noqa: BLE001
                log.exception("listener failed")

    def _busy_offset(self) -> int:
        """1 when every worker is busy (a queued job waits for one), else 0."""
        return 1 if len(self._running) >= len(self.executor.workers) else 0

    def _status_fields(self, job_id: str, status: str) -> dict:
        fields = {"job_id": job_id, "status": status}
        position = self.queue_position(job_id)
        if position is not None:
            fields["queue_position"] = position
        return fields

    def _announce_positions(self) -> None:
        """Tell listeners of queued jobs where they stand (called with the condition held)."""
        for i, job_id in enumerate(self._queue):
            live = self._live.get(job_id)
            position = i + self._busy_offset()
            self._emit(live, "status", {"job_id": job_id, "status": "queued", "queue_position": position})

    def _replay_finished(self, job_id: str, listener: Listener) -> None:
        job = self.store.get(job_id)
        if job is None:
            raise JobError("not_found", f"no job with id {job_id!r}")
        result = self.get_result(job_id) if job["status"] == "done" else None  # a damaged result: only its error
        fields = {"job_id": job_id, "status": job["status"]}
        if job["error"]:
            fields["error"] = safe_text(job["error"], protocol.MAX_MESSAGE_CHARS // 2)
        listener("status", fields, {})
        if result is not None:
            metadata, arrays = result
            listener("result", {"job_id": job_id, "metadata": metadata}, arrays)
        elif job["status"] == "cancelled":
            listener("cancelled", {"job_id": job_id}, {})
        elif job["status"] == "failed":
            listener("error", {"job_id": job_id, "code": job["error_code"] or "internal",
                               "message": safe_text(job["error"] or "", protocol.MAX_MESSAGE_CHARS // 2)}, {})

    @staticmethod
    def _emit(live: _LiveJob | None, msg_type: str, fields: dict, arrays: dict | None = None) -> None:
        if live is None:
            return
        for listener in list(live.listeners):
            try:
                listener(msg_type, fields, arrays or {})
            except Exception:  # a broken listener must not break the job
                log.exception("listener failed on %s", msg_type)

    def _recover(self) -> None:
        """After a restart: queued jobs go back on the queue, jobs that were running are marked failed."""
        for job in reversed(self.store.list(limit=1_000_000, status=("queued", "running"))):
            if job["status"] == "running":
                self.store.update(job["job_id"], status="failed", finished=time.time(), error_code="interrupted",
                                  error="interrupted: the backend stopped while this job was running; submit it again")
            else:
                self._queue.append(job["job_id"])
                self._live[job["job_id"]] = _LiveJob(job["job_id"])
