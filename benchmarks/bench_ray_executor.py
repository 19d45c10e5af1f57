"""Throughput of the Ray executor with 1 vs 2 actors, and its per-job overhead against the local executor, in one run.

    python benchmarks/bench_ray_executor.py                       # CPU: a local Ray cluster, 2 logical GPUs
    python benchmarks/bench_ray_executor.py --address auto --device auto --iterations 200   # a real cluster's GPUs

Jobs: ``--jobs`` tiny-random Latent-Paint runs (an icosphere, 32² renders, 64² texture, ``--iterations`` steps),
submitted at once to a :class:`~backend.serving.service.JobService` (the same path as the server's). Every executor
first runs one job per worker untimed (model loading, first-call allocations), then ``--repeats`` batches of ``--jobs``
jobs are timed from the first submit to the last result, and the fastest batch counts (a shared machine's noise only
slows batches down):

- local: the local executor (one job at a time in this process), with torch's intra-op threads set to the actors'
  count, so both executors do the same arithmetic;
- ray ×1 and ray ×2: the Ray executor with one and two actors.

Printed: seconds per batch and per job for each, the throughput ratio ray ×2 / ray ×1, and the overhead per job of
ray ×1 over local (streaming events, moving inputs and results through Ray). On a CPU-only machine the two "GPUs" are
logical: both actors share its cores, so the ratio measures the dispatch, bounded by the cores the actors get.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import trimesh  # noqa: E402

from backend.serving.ray_executor import RayExecutor  # noqa: E402
from backend.serving.service import JobService  # noqa: E402

PARAMS = {"prompt": "a rusty metal barrel", "model": "tiny-random", "texture_size": 64, "latent_texture_size": 32,
          "render_size": 32, "preview_every": 0, "vae_preview_every": 0}


def _sphere() -> dict[str, np.ndarray]:
    m = trimesh.creation.icosphere(subdivisions=2)
    return {"mesh.v_pos": np.asarray(m.vertices, np.float32), "mesh.t_pos_idx": np.asarray(m.faces, np.int32)}


def _batch(service: JobService, n: int, iterations: int) -> float:
    """Seconds from submitting ``n`` jobs at once to the last one's end (each must succeed)."""
    ended: list[str] = []
    done = threading.Event()

    def listener(msg_type, fields, arrays):
        if msg_type in ("result", "error", "cancelled"):
            if msg_type != "result":
                raise SystemExit(f"job {fields['job_id']}: {msg_type} {fields}")
            ended.append(fields["job_id"])
            if len(ended) == n:
                done.set()

    t0 = time.perf_counter()
    for seed in range(n):
        service.submit("latent_paint", {**PARAMS, "iterations": iterations, "seed": seed}, _sphere(), listener)
    done.wait()
    return time.perf_counter() - t0


def _measure(service: JobService, workers: int, jobs: int, iterations: int, repeats: int) -> float:
    """The fastest of ``repeats`` batches of ``jobs`` jobs (seconds), after one warm-up job per worker."""
    _batch(service, workers, iterations)  # warm: one job per worker loads its models
    seconds = min(_batch(service, jobs, iterations) for _ in range(repeats))
    service.shutdown()
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--iterations", type=int, default=20, help="Latent-Paint steps per job")
    p.add_argument("--repeats", type=int, default=3, help="batches per executor; the fastest counts")
    p.add_argument("--address", default=None, help="a Ray cluster to join (default: a local one, 2 logical GPUs)")
    p.add_argument("--device", default="cpu", help="the device each actor (and the local executor) uses")
    args = p.parse_args()

    import ray

    if args.address:
        ray.init(address=args.address, include_dashboard=False, logging_level="warning")
    else:
        ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="warning")
    data = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    rows = {}
    for workers in (1, 2):
        executor = RayExecutor(num_workers=workers, device=args.device)
        threads = ray.get(executor.workers[0].actor.describe.remote())["torch_threads"]
        service = JobService(data / f"ray{workers}", torch.device("cpu"), executor=executor)
        rows[f"ray x{workers}"] = _measure(service, workers, args.jobs, args.iterations, args.repeats)
        time.sleep(1.0)  # the killed actors give their GPUs back
    torch.set_num_threads(threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    rows["local"] = _measure(JobService(data / "local", device), 1, args.jobs, args.iterations, args.repeats)
    ray.shutdown()

    print(f"{args.jobs} tiny-random latent_paint jobs, {args.iterations} steps each, device {args.device}, "
          f"{threads} torch thread(s) per worker, fastest of {args.repeats} batches")
    print(f"{'executor':<10} {'batch s':>8} {'s/job':>7}")
    for name in ("local", "ray x1", "ray x2"):
        print(f"{name:<10} {rows[name]:8.2f} {rows[name] / args.jobs:7.3f}")
    print(f"throughput ray x2 / ray x1: {rows['ray x1'] / rows['ray x2']:.2f}x")
    print(f"Ray overhead per job (ray x1 - local): {(rows['ray x1'] - rows['local']) / args.jobs * 1000:.0f} ms")


if __name__ == "__main__":
    main()
