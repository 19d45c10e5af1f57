"""Tests of the add-on's bpy-free core: the socket client (against an in-test fake server that speaks the protocol),
the local-backend launcher (against a fake ``backend`` package) and the array helpers of ``core/arrays.py``."""

from __future__ import annotations

import json
import queue
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from blender_addon.core import arrays as lf_arrays
from blender_addon.core import protocol
from blender_addon.core.backend_process import LocalBackend
from blender_addon.core.client import EVENT_CONNECTED, EVENT_DISCONNECTED, EVENT_ERROR, BackendClient
from conftest import REPO_ROOT

TOKEN = "secret-token-for-tests"
WELCOME = {"protocol_version": protocol.PROTOCOL_VERSION, "server_version": "fake-1", "device": "cpu",
           "pipelines": {"latent_paint": {}}, "default_model": "m", "models": ["m", "tiny-random"],
           "identity": "admin", "role": "admin"}


# ------------------------------------------------------------------------------------------------ fake server

class FakeServer:
    """A loopback server thread: each accepted connection runs ``handler(sock, index, server)``.

    ``received`` collects ``(connection index, Message)`` pairs that handlers record.
    """

    def __init__(self, handler):
        self.handler = handler
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.received: queue.Queue = queue.Queue()
        self.n_connections = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept_thread = threading.Thread(target=self._accept, daemon=True)
        self._accept_thread.start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            index = self.n_connections
            self.n_connections += 1
            t = threading.Thread(target=self._serve, args=(conn, index), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn, index):
        try:
            conn.settimeout(10)
            self.handler(conn, index, self)
        except (OSError, protocol.ConnectionClosed, protocol.ProtocolError):
            pass
        finally:
            conn.close()

    def recv(self, conn, index):
        msg = protocol.recv_message(conn, direction=protocol.CLIENT_TO_SERVER)
        self.received.put((index, msg))
        return msg

    def handshake(self, conn, index):
        hello = self.recv(conn, index)
        assert hello.type == "hello"
        protocol.send_message(conn, "welcome", WELCOME)
        return hello

    def close(self):
        self._stop.set()
        self._accept_thread.join(2)
        self.sock.close()


@pytest.fixture
def make_server():
    servers = []

    def make(handler):
        server = FakeServer(handler)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def make_client():
    clients = []

    def make(port, **kwargs):
        kwargs.setdefault("backoff_initial_s", 0.1)
        kwargs.setdefault("backoff_max_s", 0.2)
        client = BackendClient("127.0.0.1", port, kwargs.pop("token", TOKEN), "pytest", **kwargs)
        clients.append(client)
        client.start()
        return client

    yield make
    for client in clients:
        client.close()


def next_event(client, timeout=10.0, skip=()):
    """The next event not of a type in ``skip``; fails on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = client.wait_event(deadline - time.monotonic())
        if msg is not None and msg.type not in skip:
            return msg
    pytest.fail(f"no event within {timeout} s")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------- client

def test_core_imports_without_bpy_or_torch():
    """The backend imports blender_addon.core.protocol, which runs blender_addon/__init__.py: no bpy there."""
    code = ("import sys, blender_addon, blender_addon.core.protocol, blender_addon.core.client, "
            "blender_addon.core.backend_process, blender_addon.core.arrays; "
            "bad = [m for m in ('bpy', 'torch') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)


def test_client_rejects_bad_arguments():
    with pytest.raises(ValueError, match="port"):
        BackendClient("127.0.0.1", 0, TOKEN)
    with pytest.raises(ValueError, match="token"):
        BackendClient("127.0.0.1", 9876, "")
    with pytest.raises(ValueError, match="backoff"):
        BackendClient("127.0.0.1", 9876, TOKEN, backoff_initial_s=2.0, backoff_max_s=1.0)


def test_handshake_submit_and_streamed_replies(make_server, make_client):
    v_pos = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    t_pos_idx = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 1]], dtype=np.int32)
    texture = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)

    def handler(conn, index, server):
        server.handshake(conn, index)
        submit = server.recv(conn, index)
        job = {"job_id": "job-1"}
        protocol.send_message(conn, "accepted", {**job, "request_id": submit.fields["request_id"], "queue_position": 0})
        protocol.send_message(conn, "progress", {**job, "stage": "sds", "step": 1, "total": 3, "losses": {"sds": 0.5},
                                                 "eta_s": 2.0})
        # The result echoes the geometry with uvs, scaled by 2 so that it differs from what was sent.
        uv = v_pos[:, :2] * 0.5
        protocol.send_message(conn, "result", {**job, "metadata": {"seed": 7}}, {
            "mesh.v_pos": submit.arrays["mesh.v_pos"] * 2, "mesh.t_pos_idx": submit.arrays["mesh.t_pos_idx"],
            "mesh.uv": uv, "mesh.uv_idx": submit.arrays["mesh.t_pos_idx"], "texture": texture})
        server.recv(conn, index)  # wait for the client to close

    server = make_server(handler)
    client = make_client(server.port)
    connected = next_event(client)
    assert connected.type == EVENT_CONNECTED
    assert connected.fields["device"] == "cpu" and connected.fields["port"] == server.port
    assert client.connected and client.welcome["server_version"] == "fake-1"

    request_id = client.submit("latent_paint", {"prompt": "a red apple", "seed": 7},
                               {"mesh.v_pos": v_pos, "mesh.t_pos_idx": t_pos_idx})
    accepted, progress, result = next_event(client), next_event(client), next_event(client)
    assert (accepted.type, accepted.fields["request_id"], accepted.fields["job_id"]) == ("accepted", request_id,
                                                                                       "job-1")
    assert progress.type == "progress" and progress.fields["step"] == 1 and progress.fields["eta_s"] == 2.0
    assert result.type == "result" and result.fields["metadata"] == {"seed": 7}
    np.testing.assert_array_equal(result.arrays["mesh.v_pos"], v_pos * 2)
    np.testing.assert_array_equal(result.arrays["texture"], texture)

    _, hello = server.received.get(timeout=5)
    assert hello.fields == {"protocol_version": protocol.PROTOCOL_VERSION, "token": TOKEN, "client": "pytest"}
    _, submit = server.received.get(timeout=5)
    assert submit.fields == {"pipeline": "latent_paint", "params": {"prompt": "a red apple", "seed": 7},
                             "request_id": request_id}
    np.testing.assert_array_equal(submit.arrays["mesh.v_pos"], v_pos)
    np.testing.assert_array_equal(submit.arrays["mesh.t_pos_idx"], t_pos_idx)


def test_reconnects_and_sends_what_was_queued_while_down(make_server, make_client):
    def handler(conn, index, server):
        server.handshake(conn, index)
        if index == 0:
            return  # drop the first connection right after the handshake
        server.recv(conn, index)
        protocol.send_message(conn, "pong", {"nonce": "second"})
        server.recv(conn, index)

    server = make_server(handler)
    client = make_client(server.port, backoff_initial_s=0.3, backoff_max_s=0.3)
    assert next_event(client).type == EVENT_CONNECTED
    dropped = next_event(client)
    assert dropped.type == EVENT_DISCONNECTED
    assert dropped.fields["will_retry"] is True and dropped.fields["retry_in_s"] == pytest.approx(0.3)
    assert not client.connected
    client.ping("queued-while-down")  # must go out on the next connection
    assert next_event(client).type == EVENT_CONNECTED
    pong = next_event(client)
    assert (pong.type, pong.fields) == ("pong", {"nonce": "second"})
    messages = [server.received.get(timeout=5) for _ in range(3)]
    assert [(i, m.type) for i, m in messages] == [(0, "hello"), (1, "hello"), (1, "ping")]
    assert messages[2][1].fields == {"nonce": "queued-while-down"}


def test_auth_failure_is_reported_and_not_retried(make_server, make_client):
    def handler(conn, index, server):
        server.recv(conn, index)
        protocol.send_message(conn, "error", {"code": "auth_failed", "message": "wrong token"})

    server = make_server(handler)
    client = make_client(server.port, token="wrong")
    err = next_event(client)
    assert err.type == EVENT_ERROR and err.fields["will_retry"] is False
    assert "auth_failed" in err.fields["message"] and "wrong token" in err.fields["message"]
    time.sleep(0.5)  # 5x the backoff: a retry would have happened by now
    assert server.n_connections == 1
    assert not client.running


def test_unreachable_server_never_blocks_the_caller(make_client):
    port = free_port()
    t0 = time.perf_counter()
    client = make_client(port)
    client.submit("latent_paint", {"prompt": "x"}, {})
    client.cancel("job-1")
    client.list_jobs()
    assert time.perf_counter() - t0 < 0.2
    err = next_event(client)
    assert err.type == EVENT_ERROR and err.fields["will_retry"] is True
    assert f"127.0.0.1:{port}" in err.fields["message"]
    assert err.fields["retry_in_s"] == pytest.approx(0.1)
    second = next_event(client)  # backoff doubles, capped at backoff_max_s
    assert second.type == EVENT_ERROR and second.fields["retry_in_s"] == pytest.approx(0.2)
    t0 = time.perf_counter()
    client.close()
    assert time.perf_counter() - t0 < 1.0 and not client.running
    with pytest.raises(RuntimeError, match="closed"):
        client.ping()


def test_invalid_message_raises_on_the_caller_and_is_not_sent(make_server, make_client):
    def handler(conn, index, server):
        server.handshake(conn, index)
        server.recv(conn, index)
        server.recv(conn, index)

    server = make_server(handler)
    client = make_client(server.port)
    assert next_event(client).type == EVENT_CONNECTED
    bad_v_pos = np.array([[0, 0, 0], [np.nan, 0, 0], [0, 1, 0]], dtype=np.float32)
    with pytest.raises(protocol.ProtocolError) as info:
        client.submit("latent_paint", {"prompt": "x"},
                      {"mesh.v_pos": bad_v_pos, "mesh.t_pos_idx": np.array([[0, 1, 2]], dtype=np.int32)})
    assert info.value.code == "non_finite"
    client.ping("after")
    _, hello = server.received.get(timeout=5)
    _, first = server.received.get(timeout=5)
    assert (hello.type, first.type, first.fields) == ("hello", "ping", {"nonce": "after"})


def test_invalid_server_frame_is_reported_and_connection_kept(make_server, make_client):
    def handler(conn, index, server):
        server.handshake(conn, index)
        header = json.dumps({"type": "no_such_type", "v": protocol.PROTOCOL_VERSION, "arrays": []}).encode()
        conn.sendall(protocol.PREFIX.pack(protocol.MAGIC, len(header), 0) + header)
        protocol.send_message(conn, "pong", {"nonce": "still-here"})
        server.recv(conn, index)

    server = make_server(handler)
    client = make_client(server.port)
    assert next_event(client).type == EVENT_CONNECTED
    err = next_event(client)
    assert err.type == EVENT_ERROR and "unknown_type" in err.fields["message"]
    pong = next_event(client)
    assert pong.fields == {"nonce": "still-here"} and client.connected


def test_close_stops_threads_and_closes_the_connection(make_server, make_client):
    closed = threading.Event()

    def handler(conn, index, server):
        server.handshake(conn, index)
        try:
            protocol.recv_message(conn)
        except protocol.ConnectionClosed:
            closed.set()

    server = make_server(handler)
    client = make_client(server.port)
    assert next_event(client).type == EVENT_CONNECTED
    client.close()
    assert closed.wait(5), "the server did not see the connection close"
    assert not client.running
    assert not [t for t in threading.enumerate() if t.name.startswith("latentforge-") and str(server.port) in t.name]


# ----------------------------------------------------------------------------------------- backend process

FAKE_BACKEND_MAIN = textwrap.dedent("""
    import json, os, sys, time
    args = sys.argv[1:]
    with open(os.environ["FAKE_BACKEND_OUT"], "w") as f:
        json.dump({"argv": args, "cwd": os.getcwd()}, f)
    print("loading models...", flush=True)
    if "--fake-fail" in args:
        print("error: port 1234 already in use", flush=True)
        sys.exit(3)
    print("LATENTFORGE_LISTENING 127.0.0.1 5555", flush=True)
    time.sleep(60)
""")


@pytest.fixture
def fake_repo(tmp_path, monkeypatch):
    (tmp_path / "repo" / "backend").mkdir(parents=True)
    (tmp_path / "repo" / "backend" / "__init__.py").write_text("")
    (tmp_path / "repo" / "backend" / "__main__.py").write_text(FAKE_BACKEND_MAIN)
    monkeypatch.setenv("FAKE_BACKEND_OUT", str(tmp_path / "out.json"))
    return tmp_path / "repo"


def test_local_backend_start_listening_and_stop(fake_repo, tmp_path):
    backend = LocalBackend(sys.executable, fake_repo, "127.0.0.1", 0, tmp_path / "token",
                           data_dir=tmp_path / "data", device="cpu")
    assert backend.state == "not_started"
    backend.start()
    try:
        assert backend.wait_listening(30) == ("127.0.0.1", 5555)
        assert backend.state == "listening" and backend.address == ("127.0.0.1", 5555)
        seen = json.loads((tmp_path / "out.json").read_text())
        assert seen["argv"] == ["serve", "--host", "127.0.0.1", "--port", "0", "--token-file", str(tmp_path / "token"),
                                "--data-dir", str(tmp_path / "data"), "--device", "cpu"]
        assert seen["cwd"] == str(fake_repo)
        assert backend.log_tail(2) == ["loading models...", "LATENTFORGE_LISTENING 127.0.0.1 5555"]
    finally:
        code = backend.stop(5)
    assert code is not None and code != 0 and backend.state == "exited"


def test_local_backend_that_exits_reports_its_output(fake_repo, tmp_path):
    backend = LocalBackend(sys.executable, fake_repo, "127.0.0.1", 1234, tmp_path / "token",
                           extra_args=("--fake-fail",))
    backend.start()
    with pytest.raises(RuntimeError, match=r"code 3[\s\S]*port 1234 already in use"):
        backend.wait_listening(30)
    assert backend.state == "exited" and backend.address is None


def test_local_backend_rejects_bad_paths(fake_repo, tmp_path):
    with pytest.raises(ValueError, match="interpreter not found"):
        LocalBackend(tmp_path / "no-python", fake_repo, "127.0.0.1", 0, tmp_path / "token").start()
    with pytest.raises(ValueError, match="no 'backend' package"):
        LocalBackend(sys.executable, tmp_path, "127.0.0.1", 0, tmp_path / "token").start()
    with pytest.raises(ValueError, match="port"):
        LocalBackend(sys.executable, fake_repo, "127.0.0.1", 70000, tmp_path / "token")
    with pytest.raises(ValueError, match="install.py"):
        LocalBackend.from_install_config("127.0.0.1", 0, tmp_path / "token", config={})


# ------------------------------------------------------------------------------------------------- arrays

def test_transform_points_matches_a_hand_built_transform():
    # Rotate 90 degrees about +Z, scale 2, translate (1, 2, 3): x -> 2y, y -> -2x.
    m = np.array([[0, -2, 0, 1], [2, 0, 0, 2], [0, 0, 2, 3], [0, 0, 0, 1]], dtype=np.float64)
    co = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, -0.25, 2]], dtype=np.float32)
    expected = np.array([[1, 4, 3], [-1, 2, 3], [1, 2, 5], [1.5, 3, 7]], dtype=np.float32)
    out = lf_arrays.transform_points(co, m)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)
    with pytest.raises(ValueError, match="not affine"):
        lf_arrays.transform_points(co, np.eye(4) + np.eye(4)[::-1] * 0.5)
    with pytest.raises(ValueError, match=r"\(N,3\)"):
        lf_arrays.transform_points(co[:, :2], m)


def test_loop_uvs_to_wire_indexes_loops():
    loop_uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float32)
    tri_loops = np.array([[0, 1, 2], [0, 2, 3]])
    uv, uv_idx = lf_arrays.loop_uvs_to_wire(loop_uv, tri_loops)
    assert uv.dtype == np.float32 and uv_idx.dtype == np.int32
    np.testing.assert_array_equal(uv[uv_idx[1]], [[0, 0], [1, 1], [0, 1]])
    with pytest.raises(ValueError, match="outside"):
        lf_arrays.loop_uvs_to_wire(loop_uv, np.array([[0, 1, 4]]))


def test_scatter_corner_uvs_counts_conflicts_on_shared_quad_corners():
    # A quad (loops 0..3) split along the 0-2 diagonal; a fifth loop no triangle uses.
    tri_loops = np.array([[0, 1, 2], [0, 2, 3]])
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0.5, 0.5], [0.9, 0.9]], dtype=np.float32)
    consistent = np.array([[0, 1, 2], [0, 2, 3]])
    loop_uv, conflicts, unassigned = lf_arrays.scatter_corner_uvs(uv, consistent, tri_loops, n_loops=5)
    np.testing.assert_array_equal(loop_uv, [[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]])
    assert (conflicts, unassigned) == (0, 1)
    # A seam along the diagonal: the second triangle gives loops 0 and 2 other UVs -> 2 conflicting loops,
    # which keep the first triangle's values.
    seam = np.array([[0, 1, 2], [4, 5, 3]])
    loop_uv, conflicts, _ = lf_arrays.scatter_corner_uvs(uv, seam, tri_loops, n_loops=5)
    assert conflicts == 2
    np.testing.assert_array_equal(loop_uv[:4], [[0, 0], [1, 0], [1, 1], [0, 1]])
    # Only one shared loop differs -> 1 conflict.
    one = np.array([[0, 1, 2], [0, 5, 3]])
    assert lf_arrays.scatter_corner_uvs(uv, one, tri_loops, n_loops=5)[1] == 1
    with pytest.raises(ValueError, match="differ in shape"):
        lf_arrays.scatter_corner_uvs(uv, seam[:1], tri_loops, n_loops=5)


def test_texture_pixels_flip_rows_and_roundtrip():
    texture = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
                        [[10, 20, 30], [40, 50, 60], [70, 80, 90]]], dtype=np.uint8)  # (H=2, W=3, 3), row 0 = top
    pixels = lf_arrays.texture_to_pixels(texture)
    assert pixels.shape == (2 * 3 * 4,) and pixels.dtype == np.float32
    rgba = pixels.reshape(2, 3, 4)
    np.testing.assert_allclose(rgba[0, :, :3] * 255, texture[1])  # Blender row 0 = bottom = the wire's last row
    np.testing.assert_allclose(rgba[1, :, :3] * 255, texture[0])
    np.testing.assert_array_equal(rgba[..., 3], 1.0)
    back = lf_arrays.pixels_to_texture(pixels, 3, 2)
    np.testing.assert_array_equal(back[..., :3], texture)
    grey = lf_arrays.texture_to_pixels(np.array([[[0]], [[255]]], dtype=np.uint8)).reshape(2, 1, 4)
    np.testing.assert_array_equal(grey[:, 0], [[1, 1, 1, 1], [0, 0, 0, 1]])
    with pytest.raises(ValueError, match="dtype"):
        lf_arrays.texture_to_pixels(texture.astype(np.float32))
    with pytest.raises(ValueError, match="expected"):
        lf_arrays.pixels_to_texture(pixels, 4, 2)


def test_list_jobs_pages_and_delete_job_frames():
    """The bpy-free client builds the v3 paging and delete frames (what the add-on's Jobs list sends)."""
    c = BackendClient("127.0.0.1", 9, "t")
    c.list_jobs(25, cursor="1700000000.5:abc")
    c.list_jobs()
    c.delete_job("abc123")
    frames = [protocol.decode_frame(c._outgoing.get_nowait()) for _ in range(3)]
    assert [(m.type, m.fields) for m in frames] == [
        ("list_jobs", {"limit": 25, "cursor": "1700000000.5:abc"}), ("list_jobs", {}),
        ("delete_job", {"job_id": "abc123"})]
    with pytest.raises(protocol.ProtocolError, match="must be <= 500"):
        c.list_jobs(501)
