"""Shared fixtures and markers for the LatentForge test suite.

Markers (registered in ``pytest.ini``): ``gpu`` needs CUDA + nvdiffrast and runs only with ``LATENTFORGE_TEST_GPU=1``;
``weights`` needs real downloaded models and runs only with ``LATENTFORGE_TEST_WEIGHTS=1``.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


ORDER_SEED_ENV = "LATENTFORGE_TEST_ORDER_SEED"
"""Unset or empty: modules run in the order pytest collects them. An integer: the test modules run in an order shuffled
with that seed (the tests inside a module keep their written order, so module fixtures are built once). ``random``: a
fresh seed, printed, to repeat the order with. ``.ci/run`` always shuffles, so a test that passes only after (or before)
another module shows up."""


def _order_seed() -> int | None:
    value = os.environ.get(ORDER_SEED_ENV, "").strip()
    if not value:
        return None
    if value.lower() == "random":
        return random.SystemRandom().randrange(10 ** 6)
    try:
        return int(value)
    except ValueError:
        raise pytest.UsageError(f"{ORDER_SEED_ENV} must be an integer or 'random', got {value!r}") from None


def pytest_configure(config):
    config._latentforge_order_seed = _order_seed()


def _say_order_seed(config) -> None:
    seed = config._latentforge_order_seed
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if seed is not None and reporter is not None:  # also under -q, which hides pytest_report_header lines
        reporter.write_line(f"test modules in shuffled order, seed {seed} (repeat: {ORDER_SEED_ENV}={seed})")


def pytest_collection_modifyitems(config, items):
    gates = {"gpu": "LATENTFORGE_TEST_GPU", "weights": "LATENTFORGE_TEST_WEIGHTS"}
    for item in items:
        for marker, env in gates.items():
            if marker in item.keywords and os.environ.get(env) != "1":
                item.add_marker(pytest.mark.skip(reason=f"needs {marker}: set {env}=1 to run"))

    seed = config._latentforge_order_seed
    if seed is not None:
        modules: dict[str, list] = {}
        for item in items:
            modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
        order = sorted(modules)  # the same seed gives the same order whatever the collection order was
        random.Random(seed).shuffle(order)
        items[:] = [item for name in order for item in modules[name]]
        _say_order_seed(config)


def pytest_terminal_summary(terminalreporter, config):
    _say_order_seed(config)  # again next to the failures


@dataclass
class BackendProcess:
    """A real ``python -m backend serve`` process on loopback, for tests."""

    host: str
    port: int
    token: str
    token_file: Path
    data_dir: Path
    process: subprocess.Popen
    log: list[str] = field(default_factory=list)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)

    def kill(self) -> None:
        """Hard kill (SIGKILL), as a crash would."""
        self.process.kill()
        self.process.wait(10)


def start_backend(data_dir: Path, token_file: Path, token: str = "test-token-0123456789", timeout: float = 60.0,
                  extra_args: tuple[str, ...] = ()) -> BackendProcess:
    """Start ``python -m backend serve`` on a free loopback port and wait for its ``LATENTFORGE_LISTENING`` line."""
    token_file.parent.mkdir(parents=True, exist_ok=True)
    if not token_file.exists():
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
    token = token_file.read_text().strip()
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO_ROOT))
    cmd = [sys.executable, "-m", "backend", "serve", "--host", "127.0.0.1", "--port", "0",
           "--data-dir", str(data_dir), "--token-file", str(token_file), "--device", "cpu", *extra_args]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log: list[str] = []
    ready = threading.Event()
    address: list[tuple[str, int]] = []

    def pump():
        for line in proc.stdout:
            log.append(line.rstrip("\n"))
            if line.startswith("LATENTFORGE_LISTENING") and not ready.is_set():
                _, host, port = line.split()
                address.append((host, int(port)))
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.1):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("backend did not start:\n" + "\n".join(log[-50:]))
    host, port = address[0]
    return BackendProcess(host, port, token, token_file, data_dir, proc, log)


@pytest.fixture
def backend_server(tmp_path):
    """A fresh backend process with its own data dir and token; stopped after the test."""
    server = start_backend(tmp_path / "data", tmp_path / "token")
    yield server
    server.stop()


class WireClient:
    """A minimal blocking protocol client for service tests (the add-on's threaded client is tested separately)."""

    def __init__(self, server: BackendProcess, token: str | None = None, hello: bool = True, timeout: float = 60.0):
        import socket

        from blender_addon.core import protocol

        self.protocol = protocol
        self.sock = socket.create_connection((server.host, server.port), timeout=timeout)
        self.welcome = None
        if hello:
            self.send("hello", {"protocol_version": protocol.PROTOCOL_VERSION, "token": token or server.token,
                                "client": "pytest"})
            self.welcome = self.recv()

    def send(self, msg_type: str, fields: dict | None = None, arrays: dict | None = None) -> None:
        self.protocol.send_message(self.sock, msg_type, fields, arrays)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self):
        return self.protocol.recv_message(self.sock)

    def recv_until(self, msg_type: str, job_id: str | None = None, timeout: float = 120.0, seen: list | None = None):
        """Read messages until one of ``msg_type`` (for ``job_id`` if given); the others go to ``seen``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.recv()
            if seen is not None:
                seen.append(msg)
            if msg.type == msg_type and (job_id is None or msg.fields.get("job_id") == job_id):
                return msg
            if msg.type == "error" and msg_type != "error" and (job_id is None or msg.fields.get("job_id") in (None, job_id)):
                raise AssertionError(f"unexpected error while waiting for {msg_type}: {msg.fields}")
        raise TimeoutError(f"no {msg_type} within {timeout} s")

    def close(self) -> None:
        self.sock.close()


def sphere_arrays(subdivisions: int = 2) -> dict:
    """An icosphere as protocol arrays (mesh.v_pos float32 (N,3), mesh.t_pos_idx int32 (F,3))."""
    import numpy as np
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=subdivisions)
    return {"mesh.v_pos": np.asarray(m.vertices, np.float32), "mesh.t_pos_idx": np.asarray(m.faces, np.int32)}


TINY_PARAMS = {"prompt": "a rusty metal barrel", "model": "tiny-random", "iterations": 3, "texture_size": 64,
               "latent_texture_size": 32, "render_size": 32, "preview_every": 1, "vae_preview_every": 0}


_SUZANNE_SCRIPT = """
import sys
import bpy
import numpy as np
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.mesh.primitive_monkey_add()
mesh = bpy.context.active_object.data
mesh.calc_loop_triangles()
v = np.empty(len(mesh.vertices) * 3, np.float32)
mesh.vertices.foreach_get("co", v)
t = np.empty(len(mesh.loop_triangles) * 3, np.int32)
mesh.loop_triangles.foreach_get("vertices", t)
np.savez(sys.argv[1], v_pos=v.reshape(-1, 3), t_pos_idx=t.reshape(-1, 3))
"""


@pytest.fixture(scope="session")
def suzanne(tmp_path_factory):
    """Blender's Suzanne, triangulated, from the ``bpy`` module in a subprocess (no bpy in the test process):
    ``(v_pos (507, 3) float32, t_pos_idx (968, 3) int32)``, Blender's frame, about 2.7 × 1.7 × 2.0 m (x, y, z). Not
    watertight. Skips when the ``bpy`` module is not installed."""
    import importlib.util

    import numpy as np

    if importlib.util.find_spec("bpy") is None:
        pytest.skip("needs the bpy module (Blender as a module) for Suzanne")
    out = tmp_path_factory.mktemp("suzanne") / "suzanne.npz"
    subprocess.run([sys.executable, "-c", _SUZANNE_SCRIPT, str(out)], check=True, capture_output=True, timeout=120)
    data = np.load(out)
    return data["v_pos"], data["t_pos_idx"]


LION_MICRO_POINTS = 64
"""Points per cloud of the micro LION the LION tests train."""


def lion_micro_config(**changes):
    """The micro LION the LION tests train (seconds on a CPU): the ``tiny`` preset at :data:`LION_MICRO_POINTS`
    points, an eighth of the public widths, ``changes`` on top."""
    import dataclasses

    from backend.lion.config import get_preset

    return dataclasses.replace(get_preset("tiny"), num_points=LION_MICRO_POINTS, first_centers=LION_MICRO_POINTS // 2,
                               width_multiplier=0.125, group_norm_groups=2, **changes)


@pytest.fixture(scope="session")
def lion_shapes(tmp_path_factory):
    """The LION tests' training folder: a sphere (radius 1), a torus (1, 0.35) and a flat box (1.6 × 1.0 × 0.6) as PLY
    files (``sphere.ply``, ``torus.ply``, ``box.ply``)."""
    import trimesh

    root = tmp_path_factory.mktemp("lion_shapes")
    trimesh.creation.icosphere(3, 1.0).export(root / "sphere.ply")
    trimesh.creation.torus(1.0, 0.35).export(root / "torus.ply")
    trimesh.creation.box((1.6, 1.0, 0.6)).export(root / "box.ply")
    return root
