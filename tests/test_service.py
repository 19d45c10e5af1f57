"""The backend service over a real socket: robustness, queueing, cancel, persistence across restarts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from blender_addon.core import protocol
from conftest import TINY_PARAMS, WireClient, sphere_arrays, start_backend


def _submit(client: WireClient, params: dict | None = None, arrays: dict | None = None, request_id: str = "r1"):
    client.send("submit", {"pipeline": "latent_paint", "params": {**TINY_PARAMS, **(params or {})},
                           "request_id": request_id}, arrays if arrays is not None else sphere_arrays())
    return client.recv_until("accepted")


def test_welcome_describes_the_backend(backend_server):
    c = WireClient(backend_server)
    w = c.welcome
    assert w.type == "welcome" and w.fields["protocol_version"] == protocol.PROTOCOL_VERSION
    assert w.fields["device"] == "cpu"
    assert w.fields["memory_total_bytes"] >= w.fields["memory_free_bytes"] >= 0  # the machine's RAM for the CPU
    params = w.fields["pipelines"]["latent_paint"]["params"]
    assert params["iterations"]["default"] == 5000 and params["guidance_scale"]["default"] == 100.0
    c.send("ping", {"nonce": "abc"})
    assert c.recv().fields == {"nonce": "abc"}


def test_bad_clients_get_clear_errors_and_the_server_keeps_serving(backend_server):
    # wrong token: error, then the connection closes
    bad = WireClient(backend_server, hello=False)
    bad.send("hello", {"protocol_version": protocol.PROTOCOL_VERSION, "token": "wrong"})
    err = bad.recv()
    assert err.type == "error" and err.fields["code"] == "auth_failed"
    with pytest.raises(protocol.ConnectionClosed):
        bad.recv()

    # oversized length field: rejected from the prefix alone, connection closed
    big = WireClient(backend_server)
    big.send_raw(protocol.PREFIX.pack(protocol.MAGIC, 100, 1 << 40))
    err = big.recv()
    assert err.fields["code"] == "frame_too_large"

    # truncated frame: the client dies mid-frame; nothing to answer, the server just drops it
    cut = WireClient(backend_server)
    frame = protocol.encode_message("ping", {"nonce": "x"})
    cut.send_raw(frame[: len(frame) - 3])
    cut.close()

    # message-level errors keep the connection usable
    c = WireClient(backend_server)
    header = b"{not json"
    c.send_raw(protocol.PREFIX.pack(protocol.MAGIC, len(header), 0) + header)
    assert c.recv().fields["code"] == "bad_json"
    header = json.dumps({"type": "teleport", "v": protocol.PROTOCOL_VERSION}).encode()
    c.send_raw(protocol.PREFIX.pack(protocol.MAGIC, len(header), 0) + header)
    assert c.recv().fields["code"] == "unknown_type"

    arrays = sphere_arrays()
    v = arrays["mesh.v_pos"].copy()
    v[3, 1] = np.nan
    header = json.dumps({"type": "submit", "v": protocol.PROTOCOL_VERSION, "pipeline": "latent_paint", "params": TINY_PARAMS, "arrays": [
        {"name": "mesh.v_pos", "dtype": "float32", "shape": list(v.shape), "offset": 0, "nbytes": v.nbytes},
        {"name": "mesh.t_pos_idx", "dtype": "int32", "shape": list(arrays["mesh.t_pos_idx"].shape),
         "offset": v.nbytes, "nbytes": arrays["mesh.t_pos_idx"].nbytes}]}).encode()
    payload = v.tobytes() + arrays["mesh.t_pos_idx"].tobytes()
    c.send_raw(protocol.PREFIX.pack(protocol.MAGIC, len(header), len(payload)) + header + payload)
    err = c.recv()
    assert err.fields["code"] == "non_finite" and "mesh.v_pos" in err.fields["message"]

    wrong_dtype = {"mesh.v_pos": arrays["mesh.v_pos"].astype(np.float16), "mesh.t_pos_idx": arrays["mesh.t_pos_idx"]}
    header = json.dumps({"type": "submit", "v": protocol.PROTOCOL_VERSION, "pipeline": "latent_paint", "params": TINY_PARAMS, "arrays": [
        {"name": "mesh.v_pos", "dtype": "float16", "shape": list(v.shape), "offset": 0, "nbytes": v.nbytes // 2}]}).encode()
    c.send_raw(protocol.PREFIX.pack(protocol.MAGIC, len(header), v.nbytes // 2) + header
               + wrong_dtype["mesh.v_pos"].tobytes())
    assert c.recv().fields["code"] == "bad_array"

    # semantic errors from the service: unknown pipeline, bad params, unknown model id, empty mesh
    c.send("submit", {"pipeline": "dream_machine", "params": {}, "request_id": "q7"}, arrays)
    err = c.recv()
    assert err.fields["code"] == "bad_params" and "latent_paint" in err.fields["message"]
    assert err.fields["request_id"] == "q7"  # the client knows which submit was refused
    c.send("submit", {"pipeline": "latent_paint", "params": {**TINY_PARAMS, "texture_size": 10**6}}, arrays)
    assert "texture_size" in c.recv().fields["message"]
    c.send("submit", {"pipeline": "latent_paint", "params": {**TINY_PARAMS, "prompt": ""}}, arrays)
    assert "prompt" in c.recv().fields["message"]
    flat = dict(arrays, **{"mesh.v_pos": np.zeros_like(arrays["mesh.v_pos"])})
    c.send("submit", {"pipeline": "latent_paint", "params": TINY_PARAMS}, flat)
    assert c.recv().fields["code"] == "bad_mesh"
    c.send("cancel", {"job_id": "nope"})
    assert c.recv().fields["code"] == "not_found"

    # an unknown model id fails the job (clear message), the worker keeps going
    accepted = _submit(c, {"model": "nobody/no-such-model"})
    err = c.recv_until("error", accepted.fields["job_id"])
    assert err.fields["code"] == "model_not_found" and "nobody/no-such-model" in err.fields["message"]

    # and a well-behaved second client is served normally
    good = WireClient(backend_server)
    accepted = _submit(good)
    result = good.recv_until("result", accepted.fields["job_id"])
    assert result.arrays["texture"].shape == (64, 64, 3)


def test_two_clients_submit_at_once_both_finish(backend_server):
    a, b = WireClient(backend_server), WireClient(backend_server)
    ja = _submit(a, {"iterations": 6})
    jb = _submit(b, {"iterations": 2, "seed": 5})
    assert ja.fields["request_id"] == "r1"
    assert jb.fields["queue_position"] >= 1  # b waits behind a (one GPU job at a time)
    seen_b: list = []
    rb = b.recv_until("result", jb.fields["job_id"], seen=seen_b)
    ra = a.recv_until("result", ja.fields["job_id"])
    statuses = [m.fields["status"] for m in seen_b if m.type == "status"]
    assert statuses[-2:] == ["running", "done"]
    assert ra.fields["metadata"]["iterations"] == 6 and rb.fields["metadata"]["seed"] == 5
    for r in (ra, rb):
        np.testing.assert_array_equal(r.arrays["mesh.t_pos_idx"], sphere_arrays()["mesh.t_pos_idx"])
        assert r.arrays["texture"].std() > 0


def test_cancel_stops_a_running_job_within_one_step(backend_server):
    c = WireClient(backend_server)
    accepted = _submit(c, {"iterations": 100_000, "preview_every": 0})
    job_id = accepted.fields["job_id"]
    while True:
        msg = c.recv_until("progress", job_id)
        if msg.fields["stage"] == "optimize" and msg.fields["step"] >= 2:
            break
    c.send("cancel", {"job_id": job_id})
    step_at_cancel = msg.fields["step"]
    seen: list = []
    c.recv_until("cancelled", job_id, timeout=30, seen=seen)
    later = [m.fields["step"] for m in seen if m.type == "progress"]
    # progress messages already in flight when cancel arrived, plus at most the one step that was running
    assert not later or max(later) <= step_at_cancel + 3
    c.send("list_jobs", {})
    jobs = {j["job_id"]: j for j in c.recv_until("jobs").fields["jobs"]}
    assert jobs[job_id]["status"] == "cancelled"


def test_cancel_a_queued_job(backend_server):
    c = WireClient(backend_server)
    first = _submit(c, {"iterations": 30})
    second = _submit(c, {"iterations": 30}, request_id="r2")
    c.send("cancel", {"job_id": second.fields["job_id"]})
    c.recv_until("cancelled", second.fields["job_id"])
    c.recv_until("result", first.fields["job_id"])


def test_results_survive_client_disconnect_and_backend_restart(tmp_path):
    server = start_backend(tmp_path / "data", tmp_path / "token")
    try:
        a = WireClient(server)
        job_id = _submit(a, {"iterations": 4}).fields["job_id"]
        a.close()  # the client goes away while the job runs
        b = WireClient(server)
        b.send("attach", {"job_id": job_id})
        first = b.recv_until("result", job_id)
    finally:
        server.kill()  # crash, not a clean shutdown

    server = start_backend(tmp_path / "data", tmp_path / "token")
    try:
        c = WireClient(server)
        c.send("list_jobs", {"limit": 10})
        jobs = c.recv_until("jobs").fields["jobs"]
        assert [j["job_id"] for j in jobs] == [job_id] and jobs[0]["status"] == "done"
        assert jobs[0]["prompt"] == TINY_PARAMS["prompt"]
        c.send("get_result", {"job_id": job_id})
        again = c.recv_until("result", job_id)
        for name, arr in first.arrays.items():
            np.testing.assert_array_equal(again.arrays[name], arr)
        assert again.fields["metadata"]["seed"] == 0
        assert (tmp_path / "data" / "jobs" / job_id / "result.glb").stat().st_size > 0
    finally:
        server.stop()


def test_a_job_running_when_the_backend_dies_is_reported_interrupted(tmp_path):
    server = start_backend(tmp_path / "data", tmp_path / "token")
    try:
        c = WireClient(server)
        job_id = _submit(c, {"iterations": 100_000, "preview_every": 0}).fields["job_id"]
        c.recv_until("progress", job_id)
    finally:
        server.kill()
    server = start_backend(tmp_path / "data", tmp_path / "token")
    try:
        c = WireClient(server)
        c.send("attach", {"job_id": job_id})
        status = c.recv_until("status", job_id)
        assert status.fields["status"] == "failed" and "interrupted" in status.fields["error"]
        assert c.recv_until("error", job_id).fields["code"] == "interrupted"  # the replayed failure
        c.send("get_result", {"job_id": job_id})
        assert c.recv_until("error", job_id).fields["code"] == "job_failed"
    finally:
        server.stop()
