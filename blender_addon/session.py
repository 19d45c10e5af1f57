"""The add-on's glue: one :class:`Session` owns the backend client, the local backend process and the job
bookkeeping, and turns the client's messages into Blender state on the main thread.

Threads: :class:`.core.client.BackendClient` does all socket I/O on its own threads and queues messages;
:meth:`Session.process_events` drains that queue on the main thread. It is called by a ``bpy.app.timers`` callback
(registered in :func:`register`) and can be called directly: Blender in background mode (the ``bpy`` module) runs
no timers, so scripts and tests pump it in a loop. Nothing raised while handling a message escapes it: errors become
``window_manager.latentforge.last_error`` and a line in :attr:`Session.log`.
"""

from __future__ import annotations

import collections
import ipaddress
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bpy
import numpy as np

from . import mesh_io
from .core import paths, protocol
from .core.backend_process import LocalBackend
from .core.client import BackendClient

TIMER_INTERVAL_BUSY_S = 0.05
TIMER_INTERVAL_IDLE_S = 0.25
MAX_SAVED_JOB_TARGETS = 200
SCENE_JOBS_KEY = "latentforge_jobs"
"""Scene ID property: job id -> {"pipeline", **target.to_record()} (latent_paint: "object", "n_vertices", "uv_map";
latent_nerf: "sketch"; shape_ldm: "label", "location", "gap", "image"; shape_variations: "source", "origin",
"start_x", "gap"; shape_interpolate: "source_a", "source_b"), so that a result can find its object (or its place)
after Blender restarted (saved with the .blend)."""

JobTarget = Any
"""A pipeline's per-job target, of ``mesh_io.RESULT_IMPORTERS[pipeline].target_class``: ``mesh_io.JobTarget``
(latent_paint), ``GenerateTarget`` (latent_nerf), ``ShapeTarget`` / ``VariationsTarget`` / ``InterpolateTarget``
(the shape pipelines)."""


@dataclass
class PendingRequest:
    """A ``submit`` sent but not yet answered by ``accepted``."""

    request_id: str
    pipeline: str
    target: JobTarget | None
    submitted: float = field(default_factory=time.monotonic)


def format_eta(eta_s: float | None) -> str:
    """``"ETA 1m 05s"`` / ``"ETA 42s"`` / ``""`` (unknown or negative seconds)."""
    if eta_s is None or eta_s < 0:
        return ""
    eta = int(round(eta_s))
    if eta >= 3600:
        return f"ETA {eta // 3600}h {eta % 3600 // 60:02d}m"
    if eta >= 60:
        return f"ETA {eta // 60}m {eta % 60:02d}s"
    return f"ETA {eta}s"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def runtime_state():
    """``window_manager.latentforge`` (the runtime PropertyGroup)."""
    wm = bpy.context.window_manager or bpy.data.window_managers[0]
    return wm.latentforge


def tag_redraw() -> None:
    """Ask every 3D viewport's sidebar to redraw (no-op in background mode)."""
    wm = bpy.context.window_manager or (bpy.data.window_managers[0] if bpy.data.window_managers else None)
    if wm is None:
        return
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


class Session:
    """Connection, local backend and jobs of this Blender session (one instance: :func:`get_session`).

    All methods run on the main thread. Methods that start something raise ``ValueError`` / ``OSError`` /
    ``FileNotFoundError`` with a message for the user (operators report it); :meth:`process_events` never raises.
    """

    def __init__(self):
        self.client: BackendClient | None = None
        self.local_backend: LocalBackend | None = None
        self.log: collections.deque[tuple[str, str]] = collections.deque(maxlen=500)
        self.targets: dict[str, JobTarget] = {}
        self.pipelines: dict[str, str] = {}
        self.pending: collections.OrderedDict[str, PendingRequest] = collections.OrderedDict()
        self.live_jobs: set[str] = set()
        self.applied: set[str] = set()
        self.wanted_results: set[str] = set()
        self._token_file: str = ""
        self._queued_sends: list[tuple[str, dict, dict]] = []
        self._backend_exit_reported = False
        self._fallback_address: tuple[str, int] | None = None
        self._previews = None

    # ------------------------------------------------------------------------------------------------ reporting

    def report(self, level: str, text: str) -> None:
        """Record a message: ``level`` "INFO" -> ``last_info``, "WARNING"/"ERROR" -> ``last_error``; printed too."""
        self.log.append((level, text))
        print(f"LatentForge {level}: {text}")
        try:
            state = runtime_state()
            if level == "INFO":
                state.last_info = text
            else:
                state.last_error = text
        except (AttributeError, IndexError):  # add-on half-registered: keep the log line only
            pass

    # ----------------------------------------------------------------------------------------------- connection

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.connected

    def ensure_connected(self, prefs) -> None:
        """Connect (or start the local backend) unless a connection is up or under way."""
        if self.client is not None and self.client.running:
            return
        if self.local_backend is not None and self.local_backend.state == "starting":
            return
        self.connect(prefs)

    def connect(self, prefs, start_local: bool | None = None) -> None:
        """(Re)connect with the add-on preferences ``prefs``.

        LOCAL mode with ``start_local`` (default: ``prefs.auto_start``): start the backend unless the one this
        session started still runs, and connect when it prints its address. Otherwise connect to
        ``prefs.host:prefs.port``.

        Raises:
            FileNotFoundError / ValueError: no token file, a bad interpreter/folder, or a remote host while
                Blender's "Allow Online Access" is off.
            OSError: the backend process could not be spawned.
        """
        self.close_client()
        self._token_file = bpy.path.abspath(prefs.token_file) if prefs.token_file else str(paths.token_path())
        start_local = prefs.auto_start if start_local is None else start_local
        if prefs.backend_mode == "LOCAL" and start_local:
            backend = self.local_backend
            if backend is not None and backend.state == "listening":
                self._create_client(*backend.address)
            elif backend is None or backend.state in ("exited", "not_started"):
                self.start_local_backend(prefs)
            return
        host = prefs.host.strip()
        if not _is_loopback(host) and not getattr(bpy.app, "online_access", True):
            raise ValueError(f"{host} is not this computer and Blender's 'Allow Online Access' is off "
                             "(Preferences > System > Network), or use an SSH tunnel to 127.0.0.1")
        self._create_client(host, prefs.port)

    def start_local_backend(self, prefs) -> None:
        """Start ``<python> -m backend serve`` from the preferences; the client connects once it listens."""
        if self.local_backend is not None and self.local_backend.state in ("starting", "listening"):
            raise ValueError(f"a backend started by Blender is already running (pid {self.local_backend.process.pid})")
        python = bpy.path.abspath(prefs.python_path) if prefs.python_path else ""
        repo_root = bpy.path.abspath(prefs.repo_root) if prefs.repo_root else ""
        if not python or not repo_root:
            raise ValueError("set 'Backend Python' and 'Backend Folder' in the add-on preferences "
                             "(install.py fills them in), or switch to Remote mode")
        self._token_file = bpy.path.abspath(prefs.token_file) if prefs.token_file else str(paths.token_path())
        paths.ensure_token(Path(self._token_file))  # our own backend: make its secret if install.py did not
        data_dir = bpy.path.abspath(prefs.data_dir) if prefs.data_dir else None
        backend = LocalBackend(python, repo_root, prefs.host.strip(), prefs.port, self._token_file, data_dir=data_dir)
        backend.start()
        self.local_backend = backend
        self._fallback_address = (prefs.host.strip(), int(prefs.port))
        self._backend_exit_reported = False
        self._set_connection_status(f"Starting backend (pid {backend.process.pid})…", connected=False)
        self.report("INFO", "starting the local backend: " + " ".join(backend.command()))

    def stop_local_backend(self) -> int | None:
        """Stop the backend this session started (if any); returns its exit code."""
        if self.local_backend is None:
            return None
        self.close_client()
        code = self.local_backend.stop()
        self.local_backend = None
        self._set_connection_status("Backend stopped", connected=False)
        return code

    def _create_client(self, host: str, port: int) -> None:
        token = paths.read_token(Path(self._token_file))
        client = BackendClient(host, int(port), token, client_name=f"blender {bpy.app.version_string} / latentforge")
        client.start()
        self.client = client
        self._set_connection_status(f"Connecting to {host}:{port}…", connected=False)
        queued, self._queued_sends = self._queued_sends, []
        for msg_type, fields, arrays in queued:
            client.send(msg_type, fields, arrays)

    def close_client(self) -> None:
        """Close the connection (no reconnect); the backend process, if any, keeps running."""
        if self.client is not None:
            self.client.close()
            self.client = None
        self._set_connection_status("Not connected", connected=False)

    def shutdown(self) -> None:
        """Close the client and stop the backend this session started (called on unregister)."""
        self.close_client()
        if self.local_backend is not None:
            self.local_backend.stop()
            self.local_backend = None
        self._previews_remove()
        try:
            mesh_io.remove_preview_object()
        except (AttributeError, ReferenceError, RuntimeError):  # bpy.data not writable right now: keep it
            pass

    def _set_connection_status(self, text: str, connected: bool) -> None:
        try:
            state = runtime_state()
            state.connection_status = text
            state.connected = connected
            if not connected:
                state.backend_info = ""
        except (AttributeError, IndexError):
            pass

    # -------------------------------------------------------------------------------------------------- sending

    def _send(self, msg_type: str, fields: dict, arrays: dict | None = None) -> None:
        """Validate and queue a message now; while the local backend starts, keep it until the client exists.

        Raises:
            protocol.ProtocolError: the message is invalid (nothing queued).
            RuntimeError: no connection is up or under way.
        """
        if self.client is not None and self.client.running:
            self.client.send(msg_type, fields, arrays)
        elif self.local_backend is not None and self.local_backend.state == "starting":
            protocol.encode_message(msg_type, fields, arrays)  # validate now, on the caller
            self._queued_sends.append((msg_type, fields, dict(arrays or {})))
        else:
            raise RuntimeError("not connected to a LatentForge backend (press Connect)")

    def submit_job(self, pipeline: str, params: dict[str, Any], arrays: dict[str, np.ndarray],
                   target: JobTarget | None) -> str:
        """Send a ``submit``; returns its request id.

        ``target``: what the result needs to find its place, of the pipeline's ``mesh_io.RESULT_IMPORTERS[...]
        .target_class`` (latent_paint: the object to texture; latent_nerf: the sketch's name), or None.

        Raises like :meth:`_send`.
        """
        request_id = uuid.uuid4().hex
        self._send("submit", {"pipeline": pipeline, "params": params, "request_id": request_id}, arrays)
        self.pending[request_id] = PendingRequest(request_id, pipeline, target)
        state = runtime_state()
        state.active_job_id = ""
        state.progress = 0.0
        state.eta_s = -1.0
        state.stage = "submitted"
        state.last_error = ""
        return request_id

    def cancel(self, job_id: str) -> None:
        """Ask the backend to cancel ``job_id``."""
        self._send("cancel", {"job_id": job_id})

    def list_jobs(self, limit: int = 50) -> None:
        """Ask for the job list (fills ``window_manager.latentforge.jobs``)."""
        self._send("list_jobs", {"limit": int(limit)})

    def import_job(self, job_id: str) -> None:
        """Ask for a finished job's result and apply it when it arrives."""
        self.wanted_results.add(job_id)
        self._send("get_result", {"job_id": job_id})

    # ------------------------------------------------------------------------------------------ job targets

    def remember_target(self, job_id: str, pipeline: str, target: JobTarget | None) -> None:
        """Record ``job_id``'s pipeline and target, in memory and in the scene (``SCENE_JOBS_KEY``)."""
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

    def target_for(self, job_id: str, pipeline: str = "latent_paint") -> JobTarget | None:
        """The target recorded for ``job_id``: in memory, else in any scene's saved mapping (read with
        ``pipeline``'s target class), else None."""
        if job_id in self.targets:
            return self.targets[job_id]
        importer = mesh_io.RESULT_IMPORTERS.get(pipeline)
        for scene in bpy.data.scenes:
            rec = scene.get(SCENE_JOBS_KEY, {}).get(job_id)
            if rec is not None and importer is not None and str(rec.get("pipeline", pipeline)) == pipeline:
                try:
                    return importer.target_class.from_record(rec)
                except (KeyError, TypeError, ValueError):
                    return None
        return None

    # ------------------------------------------------------------------------------------------ event pump

    def process_events(self, max_events: int = 256) -> int:
        """Handle up to ``max_events`` queued messages on the main thread; returns how many were handled.

        Never raises: a failure while handling a message is reported (``last_error``) and the next one is handled.
        """
        handled = 0
        try:
            self._poll_local_backend()
            client = self.client
            if client is None:
                return 0
            self._sync_connection_state(client)
            events = client.poll_events(max_events)
            last_preview = {m.fields.get("job_id"): i for i, m in enumerate(events) if m.type == "preview"}
            for i, msg in enumerate(events):
                if msg.type == "preview" and last_preview.get(msg.fields.get("job_id")) != i:
                    continue  # a newer preview of the same job is in this batch
                try:
                    self._handle(msg)
                except Exception as e:  # noqa: BLE001 — the timer must survive anything
                    traceback.print_exc()
                    self.report("ERROR", f"while handling '{msg.type}': {type(e).__name__}: {e}")
                handled += 1
            if handled:
                tag_redraw()
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            self.report("ERROR", f"LatentForge event loop: {type(e).__name__}: {e}")
        return handled

    def _sync_connection_state(self, client: BackendClient) -> None:
        """Restore the status line after a file load replaced the window manager (and its runtime state)."""
        state = runtime_state()
        if client.connected and not state.connected and client.welcome is not None:
            self._set_connection_status(f"Connected to {client.host}:{client.port}", connected=True)
            state.backend_info = f"{client.welcome.get('device', '?')} · backend " \
                                 f"{client.welcome.get('server_version', '?')}"

    def _poll_local_backend(self) -> None:
        backend = self.local_backend
        if backend is None:
            return
        state = backend.state
        if state == "listening" and self.client is None:
            try:
                self._create_client(*backend.address)
            except (OSError, ValueError) as e:
                self.report("ERROR", f"cannot connect to the local backend: {e}")
        elif state == "exited" and not self._backend_exit_reported:
            self._backend_exit_reported = True
            tail = " | ".join(line for line in backend.log_tail(5) if line.strip())
            self.report("ERROR", f"the local backend exited with code {backend.returncode}: {tail}")
            if self.client is None and self._fallback_address is not None:
                # Most often the port is taken by a backend that already runs (e.g. from a terminal): use it.
                host, port = self._fallback_address
                try:
                    self._create_client(host, port)
                    self.report("WARNING", f"the local backend did not start ({tail}); trying {host}:{port}")
                except (OSError, ValueError) as e:
                    self._set_connection_status("Backend not running", connected=False)
                    self._queued_sends.clear()
                    self._fail_pending(f"the local backend did not start ({e})")

    def _fail_pending(self, why: str) -> None:
        if self.pending:
            self.pending.clear()
            state = runtime_state()
            state.stage = f"failed: {why}"

    def _handle(self, msg: protocol.Message) -> None:
        handler = getattr(self, "_on_" + msg.type, None)
        if handler is None:
            self.log.append(("INFO", f"ignored message {msg.type}"))
            return
        handler(msg.fields, msg.arrays)

    # -- synthetic client events

    def _on_client_connected(self, f: dict, _arrays: dict) -> None:
        self._set_connection_status(f"Connected to {f.get('host')}:{f.get('port')}", connected=True)
        runtime_state().backend_info = f"{f.get('device', '?')} · backend {f.get('server_version', '?')}"
        self.report("INFO", f"connected to the backend at {f.get('host')}:{f.get('port')} ({f.get('device')})")
        for job_id in sorted(self.live_jobs):  # resume the streams of jobs that were running when we lost it
            self.client.attach(job_id)
        self.client.list_jobs(50)

    def _on_client_disconnected(self, f: dict, _arrays: dict) -> None:
        retry = f" — reconnecting in {f['retry_in_s']:.1f}s" if f.get("will_retry") else ""
        self._set_connection_status(f"Disconnected: {f.get('reason')}{retry}", connected=False)
        self.report("WARNING", f"disconnected from the backend: {f.get('reason')}")

    def _on_client_error(self, f: dict, _arrays: dict) -> None:
        if f.get("will_retry"):
            self._set_connection_status(f"{f.get('message')} — retrying in {f.get('retry_in_s', 0):.1f}s",
                                        connected=self.connected)
            self.log.append(("WARNING", str(f.get("message"))))
        else:
            if not self.connected:
                self._set_connection_status("Not connected", connected=False)
            self.report("ERROR", str(f.get("message")))

    # -- server messages

    def _on_welcome(self, f: dict, _arrays: dict) -> None:  # the client turns welcome into client_connected
        pass

    def _on_pong(self, f: dict, _arrays: dict) -> None:
        self.log.append(("INFO", f"pong {f.get('nonce', '')}"))

    def _on_accepted(self, f: dict, _arrays: dict) -> None:
        job_id = f["job_id"]
        req = self.pending.pop(f.get("request_id", ""), None)
        if req is not None:
            self.remember_target(job_id, req.pipeline, req.target)
        self.live_jobs.add(job_id)
        state = runtime_state()
        state.active_job_id = job_id
        state.progress = 0.0
        state.stage = "queued" + (f" (position {f['queue_position']})" if f.get("queue_position") else "")
        self._update_job_row(job_id, status="queued", pipeline=req.pipeline if req else "")

    def _on_status(self, f: dict, _arrays: dict) -> None:
        job_id, status = f["job_id"], f["status"]
        self._update_job_row(job_id, status=status, error=f.get("error", ""))
        state = runtime_state()
        if status in ("failed", "cancelled"):
            self.live_jobs.discard(job_id)
            mesh_io.remove_preview_object(job_id)
        if job_id != state.active_job_id:
            return
        if status == "queued":
            pos = f.get("queue_position")
            state.stage = "queued" + (f" (position {pos})" if pos else "")
        elif status == "running":
            state.stage = "running"
        elif status == "done":
            state.progress = 1.0
            state.stage = "done, receiving the result"
        elif status == "failed":
            state.stage = "failed"
            state.eta_s = -1.0
            self.report("ERROR", f"job {job_id} failed: {f.get('error', 'unknown error')}")
        elif status == "cancelled":
            self._finish_active("cancelled")

    def _on_progress(self, f: dict, _arrays: dict) -> None:
        state = runtime_state()
        if f["job_id"] != state.active_job_id:
            return
        total = max(int(f["total"]), 1)
        state.progress = min(max(int(f["step"]) / total, 0.0), 1.0)
        state.stage = f"{f['stage']} {f['step']}/{f['total']}"
        eta = f.get("eta_s")
        state.eta_s = -1.0 if eta is None else float(eta)

    def _on_preview(self, f: dict, arrays: dict) -> None:
        if f["job_id"] != runtime_state().active_job_id:
            return
        image = arrays["image"]
        mesh_io.update_preview_image(image)
        self._update_preview_icon(image)

    def _on_partial(self, f: dict, arrays: dict) -> None:
        """Show the active job's intermediate mesh(es) as the one temporary object (``mesh_io.PREVIEW_OBJECT_NAME``);
        the pipeline's importer turns a partial into that one mesh (``mesh_io.preview_mesh``: shape samples are
        placed like their final objects and joined)."""
        job_id = f["job_id"]
        if job_id != runtime_state().active_job_id:
            self.log.append(("INFO", f"partial mesh of job {job_id} at step {f['step']} not shown (not the active job)"))
            return
        pipeline = self.pipelines.get(job_id, "")
        v_pos, t_pos_idx, v_color = mesh_io.preview_mesh(pipeline, bpy.context, arrays,
                                                         self.target_for(job_id, pipeline) if pipeline else None)
        obj = mesh_io.update_preview_object(bpy.context, job_id, v_pos, t_pos_idx, v_color)
        text = f"partial mesh of job {job_id} at step {f['step']}: {len(obj.data.vertices)} vertices in {obj.name!r}"
        self.log.append(("INFO", text))

    def _on_result(self, f: dict, arrays: dict) -> None:
        job_id = f["job_id"]
        self.live_jobs.discard(job_id)
        wanted = job_id in self.wanted_results
        if not wanted and (job_id in self.applied or job_id not in self.pipelines):  # not submitted by us
            self.log.append(("INFO", f"result of job {job_id} not applied (already applied or not ours)"))
            return
        self.wanted_results.discard(job_id)
        mesh_io.remove_preview_object(job_id)  # the final result replaces the intermediate mesh
        metadata = f.get("metadata") or {}
        pipeline = self.pipelines.get(job_id) or str(metadata.get("pipeline", "latent_paint"))
        try:
            report = self._import_result(job_id, pipeline, arrays, metadata)
        except Exception:
            if job_id == runtime_state().active_job_id:
                self._finish_active("failed: the result could not be imported")
            raise
        self.applied.add(job_id)
        self._update_job_row(job_id, status="done", pipeline=pipeline)
        state = runtime_state()
        if job_id == state.active_job_id:
            self._finish_active("done")
        self.report("INFO", report.message)
        if report.n_uv_conflicts:
            self.report("WARNING", f"{report.n_uv_conflicts} face corners of {report.obj.name!r} got two different "
                                   "UVs from xatlas (a seam crosses a quad/n-gon); they keep one of them. "
                                   "Use Smart UV Project to avoid this")

    def _import_result(self, job_id: str, pipeline: str, arrays: dict, metadata: dict) -> mesh_io.ApplyReport:
        """Apply a result through ``mesh_io.RESULT_IMPORTERS[pipeline]``.

        Raises:
            ValueError: no importer for ``pipeline``, a required array is missing, or the importer refused the data.
        """
        importer = mesh_io.RESULT_IMPORTERS.get(pipeline)
        if importer is None:
            raise ValueError(f"result of job {job_id} comes from pipeline {pipeline!r}, which this add-on cannot "
                             f"import (known: {', '.join(sorted(mesh_io.RESULT_IMPORTERS))})")
        missing = [name for name in importer.required_arrays if name not in arrays]
        if missing:
            raise ValueError(f"result of job {job_id} (pipeline {pipeline}) lacks {', '.join(missing)}; "
                             "cannot apply it")
        return importer.apply(bpy.context, job_id, arrays, metadata, self.target_for(job_id, pipeline), pipeline)

    def _on_error(self, f: dict, _arrays: dict) -> None:
        code, message = f.get("code", "error"), f.get("message", "")
        job_id = f.get("job_id")
        state = runtime_state()
        if job_id:
            self.live_jobs.discard(job_id)
            self.wanted_results.discard(job_id)
            mesh_io.remove_preview_object(job_id)
            self._update_job_row(job_id, error=message)
            if job_id == state.active_job_id:
                state.stage = "failed"
                state.eta_s = -1.0
        elif f.get("request_id") in self.pending:  # a rejected submit: no job id yet, the backend echoes ours
            self.pending.pop(f["request_id"])
            state.stage = "failed"
        self.report("ERROR", f"backend: {code}: {message}")

    def _on_cancelled(self, f: dict, _arrays: dict) -> None:
        job_id = f["job_id"]
        self.live_jobs.discard(job_id)
        mesh_io.remove_preview_object(job_id)
        self._update_job_row(job_id, status="cancelled")
        if job_id == runtime_state().active_job_id:
            self._finish_active("cancelled")
        self.report("INFO", f"job {job_id} cancelled")

    def _on_jobs(self, f: dict, _arrays: dict) -> None:
        rows = runtime_state().jobs
        rows.clear()
        for job in f.get("jobs", []):
            row = rows.add()
            row.name = row.job_id = str(job.get("job_id", ""))
            row.pipeline = str(job.get("pipeline") or "")
            row.status = str(job.get("status") or "")
            row.prompt = str(job.get("prompt") or "")
            row.error = str(job.get("error") or "")
            created = job.get("created")
            row.created = time.strftime("%Y-%m-%d %H:%M", time.localtime(created)) \
                if isinstance(created, (int, float)) else str(created or "")

    def _finish_active(self, stage: str) -> None:
        state = runtime_state()
        state.stage = stage
        state.active_job_id = ""
        state.eta_s = -1.0
        if stage != "done":
            state.progress = 0.0

    def _update_job_row(self, job_id: str, status: str | None = None, pipeline: str = "", error: str = "") -> None:
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

    # ------------------------------------------------------------------------------------------------ preview

    def _update_preview_icon(self, image: np.ndarray) -> None:
        if self._previews is None:
            import bpy.utils.previews

            self._previews = bpy.utils.previews.new()
        preview = self._previews.get("preview") or self._previews.new("preview")
        h, w = image.shape[:2]
        preview.image_size = (w, h)
        rgba = np.ones((h, w, 4), dtype=np.float32)
        rgba[..., :3] = image[::-1].astype(np.float32) / 255.0
        preview.image_pixels_float.foreach_set(rgba.reshape(-1))

    def preview_icon_id(self) -> int:
        """Icon id of the live preview (0 when there is none)."""
        if self._previews is None or "preview" not in self._previews:
            return 0
        return self._previews["preview"].icon_id

    def _previews_remove(self) -> None:
        if self._previews is not None:
            import bpy.utils.previews

            bpy.utils.previews.remove(self._previews)
            self._previews = None


# --------------------------------------------------------------------------------------------- module API

_session: Session | None = None


def get_session() -> Session:
    """The session of this Blender process (created on register). Raises RuntimeError when not registered."""
    if _session is None:
        raise RuntimeError("the LatentForge add-on is not registered")
    return _session


def _timer() -> float:
    if _session is None:
        return None  # unregistered: stop the timer
    try:
        handled = _session.process_events()
    except Exception:  # noqa: BLE001 — process_events already catches; belt and braces for the timer
        traceback.print_exc()
        handled = 0
    busy = handled or (_session.client is not None and _session.live_jobs)
    return TIMER_INTERVAL_BUSY_S if busy else TIMER_INTERVAL_IDLE_S


def register() -> None:
    global _session
    _session = Session()
    if not bpy.app.timers.is_registered(_timer):
        bpy.app.timers.register(_timer, first_interval=TIMER_INTERVAL_IDLE_S, persistent=True)


def unregister() -> None:
    global _session
    if bpy.app.timers.is_registered(_timer):
        bpy.app.timers.unregister(_timer)
    if _session is not None:
        _session.shutdown()
        _session = None
