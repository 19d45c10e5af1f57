"""Point-E seconds per shape at full size with random weights: CLIP condition, base model, upsampler, SDF mesh.

    python benchmarks/bench_point_e.py                         # CPU: base40M (image), 2 measured Heun steps per stage
    python benchmarks/bench_point_e.py --device cuda --steps 64 --base base40M base300M base1B --grid 128

Each stage is timed on the public architecture (random weights, float32 as the public code) with the pipeline's own
pieces (:mod:`backend.point_e`): the CLIP ViT-L/14 vision tower built from its config (image condition, one 224² image),
the base model's Karras/Heun sampler with classifier-free guidance (batch doubled), the upsampler's (guided, as for an
image), and the SDF model on a ``--grid``³ grid + marching cubes. With ``--steps`` below the public 64, the sampler
stages are measured over that many steps and projected to 64 (per-step time × 64; every Heun step but the last makes
two model calls, so the projection is within one call per stage). Random weights make a noisy SDF, so the mesh column
is an upper bound of what a trained model's surface costs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from backend.point_e.config import get_preset  # noqa: E402
from backend.point_e.diffusion import karras_sample, make_denoiser, unscale_channels  # noqa: E402
from backend.point_e.model import build_net  # noqa: E402
from backend.point_e.sdf import sdf_to_mesh  # noqa: E402

PUBLIC_STEPS = 64


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _clip_vision(device: torch.device):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14, projection_dim=768)
    return CLIPVisionModel(cfg).to(device).eval()


def _stage(name: str, device: torch.device, steps: int, cond: dict, uncond: dict, shape, generator) -> tuple:
    preset = get_preset(name)
    torch.manual_seed(0)
    net = build_net(preset).to(device).eval()
    den = make_denoiser(net, preset.sampler, cond, uncond, preset.sampler.guidance_scale)
    _sync(device)
    t0 = time.perf_counter()
    x = karras_sample(den, shape, preset.sampler, generator, device, steps=steps)
    _sync(device)
    seconds = time.perf_counter() - t0
    del net
    return unscale_channels(x), seconds / steps * PUBLIC_STEPS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--base", nargs="+", default=["base40M"], choices=["base40M", "base300M", "base1B"])
    parser.add_argument("--steps", type=int, default=2, help="Heun steps measured per sampler stage (public: 64)")
    parser.add_argument("--grid", type=int, default=32, help="SDF grid resolution (public evaluation: 128)")
    parser.add_argument("--samples", type=int, default=1, help="shapes per batch")
    args = parser.parse_args()
    device = torch.device(args.device)
    b = args.samples
    g = torch.Generator().manual_seed(0)
    print(f"device {device}, {torch.get_num_threads()} threads, batch {b}, {args.steps} measured steps per stage "
          f"(projected to {PUBLIC_STEPS}), SDF grid {args.grid}³, random weights, float32")

    with torch.no_grad():
        clip = _clip_vision(device)
        pixels = torch.randn(1, 3, 224, 224, generator=g).to(device)
        clip(pixel_values=pixels)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        grid = clip(pixel_values=pixels).last_hidden_state[:, 1:].permute(0, 2, 1).expand(b, -1, -1).contiguous()
        _sync(device)
        t_clip = time.perf_counter() - t0
        del clip

        rows = []
        for name in args.base:
            coarse, t_base = _stage(name, device, args.steps, {"clip": grid}, {"clip": torch.zeros_like(grid)},
                                    (b, 6, 1024), g)
            low = coarse.clamp(-1, 256)
            fine, t_up = _stage("upsample", device, args.steps, {"clip": grid, "low_res": low},
                                {"clip": torch.zeros_like(grid), "low_res": torch.zeros_like(low)}, (b, 6, 3072), g)
            points = torch.cat([coarse, fine], -1)[0, :3].T.clamp(-0.5, 0.5)
            sdf = build_net(get_preset("sdf")).to(device).eval()
            _sync(device)
            t0 = time.perf_counter()
            out = sdf_to_mesh(sdf, points, args.grid)
            _sync(device)
            t_mesh = (time.perf_counter() - t0) * b
            total = t_clip + t_base + t_up + t_mesh
            rows.append((name, t_base / b, t_up / b, t_mesh / b, total / b, len(out.mesh.t_pos_idx)))

    print(f"\nCLIP ViT-L/14 image grid: {t_clip:.3f} s per batch")
    print("| base | base s/shape | upsample s/shape | SDF mesh s/shape | total s/shape | faces (random SDF) |")
    print("|---|---|---|---|---|---|")
    for name, tb, tu, tm, tt, faces in rows:
        print(f"| {name} | {tb:.2f} | {tu:.2f} | {tm:.2f} | {tt:.2f} | {faces} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

