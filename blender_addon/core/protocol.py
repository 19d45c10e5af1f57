"""LatentForge wire protocol (version :data:`PROTOCOL_VERSION`): framing, message schema, validation, socket helpers.

The one source of truth for the bytes exchanged between the Blender add-on and the backend. Stdlib + numpy only
(it runs inside Blender and in the backend, which imports it as ``from blender_addon.core import protocol``).
Human-readable description with a worked example: ``docs/protocol.md`` (a test checks it against
:data:`MESSAGE_TYPES`, :data:`KIND_SPECS` and :data:`ERROR_CODES`).

Frame layout (all prefix integers big-endian)::

    prefix   16 bytes  struct "!4sIQ": MAGIC b"LFRG", header_len (uint32), payload_len (uint64)
    header   header_len bytes of UTF-8 JSON object {"type": str, "v": 1, ...fields..., "arrays": [entry, ...]}
             entry = {"name": str, "dtype": "float32"|"float16"|"int32"|"uint8", "shape": [int, ...],
                      "offset": int, "nbytes": int}            (offset/nbytes index into the payload)
    payload  payload_len bytes: raw little-endian C-order array bytes

Validation is generic: every rule lives in the data tables :data:`MESSAGE_TYPES` (fields and arrays per message)
and :data:`KIND_SPECS` (dtype/shape/value rules per array kind); the code below only interprets them. Every
rejection is a :class:`ProtocolError` whose ``code`` is one of :data:`ERROR_CODES` and whose ``message`` names the
message type, field or array and the bad value. Codes in :data:`FATAL_CODES` mean the connection must be closed
(the byte stream cannot be resynchronised, or the peer cannot be served); all other codes are raised only after a
complete frame was consumed, so the connection can stay open.

No pickle, no base64, no eval: headers are parsed with :func:`json.loads` (NaN/Infinity constants, numbers that
overflow to infinity and duplicate keys rejected) and arrays are :func:`numpy.frombuffer` views of the payload.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import struct
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

__all__ = [
    "PROTOCOL_VERSION", "MAGIC", "PREFIX", "PREFIX_BYTES", "MAX_HEADER_BYTES", "DEFAULT_MAX_PAYLOAD_BYTES",
    "ARRAY_ALIGNMENT", "MAX_IMAGE_SIDE", "MAX_MESHES", "WIRE_DTYPES", "ERROR_CODES", "FATAL_CODES", "JSON_TYPES",
    "MAX_HELLO_BYTES", "HANDSHAKE_TIMEOUT_S", "MAX_ID_CHARS", "MAX_NAME_CHARS", "MAX_MESSAGE_CHARS",
    "MAX_PROMPT_CHARS", "MAX_COORDINATE", "ECHO_CHARS", "LIST_JOBS_MAX_LIMIT", "LIST_JOBS_DEFAULT_LIMIT",
    "SERVER_ERROR_CODES", "LIST_PROMPT_CHARS", "safe_text", "encode_or_error",
    "CLIENT_TO_SERVER", "SERVER_TO_CLIENT", "JOB_STATUSES", "JOB_RECORD_KEYS", "ROLES",
    "ProtocolError", "ConnectionClosed", "FieldSpec", "ArraySlot", "KindSpec", "MessageSpec", "Message",
    "KIND_SPECS", "MESSAGE_TYPES",
    "encode_message", "decode_message", "decode_frame", "parse_prefix", "send_message", "recv_message",
    "tokens_match", "mesh_arrays", "mesh_groups", "point_cloud_arrays", "point_groups", "split_groups",
    "split_array_name", "MESH_GROUP", "POINTS_GROUP",
]

# ---------------------------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------------------------

PROTOCOL_VERSION = 6
"""Version carried in every header's ``"v"`` and in hello/welcome ``protocol_version``; a mismatch is fatal.
History: 1 = first release; 2 = ``partial``/``result`` may carry several meshes (groups ``mesh``, ``mesh_1``, …);
3 = length/range limits on fields, valid-Unicode strings only, ``list_jobs`` pages (``cursor`` → ``next_cursor``),
``delete_job`` → ``deleted``; 4 = ``partial``/``result`` may carry point clouds (groups ``points``, ``points_1``, …)
beside or instead of meshes; identities (``welcome.identity``/``role``, job records' ``owner``, an artist sees and
touches only their own jobs) and TLS (``tls_required``); ``welcome.memory_total_bytes``/``memory_free_bytes`` and the
``out_of_memory`` server code; 5 = the ``normal_map`` kind and slot; 6 = a ``submit`` may carry point clouds as inputs
(``points.v_pos``, optional ``points.v_color``; ``points_b.*``) where a pipeline takes one, in place of a mesh of the
same role (LION's variations, denoising, interpolation); ``welcome.pipelines[name].one_of_inputs``."""

MAGIC = b"LFRG"
"""First 4 bytes of every frame."""

PREFIX = struct.Struct("!4sIQ")
"""Frame prefix: magic (4 bytes), header_len (uint32 big-endian), payload_len (uint64 big-endian)."""

PREFIX_BYTES = PREFIX.size  # 16

MAX_HEADER_BYTES = 1 << 20
"""Largest accepted JSON header, 1 MiB (both directions, not configurable)."""

MAX_HELLO_BYTES = 1 << 16
"""Largest first frame a server reads before the token is checked, 64 KiB of header and no payload: an
unauthenticated peer costs the server at most this much buffer (:func:`recv_message` ``max_header``)."""

HANDSHAKE_TIMEOUT_S = 10.0
"""Seconds a server allows for the WHOLE handshake (connect to complete hello frame), not per read."""

MAX_ID_CHARS = 128
"""Longest ``job_id``, ``request_id``, ``nonce`` and ``cursor`` (characters)."""

MAX_NAME_CHARS = 64
"""Longest pipeline name (characters)."""

MAX_MESSAGE_CHARS = 4000
"""Longest ``error.message`` / ``status.error`` (characters); servers cap longer text with an ellipsis."""

MAX_PROMPT_CHARS = 4096
"""Longest text parameter of a submit (``prompt``, ``negative_prompt``, every other string in ``params``), in
characters; checked by the server at submit (``bad_params``) together with: valid Unicode, no control characters
other than tab and newline."""

MAX_COORDINATE = 1e6
"""Largest absolute vertex coordinate of a submitted mesh or point cloud, metres (|x|, |y|, |z|); larger is
``bad_mesh`` at submit."""

ECHO_CHARS = 200
"""At most this many characters of a client's value are quoted back in an error message (see :func:`safe_text`)."""

LIST_JOBS_MAX_LIMIT = 500
"""Largest ``list_jobs.limit``; a ``jobs`` page may hold fewer (its header must fit :data:`MAX_HEADER_BYTES`)."""

LIST_JOBS_DEFAULT_LIMIT = 50
"""Page size when ``list_jobs.limit`` is absent."""

DEFAULT_MAX_PAYLOAD_BYTES = 1 << 30
"""Default largest accepted payload, 1 GiB; each receiver may pass its own ``max_payload``."""

ARRAY_ALIGNMENT = 8
"""The encoder starts every array at a payload offset that is a multiple of this (zero padding in between);
decoders accept any offsets that satisfy the table rules."""

MAX_IMAGE_SIDE = 16384
"""Largest image/texture height or width in pixels."""

MAX_MESHES = 64
"""Most meshes one ``partial``/``result`` carries: groups ``mesh``, ``mesh_1`` … ``mesh_63``
(see :attr:`ArraySlot.repeat`); the same bound holds for point clouds (``points`` … ``points_63``)."""

MESH_GROUP = "mesh"
"""Group of the first mesh of a ``partial``/``result``; the others are ``mesh_1``, ``mesh_2``, …"""

POINTS_GROUP = "points"
"""Group of the first point cloud of a ``partial``/``result``; the others are ``points_1``, ``points_2``, …"""

WIRE_DTYPES: Mapping[str, np.dtype] = MappingProxyType({
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "int32": np.dtype("<i4"),
    "uint8": np.dtype("u1"),
})
"""The dtype allowlist: wire name -> little-endian numpy dtype. Nothing else travels (no float64/int64)."""

CLIENT_TO_SERVER = "client->server"
SERVER_TO_CLIENT = "server->client"

JOB_STATUSES = ("queued", "running", "done", "failed", "cancelled")
"""Values of ``status.status`` and of each ``jobs.jobs[i].status``."""

ROLES = ("artist", "admin")
"""Roles of an identity (``welcome.role``): an artist lists and touches only their own jobs, an admin every job."""

ERROR_CODES: Mapping[str, str] = MappingProxyType({
    "bad_magic": "the frame does not start with b'LFRG' (wrong port or a non-LatentForge peer)",
    "frame_too_large": "header_len > MAX_HEADER_BYTES or payload_len > the receiver's max_payload; "
                       "the body is not read",
    "truncated": "the peer closed the connection in the middle of a frame",
    "bad_json": "the header is not UTF-8, not JSON, not an object, or holds NaN/Infinity/duplicate keys",
    "unknown_type": "the message type is not in MESSAGE_TYPES, or is sent in the wrong direction",
    "bad_field": "a header field is missing, has the wrong JSON type or value, or is not in the schema",
    "bad_array": "an array entry or its data breaks a table, kind or group rule",
    "non_finite": "NaN or Inf in geometry/colour/float image data, or in a JSON number on encode",
    "version_mismatch": "the peer speaks another PROTOCOL_VERSION",
    "auth_failed": "the first message was not a hello with the right token",
})
"""Every :class:`ProtocolError` code, with what it means."""

SERVER_ERROR_CODES: Mapping[str, str] = MappingProxyType({
    "bad_params": "unknown pipeline, invalid params, or a text parameter that is too long or not valid text",
    "bad_mesh": "an input mesh or point cloud is unusable (degenerate, empty, or a coordinate beyond MAX_COORDINATE "
                "metres)",
    "bad_input": "another unusable input (e.g. a 1x1 image)",
    "not_found": "no job with that id",
    "not_attached": "cancel of a job this connection neither submitted nor attached to (attach first)",
    "job_finished": "cancel of a job that is already done, failed or cancelled",
    "not_ready": "get_result of a job that is still queued or running",
    "job_failed": "get_result of a failed or cancelled job",
    "job_active": "delete_job of a queued or running job (cancel it first)",
    "result_damaged": "a done job's stored result file is missing or unreadable (the message names the job and "
                      "the file); delete_job removes it",
    "model_not_found": "the model a job needs is not available",
    "out_of_memory": "the job ran out of device memory, or its model would not fit (refused before loading); the "
                     "backend emptied its model cache and takes the next job",
    "interrupted": "the backend stopped while the job was running",
    "tls_required": "a plain TCP client reached a backend that accepts TLS only (fatal: set the client's TLS "
                    "fingerprint)",
    "too_many_connections": "the server's connection limit is reached (fatal: the connection is closed)",
    "timeout": "the handshake did not complete in HANDSHAKE_TIMEOUT_S (fatal)",
    "overloaded": "the client does not read its replies fast enough, or the server's buffers are full (fatal)",
    "internal": "a server bug; the details are in the backend log, never in the message",
})
"""Codes the backend uses in ``error`` messages besides :data:`ERROR_CODES` (request and job errors)."""

FATAL_CODES = frozenset({"bad_magic", "frame_too_large", "truncated", "version_mismatch", "auth_failed"})
"""Codes after which the connection must be closed: framing errors (the stream cannot be resynchronised) and
errors where the peer cannot be served (other version, not authenticated). Every other code is raised only after
a complete frame was read, so the receiver answers with an ``error`` message and keeps the connection."""

JSON_TYPES = ("str", "int", "number", "bool", "object", "array", "null")
"""Type names used by :class:`FieldSpec`. ``int`` excludes bool; ``number`` accepts int or float (finite)."""

_RESERVED_KEYS = ("type", "v", "arrays")
_TABLE_KEYS = frozenset({"name", "dtype", "shape", "offset", "nbytes"})
_NAME_RE = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*\Z")
_MAX_NAME_LEN = 200


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------

class ProtocolError(Exception):
    """A frame or message that breaks the protocol.

    Attributes:
        code: one of :data:`ERROR_CODES` (str).
        message: what is wrong, naming the field/array and the bad value (str).
        fatal: True when ``code`` is in :data:`FATAL_CODES` (close the connection after reporting it).

    ``str(e) == f"{code}: {message}"``. Raises ``ValueError`` if constructed with a code not in
    :data:`ERROR_CODES`.
    """

    def __init__(self, code: str, message: str):
        if code not in ERROR_CODES:
            raise ValueError(f"unknown ProtocolError code {code!r} (known: {', '.join(ERROR_CODES)})")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def fatal(self) -> bool:
        """True when the connection must be closed after this error."""
        return self.code in FATAL_CODES

    def __reduce__(self):
        return (type(self), (self.code, self.message))


class ConnectionClosed(Exception):
    """The peer closed the connection cleanly between two frames (EOF before the first prefix byte)."""


# ---------------------------------------------------------------------------------------------------------------
# Schema as data
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FieldSpec:
    """One header field of a message type."""

    types: tuple[str, ...]
    """Accepted JSON types, names from :data:`JSON_TYPES` (e.g. ``("number", "null")``)."""
    required: bool = True
    """Whether the field must be present."""
    doc: str = ""
    """One-line meaning, mirrored in docs/protocol.md."""
    choices: tuple[Any, ...] | None = None
    """If set, the only allowed values."""
    minimum: float | None = None
    """If set, the smallest allowed value of an int/number field."""
    maximum: float | None = None
    """If set, the largest allowed value of an int/number field."""
    max_len: int | None = None
    """If set, the most characters a str field may have."""
    items: tuple[str, ...] | None = None
    """If set, the accepted JSON types of every element (array field) or every value (object field)."""

    @property
    def type_str(self) -> str:
        """The accepted JSON types joined with " or " (as written in docs/protocol.md)."""
        return " or ".join(self.types)


@dataclass(frozen=True)
class ArraySlot:
    """One array name a message type may carry, with rules narrower than its kind's (None = the kind's rule)."""

    name: str
    """Full array name, ``"<group>.<kind>"`` or ``"<kind>"``."""
    required: bool = False
    """Whether the message must carry this array."""
    dtypes: tuple[str, ...] | None = None
    """Allowed wire dtypes (subset of the kind's)."""
    last_dim: tuple[int, ...] | None = None
    """Allowed sizes of the last axis (e.g. image channels), subset of the kind's."""
    repeat: bool = False
    """The slot's group may also appear numbered, ``<group>_1`` … ``<group>_{MAX_MESHES - 1}`` (one more mesh
    each, consecutive from 1), with the same rules: a required slot is required in every numbered group present."""
    with_group: bool = False
    """Required whenever its group (or, with ``repeat``, a numbered copy of it) is present, though the group itself
    is optional (e.g. ``points.v_pos``: a result without point clouds carries no ``points`` group)."""

    @property
    def required_text(self) -> str:
        """The slot's "required" column in docs/protocol.md: ``yes``, ``with group`` or ``no``."""
        return "yes" if self.required else "with group" if self.with_group else "no"


@dataclass(frozen=True)
class KindSpec:
    """Rules for one array kind (the part of an array name after the last dot)."""

    dtypes: tuple[str, ...]
    """Allowed wire dtypes."""
    ndim: int
    """Number of axes."""
    last_dim: tuple[int, ...]
    """Allowed sizes of the last axis."""
    shape_doc: str
    """Shape as written in docs, e.g. ``"(N, 3)"``."""
    row_noun: str
    """What one row (axis-0 entry) is called in error messages: vertex, face, uv, pixel row."""
    min_rows: int = 1
    """Smallest allowed size of axis 0."""
    finite: bool = False
    """Float data must be finite (NaN/Inf -> ``non_finite``)."""
    max_side: int | None = None
    """If set, axes 0 and 1 (height, width) must be <= this."""
    needs: tuple[str, ...] = ()
    """Kinds that must be present in the same group."""
    index_into: str | None = None
    """If set, every value must be an index in ``[0, rows of that kind in the same group)``."""
    same_rows_as: str | None = None
    """If set, axis 0 must equal axis 0 of that kind in the same group."""
    doc: str = ""
    """One-line meaning, mirrored in docs/protocol.md."""


@dataclass(frozen=True)
class MessageSpec:
    """Schema of one message type."""

    direction: str
    """:data:`CLIENT_TO_SERVER` or :data:`SERVER_TO_CLIENT`."""
    fields: Mapping[str, FieldSpec]
    """Header fields (excluding the envelope keys "type", "v", "arrays")."""
    arrays_allowed: bool = False
    """Whether the message may carry arrays at all."""
    array_slots: tuple[ArraySlot, ...] | None = None
    """The array names the message may carry; None (with ``arrays_allowed``) = any name of a known kind."""
    doc: str = ""
    """One-line meaning, mirrored in docs/protocol.md."""
    any_of_groups: tuple[str, ...] = ()
    """If set, the message must carry at least one of these groups (e.g. a ``result``: a mesh or a point cloud)."""

    @property
    def array_kinds(self) -> frozenset[str]:
        """Kinds this message may carry (empty when arrays are not allowed)."""
        if not self.arrays_allowed:
            return frozenset()
        if self.array_slots is None:
            return frozenset(KIND_SPECS)
        return frozenset(split_array_name(slot.name)[1] for slot in self.array_slots)

    def slot(self, name: str) -> ArraySlot | None:
        """The slot for array ``name``, or None when the message has fixed slots and ``name`` is not one.

        ``mesh_3.v_pos`` resolves to the slot ``mesh.v_pos`` when that slot has ``repeat`` (numbers 1 …
        ``MAX_MESHES - 1``, no leading zeros).
        """
        if self.array_slots is None:
            return ArraySlot(name) if self.arrays_allowed else None
        for slot in self.array_slots:
            if slot.name == name:
                return slot
        base = _repeat_base(name)
        if base is not None:
            for slot in self.array_slots:
                if slot.repeat and slot.name == base[0]:
                    return slot
        return None


_GEOM = ("float32",)
_INDEX = ("int32",)
_IMAGE_DTYPES = ("uint8", "float16")

KIND_SPECS: Mapping[str, KindSpec] = MappingProxyType({
    "v_pos": KindSpec(_GEOM, 2, (3,), "(N, 3)", "vertex", finite=True,
                      doc="vertex positions, Blender world frame (right-handed, Z up), metres"),
    "t_pos_idx": KindSpec(_INDEX, 2, (3,), "(F, 3)", "face", needs=("v_pos",), index_into="v_pos",
                          doc="triangle vertex indices into the group's v_pos, counter-clockwise = front"),
    "uv": KindSpec(_GEOM, 2, (2,), "(M, 2)", "uv", finite=True, needs=("uv_idx",),
                   doc="texture coordinates, (0, 0) = bottom-left of the texture (Blender UV convention)"),
    "uv_idx": KindSpec(_INDEX, 2, (3,), "(F, 3)", "face", needs=("uv", "t_pos_idx"), index_into="uv",
                       same_rows_as="t_pos_idx", doc="per-face-corner indices into the group's uv"),
    "v_color": KindSpec(_GEOM, 2, (3, 4), "(N, 3) or (N, 4)", "vertex", finite=True, needs=("v_pos",),
                        same_rows_as="v_pos", doc="per-vertex linear RGB(A) colour in [0, 1]"),
    "image": KindSpec(_IMAGE_DTYPES, 3, (1, 3, 4), "(H, W, C)", "pixel row", finite=True, max_side=MAX_IMAGE_SIDE,
                      doc="image, row 0 = TOP; uint8 sRGB 0..255 or float16 linear; C = 1, 3 or 4"),
    "texture": KindSpec(_IMAGE_DTYPES, 3, (1, 3, 4), "(H, W, C)", "pixel row", finite=True,
                        max_side=MAX_IMAGE_SIDE,
                        doc="texture image for the mesh's uv, row 0 = TOP (V = 1); same rules as image"),
    "normal_map": KindSpec(("uint8",), 3, (3,), "(H, W, 3)", "pixel row", max_side=MAX_IMAGE_SIDE,
                           needs=("uv", "uv_idx"),
                           doc="tangent-space normal map for the group's uv, row 0 = TOP (V = 1); OpenGL convention "
                               "(rgb = (n + 1) / 2, green = +V), non-colour data"),
})
"""Array kind -> rules. An array name's kind is the part after its last dot."""


def _f(types: str, required: bool = True, doc: str = "", **kw) -> FieldSpec:
    return FieldSpec(tuple(types.split("|")), required, doc, **kw)


def _shape_slots() -> tuple[ArraySlot, ...]:
    """The slots of ``partial`` and ``result``: meshes (``mesh``, ``mesh_1``, …) and point clouds (``points``,
    ``points_1``, …), each group optional but at least one present (:attr:`MessageSpec.any_of_groups`)."""
    return (ArraySlot("mesh.v_pos", repeat=True, with_group=True),
            ArraySlot("mesh.t_pos_idx", repeat=True, with_group=True),
            ArraySlot("mesh.uv", repeat=True), ArraySlot("mesh.uv_idx", repeat=True),
            ArraySlot("mesh.v_color", repeat=True), ArraySlot("mesh.normal_map", repeat=True),
            ArraySlot("points.v_pos", repeat=True, with_group=True), ArraySlot("points.v_color", repeat=True))


_JOB_ID = "job id assigned by the server in accepted"


def _job_request(job_doc: str, doc: str) -> MessageSpec:
    """A client request whose only field is the ``job_id`` it is about."""
    return MessageSpec(CLIENT_TO_SERVER, MappingProxyType({"job_id": _f("str", doc=job_doc, max_len=MAX_ID_CHARS)}),
                       doc=doc)
_C2S, _S2C = CLIENT_TO_SERVER, SERVER_TO_CLIENT

MESSAGE_TYPES: Mapping[str, MessageSpec] = MappingProxyType({
    # client -> server
    "hello": MessageSpec(_C2S, MappingProxyType({
        "protocol_version": _f("int", doc="must equal PROTOCOL_VERSION, else version_mismatch"),
        "token": _f("str", doc="the token file's secret or an identity's token; compared with hmac.compare_digest",
                     max_len=1024),
        "client": _f("str", False, doc='free-form client description, e.g. "blender 4.2.1 / latentforge 0.1.0"',
                     max_len=256),
    }), doc="first message of every connection: version + token"),
    "submit": MessageSpec(_C2S, MappingProxyType({
        "pipeline": _f("str", doc="pipeline name from welcome.pipelines, e.g. latent_paint", max_len=MAX_NAME_CHARS),
        "params": _f("object", doc="pipeline parameters (prompt, seed, steps, ...), checked by the pipeline"),
        "request_id": _f("str", False, doc="client's id for this request, echoed in accepted", max_len=MAX_ID_CHARS),
    }), arrays_allowed=True, doc="queue a job; arrays are the pipeline inputs (e.g. mesh.v_pos, sketch.v_pos, "
                                 "points.v_pos)"),
    "cancel": _job_request("job to cancel (queued or running, submitted or attached on this connection)",
                           "cancel a job; answered by cancelled (or error)"),
    "attach": _job_request("job whose status/progress/preview/partial/result stream to resume",
                           "resume a job's event stream on this connection (after a reconnect)"),
    "list_jobs": MessageSpec(_C2S, MappingProxyType({
        "limit": _f("int", False, doc="most jobs in this page (default LIST_JOBS_DEFAULT_LIMIT = 50)", minimum=1,
                    maximum=LIST_JOBS_MAX_LIMIT),
        "cursor": _f("str", False, doc="jobs.next_cursor of the previous page; absent = the newest jobs",
                     max_len=MAX_ID_CHARS),
    }), doc="ask for one page of the job list, newest first; answered by jobs"),
    "get_result": _job_request("finished job whose result to send again",
                               "ask for a finished job's result; answered by result (or error)"),
    "delete_job": _job_request("finished (done, failed or cancelled) job to delete with its files",
                               "delete a finished job's record and files; answered by deleted (or error)"),
    "ping": MessageSpec(_C2S, MappingProxyType({
        "nonce": _f("str", False, doc="echoed in pong", max_len=MAX_ID_CHARS),
    }), doc="liveness check; answered by pong"),
    # server -> client
    "welcome": MessageSpec(_S2C, MappingProxyType({
        "protocol_version": _f("int", doc="must equal PROTOCOL_VERSION, else version_mismatch"),
        "server_version": _f("str", doc="backend package version"),
        "device": _f("str", doc='compute device, e.g. "cuda:0 (NVIDIA RTX 4090)" or "cpu"'),
        "memory_total_bytes": _f("int", False, doc="the device's memory (GPU memory; RAM for the CPU), bytes; "
                                                   "absent when unknown", minimum=0),
        "memory_free_bytes": _f("int", False, doc="what is free on it when the client connected, bytes; absent when "
                                                  "unknown", minimum=0),
        "pipelines": _f("object", doc="pipeline name -> description object (summary, inputs, optional_inputs, "
                                      "one_of_inputs, params)"),
        "default_model": _f("str", doc="model used when params do not name one"),
        "models": _f("array", doc="available models (ids or description objects)"),
        "identity": _f("str", doc='who the token belongs to, e.g. "alice"; "admin" for the token file',
                       max_len=MAX_NAME_CHARS),
        "role": _f("str", doc="artist = own jobs only; admin = every job", choices=ROLES),
    }), doc="answer to a good hello"),
    "accepted": MessageSpec(_S2C, MappingProxyType({
        "job_id": _f("str", doc="new job id", max_len=MAX_ID_CHARS),
        "request_id": _f("str", False, doc="submit.request_id, echoed", max_len=MAX_ID_CHARS),
        "queue_position": _f("int", doc="jobs ahead of this one (0 = runs next or now)", minimum=0),
    }), doc="a submit was queued"),
    "status": MessageSpec(_S2C, MappingProxyType({
        "job_id": _f("str", doc=_JOB_ID, max_len=MAX_ID_CHARS),
        "status": _f("str", doc="job state", choices=JOB_STATUSES),
        "queue_position": _f("int", False, doc="jobs ahead (queued jobs only)", minimum=0),
        "error": _f("str", False, doc="why the job failed (failed jobs only)", max_len=MAX_MESSAGE_CHARS),
    }), doc="job state change"),
    "progress": MessageSpec(_S2C, MappingProxyType({
        "job_id": _f("str", doc=_JOB_ID, max_len=MAX_ID_CHARS),
        "stage": _f("str", doc='current stage, e.g. "sds", "marching_cubes", "bake"'),
        "step": _f("int", doc="steps done in this stage", minimum=0),
        "total": _f("int", doc="steps in this stage", minimum=0),
        "losses": _f("object", doc="loss name -> latest value (null when not finite)", items=("number", "null")),
        "eta_s": _f("number|null", doc="estimated seconds to the end of the current stage, null if unknown", minimum=0),
    }), doc="optimization progress, at most a few per second"),
    "preview": MessageSpec(_S2C, MappingProxyType({
        "job_id": _f("str", doc=_JOB_ID, max_len=MAX_ID_CHARS),
        "step": _f("int", doc="step the preview was rendered at", minimum=0),
        "decoder": _f("str", doc="linear = 4x3 latent->RGB matrix, vae = full VAE decode", choices=("linear", "vae")),
    }), arrays_allowed=True, array_slots=(ArraySlot("image", True, ("uint8",), (3,)),),
        doc="preview render of the current state"),
    "partial": MessageSpec(_S2C, MappingProxyType({
        "job_id": _f("str", doc=_JOB_ID, max_len=MAX_ID_CHARS),
        "step": _f("int", doc="step the mesh was extracted at", minimum=0),
    }), arrays_allowed=True, array_slots=_shape_slots(), any_of_groups=(MESH_GROUP, POINTS_GROUP),
        doc="intermediate mesh(es) and/or point cloud(s)"),
    "result": MessageSpec(_S2C, MappingProxyType({
        "job_id": _f("str", doc=_JOB_ID, max_len=MAX_ID_CHARS),
        "metadata": _f("object", doc="pipeline, params, seed, timings, model ids, ..."),
    }), arrays_allowed=True,
        array_slots=_shape_slots() + (ArraySlot("texture", False, ("uint8",), (3, 4)),),
        any_of_groups=(MESH_GROUP, POINTS_GROUP),
        doc="final output of a done job (sent when it finishes, and on get_result)"),
    "error": MessageSpec(_S2C, MappingProxyType({
        "code": _f("str", doc="an ERROR_CODES code, or a SERVER_ERROR_CODES code", max_len=MAX_NAME_CHARS),
        "message": _f("str", doc="what went wrong, for the user", max_len=MAX_MESSAGE_CHARS),
        "job_id": _f("str", False, doc="job the error is about, if any", max_len=MAX_ID_CHARS),
        "request_id": _f("str", False, doc="submit.request_id of the rejected submit, echoed", max_len=MAX_ID_CHARS),
    }), doc="a request or frame was rejected, or a job-level failure"),
    "cancelled": MessageSpec(_S2C, MappingProxyType({
        "job_id": _f("str", doc="job that was cancelled", max_len=MAX_ID_CHARS),
    }), doc="a job was cancelled"),
    "jobs": MessageSpec(_S2C, MappingProxyType({
        "jobs": _f("array", doc="job records, newest first (see docs for their keys)", items=("object",)),
        "next_cursor": _f("str|null", doc="pass as list_jobs.cursor for the next (older) page; null = last page",
                          max_len=MAX_ID_CHARS),
    }), doc="answer to list_jobs: one page of job records"),
    "deleted": MessageSpec(_S2C, MappingProxyType({
        "job_id": _f("str", doc="job whose record and files were deleted", max_len=MAX_ID_CHARS),
    }), doc="answer to delete_job"),
    "pong": MessageSpec(_S2C, MappingProxyType({
        "nonce": _f("str", False, doc="ping.nonce, echoed", max_len=MAX_ID_CHARS),
    }), doc="answer to ping"),
})
"""Message type -> schema. docs/protocol.md mirrors this table (checked by tests/test_protocol.py)."""

JOB_RECORD_KEYS = ("job_id", "pipeline", "status", "prompt", "created", "started", "finished", "error", "params",
                   "owner")
"""Keys of each object in ``jobs.jobs`` (documented; not enforced by the protocol layer). In a listing ``prompt``
is capped at :data:`LIST_PROMPT_CHARS` characters and ``params`` omits the prompt (it is not carried twice)."""

LIST_PROMPT_CHARS = 300
"""Most characters of a job's prompt in a ``jobs`` record (longer prompts end with an ellipsis)."""


# ---------------------------------------------------------------------------------------------------------------
# Message
# ---------------------------------------------------------------------------------------------------------------

@dataclass(repr=False)
class Message:
    """A decoded message.

    Attributes:
        type: message type, a key of :data:`MESSAGE_TYPES`.
        fields: header fields, excluding "type", "v" and "arrays" (plain JSON values).
        arrays: array name -> read-only, C-contiguous numpy view of the payload, in table order, with the wire
            dtype (little-endian float32/float16/int32/uint8) and the shape from the header.
    """

    type: str
    fields: dict
    arrays: dict

    def __repr__(self) -> str:
        shown = {k: ("<redacted>" if k == "token" else v) for k, v in self.fields.items()}
        arrs = ", ".join(f"{n}: {a.dtype.name}{list(a.shape)}" for n, a in self.arrays.items())
        return f"Message(type={self.type!r}, fields={shown!r}, arrays={{{arrs}}})"


# ---------------------------------------------------------------------------------------------------------------
# Names and small helpers
# ---------------------------------------------------------------------------------------------------------------

def split_array_name(name: str) -> tuple[str, str]:
    """Split an array name into (group, kind): ``"mesh.v_pos" -> ("mesh", "v_pos")``, ``"texture" -> ("", "texture")``.

    The kind is the part after the last dot; the group may itself contain dots. No validation.
    """
    group, _, kind = name.rpartition(".")
    return group, kind


_REPEAT_RE = re.compile(r"(.+)_([1-9][0-9]*)\.([A-Za-z0-9_]+)\Z")


def _repeat_base(name: str) -> tuple[str, int] | None:
    """``"mesh_3.v_pos" -> ("mesh.v_pos", 3)`` when the number is in [1, MAX_MESHES); else None. No validation."""
    match = _REPEAT_RE.match(name)
    if match is None or int(match.group(2)) >= MAX_MESHES:
        return None
    return f"{match.group(1)}.{match.group(3)}", int(match.group(2))


def _short(value: Any, limit: int = 60) -> str:
    if isinstance(value, str) and len(value) > 4 * limit:
        value = value[: 4 * limit]  # repr of a huge string is never built
    elif isinstance(value, (dict, list)) and len(value) > limit:
        return f"<{_json_type(value)} of {len(value)} items>"
    try:
        text = repr(value)
    except RecursionError:
        text = f"<deeply nested {_json_type(value)}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def safe_text(value: Any, limit: int = ECHO_CHARS) -> str:
    """Text that is always safe to put into a reply: valid Unicode and at most ``limit`` characters.

    Lone surrogates (and anything else UTF-8 cannot encode) become ``\\udXXX`` escapes; longer text is cut and
    ends with ``…``. Non-str values are converted with ``str()`` first. Use it for every client value or stored
    text quoted in an ``error`` message or a job record.
    """
    if not isinstance(value, str):
        try:
            value = str(value)
        except Exception:  # noqa: BLE001 — a broken __str__ must not break the reply
            value = f"<{type(value).__name__}>"
    if len(value) > limit:
        value = value[: max(limit - 1, 0)] + "…"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "backslashreplace").decode("utf-8")
            if len(value) > limit:
                value = value[: max(limit - 1, 0)] + "…"
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "str"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__module__.replace("builtins", "") + "." + type(value).__name__


def _type_ok(actual: str, accepted: tuple[str, ...]) -> bool:
    return actual in accepted or (actual == "int" and "number" in accepted)


def _find_non_finite(value: Any, path: str) -> str | None:
    """Path of the first non-finite float inside a JSON-like value, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, dict):
        for k, v in value.items():
            hit = _find_non_finite(v, f"{path}.{k}")
            if hit:
                return hit
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            hit = _find_non_finite(v, f"{path}[{i}]")
            if hit:
                return hit
    return None


def tokens_match(expected: str, received: str) -> bool:
    """Constant-time comparison of the handshake token (``hmac.compare_digest`` on the UTF-8 bytes).

    Args:
        expected: the token from the server's token file (str, surrounding whitespace already stripped).
        received: ``hello.token`` (str).
    Returns:
        True when both are equal. Raises ``TypeError`` if either is not a str.
    """
    if not isinstance(expected, str) or not isinstance(received, str):
        raise TypeError(f"tokens must be str, got {type(expected).__name__} and {type(received).__name__}")
    return hmac.compare_digest(expected.encode("utf-8", "surrogatepass"), received.encode("utf-8", "surrogatepass"))


# ---------------------------------------------------------------------------------------------------------------
# Field validation (shared by encode and decode)
# ---------------------------------------------------------------------------------------------------------------

def _spec_for(msg_type: Any, direction: str | None = None) -> MessageSpec:
    if not isinstance(msg_type, str):
        raise ProtocolError("bad_field", f'header "type" is {_json_type(msg_type)} {_short(msg_type)}, expected str')
    spec = MESSAGE_TYPES.get(msg_type)
    if spec is None:
        raise ProtocolError("unknown_type", f"unknown message type {_short(msg_type)} "
                                            f"(known: {', '.join(MESSAGE_TYPES)})")
    if direction is not None and spec.direction != direction:
        raise ProtocolError("unknown_type", f"{msg_type!r} is a {spec.direction} message and may not be sent "
                                            f"{direction}")
    return spec


def _check_fields(msg_type: str, spec: MessageSpec, fields: Mapping[str, Any]) -> None:
    for name in fields:
        if name not in spec.fields:
            allowed = ", ".join(spec.fields) or "none"
            if name in _RESERVED_KEYS:
                raise ProtocolError("bad_field", f"{msg_type}: {name!r} is part of the envelope and set by the "
                                                 f"encoder, not a field")
            raise ProtocolError("bad_field", f"{msg_type}: unknown field {_short(name)} (allowed: {allowed})")
    for name, fs in spec.fields.items():
        if name not in fields:
            if fs.required:
                raise ProtocolError("bad_field", f"{msg_type}: missing required field {name!r} ({fs.type_str})")
            continue
        value = fields[name]
        actual = _json_type(value)
        if not _type_ok(actual, fs.types):
            raise ProtocolError("bad_field", f"{msg_type}.{name} is {actual} {_short(value)}, expected {fs.type_str}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ProtocolError("non_finite", f"{msg_type}.{name} is {value!r}; JSON has no NaN/Infinity "
                                              f"(send null where the schema allows it)")
        if fs.choices is not None and value not in fs.choices:
            raise ProtocolError("bad_field", f"{msg_type}.{name} is {_short(value)}, expected one of "
                                             f"{', '.join(map(str, fs.choices))}")
        if fs.minimum is not None and actual in ("int", "number") and value < fs.minimum:
            raise ProtocolError("bad_field", f"{msg_type}.{name} is {_short(value)}, must be >= {fs.minimum:g}")
        if fs.maximum is not None and actual in ("int", "number") and value > fs.maximum:
            raise ProtocolError("bad_field", f"{msg_type}.{name} is {_short(value)}, must be <= {fs.maximum:g}")
        if fs.max_len is not None and actual == "str" and len(value) > fs.max_len:
            raise ProtocolError("bad_field", f"{msg_type}.{name} has {len(value)} characters, the limit is "
                                             f"{fs.max_len}")
        if fs.items is not None:
            members = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in members:
                item_type = _json_type(item)
                if not _type_ok(item_type, fs.items):
                    raise ProtocolError("bad_field", f"{msg_type}.{name}[{key!r}] is {item_type} {_short(item)}, "
                                                     f"expected {' or '.join(fs.items)}")
        if name == "protocol_version" and value != PROTOCOL_VERSION:
            raise ProtocolError("version_mismatch", f"{msg_type}.protocol_version is {value}, this side speaks "
                                                    f"protocol version {PROTOCOL_VERSION}; update the add-on and "
                                                    f"the backend together")


# ---------------------------------------------------------------------------------------------------------------
# Array validation (shared by encode and decode)
# ---------------------------------------------------------------------------------------------------------------

def _array_rules(msg_type: str, spec: MessageSpec, name: Any) -> tuple[str, KindSpec, ArraySlot]:
    """Check an array name against the message spec; return (kind, kind spec, slot)."""
    if not isinstance(name, str) or not name or len(name) > _MAX_NAME_LEN or not _NAME_RE.match(name):
        raise ProtocolError("bad_array", f"{msg_type}: array name {_short(name)} is not '<group>.<kind>' or "
                                         f"'<kind>' made of letters, digits and '_'")
    if not spec.arrays_allowed:
        raise ProtocolError("bad_array", f"{msg_type} carries no arrays, got {name!r}")
    kind = split_array_name(name)[1]
    ks = KIND_SPECS.get(kind)
    if ks is None:
        raise ProtocolError("bad_array", f"{msg_type}: array {name!r} has unknown kind {kind!r} "
                                         f"(known kinds: {', '.join(KIND_SPECS)})")
    slot = spec.slot(name)
    if slot is None:
        allowed = ", ".join(s.name for s in spec.array_slots or ())
        raise ProtocolError("bad_array", f"{msg_type} does not carry array {name!r} (allowed: {allowed})")
    return kind, ks, slot


def _check_array_meta(msg_type: str, name: str, ks: KindSpec, slot: ArraySlot, dtype_name: str,
                      shape: tuple[int, ...]) -> None:
    """dtype and shape rules of one array (kind rules narrowed by the message's slot)."""
    dtypes = slot.dtypes or ks.dtypes
    if dtype_name not in dtypes:
        raise ProtocolError("bad_array", f"{name} has dtype {dtype_name}, expected {' or '.join(dtypes)}")
    if len(shape) != ks.ndim:
        raise ProtocolError("bad_array", f"{name} has shape {list(shape)}, expected {ks.shape_doc}")
    last_dim = slot.last_dim or ks.last_dim
    if shape[-1] not in last_dim:
        what = "channel" if ks.max_side else "column"
        raise ProtocolError("bad_array", f"{name} has {_plural(shape[-1], what)} (shape {list(shape)}), expected "
                                         f"{' or '.join(map(str, last_dim))}")
    if shape[0] < ks.min_rows:
        raise ProtocolError("bad_array", f"{name} has {_plural(shape[0], ks.row_noun)}, needs at least "
                                         f"{ks.min_rows}")
    if ks.max_side is not None:
        h, w = shape[0], shape[1]
        if not (1 <= h <= ks.max_side and 1 <= w <= ks.max_side):
            raise ProtocolError("bad_array", f"{name} is {h}x{w} pixels (H x W), each side must be in "
                                             f"[1, {ks.max_side}]")


def _plural(count: int, noun: str) -> str:
    plural = {"vertex": "vertices", "index": "indices", "value": "values"}.get(noun, noun + "s")
    return f"{count} {noun if count == 1 else plural}"


def _all_finite(arr: np.ndarray) -> bool:
    """True when every element is finite. Fast path: a finite sum proves it with one pass and no temporary
    (NaN/Inf propagate through a sum); a non-finite sum (NaN/Inf, or overflow of huge finite values) falls
    back to the exact element test."""
    total = arr.sum(dtype=np.float64 if arr.dtype.itemsize > 2 else np.float32)
    return bool(np.isfinite(total)) or bool(np.isfinite(arr).all())


def _first_bad_row_text(name: str, ks: KindSpec, arr: np.ndarray, bad: np.ndarray) -> str:
    flat = int(np.argmax(bad.reshape(-1)))
    where = np.unravel_index(flat, arr.shape)
    if ks.max_side is not None:
        return f"first at pixel (row {where[0]}, column {where[1]}, channel {where[2]})"
    row = int(where[0])
    return f"first at {ks.row_noun} {row}: {arr[row].tolist()}"


def _check_array_contents(msg_type: str, spec: MessageSpec, arrays: Mapping[str, np.ndarray]) -> None:
    """Group consistency, required slots and value rules (finite, index ranges) of a whole message's arrays.

    ``arrays`` hold wire dtypes and passed :func:`_check_array_meta`.
    """
    for slot in spec.array_slots or ():
        if slot.required and slot.name not in arrays:
            raise ProtocolError("bad_array", f"{msg_type} requires array {slot.name!r}")
    _check_repeated_groups(msg_type, spec, arrays)
    groups = split_groups(arrays)
    if spec.any_of_groups and not any(g in groups for g in spec.any_of_groups):
        wanted = " or ".join(f"a {g} group" for g in spec.any_of_groups)
        raise ProtocolError("bad_array", f"{msg_type} carries nothing to show: it needs {wanted} (arrays: "
                                         f"{', '.join(_short(n, 40) for n in list(arrays)[:5]) or 'none'})")
    for slot in spec.array_slots or ():
        group, kind = split_array_name(slot.name)
        if slot.with_group and group in groups and kind not in groups[group]:
            raise ProtocolError("bad_array", f"{msg_type} requires array {slot.name!r} (group {group} is present)")
    # 1) structure: needed kinds and matching row counts (cheap, before any data pass)
    for group, members in groups.items():
        prefix = f"{group}." if group else ""
        for kind, arr in members.items():
            ks = KIND_SPECS[kind]
            for need in ks.needs:
                if need not in members:
                    raise ProtocolError("bad_array", f"{prefix}{kind} needs {prefix}{need} in the same message")
            if ks.same_rows_as is not None:
                other = members[ks.same_rows_as]
                if arr.shape[0] != other.shape[0]:
                    raise ProtocolError("bad_array", f"{prefix}{kind} has {_plural(arr.shape[0], ks.row_noun)} but "
                                                     f"{prefix}{ks.same_rows_as} has {other.shape[0]}; they must "
                                                     f"match")
    # 2) values
    for group, members in groups.items():
        prefix = f"{group}." if group else ""
        for kind, arr in members.items():
            ks = KIND_SPECS[kind]
            name = prefix + kind
            if ks.finite and arr.dtype.kind == "f" and not _all_finite(arr):
                bad = ~np.isfinite(arr)
                count = int(np.count_nonzero(bad))
                if count:
                    raise ProtocolError("non_finite", f"{name} has {_plural(count, 'non-finite value')} "
                                                      f"({_first_bad_row_text(name, ks, arr, bad)})")
            if ks.index_into is not None and arr.size:
                n = members[ks.index_into].shape[0]
                lo, hi = int(arr.min()), int(arr.max())
                if lo < 0 or hi >= n:
                    bad = (arr < 0) | (arr >= n)
                    count = int(np.count_nonzero(bad))
                    raise ProtocolError("bad_array", f"{name} has {_plural(count, 'index')} outside [0, {n}) of "
                                                     f"{prefix}{ks.index_into} "
                                                     f"({_first_bad_row_text(name, ks, arr, bad)})")


def _check_repeated_groups(msg_type: str, spec: MessageSpec, arrays: Mapping[str, np.ndarray]) -> None:
    """Numbered groups (``mesh_1`` …) of repeatable slots: consecutive from 1, each with the required slots."""
    repeating = [s for s in spec.array_slots or () if s.repeat]
    if not repeating:
        return
    numbers: dict[str, set[int]] = {}
    for name in arrays:
        if name in (s.name for s in repeating):
            continue
        base = _repeat_base(name)
        if base is not None and spec.slot(name) is not None:
            numbers.setdefault(split_array_name(base[0])[0], set()).add(base[1])
    groups = {split_array_name(name)[0] for name in arrays}
    for group, present in numbers.items():
        if group not in groups:
            raise ProtocolError("bad_array", f"{msg_type} carries group {group}_{min(present)} but not {group}; "
                                             f"numbered groups follow the first, unnumbered one")
        gap = next(i for i in range(1, max(present) + 2) if i not in present)
        if gap < max(present):
            raise ProtocolError("bad_array", f"{msg_type} carries group {group}_{max(present)} but not {group}_{gap}; "
                                             f"numbered groups must be consecutive from {group}_1")
        for slot in repeating:
            slot_group, kind = split_array_name(slot.name)
            if slot_group != group or not (slot.required or slot.with_group):
                continue
            for i in sorted(present):
                if f"{group}_{i}.{kind}" not in arrays:
                    raise ProtocolError("bad_array", f"{msg_type} requires array {f'{group}_{i}.{kind}'!r} (group "
                                                     f"{group}_{i} is present, and every numbered group needs what "
                                                     f"{group} needs)")


# ---------------------------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------------------------

_NATIVE_TO_WIRE = {("f", 4): "float32", ("f", 2): "float16", ("i", 4): "int32", ("u", 1): "uint8"}


def _to_wire_array(msg_type: str, name: str, arr: Any, ks: KindSpec, slot: ArraySlot) -> tuple[str, np.ndarray]:
    if not isinstance(arr, np.ndarray):
        raise ProtocolError("bad_array", f"{name} is a {type(arr).__name__}, expected a numpy.ndarray")
    dtypes = slot.dtypes or ks.dtypes
    wire = _NATIVE_TO_WIRE.get((arr.dtype.kind, arr.dtype.itemsize))
    if wire is None or wire not in dtypes:
        raise ProtocolError("bad_array", f"{name} has dtype {arr.dtype.name}, the wire takes "
                                         f"{' or '.join(dtypes)}; cast it first, e.g. "
                                         f"arr.astype(np.{dtypes[0]}) (check the value range)")
    _check_array_meta(msg_type, name, ks, slot, wire, arr.shape)
    # No copy when already little-endian and C-contiguous; otherwise exactly one.
    return wire, np.ascontiguousarray(arr, dtype=WIRE_DTYPES[wire])


def encode_message(msg_type: str, fields: Mapping[str, Any] | None = None,
                   arrays: Mapping[str, np.ndarray] | None = None) -> bytes:
    """Validate a message against :data:`MESSAGE_TYPES` and build its complete frame.

    Args:
        msg_type: a key of :data:`MESSAGE_TYPES`.
        fields: header fields (JSON values: str, int, float, bool, None, dict with str keys, list); must not
            contain "type", "v" or "arrays".
        arrays: array name (``"<group>.<kind>"`` or ``"<kind>"``) -> numpy array with exactly a wire dtype allowed
            for its kind (float32 / float16 / int32 / uint8, any byte order and memory layout). Big-endian or
            non-contiguous arrays are converted with one copy; all others are not copied before the final join.
    Returns:
        The frame as one ``bytes``: prefix + header + payload (each array at an offset that is a multiple of
        :data:`ARRAY_ALIGNMENT`). Each array's bytes are copied exactly once (into this buffer).
    Raises:
        ProtocolError: with the same codes a receiver would use — unknown_type, bad_field, bad_array (including
            float64/int64/other dtypes: cast them yourself), non_finite (NaN/Inf in geometry or in a JSON number),
            version_mismatch (protocol_version != PROTOCOL_VERSION), frame_too_large (header > MAX_HEADER_BYTES).
    """
    spec = _spec_for(msg_type)
    fields = {} if fields is None else fields
    arrays = {} if arrays is None else arrays
    _check_fields(msg_type, spec, fields)

    wire: dict[str, np.ndarray] = {}
    wire_names: dict[str, str] = {}
    for name, arr in arrays.items():
        _kind, ks, slot = _array_rules(msg_type, spec, name)
        wire_names[name], wire[name] = _to_wire_array(msg_type, name, arr, ks, slot)
    _check_array_contents(msg_type, spec, wire)

    table, parts, offset = [], [], 0
    for name, arr in wire.items():
        pad = -offset % ARRAY_ALIGNMENT
        if pad:
            parts.append(bytes(pad))
            offset += pad
        table.append({"name": name, "dtype": wire_names[name], "shape": list(arr.shape), "offset": offset,
                      "nbytes": arr.nbytes})
        parts.append(memoryview(arr.reshape(-1).view(np.uint8)))
        offset += arr.nbytes

    header: dict[str, Any] = {"type": msg_type, "v": PROTOCOL_VERSION}
    for name in spec.fields:  # schema order: deterministic bytes whatever the caller's dict order
        if name in fields:
            header[name] = fields[name]
    header["arrays"] = table
    try:
        header_bytes = json.dumps(header, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        for name, value in fields.items():
            path = _find_non_finite(value, f"{msg_type}.{name}")
            if path:
                raise ProtocolError("non_finite", f"{path} is not finite; JSON has no NaN/Infinity "
                                                  f"(send null or drop it)") from None
        for name, value in fields.items():
            try:
                json.dumps(value, ensure_ascii=False).encode("utf-8")
            except (ValueError, TypeError, UnicodeEncodeError) as inner:
                raise ProtocolError("bad_field", f"{msg_type}.{name} cannot be encoded as JSON: {inner}") from None
        raise ProtocolError("bad_field", f"{msg_type}: header cannot be encoded as JSON: {exc}") from None
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise ProtocolError("frame_too_large", f"{msg_type} header is {len(header_bytes)} bytes, the limit is "
                                               f"{MAX_HEADER_BYTES} (send fewer/smaller fields, e.g. a lower "
                                               f"list_jobs limit)")
    return b"".join([PREFIX.pack(MAGIC, len(header_bytes), offset), header_bytes, *parts])


# ---------------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------------

def parse_prefix(prefix: bytes | bytearray | memoryview, max_payload: int = DEFAULT_MAX_PAYLOAD_BYTES, *,
                 max_header: int = MAX_HEADER_BYTES) -> tuple[int, int]:
    """Check a 16-byte frame prefix; return ``(header_len, payload_len)`` in bytes.

    Use it to read frames from any byte stream (e.g. asyncio): read 16 bytes, call this, then read exactly
    header_len + payload_len bytes and pass them to :func:`decode_message`. Nothing is allocated from the
    lengths before they pass the limits.

    Args:
        max_header: this receiver's header limit, at most :data:`MAX_HEADER_BYTES` (a server reading the first,
            unauthenticated frame passes :data:`MAX_HELLO_BYTES` and ``max_payload=0``).
    Raises:
        ProtocolError: truncated (fewer than 16 bytes), bad_magic, frame_too_large (header_len > max_header
            or payload_len > max_payload). All fatal: close the connection.
    """
    if len(prefix) != PREFIX_BYTES:
        raise ProtocolError("truncated", f"frame prefix has {len(prefix)} bytes, expected {PREFIX_BYTES}")
    magic, header_len, payload_len = PREFIX.unpack(prefix)
    if magic != MAGIC:
        hint = " (looks like HTTP)" if magic in (b"GET ", b"POST", b"HEAD", b"PUT ") else ""
        raise ProtocolError("bad_magic", f"frame starts with {magic!r}, expected {MAGIC!r}{hint}; is this port a "
                                         f"LatentForge backend/client?")
    max_header = min(max_header, MAX_HEADER_BYTES)
    if header_len > max_header:
        raise ProtocolError("frame_too_large", f"header_len is {header_len} bytes, the limit is {max_header}")
    if payload_len > max_payload:
        raise ProtocolError("frame_too_large", f"payload_len is {payload_len} bytes, this receiver's limit is "
                                               f"{max_payload} (max_payload)")
    return header_len, payload_len


def _reject_constant(name: str) -> Any:
    raise ProtocolError("bad_json", f"header JSON contains {name}, which is not valid JSON (no NaN/Infinity)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError("bad_json", f"header JSON number {_short(text)} overflows to infinity")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ProtocolError("bad_json", f"header JSON object has the key {_short(dup)} twice")
    return obj


def _parse_header(header: bytes | bytearray | memoryview) -> dict:
    raw = bytes(header)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("bad_json", f"header is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset "
                                        f"{exc.start})") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float,
                         object_pairs_hook=_unique_keys)
    except ProtocolError:
        raise
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("bad_json", f"header is not valid JSON: {_short(str(exc), 120)}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_json", f"header must be a JSON object, got {_json_type(obj)}")
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(obj):
        raise ProtocolError("bad_json", "header JSON has a string with a lone surrogate escape (\\ud800-\\udfff "
                                        "without its pair); strings must be valid Unicode")
    return obj


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def _has_lone_surrogate(obj: Any) -> bool:
    """True when a key or string anywhere in a parsed JSON value holds a lone surrogate (iterative walk)."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings = (item,)
        elif isinstance(item, dict):
            strings = tuple(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for text in strings:
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    return True
    return False


@dataclass
class _Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def _parse_table(msg_type: str, spec: MessageSpec, table: Any, payload_len: int) -> list[_Entry]:
    if not isinstance(table, list):
        raise ProtocolError("bad_array", f'{msg_type}: header "arrays" is {_json_type(table)}, expected a list')
    if table and not spec.arrays_allowed:
        raise ProtocolError("bad_array", f"{msg_type} carries no arrays, got {len(table)}")
    entries: list[_Entry] = []
    seen: set[str] = set()
    for i, entry in enumerate(table):
        if not isinstance(entry, dict):
            raise ProtocolError("bad_array", f"{msg_type}: arrays[{i}] is {_json_type(entry)}, expected an object")
        missing, extra = _TABLE_KEYS - entry.keys(), entry.keys() - _TABLE_KEYS
        if missing or extra:
            raise ProtocolError("bad_array", f"{msg_type}: arrays[{i}] has keys {sorted(entry)}, expected exactly "
                                             f"{sorted(_TABLE_KEYS)}")
        name = entry["name"]
        _kind, ks, slot = _array_rules(msg_type, spec, name)
        if name in seen:
            raise ProtocolError("bad_array", f"{msg_type}: array {name!r} appears twice")
        seen.add(name)
        dtype = entry["dtype"]
        if not isinstance(dtype, str) or dtype not in WIRE_DTYPES:
            raise ProtocolError("bad_array", f"{name} has dtype {_short(dtype)}, the wire allows only "
                                             f"{', '.join(WIRE_DTYPES)}")
        shape = entry["shape"]
        if not isinstance(shape, list) or not all(type(d) is int for d in shape):
            raise ProtocolError("bad_array", f"{name} has shape {_short(shape)}, expected a list of ints")
        if any(d < 0 for d in shape):
            raise ProtocolError("bad_array", f"{name} has shape {shape} with a negative size")
        _check_array_meta(msg_type, name, ks, slot, dtype, tuple(shape))
        offset, nbytes = entry["offset"], entry["nbytes"]
        for key, value in (("offset", offset), ("nbytes", nbytes)):
            if type(value) is not int or value < 0:
                raise ProtocolError("bad_array", f"{name} has {key} {_short(value)}, expected an int >= 0")
        expected = math.prod(shape) * WIRE_DTYPES[dtype].itemsize
        if nbytes != expected:
            raise ProtocolError("bad_array", f"{name} has nbytes {nbytes} but shape {shape} of {dtype} needs "
                                             f"{expected}")
        if offset + nbytes > payload_len:
            raise ProtocolError("bad_array", f"{name} occupies payload bytes [{offset}, {offset + nbytes}) but the "
                                             f"payload has {payload_len} bytes")
        entries.append(_Entry(name, dtype, tuple(shape), offset, nbytes))
    spans = sorted((e.offset, e.offset + e.nbytes, e.name) for e in entries if e.nbytes)
    for (_s0, e0, n0), (s1, _e1, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise ProtocolError("bad_array", f"{n1} (payload bytes from {s1}) overlaps {n0} (bytes up to {e0})")
    return entries


def decode_message(header: bytes | bytearray | memoryview, payload: bytes | bytearray | memoryview, *,
                   direction: str | None = None) -> Message:
    """Validate and decode one message from its header and payload bytes (the prefix already checked).

    Args:
        header: the UTF-8 JSON header bytes.
        payload: the payload bytes; the returned arrays are read-only views into it (no copy), so keep it alive
            and unmodified while the arrays are in use.
        direction: if given (:data:`CLIENT_TO_SERVER` on the server, :data:`SERVER_TO_CLIENT` on the client),
            a message type of the other direction is rejected with ``unknown_type``.
    Returns:
        :class:`Message` with ``fields`` (JSON values) and ``arrays`` (read-only, C-contiguous little-endian
        numpy views: float32/float16/int32/uint8, shapes from the header).
    Raises:
        ProtocolError: bad_json, version_mismatch, unknown_type, bad_field, bad_array, non_finite (see
            :data:`ERROR_CODES`). The frame is fully consumed, so only version_mismatch is fatal.
    """
    obj = _parse_header(header)
    if "v" not in obj:
        raise ProtocolError("bad_field", 'header has no "v" (protocol version)')
    v = obj["v"]
    if type(v) is not int:
        raise ProtocolError("bad_field", f'header "v" is {_json_type(v)} {_short(v)}, expected int')
    if v != PROTOCOL_VERSION:
        raise ProtocolError("version_mismatch", f"peer speaks protocol version {v}, this side speaks "
                                                f"{PROTOCOL_VERSION}; update the add-on and the backend together")
    if "type" not in obj:
        raise ProtocolError("bad_field", 'header has no "type"')
    msg_type = obj["type"]
    spec = _spec_for(msg_type, direction)
    fields = {k: val for k, val in obj.items() if k not in _RESERVED_KEYS}
    _check_fields(msg_type, spec, fields)

    view = memoryview(payload)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    view = view.toreadonly()
    entries = _parse_table(msg_type, spec, obj.get("arrays", []), view.nbytes)
    arrays = {e.name: np.frombuffer(view[e.offset:e.offset + e.nbytes], dtype=WIRE_DTYPES[e.dtype]).reshape(e.shape)
              for e in entries}
    _check_array_contents(msg_type, spec, arrays)
    return Message(msg_type, fields, arrays)


def decode_frame(frame: bytes | bytearray | memoryview, max_payload: int = DEFAULT_MAX_PAYLOAD_BYTES, *,
                 direction: str | None = None) -> Message:
    """Decode one complete frame held in memory (prefix + header + payload, nothing after it).

    Raises:
        ProtocolError: every code of :func:`parse_prefix` and :func:`decode_message`; ``truncated`` when the
            buffer is shorter than the lengths say, ``bad_array`` when it is longer (trailing bytes).
    """
    view = memoryview(frame)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    header_len, payload_len = parse_prefix(view[:PREFIX_BYTES], max_payload)
    end = PREFIX_BYTES + header_len + payload_len
    if view.nbytes < end:
        raise ProtocolError("truncated", f"frame needs {end} bytes, got {view.nbytes}")
    if view.nbytes > end:
        raise ProtocolError("bad_array", f"{view.nbytes - end} bytes after the end of the frame")
    return decode_message(view[PREFIX_BYTES:PREFIX_BYTES + header_len], view[PREFIX_BYTES + header_len:end],
                          direction=direction)


# ---------------------------------------------------------------------------------------------------------------
# Blocking sockets
# ---------------------------------------------------------------------------------------------------------------

def _recv_exactly(sock, view: memoryview, deadline: float | None = None) -> int:
    """Fill ``view`` from ``sock`` with recv_into; return the number of bytes read (< len(view) only at EOF).

    With ``deadline`` (a :func:`time.monotonic` value) every read gets only the time left, and ``TimeoutError``
    (``socket.timeout``) is raised once it has passed, however slowly the peer drips bytes."""
    pos, size = 0, view.nbytes
    while pos < size:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"deadline passed after {pos} of {size} bytes")
            sock.settimeout(left)
        n = sock.recv_into(view[pos:], size - pos)
        if n == 0:
            break
        pos += n
    return pos


def send_message(sock, msg_type: str, fields: Mapping[str, Any] | None = None,
                 arrays: Mapping[str, np.ndarray] | None = None) -> None:
    """Encode (see :func:`encode_message`) and send one frame with ``sock.sendall``.

    Raises:
        ProtocolError: from encoding; nothing was sent then.
        OSError: from the socket (a partial frame may have been sent: close the connection).
    """
    sock.sendall(encode_message(msg_type, fields, arrays))


def encode_or_error(msg_type: str, fields: Mapping[str, Any] | None = None,
                    arrays: Mapping[str, np.ndarray] | None = None) -> tuple[bytes, ProtocolError | None]:
    """:func:`encode_message` for replies, which must never be lost: ``(frame, None)`` when the message is valid;
    otherwise ``(frame of an error {code: "internal"} with a fixed message, the ProtocolError)`` so that the peer
    still gets exactly one answer. The fallback keeps ``job_id``/``request_id`` when they are themselves valid."""
    try:
        return encode_message(msg_type, fields, arrays), None
    except ProtocolError as err:
        fallback: dict[str, Any] = {"code": "internal",
                                    "message": f"the server could not encode its {safe_text(msg_type, 40)} reply "
                                               f"({err.code}); the details are in the backend log"}
        for key in ("job_id", "request_id"):
            value = (fields or {}).get(key)
            if isinstance(value, str) and len(value) <= MAX_ID_CHARS and safe_text(value, MAX_ID_CHARS) == value:
                fallback[key] = value
        return encode_message("error", fallback), err


def recv_message(sock, max_payload: int = DEFAULT_MAX_PAYLOAD_BYTES, *, direction: str | None = None,
                 max_header: int = MAX_HEADER_BYTES, deadline: float | None = None,
                 reserve: Any = None) -> Message:
    """Read exactly one frame from a blocking socket and decode it.

    The prefix is read and checked first; the header and payload buffers are allocated only after their lengths
    passed the limits, then filled in place with ``recv_into`` (no concatenation). The returned arrays are
    read-only views of the payload buffer.

    Args:
        sock: a connected blocking socket (anything with ``recv_into``).
        max_payload: this receiver's payload limit in bytes.
        direction: see :func:`decode_message`.
        max_header: this receiver's header limit in bytes (see :func:`parse_prefix`).
        deadline: optional :func:`time.monotonic` time by which the whole frame must have arrived (the
            socket's timeout is changed for each read; a server's handshake uses one deadline for the hello).
        reserve: optional ``reserve(nbytes)`` called with header_len + payload_len after the prefix passed the
            limits and before the buffers are allocated (a server's byte budget); it may raise to refuse the frame.
    Raises:
        ConnectionClosed: EOF before the first byte of a frame (clean close between frames).
        ProtocolError: truncated (EOF inside a frame), bad_magic, frame_too_large (raised after reading only the
            16 prefix bytes), and every code of :func:`decode_message`.
        OSError / socket.timeout: from the socket (or the deadline). A timeout inside a frame leaves the stream
            out of sync: close the connection.
    """
    prefix = bytearray(PREFIX_BYTES)
    got = _recv_exactly(sock, memoryview(prefix), deadline)
    if got == 0:
        raise ConnectionClosed("peer closed the connection")
    if got < PREFIX_BYTES:
        raise ProtocolError("truncated", f"connection closed after {got} of the {PREFIX_BYTES} prefix bytes")
    header_len, payload_len = parse_prefix(prefix, max_payload, max_header=max_header)
    if reserve is not None:
        reserve(header_len + payload_len)
    header = bytearray(header_len)
    got = _recv_exactly(sock, memoryview(header), deadline)
    if got < header_len:
        raise ProtocolError("truncated", f"connection closed after {got} of the {header_len} header bytes")
    payload = np.empty(payload_len, dtype=np.uint8)  # uninitialised: recv_into fills every byte
    got = _recv_exactly(sock, memoryview(payload), deadline)
    if got < payload_len:
        raise ProtocolError("truncated", f"connection closed after {got} of the {payload_len} payload bytes")
    return decode_message(header, memoryview(payload), direction=direction)


# ---------------------------------------------------------------------------------------------------------------
# Conveniences
# ---------------------------------------------------------------------------------------------------------------

def mesh_arrays(group: str, v_pos: np.ndarray, t_pos_idx: np.ndarray, uv: np.ndarray | None = None,
                uv_idx: np.ndarray | None = None, v_color: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Name a triangle mesh's arrays for a message: ``{"<group>.v_pos": v_pos, "<group>.t_pos_idx": ...}``.

    Args:
        group: array group, e.g. "mesh" or "sketch" (letters, digits, '_', no trailing dot).
        v_pos: (N, 3) float32 vertex positions, Blender world frame (Z up), metres.
        t_pos_idx: (F, 3) int32 vertex indices per triangle.
        uv: optional (M, 2) float32 texture coordinates, (0, 0) = bottom-left; needs ``uv_idx``.
        uv_idx: optional (F, 3) int32 indices into ``uv`` per face corner; needs ``uv``.
        v_color: optional (N, 3|4) float32 linear vertex colours in [0, 1].
    Returns:
        dict name -> the arrays as given (no copy, no validation: :func:`encode_message` validates).
    Raises:
        ValueError: empty/ill-formed group, or only one of uv / uv_idx given.
    """
    if not isinstance(group, str) or not _NAME_RE.match(group):
        raise ValueError(f"group {group!r} must be letters, digits and '_' (dots between parts)")
    if (uv is None) != (uv_idx is None):
        given = "uv" if uv is not None else "uv_idx"
        raise ValueError(f"uv and uv_idx go together: pass both or neither (got only {given})")
    out = {f"{group}.v_pos": v_pos, f"{group}.t_pos_idx": t_pos_idx}
    if uv is not None:
        out[f"{group}.uv"] = uv
        out[f"{group}.uv_idx"] = uv_idx
    if v_color is not None:
        out[f"{group}.v_color"] = v_color
    return out


def mesh_groups(arrays: Mapping[str, np.ndarray], group: str = "mesh") -> list[str]:
    """The mesh groups a ``partial``/``result`` carries, in order: ``["mesh", "mesh_1", "mesh_2", ...]``.

    Args:
        arrays: a message's arrays (names ``"<group>.<kind>"``).
        group: the first group's name; the others are ``<group>_1``, ``<group>_2``, …
    Returns:
        Group names that have a ``v_pos`` array, the first group first, then by number (empty when there is none).
    """
    found: dict[int, str] = {}
    for name in arrays:
        g, kind = split_array_name(name)
        if kind != "v_pos":
            continue
        if g == group:
            found[0] = g
        elif g.startswith(group + "_") and g[len(group) + 1:].isdigit():
            found[int(g[len(group) + 1:])] = g
    return [found[i] for i in sorted(found)]


def point_cloud_arrays(group: str, v_pos: np.ndarray, v_color: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Name a point cloud's arrays for a message: ``{"<group>.v_pos": v_pos[, "<group>.v_color": v_color]}``.

    Args:
        group: ``"points"``, ``"points_1"``, … (letters, digits and '_').
        v_pos: (N, 3) float32 point positions, Blender world frame (Z up), metres, N >= 1.
        v_color: optional (N, 3|4) float32 linear colours in [0, 1].
    Returns:
        dict name -> the arrays as given (no copy, no validation: :func:`encode_message` validates).
    Raises:
        ValueError: an ill-formed group name.
    """
    if not isinstance(group, str) or not _NAME_RE.match(group):
        raise ValueError(f"group {group!r} must be letters, digits and '_' (dots between parts)")
    out = {f"{group}.v_pos": v_pos}
    if v_color is not None:
        out[f"{group}.v_color"] = v_color
    return out


def point_groups(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """The point-cloud groups a ``partial``/``result`` carries, in order: ``["points", "points_1", ...]`` (empty when
    there is none); :func:`mesh_groups` with the group :data:`POINTS_GROUP`."""
    return mesh_groups(arrays, POINTS_GROUP)


def split_groups(arrays: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Group arrays by name: ``{"mesh.v_pos": a, "texture": t} -> {"mesh": {"v_pos": a}, "": {"texture": t}}``.

    The group of an ungrouped name (no dot) is ``""``. Arrays are not copied. Order follows ``arrays``.
    """
    groups: dict[str, dict[str, np.ndarray]] = {}
    for name, arr in arrays.items():
        group, kind = split_array_name(name)
        groups.setdefault(group, {})[kind] = arr
    return groups
