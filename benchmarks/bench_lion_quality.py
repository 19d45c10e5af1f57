"""What training buys LION's DDMs: sample quality of a small LION against decoded random latents, over training.

    python benchmarks/bench_lion_quality.py                                  # micro LION, 3 primitives, 3,000 steps
    python benchmarks/bench_lion_quality.py --steps 12000 --eval-every 3000  # the README's longer run
    python benchmarks/bench_lion_quality.py --device cuda --width 1.0 --points 2048 --steps 50000

Trains LION's VAE (``--vae-steps``) on ``--data`` (default: a sphere, a torus and a flat box made here), then both
latent DDMs with ``python -m backend train lion_ddm``'s code, stopping every ``--eval-every`` steps (the run resumes
exactly from its checkpoint) to sample ``--refs-per-shape`` × shapes clouds (DDIM 50, seeded) and score them against
as many fresh reference clouds of the training shapes (box-normalised, as LION's evaluation):

- 1-NNA (Chamfer; 0.5 ideal, 1.0 = fully told apart) with its generated / reference halves;
- fidelity: the median Chamfer distance from a generated cloud to its nearest reference;
- coverage: how many generated clouds fall nearest to each training shape.

The baseline, in the same run and with the same references, is the trained VAE decoding N(0, I) latents (what the
VAE makes without its priors); ``ref-ref`` is the median distance between two references of one shape (the
sampling noise at this point count). Widths, points and steps are flags, so the same command measures a GPU-sized run.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import trimesh  # noqa: E402

from backend.lion.checkpoint import load_checkpoint  # noqa: E402
from backend.lion.config import get_preset  # noqa: E402
from backend.lion.model import LionLatents, LionModel  # noqa: E402
from backend.lion.train import PointCloudFolder, train_lion_ddm, train_lion_vae  # noqa: E402
from backend.metrics.one_nna import chamfer_distance, evaluate_1nna, normalize_cloud  # noqa: E402


class _Pause(Exception):
    """Raised by the training callback at an evaluation step (the checkpoint of that step is on disk)."""


def _primitives(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    trimesh.creation.icosphere(3, 1.0).export(root / "sphere.ply")
    trimesh.creation.torus(1.0, 0.35).export(root / "torus.ply")
    trimesh.creation.box((1.6, 1.0, 0.6)).export(root / "box.ply")
    return root


def _score(clouds: np.ndarray, refs: list[np.ndarray], refs_per_shape: int) -> dict:
    gen = [normalize_cloud(c.astype(np.float64)) for c in clouds]
    nna = evaluate_1nna(gen, refs, ["cd"])["cd"]
    dist = np.array([[chamfer_distance(g, r) for r in refs] for g in gen])
    coverage = np.bincount(dist.argmin(axis=1) // refs_per_shape, minlength=len(refs) // refs_per_shape)
    return {"1nna": nna["acc"], "gen": nna["acc_generated"], "ref": nna["acc_reference"],
            "fidelity": float(np.median(dist.min(axis=1))), "coverage": coverage.tolist()}


def _row(label: str, s: dict, seconds: float) -> str:
    return (f"{label:>16}  {s['1nna']:5.3f} ({s['gen']:.2f}/{s['ref']:.2f})  {s['fidelity']:8.3f}  "
            f"{str(s['coverage']):>14}  {seconds:8.0f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="", help="folder of training meshes (default: three primitives made here)")
    ap.add_argument("--steps", type=int, default=3000, help="DDM training steps (default 3000)")
    ap.add_argument("--eval-every", type=int, default=1000, help="evaluate every this many DDM steps (default 1000)")
    ap.add_argument("--vae-steps", type=int, default=40, help="VAE training steps (default 40)")
    ap.add_argument("--points", type=int, default=64, help="points per cloud (default 64)")
    ap.add_argument("--width", type=float, default=0.125, help="PVCNN width multiplier (default 0.125; public 1)")
    ap.add_argument("--batch-size", type=int, default=12, help="shapes per DDM step (default 12)")
    ap.add_argument("--lr", type=float, default=5e-3, help="peak DDM learning rate (default 5e-3)")
    ap.add_argument("--mixing-logit-init", type=float, default=0.0, help="initial mixing logit (default 0)")
    ap.add_argument("--no-mixed-prediction", action="store_true", help="plain eps-prediction priors")
    ap.add_argument("--refs-per-shape", type=int, default=6, help="reference clouds per training shape (default 6)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, …")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="lion_quality_"))
    try:
        return _run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, work: Path) -> int:
    data = Path(args.data) if args.data else _primitives(work / "shapes")
    config = dataclasses.replace(get_preset("tiny"), num_points=args.points, first_centers=max(args.points // 2, 1),
                                 width_multiplier=args.width,
                                 group_norm_groups=2 if args.width < 0.25 else 4 if args.width < 0.5 else 8)
    t0 = time.perf_counter()
    train_lion_vae(dict(data=str(data), out=str(work / "vae"), steps=args.vae_steps, batch_size=3, lr=2e-3,
                        device=args.device, save_every=10**9, seed=args.seed), model_config=config, progress=False)
    folder = PointCloudFolder(data, args.points, pool_factor=4, seed=args.seed + 123)  # not the training draws
    rng = np.random.default_rng(0)
    refs = [normalize_cloud(folder.batch([k], rng)[0].numpy().astype(np.float64))
            for k in range(len(folder)) for _ in range(args.refs_per_shape)]
    same = [chamfer_distance(refs[i], refs[i + 1]) for k in range(len(folder))
            for i in range(k * args.refs_per_shape, (k + 1) * args.refs_per_shape - 1)]
    print(f"{len(folder)} training shapes ({', '.join(f.stem for f in folder.files)}), {args.points} points, width "
          f"{args.width}, {len(refs)} generated vs {len(refs)} reference clouds; ref-ref {np.median(same):.3f}")
    print(f"{'':>16}  {'1-NNA (gen/ref)':>18}  {'fidelity':>8}  {'coverage':>14}  {'seconds':>8}")
    cfg = dict(data=str(data), out=str(work / "ddm"), vae=str(work / "vae"), steps=args.steps,
               batch_size=args.batch_size, lr=args.lr, warmup_steps=10, device=args.device,
               save_every=args.eval_every, log_every=10**9, seed=args.seed,
               mixed_prediction=not args.no_mixed_prediction, mixing_logit_init=args.mixing_logit_init)
    first = True
    while True:
        def pause(step: int, _losses: dict) -> None:
            if step % args.eval_every == 0 and step < args.steps:
                raise _Pause

        try:
            train_lion_ddm({**cfg, "resume": not first}, progress=False, callback=pause)
        except _Pause:
            pass
        first = False
        model, metadata = load_checkpoint(work / "ddm")
        model: LionModel = model.to(args.device).eval()
        n, c = len(refs), model.config
        g = torch.Generator(device=model.device).manual_seed(1)
        with torch.no_grad():
            if metadata["step"] == args.eval_every:
                noise = LionLatents(torch.randn(n, c.style_dim, generator=g, device=model.device),
                                    torch.randn(n, c.num_points, c.latent_point_dim, generator=g, device=model.device))
                print(_row("random latents", _score(model.decode(noise).cpu().numpy(), refs, args.refs_per_shape),
                           time.perf_counter() - t0))
            sampled = model.decode(model.sample(n, steps=50, sampler="ddim", generator=g)).cpu().numpy()
        print(_row(f"DDMs @ {metadata['step']}", _score(sampled, refs, args.refs_per_shape), time.perf_counter() - t0),
              flush=True)
        if metadata["step"] >= args.steps:
            return 0


if __name__ == "__main__":
    raise SystemExit(main())
