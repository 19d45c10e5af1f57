"""Latent-Paint step time split into render / UNet (SDS guidance) / backward + Adam.

    python benchmarks/bench_latent_paint_step.py                       # CPU, tiny-random
    python benchmarks/bench_latent_paint_step.py --arch sd15 --device cuda   # full SD 1.5 architecture, random weights

Prints milliseconds per step for each part and each part's share of the step, then the baseline — the SDS guidance
alone (UNet with CFG on fixed latents, no graph) — and the step's ratio to it, all measured in this run (CUDA work is
synchronised before every clock read). The mesh is an icosphere (``--subdivisions``), rendered at the
pipeline's training resolution of 64×64 latent pixels.
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
from backend.guidance.denoiser import StableDiffusionDenoiser
from backend.guidance.sds import ScoreDistillation, SDSConfig  # noqa: E402
from backend.geometry.mesh import TriMesh  # noqa: E402
from backend.models.devices import resolve_device
from backend.models.base import TINY_RANDOM
from backend.models.stable_diffusion import load_stable_diffusion, RANDOM_SD15  # noqa: E402
from backend.pipelines.latent_paint import LatentPaintPipeline  # noqa: E402
from backend.geometry.render import make_rasterizer  # noqa: E402
from benchmarks.steptime import device_name, guidance_floor, print_ratio, print_split, time_steps  # noqa: E402


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

    def step(mark) -> None:
        cameras = sample_cameras(args.batch_size, generator, device=device)
        latents, _ = pipe.render(texture, tensors, cameras, 64, background)
        mark("render")
        out = sds(latents, cameras, generator)
        mark("unet")
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        mark("backward")

    parts = time_steps(step, args.steps, args.warmup, device)
    cameras = sample_cameras(args.batch_size, generator, device=device)
    with torch.no_grad():
        latents, _ = pipe.render(texture, tensors, cameras, 64, background)
    floor = guidance_floor(sds, latents, cameras, generator, args.steps, args.warmup, device)
    print_split(f"Latent-Paint step, arch={args.arch}, device={device_name(device)}, "
                f"rasterizer={type(rasterizer).__name__}, batch={args.batch_size}, {len(tensors['tri'])} triangles, "
                f"{args.steps} steps after {args.warmup} warm-up", parts)
    print_ratio(parts, floor)


if __name__ == "__main__":
    main()
