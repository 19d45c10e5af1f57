"""Latent-NeRF with tiny-random Stable Diffusion: sketch placement, streaming, text-only, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from backend.mesh import MeshError
from backend.models import ModelCache
from backend.params import ParamError, parse_config
from backend.pipelines.base import JobContext
from backend.pipelines.latent_nerf import LatentNeRFConfig, run_job

FAST = {"prompt": "a gingerbread house", "model": "tiny-random", "render_size": 32, "num_samples": 32,
        "mesh_resolution": 64, "texture_size": 64, "preview_every": 0, "vae_preview_every": 0,
        "sketch_grid_resolution": 64}


@pytest.fixture(scope="module")
def blockout():
    """Two overlapping primitives (box + cylinder, not unioned), off the origin and scaled: a Blender-style blockout."""
    box = trimesh.creation.box((1.0, 1.0, 1.0))
    cyl = trimesh.creation.cylinder(radius=0.4, height=1.5)
    cyl.apply_translation((0.5, 0.0, 0.3))
    m = trimesh.util.concatenate([box, cyl])
    m.apply_scale(2.0)
    m.apply_translation((3.0, 1.0, 0.5))
    return {"sketch.v_pos": np.asarray(m.vertices, np.float32), "sketch.t_pos_idx": np.asarray(m.faces, np.int32)}


def test_sketch_guided_result_lands_where_the_sketch_stands(blockout):
    partials = []
    ctx = JobContext(device=torch.device("cpu"), models=ModelCache(),
                     on_partial=lambda step, arrays: partials.append((step, arrays)))
    config = parse_config(LatentNeRFConfig, {**FAST, "iterations": 10, "sketch_init_iterations": 100,
                                             "partial_every": 5, "partial_resolution": 32})
    result = run_job(config, blockout, ctx)
    a = result.arrays
    lo, hi = blockout["sketch.v_pos"].min(0), blockout["sketch.v_pos"].max(0)
    rlo, rhi = a["mesh.v_pos"].min(0), a["mesh.v_pos"].max(0)
    size, rsize = hi - lo, rhi - rlo
    print("sketch bbox", lo, hi, "result bbox", rlo, rhi)
    np.testing.assert_array_less(np.abs(rsize / size - 1.0), 0.15)  # same size per axis within 15 %
    np.testing.assert_array_less(np.abs((rlo + rhi) / 2 - (lo + hi) / 2) / size, 0.15)  # same place
    assert a["mesh.v_color"].shape == (len(a["mesh.v_pos"]), 3) and np.isfinite(a["mesh.v_color"]).all()
    assert a["texture"].shape == (64, 64, 3) and a["mesh.uv_idx"].shape == a["mesh.t_pos_idx"].shape
    assert [s for s, _ in partials] == [5]  # the last step's mesh is the result itself
    assert partials[0][1]["mesh.v_pos"].min(0)[0] > lo[0] - 0.5 * size[0]  # partial meshes are in the world frame too
    assert result.metadata["sketch"] is True


def test_text_only_generation_gives_a_mesh():
    config = parse_config(LatentNeRFConfig, {**FAST, "iterations": 3, "encoding": "frequency", "partial_every": 0})
    result = run_job(config, {}, JobContext(device=torch.device("cpu"), models=ModelCache()))
    assert len(result.arrays["mesh.t_pos_idx"]) > 0 and result.metadata["sketch"] is False


def test_bad_sketches_and_params_are_clear_errors(blockout):
    ctx = JobContext(device=torch.device("cpu"), models=ModelCache())
    config = parse_config(LatentNeRFConfig, {**FAST, "iterations": 1})
    v = blockout["sketch.v_pos"].copy()
    v[0] = np.nan
    with pytest.raises(MeshError, match="NaN"):
        run_job(config, {**blockout, "sketch.v_pos": v}, ctx)
    with pytest.raises(MeshError):
        run_job(config, {"sketch.v_pos": np.zeros((0, 3), np.float32),
                         "sketch.t_pos_idx": np.zeros((0, 3), np.int32)}, ctx)
    flat = blockout["sketch.v_pos"].copy()
    flat[:, 2] = 0.0
    with pytest.raises(MeshError, match="inside"):
        run_job(config, {**blockout, "sketch.v_pos": flat}, ctx)
    with pytest.raises(ParamError, match="a sketch needs both"):
        run_job(config, {"sketch.v_pos": blockout["sketch.v_pos"]}, ctx)
    with pytest.raises(ParamError, match="mesh_resolution"):
        parse_config(LatentNeRFConfig, {**FAST, "mesh_resolution": 100_000})
