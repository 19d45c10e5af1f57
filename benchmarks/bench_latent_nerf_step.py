"""Latent-NeRF step time split into volume render / Sketch-Shape loss / UNet (SDS guidance) / backward + Adam.

    python benchmarks/bench_latent_nerf_step.py                                  # CPU, tiny-random
    python benchmarks/bench_latent_nerf_step.py --arch sd15 --device cuda        # full SD 1.5 architecture, random weights

Prints milliseconds per step for each part and each part's share of the step, then the baseline — the SDS guidance
alone (UNet with CFG on fixed latents of the render's size, no graph) — and the step's ratio to it, all measured in
this run (CUDA work is synchronised before every clock read). The field is the pipeline's (hash grid by default),
rendered at the pipeline's training resolution (64×64 latent pixels, 64 samples per ray; smaller with
``--render-size`` and ``--num-samples`` for quick CPU runs), with the Sketch-Shape loss of a two-primitive blockout on the render's samples.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import trimesh  # noqa: E402

from backend.geometry.cameras import sample_cameras  # noqa: E402
from backend.geometry.mesh import TriMesh  # noqa: E402
from backend.models.devices import resolve_device
from backend.models.base import TINY_RANDOM
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
    args = ap.parse_args()

    device = resolve_device(args.device)
    sd = load_stable_diffusion(TINY_RANDOM if args.arch == "tiny" else RANDOM_SD15, device)
    config = parse_config(LatentNeRFConfig, {"prompt": "a gingerbread house", "render_size": args.render_size,
                                             "num_samples": args.num_samples, "encoding": args.encoding,
                                             "batch_size": args.batch_size})
    pipe = LatentNeRFPipeline(sd.vae, sd.latent_scaling, device)
    sketch = None if args.no_sketch else SketchShape(blockout(), config.sketch_grid_resolution, device=device)
    torch.manual_seed(0)
    nerf = LatentNeRF(NeRFConfig(encoding=args.encoding)).to(device)
    background = pipe.make_background(config)
    optimizer = torch.optim.Adam(nerf.param_groups(config.lr) + [{"params": list(background.parameters()), "lr": config.lr}],
                                 betas=(0.9, 0.99), eps=1e-15)
    sds = build_sds(sd, config)
    generator = torch.Generator(device=device).manual_seed(0)

    def step(mark) -> None:
        cameras = sample_cameras(args.batch_size, generator, device=device, **config.camera_ranges())
        out = pipe.render(nerf, background, cameras, args.render_size, args.num_samples, generator)
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
    cameras = sample_cameras(args.batch_size, generator, device=device, **config.camera_ranges())
    with torch.no_grad():
        latents = pipe.render(nerf, background, cameras, args.render_size, args.num_samples, generator)["image"]
    floor = guidance_floor(sds, latents, cameras, generator, args.steps, args.warmup, device)
    print_split(f"Latent-NeRF step, arch={args.arch}, device={device_name(device)}, encoding={args.encoding}, "
                f"batch={args.batch_size}, {args.render_size}x{args.render_size} rays x {args.num_samples} samples, "
                f"sketch={'no' if sketch is None else 'yes'}, {args.steps} steps after {args.warmup} warm-up", parts)
    print_ratio(parts, floor)


if __name__ == "__main__":
    main()
