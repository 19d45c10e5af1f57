"""The Ray executor (``serve --executor ray``) on a local Ray cluster: two logical GPUs on the CPU, one cluster for
the whole module (``ray.init(num_cpus=2, num_gpus=2)``), one service with two actors shared by the tests.

What it shows: two jobs run at once on two actors; cancel reaches the actor; killing an actor mid-job re-queues its
job, which finishes on the other actor (and a job whose second actor dies too fails clearly); tiny-random jobs give
the same previews, partial meshes and bit-identical result arrays under the local and the Ray executor; and the real
server (``serve --executor ray``, a
subprocess joining the same cluster) serves a client as before, with ``jobs`` naming the worker, and the real
add-on (``bpy``) textures Suzanne through it unchanged.
Jobs are tiny-random Latent-Paint runs (32² renders, 64² textures) and one tiny-random shape_ldm run.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import test_blender_addon as blender
from backend.serving.service import JobService
from backend.serving.store import JobStore
from conftest import REPO_ROOT, TINY_PARAMS, WireClient, sphere_arrays, start_backend
from test_blender_addon import check_textured, loop_uvs, texture_and_wait

addon, scene = blender.addon, blender.scene  # the add-on fixtures (extension install, clean scene)

ray = pytest.importorskip("ray", reason="the Ray executor needs Ray (python install.py --studio, or --dev)")

from backend.serving.ray_executor import RayExecutor  # noqa: E402 — after the skip

LONG = {"iterations": 100_000, "preview_every": 0}
"""A job that runs until it is cancelled or its actor dies."""

WAIT_S = 120.0


class Events:
    """A thread-safe listener that keeps every event of the jobs it is given."""

    def __init__(self):
        self.items: list[tuple[str, dict, dict]] = []
        self._cond = threading.Condition()

    def __call__(self, msg_type: str, fields: dict, arrays: dict) -> None:
        with self._cond:
            self.items.append((msg_type, fields, arrays))
            self._cond.notify_all()

    def wait(self, predicate, timeout: float = WAIT_S, since: int = 0):
        """The first event ``(type, fields, arrays)`` from the ``since``-th on for which ``predicate`` holds, waiting
        for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for item in self.items[since:]:
                    if predicate(*item):
                        return item
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no such event within {timeout} s; got {[(t, f) for t, f, _ in self.items]}")
                self._cond.wait(left)

    def end(self, job_id: str, timeout: float = WAIT_S):
        """The job's terminal event (result, error or cancelled)."""
        return self.wait(lambda t, f, a: t in ("result", "error", "cancelled") and f.get("job_id") == job_id, timeout)

    def progressed(self, job_id: str, step: int = 1, since: int = 0):
        """The job's first optimisation progress at ``step`` or later (from the ``since``-th event on)."""
        return self.wait(lambda t, f, a: t == "progress" and f["job_id"] == job_id and f["stage"] == "optimize"
                         and f["step"] >= step, since=since)

    def index(self, item) -> int:
        with self._cond:
            return next(i for i, x in enumerate(self.items) if x is item)


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster with 2 CPUs and 2 logical GPUs; yields its address (for a second driver)."""
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="warning")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_service(cluster, tmp_path_factory):
    """A job service on a Ray executor with two actors (device cpu)."""
    service = JobService(tmp_path_factory.mktemp("ray-store"), torch.device("cpu"),
                         executor=RayExecutor(num_workers=2, device="cpu"))
    try:
        yield service
    finally:
        service.shutdown()


def _submit(service: JobService, events: Events, **params) -> str:
    job_id, _ = service.submit("latent_paint", {**TINY_PARAMS, **params}, sphere_arrays(), listener=events)
    return job_id


def _worker_of(service: JobService, job_id: str) -> str | None:
    return service.store.get(job_id)["worker"]


def _wait_for_workers(service: JobService, count: int, timeout: float = WAIT_S) -> list[str]:
    """The executor's worker names once ``count`` distinct live actors answer (a lost one is replaced in the
    background)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = service.executor.workers
        try:
            ray.get([w.actor.describe.remote() for w in workers], timeout=5)
            names = [w.name for w in workers]
            if len(set(names)) == count:
                return names
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the executor did not get back to {count} live actors")


def test_two_jobs_run_at_once_on_two_actors_and_cancel_reaches_them(ray_service):
    events = Events()
    a, b = _submit(ray_service, events, **LONG), _submit(ray_service, events, **LONG, seed=1)
    events.progressed(a, 2)
    events.progressed(b, 2)
    # both are running at the same moment (neither can end by itself), each on its own actor
    assert sorted(ray_service.running_jobs()) == sorted([a, b])
    workers = {_worker_of(ray_service, a), _worker_of(ray_service, b)}
    assert len(workers) == 2 and all(w.startswith("ray:actor-") for w in workers), workers

    step_at_cancel = max(f["step"] for t, f, _ in list(events.items) if t == "progress" and f["job_id"] == a)
    assert ray_service.cancel(a) == "cancelling"
    assert events.end(a)[0] == "cancelled"
    later = [f["step"] for t, f, _ in list(events.items) if t == "progress" and f["job_id"] == a]
    # the actor stopped within a few steps (those already streamed when the cancel arrived; a margin for a loaded
    # machine), not at 100 000
    assert max(later) <= step_at_cancel + 100
    assert ray_service.store.get(a)["status"] == "cancelled"
    assert ray_service.store.get(b)["status"] == "running"  # the other actor's job goes on
    ray_service.cancel(b)
    assert events.end(b)[0] == "cancelled"


SHAPE = {"prompt": "a swivel chair", "model": "tiny-random", "num_inference_steps": 3, "grid_resolution": 20,
         "preview_resolution": 12, "num_samples": 2}
"""A tiny-random Michelangelo job that streams a partial mesh per sample before its result."""


@pytest.mark.parametrize("pipeline, params, arrays", [
    ("latent_paint", {**TINY_PARAMS, "iterations": 20, "seed": 3}, sphere_arrays()),
    ("shape_ldm", SHAPE, {}),
], ids=["latent_paint", "shape_ldm"])
def test_a_job_gives_bit_identical_results_and_events_under_the_local_and_the_ray_executor(
        ray_service, tmp_path, pipeline, params, arrays):
    def run(service: JobService) -> Events:
        events = Events()
        job_id, _ = service.submit(pipeline, params, arrays, listener=events)
        assert events.end(job_id)[0] == "result", events.items[-1][1]
        return events

    on_ray = run(ray_service)
    # CPU kernels split their sums by thread: the local run uses the actor's intra-op thread count (Ray sets it)
    threads = ray.get(ray_service.executor.workers[0].actor.describe.remote())["torch_threads"]
    before = torch.get_num_threads()
    local = JobService(tmp_path / "local", torch.device("cpu"))
    try:
        torch.set_num_threads(threads)
        on_local = run(local)
        assert local.store.list(1)[0]["worker"] == "local"
    finally:
        torch.set_num_threads(before)
        local.shutdown()
    for kind in ("partial", "preview", "result"):  # every array the clients get, in the same order
        ray_arrays = [a for t, _, a in on_ray.items if t == kind]
        local_arrays = [a for t, _, a in on_local.items if t == kind]
        assert len(ray_arrays) == len(local_arrays) and (kind != "result" or len(ray_arrays) == 1), kind
        for r, l in zip(ray_arrays, local_arrays):
            assert sorted(r) == sorted(l), kind
            for name, array in l.items():
                assert r[name].dtype == array.dtype, (kind, name)
                np.testing.assert_array_equal(r[name], array, err_msg=f"{kind} {name}")
    stream = [t for t, _, _ in on_ray.items if t != "progress"]
    assert stream == [t for t, _, _ in on_local.items if t != "progress"]
    if pipeline == "shape_ldm":
        assert stream.count("partial") == 1  # a coarse mesh of each sample, streamed from the actor
    else:
        assert stream.count("preview") == 20 and on_local.items[-1][2]["texture"].std() > 0


def test_killing_an_actor_mid_job_requeues_the_job_once_on_the_other_actor(ray_service):
    _wait_for_workers(ray_service, 2)
    events = Events()
    job_id = _submit(ray_service, events, iterations=150, preview_every=0)  # seconds: killed long before its end
    events.progressed(job_id, 2)
    first = _worker_of(ray_service, job_id)
    victim = next(w for w in ray_service.executor.workers if w.name == first)
    ray.kill(victim.actor)
    end = events.end(job_id)
    assert end[0] == "result", end[1]
    second = _worker_of(ray_service, job_id)
    assert second != first and second.startswith("ray:actor-")
    statuses = [f["status"] for t, f, _ in events.items if t == "status" and f["job_id"] == job_id]
    running = statuses.index("running")
    assert statuses[running + 1:running + 3] == ["queued", "running"] and statuses[-1] == "done", statuses
    assert end[2]["texture"].shape == (64, 64, 3)
    names = _wait_for_workers(ray_service, 2)  # the dead actor was replaced by a fresh one
    assert first not in names


def test_a_job_whose_second_actor_dies_too_fails_clearly(ray_service):
    _wait_for_workers(ray_service, 2)
    events = Events()
    job_id = _submit(ray_service, events, **LONG)
    since, killed = 0, []
    for _ in range(2):
        events.progressed(job_id, 2, since=since)
        name = _worker_of(ray_service, job_id)
        assert name is not None and name not in killed
        killed.append(name)
        ray.kill(next(w for w in ray_service.executor.workers if w.name == name).actor)
        if len(killed) == 1:  # re-queued, then running on the other actor: its progress comes after this
            since = events.index(events.wait(lambda t, f, a: t == "status" and f["status"] == "queued"))
    end = events.end(job_id)
    assert end[0] == "error" and end[1]["code"] == "interrupted", end[1]
    assert "re-queued once" in end[1]["message"] and "submit it again" in end[1]["message"]
    assert killed[0] in end[1]["message"] and killed[1] in end[1]["message"]
    assert ray_service.store.get(job_id)["status"] == "failed"
    _wait_for_workers(ray_service, 2)


@pytest.fixture(scope="module")
def ray_server(cluster, ray_service, tmp_path_factory):
    """``python -m backend serve --executor ray`` joining the module's cluster with two actors."""
    ray_service.shutdown()  # its actors give the two logical GPUs back for the server's own
    root = tmp_path_factory.mktemp("ray-server")
    server = start_backend(root / "data", root / "token", timeout=180.0,
                           extra_args=("--executor", "ray", "--ray-address", cluster, "--ray-workers", "2"))
    try:
        yield server
    finally:
        server.stop()


def test_serve_with_the_ray_executor_serves_a_client_and_jobs_names_the_worker(ray_server):
    server = ray_server
    try:
        client = WireClient(server)
        jobs = []
        for seed in (0, 1):
            client.send("submit", {"pipeline": "latent_paint", "params": {**TINY_PARAMS, "iterations": 4,
                                                                           "seed": seed}}, sphere_arrays())
            jobs.append(client.recv_until("accepted").fields["job_id"])
        seen: list = []
        results: dict = {}
        while len(results) < 2:  # the two jobs run at once: their results come in either order
            msg = client.recv_until("result", seen=seen)
            results[msg.fields["job_id"]] = msg
        assert sorted(results) == sorted(jobs)
        assert all(r.arrays["texture"].shape == (64, 64, 3) for r in results.values())
        assert any(m.type == "progress" for m in seen) and any(m.type == "preview" for m in seen)
        client.send("list_jobs", {})
        listed = {j["job_id"]: j["status"] for j in client.recv_until("jobs").fields["jobs"]}
        assert listed == {job_id: "done" for job_id in jobs}
    except BaseException:
        print("\n".join(server.log[-80:]))
        raise
    listing = subprocess.run([sys.executable, "-m", "backend", "jobs", "--data-dir", str(server.data_dir)],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    header = listing.stdout.splitlines()[0].split()
    assert header[header.index("status") + 1] == "worker", header
    assert listing.stdout.count("ray:actor-") == 2, listing.stdout


def test_serve_refuses_ray_flags_without_the_ray_executor_and_too_many_actors(cluster, tmp_path):
    from backend import cli

    with pytest.raises(ValueError, match="--executor ray"):
        cli._executor(cli.build_parser().parse_args(["serve", "--ray-workers", "2"]))
    with pytest.raises(ValueError, match="2 GPU"):
        RayExecutor(num_workers=3, device="cpu")


@pytest.mark.blender
@pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs the bpy module (Blender as a module)")
def test_the_addon_works_unchanged_against_the_ray_executor(scene, ray_server):
    addon, bpy = scene, scene.bpy
    prefs = addon.prefs
    prefs.backend_mode = "REMOTE"
    prefs.host, prefs.port, prefs.token_file = ray_server.host, ray_server.port, str(ray_server.token_file)
    assert bpy.ops.latentforge.connect() == {"FINISHED"}
    try:
        addon.pump(lambda: addon.state.connected, 30, "the connection")
        bpy.ops.mesh.primitive_monkey_add()
        suzanne = bpy.context.active_object
        uv_before = loop_uvs(suzanne, "UVMap")
        job_id = texture_and_wait(addon, suzanne)
        suzanne = bpy.data.objects["Suzanne"]
        check_textured(suzanne, "UVMap")
        np.testing.assert_array_equal(loop_uvs(suzanne, "UVMap"), uv_before)
    finally:
        addon.session.connection.close_client()
    store = JobStore(ray_server.data_dir)
    try:
        assert store.get(job_id)["worker"].startswith("ray:actor-")
    finally:
        store.close()


def test_without_ray_serve_executor_ray_is_one_clear_line(tmp_path, monkeypatch, capsys):
    from backend import cli

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as on an install without --studio
    token = tmp_path / "token"
    token.write_text("test-token-0123456789\n")
    token.chmod(0o600)
    rc = cli.main(["serve", "--executor", "ray", "--port", "0", "--token-file", str(token),
                   "--data-dir", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --executor ray needs Ray") and "install.py --studio" in err, err
