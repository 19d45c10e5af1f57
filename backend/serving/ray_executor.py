"""The Ray executor: jobs run on long-lived Ray actors, one per GPU, while the head keeps the store (``serve --executor
ray``). Ray is optional: this module imports it only when a :class:`RayExecutor` is made.

Layout::

    head (python -m backend serve --executor ray)            Ray cluster (this machine, or `ray start` on each box)
      job store (SQLite + artifacts), server, listeners         _JobActor "actor-1"  num_gpus=1, ModelCache kept warm
      one service worker thread per actor ──── Ray ────────     _JobActor "actor-2"  num_gpus=1, ModelCache kept warm

- One actor per GPU (``num_gpus=1``: Ray gives each actor its own GPU through ``CUDA_VISIBLE_DEVICES``), each with its
  own :class:`~backend.models.cache.ModelCache`, so models stay warm per GPU. Each runs a job with the same
  :func:`~backend.serving.executors.run_pipeline` as the local executor.
- The head reads the job's params and input arrays from the store and passes them to the actor; the result's wire
  arrays, metadata and timings come back, and the head saves them (the store stays the single source of truth).
- Events stream back through a Ray *streaming generator*: the actor's :meth:`_JobActor.run` yields
  ``("progress" | "preview" | "partial", payload)`` items while the pipeline runs in a thread of the actor, then one
  terminal item ``("result" | "cancelled" | "failed", payload)``. Why a generator: the items arrive in order, one
  call carries the whole job (no head-side actor or queue to keep alive), and when the actor or its machine dies the
  iteration raises :class:`ray.exceptions.RayActorError` at once, which is what the re-queue needs.
- Cancel: the actor is threaded (``max_concurrency=2``), so :meth:`_JobActor.cancel` runs while a job runs and sets
  that job's cancel event; the pipeline stops at its next step (``JobContext.progress``) and the stream ends with
  ``cancelled``.
- A dead actor (``ray.kill``, a crashed process, a lost machine) raises :class:`~backend.serving.executors.WorkerLost`;
  the service re-queues the job once (another actor takes it) and calls :meth:`RayWorker.recover`, which starts a
  fresh actor in the dead one's place (``actor-3``…) once a GPU is free for it.

The actors import the ``backend`` package: every machine of the cluster needs LatentForge installed (``install.py
--studio``), at the head's version; the head's checkout is put on the actors' ``PYTHONPATH`` (it serves the head's
own machine).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import socket
import threading
from pathlib import Path

import numpy as np
import torch

from ..models.cache import ModelCache
from ..models.devices import resolve_device
from ..pipelines.base import JobCancelled
from .executors import JobEvents, JobFailed, JobOutput, JobRequest, WorkerLost, run_pipeline
from .service import describe_failure

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout the head runs from (put on the actors' ``PYTHONPATH``)."""

READY_TIMEOUT_S = 300.0
"""How long a new actor may take to start (process, imports) before it counts as not placeable."""

CANCEL_POLL_S = 0.05
"""How often the head checks a running job's cancel event to forward it to the actor (seconds)."""

TERMINAL_ITEMS = ("result", "cancelled", "failed")


class _JobActor:
    """One GPU's worker process (made a Ray actor by :class:`RayExecutor` with ``num_gpus=1, max_concurrency=2``).

    Args:
        name: the actor's name (``actor-1``…), for logs.
        device: torch device spelling resolved here (``auto``: the GPU Ray gave this actor, else the CPU).
        keep_models: models kept warm in this actor's cache.
        allow_download: let jobs download missing models.
        low_vram: ``--low-vram`` in every actor.
        low_vram: ``--low-vram`` (see :class:`~backend.models.cache.ModelCache`).
    """

    def __init__(self, name: str, device: str, keep_models: int, allow_download: bool, low_vram: bool = False):
        self.name = name
        self.device = resolve_device(device)
        self.models = ModelCache(keep_models, allow_download, low_vram)
        self._cancel: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def describe(self) -> dict:
        """``{"name", "host", "pid", "device", "torch_threads"}`` of this actor (also the head's readiness check).
        ``torch_threads``: torch's intra-op threads here (Ray sets ``OMP_NUM_THREADS`` for the actor); CPU results
        are bit-identical to another process's only with the same count."""
        return {"name": self.name, "host": socket.gethostname(), "pid": os.getpid(), "device": str(self.device),
                "torch_threads": torch.get_num_threads()}

    def _cancel_event(self, job_id: str) -> threading.Event:
        with self._lock:
            return self._cancel.setdefault(job_id, threading.Event())

    def cancel(self, job_id: str) -> None:
        """Stop job ``job_id`` at its next step (also when the cancel arrives before the job started here)."""
        self._cancel_event(job_id).set()

    def run(self, request: JobRequest):
        """Run ``request``; a generator of ``(kind, payload)`` items (call with ``num_returns="streaming"``).

        Items: ``("progress", (stage, step, total, losses, eta_s))``, ``("preview", (step, image (H, W, 3) uint8,
        decoder))``, ``("partial", (step, meshes, point_clouds))`` (as the pipeline passed them), then exactly one of ``("result",
        JobOutput)``, ``("cancelled", None)``, ``("failed", (code, message))`` (message not yet scrubbed).
        """
        # Ray hands numpy arrays over read-only (zero copy); a pipeline gets writable copies, as in the local executor
        request = dataclasses.replace(request, inputs={k: np.array(v) for k, v in request.inputs.items()})
        items: queue.Queue = queue.Queue()
        events = JobEvents(cancel_event=self._cancel_event(request.job_id),
                           on_progress=lambda *args: items.put(("progress", args)),
                           on_preview=lambda *args: items.put(("preview", args)),
                           on_partial=lambda *args: items.put(("partial", args)))

        def work():
            try:
                items.put(("result", run_pipeline(request, self.device, self.models, events)))
            except JobCancelled:
                items.put(("cancelled", None))
            except BaseException as err:  # noqa: BLE001 — every failure is reported, the actor lives on
                items.put(("failed", describe_failure(err, self.models, self.device, request.job_id)))

        thread = threading.Thread(target=work, name=f"job-{request.job_id}", daemon=True)
        thread.start()
        try:
            while True:
                item = items.get()
                yield item
                if item[0] in TERMINAL_ITEMS:
                    break
            thread.join()
        finally:
            with self._lock:
                self._cancel.pop(request.job_id, None)


class RayWorker:
    """The head's side of one actor: runs jobs on it, forwards cancels, and replaces it when it dies.

    Attributes:
        name: ``ray:<actor>@<host>`` of the current actor (the job's ``worker`` column).
        actor: the Ray actor handle.
    """

    def __init__(self, executor: "RayExecutor", actor, name: str):
        self._executor = executor
        self.actor = actor
        self.name = name

    def run(self, request: JobRequest, events: JobEvents) -> JobOutput:
        """Run ``request`` on the actor, calling ``events``' callbacks as its items arrive (in order).

        Raises:
            JobCancelled, JobFailed (the actor's code and message), WorkerLost (the actor or its machine died).
        """
        ray = self._executor.ray
        done = threading.Event()
        forward = threading.Thread(target=self._forward_cancel, args=(events.cancel_event, done, request.job_id),
                                   name=f"cancel-{request.job_id}", daemon=True)
        try:
            stream = self.actor.run.options(num_returns="streaming").remote(request)
            forward.start()
            for ref in stream:
                kind, payload = ray.get(ref)
                if kind == "progress" and events.on_progress is not None:
                    events.on_progress(*payload)
                elif kind == "preview" and events.on_preview is not None:
                    events.on_preview(*payload)
                elif kind == "partial" and events.on_partial is not None:
                    events.on_partial(*payload)
                elif kind == "result":
                    return payload
                elif kind == "cancelled":
                    raise JobCancelled()
                elif kind == "failed":
                    raise JobFailed(*payload)
        except self._executor.lost_errors as err:
            raise WorkerLost(self.name, _first_line(err)) from None
        finally:
            done.set()
        raise WorkerLost(self.name, "its event stream ended without a result")

    def _forward_cancel(self, cancel_event: threading.Event, done: threading.Event, job_id: str) -> None:
        while not done.is_set():
            if cancel_event.wait(CANCEL_POLL_S):
                try:
                    self.actor.cancel.remote(job_id)
                except Exception:  # noqa: BLE001 — a dead actor: the job's stream reports it
                    log.debug("cancel of job %s could not reach %s", job_id, self.name, exc_info=True)
                return

    def recover(self) -> None:
        """Replace the (dead) actor with a fresh one; raises when no GPU takes it within :data:`READY_TIMEOUT_S`."""
        try:
            self._executor.ray.kill(self.actor)
        except Exception:  # noqa: BLE001 — already gone
            pass
        self.actor, self.name = self._executor.start_actors(1)[0]


class RayExecutor:
    """Jobs on Ray actors, one per GPU (see the module docstring).

    Args:
        address: the Ray cluster to join (``HOST:PORT`` of its head; ``auto``: the one ``ray start`` runs on this
            machine, an error if none). None: that one if there is one, else a new Ray instance on this machine (its
            GPUs) — ``ray.init``'s own rule. Ignored when Ray is already initialised in this process.
        num_workers: actors to start (0: one per GPU of the cluster). Each needs one GPU (``num_gpus=1``).
        device: the torch device spelling each actor resolves (``auto``: its GPU, else the CPU).
        keep_models: models kept warm in each actor.
        allow_download: let jobs download missing models.
        low_vram: ``--low-vram`` in every actor.
    Raises:
        ImportError: Ray is not installed (``install.py --studio``). ValueError: the cluster has fewer GPUs than
        ``num_workers`` (or none). ``ray.exceptions.GetTimeoutError``: an actor did not start in time.
    """

    def __init__(self, address: str | None = None, num_workers: int = 0, device: str = "auto", keep_models: int = 1,
                 allow_download: bool = False, low_vram: bool = False):
        try:
            import ray
            import ray.exceptions
        except ImportError as err:
            raise ImportError(f"--executor ray needs Ray: install it with `python install.py --studio` ({err})") \
                from None
        self.ray = ray
        self.lost_errors = tuple(getattr(ray.exceptions, n) for n in (
            "RayActorError", "ActorUnavailableError", "ObjectLostError", "OwnerDiedError", "NodeDiedError")
            if hasattr(ray.exceptions, n))
        self._started_ray = not ray.is_initialized()
        if self._started_ray:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        wanted = num_workers or gpus
        if wanted < 1 or wanted > gpus:
            self.shutdown()
            raise ValueError(f"the Ray cluster has {gpus} GPU(s); --executor ray starts one actor per GPU "
                             f"({'asked for ' + str(num_workers) if num_workers else 'none to start'}): add GPU "
                             f"machines with `ray start --address HEAD:PORT`")
        self._options = {"device": device, "keep_models": keep_models, "allow_download": allow_download,
                         "low_vram": low_vram}
        self._actor_class = ray.remote(num_gpus=1, max_concurrency=2, max_restarts=0)(_JobActor)
        self._count = 0
        self._count_lock = threading.Lock()
        self.workers = [RayWorker(self, actor, name) for actor, name in self.start_actors(wanted)]

    def start_actors(self, n: int) -> list[tuple[object, str]]:
        """Start ``n`` actors and wait until they run; returns ``[(handle, "ray:actor-K@host"), ...]``.

        Raises:
            ``ray.exceptions.GetTimeoutError``: not all of them started within :data:`READY_TIMEOUT_S` (no GPU free
            for them); the ones started are killed.
        """
        ray = self.ray
        actors = []
        for _ in range(n):
            with self._count_lock:
                self._count += 1
                name = f"actor-{self._count}"
            env = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)}
            actors.append(self._actor_class.options(runtime_env={"env_vars": env}).remote(name, **self._options))
        try:
            infos = ray.get([a.describe.remote() for a in actors], timeout=READY_TIMEOUT_S)
        except BaseException:
            for actor in actors:
                ray.kill(actor)
            raise
        for info in infos:
            log.info("Ray actor %s on %s (pid %s, %s)", info["name"], info["host"], info["pid"], info["device"])
        return [(actor, f"ray:{info['name']}@{info['host']}") for actor, info in zip(actors, infos)]

    def describe(self) -> str:
        return f"Ray executor, {len(self.workers)} actors: " + ", ".join(w.name for w in self.workers)

    def shutdown(self) -> None:
        """Kill the actors; stop Ray when this executor started it."""
        for worker in getattr(self, "workers", []):
            try:
                self.ray.kill(worker.actor)
            except Exception:  # noqa: BLE001 — already gone
                pass
        if self._started_ray and self.ray.is_initialized():
            self.ray.shutdown()


def _first_line(err: BaseException) -> str:
    """What Ray says about a lost actor, on one line: its first line and its "The actor is dead because …" line."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    why = [line for line in lines[1:] if line.startswith("The actor is dead because")]
    return " ".join(lines[:1] + why[:1])
