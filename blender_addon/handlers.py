"""Message handlers: each turns one client event or server message into Blender state (bpy side; main thread only).

:data:`HANDLERS` maps a message type to ``handler(session, fields, arrays)``; :meth:`.session.Session.process_events`
dispatches through it. Results and partial meshes go through :mod:`.results` (one importer per pipeline: no
per-pipeline branches here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import bpy

from . import jobs, results
from .core.client import EVENT_CONNECTED, EVENT_DISCONNECTED, EVENT_ERROR
from .results import preview
from .runtime import runtime_state

if TYPE_CHECKING:  # the session calls these handlers; only its type is needed here
    from .session import Session


# --------------------------------------------------------------------------------- synthetic client events

def on_client_connected(sess: Session, f: dict, _arrays: dict) -> None:
    """Show the connection, re-attach the streams of jobs that were running, ask for the job list."""
    sess.connection.show_connected(f.get("host"), f.get("port"), f)
    sess.report("INFO", f"connected to the backend at {f.get('host')}:{f.get('port')} ({f.get('device')})")
    client = sess.connection.client
    for job_id in sorted(sess.jobs.live_jobs):  # resume the streams of jobs that were running when we lost it
        client.attach(job_id)
    sess.jobs.list_requests.clear()  # requests of a lost connection get no answer
    sess.jobs.deleting.clear()
    sess.list_jobs()


def on_client_disconnected(sess: Session, f: dict, _arrays: dict) -> None:
    """Show the disconnection (and when the client retries)."""
    retry = f" — reconnecting in {f['retry_in_s']:.1f}s" if f.get("will_retry") else ""
    sess.connection.set_status(f"Disconnected: {f.get('reason')}{retry}", connected=False)
    sess.report("WARNING", f"disconnected from the backend: {f.get('reason')}")


def on_client_error(sess: Session, f: dict, _arrays: dict) -> None:
    """A connection error: a status line while the client retries, else an error."""
    if f.get("will_retry"):
        sess.connection.set_status(f"{f.get('message')} — retrying in {f.get('retry_in_s', 0):.1f}s",
                                   connected=sess.connection.connected)
        sess.log.append(("WARNING", str(f.get("message"))))
    else:
        if not sess.connection.connected:
            sess.connection.set_status("Not connected", connected=False)
        sess.report("ERROR", str(f.get("message")))


# ---------------------------------------------------------------------------------------- server messages

def on_welcome(sess: Session, f: dict, _arrays: dict) -> None:
    """Nothing: the client turns ``welcome`` into ``client_connected`` (and keeps its fields)."""


def on_pong(sess: Session, f: dict, _arrays: dict) -> None:
    """Log the answer to a ping."""
    sess.log.append(("INFO", f"pong {f.get('nonce', '')}"))


def on_accepted(sess: Session, f: dict, _arrays: dict) -> None:
    """A submit became a job: record its target, make it the active job."""
    job_id = f["job_id"]
    req = sess.jobs.accept(job_id, f.get("request_id", ""))
    state = runtime_state()
    state.active_job_id = job_id
    state.progress = 0.0
    state.stage = "queued" + (f" (position {f['queue_position']})" if f.get("queue_position") else "")
    jobs.update_job_row(job_id, status="queued", pipeline=req.pipeline if req else "")


def on_status(sess: Session, f: dict, _arrays: dict) -> None:
    """A job's status changed: its row; the active job's line; a failed/cancelled job's preview object goes."""
    job_id, status = f["job_id"], f["status"]
    jobs.update_job_row(job_id, status=status, error=f.get("error", ""))
    state = runtime_state()
    if status in ("failed", "cancelled"):
        sess.jobs.live_jobs.discard(job_id)
        preview.remove_preview_object(job_id)
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
        sess.report("ERROR", f"job {job_id} failed: {f.get('error', 'unknown error')}")
    elif status == "cancelled":
        jobs.finish_active("cancelled")


def on_progress(sess: Session, f: dict, _arrays: dict) -> None:
    """The active job's progress bar, stage and ETA."""
    state = runtime_state()
    if f["job_id"] != state.active_job_id:
        return
    total = max(int(f["total"]), 1)
    state.progress = min(max(int(f["step"]) / total, 0.0), 1.0)
    state.stage = f"{f['stage']} {f['step']}/{f['total']}"
    eta = f.get("eta_s")
    state.eta_s = -1.0 if eta is None else float(eta)


def on_preview(sess: Session, f: dict, arrays: dict) -> None:
    """The active job's preview image: into "LatentForge Preview" and the panel's icon."""
    if f["job_id"] != runtime_state().active_job_id:
        return
    image = arrays["image"]
    preview.update_preview_image(image)
    sess.preview_icon.update(image)


def on_partial(sess: Session, f: dict, arrays: dict) -> None:
    """Show the active job's intermediate mesh(es) as the one temporary object (``preview.PREVIEW_OBJECT_NAME``);
    the pipeline's importer turns a partial into that one mesh (shape samples are placed like their final objects
    and joined)."""
    job_id = f["job_id"]
    if job_id != runtime_state().active_job_id:
        sess.log.append(("INFO", f"partial mesh of job {job_id} at step {f['step']} not shown (not the active job)"))
        return
    pipeline = sess.jobs.pipelines.get(job_id, "")
    target = sess.jobs.target_for(job_id, pipeline) if pipeline else None
    v_pos, t_pos_idx, v_color = results.preview_mesh(bpy.context, pipeline, arrays, target)
    obj = preview.update_preview_object(bpy.context, job_id, v_pos, t_pos_idx, v_color)
    sess.log.append(("INFO", f"partial mesh of job {job_id} at step {f['step']}: {len(obj.data.vertices)} vertices "
                             f"in {obj.name!r}"))


def on_result(sess: Session, f: dict, arrays: dict) -> None:
    """Apply a result (ours, or asked for with Import) through :func:`.results.apply_result`; it replaces the
    preview object."""
    job_id = f["job_id"]
    book = sess.jobs
    book.live_jobs.discard(job_id)
    wanted = job_id in book.wanted_results
    if not wanted and (job_id in book.applied or job_id not in book.pipelines):  # not submitted by us
        sess.log.append(("INFO", f"result of job {job_id} not applied (already applied or not ours)"))
        return
    book.wanted_results.discard(job_id)
    preview.remove_preview_object(job_id)  # the final result replaces the intermediate mesh
    metadata = f.get("metadata") or {}
    pipeline = book.pipelines.get(job_id) or str(metadata.get("pipeline", "latent_paint"))
    try:
        report = results.apply_result(bpy.context, job_id, pipeline, arrays, metadata,
                                      book.target_for(job_id, pipeline))
    except Exception:
        if job_id == runtime_state().active_job_id:
            jobs.finish_active("failed: the result could not be imported")
        raise
    book.applied.add(job_id)
    jobs.update_job_row(job_id, status="done", pipeline=pipeline)
    if job_id == runtime_state().active_job_id:
        jobs.finish_active("done")
    sess.report("INFO", report.message)
    if report.n_uv_conflicts:
        sess.report("WARNING", f"{report.n_uv_conflicts} face corners of {report.obj.name!r} got two different "
                               "UVs from xatlas (a seam crosses a quad/n-gon); they keep one of them. "
                               "Use Smart UV Project to avoid this")


def on_error(sess: Session, f: dict, _arrays: dict) -> None:
    """A backend error: an answer to a request about a job (cancel, delete, get_result), a job's failure (its row,
    its preview, the active line), or a rejected submit."""
    code, message = f.get("code", "error"), f.get("message", "")
    job_id = f.get("job_id")
    if job_id and code in _JOB_REQUEST_ERRORS:
        _JOB_REQUEST_ERRORS[code](sess, job_id, message)
        return
    state = runtime_state()
    if job_id:
        sess.jobs.live_jobs.discard(job_id)
        sess.jobs.wanted_results.discard(job_id)
        sess.jobs.deleting.discard(job_id)
        preview.remove_preview_object(job_id)
        jobs.update_job_row(job_id, error=message)
        if job_id == state.active_job_id:
            state.stage = "failed"
            state.eta_s = -1.0
    elif f.get("request_id") in sess.jobs.pending:  # a rejected submit: no job id yet, the backend echoes ours
        sess.jobs.pending.pop(f["request_id"])
        state.stage = "failed"
    sess.report("ERROR", f"backend: {code}: {message}")


def _cancel_refused(sess: Session, job_id: str, message: str, code: str) -> None:
    """``not_attached`` / ``job_finished``: the cancel did nothing; the job, its row and the active line stay as
    its own events left them (a job that finished before the cancel took effect already got its ``result``)."""
    if code == "job_finished":
        text = f"job {job_id} has already finished; there is nothing to cancel"
    else:
        text = (f"job {job_id} was started by another client and cannot be cancelled from this connection "
                f"(the backend says: {message})")
    sess.report("WARNING", text)


def _not_found(sess: Session, job_id: str, message: str) -> None:
    """The backend has no such job (deleted meanwhile, or a stale row): its row, target and preview go."""
    deleting = job_id in sess.jobs.deleting
    sess.jobs.forget(job_id)
    preview.remove_preview_object(job_id)
    removed = jobs.remove_job_row(job_id)
    if job_id == runtime_state().active_job_id:
        jobs.finish_active("failed: the backend no longer has this job")
    if deleting or removed:
        sess.report("WARNING", f"job {job_id} no longer exists on the backend; removed from the Jobs list")
    else:
        sess.report("ERROR", f"backend: not_found: {message}")


def _job_active(sess: Session, job_id: str, message: str) -> None:
    """A delete of a queued or running job was refused: nothing changes."""
    sess.jobs.deleting.discard(job_id)
    sess.report("ERROR", f"job {job_id} is still queued or running: cancel it first, then delete it")


def _result_damaged(sess: Session, job_id: str, message: str) -> None:
    """A done job's stored result cannot be read (Import or attach): its row shows the backend's message (it names
    the job and the file); the job can only be deleted."""
    book = sess.jobs
    book.live_jobs.discard(job_id)
    book.wanted_results.discard(job_id)
    preview.remove_preview_object(job_id)
    jobs.update_job_row(job_id, error=message)
    if job_id == runtime_state().active_job_id:
        jobs.finish_active("failed: the result is damaged")
    sess.report("ERROR", f"job {job_id}: its stored result on the backend is damaged or missing, so it cannot be "
                         "imported; delete the job (Jobs panel: Delete) and submit it again")


_JOB_REQUEST_ERRORS: dict[str, Callable[[Session, str, str], None]] = {
    "not_attached": lambda sess, job_id, message: _cancel_refused(sess, job_id, message, "not_attached"),
    "job_finished": lambda sess, job_id, message: _cancel_refused(sess, job_id, message, "job_finished"),
    "not_found": _not_found,
    "job_active": _job_active,
    "result_damaged": _result_damaged,
}
"""Error codes that answer a request about an existing (or vanished) job -> ``(session, job_id, message)``."""


def on_cancelled(sess: Session, f: dict, _arrays: dict) -> None:
    """A job was cancelled: its preview goes, its row and the active line say so."""
    job_id = f["job_id"]
    sess.jobs.live_jobs.discard(job_id)
    preview.remove_preview_object(job_id)
    jobs.update_job_row(job_id, status="cancelled")
    if job_id == runtime_state().active_job_id:
        jobs.finish_active("cancelled")
    sess.report("INFO", f"job {job_id} cancelled")


def on_jobs(sess: Session, f: dict, _arrays: dict) -> None:
    """One page of the backend's job list: the first replaces the panel's rows, a later one (Load More) is
    appended; a later page asked for before the last Refresh is dropped."""
    first, current = sess.jobs.list_answered()
    if not (first or current):
        sess.log.append(("INFO", "a page of the job list from before the last Refresh was dropped"))
        return
    welcome = sess.connection.welcome or {}
    jobs.fill_job_rows(f.get("jobs", []), f.get("next_cursor"), append=not first, me=welcome.get("identity"))


def on_deleted(sess: Session, f: dict, _arrays: dict) -> None:
    """A job was deleted on the backend: its row and everything the add-on remembered about it go."""
    job_id = f["job_id"]
    sess.jobs.forget(job_id)
    preview.remove_preview_object(job_id)
    jobs.remove_job_row(job_id)
    sess.report("INFO", f"job {job_id} and its files were deleted")


HANDLERS: dict[str, Callable[[Session, dict, dict], None]] = {
    EVENT_CONNECTED: on_client_connected,
    EVENT_DISCONNECTED: on_client_disconnected,
    EVENT_ERROR: on_client_error,
    "welcome": on_welcome,
    "pong": on_pong,
    "accepted": on_accepted,
    "status": on_status,
    "progress": on_progress,
    "preview": on_preview,
    "partial": on_partial,
    "result": on_result,
    "error": on_error,
    "cancelled": on_cancelled,
    "jobs": on_jobs,
    "deleted": on_deleted,
}
"""Message type -> handler. A type not here is logged and ignored."""
