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
cost per step (update / 16) is printed and added to the step in the ratio. ``--compare-reference`` also measures the
plain-torch reference (``hashgrid_impl=reference``, no occupancy grid: every sample evaluated) in the same run, from
the same seeds, its steps interleaved with the fast path's (so a busy machine slows both alike), and prints
reference step / fast step. ``--hashgrid-impl`` and
``--occupancy-resolution`` (0 = off) measure one configuration; ``--threads`` sets torch's CPU threads.
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


class Setup:
    """One configuration (hash grid implementation, occupancy grid) with its own field, optimiser, guidance and seeded
    generators: the same seeds in every configuration, so each sees the same cameras and noise."""

    def __init__(self, args, device, sd, hashgrid_impl: str, occupancy_resolution: int):
        self.args, self.device, self.name = args, device, f"hashgrid_impl={hashgrid_impl}, occupancy grid=" \
            f"{occupancy_resolution or 'off'}"
        self.config = parse_config(LatentNeRFConfig, {
            "prompt": "a gingerbread house", "render_size": args.render_size, "num_samples": args.num_samples,
            "encoding": args.encoding, "batch_size": args.batch_size, "hashgrid_impl": hashgrid_impl,
            "occupancy_resolution": occupancy_resolution})
        self.pipe = LatentNeRFPipeline(sd.vae, sd.latent_scaling, device)
        self.sketch = None if args.no_sketch else SketchShape(blockout(), self.config.sketch_grid_resolution,
                                                              device=device)
        torch.manual_seed(0)
        self.nerf = LatentNeRF(NeRFConfig(encoding=args.encoding, hashgrid_impl=hashgrid_impl)).to(device)
        self.background = self.pipe.make_background(self.config)
        self.optimizer = torch.optim.Adam(self.nerf.param_groups(self.config.lr) + [
            {"params": list(self.background.parameters()), "lr": self.config.lr}], betas=(0.9, 0.99), eps=1e-15)
        self.sds = build_sds(sd, self.config)
        self.generator = torch.Generator(device=device).manual_seed(0)
        self.occupancy = self.pipe.make_occupancy(self.config, self.nerf, self.sketch)
        self.occupancy_generator = torch.Generator(device=device).manual_seed(1)
        self.kept: list[float] = []
        self.count = 0

    def step(self, mark) -> None:
        """One training step as the pipeline's, calling ``mark`` after each part."""
        args, config = self.args, self.config
        if self.occupancy is not None:
            self.occupancy.update(self.count, self.nerf.density, self.occupancy_generator)
            mark("occupancy")
        self.count += 1
        cameras = sample_cameras(args.batch_size, self.generator, device=self.device, **config.camera_ranges())
        out = self.pipe.render(self.nerf, self.background, cameras, args.render_size, args.num_samples,
                               self.generator, occupancy=self.occupancy)
        if "sample_mask" in out:
            self.kept.append(float(out["sample_mask"].float().mean()))
        mark("render")
        loss = 0.0
        if self.sketch is not None:
            loss = config.lambda_shape * sketch_loss(out["points"], out["density"], self.sketch, config.sketch_sigma,
                                                     "sum")
            mark("sketch_loss")
        loss = loss + self.sds(out["image"], cameras, self.generator).loss
        mark("unet")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        mark("backward")

    def report(self, parts: dict[str, list[float]]) -> float:
        """Print the split, the guidance baseline and the occupancy figures; return the step's median seconds with the
        occupancy update amortised over its interval."""
        args, device = self.args, self.device
        update_s = []
        if self.occupancy is not None:  # the dearest update (every cell, the warm-up rule), timed on its own
            for _ in range(2):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                self.occupancy.update(0, self.nerf.density, self.occupancy_generator)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                update_s.append(time.perf_counter() - t0)
        cameras = sample_cameras(args.batch_size, self.generator, device=device, **self.config.camera_ranges())
        with torch.no_grad():
            latents = self.pipe.render(self.nerf, self.background, cameras, args.render_size, args.num_samples,
                                       self.generator)["image"]
        floor = guidance_floor(self.sds, latents, cameras, self.generator, args.steps, args.warmup, device)
        print_split(f"Latent-NeRF step, arch={args.arch}, device={device_name(device)}, encoding={args.encoding}, "
                    f"{self.name}, batch={args.batch_size}, {args.render_size}x{args.render_size} rays x "
                    f"{args.num_samples} samples, sketch={'no' if self.sketch is None else 'yes'}, {args.steps} steps "
                    f"after {args.warmup} warm-up", parts)
        print_ratio(parts, floor)
        step_s = statistics.median([sum(p) for p in zip(*parts.values())])
        if self.occupancy is not None:
            per_step = min(update_s) / self.occupancy.update_every
            step_s += per_step
            print(f"occupancy grid {self.occupancy.resolution}^3: update of every cell {min(update_s) * 1e3:.1f} ms "
                  f"every {self.occupancy.update_every} steps = {per_step * 1e3:.1f} ms per step; occupied cells "
                  f"{self.occupancy.occupied_fraction:.1%}, field evaluated at {statistics.median(self.kept):.1%} of "
                  f"the samples; step with the update amortised {step_s * 1e3:.2f} ms")
        print()
        return step_s


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
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0 = torch's default; 1 avoids waiting on a second thread on a busy machine)")
    ap.add_argument("--compare-reference", action="store_true",
                    help="also measure the reference path (reference hash grid, no occupancy grid) and print the ratio")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    sd = load_stable_diffusion(TINY_RANDOM if args.arch == "tiny" else RANDOM_SD15, device)
    setups = {"fast": Setup(args, device, sd, args.hashgrid_impl, args.occupancy_resolution)}
    if args.compare_reference:
        setups = {"reference": Setup(args, device, sd, "reference", 0), **setups}

    def step(mark) -> None:  # the configurations' steps interleaved: both see the same machine load
        for key, setup in setups.items():
            setup.step(lambda name, key=key: mark(f"{key}/{name}"))

    parts = time_steps(step, args.steps, args.warmup, device)
    steps = {key: setup.report({name.split("/", 1)[1]: v for name, v in parts.items() if name.startswith(key + "/")})
             for key, setup in setups.items()}
    if args.compare_reference:
        print(f"reference step {steps['reference'] * 1e3:.1f} ms / fast step {steps['fast'] * 1e3:.1f} ms (occupancy "
              f"update amortised) = {steps['reference'] / steps['fast']:.2f}x faster")


if __name__ == "__main__":
    main()
