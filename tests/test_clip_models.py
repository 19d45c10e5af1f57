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
from backend.guidance.oracle import OracleCLIPEmbedder
from backend.models import clip_prior
from backend.models.base import ModelNotFoundError
from backend.models.cache import ModelCache
from backend.models.clip import (DEFAULT_CLIP_MODEL, TorchCLIPEmbedder, build_tiny_clip, is_clip_model, load_clip,
                                 open_clip_available, parse_clip_model)
from backend.models.clip_prior import (CLIP_MESH_PRIOR, CLIP_MESH_PRIOR_CONFIG, TINY_PRIOR_CONFIG, build_prior,
                                       clip_target, convert_clip_mesh_state_dict, load_prior, predict_image_embedding,
                                       prior_or_text_embedding)

CPU = torch.device("cpu")
BACKENDS = ("open_clip", "transformers")


@pytest.fixture(scope="module")
def embedders() -> dict[str, TorchCLIPEmbedder]:
    return {backend: load_clip("tiny-random", CPU, backend=backend) for backend in BACKENDS}


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, so a machine that has real weights cached still exercises the error path."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # read at each call
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
    assert parse_clip_model("ViT-L-14/openai", "transformers") == ("transformers", "hub",
                                                                   "openai/clip-vit-large-patch14")
    assert parse_clip_model("openai/clip-vit-base-patch16", "open_clip") == ("open_clip", "open_clip",
                                                                             "ViT-B-16/openai")
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


def test_without_open_clip_everything_goes_through_transformers(monkeypatch):
    from backend.models import clip as clip_module

    monkeypatch.setattr(clip_module, "open_clip_available", lambda: False)
    assert parse_clip_model("ViT-B-32/openai") == ("transformers", "hub", "openai/clip-vit-base-patch32")
    assert parse_clip_model("openai/clip-vit-large-patch14") == ("transformers", "hub", "openai/clip-vit-large-patch14")
    assert load_clip("tiny-random", CPU).backend == "transformers"
    with pytest.raises(ModelNotFoundError, match="open_clip cannot be imported here.*use backend 'transformers'"):
        load_clip("tiny-random", CPU, backend="open_clip")
    with pytest.raises(ModelNotFoundError, match="without a transformers equivalent"):
        parse_clip_model("ViT-B-32/laion2b_s34b_b79k")


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


# ---------------------------------------------------------------------------------------------------------------------
# The DALL-E 2 diffusion prior.
# ---------------------------------------------------------------------------------------------------------------------

# The key names and shapes of CLIP-Mesh's public prior checkpoint (larger-model.pth, loaded strictly by the official
# code): the state dict of DALLE2-pytorch's DiffusionPrior at the commit CLIP-Mesh pins (2eac799, v0.1.9) built with
# the public config (dim 512, depth 12, dim_head 64, heads 12, normformer False, image_embed_dim 512, 1000 steps,
# condition_on_text_encodings False). 179 entries: 12 schedule buffers, 11 network entries, 13 per layer × 12.
_PINNED_SCHEDULE = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2")
_PINNED_NET = {
    "net.learned_query": (512,),
    "net.time_embeddings.1.net.0.0.weight": (1024, 512), "net.time_embeddings.1.net.0.0.bias": (1024,),
    "net.time_embeddings.1.net.1.0.weight": (1024, 1024), "net.time_embeddings.1.net.1.0.bias": (1024,),
    "net.time_embeddings.1.net.2.weight": (512, 1024), "net.time_embeddings.1.net.2.bias": (512,),
    "net.causal_transformer.rel_pos_bias.relative_attention_bias.weight": (32, 12),
    "net.causal_transformer.norm.gamma": (512,), "net.causal_transformer.norm.beta": (512,),
    "net.causal_transformer.project_out.weight": (512, 512),
}
_PINNED_LAYER = {
    "0.null_kv": (2, 64), "0.norm.gamma": (512,), "0.norm.beta": (512,), "0.post_norm.gamma": (512,),
    "0.post_norm.beta": (512,), "0.to_q.weight": (768, 512), "0.to_kv.weight": (128, 512),
    "0.rotary_emb.freqs": (16,), "0.to_out.0.weight": (512, 768), "1.0.gamma": (512,), "1.0.beta": (512,),
    "1.1.weight": (4096, 512), "1.5.weight": (512, 2048),
}


def _pinned_checkpoint_keys() -> dict[str, tuple[int, ...]]:
    keys = {name: (1000,) for name in _PINNED_SCHEDULE}
    keys.update(_PINNED_NET)
    for i in range(12):
        keys.update({f"net.causal_transformer.layers.{i}.{k}": v for k, v in _PINNED_LAYER.items()})
    return keys


def _as_pinned(module) -> dict[str, torch.Tensor]:
    """Our module's weights under the pinned names (what CLIP-Mesh's checkpoint file holds)."""
    state = {}
    for key, value in module.state_dict().items():
        if key.startswith("noise_scheduler."):
            name = key[len("noise_scheduler."):]
            if name in _PINNED_SCHEDULE:
                state[name] = value.clone()
            continue
        if key in ("net.null_text_encodings", "net.null_text_embeds", "net.null_image_embed"):
            continue
        key = key.replace("net.to_time_embeds.0.", "net.time_embeddings.").replace(".0.to_out.1.", ".0.post_norm.")
        if key.endswith(".g"):
            state[key[:-2] + ".gamma"] = value.clone()
            state[key[:-2] + ".beta"] = torch.zeros_like(value)
        else:
            state[key] = value.clone()
    return state


@pytest.fixture(scope="module")
def tiny_prior():
    return load_prior("tiny-random", CPU)


def test_the_public_checkpoint_keys_load_into_our_module_at_full_size():
    keys = _pinned_checkpoint_keys()
    assert len(keys) == 179
    with torch.device("meta"):
        module = build_prior(CLIP_MESH_PRIOR_CONFIG)
        checkpoint = {k: torch.empty(shape) for k, shape in keys.items()}
    reference = module.state_dict()
    converted = convert_clip_mesh_state_dict(checkpoint, reference)
    assert set(converted) == set(reference)
    module.load_state_dict(converted, strict=True, assign=True)  # every name and shape of the file has its place
    # and the other direction: every weight of our module comes from the file (only the schedule and the unused null
    # embeddings are ours)
    ours_only = {k for k in reference if k.startswith("noise_scheduler.")} | {
        "net.null_text_encodings", "net.null_text_embeds", "net.null_image_embed"}
    assert len(set(reference) - ours_only) == len([k for k in keys if k not in _PINNED_SCHEDULE
                                                   and not k.endswith(".beta")])
    # a file that is not that checkpoint is named as such
    broken = dict(checkpoint)
    broken.pop("net.causal_transformer.layers.3.0.to_q.weight")
    with pytest.raises(ModelNotFoundError, match=r"1 missing key\(s\) \['net.causal_transformer.layers.3.0.to_q"):
        convert_clip_mesh_state_dict(broken, reference)
    with torch.device("meta"):
        broken = {**checkpoint, "net.learned_query": torch.empty(768)}
    with pytest.raises(ModelNotFoundError, match=r"'net.learned_query' has shape \(768,\), expected \(512,\)"):
        convert_clip_mesh_state_dict(broken, reference)


def test_attention_is_the_pinned_dot_product_not_cosine_similarity():
    """The pinned prior scores q·k/√d; modern dalle2's default cosine-sim attention is invariant to the scale of the
    query projection. Scaling ``to_q`` changes our output and leaves an unadjusted modern module's alone."""
    from dalle2_pytorch import DiffusionPrior, DiffusionPriorNetwork

    config = TINY_PRIOR_CONFIG
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ours = build_prior(config)
        modern = DiffusionPrior(net=DiffusionPriorNetwork(dim=16, depth=1, dim_head=8, heads=2, max_text_len=0),
                                clip=None, image_embed_dim=16, timesteps=64, condition_on_text_encodings=False).eval()
        x, text = torch.randn(3, 16), F.normalize(torch.randn(3, 16), dim=-1)
    t = torch.tensor([0, 20, 63])
    for module, changes in ((ours, True), (modern, False)):
        with torch.no_grad():
            before = module.net(x, t, text_embed=text)
            module.net.causal_transformer.layers[0][0].to_q.weight.mul_(3.0)
            after = module.net(x, t, text_embed=text)
        assert ((after - before).abs().max() > 1e-3) == changes
    assert ours.net.causal_transformer.norm.stable is False


def test_one_attention_layer_computes_the_pinned_formula(tiny_prior):
    """The pinned attention written out with the layer's own weights: pre-LayerNorm, multi-head queries and one
    shared key/value head (rotary on the first 32 channels), a learned null key/value in front, scores
    q·k/√dim_head + the T5 relative-position bias, causal mask, softmax, output projection, LayerNorm."""
    transformer = tiny_prior.prior.net.causal_transformer
    layer = transformer.layers[0][0]
    heads, dim_head = TINY_PRIOR_CONFIG.heads, TINY_PRIOR_CONFIG.dim_head
    x = torch.randn((2, 5, 16), generator=torch.Generator().manual_seed(0))
    bias = transformer.rel_pos_bias(5, 6, device=x.device)  # (heads, 5, 6)

    def layer_norm(t, g):
        return F.layer_norm(t, t.shape[-1:], g, None, 1e-5)

    with torch.no_grad():
        h = layer_norm(x, layer.norm.g)
        q = layer.to_q(h).view(2, 5, heads, dim_head).transpose(1, 2)  # (b, heads, n, d)
        k, v = layer.to_kv(h).chunk(2, dim=-1)  # (b, n, d) each: one key/value head
        q, k = layer.rotary_emb.rotate_queries_or_keys(q), layer.rotary_emb.rotate_queries_or_keys(k)
        k = torch.cat([layer.null_kv[0].expand(2, 1, dim_head), k], dim=1)
        v = torch.cat([layer.null_kv[1].expand(2, 1, dim_head), v], dim=1)
        scores = torch.einsum("bhid,bjd->bhij", q, k) / dim_head ** 0.5 + bias
        causal = torch.ones(5, 6, dtype=torch.bool).triu(2)  # the null key is column 0: query i sees keys 0..i+1
        attn = scores.masked_fill(causal, float("-inf")).softmax(dim=-1)
        out = torch.einsum("bhij,bjd->bhid", attn, v).transpose(1, 2).reshape(2, 5, heads * dim_head)
        expected = layer_norm(layer.to_out[0](out), layer.to_out[1].g)
        torch.testing.assert_close(layer(x, attn_bias=bias), expected, atol=1e-5, rtol=1e-5)


def test_tiny_prior_samples_a_seeded_unit_vector(tiny_prior, embedders):
    clip = embedders["open_clip"]
    state = torch.random.get_rng_state()
    steps = []
    a = predict_image_embedding("a wooden vase", clip, tiny_prior, seed=1, progress=lambda *s: steps.append(s))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    assert steps == [(i, 64) for i in range(1, 65)]  # every DDPM step reported (jobs cancel from it)
    b = predict_image_embedding("a wooden vase", clip, tiny_prior, seed=1)
    c = predict_image_embedding("a wooden vase", clip, tiny_prior, seed=2)
    assert a.shape == (16,) and a.dtype == torch.float32 and abs(float(a.norm()) - 1) < 1e-5
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-3
    assert tiny_prior.matches(embedders["transformers"])  # either library's tiny CLIP


def test_several_samples_keep_the_one_closest_to_the_text(tiny_prior, embedders):
    text = embedders["open_clip"].encode_texts(["a red chair"])
    candidates = tiny_prior.sample(text.expand(3, -1), num_samples=1, seed=5)  # the same draws, one batch
    best = tiny_prior.sample(text, num_samples=3, seed=5)[0]
    cosines = candidates @ text[0]
    torch.testing.assert_close(best, candidates[int(cosines.argmax())])
    for bad, match in ((dict(cond_scale=2.0), "cond_scale must be 1"), (dict(num_samples=0), "num_samples must be")):
        with pytest.raises(ValueError, match=match):
            tiny_prior.sample(text, **bad)


def test_a_prior_checkpoint_file_loads(tmp_path, monkeypatch, tiny_prior, embedders):
    """The file path (``{"model": state_dict}`` under the pinned names) with the architecture patched to tiny."""
    monkeypatch.setattr(clip_prior, "CLIP_MESH_PRIOR_CONFIG", TINY_PRIOR_CONFIG)
    torch.save({"model": _as_pinned(tiny_prior.prior)}, tmp_path / "prior.pth")
    loaded = load_prior(str(tmp_path / "prior.pth"), CPU)
    text = embedders["open_clip"].encode_texts(["a lamp"])
    torch.testing.assert_close(loaded.sample(text, seed=3), tiny_prior.sample(text, seed=3))
    torch.save({"model": {"weights": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(ModelNotFoundError, match="not a CLIP-Mesh prior checkpoint"):
        load_prior(str(tmp_path / "other.pth"), CPU)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_prior(str(tmp_path / "missing.pth"), CPU)


def test_without_the_prior_the_target_is_the_text_embedding_and_the_job_says_so(empty_hub_cache, embedders,
                                                                                 tiny_prior):
    clip = embedders["open_clip"]
    with pytest.raises(ModelNotFoundError, match=r"prior 'NasirKhalid24/Dalle2-Diffusion-Prior' is not on this "
                                                 r"machine.*`python -m backend download NasirKhalid24/Dalle2-"):
        load_prior(CLIP_MESH_PRIOR, CPU)
    text = clip.encode_texts(["a cowboy hat"])[0]
    embedding, note = prior_or_text_embedding("a cowboy hat", clip)
    torch.testing.assert_close(embedding, text)
    assert "text embedding" in note and "prior is not used" in note and "download" in note

    target = clip_target("a cowboy hat", clip, "tiny-random", load=lambda m: tiny_prior)
    assert target.prior is not None and target.embedding is target.prior and "prior's image embedding" in target.note
    torch.testing.assert_close(target.text, text)
    assert (target.prior - text).abs().max() > 1e-3

    # a guidance CLIP of another space: the prior's embedding is not comparable, so the text embedding is used
    other = OracleCLIPEmbedder(image_size=32, embed_dim=16)
    other.encode_texts = clip.encode_texts  # a 16-d text tower, but not the prior's CLIP
    target = clip_target("a cowboy hat", other, "tiny-random", load=lambda m: tiny_prior)
    assert target.prior is None and "maps within 'tiny-random' embeddings" in target.note
    with pytest.raises(ValueError, match="the prior maps within 'tiny-random'"):
        predict_image_embedding("a cowboy hat", other, tiny_prior)
    assert clip_target("a hat", clip, None).note.endswith("(no prior asked for)")
    with pytest.raises(ValueError, match="prompt must be a non-empty string"):
        clip_target("  ", clip)


def test_download_routes_the_prior_id(monkeypatch):
    asked = []
    monkeypatch.setattr(cli, "download_prior", lambda model: asked.append(model) or "/cache/prior.pth")
    assert cli.main(["download", CLIP_MESH_PRIOR]) == 0
    assert asked == [CLIP_MESH_PRIOR]


# ---------------------------------------------------------------------------------------------------------------------
# Real weights (LATENTFORGE_TEST_WEIGHTS=1, after `download ViT-B-32/openai`, `download openai/clip-vit-base-patch32`
# and `download NasirKhalid24/Dalle2-Diffusion-Prior`).
# ---------------------------------------------------------------------------------------------------------------------

def _solid(rgb: tuple[float, float, float]) -> torch.Tensor:
    return torch.tensor(rgb).view(1, 3, 1, 1).expand(1, 3, 256, 256).clone()


@pytest.mark.weights
def test_real_vit_b_32_reads_colours_through_both_libraries():
    images = torch.cat([_solid((0.9, 0.1, 0.1)), _solid((0.1, 0.2, 0.9))])
    prompts = ["a red square", "a blue square"]
    for backend in BACKENDS:
        clip = load_clip(DEFAULT_CLIP_MODEL, CPU, backend=backend)
        assert (clip.image_size, clip.embed_dim) == (224, 512)
        with torch.no_grad():
            scores = clip.encode_images(images) @ clip.encode_texts(prompts).T
        assert scores[0, 0] > scores[0, 1] and scores[1, 1] > scores[1, 0], (backend, scores)


@pytest.mark.weights
def test_the_public_prior_loads_and_moves_toward_the_image_side():
    """The prior's image embedding of a prompt is closer to CLIP image embeddings of matching pictures than the text
    embedding itself is (the modality gap the prior bridges), and keeps the prompt's meaning."""
    clip = load_clip(DEFAULT_CLIP_MODEL, CPU)
    prior = load_prior(CLIP_MESH_PRIOR, CPU)
    assert prior.matches(clip)
    red, blue = (clip.encode_images(_solid(c)).detach()[0] for c in ((0.9, 0.1, 0.1), (0.1, 0.2, 0.9)))
    text = clip.encode_texts(["a red square"])[0]
    image = predict_image_embedding("a red square", clip, prior, seed=0)
    assert float(image @ red) > float(text @ red)
    assert float(image @ red) > float(image @ blue)
