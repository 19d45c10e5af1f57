"""Point clouds on the wire, in the job store and in exported GLB files, without any model: a stand-in pipeline
(registered in ``PIPELINES`` for the test only) returns seeded point clouds and a vertex-coloured mesh; the job runs
through the real :class:`~backend.serving.service.JobService`, its result is stored (``result.npz`` + ``result.glb``),
sent as a real ``result`` frame, and exported with ``jobs --export``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import trimesh

from backend import cli
from backend.geometry.mesh import TriMesh
from backend.params import Config, param
from backend.pipelines import PIPELINES
from backend.pipelines.base import PipelineResult, PipelineSpec, ResultMesh, ResultPointCloud
from backend.pipelines.io import (meshes_from_arrays, partial_to_arrays, point_clouds_from_arrays,
                                  point_clouds_to_arrays, result_to_arrays)
from backend.serving.service import JobService
from blender_addon.core import protocol


@dataclass
class PointsConfig(Config):
    """Settings of the stand-in pipeline."""

    prompt: str = param("", doc="ignored")
    num_samples: int = param(2, doc="point clouds to return", low=1, high=8)
    with_mesh: bool = param(True, doc="also return a vertex-coloured mesh")


def _clouds(n: int) -> list[ResultPointCloud]:
    rng = np.random.default_rng(3)
    return [ResultPointCloud(rng.normal(size=(40 + i, 3)).astype(np.float32) * 0.3,
                             rng.random((40 + i, 3)).astype(np.float32) if i % 2 == 0 else None) for i in range(n)]


def _run(config: PointsConfig, inputs, context) -> PipelineResult:
    clouds = _clouds(config.num_samples)
    context.partial(1, [], clouds[:1])
    meshes = []
    if config.with_mesh:
        box = trimesh.creation.box()
        v_color = np.linspace(0, 1, 24, dtype=np.float32).reshape(8, 3)
        meshes = [ResultMesh(TriMesh(box.vertices.astype(np.float32), box.faces.astype(np.int32)), v_color=v_color)]
    return PipelineResult(meshes, {"pipeline": "points_test", "prompt": config.prompt}, point_clouds=clouds)


@pytest.fixture
def points_pipeline(monkeypatch):
    monkeypatch.setitem(PIPELINES, "points_test", PipelineSpec(PointsConfig, _run, "test: point clouds"))


def test_point_clouds_become_wire_arrays_and_back():
    clouds = _clouds(3)
    arrays = point_clouds_to_arrays(clouds)
    assert sorted(arrays) == ["points.v_color", "points.v_pos", "points_1.v_pos", "points_2.v_color",
                              "points_2.v_pos"]
    back = point_clouds_from_arrays(arrays)
    assert len(back) == 3 and back[1].colors is None
    for a, b in zip(clouds, back):
        np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(back[2].colors, clouds[2].colors)
    assert protocol.decode_frame(protocol.encode_message("partial", {"job_id": "j", "step": 0},
                                                         partial_to_arrays([], clouds[:1]))).arrays


@pytest.mark.parametrize("cloud, words", [
    (ResultPointCloud(np.zeros((0, 3), np.float32)), "points must be (N, 3) with N >= 1"),
    (ResultPointCloud(np.full((2, 3), 2e6, np.float32)), "within ±1e+06 m"),
    (ResultPointCloud(np.array([[0, np.nan, 0]], np.float32)), "finite"),
    (ResultPointCloud(np.zeros((2, 3), np.float32), np.full((2, 3), 1.5, np.float32)), "colors must be finite and "
                                                                                       "within [0, 1]"),
    (ResultPointCloud(np.zeros((2, 3), np.float32), np.zeros((3, 3), np.float32)), "colors must be (2, 3|4)"),
])
def test_a_bad_point_cloud_is_one_clear_error(cloud, words):
    with pytest.raises(ValueError, match="point cloud points_1") as err:
        point_clouds_to_arrays([_clouds(1)[0], cloud])
    assert words in str(err.value)
    with pytest.raises(ValueError, match="neither a mesh nor a point cloud"):
        result_to_arrays(PipelineResult([], {}))


def test_a_job_with_points_round_trips_through_the_store_the_wire_and_export(points_pipeline, tmp_path):
    service = JobService(tmp_path / "data", torch.device("cpu"), start_worker=False)
    events = []
    job_id, _ = service.submit("points_test", {"prompt": "dots", "num_samples": 3}, {},
                               listener=lambda t, f, a: events.append((t, f, a)))
    service.run_job(job_id)
    kinds = [t for t, _, _ in events]
    assert "result" in kinds, events[-1]
    partial = next(a for t, _, a in events if t == "partial")
    assert protocol.point_groups(partial) == ["points"] and protocol.mesh_groups(partial) == []
    result = next(a for t, _, a in events if t == "result")
    frame = protocol.decode_frame(protocol.encode_message("result", {"job_id": job_id, "metadata": {}}, result))
    assert protocol.point_groups(frame.arrays) == ["points", "points_1", "points_2"]
    assert protocol.mesh_groups(frame.arrays) == ["mesh"] and "mesh.v_color" in frame.arrays

    stored = service.store.load_result(job_id)
    clouds = point_clouds_from_arrays(stored)
    for a, b in zip(_clouds(3), clouds):
        np.testing.assert_array_equal(a.points, b.points)
    assert clouds[1].colors is None and meshes_from_arrays(stored)[0].v_color is not None

    out = tmp_path / "export" / "points.glb"
    assert cli.main(["jobs", "--data-dir", str(tmp_path / "data"), "--export", job_id, "--out", str(out)]) == 0
    scene = trimesh.load(out)
    assert sorted(scene.geometry) == ["mesh", "points", "points_1", "points_2"]
    cloud = scene.geometry["points"]
    assert isinstance(cloud, trimesh.PointCloud) and cloud.vertices.shape == (40, 3)
    expected = np.rint(np.clip(_clouds(1)[0].colors, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(cloud.colors)[:, :3], expected)
    v_color = np.linspace(0, 1, 24, dtype=np.float32).reshape(8, 3)
    np.testing.assert_array_equal(np.asarray(scene.geometry["mesh"].visual.vertex_colors)[:, :3],
                                  np.rint(v_color * 255).astype(np.uint8))
    # side by side: each node's box starts after the previous one's (Blender +X = glTF +X)
    lefts = [scene.graph[name][0][0, 3] + scene.geometry[name].vertices[:, 0].min()
             for name in ("mesh", "points", "points_1", "points_2")]
    assert all(b > a for a, b in zip(lefts, lefts[1:])), lefts


def test_a_points_only_result_is_stored_and_exported(points_pipeline, tmp_path):
    service = JobService(tmp_path / "data", torch.device("cpu"), start_worker=False)
    job_id, _ = service.submit("points_test", {"num_samples": 1, "with_mesh": False}, {})
    service.run_job(job_id)
    assert service.store.get(job_id)["status"] == "done"
    scene = trimesh.load(service.store.job_dir(job_id) / "result.glb")
    assert list(scene.geometry) == ["points"]
