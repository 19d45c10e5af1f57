"""Seconds per shape of the shape generators side by side, at their full public architectures with random weights
(no download), in one run: Michelangelo (``shape_ldm``), Shap-E (``shap_e``) and Point-E (``point_e``), with ratios
against Michelangelo.

    python benchmarks/bench_shape_models.py                        # CPU, 2 denoising steps each, projected to defaults
    python benchmarks/bench_shape_models.py --steps 0 --device cuda   # the defaults themselves (50 DDIM / 64 Heun)
    python benchmarks/bench_shape_models.py --models point_e          # one model
    python benchmarks/bench_shape_models.py --arch tiny            # the tests' tiny presets (seconds)

Each model runs its own pipeline end to end (``PIPELINES[name].run``: conditioning, denoising with classifier-free
guidance, field on the default grid, marching cubes, clean-up, vertex colours where the model has them) on one prompt,
after a small warm-up run, in this process. A full-size run of the default step counts takes hours on a CPU, so
``--steps K`` runs K steps and the table also projects the default: ``total − denoise + denoise × (network calls at
the default / calls at K)`` — the denoiser's calls are the same work each (DDIM: one batched CFG call per step; Heun:
two per step but the last). Random weights give arbitrary shapes: face counts (and so the extraction's clean-up time)
differ from real shapes'.

Point-E's row is the text path (base40M-textvec + CLIP ViT-L/14's text tower, the upsampler unguided as for a prompt,
the SDF model on the default 128³ grid); its "steps" are the base model's Karras/Heun steps, and the upsampler runs
the same number (both are 64 by default), so its calls are those of both samplers.

One more model = one more entry of :data:`MODELS`: a function ``(arch, device) -> Row``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

PROMPT = "a swivel office chair with five wheels"


@dataclass
class Row:
    """One model to time.

    Attributes:
        name: the table's label.
        run: ``(num_inference_steps, warm_up, grid) -> timings dict`` (seconds per phase; must contain ``denoise``;
            ``grid`` 0 = the pipeline's default grid).
        default_steps: the pipeline's default ``num_inference_steps``.
        calls: ``steps -> denoiser calls`` (DDIM: steps; Heun: 2 × steps − 1).
        grid: the default grid of the mesh extraction (samples per axis).
        params: parameters of the denoiser (for the table).
    """

    name: str
    run: Callable[[int, bool, int], dict]
    default_steps: int
    calls: Callable[[int], int]
    grid: int
    params: int


class OneModel:
    """The model cache's interface, holding one preloaded model (whatever the loader and name asked for)."""

    def __init__(self, model):
        self.model = model

    def get(self, loader, model, device, dtype=None):
        return self.model


def _count(*modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def michelangelo(arch: str, device: torch.device) -> Row:
    """Michelangelo text → shape: text-ASLDM-256 (or the tiny preset) with random weights, ``shape_ldm`` defaults."""
    from bench_shape_decode import build_bundle

    from backend.params import parse_config
    from backend.pipelines import PIPELINES
    from backend.pipelines.base import JobContext, PipelineInputs

    bundle = build_bundle("tiny" if arch == "tiny" else "michelangelo-256", device)
    spec = PIPELINES["shape_ldm"]
    ctx = JobContext(device=device, models=OneModel(bundle))

    def run(steps: int, warm_up: bool, grid: int = 0) -> dict:
        params = {"model": arch, "prompt": PROMPT, "num_inference_steps": steps, "preview_resolution": 0}
        if warm_up or grid:
            params.update(grid_resolution=16 if warm_up else grid)
        return spec.run(parse_config(spec.config_class, params), PipelineInputs(), ctx).timings

    default = spec.config_class()
    return Row("Michelangelo (shape_ldm, text-ASLDM-256)" if arch != "tiny" else "Michelangelo (tiny)", run,
               default.num_inference_steps, lambda steps: steps, default.grid_resolution, _count(bundle.denoiser))


def shap_e(arch: str, device: torch.device) -> Row:
    """Shap-E text → coloured mesh: the public architecture (``random-shap-e``) or ``tiny-random``, ``shap_e``
    defaults."""
    from backend.models.base import TINY_RANDOM
    from backend.models.shap_e import RANDOM_SHAP_E, load_shap_e
    from backend.params import parse_config
    from backend.pipelines import PIPELINES
    from backend.pipelines.base import JobContext, PipelineInputs

    model = TINY_RANDOM if arch == "tiny" else RANDOM_SHAP_E
    bundle = load_shap_e(model, device)
    spec = PIPELINES["shap_e"]
    ctx = JobContext(device=device, models=OneModel(bundle))

    def run(steps: int, warm_up: bool, grid: int = 0) -> dict:
        params = {"model": model, "prompt": PROMPT, "num_inference_steps": steps}
        if warm_up or grid:
            params.update(grid_resolution=16 if warm_up else grid)
        return spec.run(parse_config(spec.config_class, params), PipelineInputs(), ctx).timings

    default = spec.config_class()
    return Row("Shap-E (shap_e, openai/shap-e)" if arch != "tiny" else "Shap-E (tiny)", run,
               default.num_inference_steps, lambda steps: 2 * steps - 1, default.grid_resolution,
               _count(bundle.text.prior))


class RandomPointE:
    """The model cache's interface for Point-E at its public sizes with random weights (no file, no download): each
    network from its preset, CLIP ViT-L/14's text tower from its config with the byte-level tokenizer."""

    def __init__(self, device: torch.device):
        self.device, self.nets = device, {}

    def get(self, loader, model, device, dtype=None):
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        from backend.models.tokenizers import byte_level_clip_tokenizer
        from backend.point_e.clip import PointECLIP
        from backend.point_e.config import get_preset
        from backend.point_e.model import PointENet, build_net

        if model not in self.nets:
            torch.manual_seed(0)
            if model.startswith("text:"):
                tokenizer = byte_level_clip_tokenizer()
                cfg = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072,
                                     num_hidden_layers=12, num_attention_heads=12, projection_dim=768,
                                     max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
                self.nets[model] = PointECLIP(CLIPTextModelWithProjection(cfg), None, tokenizer).to(self.device)
            else:
                preset = get_preset(model)
                net = build_net(preset).to(self.device).eval().requires_grad_(False)
                self.nets[model] = PointENet(preset, net, model, self.device, torch.float32)
        return self.nets[model]


def point_e(arch: str, device: torch.device) -> Row:
    """Point-E text → coloured points + mesh: the public sizes with random weights (or ``tiny-random``), ``point_e``
    defaults."""
    from backend.models.base import TINY_RANDOM
    from backend.models.cache import ModelCache
    from backend.params import parse_config
    from backend.pipelines import PIPELINES
    from backend.pipelines.base import JobContext, PipelineInputs
    from backend.point_e.model import load_point_e

    model = TINY_RANDOM if arch == "tiny" else "auto"
    cache = ModelCache(4) if arch == "tiny" else RandomPointE(device)
    spec = PIPELINES["point_e"]
    ctx = JobContext(device=device, models=cache)

    def run(steps: int, warm_up: bool, grid: int = 0) -> dict:
        params = {"model": model, "prompt": PROMPT, "num_inference_steps": steps, "upsample_steps": steps}
        if warm_up or grid:
            params.update(grid_resolution=16 if warm_up else grid)
        timings = spec.run(parse_config(spec.config_class, params), PipelineInputs(), ctx).timings
        return {**timings, "denoise": timings["base"] + timings.get("upsample", 0.0)}

    default = spec.config_class()
    nets = ("tiny-textvec", "tiny-upsample") if arch == "tiny" else ("base40M-textvec", "upsample")
    denoisers = [cache.get(load_point_e, name, device).net for name in nets]
    return Row("Point-E (point_e, base40M-textvec + upsample)" if arch != "tiny" else "Point-E (tiny)", run,
               default.num_inference_steps, lambda steps: 2 * (2 * steps - 1), default.grid_resolution,
               _count(*denoisers))


MODELS: dict[str, Callable[[str, torch.device], Row]] = {"michelangelo": michelangelo, "shap_e": shap_e,
                                                           "point_e": point_e}
"""Model name → row builder; the first is the baseline of the ratios."""


def measure(row: Row, steps: int, device: torch.device, grid: int = 0) -> dict:
    """Warm up (1 step, 16³ grid), then one timed run at ``steps`` (0 = the default) on ``grid`` (0 = the default);
    the projection to the default steps (on the timed grid)."""
    steps = steps or row.default_steps
    row.run(1, True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    timings = row.run(steps, False, grid)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    total = time.perf_counter() - t0
    denoise = timings["denoise"]
    projected = total - denoise + denoise * row.calls(row.default_steps) / row.calls(steps)
    return {"steps": steps, "total": total, "denoise": denoise, "per_call": denoise / row.calls(steps),
            "rest": total - denoise, "projected": projected}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=("full", "tiny"), default="full", help="public architectures or tiny presets")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1…")
    ap.add_argument("--steps", type=int, default=2, help="denoising steps timed (0 = each model's default)")
    ap.add_argument("--grid", type=int, default=0,
                    help="grid of every model's mesh extraction (0 = each model's default; smaller for a quick CPU run)")
    ap.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS), help="models to time")
    args = ap.parse_args(argv)
    from backend.models.devices import resolve_device

    device = resolve_device(args.device)
    torch.manual_seed(0)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, device {device}, arch {args.arch}, steps {args.steps or 'default'}, grid {args.grid or 'default'}",
          flush=True)
    results = []
    for name in args.models:
        t0 = time.perf_counter()
        row = MODELS[name](args.arch, device)
        built = time.perf_counter() - t0
        results.append((row, measure(row, args.steps, device, args.grid)))
        print(f"# {row.name}: built in {built:.1f} s, measured", flush=True)
    base = results[0][1]["projected"]
    print("| model | denoiser params | steps timed (calls) | s per denoiser call | denoise s | rest s "
          "(condition + extract) | s per shape at the timed steps | default steps (calls), grid | s per shape at the "
          "defaults (projected) | × first row |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row, m in results:
        print(f"| {row.name} | {row.params / 1e6:.0f} M | {m['steps']} ({row.calls(m['steps'])}) | {m['per_call']:.2f} "
              f"| {m['denoise']:.1f} | {m['rest']:.1f} | {m['total']:.1f} | {row.default_steps} "
              f"({row.calls(row.default_steps)}), {args.grid or row.grid}³ | {m['projected']:.0f} | "
              f"{m['projected'] / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
