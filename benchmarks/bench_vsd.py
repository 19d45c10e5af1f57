"""Score-distillation step time and peak memory: VSD (ProlificDreamer) against SDS on the same UNet.

    python benchmarks/bench_vsd.py                                   # CPU, tiny-random, 64×64 latents
    python benchmarks/bench_vsd.py --arch sd15 --device cuda         # full SD 1.5 architecture, random weights, fp16
    python benchmarks/bench_vsd.py --arch sd15 --device cuda --rgb   # + 512² RGB through the VAE encoder
    python benchmarks/bench_vsd.py --arch sd15 --device cpu --saved-memory   # the LoRA step's graph size, no GPU

One step = (``--rgb``: encode a 512² RGB image with the VAE, with graph) → the guidance call → backward + Adam on the
optimised tensor, a (1, 4, 64, 64) latent image (or a (1, 3, 512, 512) RGB image): the cost of the guidance apart from
any renderer, which is what changes between SDS and VSD. SDS = one UNet forward with CFG (uncond + cond batched);
VSD = the same + one ε_lora forward + one LoRA training step (forward + backward through the UNet + AdamW). Each is
measured in this run; the baseline is SDS and the script prints VSD / SDS. Then VSD's own split (ε_pretrained,
ε_lora, LoRA step). On CUDA it also prints ``torch.cuda.max_memory_allocated`` per guidance (weights included) and
whether it fits in 24 GB.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from backend.geometry.cameras import sample_cameras  # noqa: E402
from backend.models.base import TINY_RANDOM  # noqa: E402
from backend.models.devices import resolve_device  # noqa: E402
from backend.models.stable_diffusion import RANDOM_SD15, load_stable_diffusion  # noqa: E402
from backend.params import parse_config  # noqa: E402
from backend.pipelines.latent_paint import LatentPaintConfig  # noqa: E402
from backend.pipelines.sds_common import VaeCodec, build_guidance  # noqa: E402
from benchmarks.steptime import device_name, print_split, time_steps  # noqa: E402

GIB = 1024**3


def _median_step(parts: dict[str, list[float]]) -> float:
    return statistics.median([sum(p) for p in zip(*parts.values())])


def measure(sd, guidance_name: str, args, device: torch.device):
    """Time ``args.steps`` steps of one guidance. Returns its parts, its CUDA peak (bytes; None on the CPU) and, for
    VSD, its own split (else None)."""
    config = parse_config(LatentPaintConfig, {"prompt": "a rusty metal barrel", "model": sd.model_id,
                                              "guidance": guidance_name})
    codec = VaeCodec(sd.vae, sd.latent_scaling)
    generator = torch.Generator(device=device).manual_seed(0)
    shape = (args.batch_size, 3, 8 * args.latent_size, 8 * args.latent_size) if args.rgb else \
        (args.batch_size, 4, args.latent_size, args.latent_size)
    image = torch.nn.Parameter(torch.rand(shape, generator=generator, device=device))
    optimizer = torch.optim.Adam([image], lr=1e-2)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with build_guidance(sd, config) as guidance:
        counter = {"step": 0}

        def step(mark) -> None:
            counter["step"] += 1
            cameras = sample_cameras(args.batch_size, generator, device=device)
            latents = codec.encode(image).float() if args.rgb else image
            mark("encode")
            out = guidance(latents, cameras, generator, step=counter["step"])
            mark("guidance")
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            mark("backward")

        parts = time_steps(step, args.steps, args.warmup, device)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        split = vsd_split(guidance, args, device, generator) if guidance_name == "vsd" else None
    return parts, peak, split


def vsd_split(vsd, args, device, generator) -> dict[str, list[float]]:
    """VSD's three parts on fixed latents: ε_pretrained (CFG), ε_lora, the LoRA step."""
    latents = torch.randn(args.batch_size, 4, args.latent_size, args.latent_size, generator=generator, device=device)
    timesteps = torch.full((args.batch_size,), 500, device=device, dtype=torch.long)

    def step(mark) -> None:
        cameras = sample_cameras(args.batch_size, generator, device=device)
        vsd.predict_pretrained(latents, timesteps, cameras)
        mark("pretrained")
        vsd.predict_lora(latents, timesteps, cameras)
        mark("lora_eps")
        vsd.train_lora(latents, cameras, generator)
        mark("lora_step")

    return time_steps(step, args.steps, args.warmup, device)


def saved_for_backward(sd, args, device: torch.device) -> None:
    """Bytes the autograd graph of one LoRA step keeps for backward (every saved tensor, parameters included: an
    upper bound of the step's activation memory) — a memory figure that needs no GPU."""
    config = parse_config(LatentPaintConfig, {"prompt": "a rusty metal barrel", "model": sd.model_id,
                                              "guidance": "vsd"})
    generator = torch.Generator(device=device).manual_seed(0)
    latents = torch.randn(args.batch_size, 4, args.latent_size, args.latent_size, generator=generator, device=device)
    saved = {"bytes": 0, "tensors": 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved["bytes"] += t.numel() * t.element_size()
        saved["tensors"] += 1
        return t

    with build_guidance(sd, config) as vsd:
        n_lora = sum(p.numel() for p in vsd.lora_parameters)
        n_camera = sum(p.numel() for p in vsd.camera_embedding.parameters())
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            vsd.train_lora(latents, sample_cameras(args.batch_size, generator, device=device), generator)
    weights = sum(p.numel() * p.element_size() for m in (sd.unet, sd.vae, sd.text_encoder) for p in m.parameters())
    print(f"LoRA step, {sd.model_id}, {str(sd.dtype).removeprefix('torch.')}, latents {args.latent_size}²: "
          f"{saved['bytes'] / GIB:.2f} GiB saved for backward ({saved['tensors']} tensors); model weights "
          f"{weights / GIB:.2f} GiB; LoRA {n_lora:,} + camera MLP {n_camera:,} trainable parameters")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=("tiny", "sd15"), default="tiny", help="tiny-random or full SD 1.5 (random weights)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--latent-size", type=int, default=64, help="latent side (64 = 512² images)")
    ap.add_argument("--rgb", action="store_true", help="optimise an RGB image through the VAE encoder (with graph)")
    ap.add_argument("--saved-memory", action="store_true",
                    help="only: the bytes one LoRA step saves for backward (no timing; works without a GPU)")
    args = ap.parse_args()

    device = resolve_device(args.device)
    sd = load_stable_diffusion(TINY_RANDOM if args.arch == "tiny" else RANDOM_SD15, device)
    if args.saved_memory:
        saved_for_backward(sd, args, device)
        return
    what = f"arch={args.arch}, device={device_name(device)}, dtype={str(sd.dtype).removeprefix('torch.')}, " \
           f"batch={args.batch_size}, latents {args.latent_size}², {'RGB through the VAE' if args.rgb else 'latent'}"
    results = {}
    for name in ("sds", "vsd"):
        parts, peak, split = measure(sd, name, args, device)
        print_split(f"{name.upper()} step, {what}, {args.steps} steps after {args.warmup} warm-up", parts)
        if split is not None:
            print_split(f"VSD guidance split (fixed latents, t = 500), {args.steps} calls", split)
        if peak is not None:
            print(f"{name.upper()} peak CUDA memory {peak / GIB:.2f} GiB (fits 24 GB: {'yes' if peak < 24e9 else 'NO'})")
        results[name] = _median_step(parts)
    print(f"VSD / SDS step time = {results['vsd'] / results['sds']:.2f}x "
          f"({results['vsd'] * 1e3:.2f} ms / {results['sds'] * 1e3:.2f} ms)")


if __name__ == "__main__":
    main()
