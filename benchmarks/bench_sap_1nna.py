"""Shape As Points' spectral Poisson reconstruction and the 1-NNA metric: seconds on this machine.

    python benchmarks/bench_sap_1nna.py                      # 2048 points, grids 64 and 128, 8 + 8 clouds
    python benchmarks/bench_sap_1nna.py --points 2048 --clouds 16 --grids 128 256

SAP: :func:`backend.geometry.sap.reconstruct_surface` on ``--points`` points sampled on a torus (normals estimated,
DPSR solve, marching cubes, clean-up), median of ``--repeats`` after one warm-up. 1-NNA:
:func:`backend.metrics.one_nna.evaluate_1nna` of ``--clouds`` generated vs ``--clouds`` reference Gaussian clouds of
``--points`` points, Chamfer (KD tree) and EMD (exact matching, O(N³) per pair); one run each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import trimesh  # noqa: E402

from backend.geometry.sap import reconstruct_surface  # noqa: E402
from backend.metrics.one_nna import evaluate_1nna  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=2048, help="points per cloud (default 2048)")
    ap.add_argument("--grids", type=int, nargs="+", default=[64, 128], help="SAP grid resolutions (default 64 128)")
    ap.add_argument("--clouds", type=int, default=8, help="clouds per set for 1-NNA (default 8)")
    ap.add_argument("--repeats", type=int, default=3, help="SAP timings per grid, the median is printed")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torus = trimesh.creation.torus(0.5, 0.2)
    points, _ = trimesh.sample.sample_surface(torus, args.points, seed=0)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {args.points} points")
    print("| what | size | seconds |")
    print("|---|---|---|")
    for grid in args.grids:
        reconstruct_surface(points, resolution=grid)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            reconstruct_surface(points, resolution=grid)
            times.append(time.perf_counter() - t0)
        print(f"| SAP reconstruction | {args.points} points, {grid}³ | {statistics.median(times):.3f} |")
    rng = np.random.default_rng(0)
    generated = [rng.normal(size=(args.points, 3)) for _ in range(args.clouds)]
    reference = [rng.normal(size=(args.points, 3)) for _ in range(args.clouds)]
    for metric in ("cd", "emd"):
        t0 = time.perf_counter()
        evaluate_1nna(generated, reference, [metric])
        print(f"| 1-NNA-{metric.upper()} | {args.clouds} + {args.clouds} clouds of {args.points} points | "
              f"{time.perf_counter() - t0:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
