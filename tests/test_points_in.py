"""Point clouds as job inputs: a scan in, LION cleans it (protocol 6's ``points.v_pos`` / ``points.v_color`` of a
``submit``, :class:`backend.pipelines.base.PointCloudInput`, ``run --points``), without weights.

- :func:`backend.pipelines.io.inputs_from_arrays`: every bad cloud is one error naming its group (the result side's
  wording), a cloud and the mesh it stands in for are exactly one of two, the welcome lists the pair.
- ``lion_denoise`` / ``lion_variations`` / ``lion_interpolate`` (``tiny-random``) on a noisy sphere scan standing off
  the origin: the clouds and meshes stand where the scan stands, the scan's own points are what was encoded
  (subsampled, or all of them and repeats), the seed decides which.
- The CLI's ``run lion_denoise --points scan.ply`` end to end; the store keeps the cloud with the job (a restarted
  service runs the queued job from it, ``jobs --export`` writes its result); a real backend takes one over the wire.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh

from backend import cli
from backend.geometry.frames import gltf_to_blender
from backend.geometry.mesh import MeshError, load_point_cloud
from backend.models.cache import ModelCache
from backend.params import ParamError, parse_config
from backend.pipelines import PIPELINES, io
from backend.pipelines.base import JobContext, PipelineInputs
from backend.serving.service import JobService
from conftest import REPO_ROOT, WireClient

CENTRE = np.array([2.0, -1.0, 0.5])
RADIUS = 0.5
FAST = dict(model="tiny-random", num_inference_steps=4, grid_resolution=24)
"""LION settings for 2 CPU cores: tiny-random (128 points), a few DDIM steps, a coarse Poisson grid."""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def noisy_sphere(n: int = 600, seed: int = 0, centre=CENTRE) -> np.ndarray:
    """A scan: ``n`` points on a sphere of radius 0.5 m around ``centre`` (world, metres) with 1 cm of noise,
    (n, 3) float32."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return (d * RADIUS + rng.normal(scale=0.01, size=(n, 3)) + centre).astype(np.float32)


def _ctx() -> JobContext:
    return JobContext(device=torch.device("cpu"), models=ModelCache(2, False))


def _decode(pipeline: str, arrays: dict) -> PipelineInputs:
    return io.inputs_from_arrays(pipeline, PIPELINES[pipeline], arrays)


def _run(pipeline: str, params: dict, arrays: dict):
    spec = PIPELINES[pipeline]
    fast = {k: v for k, v in FAST.items() if k in spec.config_class.__dataclass_fields__}
    return spec.run(parse_config(spec.config_class, {**fast, **params}), _decode(pipeline, arrays), _ctx())


def _box_mesh_arrays(group: str, offset=(0.0, 0.0, 0.0)) -> dict:
    box = trimesh.creation.box((1.0, 0.6, 0.4))
    return {f"{group}.v_pos": np.asarray(box.vertices + np.asarray(offset), np.float32),
            f"{group}.t_pos_idx": np.asarray(box.faces, np.int32)}


# ------------------------------------------------------------------------------------------------------- io checks

def _bad(points) -> dict:
    return {"points.v_pos": points}


GOOD = noisy_sphere(40)


@pytest.mark.parametrize("arrays, error, match", [
    (_bad(np.zeros((0, 3), np.float32)), MeshError, r"point cloud points: points must be \(N, 3\) with N >= 1"),
    (_bad(np.where(np.arange(120).reshape(40, 3) == 7, np.nan, GOOD)), MeshError,
     "point cloud points: coordinates must be finite"),
    (_bad(np.where(np.arange(120).reshape(40, 3) == 7, np.inf, GOOD)), MeshError,
     "point cloud points: coordinates must be finite"),
    (_bad(GOOD * 1e7), MeshError, r"point cloud points: coordinates must be finite and within ±1e\+06 m"),
    (_bad(GOOD.astype(np.int32)), MeshError, "point cloud points: points must be float32 coordinates, got dtype int32"),
    (_bad(GOOD[:, :2]), MeshError, r"point cloud points: points must be \(N, 3\).*\(40, 2\)"),
    (_bad(GOOD.reshape(-1)), MeshError, r"point cloud points: points must be \(N, 3\)"),
    (_bad(np.tile(CENTRE, (10, 1)).astype(np.float32)), MeshError,
     "point cloud points has zero size \\(all 10 points coincide\\)"),
    ({"points.v_pos": GOOD, "points.v_color": np.full((39, 3), 0.5, np.float32)}, MeshError,
     r"point cloud points: colors must be \(40, 3\|4\), got \(39, 3\)"),
    ({"points.v_pos": GOOD, "points.v_color": np.full((40, 3), 1.5, np.float32)}, MeshError,
     r"point cloud points: colors must be finite and within \[0, 1\]"),
    ({"points.v_pos": GOOD, "points.v_color": np.full((40, 3), 128, np.uint8)}, MeshError,
     "point cloud points: colors must be float32 in \\[0, 1\\], got dtype uint8"),
    ({"points.v_color": np.full((40, 3), 0.5, np.float32)}, ParamError,
     "points.v_color was sent without points.v_pos"),
    ({**_box_mesh_arrays("mesh"), "points.v_pos": GOOD}, ParamError,
     "got both an input mesh 'mesh' and an input point cloud 'points' for one role; send one of them"),
    ({}, ParamError, r"needs an input mesh 'mesh' \(arrays mesh.v_pos and mesh.t_pos_idx\) or an input point "
                     r"cloud 'points' \(array points.v_pos\)"),
])
def test_each_bad_input_cloud_is_one_error_naming_its_group(arrays, error, match):
    with pytest.raises(error, match=match):
        _decode("lion_denoise", arrays)


def test_too_many_points_and_the_second_group_are_named(monkeypatch):
    monkeypatch.setattr(io, "MAX_INPUT_POINTS", 30)
    with pytest.raises(MeshError, match="point cloud points has 40 points; the limit is 30"):
        _decode("lion_denoise", {"points.v_pos": GOOD})
    monkeypatch.undo()
    with pytest.raises(MeshError, match="point cloud points_b: coordinates must be finite"):
        _decode("lion_interpolate", {**_box_mesh_arrays("mesh"), "points_b.v_pos": np.full((5, 3), np.nan, np.float32)})
    with pytest.raises(ParamError, match="needs an input mesh 'mesh_b'.* or an input point cloud 'points_b'"):
        _decode("lion_interpolate", {"points.v_pos": GOOD})


def test_pipelines_without_a_cloud_input_refuse_one():
    for name in ("lion_from_blockout", "shape_variations", "latent_paint"):
        with pytest.raises(ParamError, match=r"does not take input array\(s\) \['points.v_pos'\]"):
            _decode(name, {**_box_mesh_arrays("mesh"), "points.v_pos": GOOD})


def test_a_good_cloud_decodes_to_float32_and_back_to_the_same_arrays():
    colors = np.random.default_rng(1).random((40, 4))  # float64: converted, like the coordinates
    inputs = _decode("lion_denoise", {"points.v_pos": GOOD.astype(np.float64), "points.v_color": colors})
    assert inputs.meshes == {} and set(inputs.point_clouds) == {"points"}
    points = inputs.point_clouds["points"]
    assert points.dtype == np.float32 and points.flags.c_contiguous and points.shape == (40, 3)
    np.testing.assert_array_equal(points, GOOD)
    assert inputs.point_colors["points"].dtype == np.float32
    arrays = io.inputs_to_arrays(inputs)
    assert set(arrays) == {"points.v_pos", "points.v_color"}
    again = _decode("lion_denoise", arrays)
    np.testing.assert_array_equal(again.point_clouds["points"], points)


def test_the_welcome_lists_a_cloud_as_the_alternative_of_a_mesh():
    spec = PIPELINES["lion_denoise"]
    assert io.required_input_names(spec) == []
    assert io.one_of_input_names(spec) == [["mesh.v_pos", "points.v_pos"]]
    assert {"mesh.v_pos", "points.v_pos", "points.v_color"} <= set(io.optional_input_names(spec))
    assert io.one_of_input_names(PIPELINES["lion_interpolate"]) == [["mesh.v_pos", "points.v_pos"],
                                                                    ["mesh_b.v_pos", "points_b.v_pos"]]
    assert io.required_input_names(PIPELINES["lion_from_blockout"]) == ["mesh.v_pos", "mesh.t_pos_idx"]
    assert io.one_of_input_names(PIPELINES["lion_from_blockout"]) == []


# ------------------------------------------------------------------------------------------------------ pipelines

def _centre(points: np.ndarray) -> np.ndarray:
    return (points.min(axis=0) + points.max(axis=0)) / 2


def test_a_noisy_sphere_scan_is_denoised_where_it_stands():
    scan = noisy_sphere()
    result = _run("lion_denoise", dict(tau=10, num_samples=2), {"points.v_pos": scan})
    assert len(result.point_clouds) == len(result.meshes) == 2
    assert result.metadata["source"] == "points"
    for cloud, mesh in zip(result.point_clouds, result.meshes):
        assert cloud.points.shape == (128, 3) and np.isfinite(cloud.points).all()
        # random weights make a blob, but it is placed by the scan's own centre and scale: it stands on the scan
        # (centre within a quarter of the radius; the origin is 2.3 m away)
        assert np.linalg.norm(cloud.points.mean(axis=0) - scan.mean(axis=0)) < RADIUS / 4
        assert np.linalg.norm(_centre(mesh.mesh.v_pos) - CENTRE) < RADIUS
    # the encoded points are the scan's own (a subset of its rows: 128 of 600), drawn by the seed
    used = result.extras["input_points"]
    assert used.shape == (128, 3)
    rows = {tuple(p) for p in scan.astype(np.float64)}
    assert all(tuple(p) in rows for p in used) and len({tuple(p) for p in used}) == 128
    other = _run("lion_denoise", dict(tau=10, num_samples=1, seed=1, make_mesh=False), {"points.v_pos": scan})
    assert not np.array_equal(other.extras["input_points"], used)


def test_a_small_cloud_is_used_whole_and_source_does_not_apply():
    scan = noisy_sphere(50)
    runs = [_run("lion_denoise", dict(tau=10, make_mesh=False, source=source), {"points.v_pos": scan})
            for source in ("surface", "vertices")]
    used = runs[0].extras["input_points"]
    assert used.shape == (128, 3)
    assert {tuple(p) for p in used} == {tuple(p) for p in scan.astype(np.float64)}  # every point, some twice
    np.testing.assert_array_equal(runs[1].extras["input_points"], used)
    np.testing.assert_array_equal(runs[1].point_clouds[0].points, runs[0].point_clouds[0].points)


def test_variations_and_interpolation_take_clouds():
    scan = noisy_sphere()
    result = _run("lion_variations", dict(tau=20, num_samples=2, make_mesh=False), {"points.v_pos": scan})
    assert result.metadata["source"] == "points"
    assert all(np.linalg.norm(c.points.mean(axis=0) - scan.mean(axis=0)) < RADIUS / 4 for c in result.point_clouds)
    # A a mesh box, B the scan; B moved by 3 m: the shapes are the same, the last (s = 0, B) moves with B by exactly
    # that, the first (s = 1, A) stays (random weights send the ODE far off, so placement is what can be asserted)
    shift = np.array([3.0, 0.0, 0.0], np.float32)
    runs = [_run("lion_interpolate", dict(num_shapes=3, ode_steps=3, make_mesh=False),
                 {**_box_mesh_arrays("mesh"), "points_b.v_pos": scan + d}) for d in (0 * shift, shift)]
    assert runs[0].metadata["sources"] == ["surface", "points"]
    first, last = [[r.point_clouds[k].points.astype(np.float64) for r in runs] for k in (0, -1)]
    np.testing.assert_allclose(first[1], first[0], atol=1e-5)
    moved = last[1] - last[0]  # float32 rounding of the moved scan, amplified by the random ODE: ~1 cm at most
    assert np.abs(moved.mean(axis=0) - shift).max() < 0.01 and np.abs(moved - shift).max() < 0.1


# ------------------------------------------------------------------------------------------------ CLI and store

def test_point_cloud_files_load_into_the_blender_frame(tmp_path):
    scan = noisy_sphere(30).astype(np.float64)
    trimesh.PointCloud(scan).export(tmp_path / "scan.ply")
    np.savetxt(tmp_path / "scan.xyz", scan)
    (tmp_path / "scan.obj").write_text("".join(f"v {x} {y} {z}\n" for x, y, z in scan))
    np.testing.assert_allclose(load_point_cloud(tmp_path / "scan.ply"), scan, atol=1e-6)  # PLY: Z up as it is
    np.testing.assert_allclose(load_point_cloud(tmp_path / "scan.xyz"), scan, atol=1e-6)
    np.testing.assert_allclose(load_point_cloud(tmp_path / "scan.obj"), gltf_to_blender(scan), atol=1e-6)  # OBJ: Y up
    np.testing.assert_allclose(load_point_cloud(tmp_path / "scan.obj", "Z"), scan, atol=1e-6)
    box = trimesh.creation.box()
    box.export(tmp_path / "box.ply")
    np.testing.assert_allclose(load_point_cloud(tmp_path / "box.ply"), box.vertices, atol=1e-6)  # a mesh: its vertices
    (tmp_path / "empty.xyz").write_text("")
    with pytest.raises(MeshError):
        load_point_cloud(tmp_path / "empty.xyz")
    with pytest.raises(MeshError, match="does not exist"):
        load_point_cloud(tmp_path / "nope.ply")


def test_the_cli_denoises_a_scan_file_and_refuses_two_inputs_or_none(tmp_path, capsys):
    trimesh.PointCloud(noisy_sphere()).export(tmp_path / "scan.ply")
    out = tmp_path / "clean.glb"
    base = [sys.executable, "-m", "backend", "run", "lion_denoise", "--model", "tiny-random", "--tau", "10",
            "--num-inference-steps", "3", "--grid-resolution", "20", "--data-dir", str(tmp_path / "data"),
            "--device", "cpu", "--no-progress", "--points", str(tmp_path / "scan.ply"), "--out", str(out)]
    proc = subprocess.run(base, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scene = trimesh.load(out)
    assert sorted(scene.geometry) == ["mesh", "points"]
    points = gltf_to_blender(np.asarray(scene.geometry["points"].vertices, np.float64))  # GLB is Y up
    assert np.linalg.norm(points.mean(axis=0) - CENTRE) < RADIUS / 4
    trimesh.creation.box().export(tmp_path / "box.obj")
    proc = subprocess.run(base + ["--mesh", str(tmp_path / "box.obj")], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "got both an --mesh and an --points for one role" in proc.stderr
    neither = ["run", "lion_denoise", "--model", "tiny-random", "--data-dir", str(tmp_path / "data"), "--device", "cpu",
               "--out", str(out)]
    assert cli.main(neither) == 2
    assert "lion_denoise needs an --mesh (arrays mesh.v_pos and mesh.t_pos_idx) or an --points" in \
        capsys.readouterr().err
    assert cli.main(neither + ["--points", str(tmp_path / "missing.ply")]) == 2
    assert "--points: point cloud file" in capsys.readouterr().err


def test_the_store_keeps_the_cloud_for_a_restarted_service_and_export(tmp_path):
    scan = noisy_sphere()
    data = tmp_path / "data"
    service = JobService(data, torch.device("cpu"), ModelCache(1, False), start_worker=False)
    job_id, _ = service.submit("lion_denoise", dict(FAST, tau=10), {"points.v_pos": scan})
    del service  # the backend stops with the job queued
    service = JobService(data, torch.device("cpu"), ModelCache(1, False), start_worker=False)
    stored = service.store.load_inputs(job_id)
    assert set(stored) == {"points.v_pos"}
    np.testing.assert_array_equal(stored["points.v_pos"], scan)
    service.run_job(job_id)
    [row] = service.list_jobs()[0]
    assert row["job_id"] == job_id and row["status"] == "done" and row["pipeline"] == "lion_denoise"
    metadata, arrays = service.get_result(job_id)
    assert metadata["source"] == "points"
    assert np.linalg.norm(arrays["points.v_pos"].mean(axis=0) - scan.mean(axis=0)) < RADIUS / 4
    assert cli.main(["jobs", "--data-dir", str(data), "--export", job_id, "--out", str(tmp_path / "x.glb")]) == 0
    assert sorted(trimesh.load(tmp_path / "x.glb").geometry) == ["mesh", "points"]


def test_a_backend_takes_a_cloud_over_the_wire(backend_server):
    c = WireClient(backend_server)
    assert c.welcome.fields["pipelines"]["lion_denoise"]["one_of_inputs"] == [["mesh.v_pos", "points.v_pos"]]
    scan = noisy_sphere()
    flat = scan.copy()
    flat[:] = scan[0]
    c.send("submit", {"pipeline": "lion_denoise", "params": dict(FAST, tau=10, make_mesh=False), "request_id": "bad"},
           {"points.v_pos": flat})
    err = c.recv_until("error")
    assert err.fields["code"] == "bad_mesh" and "point cloud points has zero size" in err.fields["message"]
    c.send("submit", {"pipeline": "lion_denoise", "params": dict(FAST, tau=10, make_mesh=False), "request_id": "ok"},
           {"points.v_pos": scan, "points.v_color": np.full((len(scan), 3), 0.5, np.float32)})
    job_id = c.recv_until("accepted").fields["job_id"]
    result = c.recv_until("result", job_id)
    assert np.linalg.norm(result.arrays["points.v_pos"].mean(axis=0) - scan.mean(axis=0)) < RADIUS / 4
    c.close()
    again = WireClient(backend_server)  # a reconnect: the job is listed and its result sent again
    again.send("list_jobs", {})
    assert job_id in [j["job_id"] for j in again.recv_until("jobs").fields["jobs"]]
    again.send("get_result", {"job_id": job_id})
    np.testing.assert_array_equal(again.recv_until("result", job_id).arrays["points.v_pos"],
                                  result.arrays["points.v_pos"])
    again.close()


def test_the_addon_knows_which_roles_take_a_cloud():
    """The add-on's methods table (used before a backend is connected) names exactly the add-on's pipelines that
    take a point cloud in place of a mesh."""
    from blender_addon.core import tasks

    backend = {name for name in tasks.all_pipelines() if any(p.alternative_to for p in PIPELINES[name].point_inputs)}
    assert set(tasks.point_cloud_pipelines()) == backend == {"lion_denoise", "lion_variations", "lion_interpolate"}
