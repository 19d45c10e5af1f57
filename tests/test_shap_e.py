"""Shap-E (``shap_e``) through diffusers with tiny-random weights: generation end to end (in process and from the CLI),
vertex colours, determinism, cancellation, the frame, model loading and bad input.

tiny-random weights decode to arbitrary (seeded) solids, so these tests check plumbing, colours, frames and errors.
Where a test needs a *known* shape, it replaces the latent's implicit function by an analytic one
(:func:`_chair_fields`) and lets the rest of the pipeline run as it does for real latents."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh

from backend.geometry.frames import blender_to_shap_e, gltf_to_blender, shap_e_to_blender
from backend.geometry.mesh import MeshError
from backend.models.base import ModelNotFoundError
from backend.models.cache import ModelCache
from backend.models.shap_e import build_random_shap_e, load_shap_e, stf_fields
from blender_addon.core.arrays import srgb_to_linear
from backend.params import ParamError, parse_config
from backend.pipelines import PIPELINES
from backend.pipelines import shap_e as shap_e_pipeline
from backend.pipelines.base import JobCancelled, JobContext
from backend.pipelines.io import inputs_from_arrays, result_to_arrays
from backend.pipelines.shap_e import ShapEConfig
from blender_addon.core import protocol
from conftest import REPO_ROOT

CPU = torch.device("cpu")
SPEC = PIPELINES["shap_e"]
FAST = {"model": "tiny-random", "num_inference_steps": 3, "grid_resolution": 20}
"""Small enough for 2 CPU cores: 3 Heun steps (5 prior calls), a 20³ grid."""


@pytest.fixture(scope="module")
def models():
    return ModelCache(capacity=2)


def _ctx(models, **kw) -> JobContext:
    return JobContext(device=CPU, models=models, **kw)


def _run(params: dict, arrays: dict | None = None, ctx: JobContext | None = None, models=None):
    """``PIPELINES['shap_e'].run`` fed with wire arrays, decoded as the service decodes them."""
    config = parse_config(ShapEConfig, {**FAST, **params})
    return SPEC.run(config, inputs_from_arrays("shap_e", SPEC, arrays or {}), ctx or _ctx(models))


# ---------------------------------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------------------------------

def test_generation_returns_one_coloured_mesh_per_sample_and_reports_every_heun_step(models):
    progress = []
    result = _run({"prompt": "a red chair", "num_samples": 3}, ctx=_ctx(models, on_progress=lambda *a: progress.append(a)))
    a = result_to_arrays(result)
    groups = protocol.mesh_groups(a)
    assert groups == ["mesh", "mesh_1", "mesh_2"]
    for g in groups:
        v, c = a[f"{g}.v_pos"], a[f"{g}.v_color"]
        assert v.dtype == np.float32 and len(a[f"{g}.t_pos_idx"]) > 0 and np.isfinite(v).all()
        assert c.dtype == np.float32 and c.shape == (len(v), 3) and c.min() >= 0.0 and c.max() <= 1.0
        step = 2.0 / (FAST["grid_resolution"] - 1)
        assert np.abs(v).max() <= 1.0 + step + 1e-4  # Shap-E's cube [-1, 1]³ (+ the closing border), around 0
    protocol.encode_message("result", {"job_id": "j", "metadata": result.metadata}, a)  # valid on the wire
    # one report per Heun step (3 steps = 5 prior calls), then one per extracted sample
    assert [p[1] for p in progress if p[0] == "denoise"] == [0, 1, 2, 3]
    assert [p[1] for p in progress if p[0] == "extract"] == [0, 1, 2, 3]
    assert result.metadata["guidance_scale"] == 15.0 and result.metadata["model"] == "tiny-random"
    assert result.extras["latents"].shape == (3, 16, 16)


def test_vertex_colours_are_the_colour_head_at_the_vertices_made_linear(models):
    result = _run({"prompt": "a lamp"}, models=models)
    bundle = models.get(load_shap_e, "tiny-random", CPU)
    _, color_fn = stf_fields(bundle.renderer, result.extras["latents"][0])
    mesh = result.meshes[0]
    srgb = color_fn(torch.from_numpy(blender_to_shap_e(mesh.mesh.v_pos)))
    np.testing.assert_allclose(mesh.v_color, srgb_to_linear(srgb.numpy()), atol=1e-5)
    assert (mesh.v_color < srgb.numpy() - 1e-3).any()  # really converted: linear is darker than sRGB mid-tones
    # the IEC 61966-2-1 curve (as diffusers' decode_to_mesh applies it)
    np.testing.assert_allclose(srgb_to_linear(np.array([0.0, 0.04045, 0.5, 1.0])),
                               [0.0, 0.04045 / 12.92, 0.21404, 1.0], atol=1e-5)


def test_same_seed_same_shapes_other_seed_other_shapes(models):
    a, b, c = (_run({"prompt": "a vase", "seed": s, "num_samples": 2}, models=models) for s in (7, 7, 8))
    arrays_a, arrays_b = result_to_arrays(a), result_to_arrays(b)
    assert arrays_a.keys() == arrays_b.keys()
    for name in arrays_a:
        np.testing.assert_array_equal(arrays_a[name], arrays_b[name])
    assert not torch.equal(a.extras["latents"], c.extras["latents"])
    assert not torch.equal(a.extras["latents"][0], a.extras["latents"][1])  # samples of one job differ too


def test_a_prompt_changes_the_latents_and_guidance_follows_the_scale(models):
    base = _run({"prompt": "a vase"}, models=models).extras["latents"]
    assert not torch.equal(base, _run({"prompt": "a tree"}, models=models).extras["latents"])
    assert not torch.equal(base, _run({"prompt": "a vase", "guidance_scale": 1.0}, models=models).extras["latents"])
    # 0 = the model's default (15 for text): the same run as asking for 15
    torch.testing.assert_close(base, _run({"prompt": "a vase", "guidance_scale": 15.0}, models=models).extras["latents"])


def test_image_condition_rgb_and_rgba(models):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (40, 56, 4), dtype=np.uint8)
    result = _run({}, {"image": rgba}, models=models)
    assert result.metadata["image"] is True and result.metadata["guidance_scale"] == 3.0
    assert len(result.meshes[0].mesh.t_pos_idx) > 0 and result.meshes[0].v_color is not None
    rgb = _run({}, {"image": rgba[..., :3]}, models=models)
    assert not torch.equal(result.extras["latents"], rgb.extras["latents"])  # alpha matters (composited on white)
    opaque = rgba.copy()
    opaque[..., 3] = 255
    torch.testing.assert_close(_run({}, {"image": opaque}, models=models).extras["latents"], rgb.extras["latents"])


def test_cancel_stops_at_the_next_prior_call_and_leaves_no_hook(models):
    ctx = _ctx(models)
    calls = []

    def on_progress(stage, step, total, losses, eta):
        calls.append((stage, step))
        if stage == "denoise" and step == 2:
            ctx.cancel_event.set()

    ctx.on_progress = on_progress
    with pytest.raises(JobCancelled):
        _run({"prompt": "a chair", "num_inference_steps": 20}, ctx=ctx)
    assert max(s for st, s in calls if st == "denoise") == 2
    prior = models.get(load_shap_e, "tiny-random", CPU).text.prior
    assert not prior._forward_hooks and not prior._forward_pre_hooks
    assert len(_run({"prompt": "a chair"}, models=models).meshes) == 1  # the model still works afterwards


@pytest.mark.parametrize("scheduler_name, calls_per_run", [("HeunDiscreteScheduler", lambda n: 2 * n - 1),
                                                          ("EulerDiscreteScheduler", lambda n: n)])
def test_step_progress_counts_the_prior_calls_of_the_scheduler(models, scheduler_name, calls_per_run):
    """Heun (Shap-E's sampler) calls the prior 2N − 1 times for N steps, a first-order scheduler N times: either
    way, one report per completed step, in order, the last one N."""
    import diffusers

    from backend.models.shap_e import SCHEDULER_CONFIG

    class Pipe:
        prior = torch.nn.Identity()
        scheduler = getattr(diffusers, scheduler_name).from_config({**SCHEDULER_CONFIG, "beta_schedule": "linear"})

    for n in (1, 2, 5):
        reports = []
        ctx = _ctx(models, on_progress=lambda stage, step, total, *_: reports.append((stage, step, total)))
        with shap_e_pipeline._StepProgress(Pipe, n, ctx):
            for _ in range(calls_per_run(n)):
                Pipe.prior(torch.zeros(1))
        assert reports == [("denoise", s, n) for s in range(n + 1)]
    assert not Pipe.prior._forward_hooks


def test_face_budget_decimates_each_sample(models):
    full = _run({"prompt": "a vase", "num_samples": 2}, models=models)
    budget = _run({"prompt": "a vase", "num_samples": 2, "face_budget": 200}, models=models)
    assert all(n > 400 for n in full.metadata["faces"]) and all(n <= 200 for n in budget.metadata["faces"])
    assert [len(m.v_color) for m in budget.meshes] == [len(m.mesh.v_pos) for m in budget.meshes]


def test_no_surface_is_a_clear_error(monkeypatch, models):
    monkeypatch.setattr(shap_e_pipeline, "stf_fields", lambda renderer, latent: (
        lambda p: -torch.ones(len(p)), lambda p: torch.full((len(p), 3), 0.5)))
    with pytest.raises(MeshError, match=r"sample 0 has no surface: its signed distance is negative"):
        _run({"prompt": "a chair"}, models=models)


# ---------------------------------------------------------------------------------------------------------------------
# the frame: a known asymmetric shape
# ---------------------------------------------------------------------------------------------------------------------

def _box_sdf(p: torch.Tensor, center, half) -> torch.Tensor:
    """Signed distance to an axis-aligned box, positive inside (Shap-E's sign)."""
    q = (p - torch.tensor(center)).abs() - torch.tensor(half)
    outside = q.clamp(min=0).norm(dim=1) + q.max(dim=1).values.clamp(max=0)
    return -outside


def _chair_fields(frame_change):
    """An asymmetric "chair" as Shap-E's data pipeline sees it: authored like an Objaverse glTF asset (Y up, facing
    +Z: a seat, a tall back behind it at −Z, a footrest sticking out to the front at +Z), then imported into
    Blender's frame by ``frame_change`` (Shap-E's renders are made after Blender's glTF import). Front part red,
    the rest grey (sRGB 0.5)."""
    parts = [((0.0, 0.0, 0.0), (0.3, 0.05, 0.3)),      # seat, glTF frame
             ((0.0, 0.3, -0.25), (0.3, 0.3, 0.05)),    # back: up (+Y) and behind (−Z)
             ((0.0, -0.05, 0.4), (0.1, 0.05, 0.15))]   # footrest: in front (+Z), a little lower
    boxes = [(frame_change(np.array([c]))[0], np.abs(frame_change(np.array([h]))[0])) for c, h in parts]
    front = frame_change(np.array([[0.0, 0.0, 1.0]]))[0]

    def sdf_fn(p):
        return torch.stack([_box_sdf(p, c.tolist(), h.tolist()) for c, h in boxes]).max(dim=0).values

    def color_fn(p):
        is_front = (p @ torch.tensor(front, dtype=p.dtype)) > 0.3
        return torch.where(is_front[:, None], torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.5, 0.5, 0.5]))

    return lambda renderer, latent: (sdf_fn, color_fn)


def test_an_asymmetric_shape_lands_upright_and_facing_blenders_front(monkeypatch, models):
    """Through the pipeline's decoding and shap_e_to_blender: the back is up (+Z) and behind (+Y), the footrest at
    the front (−Y); its red is sRGB 1 → linear 1, the grey sRGB 0.5 → linear 0.214."""
    monkeypatch.setattr(shap_e_pipeline, "stf_fields", _chair_fields(gltf_to_blender))
    mesh = _run({"prompt": "a chair", "grid_resolution": 48}, models=models).meshes[0]
    v = mesh.mesh.v_pos
    lo, hi = v.min(0), v.max(0)
    np.testing.assert_allclose(lo, [-0.3, -0.55, -0.1], atol=0.05)  # the footrest reaches −Y and sits lowest
    np.testing.assert_allclose(hi, [0.3, 0.3, 0.6], atol=0.05)      # back reaches +Y (behind) and +Z (up)
    top = v[:, 2] > 0.4
    assert v[top, 1].min() > 0.1  # what is high up stands behind the seat: the back
    red = mesh.v_color[:, 0] > 0.9
    assert red.any() and (v[red, 1] < -0.25).all()  # the red footrest is at the front
    grey = mesh.v_color[~red]
    np.testing.assert_allclose(grey, 0.21404, atol=1e-4)


def test_shap_e_frame_is_blenders_as_diffusers_cameras_show():
    """diffusers' first pan camera (angle 0) shows a Shap-E object from its front: through shap_e_to_blender it must
    be Blender's front camera, at −Y above the object looking toward +Y, image up toward +Z."""
    from diffusers.pipelines.shap_e.camera import create_pan_cameras

    cam = create_pan_cameras(8)
    origin = shap_e_to_blender(cam.origin[:1].numpy())[0]
    forward = shap_e_to_blender(cam.z[:1].numpy())[0]
    image_down = shap_e_to_blender(cam.y[:1].numpy())[0]  # camera y = image rows, row 0 at the top
    assert origin[1] < -1.0 and origin[2] > 0.0 and abs(origin[0]) < 1e-6
    assert forward[1] > 0.8 and forward[2] < 0.0  # toward +Y, looking slightly down
    assert image_down[2] < -0.8  # rows go down = −Z: the image's up is +Z
    v = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    np.testing.assert_array_equal(blender_to_shap_e(shap_e_to_blender(v)), v)


# ---------------------------------------------------------------------------------------------------------------------
# baking
# ---------------------------------------------------------------------------------------------------------------------

def test_baked_texture_matches_the_vertex_colours(monkeypatch, models):
    monkeypatch.setattr(shap_e_pipeline, "stf_fields", _chair_fields(gltf_to_blender))
    mesh = _run({"prompt": "a chair", "grid_resolution": 40, "bake_texture": True, "texture_size": 256},
                models=models).meshes[0]
    tex = mesh.texture
    assert tex.shape == (256, 256, 3) and tex.dtype == np.uint8 and mesh.mesh.has_uv
    # the texel under each vertex's corner UV (image rows: row 0 = v = 1) is the sRGB encoding of its colour
    corner_v = mesh.mesh.t_pos_idx.reshape(-1)
    uv = mesh.mesh.uv[mesh.mesh.uv_idx.reshape(-1)]
    rows = np.clip(((1.0 - uv[:, 1]) * 256).astype(int), 0, 255)
    cols = np.clip((uv[:, 0] * 256).astype(int), 0, 255)
    texels = tex[rows, cols].astype(np.float32) / 255.0
    expected = np.where(mesh.v_color[corner_v] > 0.9, 1.0, np.where(mesh.v_color[corner_v] > 0.1, 0.5, 0.0))
    assert np.median(np.abs(texels - expected)) < 0.02
    assert np.mean(np.abs(texels - expected).max(axis=1) < 0.1) > 0.9


# ---------------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("params, inputs, error, match", [
    ({"prompt": "  "}, {}, ParamError, "shap_e needs a prompt or an image"),
    ({"prompt": "a chair"}, {"image": np.zeros((32, 32, 3), np.uint8)}, ParamError, "not both"),
    ({}, {"image": np.zeros((1, 1, 3), np.uint8)}, ValueError, "1×1 pixels; at least 16×16"),
    ({}, {"image": np.zeros((32, 32), np.uint8)}, ValueError, r"\(H, W, 3\) RGB"),
    ({"prompt": "x"}, {"mesh.v_pos": np.zeros((3, 3), np.float32)}, ParamError, "does not take"),
])
def test_bad_inputs_are_clear_errors(models, params, inputs, error, match):
    with pytest.raises(error, match=match):
        _run(params, inputs, models=models)


@pytest.mark.parametrize("params, match", [
    ({"num_samples": 0}, "num_samples = 0 is below the minimum 1"),
    ({"num_samples": 1000}, "num_samples = 1000 is above the maximum 16"),
    ({"num_inference_steps": 0}, "num_inference_steps"), ({"grid_resolution": 5000}, "grid_resolution"),
    ({"guidance_scale": -1.0}, "guidance_scale"), ({"face_budget": 2}, "face_budget"),
    ({"model": " "}, "model must not be empty"),
    ({"bake_texture": True, "num_samples": 2}, "bake_texture needs num_samples = 1"),
])
def test_bad_params_are_clear_errors(params, match):
    with pytest.raises(ParamError, match=match):
        parse_config(ShapEConfig, {**FAST, **params})


# ---------------------------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------------------------

def test_diffusers_folders_load_each_with_its_kind(tmp_path, models, caplog):
    bundle = build_random_shap_e(seed=3)
    bundle.text.save_pretrained(tmp_path / "text")
    bundle.image.save_pretrained(tmp_path / "image")
    text = load_shap_e(str(tmp_path / "text"), CPU)
    assert text.conditions == ("text",)
    torch.testing.assert_close(text.text.prior.state_dict()["proj_in.weight"],
                               bundle.text.prior.state_dict()["proj_in.weight"])
    with caplog.at_level("WARNING"):
        image = load_shap_e(str(tmp_path / "image"), CPU)
    assert image.conditions == ("image",) and type(image.image.image_processor).__name__ == "CLIPImageProcessorPil"
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text
    out = _run({"model": str(tmp_path / "text"), "prompt": "a chair"}, models=models)
    assert out.metadata["model"] == str(tmp_path / "text")
    with pytest.raises(ParamError, match="conditioned on text, not on images; use openai/shap-e-img2img"):
        _run({"model": str(tmp_path / "text")}, {"image": np.zeros((32, 32, 3), np.uint8)}, models=models)
    with pytest.raises(ParamError, match="conditioned on image, not on text; use openai/shap-e "):
        _run({"model": str(tmp_path / "image"), "prompt": "a chair"}, models=models)


def test_unknown_models_are_clear_errors(tmp_path):
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    for bad, match in [("nobody/no-such-shap-e", r"not on this machine .*`python -m backend download "
                                                 r"nobody/no-such-shap-e`"),
                       (str(tmp_path / "missing"), "does not exist"),
                       (str(tmp_path), "no model_index.json"),
                       (str(tmp_path / "sd"), "not a Shap-E model: its model_index.json names "
                                              "'StableDiffusionPipeline'")]:
        with pytest.raises(ModelNotFoundError, match=match):
            load_shap_e(bad, CPU)


# ---------------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------------

def _library_noise(stderr: str) -> list[str]:
    """Lines of warnings (transformers' torchvision fallback, diffusers' dtype notes) or progress bars."""
    return [line for line in stderr.splitlines()
            if "WARNING" in line or "warn" in line.lower() or "torchvision" in line or "it/s]" in line]


def test_cli_writes_one_glb_with_every_coloured_sample(tmp_path):
    out = tmp_path / "shapes.glb"
    cmd = [sys.executable, "-m", "backend", "run", "shap_e", "--model", "tiny-random", "--prompt", "a chair",
           "--num-samples", "2", "--num-inference-steps", "2", "--grid-resolution", "16", "--out", str(out),
           "--data-dir", str(tmp_path / "data"), "--device", "cpu", "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(out) in proc.stdout and not _library_noise(proc.stderr), proc.stderr
    scene = trimesh.load(out)
    assert sorted(scene.geometry) == ["mesh", "mesh_1"]
    for geom in scene.geometry.values():
        colors = geom.visual.vertex_colors
        assert colors.shape == (len(geom.vertices), 4) and len(np.unique(colors[:, :3], axis=0)) > 1


def test_cli_image_with_a_baked_texture(tmp_path):
    from PIL import Image

    image = tmp_path / "concept.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 4), dtype=np.uint8)).save(image)
    out = tmp_path / "shape.glb"
    cmd = [sys.executable, "-m", "backend", "run", "shap_e", "--model", "tiny-random", "--image", str(image),
           "--num-inference-steps", "1", "--grid-resolution", "16", "--bake-texture", "--texture-size", "64",
           "--out", str(out), "--data-dir", str(tmp_path / "data"), "--device", "cpu", "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not _library_noise(proc.stderr), proc.stderr
    assert out.exists() and Image.open(out.with_suffix(".png")).size == (64, 64)


def _cli(capsys, *args) -> tuple[int, str]:
    from backend.cli import main

    code = main(["run", "shap_e", *args])
    return code, capsys.readouterr().err


def test_cli_bad_inputs_are_one_line_errors(tmp_path, capsys):
    from PIL import Image

    common = ["--model", "tiny-random", "--out", str(tmp_path / "x.glb"), "--data-dir", str(tmp_path / "data"),
              "--device", "cpu", "--num-inference-steps", "1", "--grid-resolution", "16"]
    not_png = tmp_path / "notes.png"
    not_png.write_text("this is not an image")
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1)).save(tiny)
    for args, code_expected, words in [
        (["--image", str(not_png)], 2, "could not read image"),
        (["--image", str(tiny)], 2, "1×1 pixels"),
        ([], 2, "shap_e needs a prompt or an image"),
        (["--prompt", "a chair", "--num-samples", "1000"], 2, "--num-samples = 1000 is above the maximum 16"),
        (["--prompt", "a chair", "--bake-texture", "--num-samples", "2"], 2, "needs --num-samples = 1"),
        (["--prompt", "a chair", "--model", "nobody/no-such-shap-e"], 1, "python -m backend download"),
    ]:
        code, err = _cli(capsys, *common, *args)
        lines = err.strip().splitlines()
        assert code == code_expected and len(lines) == 1 and words in lines[0], (args, err)
    assert not (tmp_path / "x.glb").exists()


def test_download_knows_the_shap_e_ids(monkeypatch, capsys, tmp_path):
    from backend import cli

    asked = []
    monkeypatch.setattr(cli, "download_shap_e", lambda model: asked.append(model) or tmp_path / model)
    monkeypatch.setattr(cli, "download_stable_diffusion", lambda model: pytest.fail(f"{model} went to Stable Diffusion"))
    for model in ("openai/shap-e", "openai/shap-e-img2img"):
        assert cli.main(["download", model]) == 0
        assert capsys.readouterr().out.strip() == str(tmp_path / model)
    assert asked == ["openai/shap-e", "openai/shap-e-img2img"]
