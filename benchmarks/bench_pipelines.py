"""Every pipeline end to end: seconds per step, projected seconds per asset at the defaults and peak memory, one table.

    python benchmarks/bench_pipelines.py --arch tiny                       # CPU, tiny presets, 32³ grids: ~a minute
    python benchmarks/bench_pipelines.py --steps 2 --pipelines latent_paint latent_nerf   # CPU, full size
    python benchmarks/bench_pipelines.py --device cuda --arch full --steps 20               # a GPU session

Each pipeline of :data:`backend.pipelines.PIPELINES` runs through ``PIPELINES[name].run(config, inputs,
JobContext(...))`` at its defaults except its step counts, with random weights: the full public architectures
(``--arch full``: Stable Diffusion 1.5, text-ASLDM-256 + a CLIP ViT-L/14-sized text tower, Shap-E, Point-E
base40M-textvec + upsampler + SDF, CLIP ViT-B/32 for Dream Fields) or the tests' tiny presets (``--arch tiny``, a check of this script in a minute).
A pipeline missing from :data:`CASES` gets a "not covered" row: a new pipeline must add its case here.

Per pipeline, in a fresh child process (so one pipeline's memory neither hides nor inflates another's):

1. the models are loaded into the model cache by an untimed warm-up run (1 step, a 16³ grid, small textures);
2. the timed run: every stepped stage (Latent-Paint and Latent-NeRF's optimisation, Latent-NeRF's sketch fit, the
   denoising of the shape models, Point-E's base and upsampler) runs K + 2 steps (``--steps K``); the seconds of a
   step are the gaps between the stage's consecutive ``context.progress`` reports (the device synchronised at each
   report), the first step being a warm-up and the last dropped (a Heun sampler's last step makes one network call
   instead of two), the median of the K others;
3. projected seconds per asset at the defaults = the timed run's total + Σ over its stepped stages (default steps −
   steps run) × the stage's seconds per step: setup, conditioning, extraction, texture decode and baking are measured
   as they are, the steps are projected;
4. peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the timed run (the peak statistics reset after the
   warm-up; the weights stay resident, so they count), on a CPU the child's peak resident set size (``ru_maxrss``,
   weights, warm-up and the run together).

``× previous``: Latent-NeRF's previous implementation (the plain-torch hash grid, every sample evaluated:
``hashgrid_impl=reference, occupancy_resolution=0``) is measured in the same invocation, in its own child, and the
defaults' row shows previous s/asset ÷ this s/asset (> 1: faster than before). The other pipelines have no previous
implementation (—). ``× target``: projected s/asset ÷ the issue's targets (Latent-Paint ≤ 120 s, Latent-NeRF ≤ 180 s
per asset) and peak ÷ 8 GiB — targets set for an H100 (GPU memory), so CPU figures are far above them by nature.

``--grid N`` sets every extraction grid (Latent-NeRF's ``mesh_resolution``, the others' ``grid_resolution``) instead
of its default, for quick CPU runs (``--arch tiny`` uses 32 unless given); the table then says the projection is at
that grid, not at the defaults. Random weights make noisy fields, so extraction and clean-up cost more than with a
trained model's shapes.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

PROMPT = "a swivel office chair with five wheels"
RESULT_MARK = "BENCH_RESULT "
TIME_TARGETS_S = {"latent_paint": 120.0, "latent_nerf": 180.0}
"""The issue's seconds per asset, on an H100."""
MEMORY_TARGET_MB = 8 * 1024.0
"""The issue's peak memory of every pipeline at its defaults (8 GiB of GPU memory), in MiB."""
WARMUP_GRID = 16


# ---------------------------------------------------------------------------------------------------------------------
# The cases: what each pipeline needs to run, which stages are stepped, how to scale them.
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class Stage:
    """A stepped stage of a pipeline.

    Attributes:
        name: the stage name of its ``context.progress`` reports.
        set_steps: ``n -> config updates`` that make the stage run n steps.
        steps_of: ``config -> steps the stage runs`` (the default's steps from the default config).
    """

    name: str
    set_steps: Callable[[int], dict]
    steps_of: Callable[[object], int]


def _field(name: str) -> Callable[[int], dict]:
    return lambda n: {name: n}


def _ddim_run(num_inference_steps: int, strength: float) -> int:
    """DDIM steps run by :func:`backend.michelangelo.sampling.sample_latents` for ``strength`` < 1 (the schedule's
    last ``strength`` part: ``N − min(round(N (1 − strength)), N − 1)``)."""
    return num_inference_steps - min(int(round(num_inference_steps * (1.0 - strength))), num_inference_steps - 1)


def _ddim_steps_for(n: int, strength: float) -> int:
    """The smallest ``num_inference_steps`` whose partial schedule at ``strength`` runs at least ``n`` steps."""
    steps = n
    while _ddim_run(steps, strength) < n:
        steps += 1
    return steps


@dataclass
class Case:
    """How to benchmark one pipeline.

    Attributes:
        pipeline: the :data:`~backend.pipelines.PIPELINES` key.
        label: the table's pipeline cell.
        build: ``(arch, device) -> (models, params, inputs)``: the model cache (or a stand-in with its ``get``), the
            pipeline's parameters besides its defaults (prompt, model), the :class:`PipelineInputs`.
        stages: the stepped stages.
        grid_field: the config field of the extraction grid ("" when none).
        warmup: config updates of the warm-up run beyond its 1-step stages (small grids and textures).
        extra: config updates of both runs (the previous implementation's settings).
        previous_of: for a "previous implementation" case, the case it is compared with.
    """

    pipeline: str
    label: str
    build: Callable
    stages: list[Stage]
    grid_field: str = ""
    warmup: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    previous_of: str = ""


def _mesh(trimesh_mesh):
    from backend.geometry.mesh import TriMesh

    return TriMesh(np.asarray(trimesh_mesh.vertices, np.float32), np.asarray(trimesh_mesh.faces, np.int32))


def _sd_build(arch: str, device: torch.device, inputs: Callable[[], dict]):
    from backend.models.base import TINY_RANDOM
    from backend.models.cache import ModelCache
    from backend.models.stable_diffusion import RANDOM_SD15
    from backend.pipelines.base import PipelineInputs

    model = TINY_RANDOM if arch == "tiny" else RANDOM_SD15
    return ModelCache(1), {"prompt": PROMPT, "model": model}, PipelineInputs(meshes=inputs())


def _build_latent_paint(arch, device):
    import trimesh

    return _sd_build(arch, device, lambda: {"mesh": _mesh(trimesh.creation.icosphere(subdivisions=4))})


def _build_refine_mesh(arch, device):
    import trimesh

    return _sd_build(arch, device, lambda: {"mesh": _mesh(trimesh.creation.icosphere(subdivisions=4))})


def _build_latent_nerf(arch, device):
    from bench_latent_nerf_step import blockout

    return _sd_build(arch, device, lambda: {"sketch": blockout()})


def _build_michelangelo(inputs: Callable[[], dict]):
    def build(arch, device):
        from bench_shape_decode import build_bundle
        from bench_shape_models import OneModel

        from backend.pipelines.base import PipelineInputs

        models = OneModel(build_bundle("tiny" if arch == "tiny" else "michelangelo-256", device))
        return models, {"model": "auto"}, PipelineInputs(meshes=inputs())
    return build


def _build_shape_ldm(arch, device):
    models, params, inputs = _build_michelangelo(dict)(arch, device)
    return models, {**params, "prompt": PROMPT}, inputs


def _variations_inputs() -> dict:
    from bench_latent_nerf_step import blockout

    return {"mesh": blockout()}


def _interpolate_inputs() -> dict:
    import trimesh

    from bench_latent_nerf_step import blockout

    return {"mesh": blockout(), "mesh_b": _mesh(trimesh.creation.icosphere(subdivisions=3))}


def _build_shap_e(arch, device):
    from backend.models.base import TINY_RANDOM
    from backend.models.cache import ModelCache
    from backend.models.shap_e import RANDOM_SHAP_E
    from backend.pipelines.base import PipelineInputs

    model = TINY_RANDOM if arch == "tiny" else RANDOM_SHAP_E
    return ModelCache(1), {"prompt": PROMPT, "model": model}, PipelineInputs()


def _build_point_e(arch, device):
    from bench_shape_models import RandomPointE

    from backend.models.base import TINY_RANDOM
    from backend.models.cache import ModelCache
    from backend.pipelines.base import PipelineInputs

    if arch == "tiny":
        return ModelCache(4), {"prompt": PROMPT, "model": TINY_RANDOM}, PipelineInputs()
    return RandomPointE(device), {"prompt": PROMPT, "model": "auto"}, PipelineInputs()


def _build_dream_fields(arch, device):
    from backend.models.base import TINY_RANDOM
    from backend.models.cache import ModelCache
    from backend.pipelines.base import PipelineInputs

    model = TINY_RANDOM if arch == "tiny" else "ViT-B-32/random"  # the default CLIP's architecture, random weights
    return ModelCache(1), {"prompt": PROMPT, "model": model}, PipelineInputs()


def _build_clip_mesh(arch, device):
    from backend.models.base import TINY_RANDOM
    from backend.models.cache import ModelCache
    from backend.pipelines.base import PipelineInputs

    model = TINY_RANDOM if arch == "tiny" else "ViT-B-32/random"  # the default CLIP's architecture, random weights
    # from the default icosphere; the prior only at tiny size (its public weights are a download)
    prior = {"prior_model": TINY_RANDOM} if arch == "tiny" else {"use_prior": False}
    return ModelCache(1), {"prompt": PROMPT, "model": model, **prior}, PipelineInputs()


_SDS_WARMUP = {"preview_every": 0, "vae_preview_every": 0}
_NERF_STAGES = [Stage("fit_sketch", _field("sketch_init_iterations"), lambda c: c.sketch_init_iterations),
                Stage("optimize", _field("iterations"), lambda c: c.iterations)]
_NERF_WARMUP = {**_SDS_WARMUP, "mesh_resolution": 32, "texture_size": 64, "sketch_grid_resolution": 16}
_SHAPE_WARMUP = {"preview_resolution": 0}

CASES: dict[str, Case] = {
    "latent_paint": Case(
        "latent_paint", "Latent-Paint (`latent_paint`, icosphere 5120 triangles)", _build_latent_paint,
        [Stage("optimize", _field("iterations"), lambda c: c.iterations)],
        warmup={**_SDS_WARMUP, "latent_texture_size": 16, "texture_size": 64}),
    "latent_nerf": Case(
        "latent_nerf", "Latent-NeRF (`latent_nerf`, sketch: box + cylinder)", _build_latent_nerf, _NERF_STAGES,
        grid_field="mesh_resolution", warmup=_NERF_WARMUP),
    "latent_nerf:previous": Case(
        "latent_nerf", "previous: Latent-NeRF with the reference hash grid, no occupancy grid", _build_latent_nerf,
        _NERF_STAGES, grid_field="mesh_resolution", warmup=_NERF_WARMUP,
        extra={"hashgrid_impl": "reference", "occupancy_resolution": 0}, previous_of="latent_nerf"),
    "refine_mesh": Case(
        "refine_mesh", "Magic3D refinement (`refine_mesh`, icosphere 5120 triangles, 512² renders)",
        _build_refine_mesh, [Stage("refine", _field("iterations"), lambda c: c.iterations)],
        grid_field="dmtet_resolution", warmup={**_SDS_WARMUP, "texture_resolution": 64, "partial_every": 0}),
    "clip_mesh": Case(
        "clip_mesh", "CLIP-Mesh (`clip_mesh`, icosphere 642 control vertices, CLIP ViT-B/32)", _build_clip_mesh,
        [Stage("optimize", _field("iterations"), lambda c: c.iterations)],
        warmup={"preview_every": 0, "partial_every": 0, "texture_size": 64}),
    "dream_fields": Case(
        "dream_fields", "Dream Fields (`dream_fields`, CLIP ViT-B/32)", _build_dream_fields,
        [Stage("optimize", _field("iterations"), lambda c: c.iterations)],
        grid_field="mesh_resolution", warmup={"preview_every": 0, "mesh_resolution": 32, "texture_size": 64}),
    "shape_ldm": Case(
        "shape_ldm", "Michelangelo text → shape (`shape_ldm`)", _build_shape_ldm,
        [Stage("denoise", _field("num_inference_steps"), lambda c: c.num_inference_steps)],
        grid_field="grid_resolution", warmup=_SHAPE_WARMUP),
    "shape_variations": Case(
        "shape_variations", "variations of a mesh (`shape_variations`, 4 samples, strength 0.5)",
        _build_michelangelo(_variations_inputs),
        [Stage("denoise", lambda n: {"num_inference_steps": _ddim_steps_for(n, 0.5)},
               lambda c: _ddim_run(c.num_inference_steps, c.strength))],
        grid_field="grid_resolution", warmup=_SHAPE_WARMUP),
    "shape_interpolate": Case(
        "shape_interpolate", "in-betweens of two meshes (`shape_interpolate`, 3 shapes)",
        _build_michelangelo(_interpolate_inputs), [], grid_field="grid_resolution", warmup=_SHAPE_WARMUP),
    "shap_e": Case(
        "shap_e", "Shap-E text → coloured mesh (`shap_e`)", _build_shap_e,
        [Stage("denoise", _field("num_inference_steps"), lambda c: c.num_inference_steps)],
        grid_field="grid_resolution"),
    "point_e": Case(
        "point_e", "Point-E text → points + mesh (`point_e`)", _build_point_e,
        [Stage("base", _field("num_inference_steps"), lambda c: c.num_inference_steps),
         Stage("upsample", _field("upsample_steps"), lambda c: c.upsample_steps)],
        grid_field="grid_resolution"),
}
"""Case name → :class:`Case`; a pipeline's own case has its name, its previous implementation ``<name>:previous``."""


# ---------------------------------------------------------------------------------------------------------------------
# One measurement (child process).
# ---------------------------------------------------------------------------------------------------------------------

def measure(case_name: str, arch: str, device_name: str, steps: int, grid: int, low_vram: bool = False) -> dict:
    """Warm up, then one timed run of ``case_name`` with ``steps`` timed steps per stepped stage (``low_vram``: the
    model cache loads as under ``--low-vram``); see the module's docstring. Returns the JSON-able figures (seconds,
    MiB)."""
    from backend.geometry.mesh import MeshError
    from backend.models.devices import resolve_device
    from backend.params import parse_config
    from backend.pipelines import PIPELINES
    from backend.pipelines.base import JobContext

    case = CASES[case_name]
    spec = PIPELINES[case.pipeline]
    device = resolve_device(device_name)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    torch.manual_seed(0)
    t0 = time.perf_counter()
    models, params, inputs = case.build(arch, device)
    if low_vram:  # the pipelines whose models come from the shared cache load them as `--low-vram` does
        models.low_vram = True
    params = {**params, **case.extra}
    build_s = time.perf_counter() - t0

    # 1. Warm-up: loads every model into the cache, first calls of every kernel.
    warm = dict(params)
    for stage in case.stages:
        warm.update(stage.set_steps(1))
    if case.grid_field:
        warm[case.grid_field] = WARMUP_GRID
    warm.update(case.warmup)
    t0 = time.perf_counter()
    try:
        spec.run(parse_config(spec.config_class, warm), inputs, JobContext(device=device, models=models))
    except MeshError:
        pass  # a 1-step field without a surface at the warm-up grid: the models are loaded all the same
    sync()
    warmup_s = time.perf_counter() - t0

    # 2. The timed run: K + 2 steps per stepped stage, progress timestamps after a device sync.
    timed = dict(params)
    for stage in case.stages:
        timed.update(stage.set_steps(steps + 2))
    if case.grid_field and grid:
        timed[case.grid_field] = grid
    config = parse_config(spec.config_class, timed)
    reports: list[tuple[str, int, float]] = []

    def on_progress(stage, step, total, losses, eta) -> None:
        sync()
        reports.append((stage, step, time.perf_counter()))

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    sync()
    t0 = time.perf_counter()
    spec.run(config, inputs, JobContext(device=device, models=models, on_progress=on_progress))
    sync()
    total = time.perf_counter() - t0

    # 3. Seconds per step of each stage, projection to the defaults.
    defaults = parse_config(spec.config_class, params)
    stages, projected = [], total
    for stage in case.stages:
        times = {step: t for name, step, t in reports if name == stage.name}  # last report of each step
        run_steps = stage.steps_of(config)
        gaps = [times[s] - times[s - 1] for s in range(2, run_steps) if s in times and s - 1 in times]
        if not gaps:
            raise RuntimeError(f"stage {stage.name!r} reported no consecutive steps (reports: {sorted(times)})")
        per_step = statistics.median(gaps)
        default_steps = stage.steps_of(defaults)
        projected += (default_steps - run_steps) * per_step
        stages.append({"name": stage.name, "timed": len(gaps), "run": run_steps, "default": default_steps,
                       "per_step": per_step})
    peak_cuda = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
    return {"case": case_name, "build_s": build_s, "warmup_s": warmup_s, "total_s": total, "stages": stages,
            "projected_s": projected, "peak_cuda_mb": peak_cuda, "peak_rss_mb": peak_rss,
            "grid": getattr(config, case.grid_field) if case.grid_field else None,
            "default_grid": getattr(defaults, case.grid_field) if case.grid_field else None}


# ---------------------------------------------------------------------------------------------------------------------
# The table (parent process).
# ---------------------------------------------------------------------------------------------------------------------

def run_child(case_name: str, args) -> dict:
    """``measure`` in a fresh Python process; its figures, or ``{"error": ...}`` with the child's last output."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", case_name, "--arch", args.arch, "--device",
           args.device, "--steps", str(args.steps), "--grid", str(args.grid)] + (["--low-vram"] if args.low_vram else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
    return {"case": case_name, "error": tail[0] if tail else f"exit status {proc.returncode}"}


def _fmt(x: float) -> str:
    return f"{x:.3g}" if x < 10 else f"{x:.0f}"


def table_row(case: Case, r: dict, args, previous: dict | None) -> str:
    """One Markdown row of :func:`main`'s table."""
    device = "cpu" if args.device == "cpu" else args.device
    if "error" in r:
        return f"| {case.label} | {args.arch} | {device} | failed: {r['error'][:200]} | | | | | | | |"
    st = r["stages"]
    timed = " + ".join(str(s["timed"]) for s in st) or "— (no stepped stage)"
    per_step = " · ".join(f"{s['name']} {_fmt(s['per_step'])}" for s in st) or "—"
    defaults = " + ".join(f"{s['default']}" for s in st) or "—"
    grid = "—" if r["grid"] is None else f"{r['grid']}³" + ("" if r["grid"] == r["default_grid"] else
                                                             f" (default {r['default_grid']}³)")
    cuda = r["peak_cuda_mb"] is not None
    peak = r["peak_cuda_mb"] if cuda else r["peak_rss_mb"]
    peak_cell = f"{peak:.0f} ({'CUDA allocated' if cuda else 'RSS'})"
    if case.previous_of:
        ratio = "(the previous implementation)"
    elif previous is None:
        ratio = "—"
    elif "error" in previous:
        ratio = "previous failed"
    else:
        ratio = f"{previous['projected_s'] / r['projected_s']:.2f}× s/asset, " + ", ".join(
            f"{p['per_step'] / s['per_step']:.2f}× s/step ({s['name']})"
            for p, s in zip(previous["stages"], st) if s["name"] != "fit_sketch")
    target = TIME_TARGETS_S.get(case.pipeline)
    targets = [f"time {r['projected_s'] / target:.2f}" if target else "time —", f"memory {peak / MEMORY_TARGET_MB:.2f}"]
    return (f"| {case.label} | {args.arch} | {device} | {timed} | {per_step} | {defaults} | {grid} | "
            f"{_fmt(r['total_s'])} | {_fmt(r['projected_s'])} | {peak_cell} | {ratio} | {', '.join(targets)} |")


def main(argv: list[str] | None = None) -> int:
    from backend.pipelines import PIPELINES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=("full", "tiny"), default="full",
                    help="full public architectures (random weights) or the tests' tiny presets")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1…")
    ap.add_argument("--steps", type=int, default=0,
                    help="timed steps per stepped stage, the run makes 2 more (default: 2, 1 with --arch tiny)")
    ap.add_argument("--grid", type=int, default=-1,
                    help="extraction grid of every pipeline (0 = each pipeline's default; default: 0, 32 with "
                         "--arch tiny)")
    ap.add_argument("--pipelines", nargs="+", choices=tuple(PIPELINES), default=list(PIPELINES),
                    help="pipelines to run (default: all)")
    ap.add_argument("--no-previous", action="store_true", help="skip the previous implementations (latent_nerf's)")
    ap.add_argument("--low-vram", action="store_true",
                    help="load models as `serve --low-vram` does (Stable Diffusion pipelines: sliced attention, "
                         "tiled VAE, text encoder on the CPU)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.steps < 0:
        ap.error("--steps must be >= 1 (0 = the default)")
    args.steps = args.steps or (1 if args.arch == "tiny" else 2)
    if args.grid < 0:
        args.grid = 32 if args.arch == "tiny" else 0

    if args.child:
        print(RESULT_MARK + json.dumps(measure(args.child, args.arch, args.device, args.steps, args.grid,
                                               args.low_vram)),
              flush=True)
        return 0

    unknown = sorted({c.pipeline for c in CASES.values()} - set(PIPELINES))
    if unknown:
        raise SystemExit(f"CASES names pipelines that PIPELINES does not have: {unknown}")
    threads = torch.get_num_threads()
    gpu = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "no GPU used"
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {threads} threads, "
          f"device {args.device} ({gpu}), arch {args.arch}, {args.steps} timed steps per stage, grid "
          f"{args.grid or 'default'}{', --low-vram' if args.low_vram else ''}", flush=True)
    lines = []
    for name in args.pipelines:
        if name not in CASES:
            lines.append(f"| `{name}` | {args.arch} | {args.device} | not covered: add its case to CASES in "
                         f"benchmarks/bench_pipelines.py | | | | | | | |")
            print(f"# {name}: not covered", flush=True)
            continue
        previous = None
        prev_name = f"{name}:previous"
        if prev_name in CASES and not args.no_previous:
            t0 = time.perf_counter()
            previous = run_child(prev_name, args)
            print(f"# {prev_name}: {time.perf_counter() - t0:.0f} s{' — ' + previous['error'] if 'error' in previous else ''}",
                  flush=True)
        t0 = time.perf_counter()
        result = run_child(name, args)
        print(f"# {name}: {time.perf_counter() - t0:.0f} s{' — ' + result['error'] if 'error' in result else ''}",
              flush=True)
        lines.append(table_row(CASES[name], result, args, previous))
        if previous is not None:
            lines.append(table_row(CASES[prev_name], previous, args, None))
    print("| pipeline | arch | device | steps timed | s/step | default steps | grid | s total (timed run) | "
          "projected s/asset | peak memory MiB | × previous (previous ÷ this) | × target (targets are for an H100: "
          "≤ 120 s Latent-Paint, ≤ 180 s Latent-NeRF, ≤ 8 GiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
