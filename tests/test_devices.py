"""Devices and memory: "auto" picks CUDA, then Apple's MPS, then the CPU; the backend reports the device's memory;
a model too big for the free memory is refused before loading; an out-of-memory inside a job fails that job clearly,
empties the model cache, and the next job runs.

No GPU is needed: CUDA/MPS availability and their memory queries are replaced by fakes where a test needs them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from backend.models import devices
from backend.models.cache import ModelCache
from backend.models.devices import (DeviceMemory, InsufficientMemoryError, check_fits, is_out_of_memory,
                                    resolve_device, weight_bytes)
from backend.params import Config, param
from backend.pipelines import PIPELINES
from backend.geometry.mesh import TriMesh
from backend.pipelines.base import PipelineResult, PipelineSpec, ResultMesh
from blender_addon.core.text import backend_summary


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps") and resolve_device(None) == torch.device("mps")
    assert devices.default_dtype(torch.device("mps")) == torch.float32
    monkeypatch.setattr(devices, "mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="MPS .* not available"):
        resolve_device("mps")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert devices.default_dtype(torch.device("cuda")) == torch.float16


def test_the_cpu_reports_its_memory_and_weights_are_counted_in_the_target_dtype():
    memory = devices.device_memory(torch.device("cpu"))
    assert memory is not None and memory.total > 0 and 0 <= memory.free <= memory.total
    assert "GB free" in devices.describe_memory(memory) and devices.describe_memory(None) == "memory unknown"
    layer = torch.nn.Linear(100, 10)  # 1010 float32 parameters
    layer.register_buffer("steps", torch.zeros(3, dtype=torch.int64))  # not a float: keeps its 8 bytes
    assert weight_bytes([layer]) == 1010 * 4 + 3 * 8
    assert weight_bytes([layer], torch.float16) == 1010 * 2 + 3 * 8


def test_a_model_that_would_not_fit_is_refused_before_loading_with_both_sizes(monkeypatch):
    gpu = torch.device("cuda:0")
    monkeypatch.setattr(devices, "device_memory", lambda device: DeviceMemory(total=8_000_000_000, free=2_000_000_000))
    check_fits(gpu, 1_500_000_000, "model 'x'")  # fits with headroom
    with pytest.raises(InsufficientMemoryError) as err:
        check_fits(gpu, 3_440_000_000, "model 'sd' (UNet + VAE + text encoder)")
    message = str(err.value)
    assert "model 'sd'" in message and "3.44 GB" in message and "2.00 GB free of 8.00 GB" in message
    check_fits(torch.device("cpu"), 10**15, "anything")  # the CPU pages instead: never refused here
    assert is_out_of_memory(err.value)


@pytest.mark.parametrize("err,oom", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)"), True),
    (MemoryError(), True),
    (RuntimeError("shape mismatch"), False),
    (ValueError("out of range"), False),
])
def test_out_of_memory_is_recognised_on_every_device(err, oom):
    assert is_out_of_memory(err) is oom


def test_backend_summary_shows_the_memory_when_the_backend_reports_it():
    welcome = {"device": "cuda:0 (NVIDIA RTX 4070)", "server_version": "0.4.0"}
    assert backend_summary(welcome) == "cuda:0 (NVIDIA RTX 4070) · backend 0.4.0"
    welcome.update(memory_total_bytes=12_000_000_000, memory_free_bytes=10_900_000_000)
    assert backend_summary(welcome) == "cuda:0 (NVIDIA RTX 4070) · 12.0 GB, 10.9 GB free · backend 0.4.0"


# ------------------------------------------------------------------------------------------------- OOM inside a job

@dataclass
class _OOMConfig(Config):
    """A test pipeline's settings."""

    fail: bool = param(False, doc="raise a CUDA out-of-memory inside the job")


def _loader(model, device, dtype, allow_download=False):
    return torch.nn.Linear(4, 4)


def _run(config: _OOMConfig, inputs, ctx) -> PipelineResult:
    ctx.models.get(_loader, "test-model", ctx.device)
    ctx.progress("work", 0, 1)
    if config.fail:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    triangle = TriMesh(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32), np.array([[0, 1, 2]], np.int32))
    return PipelineResult(meshes=[ResultMesh(triangle)], metadata={"pipeline": "oom_test"})


def test_an_out_of_memory_fails_its_job_clearly_empties_the_cache_and_the_next_job_runs(tmp_path, monkeypatch):
    from backend.serving.service import JobService

    monkeypatch.setitem(PIPELINES, "oom_test", PipelineSpec(_OOMConfig, _run, "test pipeline"))
    models = ModelCache(2)
    service = JobService(tmp_path / "data", torch.device("cpu"), models)
    try:
        events: dict[str, list] = {"failed": [], "done": []}
        finished = threading.Semaphore(0)

        def listener(msg_type, fields, arrays):
            if msg_type == "error":
                events["failed"].append(fields)
                finished.release()
            elif msg_type == "result":
                events["done"].append(fields)
                finished.release()

        service.submit("oom_test", {"fail": True}, {}, listener)
        assert finished.acquire(timeout=60)
        (error,) = events["failed"]
        assert error["code"] == "out_of_memory"
        assert "out of memory on cpu" in error["message"] and "emptied its model cache" in error["message"]
        assert "20.00 GiB" in error["message"]  # the original reason is kept
        assert models._entries == {}, "the model cache must be emptied after an out-of-memory"

        job_id, _ = service.submit("oom_test", {"fail": False}, {}, listener)
        assert finished.acquire(timeout=60)
        assert not events["failed"][1:], events["failed"]
        assert events["done"] and events["done"][0]["job_id"] == job_id
        assert service.store.get(job_id)["status"] == "done"
        assert len(models._entries) == 1  # loaded again, from an empty cache
    finally:
        service.shutdown()



def test_the_cache_passes_low_vram_only_to_loaders_that_declare_it():
    calls = []

    def plain_loader(model, device, dtype, allow_download=False):
        calls.append(("plain", model))
        return "plain"

    def lean_loader(model, device, dtype, allow_download=False, low_vram=False):
        calls.append(("lean", low_vram))
        return "lean"

    cache = ModelCache(capacity=4, low_vram=True)
    assert cache.get(plain_loader, "m", torch.device("cpu")) == "plain"
    assert cache.get(lean_loader, "m", torch.device("cpu")) == "lean"
    assert calls == [("plain", "m"), ("lean", True)]
    ModelCache(capacity=4).get(lean_loader, "m", torch.device("cpu"))
    assert calls[-1] == ("lean", False)


def test_low_vram_switches_stable_diffusion_to_its_lean_mode_and_keeps_the_noise_prediction():
    from backend.geometry.cameras import sample_cameras
    from backend.guidance.denoiser import StableDiffusionDenoiser
    from backend.models.stable_diffusion import load_stable_diffusion

    normal = load_stable_diffusion("tiny-random", "cpu")
    lean = load_stable_diffusion("tiny-random", "cpu", low_vram=True)
    assert not normal.vae.use_tiling and lean.vae.use_tiling and lean.vae.use_slicing
    assert lean.vae.is_gradient_checkpointing and not normal.vae.is_gradient_checkpointing
    assert any("Sliced" in type(p).__name__ for p in lean.unet.attn_processors.values())
    assert not any("Sliced" in type(p).__name__ for p in normal.unet.attn_processors.values())
    assert lean.text_encoder.device == torch.device("cpu") and lean.text_encoder.dtype == torch.float32
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 16, 16, generator=g)
    cameras = sample_cameras(2, g)
    t = torch.tensor([100, 700])
    preds = [StableDiffusionDenoiser(c, "a red chair", guidance_scale=7.5).predict_noise(latents, t, cameras)
             for c in (normal, lean)]
    torch.testing.assert_close(preds[0], preds[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("loader_path,model", [("backend.point_e.model:load_point_e", "tiny-sdf"),
                                               ("backend.models.shap_e:load_shap_e", "tiny-random")])
def test_shape_models_that_would_not_fit_are_refused_before_loading(monkeypatch, loader_path, model):
    import importlib

    module_name, name = loader_path.split(":")
    loader = getattr(importlib.import_module(module_name), name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(devices, "device_memory", lambda device: DeviceMemory(total=8_000, free=10))
    with pytest.raises(InsufficientMemoryError, match=f"model {model!r} needs"):
        loader(model, "cuda")
