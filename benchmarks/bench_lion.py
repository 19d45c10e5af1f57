"""LION seconds per shape at the paper's sizes with random weights, DDPM (1000 steps) vs the fast DDIM sampler, and the
plain-torch point-voxel operators vs their naive references.

    python benchmarks/bench_lion.py                    # CPU: 2 measured steps per sampler, projected to 1000 / 200
    python benchmarks/bench_lion.py --device cuda --steps 20
    python benchmarks/bench_lion.py --skip-ops --clip-views 8   # + text-driven LION: conditioned steps, features

The model is the released ShapeNet architecture (``chair`` preset: 2048 points, 1 + 3 channels per latent point, a
128-d shape latent, float32 as the public code) with random weights. Each sampler runs ``LionModel.sample`` for one
shape over ``--steps`` steps per DDM (both DDMs), the per-step time is projected to the public step counts (DDPM T =
1000, DDIM ``ddim_steps`` = 200), and the decoder's time is added once. The ratio DDPM ÷ DDIM is therefore about
1000 / 200 by construction (both samplers make one call per DDM per step); the measured per-step times show it.

Operators: ``avg_voxelize`` (scatter mean) and ``trilinear_devoxelize`` (``grid_sample``) at R = 32, N = 2048, C = 64
against ``avg_voxelize_reference`` (a dense R³ × N one-hot product) and ``trilinear_devoxelize_reference`` (the CUDA
kernel's 8 corners gathered one by one), forward + backward, median of ``--repeats``.

Text-driven LION (``--clip-views N``): the same architecture with CLIP-conditioned priors (``clip_dim`` 512), its DDIM
step measured like the unconditional one; and the one-off cost of a training mesh's feature — N grey renders
(``backend.lion.clip_features.render_views``, an icosphere of 1,280 faces) at ViT-B/32's 224 px, embedded by the
ViT-B/32 image tower with seeded random weights (``ViT-B-32/random``: the public architecture, no download) and
averaged — the median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dataclasses  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from backend.geometry.mesh import TriMesh  # noqa: E402
from backend.lion.checkpoint import build_model  # noqa: E402
from backend.lion.clip_features import shape_features  # noqa: E402
from backend.lion.config import get_preset  # noqa: E402
from backend.lion.pvcnn import (avg_voxelize, avg_voxelize_reference, trilinear_devoxelize,  # noqa: E402
                                trilinear_devoxelize_reference, voxel_coordinates)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _op_time(op, feats, grid, coords, r, device, repeats) -> tuple[float, float]:
    def vox():
        f = feats.detach().requires_grad_(True)
        op[0](f, coords, r).sum().backward()

    def devox():
        g = grid.detach().requires_grad_(True)
        op[1](g, coords, r).sum().backward()

    vox(), devox()  # warm-up
    return (statistics.median(_timed(vox, device) for _ in range(repeats)),
            statistics.median(_timed(devox, device) for _ in range(repeats)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--arch", default="chair", help="LION preset (chair = the released 2048-point model, tiny)")
    parser.add_argument("--steps", type=int, default=2, help="measured steps per DDM and sampler (projected)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of each operator timing (median)")
    parser.add_argument("--skip-model", action="store_true", help="only the point-voxel operators")
    parser.add_argument("--skip-ops", action="store_true", help="not the point-voxel operators")
    parser.add_argument("--clip-views", type=int, default=0,
                        help="also text-driven LION: its DDIM step and a mesh's feature from this many views")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    if not args.skip_ops:
        _ops(device, args.repeats)
    if not args.skip_model:
        _model(device, args.arch, args.steps)
    if args.clip_views > 0:
        _clip(device, args.arch, args.steps, args.clip_views, args.repeats)
    return 0


def _ops(device: torch.device, repeats: int) -> None:
    r, n, c = 32, 2048, 64
    coords = voxel_coordinates(torch.randn(1, 3, n, device=device), r)
    feats = torch.randn(1, c, n, device=device)
    grid = torch.randn(1, c, r, r, r, device=device)
    ours = _op_time((avg_voxelize, trilinear_devoxelize), feats, grid, coords, r, device, repeats)
    ref = _op_time((avg_voxelize_reference, trilinear_devoxelize_reference), feats, grid, coords, r, device,
                   repeats)
    print(f"point-voxel ops (R={r}, N={n}, C={c}, forward+backward, {device.type}):")
    for name, a, b in (("voxelize", ours[0], ref[0]), ("devoxelize", ours[1], ref[1])):
        print(f"  {name:<11} ours {a * 1e3:8.2f} ms   reference {b * 1e3:8.2f} ms   reference/ours {b / a:6.1f}x")


def _model(device: torch.device, arch: str, steps: int) -> None:
    cfg = get_preset(arch)
    model = build_model(cfg, seed=0).to(device).eval()
    gen = torch.Generator(device=device).manual_seed(0)
    model.sample(1, steps=1, sampler="ddim", generator=gen)  # warm-up
    per_step = {}
    for sampler in ("ddpm", "ddim"):
        seconds = _timed(lambda: model.sample(1, steps=steps, sampler=sampler, generator=gen), device)
        per_step[sampler] = seconds / steps
    latents = model.sample(1, steps=1, sampler="ddim", generator=gen)
    with torch.no_grad():
        decode = _timed(lambda: model.decode(latents), device)
    ddpm = per_step["ddpm"] * cfg.timesteps + decode
    ddim = per_step["ddim"] * cfg.ddim_steps + decode
    print(f"LION {arch} ({cfg.num_points} points, random weights, float32, {device.type}; "
          f"{steps} measured steps per sampler):")
    print(f"  per step (both DDMs): ddpm {per_step['ddpm']:.3f} s   ddim {per_step['ddim']:.3f} s   decode {decode:.3f} s")
    print(f"  seconds per shape:    ddpm x{cfg.timesteps} {ddpm:9.1f} s   ddim x{cfg.ddim_steps} {ddim:9.1f} s   "
          f"ddpm/ddim {ddpm / ddim:.2f}x")


def _clip(device: torch.device, arch: str, steps: int, views: int, repeats: int) -> None:
    import trimesh

    from backend.models.clip import load_clip

    cfg = dataclasses.replace(get_preset(arch), clip_dim=512)
    model = build_model(cfg, seed=0).to(device).eval()
    gen = torch.Generator(device=device).manual_seed(0)
    feat = torch.randn(1, 512, generator=gen, device=device)
    model.sample(1, steps=1, sampler="ddim", generator=gen, clip_feat=feat)  # warm-up
    per_step = _timed(lambda: model.sample(1, steps=steps, sampler="ddim", generator=gen, clip_feat=feat),
                      device) / steps
    clip = load_clip("ViT-B-32/random", device, torch.float32)
    sphere = trimesh.creation.icosphere(3)
    mesh = TriMesh(np.asarray(sphere.vertices, np.float32), np.asarray(sphere.faces, np.int32))
    shape_features(clip, [mesh], views)  # warm-up
    feature = statistics.median(_timed(lambda: shape_features(clip, [mesh], views), device) for _ in range(repeats))
    print(f"text-driven LION {arch} (clip_dim 512, random weights, float32, {device.type}):")
    print(f"  ddim step (both DDMs, conditioned) {per_step:.3f} s   -> x{cfg.ddim_steps} {per_step * cfg.ddim_steps:.1f} s")
    print(f"  feature of one training mesh: {views} renders at {clip.image_size} px + ViT-B/32 image tower "
          f"{feature:.3f} s")


if __name__ == "__main__":
    raise SystemExit(main())
