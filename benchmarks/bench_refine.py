"""refine_mesh (Magic3D's fine stage) step time at 512² renders: one real run of the pipeline, timed from its progress.

    python benchmarks/bench_refine.py                                   # CPU, tiny-random, 64³ DMTet grid
    python benchmarks/bench_refine.py --arch sd15 --device cuda --dmtet-resolution 128   # SD 1.5 architecture, random

Runs ``refine_mesh`` through its ``run`` entry point on an icosphere (the input of a refinement) for ``--steps``
steps and prints: the one-off setup (the input's SDF on the grid), the median seconds per step (from the progress
reports' clock, the first step dropped), the step split into render + VAE encode / SDS guidance / backward + Adam
(the pipeline's own timings, summed over the steps), the final extraction + texture bake, the peak memory (CUDA:
allocated; CPU: the process's max RSS), and the baseline measured in the same run — the SDS guidance alone (UNet with
CFG) on fixed latents of the same size, render_size/8 — with the step's ratio to it.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import trimesh  # noqa: E402

from backend.models.base import TINY_RANDOM  # noqa: E402
from backend.models.cache import ModelCache  # noqa: E402
from backend.models.devices import resolve_device  # noqa: E402
from backend.models.stable_diffusion import RANDOM_SD15  # noqa: E402
from backend.params import parse_config  # noqa: E402
from backend.pipelines import PIPELINES  # noqa: E402
from backend.pipelines.base import JobContext  # noqa: E402
from backend.pipelines.io import inputs_from_arrays  # noqa: E402
from backend.pipelines.refine_mesh import RefineMeshConfig, run  # noqa: E402
from backend.pipelines.sds_common import build_sds  # noqa: E402
from backend.geometry.cameras import sample_cameras  # noqa: E402
from benchmarks.steptime import guidance_floor  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=("tiny", "sd15"), default="tiny", help="tiny-random or full SD 1.5 (random weights)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--render-size", type=int, default=512)
    ap.add_argument("--dmtet-resolution", type=int, default=64)
    ap.add_argument("--texture-resolution", type=int, default=512)
    ap.add_argument("--stage", choices=("geometry", "texture", "both"), default="both")
    args = ap.parse_args()

    device = resolve_device(args.device)
    sphere = trimesh.creation.icosphere(subdivisions=4)
    arrays = {"mesh.v_pos": np.asarray(sphere.vertices, np.float32), "mesh.t_pos_idx": np.asarray(sphere.faces, np.int32)}
    config = parse_config(RefineMeshConfig, {
        "prompt": "a carved wooden owl", "model": TINY_RANDOM if args.arch == "tiny" else RANDOM_SD15,
        "iterations": args.steps, "render_size": args.render_size, "dmtet_resolution": args.dmtet_resolution,
        "texture_resolution": args.texture_resolution, "stage": args.stage, "preview_every": 0, "partial_every": 0})
    models = ModelCache()
    models.stable_diffusion(config.model, device)  # loading is not part of the step
    clock: dict[int, float] = {}

    def on_progress(stage, step, total, losses, eta):
        if stage == "refine":
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            clock[step] = time.perf_counter()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    result = run(config, inputs_from_arrays("refine_mesh", PIPELINES["refine_mesh"], arrays),
                 JobContext(device=device, models=models, on_progress=on_progress))
    total = time.perf_counter() - t0
    steps = [clock[s] - clock[s - 1] for s in range(2, args.steps + 1)]
    timings = result.timings
    print(f"refine_mesh, {args.arch}, {device}, render {args.render_size}², DMTet {args.dmtet_resolution}³, "
          f"stage {args.stage}, {args.steps} steps")
    print(f"setup (input SDF on the grid): {timings['init_sdf']:.2f} s")
    print(f"median step (steps 2..{args.steps}): {statistics.median(steps):.3f} s; mean {statistics.mean(steps):.3f} s; "
          f"each: {' '.join(f'{x:.2f}' for x in steps)}")
    for part in ("render", "guidance", "backward"):
        print(f"  {part:<10} {timings[part] / args.steps:.3f} s/step (mean over all {args.steps} steps)")
    print(f"extract + clean + bake: {timings['extract']:.2f} s; faces {result.metadata['faces']}")
    print(f"whole run: {total:.1f} s")
    sd = models.stable_diffusion(config.model, device)
    generator = torch.Generator(device=device).manual_seed(0)
    latents = torch.randn(1, 4, args.render_size // 8, args.render_size // 8, device=device, generator=generator)
    floor = guidance_floor(build_sds(sd, config), latents, sample_cameras(1, generator, device=device), generator,
                           max(args.steps - 1, 1), 1, device)
    base = statistics.median(floor)
    print(f"baseline: SDS guidance alone on (1, 4, {args.render_size // 8}, {args.render_size // 8}) latents "
          f"{base:.3f} s; step / baseline = {statistics.median(steps) / base:.1f}x")
    if device.type == "cuda":
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    else:
        print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
