"""Real CLIP models for CLIP guidance (open_clip and transformers through one contract) and the DALL-E 2 prior.

No weights, no network: the ``tiny-random`` presets are the libraries' real classes at tiny widths; loading real ids
runs against an empty Hugging Face cache and must fail with a clear :class:`ModelNotFoundError`.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from backend import cli
from backend.guidance.augment import ViewAugmentConfig, ViewAugmenter
from backend.guidance.clip import CLIPEmbedder, CLIPGuidance
from backend.models.base import ModelNotFoundError
from backend.models.cache import ModelCache
from backend.models.clip import (DEFAULT_CLIP_MODEL, TorchCLIPEmbedder, build_tiny_clip, is_clip_model, load_clip,
                                 open_clip_available, parse_clip_model)

CPU = torch.device("cpu")
BACKENDS = ("open_clip", "transformers")


@pytest.fixture(scope="module")
def embedders() -> dict[str, TorchCLIPEmbedder]:
    return {backend: load_clip("tiny-random", CPU, backend=backend) for backend in BACKENDS}


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, so a machine that has real weights cached still exercises the error path."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hub"


def _smooth_images(seed: int, size: int, batch: int = 2) -> torch.Tensor:
    """(batch, 3, size, size) images in [0, 1] with only low frequencies (an 8² random image, upsampled), so the same
    image at two resolutions is the same picture."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand((batch, 3, 8, 8), generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


# ---------------------------------------------------------------------------------------------------------------------
# The CLIPEmbedder contract, both libraries.
# ---------------------------------------------------------------------------------------------------------------------

def test_open_clip_imports_and_is_the_default_library(embedders):
    import open_clip.model

    assert open_clip_available()  # the pinned torch/torchvision pair lets open_clip import on CPU
    assert parse_clip_model("tiny-random")[0] == "open_clip"
    assert parse_clip_model(DEFAULT_CLIP_MODEL) == ("open_clip", "open_clip", "ViT-B-32/openai")
    embedder = embedders["open_clip"]
    assert isinstance(embedder.model, open_clip.model.CLIP) and embedder.backend == "open_clip"
    assert type(embedders["transformers"].model).__name__ == "CLIPModel"


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_random_meets_the_contract(embedders, backend):
    embedder = embedders[backend]
    assert isinstance(embedder, CLIPEmbedder)
    assert (embedder.image_size, embedder.embed_dim) == (32, 16)
    images = _smooth_images(0, 48, batch=3).requires_grad_(True)
    embeds = embedder.encode_images(images)
    assert embeds.shape == (3, 16) and embeds.dtype == torch.float32
    torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    embeds[:, 0].sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0 and torch.isfinite(images.grad).all()
    assert not any(p.requires_grad for p in embedder.model.parameters())  # frozen weights

    texts = embedder.encode_texts(["a red chair", "a blue vase", "a red chair"])
    assert texts.shape == (3, 16) and texts.dtype == torch.float32 and not texts.requires_grad
    torch.testing.assert_close(texts.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(texts[0], texts[2])
    assert (texts[0] - texts[1]).abs().max() > 1e-3  # different prompts, different embeddings


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_same_image_at_two_sizes_embeds_alike(embedders, backend):
    embedder = embedders[backend]
    small, large = _smooth_images(1, 64), _smooth_images(1, 160)
    other = _smooth_images(2, 64)
    with torch.no_grad():
        a, b, c = (embedder.encode_images(x) for x in (small, large, other))
    same = (a * b).sum(-1)
    different = (a * c).sum(-1)
    # the resize makes both the same 32² picture: their embeddings agree far better than two different pictures'
    assert (1 - same).max() < 0.05 * (1 - different).min(), (same, different)
    # a non-square image is centre-cropped, not stretched: the square centre embeds as the square
    wide = torch.cat([torch.zeros(2, 3, 64, 16), small, torch.ones(2, 3, 64, 16)], dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(embedder.encode_images(wide), a, atol=1e-5, rtol=0)


def test_preprocessing_uses_clip_statistics(embedders):
    for embedder in embedders.values():
        grey = torch.full((1, 3, 32, 32), 0.5)
        pixels = embedder.preprocess(grey)
        expected = (0.5 - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor(
            [0.26862954, 0.26130258, 0.27577711])
        torch.testing.assert_close(pixels[0, :, 7, 7], expected)


def test_tiny_random_is_seeded():
    for backend in BACKENDS:
        a, b = build_tiny_clip(backend, seed=3), build_tiny_clip(backend, seed=3)
        c = build_tiny_clip(backend, seed=4)
        images = _smooth_images(0, 32)
        with torch.no_grad():
            torch.testing.assert_close(a.encode_images(images), b.encode_images(images))
            assert (a.encode_images(images) - c.encode_images(images)).abs().max() > 1e-3


def test_bad_inputs_are_clear_errors(embedders):
    embedder = embedders["open_clip"]
    for bad in (torch.rand(2, 4, 32, 32), torch.rand(3, 32, 32), torch.zeros(2, 3, 32, 32, dtype=torch.uint8),
                torch.rand(0, 3, 32, 32)):
        with pytest.raises(ValueError, match=r"images must be a float \(B, 3, H, W\)"):
            embedder.encode_images(bad)
    for bad, match in (("a chair", "texts must be a list"), ([], "texts is empty"), (["ok", 3], "text 1 must be")):
        with pytest.raises(ValueError, match=match):
            embedder.encode_texts(bad)
    for bad, match in (("", "non-empty string"), ("tiny-random", "backend must be one of")):
        with pytest.raises(ValueError, match=match):
            load_clip(bad, CPU, backend="jax" if bad else "auto")
    with pytest.raises(ValueError, match="names backend 'open_clip' but backend 'transformers'"):
        load_clip("open_clip:tiny-random", CPU, backend="transformers")


def test_clip_guidance_runs_on_a_real_tiny_clip(embedders):
    embedder = embedders["open_clip"]
    target = embedder.encode_texts(["a wooden vase"])[0]
    augmenter = ViewAugmenter(ViewAugmentConfig(num_augmentations=2), embedder.image_size)
    guidance = CLIPGuidance(embedder, target, augmenter)
    rgb = torch.rand(2, 3, 40, 40, requires_grad=True)
    alpha = torch.ones(2, 1, 40, 40)
    out = guidance(rgb, alpha, None, torch.Generator().manual_seed(0))
    out.loss.backward()
    assert -1.0 <= out.score <= 1.0 and abs(out.loss.item() + out.score) < 1e-5
    assert rgb.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------------------
# Model strings, the cache, files.
# ---------------------------------------------------------------------------------------------------------------------

def test_model_strings_pick_the_library():
    assert parse_clip_model("ViT-L-14/openai", "transformers") == ("transformers", "hub", "openai/clip-vit-large-patch14")
    assert parse_clip_model("openai/clip-vit-base-patch16", "open_clip") == ("open_clip", "open_clip", "ViT-B-16/openai")
    assert parse_clip_model("openai/clip-vit-base-patch32") == ("open_clip", "open_clip", "ViT-B-32/openai")
    assert parse_clip_model("laion/CLIP-ViT-H-14-laion2B-s32B-b79K")[:2] == ("transformers", "hub")
    assert parse_clip_model("transformers:tiny-random") == ("transformers", "tiny", "tiny-random")
    assert parse_clip_model("ViT-B-32/random") == ("open_clip", "open_clip", "ViT-B-32/random")
    with pytest.raises(ModelNotFoundError, match="without a transformers equivalent"):
        parse_clip_model("ViT-B-32/laion2b_s34b_b79k", "transformers")
    with pytest.raises(ModelNotFoundError, match="unknown CLIP model 'a/b/c'"):
        parse_clip_model("a/b/c")
    assert is_clip_model("ViT-B-32/openai") and is_clip_model("openai/clip-vit-large-patch14")
    assert not is_clip_model("stable-diffusion-v1-5/stable-diffusion-v1-5") and not is_clip_model("ViT-B-32/random")


def test_the_model_cache_loads_either_library():
    cache = ModelCache(capacity=2)
    a = cache.get(load_clip, "tiny-random", CPU)
    b = cache.get(load_clip, "transformers:tiny-random", CPU)
    assert (a.backend, b.backend) == ("open_clip", "transformers")
    assert cache.get(load_clip, "tiny-random", CPU) is a and cache.loads == 2


def test_a_local_transformers_folder_loads(tmp_path, embedders):
    source = embedders["transformers"]
    source.model.save_pretrained(tmp_path / "clip")
    source.tokenizer.save_pretrained(tmp_path / "clip")
    loaded = load_clip(str(tmp_path / "clip"), CPU)
    assert loaded.backend == "transformers" and loaded.model_id == str(tmp_path / "clip")
    images = _smooth_images(5, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_images(images), source.encode_images(images))
        torch.testing.assert_close(loaded.encode_texts(["a cup"]), source.encode_texts(["a cup"]))


def test_an_open_clip_weight_file_loads(tmp_path, monkeypatch, embedders):
    """``<arch>/<file>``: open_clip's own loader reads the file (here the tiny model registered as an architecture)."""
    import open_clip
    from open_clip import factory

    from backend.models import clip as clip_module

    monkeypatch.setitem(factory._MODEL_CONFIGS, "Tiny-Test", dict(clip_module._TINY_OPEN_CLIP))
    monkeypatch.setattr(clip_module, "_KNOWN_ARCHS", clip_module._KNOWN_ARCHS + ("Tiny-Test",))
    assert "Tiny-Test" in open_clip.list_models()
    source = embedders["open_clip"]
    torch.save(source.model.state_dict(), tmp_path / "tiny.pt")
    loaded = load_clip(f"Tiny-Test/{tmp_path / 'tiny.pt'}", CPU)
    images = _smooth_images(6, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_images(images), source.encode_images(images))


def test_real_ids_without_weights_are_clear_errors(empty_hub_cache, tmp_path):
    for model, backend in (("ViT-B-32/openai", "open_clip"), ("ViT-B-32/openai", "transformers"),
                           ("openai/clip-vit-base-patch32", "auto")):
        shown = "openai/clip-vit-base-patch32" if backend == "transformers" else model
        if backend == "auto":
            shown = "ViT-B-32/openai"
        with pytest.raises(ModelNotFoundError, match=rf"CLIP model '{shown}' is not on this machine.*`python -m "
                                                     rf"backend download {shown}`"):
            load_clip(model, CPU, backend=backend)
    with pytest.raises(ModelNotFoundError, match="no pretrained tag 'no-such-tag'"):
        load_clip("ViT-B-32/no-such-tag", CPU)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="not a transformers CLIP folder"):
        load_clip(str(tmp_path / "empty"), CPU)


def test_download_routes_clip_ids(monkeypatch, capsys):
    asked = []
    monkeypatch.setattr(cli, "download_clip", lambda model: asked.append(model) or "/cache/clip")
    for model in ("ViT-B-32/openai", "openai/clip-vit-large-patch14"):
        assert cli.main(["download", model]) == 0
    assert asked == ["ViT-B-32/openai", "openai/clip-vit-large-patch14"]
