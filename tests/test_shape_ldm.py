"""Michelangelo shape pipelines (shape_ldm, shape_variations, shape_interpolate) with tiny-random weights: the CLI,
a real backend process, determinism, placement, multi-mesh results, model loading and bad input.

tiny-random weights give arbitrary (but seeded, non-empty) occupancy fields, so these tests check plumbing,
frames, placement, streaming and errors; whether generation is *right* is tested on trained tiny models in the
training tests (overfit, two prompts → two shapes)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh

from backend.geometry.frames import gltf_to_blender
from backend.geometry.mesh import MeshError, TriMesh
from backend.michelangelo.checkpoint import save_checkpoint
from backend.michelangelo.model import build_tiny_random, load_michelangelo
from backend.models.cache import ModelCache
from backend.models.base import ModelNotFoundError
from backend.params import ParamError, parse_config
from backend.pipelines import PIPELINES
from backend.pipelines.base import JobCancelled, JobContext
from backend.pipelines import shape_interpolate, shape_ldm, shape_variations
from backend.pipelines.io import inputs_from_arrays, meshes_to_arrays, result_to_arrays
from backend.pipelines.shape_common import ShapePipeline
from backend.pipelines.shape_interpolate import ShapeInterpolateConfig
from backend.pipelines.shape_ldm import ShapeLDMConfig
from backend.pipelines.shape_variations import ShapeVariationsConfig
from blender_addon.core import protocol
from conftest import REPO_ROOT, WireClient, start_backend


def _run(module, name: str):
    """``module.run`` fed with wire arrays, decoded as the service decodes them."""
    return lambda config, arrays, ctx: module.run(config, inputs_from_arrays(name, PIPELINES[name], arrays), ctx)


run_shape_ldm = _run(shape_ldm, "shape_ldm")
run_shape_variations = _run(shape_variations, "shape_variations")
run_shape_interpolate = _run(shape_interpolate, "shape_interpolate")

CPU = torch.device("cpu")
FAST = {"model": "tiny-random", "num_inference_steps": 3, "grid_resolution": 20, "preview_resolution": 0}
"""Small enough for 2 CPU cores: 3 DDIM steps, a 20³ grid."""


def _mesh(m: trimesh.Trimesh, group: str = "mesh") -> dict[str, np.ndarray]:
    return {f"{group}.v_pos": np.asarray(m.vertices, np.float32), f"{group}.t_pos_idx": np.asarray(m.faces, np.int32)}


@pytest.fixture(scope="module")
def torus():
    """A torus lying in Blender's XY plane, moved to x = 4 and scaled ×2: (4 ± 2.6, ±2.6, 1 ± 0.6)."""
    m = trimesh.creation.torus(major_radius=1.0, minor_radius=0.3)
    m.apply_scale(2.0)
    m.apply_translation((4.0, 0.0, 1.0))
    return _mesh(m)


@pytest.fixture(scope="module")
def models():
    return ModelCache(capacity=2)


def _ctx(models, **kw) -> JobContext:
    return JobContext(device=CPU, models=models, **kw)


def _groups(arrays: dict) -> list[str]:
    return protocol.mesh_groups(arrays)


# ---------------------------------------------------------------------------------------------------------------------
# in-process
# ---------------------------------------------------------------------------------------------------------------------

def test_generation_streams_progress_and_previews_and_returns_one_mesh_per_sample(models):
    progress, partials = [], []
    ctx = _ctx(models, on_progress=lambda *a: progress.append(a), on_partial=lambda s, m: partials.append((s, meshes_to_arrays(m))))
    config = parse_config(ShapeLDMConfig, {**FAST, "prompt": "a swivel chair", "num_samples": 3,
                                           "preview_resolution": 12})
    result = run_shape_ldm(config, {}, ctx)
    a = result_to_arrays(result)
    assert _groups(a) == ["mesh", "mesh_1", "mesh_2"]
    for g in _groups(a):
        assert a[f"{g}.v_pos"].dtype == np.float32 and a[f"{g}.t_pos_idx"].dtype == np.int32
        assert len(a[f"{g}.t_pos_idx"]) > 0 and np.isfinite(a[f"{g}.v_pos"]).all()
        assert np.abs(a[f"{g}.v_pos"]).max() <= 1.1 + 1e-4  # generated shapes live in the model's [-1.1, 1.1]³
    protocol.encode_message("result", {"job_id": "j", "metadata": result.metadata}, a)  # valid on the wire
    # one preview of every sample, coarser than the result, before it
    assert len(partials) == 1 and _groups(partials[0][1]) == ["mesh", "mesh_1", "mesh_2"]
    assert len(partials[0][1]["mesh.t_pos_idx"]) < len(a["mesh.t_pos_idx"])
    protocol.encode_message("partial", {"job_id": "j", "step": partials[0][0]}, partials[0][1])
    stages = [p[0] for p in progress]
    assert [p[1] for p in progress if p[0] == "denoise"] == [1, 2, 3]
    assert stages.index("preview") < stages.index("extract")
    assert result.metadata["meshes"] == 3 and len(result.metadata["faces"]) == 3


def test_result_is_the_model_frame_mesh_turned_z_up(models):
    """The only axis change is backend.geometry.frames.gltf_to_blender (model frame: Y up, like the training data)."""
    config = parse_config(ShapeLDMConfig, {**FAST, "prompt": "a lamp"})
    result = run_shape_ldm(config, {}, _ctx(models))
    pipe = ShapePipeline(models.get(load_michelangelo, "tiny-random", CPU))
    model_frame = pipe.extract(result.extras["latents"], config.grid_resolution, config, _ctx(models))[0]
    np.testing.assert_allclose(result_to_arrays(result)["mesh.v_pos"], gltf_to_blender(model_frame.v_pos), atol=1e-6)
    np.testing.assert_array_equal(result_to_arrays(result)["mesh.t_pos_idx"], model_frame.t_pos_idx)


def test_same_seed_same_shapes_other_seed_other_shapes(models):
    def run(seed):
        config = parse_config(ShapeLDMConfig, {**FAST, "prompt": "a vase", "seed": seed, "num_samples": 2})
        return run_shape_ldm(config, {}, _ctx(models))

    a, b, c = run(7), run(7), run(8)
    assert result_to_arrays(a).keys() == result_to_arrays(b).keys()
    for name in result_to_arrays(a):
        np.testing.assert_array_equal(result_to_arrays(a)[name], result_to_arrays(b)[name])
    assert not torch.equal(a.extras["latents"], c.extras["latents"])
    assert not torch.equal(a.extras["latents"][0], a.extras["latents"][1])  # samples of one job differ too


def test_image_condition_rgb_and_rgba(models):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (40, 56, 4), dtype=np.uint8)
    config = parse_config(ShapeLDMConfig, {**FAST})
    result = run_shape_ldm(config, {"image": rgba}, _ctx(models))
    assert result.metadata["image"] is True and len(result_to_arrays(result)["mesh.t_pos_idx"]) > 0
    rgb = run_shape_ldm(config, {"image": rgba[..., :3]}, _ctx(models))
    assert not torch.equal(result.extras["latents"], rgb.extras["latents"])  # alpha matters (composited on white)


def test_variations_are_distinct_and_stand_where_the_mesh_stands(models, torus):
    config = parse_config(ShapeVariationsConfig, {**FAST, "num_samples": 3, "strength": 0.6})
    result = run_shape_variations(config, torus, _ctx(models))
    a = result_to_arrays(result)
    assert _groups(a) == ["mesh", "mesh_1", "mesh_2"]
    lat = result.extras["latents"]
    assert all(not torch.equal(lat[i], lat[j]) for i in range(3) for j in range(i + 1, 3))
    meshes = [a[f"{g}.v_pos"] for g in _groups(a)]
    assert len({(len(v), float(v.sum())) for v in meshes}) == 3  # three different meshes
    # model frame [-1.1, 1.1]³ around the torus' bounding-box centre, scaled by its half-extent (2.6)
    lo, hi = torus["mesh.v_pos"].min(0), torus["mesh.v_pos"].max(0)
    center, half = (lo + hi) / 2, (hi - lo).max() / 2
    for v in meshes:
        assert np.abs(v - center).max() <= 1.1 * half + 1e-3
        assert np.abs(v.mean(0) - center).max() < 1.1 * half
    # a prompt steers them: other latents than the unconditional run
    prompted = run_shape_variations(parse_config(ShapeVariationsConfig, {**FAST, "num_samples": 3, "strength": 0.6,
                                                                         "prompt": "a ring"}), torus, _ctx(models))
    assert not torch.equal(prompted.extras["latents"], lat)


def test_variation_strength_controls_how_far_the_latent_moves(models, torus):
    def distance(strength):
        config = parse_config(ShapeVariationsConfig, {**FAST, "num_samples": 1, "strength": strength,
                                                      "num_inference_steps": 10})
        pipe = ShapePipeline(models.get(load_michelangelo, "tiny-random", CPU))
        start, _ = pipe.encode_mesh(TriMesh(torus["mesh.v_pos"], torus["mesh.t_pos_idx"]), config.seed)
        end = pipe.denoise(start, *pipe.context("", None, 1)[:1], None, config, strength, 0, _ctx(models))
        return float((end - start).norm())

    assert distance(0.1) < distance(1.0)


def test_interpolation_places_in_between_shapes_between_the_inputs(models, torus):
    box = trimesh.creation.box((1.0, 1.0, 1.0))
    box.apply_translation((-6.0, 0.0, 0.0))
    inputs = {**torus, **_mesh(box, "mesh_b")}
    config = parse_config(ShapeInterpolateConfig, {**FAST, "num_shapes": 3, "include_ends": True})
    result = run_shape_interpolate(config, inputs, _ctx(models))
    assert _groups(result_to_arrays(result)) == [f"mesh_{i}" if i else "mesh" for i in range(5)]
    assert result.metadata["weights"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    centers = [result_to_arrays(result)[f"{g}.v_pos"].mean(0)[0] for g in _groups(result_to_arrays(result))]
    # placements move from the torus (x = 4, half-extent 2.6) to the box (x = -6, half-extent 0.5)
    for w, g in zip(result.metadata["weights"], _groups(result_to_arrays(result))):
        c = (1 - w) * 4.0 + w * -6.0
        size = (1 - w) * 2.6 + w * 0.5
        assert np.abs(result_to_arrays(result)[f"{g}.v_pos"][:, 0] - c).max() <= 1.1 * size + 1e-3
    assert centers[0] > centers[2] > centers[4]
    lat = result.extras["latents"]  # linear interpolation of the two encodings
    torch.testing.assert_close(lat[2], (lat[0] + lat[4]) / 2, atol=1e-5, rtol=0)
    only_between = run_shape_interpolate(parse_config(ShapeInterpolateConfig, {**FAST, "num_shapes": 2}), inputs,
                                         _ctx(models))
    assert only_between.metadata["weights"] == [1 / 3, 2 / 3] and len(_groups(result_to_arrays(only_between))) == 2


def test_no_surface_is_a_clear_error(torus):
    models = ModelCache()
    bundle = models.get(load_michelangelo, "tiny-random", CPU)
    with torch.no_grad():
        bundle.vae.geo_decoder.output_proj.bias.fill_(-1e4)  # empty space everywhere
    config = parse_config(ShapeLDMConfig, {**FAST, "prompt": "a chair"})
    with pytest.raises(MeshError, match=r"sample 0 has no surface: its occupancy is empty everywhere"):
        run_shape_ldm(config, {}, _ctx(models))


def test_cancel_stops_at_the_next_step(models):
    ctx = _ctx(models)
    calls = []

    def on_progress(stage, step, total, losses, eta):
        calls.append((stage, step))
        if stage == "denoise" and step == 2:
            ctx.cancel_event.set()

    ctx.on_progress = on_progress
    config = parse_config(ShapeLDMConfig, {**FAST, "prompt": "a chair", "num_inference_steps": 20})
    with pytest.raises(JobCancelled):
        run_shape_ldm(config, {}, ctx)
    assert max(s for st, s in calls if st == "denoise") <= 3


@pytest.mark.parametrize("pipeline, params, inputs, error, match", [
    ("shape_ldm", {"prompt": "  "}, {}, ParamError, "needs a prompt or an image"),
    ("shape_ldm", {"prompt": "a chair"}, {"image": np.zeros((32, 32, 3), np.uint8)}, ParamError, "not both"),
    ("shape_ldm", {}, {"image": np.zeros((1, 1, 3), np.uint8)}, ValueError, "1×1 pixels; at least 16×16"),
    ("shape_ldm", {}, {"image": np.zeros((32, 32), np.uint8)}, ValueError, r"\(H, W, 3\) RGB"),
    ("shape_ldm", {"prompt": "x"}, {"mesh.v_pos": np.zeros((3, 3), np.float32)}, ParamError, "does not take"),
    ("shape_variations", {}, {"mesh.v_pos": np.eye(3, dtype=np.float32),
                              "mesh.t_pos_idx": np.zeros((0, 3), np.int32)}, MeshError, "has no triangles"),
    ("shape_variations", {}, {"mesh.v_pos": np.eye(3, dtype=np.float32)}, ParamError, "needs both"),
    ("shape_interpolate", {}, _mesh(trimesh.creation.box()), ParamError, "mesh_b"),
])
def test_bad_inputs_are_clear_errors(models, pipeline, params, inputs, error, match):
    spec = PIPELINES[pipeline]
    config = parse_config(spec.config_class, {**FAST, **params})
    with pytest.raises(error, match=match):
        spec.run(config, inputs_from_arrays(pipeline, spec, inputs), _ctx(models))


@pytest.mark.parametrize("params, match", [
    ({"grid_resolution": 100_000}, "grid_resolution = 100000 is above the maximum 512"),
    ({"grid_resolution": 2}, "grid_resolution = 2 is below the minimum 16"),
    ({"num_samples": 0}, "num_samples"), ({"strength": 0.0}, "strength"), ({"preview_resolution": 3}, "below 8"),
    ({"face_budget": 2}, "face_budget"), ({"model": " "}, "model must not be empty"),
])
def test_bad_params_are_clear_errors(params, match):
    config_class = ShapeVariationsConfig if "strength" in params else ShapeLDMConfig
    with pytest.raises(ParamError, match=match):
        parse_config(config_class, {**FAST, **params})


# ---------------------------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------------------------

def test_model_ids_paths_and_folders(tmp_path, models, torus):
    for bad, match in [("nobody/no-such-shape-model", "unknown Michelangelo model 'nobody/no-such-shape-model'"),
                       (str(tmp_path / "missing.ckpt"), "does not exist"),
                       (str(tmp_path), "not a Michelangelo model")]:
        with pytest.raises(ModelNotFoundError, match=match):
            load_michelangelo(bad, CPU)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelNotFoundError, match="could not load .*garbage.ckpt"):
        load_michelangelo(str(garbage), CPU)

    # a folder written by training (our format) loads and generates; a VAE-only folder is refused for generation
    config, vae, denoiser, _ = build_tiny_random(3)
    full = save_checkpoint(tmp_path / "trained", config, {"vae": vae, "denoiser": denoiser})
    bundle = load_michelangelo(str(full), CPU)
    assert bundle.conditions == ("text",) and bundle.denoiser is not None
    torch.testing.assert_close(bundle.vae.state_dict()["post_kl.weight"], vae.state_dict()["post_kl.weight"])
    result = run_shape_ldm(parse_config(ShapeLDMConfig, {**FAST, "model": str(full), "prompt": "a chair"}), {},
                           _ctx(models))
    assert result.metadata["model"] == str(full)
    with pytest.raises(ParamError, match="conditioned on text, not on images"):
        run_shape_ldm(parse_config(ShapeLDMConfig, {**FAST, "model": str(full)}),
                      {"image": np.zeros((32, 32, 3), np.uint8)}, _ctx(models))
    vae_only = save_checkpoint(tmp_path / "vae_only", config, {"vae": vae})
    with pytest.raises(ParamError, match="has no diffusion model"):
        run_shape_ldm(parse_config(ShapeLDMConfig, {**FAST, "model": str(vae_only), "prompt": "a chair"}), {},
                      _ctx(models))
    # ... but it interpolates (strength 0 needs the VAE only)
    box = _mesh(trimesh.creation.box(), "mesh_b")
    out = run_shape_interpolate(parse_config(ShapeInterpolateConfig, {**FAST, "model": str(vae_only), "num_shapes": 1}),
                                {**torus, **box}, _ctx(models))
    assert _groups(result_to_arrays(out)) == ["mesh"]


def test_model_cache_shares_one_lru_between_model_kinds():
    cache = ModelCache(capacity=1)
    a = cache.get(load_michelangelo, "tiny-random", CPU)
    assert cache.get(load_michelangelo, "tiny-random", CPU) is a and cache.loads == 1
    cache.stable_diffusion("tiny-random", CPU)  # evicts the shape model (capacity 1)
    assert cache.get(load_michelangelo, "tiny-random", CPU) is not a and cache.loads == 3


# ---------------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------------

def test_cli_writes_one_glb_with_every_sample(tmp_path):
    out = tmp_path / "shapes.glb"
    cmd = [sys.executable, "-m", "backend", "run", "shape_ldm", "--model", "tiny-random", "--prompt", "a chair",
           "--num-samples", "2", "--num-inference-steps", "2", "--grid-resolution", "20", "--out", str(out),
           "--data-dir", str(tmp_path / "data"), "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(out) in proc.stdout
    scene = trimesh.load(out)
    assert isinstance(scene, trimesh.Scene) and sorted(scene.geometry) == ["mesh", "mesh_1"]
    # one node per sample, laid out side by side along Blender's +X (glTF +X): their boxes do not overlap
    boxes = {}
    for node in scene.graph.nodes_geometry:
        transform, geom = scene.graph[node]
        boxes[geom] = trimesh.transform_points(scene.geometry[geom].vertices, transform)[:, 0]
    assert boxes["mesh"].max() < boxes["mesh_1"].min()


def _cli(capsys, *args) -> tuple[int, str]:
    from backend.cli import main

    code = main(["run", *args])
    return code, capsys.readouterr().err


def test_cli_bad_inputs_are_clear_errors(tmp_path, capsys):
    common = ["--model", "tiny-random", "--out", str(tmp_path / "x.glb"), "--data-dir", str(tmp_path / "data"),
              "--device", "cpu", "--num-inference-steps", "2", "--grid-resolution", "16"]
    not_png = tmp_path / "notes.png"
    not_png.write_text("this is not an image")
    tiny = tmp_path / "tiny.png"
    from PIL import Image

    Image.new("RGB", (1, 1)).save(tiny)
    code, err = _cli(capsys, "shape_ldm", "--image", str(not_png), *common)
    assert code == 2 and "could not read image" in err and "notes.png" in err
    code, err = _cli(capsys, "shape_ldm", "--image", str(tmp_path / "nowhere.png"), *common)
    assert code == 2 and "does not exist" in err
    code, err = _cli(capsys, "shape_ldm", "--image", str(tiny), *common)
    assert code == 2 and "1×1 pixels" in err
    code, err = _cli(capsys, "shape_ldm", *common)
    assert code == 2 and "needs a prompt or an image" in err
    code, err = _cli(capsys, "shape_ldm", "--prompt", "a chair", *common, "--grid-resolution", "5000")
    assert code == 2 and "--grid-resolution = 5000 is above the maximum 512" in err
    code, err = _cli(capsys, "shape_ldm", "--prompt", "a chair", *common, "--model", "nobody/no-such-shape-model")
    assert code == 1 and "unknown Michelangelo model 'nobody/no-such-shape-model'" in err
    empty = tmp_path / "points.ply"
    trimesh.PointCloud(np.random.default_rng(0).random((10, 3))).export(empty)
    code, err = _cli(capsys, "shape_variations", "--mesh", str(empty), *common)
    assert code == 2 and "no triangles" in err
    assert not (tmp_path / "x.glb").exists()


# ---------------------------------------------------------------------------------------------------------------------
# a real backend process
# ---------------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shape_backend")
    srv = start_backend(tmp / "data", tmp / "token")
    yield srv
    srv.stop()


def test_backend_generates_streams_and_keeps_every_sample(server):
    c = WireClient(server)
    assert "shape_ldm" in c.welcome.fields["pipelines"]
    assert c.welcome.fields["pipelines"]["shape_ldm"]["optional_inputs"] == ["image"]
    assert c.welcome.fields["pipelines"]["shape_interpolate"]["inputs"] == ["mesh.v_pos", "mesh.t_pos_idx",
                                                                           "mesh_b.v_pos", "mesh_b.t_pos_idx"]
    c.send("submit", {"pipeline": "shape_ldm", "params": {**FAST, "prompt": "a chair", "num_samples": 2,
                                                          "preview_resolution": 12}, "request_id": "s1"})
    job_id = c.recv_until("accepted").fields["job_id"]
    seen: list = []
    result = c.recv_until("result", job_id, seen=seen)
    assert _groups(result.arrays) == ["mesh", "mesh_1"]
    partials = [m for m in seen if m.type == "partial"]
    assert len(partials) == 1 and _groups(partials[0].arrays) == ["mesh", "mesh_1"]
    assert [m.fields["step"] for m in seen if m.type == "progress" and m.fields["stage"] == "denoise"] == [1, 2, 3]
    # the job store keeps every mesh: get_result returns them all, result.glb has one node per mesh
    c.send("get_result", {"job_id": job_id})
    again = c.recv_until("result", job_id)
    for name, arr in result.arrays.items():
        np.testing.assert_array_equal(again.arrays[name], arr)
    folder = server.data_dir / "jobs" / job_id
    with np.load(folder / "result.npz") as npz:
        assert set(npz.files) == set(result.arrays)
    assert sorted(trimesh.load(folder / "result.glb").geometry) == ["mesh", "mesh_1"]


def test_backend_variations_and_bad_requests_keep_it_serving(server, torus):
    c = WireClient(server)

    def submit(pipeline, params, arrays=None, request_id="r"):
        c.send("submit", {"pipeline": pipeline, "params": {**FAST, **params}, "request_id": request_id}, arrays)

    # refused at submit time, with the request id echoed
    submit("shape_ldm", {"prompt": ""}, request_id="empty")
    err = c.recv_until("error")
    assert err.fields["code"] == "bad_params" and "needs a prompt or an image" in err.fields["message"]
    assert err.fields["request_id"] == "empty"
    submit("shape_ldm", {}, {"image": np.zeros((1, 1, 3), np.uint8)})
    err = c.recv_until("error")
    assert err.fields["code"] == "bad_input" and "1×1 pixels" in err.fields["message"]
    submit("shape_ldm", {"prompt": "a chair", "grid_resolution": 100_000})
    assert "grid_resolution" in c.recv_until("error").fields["message"]
    submit("shape_variations", {}, {"mesh.v_pos": torus["mesh.v_pos"]})
    err = c.recv_until("error")
    assert err.fields["code"] == "bad_params" and "mesh.t_pos_idx" in err.fields["message"]
    flat = dict(torus, **{"mesh.v_pos": np.zeros_like(torus["mesh.v_pos"])})
    submit("shape_variations", {}, flat)
    assert c.recv_until("error").fields["code"] == "bad_mesh"
    with pytest.raises(protocol.ProtocolError, match="t_pos_idx has 0 faces"):  # no faces: refused by the protocol
        submit("shape_variations", {}, {"mesh.v_pos": torus["mesh.v_pos"],
                                        "mesh.t_pos_idx": np.zeros((0, 3), np.int32)})
    # an unknown model fails its job with a clear message
    submit("shape_ldm", {"prompt": "a chair", "model": "nobody/no-such-shape-model"})
    job_id = c.recv_until("accepted").fields["job_id"]
    err = c.recv_until("error", job_id)
    assert err.fields["code"] == "model_not_found" and "no-such-shape-model" in err.fields["message"]

    # ... and the backend still serves: variations of a mesh, the requested number of distinct meshes
    submit("shape_variations", {"num_samples": 3, "strength": 0.7}, torus)
    job_id = c.recv_until("accepted").fields["job_id"]
    result = c.recv_until("result", job_id)
    groups = _groups(result.arrays)
    assert groups == ["mesh", "mesh_1", "mesh_2"]
    meshes = [(result.arrays[f"{g}.v_pos"], result.arrays[f"{g}.t_pos_idx"]) for g in groups]
    for i in range(3):
        for j in range(i + 1, 3):
            assert meshes[i][0].shape != meshes[j][0].shape or not np.array_equal(meshes[i][0], meshes[j][0])
    assert abs(float(meshes[0][0][:, 0].mean()) - 4.0) < 2.9  # where the torus stands
    assert result.fields["metadata"]["strength"] == 0.7
