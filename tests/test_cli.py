"""The command line as a new user meets it: progress that reads well in a file, ETAs from the pipeline's own clock,
and one-line errors that name the flag the user typed (no traceback, exit 2)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import trimesh

from backend import cli
from backend.cli_progress import ProgressReporter
from backend.models.cache import ModelCache
from backend.params import parse_config
from backend.pipelines import PIPELINES
from backend.pipelines.base import JobContext
from backend.pipelines.io import inputs_from_arrays
from backend.pipelines.latent_paint import LatentPaintConfig, run
from conftest import REPO_ROOT


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_progress_in_a_file_is_a_few_plain_lines_per_stage():
    out, clock = io.StringIO(), FakeClock()
    reporter = ProgressReporter(out, clock=clock)
    assert not reporter.live  # a StringIO is no terminal
    for stage, total in (("fit_sketch", 200), ("optimize", 5000)):
        for step in range(1, total + 1):
            clock.t += 0.05
            reporter.update(stage, step, total, {"sds": 1.5, "shape": None}, eta_s=(total - step) * 0.05)
    reporter.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert 20 <= len(lines) <= 60, len(lines)  # ~every 5 % per stage, not one per step
    assert lines[0].startswith("fit_sketch 1/200") and lines[-1].startswith("optimize 5000/5000 (100%) eta 0s")
    assert any(line.startswith("optimize 250/5000 (5%) eta 3m 58s sds=1.5") for line in lines), lines[:30]
    assert all("shape=" not in line for line in lines)  # unknown losses are left out


def test_a_slow_stage_still_writes_a_line_every_interval_and_disabled_writes_nothing():
    out, clock = io.StringIO(), FakeClock()
    reporter = ProgressReporter(out, line_interval_s=30.0, clock=clock)
    for step in range(1, 41):  # 40 steps of 10 s: 5 % of the steps = 2 steps, but also every 30 s
        clock.t += 10.0
        reporter.update("optimize", step, 10_000, {}, None)
    assert len(out.getvalue().splitlines()) == 14  # the first step, then one line per 30 s
    silent = io.StringIO()
    off = ProgressReporter(silent, enabled=False)
    off.update("optimize", 1, 10, {}, 1.0)
    assert silent.getvalue() == ""


def test_the_eta_is_the_stage_s_own_and_restarts_with_each_stage(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("backend.pipelines.base.time.monotonic", clock)
    events = []
    ctx = JobContext(device=torch.device("cpu"), models=None, on_progress=lambda *e: events.append(e))
    clock.t = 100.0  # model loading took 100 s: it must not count
    for step in range(0, 11):
        ctx.progress("optimize", step, 10)
        clock.t += 2.0
    assert events[0][4] is None and events[1][4] == pytest.approx(2.0 * 9)  # 2 s per step, 9 steps left
    clock.t += 500.0
    ctx.progress("decode", 0, 4)
    clock.t += 1.0
    ctx.progress("decode", 1, 4)
    assert events[-2][4] is None and events[-1][4] == pytest.approx(3.0)


def test_a_real_run_writes_plain_progress_lines_with_the_stage_s_eta():
    """A real (tiny-random) Latent-Paint run through the reporter into a file-like stream: a line per 5 % of the
    optimisation, an ETA from the second line on, no carriage returns. (The ETA's arithmetic is checked with a fake
    clock above; wall-clock accuracy is not asserted, it depends on the machine's load.)"""
    mesh = trimesh.creation.icosphere(subdivisions=2)
    arrays = {"mesh.v_pos": mesh.vertices.astype(np.float32), "mesh.t_pos_idx": mesh.faces.astype(np.int32)}
    config = parse_config(LatentPaintConfig, {"prompt": "a ball", "model": "tiny-random", "iterations": 40,
                                              "texture_size": 64, "preview_every": 0, "vae_preview_every": 0})
    out = io.StringIO()
    reporter = ProgressReporter(out)
    ctx = JobContext(device=torch.device("cpu"), models=ModelCache(), on_progress=reporter.update)
    run(config, inputs_from_arrays("latent_paint", PIPELINES["latent_paint"], arrays), ctx)
    optimize = [line for line in out.getvalue().splitlines() if line.startswith("optimize ")]
    assert "\r" not in out.getvalue()
    assert [line.split()[1] for line in optimize] == ["1/40"] + [f"{s}/40" for s in range(2, 41, 2)]
    eta = r"eta (?:\d+s|\d+m \d\ds|\d+h \d\dm) sds="  # format_duration's forms: a loaded machine takes minutes
    assert "eta ?" in optimize[0] and all(re.search(eta, line) for line in optimize[1:]), optimize


def test_the_eta_after_a_tenth_of_the_steps_is_within_half_of_the_real_remaining_time():
    """Wall clock: a tiny-random Latent-Paint run of 300 steps; the ETA reported at step 30 is compared with the time
    the remaining steps really took (within 50 %, the issue's bound). The estimate assumes the machine keeps its
    speed; a load spike from outside the test breaks that assumption, so a miss is retried once before it fails
    (measured on a quiet 2-core machine: within 3 % at 10 %, 25 % and 50 % of a 1,000-step run)."""
    mesh = trimesh.creation.icosphere(subdivisions=2)
    arrays = {"mesh.v_pos": mesh.vertices.astype(np.float32), "mesh.t_pos_idx": mesh.faces.astype(np.int32)}
    inputs = inputs_from_arrays("latent_paint", PIPELINES["latent_paint"], arrays)
    config = parse_config(LatentPaintConfig, {"prompt": "a ball", "model": "tiny-random", "iterations": 300,
                                              "texture_size": 64, "preview_every": 0, "vae_preview_every": 0})
    models = ModelCache()
    ratios = []
    for _attempt in range(2):
        reports: list[tuple[float, int, float | None]] = []

        def on_progress(stage, step, total, losses, eta):
            if stage == "optimize":
                reports.append((time.monotonic(), step, eta))

        run(config, inputs, JobContext(device=torch.device("cpu"), models=models, on_progress=on_progress))
        t_end = reports[-1][0]
        t_tenth, step, eta = next(r for r in reports if r[1] >= 30)
        assert step == 30 and eta is not None and eta > 0
        ratios.append(eta / (t_end - t_tenth))
        if 0.5 <= ratios[-1] <= 1.5:
            return
    pytest.fail(f"ETA / real remaining time at 10 % = {ratios} (twice outside [0.5, 1.5])")


def _cli(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    env = {"LATENTFORGE_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "backend", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.fixture(scope="module")
def ball(tmp_path_factory):
    path = tmp_path_factory.mktemp("mesh") / "ball.obj"
    trimesh.creation.icosphere(subdivisions=1).export(path)
    return path


BAD = [  # (args, words the one error line must hold)
    (["serve", "--port", "99999"], ["--port", "0 to 65535"]),
    (["serve", "--max-payload-mb", "-1"], ["--max-payload-mb", "at least 1"]),
    (["serve", "--keep-models", "0"], ["--keep-models", "at least 1"]),
    (["jobs", "--limit", "0"], ["--limit", "at least 1"]),
    (["run", "shape_ldm", "--prompt", "x", "--out", "{tmp}/"], ["--out", "folder"]),
    (["run", "shape_ldm", "--prompt", "x", "--out", "{tmp}/x.obj"], ["--out", ".glb"]),
    (["run", "shape_ldm", "--model", "tiny-random", "--prompt", "x", "--grid-resolution", "9999", "--out",
      "{tmp}/x.glb"], ["--grid-resolution", "512"]),
    (["run", "latent_paint", "--mesh", "{ball}", "--model", "tiny-random", "--prompt", "x", "--texture-size", "9",
      "--out", "{tmp}/x.glb"], ["--texture-size", "64"]),
    (["run", "latent_paint", "--mesh", "{tmp}/missing.obj", "--prompt", "x", "--out", "{tmp}/x.glb"],
     ["missing.obj", "does not exist"]),
    (["run", "latent_paint", "--prompt", "x"], ["--mesh", "--out", "required"]),
    (["run", "shape_ldm", "--model", "tiny-random", "--out", "{tmp}/x.glb"], ["a prompt or an image (--image)"]),
    (["run", "shape_ldm", "--model", "tiny-random", "--prompt", "x", "--radius-range", "2", "1", "--out",
      "{tmp}/x.glb"], ["unrecognized", "--radius-range"]),
]


@pytest.mark.parametrize("args, words", BAD, ids=[" ".join(a[:3]) + " " + a[-2] for a, _ in BAD])
def test_every_bad_invocation_is_one_line_naming_the_flag(args, words, tmp_path, ball):
    args = [a.format(tmp=tmp_path, ball=ball) for a in args]
    proc = _cli(args, tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not re.search(r"\b[a-z]+_[a-z_]+ = ", lines[0]), lines[0]  # no config field names, only flags


def test_an_offline_download_is_one_line(tmp_path):
    proc = _cli(["download", "text-ASLDM-256"], tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: could not download 'text-ASLDM-256'")


def test_download_routes_each_model_family_to_its_fetcher(monkeypatch, capsys, tmp_path):
    """The released LION models and CLIP-Mesh's prior are download ids beside the others (fetchers replaced: no
    network here)."""
    calls = []
    for name in ("download_lion", "download_prior", "download_point_e", "download_stable_diffusion"):
        monkeypatch.setattr(cli, name, lambda model, name=name: calls.append((name, model)) or tmp_path / model)
    for model in ("chair", "NasirKhalid24/Dalle2-Diffusion-Prior", "base40M", "some/sd-model"):
        assert cli.main(["download", model]) == 0
    assert [c[0] for c in calls] == ["download_lion", "download_prior", "download_point_e",
                                     "download_stable_diffusion"]
    assert capsys.readouterr().out.split()[0] == str(tmp_path / "chair")


def test_help_shows_each_flag_s_default_range_and_choices():
    parser = cli.build_parser()
    text = parser._subparsers._group_actions[0].choices["run"]._subparsers._group_actions[0].choices[
        "latent_paint"].format_help()
    text = " ".join(text.split())
    assert "--texture-size TEXTURE_SIZE" in text and "(default: 1024; range [64, 8192])" in text
    assert "one of sds, sqrt_alpha, uniform" in text
    assert "its texture is also written beside it as .png" in text


def test_one_sample_glb_names_its_node_like_several_do(tmp_path):
    from backend.geometry.mesh import TriMesh, save_glb

    box = trimesh.creation.box()
    path = save_glb(tmp_path / "one.glb", TriMesh(box.vertices.astype(np.float32), box.faces.astype(np.int32)))
    assert list(trimesh.load(path).geometry) == ["mesh"]


def test_the_jobs_listing_lines_up_whatever_the_names():
    rows = [{"job_id": "a" * 12, "created": 0.0, "started": 1.0, "finished": 3700.0, "pipeline": "shape_interpolate",
             "status": "cancelled", "error": "", "params": {"prompt": "a chair\nwith arms"}},
            {"job_id": "b" * 12, "created": 0.0, "started": None, "finished": None, "pipeline": "latent_nerf",
             "status": "queued", "error": "", "params": {}},
            {"job_id": "c" * 12, "created": 0.0, "started": 1.0, "finished": 43.0, "pipeline": "x" * 30,
             "status": "failed", "error": "boom", "params": {"prompt": "p"}, "owner": "alice"}]
    lines = cli._job_table(rows)
    assert len(lines) == 4 and lines[0].startswith("job")
    header = lines[0]
    for line, row, took in zip(lines[1:], rows, ["1h 01m", "-", "42s"]):
        assert line.index(row["pipeline"]) == header.index("pipeline"), (line, header)
        assert line.index(row.get("owner", "admin"), header.index("owner")) == header.index("owner"), (line, header)
        assert line.index(row["status"], header.index("status")) == header.index("status"), (line, header)
        assert line[:header.index("prompt / error")].rstrip().endswith(took), (line, header)  # right-aligned
    assert lines[1].endswith("a chair with arms") and lines[3].endswith("boom")
