"""Sketch-Shape loss per step: precomputed grids + trilinear lookup (ours) vs per-step libigl queries (official).

    python benchmarks/bench_sketch_loss.py                    # CPU, both meshes, 64x64 rays x 64 samples
    python benchmarks/bench_sketch_loss.py --device cuda      # our lookup on the GPU (the official way stays on CPU)

Both sides compute the same loss on the same sample points and densities: the points of one volume render of a
Latent-NeRF at the training resolution (64×64 rays × 64 samples = 262,144 points), the sketch normalised as in
Latent-NeRF. The official approach (latent-nerf's ShapeLoss) moves the points to the CPU, calls libigl's
``fast_winding_number`` (``fast_winding_number_for_meshes`` in older bindings) and ``point_mesh_squared_distance``
every step, and moves the results back; ours is :func:`backend.latent_nerf.sketch.sketch_loss` on a :class:`SketchShape` whose
grids were computed once (its one-off cost is printed too, with the break-even step count). A last column times the
per-step libigl way with the exact winding number where that beats the octree one (small meshes), to show the gain
over the best per-step evaluation too. Timings are medians over
``--steps`` steps after ``--warmup``, CUDA synchronised before every clock read; forward loss only (the backward wrt
the densities is the same elementwise expression on both sides).
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
from backend.latent_nerf.field import LatentNeRF, NeRFConfig
from backend.latent_nerf.volume import get_rays, volume_render  # noqa: E402
from backend.geometry.queries import winding_number
from backend.latent_nerf.sketch import OCCUPANCY_DELTA, sketch_loss, SketchShape  # noqa: E402


def blockout_mesh() -> trimesh.Trimesh:
    """A box and a cylinder poking through it, concatenated (no union): what an artist blocks out."""
    box = trimesh.creation.box(extents=(1.0, 0.8, 0.6))
    cylinder = trimesh.creation.cylinder(radius=0.3, height=1.2, sections=32)
    cylinder.apply_translation((0.4, 0.1, 0.3))
    return trimesh.util.concatenate([box, cylinder])


def dense_mesh() -> trimesh.Trimesh:
    """A 20,480-triangle sphere squashed into an ellipsoid: a dense sketch (e.g. a sculpt)."""
    sphere = trimesh.creation.icosphere(subdivisions=5)
    sphere.apply_scale((1.0, 0.7, 0.5))
    return sphere


def official_loss(points: torch.Tensor, density: torch.Tensor, v_pos: np.ndarray, t_pos_idx: np.ndarray,
                  sigma: float, fast: bool | None = True) -> torch.Tensor:
    """The official per-step evaluation: libigl on the CPU at the step's points, then the same loss expression.

    ``fast=True`` is the official code's octree ``fast_winding_number``; None picks the exact winding number for small
    meshes (<= 1000 faces), the quicker choice there (:func:`backend.geometry.queries.winding_number`).
    """
    import igl

    q = points.detach().cpu().numpy().astype(np.float64)
    v = v_pos.astype(np.float64)
    f = t_pos_idx.astype(np.int64)
    winding = winding_number(v, f, q, fast=fast)
    sq_dist, _, _ = igl.point_mesh_squared_distance(q, v, f)
    winding = torch.from_numpy(winding).to(density.device)
    sq_dist = torch.from_numpy(sq_dist).to(density.device)
    weight = 1.0 - torch.exp(-sq_dist / (2.0 * sigma * sigma))
    target = (winding > 0.5).to(density.dtype).clamp(0.01, 0.99)
    occupancy = 1.0 - torch.exp(-OCCUPANCY_DELTA * density)
    ce = -(occupancy * torch.log(target) + (1.0 - occupancy) * torch.log(1.0 - target))
    return (ce * weight.to(density.dtype)).sum()


def timed(fn, steps: int, warmup: int, sync) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for step in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="where our lookup runs (cpu, cuda, auto)")
    ap.add_argument("--mesh", choices=("blockout", "dense", "both"), default="both")
    ap.add_argument("--size", type=int, default=64, help="render side in rays (64 = Latent-NeRF training)")
    ap.add_argument("--samples", type=int, default=64, help="samples per ray")
    ap.add_argument("--resolution", type=int, default=128, help="winding-number grid resolution")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--sigma", type=float, default=0.3)
    args = ap.parse_args()

    device = resolve_device(args.device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # The step's sample points and densities: one render of a (blob-initialised) Latent-NeRF from a random camera.
    torch.manual_seed(0)
    nerf = LatentNeRF(NeRFConfig()).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    cameras = sample_cameras(1, generator, device=device)
    rays_o, rays_d = get_rays(cameras, args.size, args.size)
    with torch.no_grad():
        out = volume_render(nerf, rays_o, rays_d, args.samples, perturb=True, generator=generator)
    points, density = out["points"], out["density"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"Sketch-Shape loss per step: {points.shape[0]:,} points ({args.size}x{args.size} rays x {args.samples} "
          f"samples), ours on {name}, official on cpu ({torch.get_num_threads()} threads), median of {args.steps} "
          f"steps after {args.warmup} warm-up")
    print(f"{'mesh':<10}{'faces':>7}{'grid':>6}{'precompute s':>14}{'ours ms':>9}{'official ms':>13}{'speed-up':>10}"
          f"{'break-even':>12}{'loss rel. diff':>16}{'best per-step ms':>18}{'speed-up':>10}")
    meshes = {"blockout": blockout_mesh, "dense": dense_mesh}
    for key in (meshes if args.mesh == "both" else [args.mesh]):
        mesh = meshes[key]()
        sketch = SketchShape(TriMesh(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int32)),
                             resolution=args.resolution, device=device)
        ours_s, ours = timed(lambda: sketch_loss(points, density, sketch, args.sigma, reduction="sum"),
                             args.steps, args.warmup, sync)
        official_s, official = timed(lambda: official_loss(points, density, sketch.v_pos, sketch.t_pos_idx, args.sigma),
                                     max(3, args.steps // 3), 1, sync)
        best_s, _ = timed(lambda: official_loss(points, density, sketch.v_pos, sketch.t_pos_idx, args.sigma, None),
                          max(3, args.steps // 3), 1, sync)
        rel = abs(float(ours) - float(official)) / max(abs(float(official)), 1e-12)
        break_even = sketch.precompute_seconds / max(official_s - ours_s, 1e-9)
        print(f"{key:<10}{len(sketch.t_pos_idx):>7}{args.resolution:>6}{sketch.precompute_seconds:>14.2f}"
              f"{ours_s * 1e3:>9.2f}{official_s * 1e3:>13.1f}{official_s / ours_s:>9.0f}x{break_even:>10.1f} st"
              f"{rel:>16.2e}{best_s * 1e3:>18.1f}{best_s / ours_s:>9.0f}x")
    print("official = libigl fast_winding_number + point_mesh_squared_distance at the step's points (latent-nerf); "
          "best per-step = the same with the exact winding number where that is quicker (<= 1000 faces)")


if __name__ == "__main__":
    main()
