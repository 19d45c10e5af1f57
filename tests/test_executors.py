"""The job service's side of executors, without Ray: several workers, the ``worker`` column, and a lost worker's job
re-queued once on another worker, then failed. The workers here are fakes that follow the executor interface
(:mod:`backend.serving.executors`); the Ray executor itself is tested in ``test_ray_executor.py``."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from backend.serving.executors import JobEvents, JobFailed, JobOutput, JobRequest, LocalExecutor, WorkerLost
from backend.serving.service import JobService
from conftest import TINY_PARAMS, sphere_arrays


class FakeWorker:
    """Returns the input sphere as the result after one progress event; while the executor's ``deaths`` is above 0 a
    run raises WorkerLost instead (after the progress event, as a worker killed mid-job) and counts it down; ``gate``
    holds a run until it is set."""

    def __init__(self, executor: "FakeExecutor", name: str):
        self.executor = executor
        self.name = name
        self.ran: list[str] = []
        self.recovered = 0
        self.gate = threading.Event()
        self.gate.set()

    def run(self, request: JobRequest, events: JobEvents) -> JobOutput:
        self.ran.append(request.job_id)
        events.on_progress("optimize", 1, 2, {"loss": 1.0}, None)
        self.gate.wait(30)
        with self.executor.lock:
            die = self.executor.deaths > 0
            self.executor.deaths -= die
        if die:
            raise WorkerLost(self.name, "killed by the test")
        if request.params.get("seed") == 99:
            raise JobFailed("model_not_found", f"no model on {self.name}")
        arrays = {k: v for k, v in request.inputs.items() if k.startswith("mesh.")}
        return JobOutput(arrays, {"pipeline": request.pipeline, "ran_on": self.name}, {"run": 0.01})

    def recover(self) -> None:
        self.recovered += 1
        self.name = self.name.split("#")[0] + f"#{self.recovered}"


class FakeExecutor:
    def __init__(self, *names: str):
        self.workers = [FakeWorker(self, n) for n in names]
        self.deaths = 0
        self.lock = threading.Lock()
        self.shut = False

    def describe(self) -> str:
        return "fake"

    def shutdown(self) -> None:
        self.shut = True


class Events:
    def __init__(self):
        self.items: list[tuple[str, dict]] = []
        self.done = threading.Event()

    def __call__(self, msg_type, fields, arrays):
        self.items.append((msg_type, fields))
        if msg_type in ("result", "error", "cancelled"):
            self.done.set()


@pytest.fixture
def make_service(tmp_path):
    services = []

    def make(*names: str) -> JobService:
        service = JobService(tmp_path / f"store{len(services)}", torch.device("cpu"), executor=FakeExecutor(*names))
        services.append(service)
        return service

    yield make
    for service in services:
        service.shutdown()


def _submit(service: JobService, **params) -> tuple[str, Events]:
    events = Events()
    job_id, _ = service.submit("latent_paint", {**TINY_PARAMS, **params}, sphere_arrays(), listener=events)
    return job_id, events


def _wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_local_executor_is_the_default_and_names_its_worker_local(tmp_path):
    service = JobService(tmp_path, torch.device("cpu"), start_worker=False)
    try:
        assert isinstance(service.executor, LocalExecutor) and service.executor.workers[0].name == "local"
        assert service.executor.workers[0].models is service.models  # the service's warm cache
    finally:
        service.shutdown()


def test_two_workers_run_two_jobs_at_once_and_the_store_names_each_worker(make_service):
    service = make_service("a", "b")
    a, b = service.executor.workers
    a.gate.clear()
    b.gate.clear()
    (j1, e1), (j2, e2) = _submit(service), _submit(service, seed=1)
    _wait_until(lambda: len(service.running_jobs()) == 2)  # both held inside their workers at the same moment
    j3, _ = _submit(service, seed=2)
    assert service.queue_position(j3) == 1  # every worker is busy: it waits for one
    a.gate.set()
    b.gate.set()
    assert e1.done.wait(30) and e2.done.wait(30)
    workers = {service.store.get(j)["worker"] for j in (j1, j2)}
    assert workers == {"a", "b"}
    result = next(f for t, f in e1.items if t == "result")
    assert result["metadata"]["ran_on"] == service.store.get(j1)["worker"]


def test_a_lost_worker_s_job_is_requeued_once_on_another_worker(make_service):
    service = make_service("a", "b")
    service.executor.deaths = 1
    job_id, events = _submit(service)
    assert events.done.wait(30)
    _wait_until(lambda: any(w.recovered for w in service.executor.workers))  # the lost one is brought back
    lost_on = next(w for w in service.executor.workers if w.recovered)
    other = next(w for w in service.executor.workers if w is not lost_on)
    assert lost_on.recovered == 1 and lost_on.name.endswith("#1") and other.recovered == 0
    assert lost_on.ran == other.ran == [job_id]  # once on each, though the lost one was back at once
    statuses = [f["status"] for t, f in events.items if t == "status"]
    assert statuses == ["running", "queued", "running", "done"], statuses
    row = service.store.get(job_id)
    assert row["status"] == "done" and row["worker"] == other.name


def test_a_job_lost_twice_fails_with_interrupted_and_a_remote_failure_keeps_its_code(make_service):
    service = make_service("a", "b")
    service.executor.deaths = 2
    job_id, events = _submit(service)
    assert events.done.wait(30)
    error = next(f for t, f in events.items if t == "error")
    assert error["code"] == "interrupted" and "re-queued once" in error["message"], error
    assert service.store.get(job_id)["status"] == "failed"
    assert [len(w.ran) for w in service.executor.workers] == [1, 1]

    job_id, events = _submit(service, seed=99)  # a failure described on the worker: its code and message as they are
    assert events.done.wait(30)
    error = next(f for t, f in events.items if t == "error")
    assert error["code"] == "model_not_found" and error["message"].startswith("no model on ")
    assert service.store.get(job_id)["error_code"] == "model_not_found"


def test_a_job_cancelled_while_its_worker_dies_is_cancelled_not_requeued(make_service):
    service = make_service("a")
    worker = service.executor.workers[0]
    worker.gate.clear()
    service.executor.deaths = 1
    job_id, events = _submit(service)
    _wait_until(lambda: worker.ran)
    assert service.cancel(job_id) == "cancelling"
    worker.gate.set()
    assert events.done.wait(30)
    assert events.items[-1][0] == "cancelled" and service.store.get(job_id)["status"] == "cancelled"
    assert worker.ran == [job_id]
