"""The 1-NNA metric (:mod:`backend.metrics.one_nna`) and ``python -m backend eval 1nna``.

Mechanisms: two sets drawn from one distribution are indistinguishable (1-NNA near 50 %; with 24 + 24 clouds the
leave-one-out accuracy of a chance classifier has a standard deviation of ~7 %, so the bound 75 % is > 3 σ away),
two disjoint families (near-spheres vs near-cubes) are told apart perfectly (100 %), and a collapsed generator (one shape
repeated) is caught (its copies are each other's nearest neighbours: 1-NNA well above 50 %).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import trimesh

from backend.metrics.one_nna import chamfer_distance, emd, evaluate_1nna, load_clouds, one_nna

N_POINTS = 128


def _ellipsoids(n: int, seed: int, low: float = 0.5) -> list[np.ndarray]:
    """Clouds on random axis-aligned ellipsoids (semi-axes uniform in [low, 1])."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        d = rng.normal(size=(N_POINTS, 3))
        out.append(d / np.linalg.norm(d, axis=1, keepdims=True) * rng.uniform(low, 1.0, size=3))
    return out


def _cubes(n: int, seed: int) -> list[np.ndarray]:
    """Clouds on near-cubes (sides uniform in [0.95, 1.05])."""
    rng = np.random.default_rng(seed)
    return [trimesh.sample.sample_surface(trimesh.creation.box(rng.uniform(0.95, 1.05, size=3)), N_POINTS,
                                          seed=int(rng.integers(1000)))[0] for _ in range(n)]


def test_distances_are_the_papers():
    a = np.array([[0.0, 0, 0], [1, 0, 0]])
    b = np.array([[0.0, 0, 0.5], [1, 0, 0.5]])
    assert chamfer_distance(a, b) == pytest.approx(0.25 + 0.25)  # squared L2, mean each way, summed
    assert emd(a, b) == pytest.approx(0.5)
    assert emd(a, b[::-1].copy()) == pytest.approx(0.5)  # the best matching, whatever the order
    assert chamfer_distance(a, a) == 0.0


def test_one_nna_counts_leave_one_out_neighbours():
    # Generated {0, 1}, reference {10, 11} on a line: everyone's nearest neighbour is its own set → 100 %.
    g, r = np.array([0.0, 1.0]), np.array([10.0, 11.0])
    d = lambda x, y: np.abs(x[:, None] - y[None])  # noqa: E731
    assert one_nna(d(g, g), d(g, r), d(r, r))["acc"] == 1.0
    # Interleaved {0, 2} and {1, 3}: every nearest neighbour is from the other set → 0 %.
    g, r = np.array([0.0, 2.0]), np.array([1.1, 3.1])
    assert one_nna(d(g, g), d(g, r), d(r, r))["acc"] == 0.0


@pytest.mark.parametrize("metric", ["cd", "emd"])
def test_same_distribution_is_near_half_and_disjoint_is_all(metric):
    same = evaluate_1nna(_ellipsoids(24, 1), _ellipsoids(24, 2), [metric])[metric]["acc"]
    assert 0.25 < same < 0.75
    disjoint = evaluate_1nna(_ellipsoids(12, 3, low=0.95), _cubes(12, 4), [metric])[metric]["acc"]
    assert disjoint == 1.0


def test_a_collapsed_generator_is_caught():
    reference = _ellipsoids(16, 5)
    mode = _ellipsoids(1, 7)[0]  # one shape of the distribution, generated over and over with tiny noise
    collapsed = [mode + np.random.default_rng(i).normal(0, 1e-3, size=(N_POINTS, 3)) for i in range(16)]
    score = evaluate_1nna(collapsed, reference, ["cd"])["cd"]
    assert score["acc_generated"] == 1.0 and score["acc"] > 0.7


def test_the_eval_command_reads_folders_of_clouds_and_meshes(tmp_path):
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir(), ref.mkdir()
    for i, cloud in enumerate(_ellipsoids(4, 6, low=0.95)):
        np.save(gen / f"g{i}.npy", cloud)
    for i in range(4):
        trimesh.creation.box((1.0, 1.0 + 0.02 * i, 1.0)).export(ref / f"box{i}.obj")
    clouds = load_clouds(ref, 64, seed=0)
    assert len(clouds) == 4 and all(c.shape == (64, 3) and np.abs(c).max() == pytest.approx(1.0) for c in clouds)
    run = subprocess.run([sys.executable, "-m", "backend", "eval", "1nna", "--generated", str(gen), "--reference",
                          str(ref), "--points", "64", "--metric", "both", "-q"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert "1-NNA-CD: 100.00 %" in run.stdout and "1-NNA-EMD: 100.00 %" in run.stdout


@pytest.mark.parametrize("args, match", [
    (["--generated", "{missing}", "--reference", "{ref}"], "is not a folder"),
    (["--generated", "{empty}", "--reference", "{ref}"], "has no point cloud or mesh"),
    (["--generated", "{nan}", "--reference", "{ref}"], "NaN"),
    (["--generated", "{ref}", "--reference", "{ref}", "--points", "500"], "fewer than num_points"),
    (["--generated", "{ref}", "--reference", "{ref}", "--metric", "l1"], "invalid choice"),
])
def test_the_eval_command_says_what_is_wrong(tmp_path, args, match):
    paths = {name: tmp_path / name for name in ("missing", "empty", "nan", "ref")}
    for name in ("empty", "nan", "ref"):
        paths[name].mkdir()
    np.save(paths["ref"] / "a.npy", np.zeros((100, 3)) + np.arange(100)[:, None])
    np.save(paths["nan"] / "a.npy", np.full((100, 3), np.nan))
    argv = [a.format(**paths) for a in args]
    if "--points" not in argv:
        argv += ["--points", "50"]
    run = subprocess.run([sys.executable, "-m", "backend", "eval", "1nna", *argv], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 2 and match in run.stderr and "Traceback" not in run.stderr
