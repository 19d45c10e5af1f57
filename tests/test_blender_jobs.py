"""The Jobs list of the real add-on in real Blender (the ``bpy`` module) against a real backend process: paging
(Refresh, Load More), Delete, a damaged result, and the answers to Cancel.

Uses the extension install, the ``scene``/``connected`` fixtures and the helpers of ``test_blender_addon.py``.
Blender in background mode runs no timers, so the tests pump ``session.process_events()`` themselves. The page size
is set small (``Session.jobs_page_size``) so a handful of jobs spans several pages. Jobs use the backend's
``tiny-random`` model with a few iterations; jobs that only need to exist (paging) stay queued behind a long one.
"""

from __future__ import annotations

import importlib.util
import time

import pytest

import test_blender_addon as base
from conftest import WireClient
from test_blender_addon import make_active, texture_and_wait
from test_blender_generate import FakeClient, draw_panel

addon, scene, connected = base.addon, base.scene, base.connected  # the same fixtures (extension install, backend)

pytestmark = [
    pytest.mark.blender,
    pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs the bpy module (Blender as a module)"),
]

PAGE_SIZE = 2
FAST = {"model": "tiny-random", "iterations": 3, "texture_size": 64, "latent_texture_size": 32, "render_size": 32,
        "preview_every": 0, "vae_preview_every": 0}
LONG = {**FAST, "iterations": 100_000, "preview_every": 1000}


# ------------------------------------------------------------------------------------------------- helpers

def cube_arrays(addon):
    """Wire arrays of a cube (made once per call; the object is left in the scene)."""
    bpy = addon.bpy
    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.active_object
    make_active(bpy, cube)
    return addon.module("mesh_io").evaluated_mesh_arrays(cube, bpy.context.evaluated_depsgraph_get(),
                                                         "UVMap").wire_arrays()


def settle(addon, timeout_s: float = 30.0) -> None:
    """Pump until no submit, job-list page or delete awaits its answer."""
    book = addon.session.jobs
    addon.pump(lambda: not (book.pending or book.list_requests or book.deleting), timeout_s, "the answers")


def submit_jobs(addon, prompts_params: list[tuple[str, dict]]) -> list[str]:
    """Submit latent_paint jobs on a cube straight through the session; returns their ids in submit order."""
    sess = addon.session
    settle(addon)
    arrays = cube_arrays(addon)
    known = set(sess.jobs.pipelines)
    for prompt, params in prompts_params:
        sess.submit_job("latent_paint", {**params, "prompt": prompt}, arrays, None)
    settle(addon)
    ids = [job_id for job_id in sess.jobs.pipelines if job_id not in known]
    assert len(ids) == len(prompts_params)
    return ids


def drain(addon, seconds: float = 0.5) -> None:
    """Pump for ``seconds`` (events that may still be on their way, e.g. queue positions)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        addon.session.process_events()
        time.sleep(0.02)


def row_ids(addon) -> list[str]:
    return [row.job_id for row in addon.state.jobs]


def load_more_shown(addon) -> bool:
    """Whether the Jobs panel draws the Load More button (and the operator would run)."""
    bpy = addon.bpy
    drawn = any(name == "operator" and args[0] == "latentforge.load_more_jobs"
                for name, args, _kw in draw_panel(bpy, "LATENTFORGE_PT_jobs"))
    assert drawn == bpy.ops.latentforge.load_more_jobs.poll()
    return drawn


def delete_enabled(addon) -> bool:
    """Whether the Jobs panel draws its Delete button enabled for the selected row."""
    calls = draw_panel(addon.bpy, "LATENTFORGE_PT_jobs")
    index = next(i for i, (name, args, _kw) in enumerate(calls)
                 if name == "operator" and args[0] == "latentforge.delete_job")
    enabled = [value for name, attr, value in (c for c in calls[:index] if c[0] == "set") if attr == "enabled"]
    return enabled[-1] if enabled else True


def answer_of(server, msg_type: str, fields: dict):
    """Send one request on a fresh connection (the repo's client, not the add-on) and return its answer."""
    wire = WireClient(server)
    try:
        wire.send(msg_type, fields)
        return wire.recv()
    finally:
        wire.close()


def select_row(addon, job_id: str) -> None:
    index = addon.state.jobs.find(job_id)
    assert index >= 0, (job_id, row_ids(addon))
    addon.state.jobs_index = index


# --------------------------------------------------------------------------------------------------- tests

def test_jobs_panel_operators_are_registered(scene):
    bpy = scene.bpy
    for name in ("LATENTFORGE_OT_refresh_jobs", "LATENTFORGE_OT_load_more_jobs", "LATENTFORGE_OT_import_job",
                 "LATENTFORGE_OT_delete_job"):
        assert hasattr(bpy.types, name), name
    assert scene.module("session").JOBS_PAGE_SIZE == 50
    assert scene.session.jobs_page_size == 50
    assert "jobs_next_cursor" in scene.state.bl_rna.properties


def test_refresh_and_load_more_page_the_job_list_and_active_jobs_cannot_be_deleted(scene, connected):
    """Five jobs (one long one running, four queued behind it), pages of two: Refresh shows the newest two, Load More
    appends the older ones (no duplicates, newest first) until the button goes; a Load More answered after a newer
    Refresh is dropped. Delete of a queued or running job is refused (by the add-on and by the backend) and the row
    stays; Cancel's refusals are messages and leave the add-on usable."""
    addon, bpy = scene, scene.bpy
    sess = addon.session
    sess.jobs_page_size = PAGE_SIZE
    try:
        ids = submit_jobs(addon, [("a long job", LONG)] + [(f"queued job {i} " + "x" * 400, FAST) for i in range(4)])
        newest_first = ids[::-1]
        # Its "running" status (which adds its row at the top) is in before the list is paged.
        addon.pump(lambda: addon.state.jobs.get(ids[0]) is not None and addon.state.jobs[ids[0]].status == "running",
                   60, "the long job to run")
        drain(addon)

        assert bpy.ops.latentforge.refresh_jobs() == {"FINISHED"}
        settle(addon)
        assert row_ids(addon) == newest_first[:2]
        assert addon.state.jobs_next_cursor and load_more_shown(addon)
        row = addon.state.jobs[newest_first[0]]
        assert row.pipeline == "latent_paint" and row.status == "queued" and row.created
        assert row.prompt.startswith("queued job 3 x") and len(row.prompt) == 300 and row.prompt.endswith("…")

        # Load More pressed twice before the answer: the same page twice, rows once.
        assert bpy.ops.latentforge.load_more_jobs() == {"FINISHED"}
        assert bpy.ops.latentforge.load_more_jobs() == {"FINISHED"}
        settle(addon)
        assert row_ids(addon) == newest_first[:4]
        pages = 2
        while load_more_shown(addon):
            assert bpy.ops.latentforge.load_more_jobs() == {"FINISHED"}
            settle(addon)
            pages += 1
            assert pages <= 4
        assert row_ids(addon) == newest_first and addon.state.jobs_next_cursor == ""
        assert addon.state.jobs[ids[0]].prompt == "a long job"
        with pytest.raises(RuntimeError):  # poll fails: nothing more to load
            bpy.ops.latentforge.load_more_jobs()

        # A Load More still on its way when Refresh is pressed: its page is dropped, the first page stands.
        assert bpy.ops.latentforge.refresh_jobs() == {"FINISHED"}
        settle(addon)
        assert bpy.ops.latentforge.load_more_jobs() == {"FINISHED"}
        assert bpy.ops.latentforge.refresh_jobs() == {"FINISHED"}
        settle(addon)
        assert row_ids(addon) == newest_first[:2]

        # Delete of queued and running jobs: refused by the add-on (the button is disabled too) ...
        for job_id in (ids[-1], ids[0]):
            while addon.state.jobs.get(job_id) is None:
                assert bpy.ops.latentforge.load_more_jobs() == {"FINISHED"}
                settle(addon)
            select_row(addon, job_id)
            assert addon.state.jobs[job_id].status in ("queued", "running")
            assert not delete_enabled(addon)
            with pytest.raises(RuntimeError, match="cancel it first"):  # refused before any confirmation
                bpy.ops.latentforge.delete_job("INVOKE_DEFAULT" if job_id == ids[-1] else "EXEC_DEFAULT")
            assert addon.state.jobs.get(job_id) is not None
        # ... and by the backend (job_active) when asked anyway.
        addon.state.last_error = ""
        sess.delete_job(ids[-1])
        addon.pump(lambda: addon.state.last_error, 30, "the refusal")
        assert "cancel it first" in addon.state.last_error
        assert addon.state.jobs.get(ids[-1]) is not None and not addon.state.jobs[ids[-1]].error
        assert answer_of(connected, "get_result", {"job_id": ids[-1]}).fields["code"] == "not_ready"

        # Cancel: a queued job at once; again: job_finished, a message only.
        assert bpy.ops.latentforge.cancel_job(job_id=ids[-1]) == {"FINISHED"}
        addon.pump(lambda: addon.state.jobs[ids[-1]].status == "cancelled", 30, "the cancellation")
        addon.state.last_error = ""
        assert bpy.ops.latentforge.cancel_job(job_id=ids[-1]) == {"FINISHED"}
        addon.pump(lambda: addon.state.last_error, 30, "the answer to the second cancel")
        assert "already finished" in addon.state.last_error
        assert addon.state.jobs[ids[-1]].status == "cancelled" and not addon.state.jobs[ids[-1]].error
        # A cancelled job can be deleted.
        select_row(addon, ids[-1])
        assert delete_enabled(addon)
        assert bpy.ops.latentforge.delete_job() == {"FINISHED"}
        addon.pump(lambda: addon.state.jobs.get(ids[-1]) is None, 30, "the deleted row")

        # Cancel of another connection's job: not_attached, a message; of an unknown id: not_found.
        wire = WireClient(connected)
        try:
            wire.send("submit", {"pipeline": "latent_paint", "params": {**FAST, "prompt": "someone else's job"},
                                 "request_id": "other"}, cube_arrays(addon))
            other = wire.recv_until("accepted").fields["job_id"]
            addon.state.last_error = ""
            assert bpy.ops.latentforge.cancel_job(job_id=other) == {"FINISHED"}
            addon.pump(lambda: addon.state.last_error, 30, "the answer to the cancel")
            assert "another client" in addon.state.last_error
            addon.state.last_error = ""
            assert bpy.ops.latentforge.cancel_job(job_id="0" * 32) == {"FINISHED"}
            addon.pump(lambda: addon.state.last_error, 30, "the answer to the cancel")
            assert "not_found" in addon.state.last_error
            wire.send("cancel", {"job_id": other})
            wire.recv_until("cancelled", other)
        finally:
            wire.close()

        # The add-on is still usable: the long job is cancelled from it.
        for job_id in ids[:-1]:
            assert bpy.ops.latentforge.cancel_job(job_id=job_id) == {"FINISHED"}
        addon.pump(lambda: not sess.jobs.live_jobs, 60, "the cancellations")
        sess.jobs_page_size = 50
        assert bpy.ops.latentforge.refresh_jobs() == {"FINISHED"}
        settle(addon)
        assert row_ids(addon) == [other] + newest_first[1:]
        assert {addon.state.jobs[j].status for j in row_ids(addon)} == {"cancelled"}
        assert addon.state.jobs_next_cursor == "" and not load_more_shown(addon)
    finally:
        sess.jobs_page_size = addon.module("session").JOBS_PAGE_SIZE


def test_delete_a_finished_job_and_a_job_with_a_damaged_result(scene, connected):
    """Delete removes a done job's row, its saved target, and the job on the backend (get_result: not_found). A
    truncated result.npz: Import shows result_damaged on the row and says the job can be deleted; Delete removes it."""
    addon, bpy = scene, scene.bpy
    jobs_module = addon.module("jobs")
    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.active_object
    cube.name = "Crate"
    done = texture_and_wait(addon, cube, prompt="a wooden crate")
    bpy.ops.mesh.primitive_cube_add(location=(3.0, 0.0, 0.0))
    box = bpy.context.active_object
    box.name = "Box"
    damaged = texture_and_wait(addon, box, prompt="a cardboard box")

    assert bpy.ops.latentforge.refresh_jobs() == {"FINISHED"}
    settle(addon)
    assert row_ids(addon)[:2] == [damaged, done]
    assert addon.state.jobs_next_cursor == "" and not load_more_shown(addon)
    assert done in bpy.context.scene[jobs_module.SCENE_JOBS_KEY]

    # Delete the finished job (invoked as the button does: a confirmation, which background Blender skips).
    select_row(addon, done)
    assert delete_enabled(addon)
    assert bpy.ops.latentforge.delete_job("INVOKE_DEFAULT") == {"FINISHED"}
    addon.pump(lambda: addon.state.jobs.get(done) is None, 30, "the deleted row")
    assert "deleted" in addon.state.last_info and addon.state.last_error == ""
    assert done not in bpy.context.scene[jobs_module.SCENE_JOBS_KEY]
    assert done not in addon.session.jobs.pipelines and done not in addon.session.jobs.targets
    assert not (connected.data_dir / "jobs" / done).exists()
    answer = answer_of(connected, "get_result", {"job_id": done})
    assert (answer.type, answer.fields["code"]) == ("error", "not_found")
    # Import of it now: not_found, a clear error.
    assert bpy.ops.latentforge.import_job(job_id=done) == {"FINISHED"}
    addon.pump(lambda: addon.state.last_error, 30, "the error")
    assert "not_found" in addon.state.last_error and addon.state.jobs.get(done) is None

    # Damage the other job's result: Import answers result_damaged.
    path = connected.data_dir / "jobs" / damaged / "result.npz"
    path.write_bytes(path.read_bytes()[:64])
    addon.state.last_error = ""
    select_row(addon, damaged)
    assert bpy.ops.latentforge.import_job() == {"FINISHED"}
    addon.pump(lambda: addon.state.last_error, 30, "the error")
    assert "damaged" in addon.state.last_error and "delete the job" in addon.state.last_error
    row = addon.state.jobs[damaged]
    assert row.status == "done" and "result.npz" in row.error and damaged in row.error
    assert str(connected.data_dir) not in row.error
    assert addon.state.stage == "done"
    assert not any(f"LatentForge {damaged[:8]}" == o.name for o in bpy.data.objects)

    # Delete works on it.
    assert delete_enabled(addon)
    assert bpy.ops.latentforge.delete_job() == {"FINISHED"}
    addon.pump(lambda: addon.state.jobs.get(damaged) is None, 30, "the deleted row")
    assert not (connected.data_dir / "jobs" / damaged).exists()
    # A stale row (the job was deleted elsewhere) goes when Delete says not_found.
    jobs_module.update_job_row(damaged, status="done")
    select_row(addon, damaged)
    assert bpy.ops.latentforge.delete_job() == {"FINISHED"}
    addon.pump(lambda: addon.state.jobs.get(damaged) is None, 30, "the stale row")
    assert "no longer exists" in addon.state.last_error


def test_cancel_answers_do_not_fail_a_finished_active_job(scene):
    """Hand-made answers through process_events: job_finished after the active job's result leaves it done; for a
    job still shown as active it leaves its line alone; not_attached is a message; a first page replaces the rows,
    a later page appends without duplicates."""
    addon = scene
    sess, state = addon.session, addon.state
    jobs_module = addon.module("jobs")
    fake = FakeClient(addon.module("core.protocol"))
    old_client, sess.connection.client = sess.connection.client, fake
    sess.jobs.list_requests.clear()
    try:
        job_id = "a" * 32
        jobs_module.update_job_row(job_id, status="done", pipeline="latent_paint")
        state.stage, state.active_job_id, state.progress = "done", "", 1.0
        fake.push("error", {"code": "job_finished", "message": f"job {job_id} is already done", "job_id": job_id})
        sess.process_events()
        assert state.stage == "done" and state.progress == 1.0
        assert state.jobs[job_id].status == "done" and state.jobs[job_id].error == ""
        assert "already finished" in state.last_error

        running = "b" * 32
        jobs_module.update_job_row(running, status="running", pipeline="latent_paint")
        state.active_job_id, state.stage = running, "sds 3/10"
        sess.jobs.live_jobs.add(running)
        fake.push("error", {"code": "job_finished", "message": "done meanwhile", "job_id": running})
        fake.push("error", {"code": "not_attached", "message": "attach first", "job_id": running})
        sess.process_events()
        assert state.active_job_id == running and state.stage == "sds 3/10" and running in sess.jobs.live_jobs
        assert state.jobs[running].error == "" and "another client" in state.last_error

        # Pages: the first replaces, a later one appends (an existing row is updated, not repeated).
        sess.list_jobs()
        fake.push("jobs", {"jobs": [{"job_id": "c" * 32, "pipeline": "latent_paint", "status": "done",
                                     "prompt": "p1", "created": time.time(), "params": {}}],
                           "next_cursor": "cursor-1"})
        sess.process_events()
        assert row_ids(addon) == ["c" * 32] and state.jobs_next_cursor == "cursor-1"
        assert fake.sent[-1][:2] == ("list_jobs", {"limit": 50})
        sess.load_more_jobs()
        assert fake.sent[-1][:2] == ("list_jobs", {"limit": 50, "cursor": "cursor-1"})
        fake.push("jobs", {"jobs": [{"job_id": "c" * 32, "pipeline": "latent_paint", "status": "done",
                                     "prompt": "p1", "created": time.time(), "params": {}},
                                    {"job_id": "d" * 32, "pipeline": "shape_ldm", "status": "failed",
                                     "prompt": None, "error": "boom", "created": time.time(), "params": {}}],
                           "next_cursor": None})
        sess.process_events()
        assert row_ids(addon) == ["c" * 32, "d" * 32] and state.jobs_next_cursor == ""
        assert state.jobs["d" * 32].error == "boom" and state.jobs["d" * 32].prompt == ""
        with pytest.raises(ValueError, match="complete"):
            sess.load_more_jobs()
    finally:
        sess.connection.client = old_client
        sess.jobs.live_jobs.clear()
        sess.jobs.list_requests.clear()
        state.jobs.clear()
