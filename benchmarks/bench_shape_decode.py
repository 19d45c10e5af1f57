"""Michelangelo occupancy decoding + marching cubes per shape: time and peak memory at several grid resolutions,
chunked (what the pipelines do) against a naive all-points-at-once query as the baseline, in one run.

    python benchmarks/bench_shape_decode.py                                   # tiny, CPU, 129³ and 256³
    python benchmarks/bench_shape_decode.py --arch michelangelo-256 --device cuda --end-to-end
    python benchmarks/bench_shape_decode.py --arch michelangelo-256 --resolution 33 65   # full size on a CPU

Per shape and resolution R: seconds of the VAE decode + the occupancy query on the R³ grid in [-1.1, 1.1]³
(``decode+query``), of marching cubes + clean-up (``mesh``), and peak memory:

- ``query peak``: working memory of decode + query beyond the R³ float32 result grid (R³·4 bytes, the output,
  listed as ``grid``): CUDA ``torch.cuda.max_memory_allocated`` above the memory allocated before; CPU: resident set
  size (sampled every millisecond from /proc) above the RSS before, minus the grid. Chunking must keep it flat as R
  grows; the naive query grows with R³.
- ``total peak``: the same including the grid and marching cubes (CPU: RSS; CUDA: device + the host grid).

Every measurement runs in a fresh Python process (so one run's allocator caches do not hide the next one's peak), on
the same random latent (seed 0) of the chosen architecture with random weights: ``tiny`` (the tests' preset) or
``michelangelo-256`` (the public shapevae-256 / ASLDM sizes). A naive run whose memory, extrapolated from a 33³ naive
run, exceeds ``--naive-limit-gb`` is skipped and the extrapolation is reported instead. ``--end-to-end`` adds the
seconds per shape of the whole ``shape_ldm`` path (CLIP ViT-L/14-sized text tower, 50 DDIM steps with guidance, 129³
decode, marching cubes, clean-up), random weights.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ARCHES = ("tiny", "michelangelo-256")
PROBE_RESOLUTION = 33


# ---------------------------------------------------------------------------------------------------------------------
# One measurement (child process).
# ---------------------------------------------------------------------------------------------------------------------

def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRSS:
    """Samples the resident set size every millisecond on a thread; ``peak`` is the largest value seen."""

    def __init__(self):
        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.001)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def _build(arch: str, device):
    """``arch``: "tiny" / "michelangelo-256" (random weights), or a model for load_michelangelo (real weights)."""
    import torch

    from backend.michelangelo.config import get_preset
    from backend.michelangelo.shape_vae import ShapeVAE

    latent = torch.Generator().manual_seed(0)
    if arch not in ARCHES:
        from backend.michelangelo.model import load_michelangelo

        bundle = load_michelangelo(arch, device)
        return bundle.config, bundle.vae, torch.randn(1, *bundle.vae.latent_shape, generator=latent).to(device)
    config = get_preset("tiny" if arch == "tiny" else "shapevae-256")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = ShapeVAE(config.vae).eval().requires_grad_(False).to(device)
    return config, vae, torch.randn(1, *vae.latent_shape, generator=latent).to(device)


def measure(arch: str, device_name: str, resolution: int, mode: str, chunk: int) -> dict:
    """Decode one random latent and extract its mesh at ``resolution``³; ``mode`` "chunked" or "naive"."""
    import numpy as np
    import torch

    from backend.geometry.extract import clean_mesh, marching_cubes, sample_grid
    from backend.geometry.mesh import MeshError
    from backend.models.devices import resolve_device

    device = resolve_device(device_name)
    torch.set_grad_enabled(False)
    config, vae, latents = _build(arch, device)
    bounds = config.bounds
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def naive_grid() -> np.ndarray:
        axis = torch.linspace(-bounds, bounds, resolution, device=device)
        xyz = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(1, -1, 3)
        return vae.query(tokens, xyz)[0].reshape(resolution, resolution, resolution).cpu().numpy()

    # warm-up (kernels, allocator) on a tiny grid, outside the measurement
    tokens = vae.decode(latents)
    sample_grid(lambda p: vae.query(tokens, p[None])[0], 8, bounds, chunk=chunk, device=device)
    del tokens
    sync()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    base_dev = torch.cuda.memory_allocated(device) if cuda else 0
    base_rss = _rss_bytes()
    grid_bytes = resolution ** 3 * 4
    with _PeakRSS() as rss_query:
        t0 = time.perf_counter()
        tokens = vae.decode(latents)
        if mode == "chunked":
            grid = sample_grid(lambda p: vae.query(tokens, p[None])[0], resolution, bounds, chunk=chunk, device=device)
        else:
            grid = naive_grid()
        sync()
        t1 = time.perf_counter()
    dev_query = (torch.cuda.max_memory_allocated(device) - base_dev) if cuda else 0
    with _PeakRSS() as rss_mesh:
        t2 = time.perf_counter()
        try:
            mesh = clean_mesh(marching_cubes(grid, 0.0, bounds, inside="above"))
            faces = int(len(mesh.t_pos_idx))
        except MeshError:
            faces = 0
        t3 = time.perf_counter()
    if cuda:
        query_peak = dev_query
        total_peak = dev_query + grid_bytes + max(0, rss_mesh.peak - base_rss - grid_bytes)
    else:
        query_peak = max(0, rss_query.peak - base_rss - grid_bytes)
        total_peak = max(rss_query.peak, rss_mesh.peak) - base_rss
    return {"arch": arch, "device": str(device), "mode": mode, "resolution": resolution, "chunk": chunk,
            "decode_query_s": t1 - t0, "mesh_s": t3 - t2, "query_peak_bytes": query_peak,
            "total_peak_bytes": total_peak, "grid_bytes": grid_bytes, "faces": faces}


def build_bundle(arch: str, device):
    """A Michelangelo text model with random weights: the ``tiny`` preset, or ``michelangelo-256`` (text-ASLDM-256's
    shape VAE and denoiser, and a CLIP ViT-L/14-sized conditioner), on ``device`` (CLIP in fp16 on CUDA)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from backend.michelangelo.asldm import ASLDMDenoiser
    from backend.michelangelo.conditioner import CLIPConditioner
    from backend.michelangelo.config import get_preset
    from backend.michelangelo.model import MichelangeloBundle, build_tiny_random
    from backend.models.tokenizers import byte_level_clip_tokenizer

    if arch == "tiny":
        config, vae, denoiser, conditioner = build_tiny_random(0)
    else:
        config = get_preset("text-ASLDM-256")
        c = config.clip
        clip = CLIPConfig(text_config=dict(vocab_size=49408, hidden_size=c.text_width, intermediate_size=4 * c.text_width,
                                           num_hidden_layers=12, num_attention_heads=12, projection_dim=c.projection_dim,
                                           max_position_embeddings=c.text_tokens, bos_token_id=0, eos_token_id=1,
                                           pad_token_id=1, hidden_act="quick_gelu"),
                          vision_config=dict(hidden_size=c.vision_width, intermediate_size=4 * c.vision_width,
                                             num_hidden_layers=24, num_attention_heads=16, image_size=c.image_size,
                                             patch_size=c.patch_size, projection_dim=c.projection_dim,
                                             hidden_act="quick_gelu"),
                          projection_dim=c.projection_dim)
        from backend.michelangelo.shape_vae import ShapeVAE

        torch.manual_seed(0)
        vae, denoiser = ShapeVAE(config.vae), ASLDMDenoiser(config.denoiser)
        conditioner = CLIPConditioner(c, "transformers", CLIPModel(clip), byte_level_clip_tokenizer(c.text_tokens))
    dtype = torch.float32
    clip_dtype = torch.float16 if device.type == "cuda" else torch.float32
    return MichelangeloBundle(config, vae.to(device, dtype).eval().requires_grad_(False),
                              denoiser.to(device, dtype).eval().requires_grad_(False),
                              conditioner.to(device, clip_dtype), ("text",), arch, device, dtype)


def end_to_end(arch: str, device_name: str, samples: int) -> dict:
    """Seconds per shape of shape_ldm (random weights, full CLIP-sized text tower for michelangelo-256)."""
    import torch

    from backend.models.devices import resolve_device
    from backend.params import parse_config
    from backend.pipelines.base import JobContext
    from backend.pipelines import shape_ldm
    from backend.pipelines.base import PipelineInputs
    from backend.pipelines.shape_ldm import ShapeLDMConfig

    device = resolve_device(device_name)
    bundle = build_bundle(arch, device)

    class _Loaded:  # the model cache's interface, holding this one bundle
        @staticmethod
        def get(loader, model, device, dtype=None):
            return bundle

    run_config = parse_config(ShapeLDMConfig, {"model": arch, "prompt": "a swivel office chair with five wheels",
                                               "num_samples": samples, "preview_resolution": 0})
    ctx = JobContext(device=device, models=_Loaded())
    shape_ldm.run(parse_config(ShapeLDMConfig, {"model": arch, "prompt": "warm-up", "num_inference_steps": 2,
                                                "grid_resolution": 16, "preview_resolution": 0}), PipelineInputs(), ctx)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    try:
        result = shape_ldm.run(run_config, PipelineInputs(), ctx)
        timings = result.timings
    except Exception as err:  # random weights may give a sample without a surface: report the time anyway
        timings = {"error": f"{type(err).__name__}: {err}"}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    total = time.perf_counter() - t0
    return {"arch": arch, "device": str(device), "samples": samples, "seconds_per_shape": total / samples,
            "timings": timings}


# ---------------------------------------------------------------------------------------------------------------------
# Driver.
# ---------------------------------------------------------------------------------------------------------------------

def _child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mb(n: float) -> str:
    return f"{n / 2**20:9.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=ARCHES, default="tiny", help="network sizes (random weights)")
    ap.add_argument("--model", default=None, help="real weights instead: a model for load_michelangelo (a .ckpt, "
                                                  "a training folder, text-ASLDM-256 …); its VAE decodes a random "
                                                  "latent")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 …")
    ap.add_argument("--resolution", type=int, nargs="+", default=[129, 256], help="grid resolutions R (R³ samples)")
    ap.add_argument("--chunk", type=int, default=32768, help="query points per call of the chunked query "
                                                             "(the pipelines' default query_chunk)")
    ap.add_argument("--naive-limit-gb", type=float, default=4.0, help="skip naive runs extrapolated above this")
    ap.add_argument("--end-to-end", action="store_true", help="also time the whole shape_ldm path per shape")
    ap.add_argument("--samples", type=int, default=2, help="shapes per end-to-end run")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        kind, *rest = args.child
        if kind == "measure":
            arch, device, res, mode, chunk = rest
            out = measure(arch, device, int(res), mode, int(chunk))
        else:
            arch, device, samples = rest
            out = end_to_end(arch, device, int(samples))
        print(json.dumps(out))
        return

    if args.model:
        args.arch = args.model
    rows = []
    probe = _child(["measure", args.arch, args.device, str(PROBE_RESOLUTION), "naive", str(args.chunk)])
    per_point = probe["query_peak_bytes"] / PROBE_RESOLUTION ** 3
    for res in args.resolution:
        rows.append(_child(["measure", args.arch, args.device, str(res), "chunked", str(args.chunk)]))
    for res in args.resolution:
        need = per_point * res ** 3
        if need > args.naive_limit_gb * 2**30:
            rows.append({"mode": "naive", "resolution": res, "skipped": need})
        else:
            rows.append(_child(["measure", args.arch, args.device, str(res), "naive", str(args.chunk)]))

    device = rows[0]["device"]
    weights = "random weights" if args.arch in ARCHES else "loaded weights"
    print(f"Michelangelo decode, arch {args.arch} ({weights}), device {device}, chunk {args.chunk} points")
    print(f"{'mode':8} {'R':>4} {'decode+query s':>15} {'mesh s':>8} {'query peak MB':>14} {'grid MB':>9} "
          f"{'total peak MB':>14} {'faces':>8}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['mode']:8} {r['resolution']:>4} skipped: needs ~{r['skipped'] / 2**30:.1f} GB "
                  f"(extrapolated from {PROBE_RESOLUTION}³) > --naive-limit-gb {args.naive_limit_gb:g}")
            continue
        print(f"{r['mode']:8} {r['resolution']:>4} {r['decode_query_s']:15.2f} {r['mesh_s']:8.2f} "
              f"{_mb(r['query_peak_bytes']):>14} {_mb(r['grid_bytes']):>9} {_mb(r['total_peak_bytes']):>14} "
              f"{r['faces']:8d}")
    lo, hi = min(args.resolution), max(args.resolution)
    if lo != hi:
        def ratio(mode: str, key: str) -> str:
            a = next((r for r in rows if r["mode"] == mode and r["resolution"] == lo and "skipped" not in r), None)
            b = next((r for r in rows if r["mode"] == mode and r["resolution"] == hi), None)
            if a is None or b is None:
                return "n/a"
            if "skipped" in b:
                return f"≥{b['skipped'] / max(a[key], 1):.1f} (extrapolated)"
            return f"{b[key] / max(a[key], 1):.2f}"

        print(f"peak-memory ratio {hi}³/{lo}³: chunked query {ratio('chunked', 'query_peak_bytes')} "
              f"(total incl. the R³ grid and marching cubes {ratio('chunked', 'total_peak_bytes')}); "
              f"naive query {ratio('naive', 'query_peak_bytes')}; grid alone {(hi / lo) ** 3:.1f}")
    if args.end_to_end and args.arch in ARCHES:
        e = _child(["e2e", args.arch, args.device, str(args.samples)])
        print(f"end to end shape_ldm ({e['samples']} samples, 50 DDIM steps, CFG, 129³): "
              f"{e['seconds_per_shape']:.2f} s per shape on {e['device']}; parts: "
              + ", ".join(f"{k} {v:.2f} s" if isinstance(v, float) else f"{k} {v}" for k, v in e["timings"].items()))


if __name__ == "__main__":
    main()
