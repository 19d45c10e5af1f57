"""Michelangelo's CLIP conditioner (tiny-random), the mesh-folder dataset and the DDIM sampling loop: contracts,
frames, labels and clear errors. Fast (a few seconds on 2 CPU cores)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import trimesh

from backend.geometry.mesh import MeshError
from backend.michelangelo.conditioner import (CLIP_MEAN, CLIP_STD, CLIPConditioner, load_image, preprocess_images,
                                              tiny_clip_config)
from backend.michelangelo.config import get_preset
from backend.michelangelo.data import (MODEL_EXTENT, VOLUME_BOUND, DatasetError, ShapeDataset, collate_shapes,
                                       sample_surface, to_model_frame)
from backend.michelangelo.sampling import ddim_scheduler, ddpm_scheduler, sample_latents
from backend.models.base import ModelNotFoundError


@pytest.fixture(scope="module")
def clip():
    return CLIPConditioner.tiny_random(0)


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------------------------
# Conditioner.
# ---------------------------------------------------------------------------------------------------------------------

def test_output_contract_matches_the_config(clip):
    cfg = tiny_clip_config()
    text = clip.encode_text(["a chair", "a lamp"])
    assert text.shape == (2, cfg.text_tokens, cfg.text_width) and text.dtype == torch.float32
    assert not torch.allclose(text[0], text[1])
    image = clip.encode_image(np.stack([_rgb(40, 64), _rgb(40, 64, 1)]))
    assert image.shape == (2, cfg.image_tokens, cfg.vision_width) == (2, 17, 32)
    assert clip.context_shape("text") == (77, 32) and clip.context_shape("image") == (17, 32)
    for embeds in (clip.text_embeds(["a chair"]), clip.image_embeds([_rgb(20, 20)])):
        assert embeds.shape == (1, cfg.projection_dim)
        torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(1))


def test_unconditional_embeddings_are_the_public_ones(clip):
    # text: the encoding of the empty prompt; image: zeros (FrozenAlignedCLIPTextEmbedder / FrozenCLIPImageGridEmbedder)
    torch.testing.assert_close(clip.unconditional(3, "text"), clip.encode_text([""] * 3))
    assert torch.equal(clip.unconditional(2, "image"), torch.zeros(2, 17, 32))
    with pytest.raises(ValueError, match="condition must be one of"):
        clip.unconditional(1, "audio")
    with pytest.raises(ValueError, match="batch_size"):
        clip.unconditional(0, "text")


def test_tokens_pad_with_end_of_text(clip):
    ids = clip.tokenize(["ab"])[0]
    assert ids[0] == clip.tokenizer.bos_token_id and (ids[3:] == clip.tokenizer.eos_token_id).all()
    long = clip.tokenize(["x" * 500])
    assert long.shape == (1, 77) and long[0, -1] == clip.tokenizer.eos_token_id


def test_tiny_random_is_seeded(clip):
    same = CLIPConditioner.tiny_random(0)
    other = CLIPConditioner.tiny_random(1)
    assert torch.equal(same.encode_text(["a"]), clip.encode_text(["a"]))
    assert not torch.equal(other.encode_text(["a"]), clip.encode_text(["a"]))


def test_images_rgba_on_white_resize_and_crop():
    transparent = np.zeros((1, 50, 30, 4), np.uint8)  # black, fully transparent
    white = np.full((1, 50, 30, 3), 255, np.uint8)
    a, b = preprocess_images(transparent, 32), preprocess_images(white, 32)
    assert a.shape == (1, 3, 32, 32)
    torch.testing.assert_close(a, b)
    expected = (1.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(a[0, :, 0, 0], expected)
    # short side → 32, then a centred crop: a top/bottom split 50x30 image keeps its middle rows
    split = np.zeros((50, 30, 3), np.uint8)
    split[25:] = 255
    x = preprocess_images([split], 32)[0, 0] * CLIP_STD[0] + CLIP_MEAN[0]
    assert x[0].max() < 0.05 and x[-1].min() > 0.95


@pytest.mark.parametrize("images, match", [
    (np.zeros((1, 1, 1, 3), np.uint8), "1×1 pixels"),
    (np.zeros((1, 8, 40, 3), np.uint8), "40×8 pixels"),
    (np.zeros((1, 20, 20, 3), np.float32), "must be uint8"),
    (np.zeros((20, 20, 3), np.uint8), "\\(B, H, W, 3\\|4\\)"),
    (np.zeros((1, 20, 20, 2), np.uint8), "RGB or"),
    ([], "images is empty"),
    ("image.png", "array or a list"),
])
def test_bad_images_are_clear_errors(clip, images, match):
    with pytest.raises(ValueError, match=match):
        clip.encode_image(images)


@pytest.mark.parametrize("prompts, match", [("a chair", "list of strings"), ([], "prompts is empty"),
                                            (["ok", 3], "prompt 1 must be a string")])
def test_bad_prompts_are_clear_errors(clip, prompts, match):
    with pytest.raises(ValueError, match=match):
        clip.encode_text(prompts)


def test_load_image(tmp_path):
    from PIL import Image

    rgba = np.random.default_rng(0).integers(0, 256, (20, 24, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.dtype == np.uint8 and np.array_equal(loaded, rgba)
    Image.fromarray(rgba[..., 0], "L").save(tmp_path / "grey.png")
    assert load_image(tmp_path / "grey.png").shape == (20, 24, 3)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="could not read image .*bad.png"):
        load_image(tmp_path / "bad.png")
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(ValueError, match="1×1 pixels"):
        load_image(tmp_path / "dot.png")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")


def test_loading_never_downloads_and_says_what_to_do(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not on this machine|could not load"):
        CLIPConditioner.from_pretrained("openai/clip-vit-large-patch14")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        CLIPConditioner.from_pretrained(str(tmp_path / "no-such-folder"))
    with pytest.raises(ValueError, match="backend must be one of"):
        CLIPConditioner.from_pretrained("x", backend="jax")
    tiny = CLIPConditioner.from_pretrained("tiny-random")
    assert tiny.text_width == 32 and tiny.model_id == "tiny-random"


def test_open_clip_backend_loads_and_encodes_a_tiny_open_clip_model(tmp_path, monkeypatch):
    """The ``open_clip`` backend end to end on a tiny open_clip model (registered as an architecture, its weights
    read from a file): the conditioner's own text/image forward passes give open_clip's ``encode_text`` /
    ``encode_image`` (so the contexts come from the same towers), and the shapes are the config's."""
    import open_clip
    from open_clip import factory

    arch = "Tiny-Michelangelo-Test"
    monkeypatch.setitem(factory._MODEL_CONFIGS, arch, dict(
        embed_dim=32, quick_gelu=True,
        vision_cfg=dict(image_size=32, layers=2, width=32, head_width=16, patch_size=8),
        text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reference = open_clip.create_model(arch).eval()
    torch.save(reference.state_dict(), tmp_path / "tiny.pt")
    config = dataclasses.replace(tiny_clip_config(), backend="open_clip", open_clip_model=arch,
                                 open_clip_pretrained=str(tmp_path / "tiny.pt"))
    cond = CLIPConditioner.from_pretrained(f"{arch}:{tmp_path / 'tiny.pt'}", backend="open_clip", config=config)
    assert cond.backend == "open_clip" and cond.model_id == f"{arch}:{tmp_path / 'tiny.pt'}"

    prompts = ["a chair with four legs", "a lamp"]
    ids = cond.tokenize(prompts)
    assert ids.shape == (2, 77) and (ids[:, -1] == 49407).all()  # padded with <|endoftext|>, as the HF tokenizer
    assert cond.encode_text(prompts).shape == (2, 77, 32)
    images = [_rgb(40, 48, 1), _rgb(32, 32, 2)]
    assert cond.encode_image(images).shape == (2, cond.image_tokens, 32) == (2, 17, 32)
    with torch.no_grad():
        text = torch.nn.functional.normalize(reference.encode_text(open_clip.get_tokenizer(arch)(prompts)), dim=-1)
        image = torch.nn.functional.normalize(reference.encode_image(preprocess_images(images, 32)), dim=-1)
    torch.testing.assert_close(cond.text_embeds(prompts), text, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cond.image_embeds(images), image, atol=1e-5, rtol=1e-5)
    assert (cond.text_embeds(prompts)[0] - cond.text_embeds(prompts)[1]).abs().max() > 1e-3


def test_model_must_match_its_config(clip):
    wrong = dataclasses.replace(tiny_clip_config(), vision_width=64)
    with pytest.raises(ValueError, match="vision_width: model 32 vs config 64"):
        CLIPConditioner(wrong, "transformers", clip.model, clip.tokenizer)


# ---------------------------------------------------------------------------------------------------------------------
# Dataset.
# ---------------------------------------------------------------------------------------------------------------------

@pytest.fixture
def folder(tmp_path):
    """A tall box (Blender Z up, 1 × 2 × 4 m at z = 10) and a sphere; a caption file and an image for the box."""
    from PIL import Image

    box = trimesh.creation.box(extents=(1.0, 2.0, 4.0))
    box.apply_translation((0.0, 0.0, 10.0))
    box.export(tmp_path / "box.ply")
    trimesh.creation.icosphere(subdivisions=2).export(tmp_path / "ball.stl")
    (tmp_path / "box.txt").write_text("a tall box\n\na crate\n")
    Image.fromarray(_rgb(32, 32)).save(tmp_path / "box.png")
    return tmp_path


def test_shapes_are_normalised_into_the_model_frame(folder):
    ds = ShapeDataset(folder, num_surface_points=256, num_volume_points=128, num_near_points=128)
    assert [p.name for p in ds.files] == ["ball.stl", "box.ply"]
    box = ds.shape(1)
    lo, hi = box.v_pos.min(axis=0), box.v_pos.max(axis=0)
    np.testing.assert_allclose(lo + hi, 0.0, atol=1e-5)  # bbox centred
    # Z up (4 m) in Blender → Y up in the model frame, largest half-extent = 1
    np.testing.assert_allclose(hi, [0.25, MODEL_EXTENT, 0.5], atol=1e-5)
    assert np.abs(box.surface[:, :3]).max() <= MODEL_EXTENT + 1e-5
    # the same transform as the pipelines use
    v, center, scale = to_model_frame(trimesh.load(folder / "box.ply").vertices)
    np.testing.assert_allclose(v, box.v_pos, atol=1e-5)


def test_labels_normals_and_items(folder):
    ds = ShapeDataset(folder, num_surface_points=256, num_volume_points=128, num_near_points=96)
    ball = ds.shape(0)
    for points, labels in ((ball.volume_points, ball.volume_labels), (ball.near_points, ball.near_labels)):
        radius = np.linalg.norm(points, axis=1)
        clear = np.abs(radius - 1.0) > 0.02  # icosphere facets lie inside the unit sphere by < 2 %
        assert np.array_equal(labels[clear], radius[clear] < 1.0)
    assert np.abs(ball.volume_points).max() <= VOLUME_BOUND
    normals = ball.surface[:, 3:]
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    assert (np.einsum("ij,ij->i", normals, ball.surface[:, :3]) > 0).all()  # outward

    item = ds.sample(1, np.random.default_rng(0))
    assert item["surface"].shape == (256, 6) and item["queries"].shape == (224, 3) and item["labels"].shape == (224,)
    assert item["caption"] in ("a tall box", "a crate") and item["image"].shape == (32, 32, 3)
    assert ds[0]["caption"] is None and ds[0]["image"] is None
    again = ds.sample(1, np.random.default_rng(0))
    assert torch.equal(item["queries"], again["queries"])
    batch = collate_shapes([ds.sample(i, np.random.default_rng(i)) for i in (0, 1)])
    assert batch["surface"].shape == (2, 256, 6) and batch["caption"][0] is None and batch["index"].tolist() == [0, 1]
    assert not ds.has_captions and not ds.has_images


def test_inside_out_meshes_get_outward_normals(tmp_path):
    ball = trimesh.creation.icosphere(subdivisions=2)
    trimesh.Trimesh(ball.vertices, ball.faces[:, ::-1], process=False).export(tmp_path / "flipped.ply")
    s = ShapeDataset(tmp_path, num_surface_points=64, num_volume_points=64, num_near_points=64).shape(0)
    assert (np.einsum("ij,ij->i", s.surface[:, 3:], s.surface[:, :3]) > 0).all()
    assert s.volume_labels.any()


def test_captions_json(folder):
    (folder / "captions.json").write_text(json.dumps({"ball.stl": ["a ball", "a sphere"], "box.ply": "a box"}))
    ds = ShapeDataset(folder, num_surface_points=16, num_volume_points=16, num_near_points=16)
    assert ds.captions == [["a ball", "a sphere"], ["a box"]] and ds.has_captions  # json wins over box.txt
    (folder / "captions.json").write_text(json.dumps({"ball.stl": ""}))
    with pytest.raises(DatasetError, match="caption of 'ball.stl' must be"):
        ShapeDataset(folder)
    (folder / "captions.json").write_text("{nope")
    with pytest.raises(DatasetError, match="could not read .*captions.json"):
        ShapeDataset(folder)


def test_bad_dataset_arguments(folder, tmp_path):
    with pytest.raises(DatasetError, match="num_surface_points must be a positive integer"):
        ShapeDataset(folder, num_surface_points=0)
    (folder / "box.png").write_bytes(b"junk")
    ds = ShapeDataset(folder, num_surface_points=16, num_volume_points=16, num_near_points=16)
    with pytest.raises(ValueError, match="could not read image .*box.png"):
        ds.sample(1, np.random.default_rng(0))
    (tmp_path / "file.obj").write_text("")
    with pytest.raises(DatasetError, match="not a folder"):
        ShapeDataset(tmp_path / "file.obj")
    with pytest.raises(MeshError, match="file.obj"):
        ShapeDataset(tmp_path)


def test_sample_surface_is_area_weighted():
    # a 1 × 1 square and a 1 × 3 rectangle side by side: 1/4 of the points on the first
    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [2, 0, 0], [5, 0, 0], [5, 1, 0], [2, 1, 0]], float)
    f = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    pts = sample_surface(v, f, 4000, rng=0)
    assert pts.shape == (4000, 6) and pts.dtype == np.float32
    assert abs((pts[:, 0] <= 1).mean() - 0.25) < 0.03
    np.testing.assert_allclose(pts[:, 3:], np.tile([0, 0, 1], (4000, 1)), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Sampling.
# ---------------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def denoiser():
    from backend.michelangelo.asldm import ASLDMDenoiser

    torch.manual_seed(0)
    return ASLDMDenoiser(get_preset("tiny").denoiser).eval()


def test_schedulers_are_the_public_ones():
    cfg = get_preset("text-ASLDM-256")
    ddpm, ddim = ddpm_scheduler(cfg), ddim_scheduler(cfg)
    for s in (ddpm, ddim):
        assert s.config.beta_schedule == "scaled_linear" and s.config.num_train_timesteps == 1000
        assert s.config.beta_start == 0.00085 and s.config.beta_end == 0.012 and not s.config.clip_sample
    assert ddim.config.steps_offset == 1 and not ddim.config.set_alpha_to_one
    ddim.set_timesteps(50)
    assert ddim.timesteps[0] == 981 and ddim.timesteps[-1] == 1


def test_sample_latents_guidance_and_strength(denoiser):
    ctx = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
    uncond = torch.zeros_like(ctx)
    cfg = get_preset("tiny")

    def run(**kw):
        args = dict(guidance_scale=3.0, num_inference_steps=4, generator=torch.Generator().manual_seed(7)) | kw
        return sample_latents(denoiser, ddim_scheduler(cfg), ctx, uncond, **args)

    out = run()
    assert out.shape == (2, 32, 8) and torch.isfinite(out).all()
    assert torch.equal(out, run())  # seeded
    # s = 1 is the conditional prediction; no uncond = the same
    torch.testing.assert_close(run(guidance_scale=1.0),
                               sample_latents(denoiser, ddim_scheduler(cfg), ctx, None, 1.0, 4,
                                              generator=torch.Generator().manual_seed(7)))
    assert not torch.allclose(run(guidance_scale=1.0), out)
    steps = []
    start = torch.randn(2, 32, 8, generator=torch.Generator().manual_seed(1))
    light = run(latents=start, strength=0.5, callback=lambda i, n, x: steps.append((i, n)))
    assert steps == [(1, 2), (2, 2)]
    assert (light - start).abs().mean() < (out - start).abs().mean()
    with pytest.raises(ValueError, match="strength"):
        run(strength=0.5)
    with pytest.raises(ValueError, match="strength must be in"):
        run(latents=start, strength=0.0)
    with pytest.raises(ValueError, match="latents must have shape"):
        run(latents=start[:, :3])
    with pytest.raises(ValueError, match="uncond must have the shape"):
        sample_latents(denoiser, ddim_scheduler(cfg), ctx, uncond[:1], 3.0, 4)
