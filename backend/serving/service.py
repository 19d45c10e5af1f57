"""The job service: a persistent job store and a single GPU worker, independent of any socket.

- Every job's parameters, status, timings and outputs are persisted: a row in ``<data_dir>/jobs.sqlite3`` and files in
  ``<data_dir>/jobs/<job_id>/`` (``inputs.npz``, ``result.npz``, ``texture.png``, ``result.glb``, ``preview.png``).
  A client that disconnects loses nothing; a backend restart re-queues queued jobs and marks interrupted ones failed.
- One worker thread runs one job at a time (the GPU is the bottleneck); the model cache stays warm between jobs.
- Listeners (socket connections, the CLI) subscribe to a job and receive its events:
  ``listener(msg_type, fields, arrays)`` with the protocol's message types (status, progress, preview, result,
  error, cancelled). Listeners are called on the worker thread and must not block (connections enqueue).
- A failing job never takes the worker down: errors become a ``failed`` status with a code and a message.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
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

from ..geometry.mesh import MeshError, save_glb, side_by_side
from ..models.cache import ModelCache
from ..models.errors import ModelNotFoundError
from ..params import ParamError, parse_config
from ..pipelines import PIPELINES
from ..pipelines.base import JobCancelled, JobContext
from ..pipelines.io import inputs_from_arrays, meshes_from_arrays, meshes_to_arrays, result_to_arrays

log = logging.getLogger(__name__)

Listener = Callable[[str, dict, dict], None]
TERMINAL = ("done", "failed", "cancelled")


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
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return "out_of_memory"
    if isinstance(err, JobError):
        return err.code
    if isinstance(err, ValueError):
        return "bad_input"
    return "internal"


@dataclass
class _LiveJob:
    """In-memory state of a queued/running job (what ``attach`` replays)."""

    job_id: str
    cancel_event: threading.Event = field(default_factory=threading.Event)
    listeners: list[Listener] = field(default_factory=list)
    last_progress: dict | None = None
    last_preview: tuple[dict, dict] | None = None


class JobStore:
    """SQLite rows + artifact folders. Thread-safe (one connection guarded by a lock)."""

    COLUMNS = ("job_id", "pipeline", "params", "status", "created", "started", "finished", "error", "error_code",
               "metadata", "timings")

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.jobs_dir = self.data_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.data_dir / "jobs.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, params TEXT NOT NULL, "
            "status TEXT NOT NULL, created REAL NOT NULL, started REAL, finished REAL, error TEXT, error_code TEXT, "
            "metadata TEXT, timings TEXT)")

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def insert(self, job_id: str, pipeline: str, params: dict, inputs: dict[str, np.ndarray]) -> None:
        folder = self.job_dir(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "inputs.npz", **inputs)
        (folder / "params.json").write_text(json.dumps(params, indent=2))
        with self._lock:
            self._db.execute("INSERT INTO jobs (job_id, pipeline, params, status, created) VALUES (?, ?, ?, 'queued', ?)",
                             (job_id, pipeline, json.dumps(params), time.time()))

    def update(self, job_id: str, **values: Any) -> None:
        for key in ("metadata", "timings"):
            if key in values and not isinstance(values[key], str):
                values[key] = json.dumps(values[key])
        cols = ", ".join(f"{k} = ?" for k in values)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {cols} WHERE job_id = ?", (*values.values(), job_id))

    def get(self, job_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(self.COLUMNS)} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return self._row(row) if row else None

    def list(self, limit: int = 100, status: tuple[str, ...] | None = None) -> list[dict]:
        query = f"SELECT {', '.join(self.COLUMNS)} FROM jobs"
        args: list[Any] = []
        if status:
            query += f" WHERE status IN ({', '.join('?' * len(status))})"
            args += list(status)
        query += " ORDER BY created DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (*args, limit)).fetchall()
        return [self._row(r) for r in rows]

    def _row(self, row) -> dict:
        job = dict(zip(self.COLUMNS, row))
        for key in ("params", "metadata", "timings"):
            job[key] = json.loads(job[key]) if job[key] else ({} if key != "metadata" else None)
        return job

    def load_inputs(self, job_id: str) -> dict[str, np.ndarray]:
        with np.load(self.job_dir(job_id) / "inputs.npz", allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    def save_result(self, job_id: str, arrays: dict[str, np.ndarray]) -> None:
        """Write ``result.npz`` (the result's wire arrays, every mesh), ``texture.png`` and ``result.glb`` (every mesh:
        one node each, laid out side by side) into the job folder."""
        from PIL import Image

        folder = self.job_dir(job_id)
        np.savez(folder / "result.npz", **arrays)
        results = meshes_from_arrays(arrays)
        texture = results[0].texture if results else None
        if texture is not None:
            Image.fromarray(texture.squeeze(-1) if texture.shape[-1] == 1 else texture).save(folder / "texture.png")
        if results:  # several meshes (samples): one node each, side by side along +X
            meshes = [r.mesh for r in results]
            offsets = side_by_side(meshes) if len(meshes) > 1 else None
            save_glb(folder / "result.glb", meshes, texture, offsets=offsets)

    def load_result(self, job_id: str) -> dict[str, np.ndarray]:
        with np.load(self.job_dir(job_id) / "result.npz", allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    def save_preview(self, job_id: str, image: np.ndarray) -> None:
        from PIL import Image

        Image.fromarray(image).save(self.job_dir(job_id) / "preview.png")

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def job_summary(job: dict) -> dict:
    """The JSON a client sees in ``jobs`` listings."""
    return {"job_id": job["job_id"], "pipeline": job["pipeline"], "status": job["status"],
            "prompt": job["params"].get("prompt", ""), "created": job["created"], "started": job["started"],
            "finished": job["finished"], "error": job["error"], "params": job["params"]}


class JobService:
    """Queue + worker + store. See the module docstring.

    Args:
        data_dir: job store folder (created).
        device: torch device every job runs on.
        models: model cache shared by all jobs (default: one model kept warm).
        start_worker: start the worker thread now (tests may drive :meth:`run_next` by hand).
    """

    def __init__(self, data_dir: Path, device: torch.device, models: ModelCache | None = None, start_worker: bool = True):
        self.store = JobStore(Path(data_dir))
        self.device = torch.device(device)
        self.models = models or ModelCache()
        self._queue: deque[str] = deque()
        self._live: dict[str, _LiveJob] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self.current_job: str | None = None
        self._recover()
        self._worker = threading.Thread(target=self._work, name="latentforge-worker", daemon=True)
        if start_worker:
            self._worker.start()

    # ---- client-facing API ------------------------------------------------------------------------------------------

    def submit(self, pipeline: str, params: dict, inputs: dict[str, np.ndarray], listener: Listener | None = None) -> tuple[str, int]:
        """Validate and queue a job. Returns ``(job_id, queue_position)`` (0 = runs next/now).

        Raises:
            ParamError: unknown pipeline, bad params or missing inputs. MeshError: unusable input mesh. ValueError:
            another unusable input (e.g. a 1×1 image).
        """
        spec = PIPELINES.get(pipeline)
        if spec is None:
            raise ParamError(f"unknown pipeline {pipeline!r}; available: {sorted(PIPELINES)}")
        config = parse_config(spec.config_class, params)
        decoded = inputs_from_arrays(pipeline, spec, inputs)  # bad meshes are refused before they take a place
        if spec.check_inputs is not None:  # pipeline-specific input rules (e.g. a prompt or an image)
            spec.check_inputs(config, decoded)
        job_id = uuid.uuid4().hex[:12]
        stored_params = {f: getattr(config, f) for f in config.__dataclass_fields__}
        self.store.insert(job_id, pipeline, stored_params, inputs)
        with self._cond:
            live = self._live[job_id] = _LiveJob(job_id)
            if listener:
                live.listeners.append(listener)
            self._queue.append(job_id)
            position = len(self._queue) - 1 + (1 if self.current_job else 0)
            self._cond.notify_all()
        return job_id, position

    def cancel(self, job_id: str) -> str:
        """Request cancellation. A queued job is cancelled at once, a running one at its next step.

        Returns the job's status after the request. Raises JobError("not_found").
        """
        job = self._require(job_id)
        with self._cond:
            if job_id in self._queue:
                self._queue.remove(job_id)
                self.store.update(job_id, status="cancelled", finished=time.time())
                live = self._live.pop(job_id, None)
                self._emit(live, "cancelled", {"job_id": job_id})
                self._announce_positions()
                return "cancelled"
            live = self._live.get(job_id)
            if live is not None:
                live.cancel_event.set()
                return "running"
        return job["status"]

    def attach(self, job_id: str, listener: Listener) -> None:
        """Subscribe ``listener`` to a job and replay its current state (status, last progress/preview, result)."""
        job = self._require(job_id)
        with self._cond:
            live = self._live.get(job_id)
            if live is not None:
                live.listeners.append(listener)
                listener("status", self._status_fields(job_id, job["status"]), {})
                if live.last_progress:
                    listener("progress", live.last_progress, {})
                if live.last_preview:
                    listener("preview", *live.last_preview)
                return
        self._replay_finished(job_id, listener)

    def detach(self, listener: Listener) -> None:
        """Remove ``listener`` from every job (the connection closed)."""
        with self._cond:
            for live in self._live.values():
                if listener in live.listeners:
                    live.listeners.remove(listener)

    def list_jobs(self, limit: int = 100) -> list[dict]:
        return [job_summary(j) for j in self.store.list(limit)]

    def get_result(self, job_id: str) -> tuple[dict, dict[str, np.ndarray]]:
        """``(metadata, arrays)`` of a finished job. Raises JobError("not_found" | "not_ready" | "job_failed")."""
        job = self._require(job_id)
        if job["status"] != "done":
            code = "not_ready" if job["status"] in ("queued", "running") else "job_failed"
            raise JobError(code, f"job {job_id} is {job['status']}" + (f": {job['error']}" if job["error"] else ""))
        return job["metadata"] or {}, self.store.load_result(job_id)

    def queue_position(self, job_id: str) -> int | None:
        with self._cond:
            if job_id in self._queue:
                return self._queue.index(job_id) + (1 if self.current_job else 0)
        return None

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the worker after cancelling the running job; queued jobs stay queued in the store."""
        with self._cond:
            self._stopping = True
            for live in self._live.values():
                if live.job_id == self.current_job:
                    live.cancel_event.set()
            self._cond.notify_all()
        if self._worker.is_alive():
            self._worker.join(timeout)
        self.store.close()

    # ---- worker -----------------------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job_id = self._queue.popleft()
                self.current_job = job_id
                self._announce_positions()
            try:
                self.run_job(job_id)
            except BaseException:  # the worker must survive anything a job does
                log.exception("unexpected failure around job %s", job_id)
            finally:
                with self._cond:
                    self.current_job = None
                    self._live.pop(job_id, None)

    def run_job(self, job_id: str) -> None:
        """Run one job to a terminal status, emitting its events and persisting everything."""
        job = self.store.get(job_id)
        live = self._live.setdefault(job_id, _LiveJob(job_id))
        spec = PIPELINES[job["pipeline"]]
        started = time.time()
        self.store.update(job_id, status="running", started=started)
        self._emit(live, "status", {"job_id": job_id, "status": "running"})

        def on_progress(stage, step, total, losses, eta):
            fields = {"job_id": job_id, "stage": stage, "step": int(step), "total": int(total),
                      "losses": {k: float(v) for k, v in losses.items()}, "eta_s": None if eta is None else float(eta)}
            live.last_progress = fields
            self._emit(live, "progress", fields)

        def on_preview(step, image, decoder):
            fields = {"job_id": job_id, "step": int(step), "decoder": decoder}
            arrays = {"image": np.ascontiguousarray(image)}
            live.last_preview = (fields, arrays)
            self._emit(live, "preview", fields, arrays)

        def on_partial(step, meshes):
            self._emit(live, "partial", {"job_id": job_id, "step": int(step)}, meshes_to_arrays(meshes))

        context = JobContext(device=self.device, models=self.models, cancel_event=live.cancel_event,
                             on_progress=on_progress, on_preview=on_preview, on_partial=on_partial)
        try:
            config = parse_config(spec.config_class, job["params"])
            inputs = inputs_from_arrays(job["pipeline"], spec, self.store.load_inputs(job_id))
            result = spec.run(config, inputs, context)
            arrays = result_to_arrays(result)
            self.store.save_result(job_id, arrays)
            if live.last_preview:
                self.store.save_preview(job_id, live.last_preview[1]["image"])
        except JobCancelled:
            self.store.update(job_id, status="cancelled", finished=time.time())
            self._emit(live, "cancelled", {"job_id": job_id})
            return
        except BaseException as err:  # noqa: BLE001 — every failure becomes a failed job, never a dead worker
            code = error_code(err)
            message = str(err) or type(err).__name__
            if code == "internal":
                log.error("job %s failed:\n%s", job_id, traceback.format_exc())
                message = f"{type(err).__name__}: {message}"
            if code == "out_of_memory" and torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.store.update(job_id, status="failed", finished=time.time(), error=message, error_code=code)
            self._emit(live, "status", {"job_id": job_id, "status": "failed", "error": message})
            self._emit(live, "error", {"job_id": job_id, "code": code, "message": message})
            if not isinstance(err, Exception):
                raise
            return
        finished = time.time()
        timings = {**result.timings, "total": finished - started}
        metadata = {**result.metadata, "job_id": job_id, "timings": timings}
        self.store.update(job_id, status="done", finished=finished, metadata=metadata, timings=timings)
        self._emit(live, "status", {"job_id": job_id, "status": "done"})
        self._emit(live, "result", {"job_id": job_id, "metadata": metadata}, arrays)

    # ---- helpers ----------------------------------------------------------------------------------------------------

    def _require(self, job_id: str) -> dict:
        job = self.store.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            raise JobError("not_found", f"no job with id {job_id!r}")
        return job

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
            position = i + (1 if self.current_job else 0)
            self._emit(live, "status", {"job_id": job_id, "status": "queued", "queue_position": position})

    def _replay_finished(self, job_id: str, listener: Listener) -> None:
        job = self.store.get(job_id)
        fields = {"job_id": job_id, "status": job["status"]}
        if job["error"]:
            fields["error"] = job["error"]
        listener("status", fields, {})
        if job["status"] == "done":
            metadata, arrays = self.get_result(job_id)
            listener("result", {"job_id": job_id, "metadata": metadata}, arrays)
        elif job["status"] == "cancelled":
            listener("cancelled", {"job_id": job_id}, {})
        elif job["status"] == "failed":
            listener("error", {"job_id": job_id, "code": job["error_code"] or "internal", "message": job["error"] or ""}, {})

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
