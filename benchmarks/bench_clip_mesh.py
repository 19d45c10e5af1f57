"""CLIP-Mesh step time split into render / CLIP forward / backward + Adam.

    python benchmarks/bench_clip_mesh.py                                   # CPU, tiny-random CLIP
    python benchmarks/bench_clip_mesh.py --arch vit-b-32                   # full ViT-B/32 architecture, random weights
    python benchmarks/bench_clip_mesh.py --arch vit-b-32 --device cuda     # the same on a GPU (+ peak memory)

One step of the pipeline's loop in shape_texture mode: random views, the limit surface of an icosphere control mesh
(``--subdivisions``, ``--levels``), the blurred texture and normal map, normal-mapped diffuse renders with
antialiased silhouettes at ``--render-size`` ("render"); backgrounds, augmentations, the CLIP image tower, the cosine
loss and the Laplacian/deviation terms ("clip"); backward through all of it and Adam ("backward"). Prints median
milliseconds per part, steps/s, the baseline — the CLIP image tower alone on a batch of the same size, no graph — and
the step's ratio to it, all measured in this run (CUDA work is synchronised before every clock read), and the peak
GPU memory on CUDA.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from backend.models.base import TINY_RANDOM  # noqa: E402
from backend.models.clip import load_clip  # noqa: E402
from backend.models.devices import resolve_device  # noqa: E402
from backend.geometry.render import make_rasterizer  # noqa: E402
from backend.pipelines.clip_mesh import (CLIPMeshConfig, CLIPMeshPipeline, build_guidance, sample_lights,  # noqa: E402
                                         sample_views)
from benchmarks.steptime import device_name, print_split, time_steps  # noqa: E402

ARCHS = {"tiny": TINY_RANDOM, "vit-b-32": "ViT-B-32/random"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=tuple(ARCHS), default="tiny", help="tiny-random or ViT-B/32 (random weights)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--render-size", type=int, default=224, help="render side in pixels (the pipeline's default "
                                                                  "is 356)")
    ap.add_argument("--texture-size", type=int, default=512)
    ap.add_argument("--subdivisions", type=int, default=3, help="icosphere subdivisions of the control mesh")
    ap.add_argument("--levels", type=int, default=1, help="Loop levels of the rendered surface")
    args = ap.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    clip = load_clip(ARCHS[args.arch], device, torch.float32)
    config = CLIPMeshConfig(prompt="a carved wooden vase", model=ARCHS[args.arch], batch_size=args.batch_size,
                            render_size=args.render_size, texture_size=args.texture_size,
                            sphere_subdivisions=args.subdivisions, subdivision_levels=args.levels)
    with torch.no_grad():
        target = clip.encode_texts([config.prompt])[0].float()
    guidance = build_guidance(clip, target, config)
    rasterizer = make_rasterizer(device)
    pipe = CLIPMeshPipeline(rasterizer, device)
    generator = torch.Generator(device=device).manual_seed(0)
    run = pipe.setup(config, pipe.control_mesh(config, None), generator)
    optimizer = torch.optim.Adam([run.control, run.albedo, run.normal_map], lr=config.lr)

    def step(mark) -> None:
        cameras = sample_views(config, config.batch_size, generator, device)
        lights = sample_lights(cameras, config.light_jitter, generator)
        rgb, alpha = pipe.render(run, config, cameras, lights)
        mark("render")
        out = guidance(rgb, alpha, cameras, generator)
        lap = torch.sparse.mm(run.laplacian, run.control).pow(2).mean()
        loss = out.loss + config.laplacian_weight * lap + config.deviation_weight * \
            (run.control - run.control_init).pow(2).sum(-1).mean()
        mark("clip")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        mark("backward")

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    parts = time_steps(step, args.steps, args.warmup, device)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    images = torch.rand((config.batch_size, 3, clip.image_size, clip.image_size), device=device,
                        generator=torch.Generator(device=device).manual_seed(1))

    def floor_step(mark) -> None:
        with torch.no_grad():
            clip.encode_images(images)
        mark("clip")

    floor = time_steps(floor_step, args.steps, args.warmup, device)["clip"]
    print_split(f"CLIP-Mesh step, arch={args.arch} ({clip.model_id}, {clip.image_size} px), "
                f"device={device_name(device)}, rasterizer={type(rasterizer).__name__}, batch={config.batch_size}, "
                f"renders {config.render_size}², textures {config.texture_size}², {run.control.shape[0]} control "
                f"vertices → {len(run.tri)} triangles, {args.steps} steps after {args.warmup} warm-up", parts)
    step_s = statistics.median([sum(p) for p in zip(*parts.values())])
    base = statistics.median(floor)
    print(f"baseline: the CLIP image tower alone on {config.batch_size} images, no graph {base * 1e3:.2f} ms; "
          f"step / baseline = {step_s / base:.2f}x")
    if peak is not None:
        print(f"peak GPU memory: {peak / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
