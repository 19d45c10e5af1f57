"""Studios: TLS with a pinned certificate fingerprint, and one identity per artist (each job owned by the token that
submitted it; an artist lists and touches only their own jobs, the admin every job).

Real sockets on loopback: one ``serve --tls`` backend for the module (its certificate made on first use in a
temporary LatentForge home, identities in that home's tokens.json), the add-on's client, and raw protocol peers.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import stat
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from backend import cli
from backend.serving.certificates import certificate_fingerprint, make_certificate
from backend.serving.identities import ADMIN, Identities, IdentityError, add_identity, revoke_identity, token_hash
from backend.serving.store import JobStore
from blender_addon.core import paths, protocol as P
from blender_addon.core import tls
from blender_addon.core.client import EVENT_CONNECTED, EVENT_ERROR, BackendClient
from conftest import TINY_PARAMS, WireClient, sphere_arrays, start_backend

ADMIN_TOKEN = "admin-token-0123456789abcdef"


def _seed_done_job(store: JobStore, job_id: str, owner: str) -> None:
    store.insert(job_id, "latent_paint", {"prompt": f"{owner}'s barrel"}, sphere_arrays(1), owner=owner)
    np.savez(store.job_dir(job_id) / "result.npz", **sphere_arrays(1))
    store.update(job_id, status="done", started=time.time(), finished=time.time(),
                 metadata={"pipeline": "latent_paint"})


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """A ``serve --tls`` backend whose certificate is made on first use in its home; identities alice and bob
    (artists) and carol (admin) in the home's tokens.json; done jobs of alice and bob in its store."""
    root = tmp_path_factory.mktemp("studio")
    home = root / "home"
    old = os.environ.get("LATENTFORGE_HOME")
    os.environ["LATENTFORGE_HOME"] = str(home)
    try:
        tokens = {name: add_identity(paths.tokens_path(), name, admin=name == "carol")
                  for name in ("alice", "bob", "carol")}
        store = JobStore(root / "data")
        for job_id, owner in (("alicejob0001", "alice"), ("bobjob000001", "bob"), ("bobjob000002", "bob"),
                              ("bobjob000003", "bob")):
            _seed_done_job(store, job_id, owner)
        store.close()
        server = start_backend(root / "data", home / "token", token=ADMIN_TOKEN, extra_args=("--tls",))
    finally:
        if old is None:
            os.environ.pop("LATENTFORGE_HOME", None)
        else:
            os.environ["LATENTFORGE_HOME"] = old
    server.home = home
    server.tokens = {**tokens, "admin": server.token}
    server.fingerprint = next(line.split()[1] for line in server.log if line.startswith("LATENTFORGE_TLS_FINGERPRINT"))
    yield server
    server.stop()


def _peer(server, token: str, pinned: bytes | None = None) -> WireClient:
    """A raw protocol peer (TLS with ``pinned``, else plain TCP) after its hello; ``.welcome`` is the answer."""
    client = WireClient(server, hello=False, timeout=60)
    if pinned is not None:
        client.sock = tls.connect(client.sock, pinned, server.host, server.port, time.monotonic() + 30)
    client.send("hello", {"protocol_version": P.PROTOCOL_VERSION, "token": token, "client": "pytest"})
    client.welcome = client.recv()
    return client


def _as(studio, name: str) -> WireClient:
    client = _peer(studio, studio.tokens[name], tls.parse_fingerprint(studio.fingerprint))
    assert client.welcome.type == "welcome", client.welcome.fields
    return client


def _answer(client: WireClient, msg_type: str, fields: dict):
    client.send(msg_type, fields)
    return client.recv()


def _events(client: BackendClient, timeout: float = 30.0) -> P.Message:
    msg = client.wait_event(timeout)
    assert msg is not None, f"no event within {timeout} s"
    return msg


# ------------------------------------------------------------------------------------------------------ TLS

def test_the_certificate_is_made_on_first_use_and_its_fingerprint_printed(studio):
    cert, key = studio.home / "tls-cert.pem", studio.home / "tls-key.pem"
    assert cert.is_file() and key.is_file()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert studio.fingerprint == certificate_fingerprint(cert)
    assert len(tls.parse_fingerprint(studio.fingerprint)) == 32
    assert b"PRIVATE KEY" not in cert.read_bytes()


def test_a_client_with_the_pinned_fingerprint_connects(studio):
    client = BackendClient(studio.host, studio.port, studio.tokens["alice"], "pytest", reconnect=False,
                           tls_fingerprint=studio.fingerprint.replace(":", "").lower())  # any spelling pins
    client.start()
    try:
        msg = _events(client)
        assert msg.type == EVENT_CONNECTED, msg.fields
        assert (msg.fields["identity"], msg.fields["role"]) == ("alice", "artist")
        assert client.uses_tls
        client.ping("over-tls")
        assert _events(client).fields == {"nonce": "over-tls"}
    finally:
        client.close()
    raw = _as(studio, "admin")
    assert raw.sock.version in ("TLSv1.2", "TLSv1.3")
    assert (raw.welcome.fields["identity"], raw.welcome.fields["role"]) == ("admin", "admin")
    raw.close()


def test_a_wrong_fingerprint_is_refused_before_hello_and_not_retried(studio):
    wrong = "AB" * 32
    client = BackendClient(studio.host, studio.port, studio.tokens["alice"], "pytest", tls_fingerprint=wrong,
                           backoff_initial_s=0.05, backoff_max_s=0.1)
    client.start()
    try:
        msg = _events(client)
        assert msg.type == EVENT_ERROR and msg.fields["will_retry"] is False
        text = msg.fields["message"]
        assert "does not match the pinned fingerprint" in text
        assert tls.short(studio.fingerprint) in text and tls.short(wrong) in text
        assert client.wait_event(0.5) is None  # no second attempt
    finally:
        client.close()


def test_plain_tcp_to_the_tls_backend_fails_clearly(studio):
    plain = _peer(studio, studio.tokens["alice"])
    assert plain.welcome.type == "error" and plain.welcome.fields["code"] == "tls_required"
    assert "TLS" in plain.welcome.fields["message"]
    with pytest.raises(P.ConnectionClosed):
        plain.recv()
    plain.close()
    client = BackendClient(studio.host, studio.port, studio.tokens["alice"], "pytest")  # no fingerprint set
    client.start()
    try:
        msg = _events(client)
        assert msg.type == EVENT_ERROR and msg.fields["will_retry"] is False
        assert "tls_required" in msg.fields["message"] and "TLS Fingerprint" in msg.fields["message"]
    finally:
        client.close()


def test_tls_to_a_plain_backend_fails_clearly(backend_server, studio):
    client = BackendClient(backend_server.host, backend_server.port, backend_server.token, "pytest",
                           tls_fingerprint=studio.fingerprint)
    client.start()
    try:
        msg = _events(client)
        assert msg.type == EVENT_ERROR and msg.fields["will_retry"] is False
        assert "speaks plain TCP, not TLS" in msg.fields["message"]
    finally:
        client.close()


def test_a_full_backend_refusing_before_tls_is_worth_retrying():
    """A TLS backend at --max-connections answers a plain ``too_many_connections`` frame before any TLS (no
    handshake spent on refused peers): the client reports that, retryable, not "plain TCP"."""
    listener = socket.create_server(("127.0.0.1", 0))

    def refuse():
        conn, _ = listener.accept()
        conn.sendall(P.encode_message("error", {"code": "too_many_connections", "message": "at most 1 at once"}))
        conn.close()

    thread = threading.Thread(target=refuse)
    thread.start()
    sock = socket.create_connection(listener.getsockname(), timeout=10)
    with pytest.raises(OSError) as info:
        tls.connect(sock, bytes(32), "127.0.0.1", listener.getsockname()[1], time.monotonic() + 10)
    assert not isinstance(info.value, tls.TLSRefused) and "too_many_connections" in str(info.value)
    thread.join(10)
    sock.close()
    listener.close()


def test_a_non_loopback_bind_without_tls_is_refused(tmp_path, capsys, caplog):
    token_file = tmp_path / "token"
    token_file.write_text(ADMIN_TOKEN)
    for host in ("0.0.0.0", "::", "192.168.1.20", "gpu-box.studio.lan"):
        rc = cli.main(["serve", "--host", host, "--port", "0", "--data-dir", str(tmp_path / "data"),
                       "--token-file", str(token_file), "--device", "cpu"])
        err = capsys.readouterr().err
        assert rc == 2 and "--tls" in err and "--insecure" in err and host in err, err
    assert not (tmp_path / "data").exists()  # refused before the store was opened, nothing was bound
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        cli.check_bind(host, use_tls=False, insecure=False)
    cli.check_bind("0.0.0.0", use_tls=True, insecure=False)
    with caplog.at_level("WARNING"):
        cli.check_bind("0.0.0.0", use_tls=False, insecure=True)  # allowed, loudly
    assert "--insecure" in caplog.text and "unencrypted" in caplog.text
    assert cli.main(["serve", "--cert", "c.pem", "--key", "k.pem", "--token-file", str(token_file)]) == 2
    assert "need --tls" in capsys.readouterr().err


def test_fingerprints_parse_in_every_common_spelling():
    digest = bytes(range(32))
    colons = ":".join(f"{b:02X}" for b in digest)
    for text in (colons, colons.lower(), colons.replace(":", ""), f"sha256:{colons}",
                 f"SHA256 Fingerprint={colons}", " ".join(colons.split(":"))):
        assert tls.parse_fingerprint(text) == digest, text
    for bad in ("", "AB:CD", colons + ":00", "zz" * 32):
        with pytest.raises(ValueError, match="TLS fingerprint"):
            tls.parse_fingerprint(bad)
    with pytest.raises(ValueError, match="TLS fingerprint"):
        BackendClient("127.0.0.1", 9876, "t", tls_fingerprint="not-a-fingerprint")


def test_a_tls_stream_is_full_duplex_from_two_threads(tmp_path):
    """One thread reads while another writes on each end, 4 MiB each way at once: every byte arrives in order
    (the stream serialises its calls into OpenSSL, which forbids concurrent reads and writes)."""
    fp = make_certificate(tmp_path / "c.pem", tmp_path / "k.pem", ["localhost"])
    a, b = socket.socketpair()
    server = tls.TLSStream(a, tls.server_context(tmp_path / "c.pem", tmp_path / "k.pem"), server_side=True)
    shook = threading.Thread(target=server.handshake, args=(time.monotonic() + 20,))
    shook.start()
    client = tls.TLSStream(b, tls.client_context(), server_side=False)
    client.handshake(time.monotonic() + 20)
    shook.join(20)
    client.check_fingerprint(tls.parse_fingerprint(fp), "the test server")
    rng = np.random.default_rng(0)
    payload = {side: rng.integers(0, 256, 4 << 20, dtype=np.uint8).tobytes() for side in ("up", "down")}
    got = {"up": bytearray(), "down": bytearray()}

    def read(stream, key):
        buf = bytearray(100_000)
        while len(got[key]) < len(payload[key]):
            n = stream.recv_into(memoryview(buf))
            if n == 0:
                break
            got[key] += buf[:n]

    threads = [threading.Thread(target=read, args=(server, "up")), threading.Thread(target=read, args=(client, "down")),
               threading.Thread(target=client.sendall, args=(payload["up"],)),
               threading.Thread(target=server.sendall, args=(payload["down"],))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a TLS stream deadlocked"
    assert bytes(got["up"]) == payload["up"] and bytes(got["down"]) == payload["down"]
    with pytest.raises(tls.TLSRefused, match="does not match"):
        client.check_fingerprint(bytes(32), "the test server")
    client.close()
    server.close()


# ------------------------------------------------------------------------------------------------ identities

def test_an_artist_sees_and_touches_only_their_own_jobs(studio):
    alice = _as(studio, "alice")
    listed = _answer(alice, "list_jobs", {})
    assert [j["job_id"] for j in listed.fields["jobs"]] == ["alicejob0001"]
    assert listed.fields["jobs"][0]["owner"] == "alice"
    for msg_type in ("get_result", "delete_job", "attach", "cancel"):
        for job_id in ("bobjob000001", "nosuchjob999"):
            err = _answer(alice, msg_type, {"job_id": job_id})
            assert err.type == "error" and err.fields["code"] == "not_found", (msg_type, err.fields)
            # another's job reads exactly like an unknown id: nothing confirms that it exists
            assert err.fields["message"] == f"no job with id {job_id!r} among the jobs of alice"
    assert _answer(alice, "get_result", {"job_id": "alicejob0001"}).type == "result"
    alice.close()
    bob = _as(studio, "bob")
    assert {j["owner"] for j in _answer(bob, "list_jobs", {}).fields["jobs"]} == {"bob"}
    assert _answer(bob, "get_result", {"job_id": "bobjob000001"}).type == "result"  # still there
    assert _answer(bob, "delete_job", {"job_id": "bobjob000003"}).type == "deleted"  # the owner may
    bob.close()


@pytest.mark.parametrize("admin", ["admin", "carol"])
def test_an_admin_sees_and_touches_every_job(studio, admin):
    client = _as(studio, admin)
    assert client.welcome.fields["role"] == "admin"
    jobs = _answer(client, "list_jobs", {}).fields["jobs"]
    assert {"alice", "bob"} <= {j["owner"] for j in jobs}
    result = _answer(client, "get_result", {"job_id": "alicejob0001"})
    assert result.type == "result" and result.fields["job_id"] == "alicejob0001"
    attached = _answer(client, "attach", {"job_id": "bobjob000001"})
    assert attached.type == "status" and attached.fields["status"] == "done"
    assert client.recv().type == "result"
    if admin == "carol":
        assert _answer(client, "delete_job", {"job_id": "bobjob000002"}).type == "deleted"
    client.close()


def test_an_artist_cannot_cancel_another_artists_running_job_but_the_admin_can(studio):
    bob = _as(studio, "bob")
    bob.send("submit", {"pipeline": "latent_paint", "params": {**TINY_PARAMS, "iterations": 100_000},
                        "request_id": "long"}, sphere_arrays())
    job_id = bob.recv_until("accepted").fields["job_id"]
    bob.recv_until("progress", job_id)  # running, streaming progress over TLS while the others talk
    alice = _as(studio, "alice")
    for msg_type in ("cancel", "attach"):
        err = _answer(alice, msg_type, {"job_id": job_id})
        assert err.fields["code"] == "not_found", err.fields
    alice.close()
    admin = _as(studio, "admin")
    admin.send("attach", {"job_id": job_id})
    admin.recv_until("status", job_id)
    admin.send("cancel", {"job_id": job_id})
    admin.recv_until("cancelled", job_id, timeout=60)
    bob.recv_until("cancelled", job_id, timeout=60)
    jobs = {j["job_id"]: j for j in _answer(admin, "list_jobs", {}).fields["jobs"]}
    assert jobs[job_id]["owner"] == "bob" and jobs[job_id]["status"] == "cancelled"
    admin.close()
    bob.close()


def test_a_revoked_token_is_refused_at_hello_and_cut_at_the_next_request(studio):
    tokens_file = studio.home / "tokens.json"
    token = add_identity(tokens_file, "dave")
    dave = _peer(studio, token, tls.parse_fingerprint(studio.fingerprint))
    assert dave.welcome.type == "welcome" and dave.welcome.fields["identity"] == "dave"  # picked up, no restart
    assert _answer(dave, "ping", {"nonce": "1"}).type == "pong"
    revoke_identity(tokens_file, "dave")
    err = _answer(dave, "ping", {"nonce": "2"})
    assert err.type == "error" and err.fields["code"] == "auth_failed" and "revoked" in err.fields["message"]
    with pytest.raises((P.ConnectionClosed, OSError)):
        dave.recv()
    again = _peer(studio, token, tls.parse_fingerprint(studio.fingerprint))
    assert again.welcome.type == "error" and again.welcome.fields["code"] == "auth_failed"
    again.close()


def test_tokens_cli_round_trip(tmp_path, capsys):
    path = tmp_path / "tokens.json"
    assert cli.main(["tokens", "add", "alice", "--tokens-file", str(path)]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert len(token) == 64 and token not in path.read_text() and token_hash(token) in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    out_file = tmp_path / "boss.token"
    assert cli.main(["tokens", "add", "boss", "--admin", "--out", str(out_file), "--tokens-file", str(path)]) == 0
    assert str(out_file) in capsys.readouterr().out and stat.S_IMODE(out_file.stat().st_mode) == 0o600
    assert cli.main(["tokens", "list", "--tokens-file", str(path)]) == 0
    listing = capsys.readouterr().out
    assert "alice" in listing and "artist" in listing and "boss" in listing and token not in listing
    identities = Identities(ADMIN_TOKEN, path)
    assert identities.match(token).name == "alice" and identities.match(token).role == "artist"
    assert identities.match(out_file.read_text().strip()).role == "admin"
    assert identities.match(ADMIN_TOKEN) == ADMIN and identities.match("nope") is None
    for argv in (["add", "alice"], ["add", "admin"], ["add", "Bad Name"], ["revoke", "nobody"]):
        assert cli.main(["tokens", *argv, "--tokens-file", str(path)]) == 2
        assert "error:" in capsys.readouterr().err
    assert cli.main(["tokens", "revoke", "alice", "--tokens-file", str(path)]) == 0
    assert identities.match(token) is None  # the live view re-reads the changed file
    path.write_text("{broken")
    with pytest.raises(IdentityError, match="not JSON"):
        Identities(ADMIN_TOKEN, path)
    assert identities.match(out_file.read_text().strip()) is None  # a file broken later fails closed ...
    assert identities.match(ADMIN_TOKEN) == ADMIN  # ... but the admin still gets in


def test_an_old_store_without_owners_migrates_to_the_admin(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    db = sqlite3.connect(data / "jobs.sqlite3")  # the schema before identities (and before the store cap)
    db.execute("CREATE TABLE jobs (job_id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, params TEXT NOT NULL, "
               "status TEXT NOT NULL, created REAL NOT NULL, started REAL, finished REAL, error TEXT, "
               "error_code TEXT, metadata TEXT, timings TEXT)")
    db.execute("INSERT INTO jobs VALUES ('old000000001', 'latent_paint', '{\"prompt\": \"old\"}', 'done', 1.0, 1.0, "
               "2.0, NULL, NULL, NULL, NULL)")
    db.commit()
    db.close()
    store = JobStore(data)
    assert store.get("old000000001")["owner"] == "admin"
    records, _ = store.page(10)
    assert records[0]["owner"] == "admin" and records[0]["prompt"] == "old"
    assert store.page(10, owner="admin")[0] and store.page(10, owner="alice")[0] == []
    store.insert("new000000001", "latent_paint", {}, sphere_arrays(1), owner="alice")
    assert [r["job_id"] for r in store.page(10, owner="alice")[0]] == ["new000000001"]
    store.close()
    assert JobStore(data).get("new000000001")["owner"] == "alice"  # reopening migrates nothing twice
    assert cli.main(["jobs", "--data-dir", str(data)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["job", "created", "owner"]
    assert {line.split()[0]: line.split()[3] for line in lines[1:]} == {"new000000001": "alice",
                                                                        "old000000001": "admin"}


def test_install_tls_makes_the_certificate_once_and_prints_its_fingerprint(tmp_path, monkeypatch):
    import install  # the repo's install.py (importing it has no side effects)

    monkeypatch.setenv("LATENTFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))  # this checkout's backend
    state, fingerprint = install.tls_certificate(Path(sys.executable), ["studio.lan"], tmp_path)
    assert state == "made" and fingerprint == certificate_fingerprint(tmp_path / "home" / "tls-cert.pem")
    assert install.tls_certificate(Path(sys.executable), [], tmp_path) == ("kept", fingerprint)
    assert install.parse_args(["--tls", "--tls-host", "a", "--tls-host", "10.0.0.5"]).tls_host == ["a", "10.0.0.5"]
    with pytest.raises(SystemExit):
        install.parse_args(["--tls-host", "a"])
