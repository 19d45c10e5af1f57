"""Latent-NeRF step time split into volume render / Sketch-Shape loss / UNet (SDS guidance) / backward + Adam.

    python benchmarks/bench_latent_nerf_step.py                                  # CPU, tiny-random
    python benchmarks/bench_latent_nerf_step.py --arch sd15 --device cuda        # full SD 1.5 architecture, random weights
    python benchmarks/bench_latent_nerf_step.py --compare-reference              # plain-torch reference vs fast path

Prints milliseconds per step for each part and each part's share of the step, then the baseline — the SDS guidance
alone (UNet with CFG on fixed latents of the render's size, no graph) — and the step's ratio to it, all measured in
this run (CUDA work is synchronised before every clock read). The field is the pipeline's (hash grid by default),
rendered at the pipeline's training resolution (64×64 latent pixels, 64 samples per ray; smaller with
``--render-size`` and ``--num-samples`` for quick CPU runs), with the Sketch-Shape loss of a two-primitive blockout on the render's samples.

The field uses the pipeline's defaults: the fast hash grid and the occupancy grid (empty-space skipping), updated on
the pipeline's schedule. A step that updates the grid is timed as its own part ``occupancy`` (0 on other steps); since
the split shows medians, the update is also timed on its own (all cells, the warm-up rule: the dearest update) and its
cost per step (update / 16) is printed and added to the step in the ratio. ``--compare-reference`` measures the
plain-torch reference (``hashgrid_impl=reference``, no occupancy grid: every sample evaluated) first, then the fast
path, in the same run from the same seeds, and prints reference step / fast step. ``--hashgrid-impl`` and
``--occupancy-resolution`` (0 = off) measure one configuration.
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

from backend.geometry.cameras import sample_cameras  # noqa: E402
from backend.geometry.mesh import TriMesh  # noqa: E402
from backend.models.devices import resolve_device  # noqa: E402
from backend.models.base import TINY_RANDOM  # noqa: E402
from backend.models.stable_diffusion import load_stable_diffusion, RANDOM_SD15  # noqa: E402
from backend.latent_nerf.field import LatentNeRF, NeRFConfig  # noqa: E402
from backend.params import parse_config  # noqa: E402
from backend.pipelines.sds_common import build_sds  # noqa: E402
from backend.pipelines.latent_nerf import LatentNeRFConfig, LatentNeRFPipeline  # noqa: E402
from backend.latent_nerf.sketch import sketch_loss, SketchShape  # noqa: E402
from benchmarks.steptime import device_name, guidance_floor, print_ratio, print_split, time_steps  # noqa: E402


def blockout() -> TriMesh:
    """A box with a cylinder through its top (two overlapping primitives, as an artist's blockout)."""
    cyl = trimesh.creation.cylinder(radius=0.4, height=1.5)
    cyl.apply_translation((0.3, 0.0, 0.5))
    m = trimesh.util.concatenate([trimesh.creation.box((1.0, 1.0, 1.0)), cyl])
    return TriMesh(np.asarray(m.vertices, np.float32), np.asarray(m.faces, np.int32))


def measure(args, device, sd, hashgrid_impl: str, occupancy_resolution: int) -> dict:
    """One configuration's step split, guidance baseline and occupancy-grid figures (all seeds fixed)."""
    config = parse_config(LatentNeRFConfig, {"prompt": "a gingerbread house", "render_size": args.render_size,
                                             "num_samples": args.num_samples, "encoding": args.encoding,
                                             "batch_size": args.batch_size, "hashgrid_impl": hashgrid_impl,
                                             "occupancy_resolution": occupancy_resolution})
    pipe = LatentNeRFPipeline(sd.vae, sd.latent_scaling, device)
    sketch = None if args.no_sketch else SketchShape(blockout(), config.sketch_grid_resolution, device=device)
    torch.manual_seed(0)
    nerf = LatentNeRF(NeRFConfig(encoding=args.encoding, hashgrid_impl=hashgrid_impl)).to(device)
    background = pipe.make_background(config)
    optimizer = torch.optim.Adam(nerf.param_groups(config.lr) + [{"params": list(background.parameters()), "lr": config.lr}],
                                 betas=(0.9, 0.99), eps=1e-15)
    sds = build_sds(sd, config)
    generator = torch.Generator(device=device).manual_seed(0)
    occupancy = pipe.make_occupancy(config, nerf, sketch)
    occupancy_generator = torch.Generator(device=device).manual_seed(1)
    kept: list[float] = []
    counter = [0]

    def step(mark) -> None:
        if occupancy is not None:
            occupancy.update(counter[0], nerf.density, occupancy_generator)
            mark("occupancy")
        counter[0] += 1
        cameras = sample_cameras(args.batch_size, generator, device=device, **config.camera_ranges())
        out = pipe.render(nerf, background, cameras, args.render_size, args.num_samples, generator, occupancy=occupancy)
        if "sample_mask" in out:
            kept.append(float(out["sample_mask"].float().mean()))
        mark("render")
        loss = 0.0
        if sketch is not None:
            loss = config.lambda_shape * sketch_loss(out["points"], out["density"], sketch, config.sketch_sigma, "sum")
            mark("sketch_loss")
        loss = loss + sds(out["image"], cameras, generator).loss
        mark("unet")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        mark("backward")

    parts = time_steps(step, args.steps, args.warmup, device)
    update_s = []
    if occupancy is not None:  # the dearest update (every cell), timed on its own
        for _ in range(2):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            occupancy.update(0, nerf.density, occupancy_generator)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            update_s.append(time.perf_counter() - t0)
    cameras = sample_cameras(args.batch_size, generator, device=device, **config.camera_ranges())
    with torch.no_grad():
        latents = pipe.render(nerf, background, cameras, args.render_size, args.num_samples, generator)["image"]
    floor = guidance_floor(sds, latents, cameras, generator, args.steps, args.warmup, device)
    title = (f"Latent-NeRF step, arch={args.arch}, device={device_name(device)}, encoding={args.encoding}, "
             f"hashgrid_impl={hashgrid_impl}, occupancy grid={occupancy_resolution or 'off'}, batch={args.batch_size}, "
             f"{args.render_size}x{args.render_size} rays x {args.num_samples} samples, "
             f"sketch={'no' if sketch is None else 'yes'}, {args.steps} steps after {args.warmup} warm-up")
    print_split(title, parts)
    print_ratio(parts, floor)
    step_s = statistics.median([sum(p) for p in zip(*parts.values())])
    result = {"step": step_s, "amortised": step_s}
    if occupancy is not None:
        per_step = min(update_s) / occupancy.update_every
        result["amortised"] = step_s + per_step
        print(f"occupancy grid {occupancy.resolution}^3: update of every cell {min(update_s) * 1e3:.1f} ms every "
              f"{occupancy.update_every} steps = {per_step * 1e3:.1f} ms per step; occupied cells "
              f"{occupancy.occupied_fraction:.1%}, field evaluated at {statistics.median(kept):.1%} of the samples; "
              f"step with the update amortised {result['amortised'] * 1e3:.2f} ms")
    print()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=("tiny", "sd15"), default="tiny", help="tiny-random or full SD 1.5 (random weights)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--render-size", type=int, default=64)
    ap.add_argument("--num-samples", type=int, default=64, help="samples per ray")
    ap.add_argument("--encoding", choices=("hashgrid", "frequency"), default="hashgrid")
    ap.add_argument("--no-sketch", action="store_true", help="text only: no Sketch-Shape loss")
    ap.add_argument("--hashgrid-impl", choices=("fast", "reference"), default="fast")
    ap.add_argument("--occupancy-resolution", type=int, default=64, help="occupancy grid cells per axis (0 = off)")
    ap.add_argument("--compare-reference", action="store_true",
                    help="also measure the reference path (reference hash grid, no occupancy grid) and print the ratio")
    args = ap.parse_args()

    device = resolve_device(args.device)
    sd = load_stable_diffusion(TINY_RANDOM if args.arch == "tiny" else RANDOM_SD15, device)
    if not args.compare_reference:
        measure(args, device, sd, args.hashgrid_impl, args.occupancy_resolution)
        return
    reference = measure(args, device, sd, "reference", 0)
    fast = measure(args, device, sd, args.hashgrid_impl, args.occupancy_resolution)
    print(f"reference step {reference['step'] * 1e3:.1f} ms / fast step {fast['amortised'] * 1e3:.1f} ms (occupancy "
          f"update amortised) = {reference['step'] / fast['amortised']:.2f}x faster")


if __name__ == "__main__":
    main()
