"""Latent-Paint step time split into render / UNet (SDS guidance) / backward + Adam.

    python benchmarks/bench_latent_paint_step.py                       # CPU, tiny-random
    python benchmarks/bench_latent_paint_step.py --arch sd15 --device cuda   # full SD 1.5 architecture, random weights

Prints milliseconds per step for each part and each part's share of the step, all measured in this run
(CUDA work is synchronised before every clock read). The mesh is an icosphere (``--subdivisions``), rendered at the
pipeline's training resolution of 64×64 latent pixels.
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

from backend.cameras import sample_cameras  # noqa: E402
from backend.guidance import ScoreDistillation, SDSConfig, StableDiffusionDenoiser  # noqa: E402
from backend.mesh import TriMesh  # noqa: E402
from backend.models import RANDOM_SD15, TINY_RANDOM, load_stable_diffusion, resolve_device  # noqa: E402
from backend.pipelines.latent_paint import LatentPaintPipeline  # noqa: E402
from backend.render import make_rasterizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=("tiny", "sd15"), default="tiny", help="tiny-random or full SD 1.5 (random weights)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--subdivisions", type=int, default=4, help="icosphere subdivisions (4 = 5120 triangles)")
    args = ap.parse_args()

    device = resolve_device(args.device)
    sd = load_stable_diffusion(TINY_RANDOM if args.arch == "tiny" else RANDOM_SD15, device)
    sphere = trimesh.creation.icosphere(subdivisions=args.subdivisions)
    rasterizer = make_rasterizer(device)
    pipe = LatentPaintPipeline(sd.vae, sd.latent_scaling, rasterizer, device)
    mesh, _ = pipe.prepare_mesh(TriMesh(np.asarray(sphere.vertices, np.float32), np.asarray(sphere.faces, np.int32)))
    tensors = pipe.mesh_tensors(mesh)
    background = pipe.encode_color((1.0, 1.0, 1.0))
    sds = ScoreDistillation(sd.scheduler.alphas_cumprod, StableDiffusionDenoiser(sd, "a rusty metal barrel"), SDSConfig())
    texture = torch.nn.Parameter(torch.randn(1, 4, 128, 128, device=device))
    optimizer = torch.optim.Adam([texture], lr=1e-2)
    generator = torch.Generator(device=device).manual_seed(0)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    parts: dict[str, list[float]] = {"render": [], "unet": [], "backward": []}
    for step in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        cameras = sample_cameras(args.batch_size, generator, device=device)
        latents, _ = pipe.render(texture, tensors, cameras, 64, background)
        sync()
        t1 = time.perf_counter()
        out = sds(latents, cameras, generator)
        sync()
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        sync()
        t3 = time.perf_counter()
        if step >= args.warmup:
            parts["render"].append(t1 - t0)
            parts["unet"].append(t2 - t1)
            parts["backward"].append(t3 - t2)

    total = [sum(p) for p in zip(*parts.values())]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"Latent-Paint step, arch={args.arch}, device={name}, rasterizer={type(rasterizer).__name__}, "
          f"batch={args.batch_size}, {len(tensors['tri'])} triangles, {args.steps} steps after {args.warmup} warm-up")
    print(f"{'part':<10}{'median ms':>12}{'share of step':>16}")
    for key, values in parts.items():
        med = statistics.median(values)
        print(f"{key:<10}{med * 1e3:>12.2f}{med / statistics.median(total):>15.1%}")
    print(f"{'step':<10}{statistics.median(total) * 1e3:>12.2f}{1:>15.1%}")
    print(f"{'steps/s':<10}{1 / statistics.median(total):>12.2f}")


if __name__ == "__main__":
    main()
