"""The add-on's session: one :class:`Session` ties the connection, the job bookkeeping and the message handlers
together and pumps the client's events on the main thread.

- :mod:`.connection`: the socket client and the local backend process (their lifecycle, the connection line).
- :mod:`.jobs`: what was submitted, each job's pipeline and result target (persisted in the scene), job rows.
- :mod:`.handlers`: one function per message type, turning events into Blender state (results via
  :mod:`.results`).

Threads: :class:`.core.client.BackendClient` does all socket I/O on its own threads and queues messages;
:meth:`Session.process_events` drains that queue on the main thread. It is called by a ``bpy.app.timers`` callback
(registered in :func:`register`) and can be called directly: Blender in background mode (the ``bpy`` module) runs
no timers, so scripts and tests pump it in a loop. Nothing raised while handling a message escapes it: errors become
``window_manager.latentforge.last_error`` and a line in :attr:`Session.log`.
"""

from __future__ import annotations

import collections
import traceback
import uuid
from typing import Any

import bpy
import numpy as np

from .connection import Connection
from .core import fields, protocol
from .handlers import HANDLERS
from .jobs import JobBook, begin_submit
from .results import ResultTarget, preview
from .runtime import runtime_state, tag_redraw

TIMER_INTERVAL_BUSY_S = 0.05
TIMER_INTERVAL_IDLE_S = 0.25

JOBS_PAGE_SIZE = 50
"""Jobs per page of the Jobs list (Refresh loads one page, Load More the next); :attr:`Session.jobs_page_size`."""


class Session:
    """Connection, jobs and preview of this Blender session (one instance: :func:`get_session`).

    Attributes:
        connection: the client and the local backend (:class:`.connection.Connection`).
        jobs: the job bookkeeping (:class:`.jobs.JobBook`).
        preview_icon: the sidebar's live preview icon.
        log: the last 500 ``(level, text)`` messages.
        jobs_page_size: jobs asked for per page of the Jobs list (:data:`JOBS_PAGE_SIZE`; 1–500).

    All methods run on the main thread. Methods that send raise ``ValueError`` / ``RuntimeError`` /
    ``protocol.ProtocolError`` with a message for the user (operators report it); :meth:`process_events` never
    raises.
    """

    def __init__(self):
        self.log: collections.deque[tuple[str, str]] = collections.deque(maxlen=500)
        self.jobs = JobBook()
        self.connection = Connection(self.report, self.jobs.fail_pending)
        self.preview_icon = preview.PreviewIcon()
        self.jobs_page_size = JOBS_PAGE_SIZE

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

    # -------------------------------------------------------------------------------------------------- sending

    def submit_job(self, pipeline: str, params: dict[str, Any], arrays: dict[str, np.ndarray],
                   target: ResultTarget | None) -> str:
        """Check ``params`` against the connected backend's description of ``pipeline`` and send a ``submit``;
        returns its request id.

        ``target``: what the result needs to find its place, of ``results.RESULT_IMPORTERS[pipeline].target_class``
        (latent_paint: the object to texture; latent_nerf: the sketch's name; shapes: where they go), or None.

        Raises:
            ValueError: a param is outside the backend's range or choices, or the backend lacks ``pipeline``
                (:func:`.core.fields.check_params`; nothing sent).
            protocol.ProtocolError / RuntimeError: like :meth:`.connection.Connection.send`.
        """
        fields.check_params(pipeline, params, self.connection.pipelines)
        request_id = uuid.uuid4().hex
        self.connection.send("submit", {"pipeline": pipeline, "params": params, "request_id": request_id}, arrays)
        self.jobs.add_pending(request_id, pipeline, target)
        begin_submit()
        return request_id

    def cancel(self, job_id: str) -> None:
        """Ask the backend to cancel ``job_id``."""
        self.connection.send("cancel", {"job_id": job_id})

    def list_jobs(self, cursor: str | None = None) -> None:
        """Ask for one page of the job list (:attr:`jobs_page_size` jobs): without ``cursor`` the newest page, which
        replaces ``window_manager.latentforge.jobs``; with a ``jobs.next_cursor``, the next (older) page, appended."""
        fields_ = {"limit": int(self.jobs_page_size)}
        if cursor is not None:
            fields_["cursor"] = cursor
        self.connection.send("list_jobs", fields_)
        self.jobs.list_sent(cursor)

    def load_more_jobs(self) -> None:
        """Ask for the page after the rows shown (``window_manager.latentforge.jobs_next_cursor``).

        Raises:
            ValueError: the list is complete (no next page).
        """
        cursor = runtime_state().jobs_next_cursor
        if not cursor:
            raise ValueError("the job list is complete: there is no further page")
        self.list_jobs(cursor)

    def delete_job(self, job_id: str) -> None:
        """Ask the backend to delete a finished job and its files; ``deleted`` removes its row (or an ``error``
        says why not)."""
        self.connection.send("delete_job", {"job_id": job_id})
        self.jobs.deleting.add(job_id)

    def import_job(self, job_id: str) -> None:
        """Ask for a finished job's result and apply it when it arrives."""
        self.jobs.wanted_results.add(job_id)
        self.connection.send("get_result", {"job_id": job_id})

    # ------------------------------------------------------------------------------------------ event pump

    def process_events(self, max_events: int = 256) -> int:
        """Handle up to ``max_events`` queued messages on the main thread; returns how many were handled.

        Never raises: a failure while handling a message is reported (``last_error``) and the next one is handled.
        """
        handled = 0
        try:
            self.connection.poll_local_backend()
            client = self.connection.client
            if client is None:
                return 0
            self.connection.sync_status()
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

    def _handle(self, msg: protocol.Message) -> None:
        handler = HANDLERS.get(msg.type)
        if handler is None:
            self.log.append(("INFO", f"ignored message {msg.type}"))
            return
        handler(self, msg.fields, msg.arrays)

    def shutdown(self) -> None:
        """Close the client, stop the backend this session started, drop the preview (called on unregister)."""
        self.connection.shutdown()
        self.preview_icon.remove()
        try:
            preview.remove_preview_object()
        except (AttributeError, ReferenceError, RuntimeError):  # bpy.data not writable right now: keep it
            pass


# --------------------------------------------------------------------------------------------- module API

_session: Session | None = None


def get_session() -> Session:
    """The session of this Blender process (created on register). Raises RuntimeError when not registered."""
    if _session is None:
        raise RuntimeError("the LatentForge add-on is not registered")
    return _session


def _timer() -> float | None:
    if _session is None:
        return None  # unregistered: stop the timer
    try:
        handled = _session.process_events()
    except Exception:  # noqa: BLE001 — process_events already catches; belt and braces for the timer
        traceback.print_exc()
        handled = 0
    busy = handled or (_session.connection.client is not None and _session.jobs.live_jobs)
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
