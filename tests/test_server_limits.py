"""A hostile client against ``python -m backend serve``: every complete frame answered, bounded memory, a job store
that stays usable (paging over odd text, damaged artifacts, delete, the size/age cap).

Loopback only; the fuzz run is bounded (a few thousand frames, well under 60 s on 2 CPU cores).
"""

from __future__ import annotations

import json
import random
import select
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from blender_addon.core import protocol as P
from backend.serving.store import PAGE_BUDGET_BYTES, JobStore, StoreError
from conftest import WireClient, sphere_arrays, start_backend

ODD_TEXTS = ["\ud800", "a\udfffb", "\x7f" * 300, "\x00nul", "\u202eRTL\u202c", "\U0001F600" * 50, "e\u0301" * 40,
             "\ufeffbom", "\\ud800 escaped, not a surrogate", "x" * 100_000, "\u00e9" * 100_000, "ok"]
N_STORED = 1000
RSS_GROWTH_BOUND_MB = 128
"""The stated bound: two fuzz passes of 2,000+ frames each (and 30 tokenless peers) may grow the server's RSS by at
most this much over its size after one full listing of 1,000 odd jobs and one result (measured: about +80 MB, all
of it once, in the first pass: lazy imports and allocator arenas)."""
RSS_FLAT_BOUND_MB = 24
"""... and the second pass, as long as the first, by at most this much (measured: about 0): flat."""


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _fill_store(data_dir: Path, n: int = N_STORED) -> tuple[list[str], str, str]:
    """n jobs whose prompts and params are full of odd Unicode and 100 kB strings (rows written straight into the
    store, as an older version or a crash could have left them), plus one done job with a real result.
    Returns (all job ids, the done job's id, a done job id whose result file is missing)."""
    store = JobStore(data_dir)
    rng = random.Random(1)
    rows = []
    t0 = time.time() - 10_000
    for i in range(n):
        prompt = "".join(rng.choice(ODD_TEXTS) for _ in range(2))
        params = {"prompt": prompt, "negative_prompt": rng.choice(ODD_TEXTS), rng.choice(ODD_TEXTS)[:50]: i,
                  "seed": i}
        status = "done" if i == 1 else rng.choice(["done", "failed", "cancelled"])
        rows.append((f"odd{i:05d}", "latent_paint", json.dumps(params), status, t0 + i * 0.5, t0 + i * 0.5,
                     t0 + i * 0.5 + 1, rng.choice(ODD_TEXTS[2:]) if status == "failed" else None,
                     "internal" if status == "failed" else None, None, None, 0))
    with store._lock:
        store._db.executemany("INSERT INTO jobs (job_id, pipeline, params, status, created, started, finished, error, "
                              "error_code, metadata, timings, size_bytes) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    good = "good00000001"
    store.insert(good, "latent_paint", {"prompt": "a barrel"}, sphere_arrays(1))
    np.savez(store.job_dir(good) / "result.npz", **sphere_arrays(4))  # about 92 kB
    store.update(good, status="done", started=time.time(), finished=time.time(), metadata={"pipeline": "latent_paint"})
    store.measure(good)
    store.close()
    return [r[0] for r in rows] + [good], good, "odd00001"


def _frame(header: dict, payload: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()  # ensure_ascii: lone surrogates travel as \\udXXX escapes, as an attacker sends
    return struct.pack("!4sIQ", P.MAGIC, len(raw), len(payload)) + raw + payload


def _fuzz_frames(rng: random.Random, ids: list[str], count: int):
    """Complete frames whose every request must get exactly one reply."""
    v = sphere_arrays(1)
    for _ in range(count):
        kind = rng.random()
        text = rng.choice(ODD_TEXTS + ["j" * 200, "", "ok"])
        job = rng.choice(ids + [text, "nope"])
        if kind < 0.12:
            yield _frame({"type": "ping", "v": P.PROTOCOL_VERSION, "nonce": text})
        elif kind < 0.2:
            limit = rng.choice([1, 7, 500, 501, 0, -1, 2 ** 63, 10 ** 30, 1.5, "3", None])
            h = {"type": "list_jobs", "v": P.PROTOCOL_VERSION}
            if limit is not None:
                h["limit"] = limit
            if rng.random() < 0.5:
                h["cursor"] = rng.choice([text, "1.5:odd00001", "nan:x", "1e999:y", "99999999999:zz"])
            yield _frame(h)
        elif kind < 0.32:
            yield _frame({"type": rng.choice(["get_result", "cancel"]), "v": P.PROTOCOL_VERSION,
                          "job_id": job if rng.random() < 0.7 else "fz" + text})
            yield _frame({"type": "delete_job", "v": P.PROTOCOL_VERSION, "job_id": "fz" + text})
        elif kind < 0.36:
            yield _frame({"type": "attach", "v": P.PROTOCOL_VERSION, "job_id": "fz" + text})
        elif kind < 0.6:  # submits that must be refused with an error (never accepted)
            # every prompt here is refused: lone surrogate, DEL/NUL control characters, too long
            params = {"prompt": rng.choice(ODD_TEXTS[:4] + ["p" * 5000]), "model": "tiny-random", "iterations": 1}
            pick = rng.random()
            arrays = dict(v)
            if pick < 0.2:
                params = {f"k{i}\x7f": i for i in range(rng.choice([300, 30_000]))}
            elif pick < 0.4:
                params["prompt"] = "fine"
                arrays = {"mesh.v_pos": v["mesh.v_pos"] * np.float32(1e30), "mesh.t_pos_idx": v["mesh.t_pos_idx"]}
            pipeline = rng.choice(["latent_paint", "\x7f" * 60, text[:64], "nope"])
            yield P.encode_message("submit", {"pipeline": "latent_paint" if pick < 0.4 else pipeline[:64] or "x",
                                              "params": params, "request_id": "r"}, arrays) if _encodable(
                params, pipeline) else _frame({"type": "submit", "v": P.PROTOCOL_VERSION, "pipeline": pipeline,
                                               "params": params, "request_id": text})
        elif kind < 0.8:  # a valid frame with flipped header bytes (lengths untouched: the frame stays complete)
            base = bytearray(P.encode_message("ping", {"nonce": "m"}) if rng.random() < 0.5 else
                             P.encode_message("submit", {"pipeline": "latent_paint", "params": {"prompt": ""}}, v))
            hl = struct.unpack("!I", base[4:8])[0]
            for _ in range(rng.randint(1, 4)):
                base[16 + rng.randrange(hl)] = rng.randrange(256)
            yield bytes(base)
        else:  # structurally odd headers
            yield _frame(rng.choice([
                {"type": "\x7f" * 100_000, "v": P.PROTOCOL_VERSION},
                {"type": "ping", "v": P.PROTOCOL_VERSION, **{f"k{i}": i for i in range(30_000)}},
                {"type": "jobs", "v": P.PROTOCOL_VERSION, "jobs": []},
                {"type": "hello", "v": P.PROTOCOL_VERSION, "protocol_version": P.PROTOCOL_VERSION, "token": "t"},
                {"type": "ping", "v": P.PROTOCOL_VERSION, "nonce": {"deep": [[[[text]]]]}},
                {"type": ["ping"], "v": P.PROTOCOL_VERSION},
                {"v": P.PROTOCOL_VERSION},
            ]))


def _fuzz_pass(server, sock, frames, codes: dict, totals: dict):
    """Send ``frames`` in batches of 25, each closed by a ping; check that every frame got exactly one reply (none
    of them ``internal``, none with a server path or an over-long message). Returns the (possibly new) socket."""
    i = 0
    while i < len(frames):
        batch = frames[i:i + 25]
        i += len(batch)
        sock.sendall(b"".join(batch) + P.encode_message("ping", {"nonce": f"b{i}"}))
        got = 0
        while True:
            msg = P.recv_message(sock)
            if msg.type == "pong" and msg.fields.get("nonce") == f"b{i}":
                break
            got += 1
            key = msg.type if msg.type != "error" else msg.fields["code"]
            codes[key] = codes.get(key, 0) + 1
            assert key != "internal", msg.fields
            assert len(msg.fields.get("message", "")) <= P.MAX_MESSAGE_CHARS
            assert str(Path(server.data_dir)) not in msg.fields.get("message", "")
            if msg.type == "error" and msg.fields["code"] in P.FATAL_CODES:
                break
        totals["answered"] += got
        if msg.type == "error" and msg.fields["code"] in P.FATAL_CODES:
            totals["fatal"] += 1  # e.g. a flipped digit made "v" another version: fatal by design; start over
            sock.close()
            sock = _connect(server)
            continue
        assert got == len(batch), (got, len(batch), codes)
    return sock


def _encodable(params, pipeline) -> bool:
    try:
        json.dumps([params, pipeline], ensure_ascii=False).encode()
        return len(pipeline) <= P.MAX_NAME_CHARS
    except UnicodeEncodeError:
        return False


def _connect(server) -> socket.socket:
    c = WireClient(server)
    assert c.welcome.type == "welcome"
    return c.sock


def _pages(sock) -> tuple[list[dict], int]:
    """Every job record via list_jobs paging; returns (records, largest header bytes)."""
    records, cursor, largest = [], None, 0
    while True:
        fields = {"limit": 500} if cursor is None else {"limit": 500, "cursor": cursor}
        P.send_message(sock, "list_jobs", fields)
        msg = P.recv_message(sock)
        assert msg.type == "jobs", msg
        largest = max(largest, len(json.dumps(msg.fields, ensure_ascii=False).encode()))
        records += msg.fields["jobs"]
        cursor = msg.fields["next_cursor"]
        if cursor is None:
            return records, largest


@pytest.fixture
def stored_server(tmp_path):
    ids, good, missing = _fill_store(tmp_path / "data")
    server = start_backend(tmp_path / "data", tmp_path / "token", extra_args=("--max-connections", "48"))
    yield server, ids, good, missing
    server.stop()


def test_fuzz_every_complete_frame_is_answered_memory_stays_bounded(stored_server):
    server, ids, good, _missing = stored_server
    pid = server.process.pid
    t_start = time.monotonic()

    # warm up: one full listing of the 1,000 odd jobs, one result
    sock = _connect(server)
    records, largest = _pages(sock)
    assert {r["job_id"] for r in records} == set(ids) and len(records) == len(ids)
    assert largest < P.MAX_HEADER_BYTES
    P.send_message(sock, "get_result", {"job_id": good})
    assert P.recv_message(sock).type == "result"
    rss_before = _rss_mb(pid)

    # a tokenless peer dripping a hello byte by byte is cut at the handshake deadline, not kept alive
    drip_result: dict = {}

    def drip():
        s = socket.create_connection((server.host, server.port))
        frame = P.encode_message("hello", {"protocol_version": P.PROTOCOL_VERSION, "token": "x" * 500})
        t0 = time.monotonic()
        try:
            for byte in frame:
                s.sendall(bytes([byte]))
                if select.select([s], [], [], 0.5)[0]:  # the server answered (and closed): stop dripping
                    break
        except OSError:
            pass
        try:
            s.settimeout(5)
            msg = P.recv_message(s)
            drip_result["code"] = msg.fields.get("code")
        except Exception as err:  # noqa: BLE001
            drip_result["code"] = repr(err)
        drip_result["seconds"] = time.monotonic() - t0
        s.close()

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()

    # tokenless peers announcing huge frames: refused from the prefix, each costs at most the small pre-auth bound
    peers = []
    for i in range(30):
        s = socket.create_connection((server.host, server.port))
        if i % 3 == 0:
            s.sendall(P.PREFIX.pack(P.MAGIC, 100, 1 << 30))  # 1 GiB payload before authentication
        elif i % 3 == 1:
            s.sendall(P.PREFIX.pack(P.MAGIC, 1 << 20, 0))  # a 1 MiB header before authentication
        else:
            s.sendall(P.PREFIX.pack(P.MAGIC, P.MAX_HELLO_BYTES, 0) + b"{" * 60_000)  # within the bound, incomplete
        peers.append(s)
    time.sleep(0.5)
    refused = 0
    for i, s in enumerate(peers):
        if i % 3 != 2:
            s.settimeout(10)
            msg = P.recv_message(s)
            assert msg.type == "error" and msg.fields["code"] == "frame_too_large"
            refused += 1
    rss_peers = _rss_mb(pid)

    # the fuzz, twice (two seeds): batches of complete frames, each batch closed by a ping; every frame gets exactly
    # one reply. The first pass also warms the server up (lazy imports, allocator arenas); the second must be flat.
    codes: dict[str, int] = {}
    totals = {"frames": 0, "answered": 0, "fatal": 0}
    rss_series: list[float] = []
    for seed in (7, 8):
        frames = list(_fuzz_frames(random.Random(seed), ids, 2000))
        totals["frames"] += len(frames)
        sock = _fuzz_pass(server, sock, frames, codes, totals)
        rss_series.append(_rss_mb(pid))
    rss_after = rss_series[-1]
    fuzz_seconds = time.monotonic() - t_start

    # a valid client is served afterwards, and the listing still works for everyone
    c = WireClient(server)
    c.send("ping", {"nonce": "after"})
    assert c.recv().fields == {"nonce": "after"}
    records, largest = _pages(c.sock)
    assert {r["job_id"] for r in records} == set(ids)
    for r in records:
        json.dumps(r, ensure_ascii=False).encode("utf-8")  # every record is valid, encodable text
        assert len(r["prompt"] or "") <= P.LIST_PROMPT_CHARS and "prompt" not in r["params"]
    dripper.join(30)
    for s in peers:
        s.close()
    frames, answered, fatal = totals["frames"], totals["answered"], totals["fatal"]
    print(f"\nfuzz: {frames} frames, {answered} answered, {fatal} fatal, {fuzz_seconds:.1f} s; "
          f"RSS {rss_before:.0f} MB -> {rss_peers:.0f} MB after 30 tokenless peers -> "
          f"{rss_series[0]:.0f} MB after fuzz pass 1 -> {rss_after:.0f} MB after pass 2; "
          f"codes {dict(sorted(codes.items()))}; dripper {drip_result}")
    assert answered + fatal >= frames - 25 * fatal  # only frames queued behind a fatal one go unanswered
    assert codes.get("bad_json", 0) > 0 and codes.get("bad_params", 0) > 0 and codes.get("bad_mesh", 0) > 0
    assert codes.get("result_damaged", 0) > 0 and codes.get("job_finished", 0) > 0
    assert "accepted" not in codes
    assert rss_peers - rss_before < 30 * 0.1 + 16, "tokenless peers cost more than the pre-auth bound"
    assert rss_after - rss_before < RSS_GROWTH_BOUND_MB
    assert rss_after - rss_series[0] < RSS_FLAT_BOUND_MB, "RSS still grows after a full fuzz pass"
    assert drip_result.get("code") == "timeout" and drip_result["seconds"] < P.HANDSHAKE_TIMEOUT_S + 3
    assert fuzz_seconds < 60


def test_slow_reader_is_cut_off_and_connection_limit_holds(tmp_path):
    ids, good, _ = _fill_store(tmp_path / "data", n=3)
    server = start_backend(tmp_path / "data", tmp_path / "token",
                           extra_args=("--max-connections", "6", "--max-client-queue-mb", "1"))
    try:
        pid = server.process.pid
        rss_before = _rss_mb(pid)
        # a client that asks for 3,000 results and never reads: disconnected, not buffered for
        slow = WireClient(server)
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        frame = P.encode_message("get_result", {"job_id": good})
        sent = 0
        slow.sock.settimeout(20)
        try:
            for _ in range(3000):
                slow.sock.sendall(frame)
                sent += 1
        except OSError:
            pass
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any("disconnecting" in line for line in server.log):
            time.sleep(0.1)
        assert any("does not read its replies" in line for line in server.log), server.log[-20:]
        assert _rss_mb(pid) - rss_before < 60
        slow.close()

        # connection limit: 6 at once (pre-auth ones count), the 7th is refused with a clear error
        held = [socket.create_connection((server.host, server.port)) for _ in range(6)]
        time.sleep(0.3)
        extra = socket.create_connection((server.host, server.port))
        extra.settimeout(10)
        msg = P.recv_message(extra)
        assert msg.fields["code"] == "too_many_connections"
        for s in held:
            s.close()
        extra.close()
        time.sleep(0.5)
        ok = WireClient(server)
        ok.send("get_result", {"job_id": good})
        assert ok.recv().type == "result"
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------------------------
# the store: damaged artifacts, delete, the cap policy, paging
# --------------------------------------------------------------------------------------------------------------

def test_damaged_or_missing_result_is_result_damaged_and_the_job_can_be_deleted(tmp_path):
    _ids, good, missing = _fill_store(tmp_path / "data", n=3)
    path = tmp_path / "data" / "jobs" / good / "result.npz"
    path.write_bytes(path.read_bytes()[:100])  # truncated
    server = start_backend(tmp_path / "data", tmp_path / "token")
    try:
        c = WireClient(server)
        for job_id in (good, missing):
            c.send("get_result", {"job_id": job_id})
            err = c.recv()
            assert err.type == "error" and err.fields["code"] == "result_damaged", err.fields
            assert err.fields["job_id"] == job_id and job_id in err.fields["message"]
            assert "result.npz" in err.fields["message"] and str(tmp_path) not in err.fields["message"]
            c.send("attach", {"job_id": job_id})  # one answer: the error, not "status done" first
            err = c.recv()
            assert err.type == "error" and err.fields["code"] == "result_damaged"
        c.send("delete_job", {"job_id": good})
        assert c.recv().fields == {"job_id": good}
        assert not (tmp_path / "data" / "jobs" / good).exists()
        c.send("get_result", {"job_id": good})
        assert c.recv().fields["code"] == "not_found"
        c.send("delete_job", {"job_id": good})
        assert c.recv().fields["code"] == "not_found"
        c.send("cancel", {"job_id": missing})
        assert c.recv().fields["code"] == "job_finished"
        c.send("ping", {"nonce": "still here"})
        assert c.recv().fields == {"nonce": "still here"}
    finally:
        server.stop()


def test_cli_delete_refuses_active_jobs(tmp_path):
    import subprocess
    import sys

    from conftest import REPO_ROOT

    store = JobStore(tmp_path / "data")
    store.insert("active1", "latent_paint", {"prompt": "x"}, sphere_arrays(1))
    store.insert("done1", "latent_paint", {"prompt": "y"}, sphere_arrays(1))
    store.update("done1", status="done", finished=time.time())
    store.close()

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "backend", "jobs", "--data-dir", str(tmp_path / "data"), *args],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)

    out = cli("--delete", "active1")
    assert out.returncode == 2 and "cancel it first" in out.stderr
    out = cli("--delete", "done1")
    assert out.returncode == 0 and "deleted job done1" in out.stdout
    assert not (tmp_path / "data" / "jobs" / "done1").exists()
    assert (tmp_path / "data" / "jobs" / "active1").exists()


def test_cap_policy_removes_the_oldest_finished_jobs_only(tmp_path):
    store = JobStore(tmp_path / "data")
    now = time.time()
    blob = {"mesh.v_pos": np.zeros((25_000, 3), np.float32), "mesh.t_pos_idx": np.zeros((1, 3), np.int32)}  # ~300 kB
    plan = [("q_old", "queued", None), ("r_old", "running", None), ("f1", "failed", 10), ("d2", "done", 20),
            ("c3", "cancelled", 30), ("d4", "done", 40), ("d5", "done", 50)]
    for job_id, status, finished in plan:
        store.insert(job_id, "latent_paint", {"prompt": job_id}, blob)
        store.update(job_id, status=status, created=now - 1000, finished=None if finished is None else
                     now - 1000 + finished)
    each = store.measure("d5")
    assert store.total_bytes() >= 7 * each * 0.9
    # size cap for about 4.5 jobs: the 3 finished longest ago go (f1, d2, c3), queued/running stay
    deleted = store.prune(max_bytes=int(4.5 * each))
    assert [j for j, _ in deleted] == ["f1", "d2", "c3"]
    assert {j["job_id"] for j in store.list(100)} == {"q_old", "r_old", "d4", "d5"}
    # a cap smaller than the active jobs: every finished job goes, queued/running never
    deleted = store.prune(max_bytes=1)
    assert [j for j, _ in deleted] == ["d4", "d5"]
    assert {j["job_id"] for j in store.list(100)} == {"q_old", "r_old"}
    assert (tmp_path / "data" / "jobs" / "q_old").exists()
    # age cap: only finished jobs older than the limit
    store.insert("new", "latent_paint", {"prompt": "n"}, blob)
    store.update("new", status="done", finished=now)
    store.insert("old", "latent_paint", {"prompt": "o"}, blob)
    store.update("old", status="failed", finished=now - 10 * 86400)
    deleted = store.prune(max_age_s=7 * 86400)
    assert [j for j, _ in deleted] == ["old"]
    assert {j["job_id"] for j in store.list(100)} == {"q_old", "r_old", "new"}


def test_paging_is_stable_and_bounded(tmp_path):
    ids, _good, _ = _fill_store(tmp_path / "data", n=300)
    store = JobStore(tmp_path / "data")
    seen, cursor, pages = [], None, 0
    while True:
        records, cursor = store.page(37, cursor)
        pages += 1
        assert 1 <= len(records) <= 37
        assert len(json.dumps(records, ensure_ascii=False).encode()) <= PAGE_BUDGET_BYTES + 200_000
        seen += [r["job_id"] for r in records]
        if cursor is None:
            break
    assert seen == sorted(ids, key=lambda j: (store.get(j)["created"], j), reverse=True)
    assert len(set(seen)) == len(ids) and pages >= 300 // 37
    for bad in ("garbage", "nan:x", "1e999:y", "1.0:" + "z" * 100, "1.0:a/b"):
        with pytest.raises(StoreError) as info:
            store.page(10, bad)
        assert info.value.code == "bad_field" and bad not in info.value.message
    with pytest.raises(StoreError):
        store.page(501)
