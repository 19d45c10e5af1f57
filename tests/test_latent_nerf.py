"""Latent-NeRF with tiny-random Stable Diffusion (sketch placement, streaming, text-only, bad input) and with an
oracle denoiser (silhouettes approach a reference shape's)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh

from backend.geometry.cameras import CameraBatch, cameras_from_angles
from backend.guidance.oracle import OracleDenoiser
from backend.guidance.sds import ScoreDistillation, SDSConfig
from backend.geometry.mesh import load_mesh, MeshError
from backend.models.cache import ModelCache
from backend.models.stable_diffusion import build_random_stable_diffusion
from backend.latent_nerf.field import LatentNeRF, NeRFConfig
from backend.params import ParamError, parse_config
from backend.pipelines.base import JobContext
from backend.pipelines import PIPELINES
from backend.pipelines.io import inputs_from_arrays, meshes_to_arrays, result_to_arrays
from backend.pipelines.latent_nerf import LatentNeRFConfig, LatentNeRFPipeline, run
from backend.geometry.render import TorchRasterizer
from conftest import REPO_ROOT

CPU = torch.device("cpu")

FAST = {"prompt": "a gingerbread house", "model": "tiny-random", "render_size": 32, "num_samples": 32,
        "mesh_resolution": 64, "texture_size": 64, "preview_every": 0, "vae_preview_every": 0,
        "sketch_grid_resolution": 64}


def run_job(config, arrays, ctx):
    """``run`` fed with wire arrays, decoded as the service decodes them."""
    return run(config, inputs_from_arrays("latent_nerf", PIPELINES["latent_nerf"], arrays), ctx)


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
                     on_partial=lambda step, meshes: partials.append((step, meshes_to_arrays(meshes))))
    config = parse_config(LatentNeRFConfig, {**FAST, "iterations": 10, "sketch_init_iterations": 100,
                                             "partial_every": 5, "partial_resolution": 32})
    result = run_job(config, blockout, ctx)
    a = result_to_arrays(result)
    _assert_same_bbox(blockout["sketch.v_pos"], a["mesh.v_pos"])
    lo, size = blockout["sketch.v_pos"].min(0), np.ptp(blockout["sketch.v_pos"], axis=0)
    assert a["mesh.v_color"].shape == (len(a["mesh.v_pos"]), 3) and np.isfinite(a["mesh.v_color"]).all()
    assert a["texture"].shape == (64, 64, 3) and a["mesh.uv_idx"].shape == a["mesh.t_pos_idx"].shape
    assert [s for s, _ in partials] == [5]  # the last step's mesh is the result itself
    assert partials[0][1]["mesh.v_pos"].min(0)[0] > lo[0] - 0.5 * size[0]  # partial meshes are in the world frame too
    assert result.metadata["sketch"] is True


def _assert_same_bbox(sketch_v: np.ndarray, result_v: np.ndarray, tolerance: float = 0.15) -> None:
    """Bounding boxes agree: size per axis within ``tolerance``, centres within ``tolerance`` × the sketch's size."""
    lo, hi, rlo, rhi = sketch_v.min(0), sketch_v.max(0), result_v.min(0), result_v.max(0)
    size = hi - lo
    print("sketch bbox", lo, hi, "result bbox", rlo, rhi)
    np.testing.assert_array_less(np.abs((rhi - rlo) / size - 1.0), tolerance)
    np.testing.assert_array_less(np.abs((rlo + rhi) / 2 - (lo + hi) / 2) / size, tolerance)


def test_cli_with_a_sketch_file_writes_a_glb_where_the_sketch_stands(blockout, tmp_path):
    sketch_file = tmp_path / "blockout.ply"  # PLY: Z-up, read as is
    trimesh.Trimesh(blockout["sketch.v_pos"], blockout["sketch.t_pos_idx"], process=False).export(sketch_file)
    out = tmp_path / "house.glb"
    flags = {"--prompt": "a gingerbread house", "--sketch": sketch_file, "--model": "tiny-random", "--iterations": 5,
             "--render-size": 16, "--num-samples": 16, "--sketch-grid-resolution": 64, "--sketch-init-iterations": 100,
             "--mesh-resolution": 64, "--texture-size": 64, "--preview-every": 0, "--vae-preview-every": 0,
             "--partial-every": 0, "--device": "cpu", "--data-dir": tmp_path / "data", "--out": out}
    cmd = [sys.executable, "-m", "backend", "run", "latent_nerf", *[str(x) for kv in flags.items() for x in kv]]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.is_file() and out.with_suffix(".png").is_file()
    _assert_same_bbox(blockout["sketch.v_pos"], load_mesh(out).v_pos)  # the GLB is Y-up; load_mesh maps it back


def test_text_only_generation_gives_a_mesh():
    config = parse_config(LatentNeRFConfig, {**FAST, "iterations": 3, "encoding": "frequency", "partial_every": 0})
    result = run_job(config, {}, JobContext(device=torch.device("cpu"), models=ModelCache()))
    assert len(result_to_arrays(result)["mesh.t_pos_idx"]) > 0 and result.metadata["sketch"] is False


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


def test_oracle_guidance_pulls_the_silhouettes_to_a_reference_shape():
    """Testing without weights: a denoiser that knows each camera's latent render of a reference shape (a flat latent colour on a
    white background) must drive the NeRF's silhouettes (opacity > 0.5) towards the reference's. Tests cameras, ray
    generation, volume rendering, the SDS schedule and the gradient path end to end, with the paper's hash grid and
    learning rate."""
    sd = build_random_stable_diffusion("tiny-random")
    pipe = LatentNeRFPipeline(sd.vae, sd.latent_scaling, CPU)
    # Reference: an elongated, turned, off-centre box (the initial density blob is a centred sphere).
    ref = trimesh.creation.box((1.0, 0.5, 0.35))
    ref.apply_transform(trimesh.transformations.rotation_matrix(0.5, (0.0, 0.0, 1.0)))
    ref.apply_translation((0.1, 0.0, 0.1))
    v_pos_h = torch.cat([torch.tensor(ref.vertices, dtype=torch.float32), torch.ones(len(ref.vertices), 1)], 1)
    tri = torch.tensor(ref.faces, dtype=torch.int32)
    rasterizer = TorchRasterizer(CPU)
    white = pipe.codec.encode_color((1.0, 1.0, 1.0), CPU)
    colour = white + torch.tensor([1.5, -1.5, 1.0, -1.0])

    def silhouette(cameras: CameraBatch, size: int) -> torch.Tensor:  # (B, 1, H, W) {0, 1}, row 0 = top
        pos_clip = torch.einsum("vi,bji->bvj", v_pos_h, cameras.mvp).contiguous()
        rast_out = rasterizer.rasterize(pos_clip, tri, (size, size))
        return (rast_out[..., 3:] > 0).float().flip(1).permute(0, 3, 1, 2)

    def target_fn(cameras: CameraBatch) -> torch.Tensor:
        mask = silhouette(cameras, 32)
        return colour.view(1, 4, 1, 1) * mask + white.view(1, 4, 1, 1) * (1.0 - mask)

    config = parse_config(LatentNeRFConfig, {**FAST, "prompt": "a box", "iterations": 150, "batch_size": 1,
                                             "num_samples": 32, "background": "white", "max_step_percent": 0.5,
                                             "mesh_resolution": 32, "partial_every": 0, "seed": 0})
    sds = ScoreDistillation(sd.scheduler.alphas_cumprod, OracleDenoiser(target_fn, sd.scheduler.alphas_cumprod),
                            SDSConfig(config.guidance_scale, config.min_step_percent, config.max_step_percent))
    # Held-out cameras (not the sampled training ones) around the object.
    eval_cams = cameras_from_angles(torch.tensor([0.0, 20.0, 10.0, 30.0, -10.0, 40.0]),
                                    torch.tensor([0.0, 60.0, 120.0, 180.0, -60.0, -120.0]), 1.25, 50.0)
    reference = silhouette(eval_cams, 32) > 0.5

    def silhouette_iou(nerf: LatentNeRF) -> float:
        with torch.no_grad():
            opacity = pipe.render(nerf, pipe.make_background(config), eval_cams, 32, 64, None)["opacity"]
        occupied = opacity > 0.5
        return float((occupied & reference).sum() / (occupied | reference).sum())

    torch.manual_seed(config.seed)  # the pipeline's own initial field (same seed, same construction)
    before = silhouette_iou(LatentNeRF(NeRFConfig(encoding=config.encoding)))
    after = silhouette_iou(pipe(config, sds).extras["nerf"])
    print(f"oracle Latent-NeRF: silhouette IoU {before:.3f} -> {after:.3f}")
    assert after > before + 0.15
    assert after > 0.7
