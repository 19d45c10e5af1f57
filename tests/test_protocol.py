"""Tests of the wire protocol (blender_addon/core/protocol.py) and of docs/protocol.md against its schema.

Frames that the encoder would refuse are built by hand here (struct "!4sIQ" + json.dumps + raw array bytes,
concatenated without the encoder's alignment padding), so the decoder is checked against an independent writer.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from blender_addon.core import protocol as P

REPO_ROOT = Path(__file__).resolve().parents[1]
DOC = REPO_ROOT / "docs" / "protocol.md"
VER = P.PROTOCOL_VERSION


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------

@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.settimeout(20)
    b.settimeout(20)
    yield a, b
    a.close()
    b.close()


def _tri_mesh(n_faces: int = 4, seed: int = 0):
    """A small valid mesh: (N,3) float32 v_pos, (F,3) int32 t_pos_idx, (M,2) uv, (F,3) uv_idx."""
    rng = np.random.default_rng(seed)
    n_verts = n_faces + 2
    v_pos = rng.normal(size=(n_verts, 3)).astype(np.float32)
    t_pos_idx = rng.integers(0, n_verts, size=(n_faces, 3)).astype(np.int32)
    uv = rng.random(size=(3 * n_faces, 2)).astype(np.float32)
    uv_idx = np.arange(3 * n_faces, dtype=np.int32).reshape(n_faces, 3)
    return v_pos, t_pos_idx, uv, uv_idx


def _hand_frame(header, arrays=None, *, magic=b"LFRG", header_len=None, payload_len=None, payload=None) -> bytes:
    """Build a frame without the encoder: header dict (or raw bytes) + arrays packed back to back."""
    table, chunks, offset = [], [], 0
    for name, arr in (arrays or {}).items():
        raw = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
        table.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape), "offset": offset,
                      "nbytes": len(raw)})
        chunks.append(raw)
        offset += len(raw)
    if isinstance(header, dict):
        header = dict(header)
        if arrays is not None:
            header["arrays"] = table
        header = json.dumps(header).encode()
    if payload is None:
        payload = b"".join(chunks)
    hl = len(header) if header_len is None else header_len
    pl = len(payload) if payload_len is None else payload_len
    return struct.pack("!4sIQ", magic, hl, pl) + header + payload


def _recv_raw(data: bytes, max_payload: int = P.DEFAULT_MAX_PAYLOAD_BYTES, close: bool = True):
    """Send raw bytes into a socketpair, then recv_message on the other end.

    Returns (message or exception, bytes left unread in the receiver's socket).
    """
    a, b = socket.socketpair()
    try:
        a.settimeout(10)
        b.settimeout(10)

        def send():
            a.sendall(data)
            if close:
                a.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        try:
            result = P.recv_message(b, max_payload)
        except (P.ProtocolError, P.ConnectionClosed) as exc:
            result = exc
        rest = bytearray()
        while close:  # drain what the receiver did not consume (the sender may still be writing it)
            chunk = b.recv(1 << 16)
            if not chunk:
                break
            rest += chunk
        sender.join()
        return result, bytes(rest)
    finally:
        a.close()
        b.close()


def _expect(data: bytes, code: str, *, contains: str | None = None, **kw) -> P.ProtocolError:
    result, _ = _recv_raw(data, **kw)
    assert isinstance(result, P.ProtocolError), f"expected ProtocolError({code}), got {result!r}"
    assert result.code == code, str(result)
    assert str(result) == f"{code}: {result.message}"
    if contains is not None:
        assert contains in result.message, result.message
    return result


def _roundtrip(pair, msg_type, fields=None, arrays=None, **kw) -> P.Message:
    a, b = pair
    sender = threading.Thread(target=P.send_message, args=(a, msg_type, fields, arrays))
    sender.start()
    msg = P.recv_message(b, **kw)
    sender.join()
    return msg


def _assert_same_arrays(got: dict, sent: dict):
    assert list(got) == list(sent)
    for name, arr in sent.items():
        out = got[name]
        assert out.dtype == arr.dtype.newbyteorder("<") and out.dtype.byteorder in "<=|", name
        assert out.shape == arr.shape, name
        assert out.flags.c_contiguous and not out.flags.writeable, name
        assert out.tobytes() == np.ascontiguousarray(arr).astype(out.dtype).tobytes(), name


# one sample per message type, using EVERY field of its schema (optional ones included)
V, F, UV, UVI = _tri_mesh()
SAMPLES: dict[str, tuple[dict, dict]] = {
    "hello": ({"protocol_version": VER, "token": "s3cr\u00e9t", "client": "blender 4.2 / latentforge 0.1"}, {}),
    "submit": ({"pipeline": "latent_paint", "params": {"prompt": "a red teapot", "seed": 7, "guidance_scale": 100.0},
                "request_id": "r-1"},
               {**P.mesh_arrays("mesh", V, F, UV, UVI), "sketch.v_pos": V[:3] * 2, "sketch.t_pos_idx": F[:1] % 3,
                "image": np.arange(2 * 3 * 4, dtype=np.float16).reshape(2, 3, 4)}),
    "cancel": ({"job_id": "j1"}, {}),
    "attach": ({"job_id": "j1"}, {}),
    "list_jobs": ({"limit": 20, "cursor": "1700000000.123456:j0"}, {}),
    "get_result": ({"job_id": "j1"}, {}),
    "delete_job": ({"job_id": "j1"}, {}),
    "ping": ({"nonce": "n1"}, {}),
    "welcome": ({"protocol_version": VER, "server_version": "0.1.0", "device": "cpu",
                 "memory_total_bytes": 24 * 2**30, "memory_free_bytes": 20 * 2**30,
                 "pipelines": {"latent_paint": {"inputs": ["mesh"]}}, "default_model": "tiny-random",
                 "models": ["tiny-random", {"id": "sd-1.5"}], "identity": "alice", "role": "artist"}, {}),
    "accepted": ({"job_id": "j1", "request_id": "r-1", "queue_position": 0}, {}),
    "status": ({"job_id": "j1", "status": "failed", "queue_position": 2, "error": "CUDA out of memory"}, {}),
    "progress": ({"job_id": "j1", "stage": "sds", "step": 10, "total": 5000, "losses": {"sds": 0.25, "shape": None},
                  "eta_s": 12.5}, {}),
    "preview": ({"job_id": "j1", "step": 10, "decoder": "linear"},
                {"image": np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)}),
    "partial": ({"job_id": "j1", "step": 100},
                P.mesh_arrays("mesh", V, F, UV, UVI, v_color=np.linspace(0, 1, V.shape[0] * 4, dtype=np.float32)
                              .reshape(-1, 4))),
    "result": ({"job_id": "j1", "metadata": {"pipeline": "latent_paint", "seconds": 81.5}},
               {**P.mesh_arrays("mesh", V, F, UV, UVI, v_color=np.ones_like(V)),
                "texture": np.random.default_rng(1).integers(0, 256, (8, 6, 4), dtype=np.uint8)}),
    "error": ({"code": "bad_field", "message": "submit: missing required field 'pipeline' (str)", "job_id": "j1",
               "request_id": "r1"},
              {}),
    "cancelled": ({"job_id": "j1"}, {}),
    "jobs": ({"jobs": [{k: None for k in P.JOB_RECORD_KEYS} | {"job_id": "j1", "status": "done"}],
              "next_cursor": None}, {}),
    "deleted": ({"job_id": "j1"}, {}),
    "pong": ({"nonce": "n1"}, {}),
}


def _valid_frame(msg_type="partial"):
    fields, arrays = SAMPLES[msg_type]
    return P.encode_message(msg_type, fields, arrays)


def _mutate(frame: bytes, fn) -> bytes:
    """Decode the header of an encoded frame, let fn edit it (dict), re-pack with the same payload."""
    _, hl, pl = struct.unpack("!4sIQ", frame[:16])
    header = json.loads(frame[16:16 + hl])
    fn(header)
    new = json.dumps(header).encode()
    return struct.pack("!4sIQ", b"LFRG", len(new), pl) + new + frame[16 + hl:]


# --------------------------------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------------------------------

def test_samples_cover_every_message_type_and_field():
    assert set(SAMPLES) == set(P.MESSAGE_TYPES)
    for msg_type, (fields, arrays) in SAMPLES.items():
        spec = P.MESSAGE_TYPES[msg_type]
        assert set(fields) == set(spec.fields), msg_type
        assert bool(arrays) == spec.arrays_allowed, msg_type


@pytest.mark.parametrize("msg_type", list(SAMPLES))
def test_round_trip_every_message_type(pair, msg_type):
    fields, arrays = SAMPLES[msg_type]
    msg = _roundtrip(pair, msg_type, fields, arrays)
    assert msg.type == msg_type
    assert msg.fields == fields
    _assert_same_arrays(msg.arrays, arrays)


@pytest.mark.parametrize("msg_type", ["cancel", "list_jobs", "ping", "pong", "accepted", "status", "error"])
def test_round_trip_required_fields_only(pair, msg_type):
    spec = P.MESSAGE_TYPES[msg_type]
    fields = {k: v for k, v in SAMPLES[msg_type][0].items() if spec.fields[k].required}
    msg = _roundtrip(pair, msg_type, fields)
    assert msg.fields == fields and msg.arrays == {}


def test_several_frames_back_to_back_on_one_socket(pair):
    a, b = pair
    frames = [_valid_frame(t) for t in ("ping", "result", "progress", "preview")]
    sender = threading.Thread(target=a.sendall, args=(b"".join(frames),))
    sender.start()
    got = [P.recv_message(b) for _ in frames]
    sender.join()
    assert [m.type for m in got] == ["ping", "result", "progress", "preview"]
    _assert_same_arrays(got[1].arrays, SAMPLES["result"][1])
    a.close()
    with pytest.raises(P.ConnectionClosed):
        P.recv_message(b)


def test_frame_layout_matches_spec_byte_for_byte():
    """Prefix is big-endian magic/header_len/payload_len; payload holds little-endian C-order arrays."""
    v_pos = np.array([[1.5, -2.0, 0.25], [0, 0, 1], [0, 1, 0]], dtype=np.float32)
    t_pos_idx = np.array([[0, 1, 2]], dtype=np.int32)
    frame = P.encode_message("partial", {"job_id": "j", "step": 1}, P.mesh_arrays("mesh", v_pos, t_pos_idx))
    magic, hl, pl = struct.unpack(">4sIQ", frame[:16])
    assert magic == b"LFRG" and len(frame) == 16 + hl + pl
    header = json.loads(frame[16:16 + hl].decode("utf-8"))
    assert header["type"] == "partial" and header["v"] == VER
    payload = frame[16 + hl:]
    entries = {e["name"]: e for e in header["arrays"]}
    vp = entries["mesh.v_pos"]
    assert vp["dtype"] == "float32" and vp["shape"] == [3, 3] and vp["nbytes"] == 36
    assert struct.unpack("<9f", payload[vp["offset"]:vp["offset"] + 36]) == tuple(v_pos.ravel().tolist())
    tp = entries["mesh.t_pos_idx"]
    assert tp["offset"] % P.ARRAY_ALIGNMENT == 0 and tp["offset"] >= 36
    assert struct.unpack("<3i", payload[tp["offset"]:tp["offset"] + 12]) == (0, 1, 2)


def test_decoder_accepts_unaligned_back_to_back_layout():
    v_pos, t_pos_idx, uv, uv_idx = _tri_mesh(5)
    img = np.arange(3 * 1 * 1, dtype=np.uint8).reshape(3, 1, 1)  # 3 bytes: next array starts unaligned
    arrays = {"image": img, **P.mesh_arrays("m", v_pos, t_pos_idx, uv, uv_idx)}
    msg = P.decode_frame(_hand_frame({"type": "submit", "v": VER, "pipeline": "x", "params": {}}, arrays))
    _assert_same_arrays(msg.arrays, arrays)


def test_encoder_converts_byte_order_and_layout_without_changing_values():
    v_pos, t_pos_idx, _, _ = _tri_mesh(6)
    big = v_pos.astype(">f4")
    strided = np.asfortranarray(t_pos_idx)
    msg = P.decode_frame(P.encode_message("partial", {"job_id": "j", "step": 0},
                                          P.mesh_arrays("mesh", big, strided)))
    assert msg.arrays["mesh.v_pos"].dtype == np.dtype("<f4")
    np.testing.assert_array_equal(msg.arrays["mesh.v_pos"], v_pos)
    np.testing.assert_array_equal(msg.arrays["mesh.t_pos_idx"], t_pos_idx)


def test_encoder_is_deterministic_and_uses_schema_field_order():
    f1 = {"job_id": "j", "status": "queued", "queue_position": 3}
    f2 = {"queue_position": 3, "status": "queued", "job_id": "j"}
    assert P.encode_message("status", f1) == P.encode_message("status", f2)


def test_message_repr_redacts_token():
    msg = P.decode_frame(P.encode_message("hello", {"protocol_version": VER, "token": "topsecret"}))
    assert "topsecret" not in repr(msg) and msg.fields["token"] == "topsecret"


def test_split_groups_and_mesh_arrays():
    v_pos, t_pos_idx, uv, uv_idx = _tri_mesh()
    arrays = {**P.mesh_arrays("mesh", v_pos, t_pos_idx, uv, uv_idx), "a.b.v_pos": v_pos, "texture": v_pos}
    groups = P.split_groups(arrays)
    assert list(groups) == ["mesh", "a.b", ""]
    assert groups["mesh"]["uv_idx"] is uv_idx and groups["a.b"]["v_pos"] is v_pos and groups[""]["texture"] is v_pos
    assert list(groups["mesh"]) == ["v_pos", "t_pos_idx", "uv", "uv_idx"]
    with pytest.raises(ValueError, match="uv and uv_idx"):
        P.mesh_arrays("mesh", v_pos, t_pos_idx, uv=uv)
    with pytest.raises(ValueError, match="group"):
        P.mesh_arrays("mesh.", v_pos, t_pos_idx)


def test_tokens_match():
    assert P.tokens_match("abc\u00e9", "abc\u00e9")
    assert not P.tokens_match("abc", "abd") and not P.tokens_match("abc", "abcd") and not P.tokens_match("abc", "")
    with pytest.raises(TypeError):
        P.tokens_match("abc", None)


def test_protocol_error_is_picklable_and_knows_fatality():
    import pickle
    err = pickle.loads(pickle.dumps(P.ProtocolError("bad_magic", "x")))
    assert (err.code, err.message, err.fatal) == ("bad_magic", "x", True)
    assert not P.ProtocolError("bad_field", "x").fatal
    with pytest.raises(ValueError, match="unknown ProtocolError code"):
        P.ProtocolError("oops", "x")


# --------------------------------------------------------------------------------------------------------------
# framing rejections
# --------------------------------------------------------------------------------------------------------------

def test_bad_magic():
    err = _expect(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "bad_magic", contains="HTTP")
    assert err.fatal
    _expect(_valid_frame("ping").replace(b"LFRG", b"LFRX", 1), "bad_magic", contains="b'LFRX'")


def test_oversized_header_length_is_rejected_before_reading():
    tail = b"x" * 100
    data = struct.pack("!4sIQ", b"LFRG", P.MAX_HEADER_BYTES + 1, 0) + tail
    result, rest = _recv_raw(data)
    assert isinstance(result, P.ProtocolError) and result.code == "frame_too_large" and result.fatal
    assert str(P.MAX_HEADER_BYTES + 1) in result.message
    assert rest == tail  # only the 16 prefix bytes were consumed


def test_oversized_payload_length_is_rejected_before_reading_the_body():
    frame = _valid_frame("result")
    payload_len = struct.unpack("!Q", frame[8:16])[0]
    result, rest = _recv_raw(frame, max_payload=payload_len - 1)
    assert isinstance(result, P.ProtocolError) and result.code == "frame_too_large"
    assert f"payload_len is {payload_len} bytes" in result.message
    assert rest == frame[16:]  # the receiver consumed exactly the 16 prefix bytes
    # an absurd length (2**63) is refused the same way, with no allocation attempt
    absurd = struct.pack("!4sIQ", b"LFRG", 2, 1 << 63) + b"{}"
    result, rest = _recv_raw(absurd)
    assert result.code == "frame_too_large" and rest == b"{}"
    # exactly at the limit is fine
    result, _ = _recv_raw(frame, max_payload=payload_len)
    assert isinstance(result, P.Message)


def test_truncated_prefix_header_and_body():
    frame = _valid_frame("result")
    _, hl, pl = struct.unpack("!4sIQ", frame[:16])
    _expect(frame[:10], "truncated", contains="10 of the 16 prefix bytes")
    _expect(frame[:16 + hl // 2], "truncated", contains="header bytes")
    err = _expect(frame[:16 + hl + pl - 1], "truncated", contains=f"{pl - 1} of the {pl} payload bytes")
    assert err.fatal
    result, _ = _recv_raw(b"")
    assert isinstance(result, P.ConnectionClosed)


def test_decode_frame_length_checks():
    frame = _valid_frame("preview")
    assert P.decode_frame(frame).type == "preview"
    with pytest.raises(P.ProtocolError, match="truncated"):
        P.decode_frame(frame[:-1])
    with pytest.raises(P.ProtocolError, match="bytes after the end"):
        P.decode_frame(frame + b"\0")
    with pytest.raises(P.ProtocolError, match="frame_too_large"):
        P.decode_frame(frame, max_payload=10)


# --------------------------------------------------------------------------------------------------------------
# header rejections (message-level: the stream stays usable)
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("header, contains", [
    (b'{"type": "ping", "v": 1', "not valid JSON"),
    (b"", "not valid JSON"),
    (b'\xef\xbb\xbf{"type": "ping", "v": 1}', "JSON"),
    (b'{"type": "ping", "v": 1, "nonce": "\xff"}', "not valid UTF-8 (byte 0xff"),
    (b'[1, 2]', "must be a JSON object, got array"),
    (b'"ping"', "must be a JSON object, got str"),
    (b'{"type": "progress", "v": 1, "job_id": "j", "stage": "s", "step": 1, "total": 2, "losses": {}, '
     b'"eta_s": NaN}', "NaN"),
    (b'{"type": "ping", "v": 1, "nonce": "x", "extra": Infinity}', "Infinity"),
    (b'{"type": "ping", "v": 1, "extra": -Infinity}', "-Infinity"),
    (b'{"type": "ping", "v": 1, "extra": 1e999}', "overflows to infinity"),
    (b'{"type": "ping", "v": 1, "type": "pong"}', "key 'type' twice"),
])
def test_bad_json(header, contains):
    err = _expect(_hand_frame(header), "bad_json", contains=contains)
    assert not err.fatal


def test_unknown_type():
    _expect(_hand_frame({"type": "reboot", "v": VER}), "unknown_type", contains="'reboot'")


def test_direction_is_enforced_when_asked():
    frame = _valid_frame("welcome")
    msg = P.decode_frame(frame)
    assert msg.type == "welcome"
    with pytest.raises(P.ProtocolError, match="unknown_type: 'welcome' is a server->client message"):
        P.decode_frame(frame, direction=P.CLIENT_TO_SERVER)
    assert P.decode_frame(frame, direction=P.SERVER_TO_CLIENT).type == "welcome"


@pytest.mark.parametrize("header", [
    {"type": "ping", "v": VER + 1},
    {"type": "ping", "v": 0},
    {"type": "hello", "v": VER, "protocol_version": VER + 1, "token": "t"},
    {"type": "welcome", "v": VER, "protocol_version": VER + 2, "server_version": "x", "device": "cpu", "pipelines": {},
     "default_model": "m", "models": []},
])
def test_wrong_version(header):
    err = _expect(_hand_frame(header), "version_mismatch", contains="protocol version")
    assert err.fatal


def test_version_is_checked_before_type():
    """A newer peer's new message type reports the real problem: the version."""
    _expect(_hand_frame({"type": "shiny_new_message", "v": VER + 1}), "version_mismatch")


@pytest.mark.parametrize("header, contains", [
    ({"type": "ping"}, 'no "v"'),
    ({"type": "ping", "v": True}, '"v" is bool'),
    ({"type": "ping", "v": "1"}, '"v" is str'),
    ({"type": "ping", "v": float(VER)}, '"v" is number'),
    ({"v": VER}, 'no "type"'),
    ({"type": 5, "v": VER}, '"type" is int'),
    ({"type": "cancel", "v": VER}, "cancel: missing required field 'job_id' (str)"),
    ({"type": "submit", "v": VER, "pipeline": "p"}, "missing required field 'params' (object)"),
    ({"type": "cancel", "v": VER, "job_id": 17}, "cancel.job_id is int 17, expected str"),
    ({"type": "submit", "v": VER, "pipeline": "p", "params": "x"}, "submit.params is str 'x', expected object"),
    ({"type": "accepted", "v": VER, "job_id": "j", "queue_position": True}, "queue_position is bool True"),
    ({"type": "accepted", "v": VER, "job_id": "j", "queue_position": 1.5}, "queue_position is number 1.5"),
    ({"type": "accepted", "v": VER, "job_id": "j", "queue_position": -1}, "must be >= 0"),
    ({"type": "list_jobs", "v": VER, "limit": 0}, "list_jobs.limit is 0, must be >= 1"),
    ({"type": "status", "v": VER, "job_id": "j", "status": "exploded"}, "expected one of queued, running"),
    ({"type": "preview", "v": VER, "job_id": "j", "step": 0, "decoder": "gan", "arrays": []}, "linear, vae"),
    ({"type": "progress", "v": VER, "job_id": "j", "stage": "s", "step": 1, "total": 2, "losses": {"a": "x"},
      "eta_s": None}, "progress.losses['a'] is str"),
    ({"type": "jobs", "v": VER, "jobs": [1]}, "jobs.jobs[0] is int 1, expected object"),
    ({"type": "ping", "v": VER, "nonce": "n", "extra": 1}, "ping: unknown field 'extra' (allowed: nonce)"),
    ({"type": "cancel", "v": VER, "job_id": "j", "token": "t"}, "unknown field 'token'"),
])
def test_bad_field(header, contains):
    err = _expect(_hand_frame(header), "bad_field", contains=contains)
    assert not err.fatal


def test_message_level_error_leaves_stream_in_sync(pair):
    a, b = pair
    bad = _hand_frame({"type": "cancel", "v": VER, "job_id": 5})
    bad_arrays = _mutate(_valid_frame("result"), lambda h: h["arrays"][0].update(dtype="float64"))
    a.sendall(bad + bad_arrays + _valid_frame("ping"))
    for code in ("bad_field", "bad_array"):
        with pytest.raises(P.ProtocolError) as info:
            P.recv_message(b)
        assert info.value.code == code and not info.value.fatal
    assert P.recv_message(b).fields == {"nonce": "n1"}


# --------------------------------------------------------------------------------------------------------------
# array table rejections
# --------------------------------------------------------------------------------------------------------------

def _entry(name):
    def pick(header):
        return next(e for e in header["arrays"] if e["name"] == name)
    return pick


@pytest.mark.parametrize("edit, contains", [
    (lambda h: _entry("mesh.v_pos")(h).update(name="mesh.normals"), "unknown kind 'normals'"),
    (lambda h: _entry("mesh.v_pos")(h).update(name="mesh v_pos"), "is not '<group>.<kind>'"),
    (lambda h: _entry("mesh.v_pos")(h).update(name="sketch.v_pos"), "does not carry array 'sketch.v_pos'"),
    (lambda h: _entry("mesh.uv_idx")(h).update(name="mesh.uv"), "'mesh.uv' appears twice"),
    (lambda h: _entry("mesh.v_pos")(h).update(dtype="float64"), "dtype 'float64', the wire allows only"),
    (lambda h: _entry("mesh.v_pos")(h).update(dtype="int32"), "mesh.v_pos has dtype int32, expected float32"),
    (lambda h: _entry("texture")(h).update(dtype="float16", nbytes=8 * 6 * 4 * 2), "expected uint8"),
    (lambda h: _entry("mesh.v_pos")(h).update(shape=[-6, 3]), "negative size"),
    (lambda h: _entry("mesh.v_pos")(h).update(shape=[2 ** 40, 3]), "needs 13194139533312"),
    (lambda h: _entry("mesh.v_pos")(h).update(shape=[2 ** 64, 3]), "needs"),
    (lambda h: _entry("mesh.v_pos")(h).update(shape=[6, 3.0]), "expected a list of ints"),
    (lambda h: _entry("mesh.v_pos")(h).update(shape=[18]), "expected (N, 3)"),
    (lambda h: _entry("mesh.v_pos")(h).update(shape=[9, 2]), "has 2 columns"),
    (lambda h: _entry("mesh.v_pos")(h).update(shape=[0, 3], nbytes=0), "has 0 vertices, needs at least 1"),
    (lambda h: _entry("mesh.v_pos")(h).update(nbytes=70), "nbytes 70 but shape [6, 3] of float32 needs 72"),
    (lambda h: _entry("mesh.v_pos")(h).update(offset=-8), "offset -8"),
    (lambda h: _entry("mesh.v_pos")(h).update(offset=10 ** 9), "but the payload has"),
    (lambda h: _entry("texture")(h).update(offset=_entry("texture")(h)["offset"] + 4), "but the payload has"),
    (lambda h: _entry("mesh.t_pos_idx")(h).update(offset=_entry("mesh.v_pos")(h)["offset"] + 8), "overlaps"),
    (lambda h: _entry("mesh.v_pos")(h).pop("nbytes"), "expected exactly"),
    (lambda h: _entry("mesh.v_pos")(h).update(stride=4), "expected exactly"),
    (lambda h: h.update(arrays={"mesh.v_pos": {}}), 'header "arrays" is object'),
    (lambda h: h["arrays"].append(7), "is int, expected an object"),
    (lambda h: h["arrays"].remove(_entry("mesh.t_pos_idx")(h)), "result requires array 'mesh.t_pos_idx'"),
])
def test_bad_array_table(edit, contains):
    _expect(_mutate(_valid_frame("result"), edit), "bad_array", contains=contains)


def test_arrays_on_a_message_without_arrays():
    frame = _hand_frame({"type": "ping", "v": VER}, {"image": np.zeros((1, 1, 3), np.uint8)})
    _expect(frame, "bad_array", contains="ping carries no arrays")
    with pytest.raises(P.ProtocolError, match="bad_array: ping carries no arrays, got 'image'"):
        P.encode_message("ping", {}, {"image": np.zeros((1, 1, 3), np.uint8)})


# --------------------------------------------------------------------------------------------------------------
# per-kind and group rules (frames written by hand: the encoder refuses all of these)
# --------------------------------------------------------------------------------------------------------------

SUBMIT = {"type": "submit", "v": VER, "pipeline": "latent_paint", "params": {}}


def _mesh_frame(**override):
    v_pos, t_pos_idx, uv, uv_idx = _tri_mesh(6)
    arrays = P.mesh_arrays("mesh", v_pos, t_pos_idx, uv, uv_idx)
    for key, value in override.items():
        if value is None:
            arrays.pop(f"mesh.{key}")
        else:
            arrays[f"mesh.{key}"] = value
    return _hand_frame(SUBMIT, arrays), arrays


def test_nan_and_inf_vertices():
    v_pos = _tri_mesh(6)[0].copy()
    v_pos[3, 1] = np.nan
    v_pos[5, 0] = np.inf
    v_pos[5, 2] = -np.inf
    frame, _ = _mesh_frame(v_pos=v_pos)
    err = _expect(frame, "non_finite", contains="mesh.v_pos has 3 non-finite values (first at vertex 3: [")
    assert not err.fatal
    only_inf = _tri_mesh(6)[0].copy()
    only_inf[7, 2] = np.inf
    _expect(_mesh_frame(v_pos=only_inf)[0], "non_finite", contains="1 non-finite value (first at vertex 7")


def test_non_finite_uv_colour_and_float16_image():
    uv = _tri_mesh(6)[2].copy()
    uv[11, 0] = np.nan
    _expect(_mesh_frame(uv=uv)[0], "non_finite", contains="mesh.uv has 1 non-finite value (first at uv 11")
    v_color = np.zeros((8, 3), np.float32)
    v_color[2, 1] = np.inf
    _expect(_mesh_frame(v_color=v_color)[0], "non_finite", contains="mesh.v_color has 1 non-finite value")
    img = np.zeros((4, 5, 3), np.float16)
    img[2, 3, 1] = np.inf
    _expect(_hand_frame(SUBMIT, {"cond.image": img}), "non_finite", contains="(row 2, column 3, channel 1)")


@pytest.mark.parametrize("bad_value, contains", [(8, "outside [0, 8) of mesh.v_pos"), (-1, "outside [0, 8)"),
                                                 (2 ** 31 - 1, "2147483647")])
def test_out_of_range_face_index(bad_value, contains):
    t_pos_idx = _tri_mesh(6)[1].copy()
    t_pos_idx[4, 2] = bad_value
    err = _expect(_mesh_frame(t_pos_idx=t_pos_idx)[0], "bad_array", contains=contains)
    assert "mesh.t_pos_idx has 1 index" in err.message and "first at face 4" in err.message


def test_out_of_range_uv_index():
    uv_idx = _tri_mesh(6)[3].copy()
    uv_idx[[1, 2], 0] = 18
    _expect(_mesh_frame(uv_idx=uv_idx)[0], "bad_array", contains="mesh.uv_idx has 2 indices outside [0, 18) of "
                                                                 "mesh.uv (first at face 1")


def test_group_consistency():
    _expect(_mesh_frame(uv=None)[0], "bad_array", contains="mesh.uv_idx needs mesh.uv in the same message")
    _expect(_mesh_frame(uv_idx=None)[0], "bad_array", contains="mesh.uv needs mesh.uv_idx")
    _expect(_mesh_frame(v_pos=None)[0], "bad_array", contains="mesh.t_pos_idx needs mesh.v_pos")
    _expect(_mesh_frame(uv_idx=_tri_mesh(6)[3][:5])[0], "bad_array",
            contains="mesh.uv_idx has 5 faces but mesh.t_pos_idx has 6")
    _expect(_mesh_frame(v_color=np.zeros((7, 4), np.float32))[0], "bad_array",
            contains="mesh.v_color has 7 vertices but mesh.v_pos has 8")
    # the same kinds in different groups do not satisfy each other
    v_pos, t_pos_idx, _, _ = _tri_mesh(2)
    _expect(_hand_frame(SUBMIT, {"a.v_pos": v_pos, "b.t_pos_idx": t_pos_idx}), "bad_array",
            contains="b.t_pos_idx needs b.v_pos")
    # a point set (v_pos alone) is a valid group
    assert P.decode_frame(_hand_frame(SUBMIT, {"points.v_pos": v_pos})).arrays["points.v_pos"].shape == (4, 3)


@pytest.mark.parametrize("shape, contains", [((4, 4, 2), "has 2 channels"), ((4, 4), "expected (H, W, C)"),
                                             ((0, 4, 3), "has 0 pixel rows"),
                                             ((P.MAX_IMAGE_SIDE + 1, 1, 1), "16385x1 pixels")])
def test_image_shape_rules(shape, contains):
    _expect(_hand_frame(SUBMIT, {"image": np.zeros(shape, np.uint8)}), "bad_array", contains=contains)


def test_message_slots_narrow_kind_rules():
    preview = {"type": "preview", "v": VER, "job_id": "j", "step": 0, "decoder": "vae"}
    _expect(_hand_frame(preview, {"image": np.zeros((2, 2, 4), np.uint8)}), "bad_array", contains="expected 3")
    _expect(_hand_frame(preview, {"image": np.zeros((2, 2, 3), np.float16)}), "bad_array", contains="expected uint8")
    _expect(_hand_frame(preview, {}), "bad_array", contains="preview requires array 'image'")
    result = dict(SAMPLES["result"][1], texture=np.zeros((2, 2, 1), np.uint8))
    _expect(_hand_frame({"type": "result", "v": VER, "job_id": "j", "metadata": {}}, result), "bad_array",
            contains="texture has 1 channel (shape [2, 2, 1]), expected 3 or 4")


# --------------------------------------------------------------------------------------------------------------
# several meshes in one partial/result (groups mesh, mesh_1, mesh_2, ...)
# --------------------------------------------------------------------------------------------------------------

RESULT = {"type": "result", "v": VER, "job_id": "j", "metadata": {}}


def _meshes(count: int) -> dict:
    arrays = {}
    for i in range(count):
        v_pos, t_pos_idx, _, _ = _tri_mesh(3 + i, seed=i)
        arrays.update(P.mesh_arrays("mesh" if i == 0 else f"mesh_{i}", v_pos, t_pos_idx))
    return arrays


def test_several_meshes_round_trip_in_order(pair):
    arrays = _meshes(3)
    v_pos, t_pos_idx, uv, uv_idx = _tri_mesh(5, seed=9)
    arrays.update(P.mesh_arrays("mesh_3", v_pos, t_pos_idx, uv, uv_idx, v_color=np.ones_like(v_pos)))
    arrays["texture"] = np.zeros((4, 4, 3), np.uint8)
    msg = _roundtrip(pair, "result", {"job_id": "j", "metadata": {"samples": 4}}, arrays)
    _assert_same_arrays(msg.arrays, arrays)
    assert P.mesh_groups(msg.arrays) == ["mesh", "mesh_1", "mesh_2", "mesh_3"]
    partial = _meshes(2)
    assert P.decode_frame(P.encode_message("partial", {"job_id": "j", "step": 3}, partial)).arrays.keys() == \
        partial.keys()
    # the largest count passes, one more does not
    assert len(P.mesh_groups(P.decode_frame(_hand_frame(RESULT, _meshes(P.MAX_MESHES))).arrays)) == P.MAX_MESHES
    _expect(_hand_frame(RESULT, _meshes(P.MAX_MESHES + 1)), "bad_array",
            contains=f"result does not carry array 'mesh_{P.MAX_MESHES}.v_pos'")


def test_mesh_groups_orders_by_number_not_by_name():
    arrays = {f"mesh_{i}.v_pos": None for i in (10, 2, 1)} | {"mesh.v_pos": None, "mesh_1.t_pos_idx": None,
                                                               "sketch.v_pos": None, "mesh_x.v_pos": None}
    assert P.mesh_groups(arrays) == ["mesh", "mesh_1", "mesh_2", "mesh_10"]
    assert P.mesh_groups({"texture": None}) == []


def test_each_numbered_mesh_is_checked_like_the_first():
    arrays = _meshes(3)
    # a group with v_pos but no t_pos_idx
    _expect(_hand_frame(RESULT, {k: v for k, v in arrays.items() if k != "mesh_2.t_pos_idx"}), "bad_array",
            contains="result requires array 'mesh_2.t_pos_idx'")
    _expect(_hand_frame(RESULT, {k: v for k, v in arrays.items() if k != "mesh_1.v_pos"}), "bad_array",
            contains="result requires array 'mesh_1.v_pos'")
    # index ranges are per group: mesh_1 has 6 vertices, mesh_2 has 7
    bad = dict(arrays)
    t = arrays["mesh_1.t_pos_idx"].copy()
    t[0, 0] = 6
    bad["mesh_1.t_pos_idx"] = t
    _expect(_hand_frame(RESULT, bad), "bad_array", contains="mesh_1.t_pos_idx has 1 index outside [0, 6) of mesh_1.v_pos")
    v = arrays["mesh_2.v_pos"].copy()
    v[1, 1] = np.nan
    _expect(_hand_frame(RESULT, dict(arrays, **{"mesh_2.v_pos": v})), "non_finite", contains="mesh_2.v_pos has 1")
    # kind rules narrowed by the slot hold for every group
    _expect(_hand_frame(RESULT, dict(arrays, **{"mesh_1.v_color": np.zeros((6, 2), np.float32)})), "bad_array",
            contains="mesh_1.v_color has 2 columns")
    # consecutive numbers, no leading zeros, no texture per numbered mesh, the first mesh still required
    _expect(_hand_frame(RESULT, {k: v for k, v in arrays.items() if not k.startswith("mesh_1.")}), "bad_array",
            contains="carries group mesh_2 but not mesh_1")
    renamed = {k.replace("mesh_1.", "mesh_01."): v for k, v in arrays.items()}
    _expect(_hand_frame(RESULT, renamed), "bad_array", contains="does not carry array 'mesh_01.v_pos'")
    _expect(_hand_frame(RESULT, dict(arrays, **{"mesh_1.texture": np.zeros((2, 2, 3), np.uint8)})), "bad_array",
            contains="does not carry array 'mesh_1.texture'")
    _expect(_hand_frame(RESULT, {k: v for k, v in arrays.items() if not k.startswith("mesh.")}), "bad_array",
            contains="result carries group mesh_1 but not mesh; numbered groups follow the first")
    # the encoder refuses the same
    with pytest.raises(P.ProtocolError, match="requires array 'mesh_2.t_pos_idx'"):
        P.encode_message("partial", {"job_id": "j", "step": 0},
                         {k: v for k, v in arrays.items() if k != "mesh_2.t_pos_idx"})
    # submit has no fixed slots: numbered names there are ordinary groups
    assert P.decode_frame(_hand_frame(SUBMIT, {"mesh_7.v_pos": arrays["mesh.v_pos"]})).arrays


# --------------------------------------------------------------------------------------------------------------
# point clouds in a partial/result (groups points, points_1, ...; version 4)
# --------------------------------------------------------------------------------------------------------------

def _clouds(count: int, colors: bool = True) -> dict:
    rng = np.random.default_rng(7)
    arrays = {}
    for i in range(count):
        n = 5 + i
        arrays.update(P.point_cloud_arrays("points" if i == 0 else f"points_{i}",
                                           rng.normal(size=(n, 3)).astype(np.float32),
                                           rng.random((n, 3)).astype(np.float32) if colors else None))
    return arrays


def test_point_clouds_round_trip_alone_and_beside_meshes(pair):
    clouds = _clouds(3)
    msg = _roundtrip(pair, "result", {"job_id": "j", "metadata": {}}, clouds)
    _assert_same_arrays(msg.arrays, clouds)
    assert P.point_groups(msg.arrays) == ["points", "points_1", "points_2"] and P.mesh_groups(msg.arrays) == []
    both = {**_meshes(2), **_clouds(2, colors=False)}
    msg = _roundtrip(pair, "result", {"job_id": "j", "metadata": {}}, both)
    assert P.mesh_groups(msg.arrays) == ["mesh", "mesh_1"] and P.point_groups(msg.arrays) == ["points", "points_1"]
    rgba = {"points.v_pos": np.zeros((2, 3), np.float32), "points.v_color": np.ones((2, 4), np.float32)}
    assert P.decode_frame(P.encode_message("partial", {"job_id": "j", "step": 1}, rgba)).arrays.keys() == rgba.keys()


def test_point_clouds_are_checked_like_meshes():
    clouds = _clouds(3)
    _expect(_hand_frame(RESULT, {}), "bad_array", contains="result carries nothing to show: it needs a mesh group "
                                                          "or a points group")
    _expect(_hand_frame(RESULT, {"texture": np.zeros((2, 2, 3), np.uint8)}), "bad_array",
            contains="carries nothing to show")
    _expect(_hand_frame(RESULT, {k: v for k, v in clouds.items() if k != "points_1.v_pos"}), "bad_array",
            contains="result requires array 'points_1.v_pos' (group points_1 is present")
    _expect(_hand_frame(RESULT, {k: v for k, v in clouds.items() if not k.startswith("points_1.")}), "bad_array",
            contains="carries group points_2 but not points_1")
    _expect(_hand_frame(RESULT, {k: v for k, v in clouds.items() if not k.startswith("points.")}), "bad_array",
            contains="carries group points_1 but not points")
    _expect(_hand_frame(RESULT, dict(clouds, **{"points_2.v_color": np.zeros((6, 3), np.float32)})), "bad_array",
            contains="points_2.v_color has 6 vertices but points_2.v_pos has 7")
    _expect(_hand_frame(RESULT, dict(clouds, **{"points.v_pos": np.zeros((0, 3), np.float32),
                                                "points.v_color": np.zeros((0, 3), np.float32)})), "bad_array",
            contains="points.v_pos has 0 vertices, needs at least 1")
    v = clouds["points_1.v_pos"].copy()
    v[2, 0] = np.inf
    _expect(_hand_frame(RESULT, dict(clouds, **{"points_1.v_pos": v})), "non_finite", contains="points_1.v_pos has 1")
    _expect(_hand_frame(RESULT, dict(clouds, **{"points.t_pos_idx": np.zeros((1, 3), np.int32)})), "bad_array",
            contains="result does not carry array 'points.t_pos_idx'")
    _expect(_hand_frame(RESULT, {"mesh.v_pos": clouds["points.v_pos"]}), "bad_array",
            contains="result requires array 'mesh.t_pos_idx' (group mesh is present)")
    with pytest.raises(ValueError, match="must be letters"):
        P.point_cloud_arrays("points.", np.zeros((1, 3), np.float32))


# --------------------------------------------------------------------------------------------------------------
# encoder refusals
# --------------------------------------------------------------------------------------------------------------

def test_encoder_refuses_float64_and_int64():
    v_pos, t_pos_idx, _, _ = _tri_mesh()
    with pytest.raises(P.ProtocolError) as info:
        P.encode_message("partial", {"job_id": "j", "step": 0}, P.mesh_arrays("mesh", v_pos.astype(np.float64),
                                                                              t_pos_idx))
    assert info.value.code == "bad_array"
    assert "mesh.v_pos has dtype float64, the wire takes float32; cast it first" in info.value.message
    with pytest.raises(P.ProtocolError, match="mesh.t_pos_idx has dtype int64, the wire takes int32"):
        P.encode_message("partial", {"job_id": "j", "step": 0}, P.mesh_arrays("mesh", v_pos,
                                                                              t_pos_idx.astype(np.int64)))
    for bad in (t_pos_idx.astype(np.uint32), t_pos_idx.astype(bool), t_pos_idx.tolist()):
        with pytest.raises(P.ProtocolError, match="bad_array"):
            P.encode_message("partial", {"job_id": "j", "step": 0}, P.mesh_arrays("mesh", v_pos, bad))


def test_encoder_runs_the_receiver_checks():
    v_pos, t_pos_idx, uv, uv_idx = _tri_mesh()
    v_pos = v_pos.copy()
    v_pos[2, 2] = np.nan
    with pytest.raises(P.ProtocolError, match="non_finite: mesh.v_pos has 1 non-finite value .first at vertex 2"):
        P.encode_message("result", {"job_id": "j", "metadata": {}}, P.mesh_arrays("mesh", v_pos, t_pos_idx))
    with pytest.raises(P.ProtocolError, match="bad_field: cancel: missing required field 'job_id'"):
        P.encode_message("cancel", {})
    with pytest.raises(P.ProtocolError, match="unknown_type"):
        P.encode_message("reboot")
    with pytest.raises(P.ProtocolError, match="'v' is part of the envelope"):
        P.encode_message("ping", {"v": 1})
    with pytest.raises(P.ProtocolError, match="version_mismatch"):
        P.encode_message("hello", {"protocol_version": VER + 1, "token": "t"})
    with pytest.raises(P.ProtocolError, match="non_finite: progress.eta_s is nan"):
        P.encode_message("progress", {"job_id": "j", "stage": "s", "step": 1, "total": 2, "losses": {},
                                      "eta_s": float("nan")})
    with pytest.raises(P.ProtocolError, match=r"non_finite: submit.params.cams\[1\] is not finite"):
        P.encode_message("submit", {"pipeline": "p", "params": {"cams": [1.0, float("inf")]}})
    with pytest.raises(P.ProtocolError, match="bad_field: submit.params cannot be encoded as JSON.*float32"):
        P.encode_message("submit", {"pipeline": "p", "params": {"lr": np.float32(0.1)}})
    with pytest.raises(P.ProtocolError, match="frame_too_large"):
        P.encode_message("submit", {"pipeline": "p", "params": {"prompt": "x" * P.MAX_HEADER_BYTES}})


# --------------------------------------------------------------------------------------------------------------
# property-style tests (seeded random)
# --------------------------------------------------------------------------------------------------------------

def _random_arrays(rng) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for g in range(rng.integers(0, 3)):
        n, f = int(rng.integers(1, 50)), int(rng.integers(1, 60))
        m = int(rng.integers(1, 40))
        v_pos = (rng.normal(size=(n, 3)) * 10.0 ** rng.integers(-30, 30)).astype(np.float32)
        mesh = P.mesh_arrays(f"g{g}", v_pos, rng.integers(0, n, (f, 3)).astype(np.int32),
                             *((rng.random((m, 2)).astype(np.float32), rng.integers(0, m, (f, 3)).astype(np.int32))
                               if rng.random() < 0.5 else ()),
                             v_color=rng.random((n, int(rng.choice([3, 4])))).astype(np.float32)
                             if rng.random() < 0.3 else None)
        arrays.update(mesh)
    if rng.random() < 0.6:
        shape = (int(rng.integers(1, 9)), int(rng.integers(1, 9)), int(rng.choice([1, 3, 4])))
        if rng.random() < 0.5:
            arrays["image"] = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            arrays["cond.image"] = rng.normal(size=shape).astype(np.float16)
    # random memory layouts and byte orders: the encoder must normalise them without changing values
    for name in list(arrays):
        arr = arrays[name]
        r = rng.random()
        if r < 0.2:
            arrays[name] = arr.astype(arr.dtype.newbyteorder(">"))
        elif r < 0.4 and arr.ndim >= 2:
            arrays[name] = np.asfortranarray(arr)
        elif r < 0.5:
            doubled = np.repeat(arr, 2, axis=-1)
            arrays[name] = doubled[..., ::2]  # strided view, same values
    keys = list(arrays)
    rng.shuffle(keys)
    return {k: arrays[k] for k in keys}


def test_random_round_trips_are_bit_identical(pair):
    rng = np.random.default_rng(1234)
    for trial in range(150):
        arrays = _random_arrays(rng)
        fields = {"pipeline": f"p{trial}", "params": {"x": float(rng.normal()), "s": "\u00fc" * int(trial % 5)}}
        frame = P.encode_message("submit", fields, arrays)
        msg = P.decode_frame(frame) if trial % 3 else _roundtrip(pair, "submit", fields, arrays)
        assert msg.fields == fields
        _assert_same_arrays(msg.arrays, arrays)
        for entry in json.loads(frame[16:16 + struct.unpack("!I", frame[4:8])[0]])["arrays"]:
            assert entry["offset"] % P.ARRAY_ALIGNMENT == 0


def test_random_corruption_only_ever_raises_protocol_error():
    """Flipping, inserting or cutting bytes anywhere in a frame never crashes the decoder with another error."""
    rng = np.random.default_rng(99)
    frame = _valid_frame("result")
    hl = struct.unpack("!I", frame[4:8])[0]
    outcomes = {"ok": 0}
    for trial in range(1500):
        data = bytearray(frame)
        r = trial % 3
        if r == 0:  # flip bytes inside the header (JSON text)
            for pos in rng.integers(16, 16 + hl, int(rng.integers(1, 4))):
                data[pos] = int(rng.integers(0, 256))
        elif r == 1:  # digits in the header changed: shapes, offsets, nbytes, versions
            digits = [i for i in range(16, 16 + hl) if chr(data[i]).isdigit()]
            pos = digits[int(rng.integers(len(digits)))]
            data[pos] = ord(str(int(rng.integers(10))))
        else:  # the prefix and the frame end
            pos = int(rng.integers(0, 16))
            data[pos] = int(rng.integers(0, 256))
            if rng.random() < 0.5:
                data = data[: int(rng.integers(0, len(data)))]
        try:
            P.decode_frame(bytes(data), max_payload=1 << 20)
            outcomes["ok"] += 1
        except P.ProtocolError as exc:
            outcomes[exc.code] = outcomes.get(exc.code, 0) + 1
    assert outcomes["bad_json"] > 0 and outcomes["bad_array"] > 0 and outcomes["bad_magic"] > 0


# --------------------------------------------------------------------------------------------------------------
# memory and throughput
# --------------------------------------------------------------------------------------------------------------

def _grid_mesh(n: int):
    """(n*n, 3) float32 grid v_pos, (2*(n-1)^2, 3) int32 t_pos_idx, per-vertex uv and uv_idx = t_pos_idx."""
    ys, xs = np.meshgrid(np.arange(n, dtype=np.float32), np.arange(n, dtype=np.float32), indexing="ij")
    v_pos = np.stack([xs.ravel(), ys.ravel(), np.sin(xs.ravel() * 0.1)], axis=1).astype(np.float32) / n
    i = np.arange(n - 1, dtype=np.int32)
    a = (i[:, None] * n + i[None, :]).ravel()
    quads = np.stack([a, a + 1, a + n + 1, a + n], axis=1)
    t_pos_idx = np.ascontiguousarray(np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]]), dtype=np.int32)
    uv = v_pos[:, :2].copy()
    arrays = (v_pos, t_pos_idx, uv, t_pos_idx.copy())
    assert all(a.flags.c_contiguous for a in arrays)
    return arrays


def test_encode_copies_each_array_once_and_recv_allocates_one_payload():
    v_pos, t_pos_idx, uv, uv_idx = _grid_mesh(600)
    arrays = P.mesh_arrays("mesh", v_pos, t_pos_idx, uv, uv_idx)
    total = sum(a.nbytes for a in arrays.values())
    tracemalloc.start()
    try:
        frame = P.encode_message("partial", {"job_id": "j", "step": 0}, arrays)
        _, peak = tracemalloc.get_traced_memory()
        assert peak < 1.15 * total, (peak, total)  # the frame itself, nothing else of that size

        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()  # includes the frame we are about to send
        result, _ = _recv_raw(frame, close=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(result, P.Message)
    assert peak - before < 1.15 * total, (peak - before, total)  # one payload buffer, arrays are views of it
    for arr in result.arrays.values():
        assert not arr.flags.owndata and not arr.flags.writeable


def test_throughput_one_million_triangles_with_uvs(pair):
    v_pos, t_pos_idx, uv, uv_idx = _grid_mesh(709)  # 1,002,528 triangles, 502,681 vertices
    assert t_pos_idx.shape[0] >= 1_000_000
    arrays = P.mesh_arrays("mesh", v_pos, t_pos_idx, uv, uv_idx)
    a, b = pair
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        sender = threading.Thread(target=P.send_message, args=(a, "result", {"job_id": "j", "metadata": {}}, arrays))
        sender.start()
        msg = P.recv_message(b)
        sender.join()
        best = min(best, time.perf_counter() - t0)
    np.testing.assert_array_equal(msg.arrays["mesh.uv_idx"], uv_idx)
    mb = sum(x.nbytes for x in arrays.values()) / 1e6
    print(f"\n1M-triangle mesh with UVs ({mb:.1f} MB): encode+send+recv+decode {best * 1e3:.0f} ms")
    assert best < 1.0


# --------------------------------------------------------------------------------------------------------------
# docs/protocol.md mirrors the schema
# --------------------------------------------------------------------------------------------------------------

def _doc_sections() -> dict[str, str]:
    text = DOC.read_text(encoding="utf-8")
    parts = re.split(r"^### ", text, flags=re.M)
    return {p.split("\n", 1)[0].strip(): p for p in parts[1:]}


def _table_rows(section: str, first_col: str) -> list[list[str]]:
    rows, inside = [], False
    for line in section.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[0] == first_col:
                inside = True
            elif inside and not set(cells[0]) <= set("-: "):
                rows.append(cells)
        else:
            inside = False
    return rows


def test_doc_lists_every_message_and_field_exactly():
    sections = _doc_sections()
    arrow = {P.CLIENT_TO_SERVER: "client → server", P.SERVER_TO_CLIENT: "server → client"}
    for msg_type, spec in P.MESSAGE_TYPES.items():
        title = f"`{msg_type}` ({arrow[spec.direction]})"
        assert title in sections, f"docs/protocol.md has no section '### {title}'"
        body = sections[title]
        rows = {r[0].strip("`"): r for r in _table_rows(body, "field")}
        assert set(rows) == set(spec.fields), (msg_type, set(rows) ^ set(spec.fields))
        for name, fs in spec.fields.items():
            _, type_str, required, rule, meaning = rows[name]
            assert type_str == fs.type_str, (msg_type, name, type_str)
            assert required == ("yes" if fs.required else "no"), (msg_type, name)
            for choice in fs.choices or ():
                assert f"`{choice}`" in rule, (msg_type, name, choice)
            if fs.minimum is not None:
                assert f"≥ {fs.minimum:g}" in rule, (msg_type, name)
            if fs.maximum is not None:
                assert f"≤ {fs.maximum:g}" in rule, (msg_type, name)
            if fs.max_len is not None:
                assert f"≤ {fs.max_len} characters" in rule, (msg_type, name, rule)
            if fs.items is not None:
                assert f"items: {' or '.join(fs.items)}" in rule, (msg_type, name)
            assert meaning, (msg_type, name)
        arrays = {r[0].strip("`"): r for r in _table_rows(body, "array")}
        if not spec.arrays_allowed:
            assert "Arrays: none." in body and not arrays, msg_type
        elif spec.array_slots is None:
            assert "Arrays: any" in body and not arrays, msg_type
        else:
            assert set(arrays) == {s.name for s in spec.array_slots}, msg_type
            for slot in spec.array_slots:
                kind = P.KIND_SPECS[P.split_array_name(slot.name)[1]]
                _, required, dtype, last = arrays[slot.name]
                assert required == slot.required_text, (msg_type, slot.name)
                assert dtype == " or ".join(slot.dtypes or kind.dtypes), (msg_type, slot.name)
                assert last == " or ".join(map(str, slot.last_dim or kind.last_dim)), (msg_type, slot.name)
            repeated = {P.split_array_name(s.name)[0] for s in spec.array_slots if s.repeat}
            for group in repeated:  # numbered groups are announced in the message's section
                assert "several meshes" in body and f"`{group}_1`" in body, (msg_type, group)
    documented = {t.split("`")[1] for t in sections if t.startswith("`") and "→" in t}
    assert documented == set(P.MESSAGE_TYPES)


def test_doc_lists_kinds_error_codes_and_limits():
    text = DOC.read_text(encoding="utf-8")
    sections = _doc_sections()
    kinds = {r[0].strip("`"): r for r in _table_rows(sections["Array kinds"], "kind")}
    assert set(kinds) == set(P.KIND_SPECS)
    for kind, ks in P.KIND_SPECS.items():
        _, dtype, shape, *_ = kinds[kind]
        assert dtype == " or ".join(ks.dtypes) and shape == ks.shape_doc, kind
    codes = {r[0].strip("`"): r for r in _table_rows(sections["Error codes"], "code")}
    assert set(codes) == set(P.ERROR_CODES)
    for code, row in codes.items():
        assert row[1] == ("yes" if code in P.FATAL_CODES else "no"), code
    server_codes = {r[0].strip("`"): r for r in _table_rows(sections["Server error codes"], "code")}
    assert set(server_codes) == set(P.SERVER_ERROR_CODES)
    for code, row in server_codes.items():
        assert row[2] == P.SERVER_ERROR_CODES[code], code
    limits = text.split("## 7. Limits", 1)[1].split("\n## ", 1)[0]
    for name in ("MAX_HELLO_BYTES", "HANDSHAKE_TIMEOUT_S", "MAX_ID_CHARS", "MAX_NAME_CHARS", "MAX_MESSAGE_CHARS",
                 "LIST_JOBS_MAX_LIMIT", "LIST_JOBS_DEFAULT_LIMIT", "MAX_PROMPT_CHARS", "MAX_COORDINATE", "ECHO_CHARS"):
        value = getattr(P, name)
        shown = f"{value:g}".replace("e+0", "e") if isinstance(value, float) else str(value)
        assert f"`{name}` = {shown}" in limits, name
    for value in (P.MAX_HEADER_BYTES, P.DEFAULT_MAX_PAYLOAD_BYTES, P.MAX_IMAGE_SIDE, P.ARRAY_ALIGNMENT):
        assert f"{value}" in text
    assert "hmac.compare_digest" in text and f"PROTOCOL_VERSION = {VER}" in text
    several = sections["Several meshes"]
    assert f"`MAX_MESHES` = {P.MAX_MESHES}" in several and f"`mesh_{P.MAX_MESHES - 1}`" in several


def _hexdump(data: bytes) -> str:
    return "\n".join(f"{i:04x}  " + " ".join(f"{b:02x}" for b in data[i:i + 16]) for i in range(0, len(data), 16))


def test_doc_worked_example_is_the_real_encoding():
    text = DOC.read_text(encoding="utf-8")
    v_pos = np.array([[0, 0, 0], [1, 0, 0], [0, 0, 1]], dtype=np.float32)
    t_pos_idx = np.array([[0, 1, 2]], dtype=np.int32)
    frame = P.encode_message("partial", {"job_id": "j1", "step": 0}, P.mesh_arrays("mesh", v_pos, t_pos_idx))
    header_len = struct.unpack("!I", frame[4:8])[0]
    block = re.search(r"<!-- example-hexdump -->\n```text\n(.*?)\n```", text, re.S)
    assert block, "docs/protocol.md lacks the example hexdump block"
    assert block.group(1) == _hexdump(frame)
    header = re.search(r"<!-- example-header -->\n```json\n(.*?)\n```", text, re.S)
    assert header and header.group(1) == frame[16:16 + header_len].decode()


# --------------------------------------------------------------------------------------------------------------
# version 3: bounded, encodable, range-checked fields; pre-auth frame bound; handshake deadline
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("header, contains", [
    ({"type": "ping", "v": VER, "nonce": "n" * (P.MAX_ID_CHARS + 1)}, "ping.nonce has 129 characters"),
    ({"type": "submit", "v": VER, "pipeline": "\x7f" * 150_000, "params": {}}, "submit.pipeline has 150000"),
    ({"type": "cancel", "v": VER, "job_id": "j" * 10_000}, "cancel.job_id has 10000 characters"),
    ({"type": "list_jobs", "v": VER, "limit": 2 ** 63}, "must be <= 500"),
    ({"type": "list_jobs", "v": VER, "limit": 0}, "must be >= 1"),
    ({"type": "list_jobs", "v": VER, "limit": 10 ** 400}, "must be <= 500"),
    ({"type": "list_jobs", "v": VER, "cursor": "c" * 1000}, "list_jobs.cursor has 1000"),
])
def test_fields_are_length_and_range_checked_without_echoing_the_value(header, contains):
    err = _expect(_hand_frame(header), "bad_field", contains=contains)
    assert len(err.message) < 300


@pytest.mark.parametrize("raw", [
    '{"type":"ping","v":%d,"nonce":"\\ud800"}',
    '{"type":"submit","v":%d,"pipeline":"p","params":{"prompt":"a\\udfffb"}}',
    '{"type":"submit","v":%d,"pipeline":"p","params":{"\\ud800":1}}',
    '{"type":"submit","v":%d,"pipeline":"p","params":{"x":[[{"y":"\\uDBFF"}]]}}',
])
def test_lone_surrogates_anywhere_are_bad_json(raw):
    err = _expect(_hand_frame((raw % VER).encode()), "bad_json", contains="lone surrogate")
    err.message.encode("utf-8")  # the error itself is always encodable


def test_surrogate_pairs_and_escaped_backslashes_are_fine():
    raw = ('{"type":"ping","v":%d,"nonce":"\\ud83d\\ude00 \\\\ud800"}' % VER).encode()
    msg, _ = _recv_raw(_hand_frame(raw))
    assert msg.fields["nonce"] == "\U0001F600 \\ud800"


def test_unknown_keys_and_types_are_quoted_briefly():
    err = _expect(_hand_frame({"type": "\x7f" * 150_000, "v": VER}), "unknown_type")
    assert len(err.message) < 600
    err = _expect(_hand_frame({"type": "ping", "v": VER, "k" * 100_000: 1}), "bad_field")
    assert len(err.message) < 600


def test_safe_text_caps_and_escapes():
    assert P.safe_text("abc") == "abc"
    out = P.safe_text("\x7f" * 250_000)
    assert len(out) == P.ECHO_CHARS and out.endswith("…")
    out = P.safe_text("a\ud800b", 50)
    assert out == "a\\ud800b" and out.encode("utf-8")
    assert len(P.safe_text("\udfff" * 1000, 30)) <= 30
    assert P.safe_text(12) == "12"


def test_encode_or_error_never_loses_a_reply():
    frame, err = P.encode_or_error("pong", {"nonce": "ok"})
    assert err is None and P.decode_frame(frame).type == "pong"
    for fields in ({"nonce": "\ud800"}, {"nonce": "x" * 10_000}):
        frame, err = P.encode_or_error("pong", fields)
        msg = P.decode_frame(frame)
        assert err is not None and msg.type == "error" and msg.fields["code"] == "internal"
    frame, err = P.encode_or_error("jobs", {"jobs": [{"prompt": "\ud800"}], "next_cursor": None})
    assert P.decode_frame(frame).fields["code"] == "internal"
    frame, err = P.encode_or_error("error", {"code": "bad_params", "message": "m" * 2_000_000, "job_id": "j1",
                                            "request_id": "\ud800"})
    msg = P.decode_frame(frame)
    assert msg.fields["job_id"] == "j1" and "request_id" not in msg.fields


def test_small_max_header_and_zero_payload_for_the_hello_frame():
    hello = P.encode_message("hello", {"protocol_version": VER, "token": "t"})
    msg, _ = _recv_raw(hello, max_payload=0)
    assert msg.type == "hello"
    # a tokenless peer announcing a huge header or any payload is refused from the 16-byte prefix alone
    for hl, pl in ((P.MAX_HELLO_BYTES + 1, 0), (100, 1 << 40), (100, 1)):
        a, b = socket.socketpair()
        with a, b:
            a.sendall(P.PREFIX.pack(P.MAGIC, hl, pl))
            with pytest.raises(P.ProtocolError) as info:
                P.recv_message(b, 0, max_header=P.MAX_HELLO_BYTES)
            assert info.value.code == "frame_too_large"


def test_deadline_covers_the_whole_frame_not_each_read():
    frame = P.encode_message("ping", {"nonce": "slow"})
    a, b = socket.socketpair()
    stop = threading.Event()

    def drip():
        for byte in frame:
            if stop.wait(0.05):
                return
            try:
                a.send(bytes([byte]))
            except OSError:
                return

    t = threading.Thread(target=drip)
    t.start()
    try:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            P.recv_message(b, deadline=time.monotonic() + 0.5)
        assert time.monotonic() - start < 1.5  # each byte came within 50 ms; the deadline still cut it at 0.5 s
    finally:
        stop.set()
        t.join()
        a.close()
        b.close()
