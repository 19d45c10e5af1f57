"""The socket service: framed protocol over TCP (127.0.0.1 by default), one reader and one writer thread per client.

Every complete request gets exactly one answer, and nothing a client sends can make the server hold unbounded
memory (the bounds are documented in docs/protocol.md, "Server resources"):

- Before the token is checked only one small hello frame is read (``protocol.MAX_HELLO_BYTES``, no payload), under
  one deadline for the whole handshake (``protocol.HANDSHAKE_TIMEOUT_S``); at most ``max_connections`` connections
  exist at once (pre-auth ones included).
- Incoming frames reserve their bytes from a server-wide :class:`ByteBudget` before their buffers are allocated.
- Replies are encoded when queued (``protocol.encode_or_error``: a reply that cannot be encoded becomes an
  ``error internal``, never nothing) and counted against the connection's bound and the same budget. Progress,
  previews and partial meshes are dropped for a slow client; a client whose other replies exceed its bound is
  disconnected (logged), not buffered for.

Identities and TLS:

- A ``hello``'s token names an identity (:mod:`.identities`: the token file's ``admin``, or an artist or admin of
  tokens.json, re-read when it changes); the ``welcome`` says which. An artist's requests reach only their own jobs
  (another's job is ``not_found``, as an unknown id); a connection whose identity was revoked gets ``auth_failed``
  at its next request and is closed.
- With a TLS context (``serve --tls``) every connection starts with a TLS handshake (``blender_addon/core/tls.py``,
  inside the same handshake deadline); a client that speaks the plain protocol instead gets a plain
  ``error tls_required`` and is closed.

Errors: a framing error (bad magic, oversized lengths, truncated frame, wrong version, wrong token) gets an ``error``
message and the connection is closed (the byte stream cannot be trusted any more); any other bad request gets an
``error`` and the connection stays open. No error message carries a server path or more than
``protocol.ECHO_CHARS`` characters of a client value.
"""

from __future__ import annotations

import collections
import logging
import math
import socket
import ssl
import threading
import time
from typing import Any

from blender_addon.core import protocol, tls
from blender_addon.core.protocol import safe_text

from .. import __version__
from ..models.base import TINY_RANDOM
from ..models.devices import device_memory
from ..models.stable_diffusion import DEFAULT_SD_MODEL, RANDOM_SD15
from ..params import describe_config
from ..pipelines import PIPELINES
from ..pipelines.io import one_of_input_names, optional_input_names, required_input_names
from .identities import Identities, Identity
from .service import JobError, JobService, error_code
from .store import StoreError

log = logging.getLogger(__name__)

DROPPABLE = ("progress", "preview", "partial")
MAX_QUEUED_DROPPABLE = 64
"""Droppable messages are dropped once this many are queued for a client ..."""
DROPPABLE_QUEUE_BYTES = 1 << 20
"""... or once this many bytes of any replies are queued for it."""
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_MAX_CLIENT_QUEUE_BYTES = 256 << 20
DEFAULT_MAX_BUFFERED_BYTES = 2048 << 20
INCOMING_WAIT_S = 30.0
"""How long an incoming frame waits for room in the byte budget before its client is cut off."""


def device_description(device) -> str:
    """Human-readable device, e.g. ``"cuda:0 (NVIDIA H100 80GB HBM3)"`` or ``"cpu"``."""
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def _json_safe_losses(fields: dict) -> dict:
    if "losses" in fields:
        fields = dict(fields, losses={k: (v if math.isfinite(v) else None) for k, v in fields["losses"].items()})
    return fields


class Overloaded(Exception):
    """The server-wide byte budget has no room (fatal for the connection that asked)."""


class ByteBudget:
    """Bytes buffered for all clients together (incoming frames being read + queued replies)."""

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.used = 0
        self._cond = threading.Condition()

    def try_take(self, n: int) -> bool:
        with self._cond:
            if self.used + n > self.capacity:
                return False
            self.used += n
            return True

    def take(self, n: int, timeout: float) -> bool:
        """Wait up to ``timeout`` s for room; a request larger than the whole budget waits for an empty one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.used + n > self.capacity and not (self.used == 0 and n > self.capacity):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            self.used += n
            return True

    def force(self, n: int) -> None:
        with self._cond:
            self.used += n

    def give(self, n: int) -> None:
        if n:
            with self._cond:
                self.used -= n
                self._cond.notify_all()


class Connection:
    """One client: handshake, request dispatch, and a byte-bounded outgoing queue drained by a writer thread."""

    def __init__(self, server: "BackendServer", sock: socket.socket, address, accepted_at: float):
        self.server = server
        self.sock = sock
        self.address = address
        self.accepted_at = accepted_at
        self.closed = threading.Event()
        self.jobs: set[str] = set()  # submitted or attached on this connection: the jobs it may cancel
        self.identity: Identity | None = None  # set by the handshake
        self._queue: collections.deque = collections.deque()  # (frame bytes, droppable) | None = end
        self._queued_bytes = 0
        self._queued_droppable = 0
        self._cond = threading.Condition()
        self._incoming = 0  # bytes of the frame being read, reserved in the budget

    # ---- outgoing (any thread, the job worker included): never blocks ---------------------------------------------

    def send(self, msg_type: str, fields: dict, arrays: dict | None = None) -> None:
        if self.closed.is_set():
            return
        droppable = msg_type in DROPPABLE
        with self._cond:  # cheap early drop, before encoding
            if droppable and (self._queued_droppable >= MAX_QUEUED_DROPPABLE
                              or self._queued_bytes > DROPPABLE_QUEUE_BYTES):
                return
        frame, err = protocol.encode_or_error(msg_type, _json_safe_losses(fields), arrays or {})
        if err is not None:  # our own bug: the client gets an error internal instead of nothing
            log.error("could not encode a %s reply for %s: %s", msg_type, self.address, err)
        self._enqueue(frame, droppable, msg_type)

    def _enqueue(self, frame: bytes, droppable: bool, what: str) -> None:
        budget = self.server.budget
        size = len(frame)
        with self._cond:
            if self.closed.is_set():
                return
            if droppable:
                if (self._queued_droppable >= MAX_QUEUED_DROPPABLE or self._queued_bytes > DROPPABLE_QUEUE_BYTES
                        or not budget.try_take(size)):
                    return
                self._queued_droppable += 1
            elif self._queued_bytes == 0:
                if not budget.try_take(size):
                    budget.force(size)  # one reply per client always fits: the total stays bounded by connections
            elif self._queued_bytes + size > self.server.max_client_queue or not budget.try_take(size):
                reason = (f"{self._queued_bytes + size} bytes of replies would be queued (limit "
                          f"{self.server.max_client_queue})" if self._queued_bytes + size > self.server.max_client_queue
                          else f"the server's reply buffers are full ({budget.used} of {budget.capacity} bytes)")
                self._cut_off_locked(f"client does not read its replies: {reason} while queueing a {what}")
                return
            self._queue.append((frame, droppable))
            self._queued_bytes += size
            self._cond.notify()

    def _cut_off_locked(self, reason: str) -> None:
        log.warning("disconnecting %s: %s", self.address, reason)
        self.closed.set()
        self._drop_queue_locked()
        self._queue.append(None)
        self._cond.notify()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # unblocks the writer's sendall and the reader's recv
        except OSError:
            pass

    def _drop_queue_locked(self) -> None:
        released = 0
        while self._queue:
            item = self._queue.popleft()
            if item is not None:
                released += len(item[0])
        self._queued_bytes -= released
        self._queued_droppable = 0
        self.server.budget.give(released)

    def listener(self, msg_type: str, fields: dict, arrays: dict) -> None:
        """Job-event callback registered with the :class:`JobService`."""
        self.send(msg_type, fields, arrays)

    # ---- threads -------------------------------------------------------------------------------------------------

    def run(self) -> None:
        writer = None
        try:
            if self._handshake():
                writer = threading.Thread(target=self._write_loop, name=f"lf-writer-{self.address}", daemon=True)
                writer.start()
                self.send("welcome", {**self.server.welcome_fields(), "identity": self.identity.name,
                                      "role": self.identity.role})
                self._read_loop()
        except Exception:  # noqa: BLE001 — one connection's bug must not take anything else down
            log.exception("connection %s failed", self.address)
        finally:
            self.server.service.detach(self.listener)
            if writer is not None:
                with self._cond:
                    self._queue.append(None)  # let the writer flush what is queued, then close
                    self._cond.notify()
                writer.join(timeout=30)
            self.closed.set()
            with self._cond:
                self._drop_queue_locked()
            self._give_incoming()
            try:
                self.sock.close()
            except OSError:
                pass
            self.server.forget(self)

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                item = self._queue[0]
            if item is None:
                break
            frame, droppable = item
            try:
                self.sock.sendall(frame)
                ok = True
            except OSError:
                ok = False
            with self._cond:
                if self._queue and self._queue[0] is item:
                    self._queue.popleft()
                    self._queued_bytes -= len(frame)
                    if droppable:
                        self._queued_droppable -= 1
                    self.server.budget.give(len(frame))
                if not ok:
                    self.closed.set()
                    self._drop_queue_locked()
                    break
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send_now(self, fields: dict) -> None:
        """Handshake replies, before the writer exists: small, sent at once (best effort)."""
        frame, _ = protocol.encode_or_error("error", fields)
        try:
            self.sock.settimeout(2.0)
            self.sock.sendall(frame)
        except OSError:
            pass

    def _start_tls(self, deadline: float) -> bool:
        """The TLS handshake (``serve --tls``); on success ``self.sock`` becomes the :class:`tls.TLSStream`."""
        stream = tls.TLSStream(self.sock, self.server.tls, server_side=True)
        try:
            stream.handshake(deadline)
        except tls.PlainPeer:
            log.warning("refused %s: a plain TCP client on a TLS-only backend", self.address)
            self._send_now({"code": "tls_required", "message": "this backend accepts TLS connections only: set the "
                                                               "add-on's TLS Fingerprint to the backend's (`python -m "
                                                               "backend tls fingerprint` on the server prints it)"})
            return False
        except (TimeoutError, socket.timeout):
            log.warning("dropped %s: no TLS handshake within %g s", self.address, protocol.HANDSHAKE_TIMEOUT_S)
            return False
        except (ssl.SSLError, OSError) as err:
            log.warning("dropped %s: TLS handshake failed: %s", self.address, err)
            return False
        self.sock = stream
        return True

    def _handshake(self) -> bool:
        deadline = self.accepted_at + protocol.HANDSHAKE_TIMEOUT_S
        if self.server.tls is not None and not self._start_tls(deadline):
            return False
        try:
            msg = protocol.recv_message(self.sock, 0, direction=protocol.CLIENT_TO_SERVER,
                                        max_header=protocol.MAX_HELLO_BYTES, deadline=deadline)
        except protocol.ConnectionClosed:
            return False
        except protocol.ProtocolError as err:
            code = err.code if err.code in protocol.FATAL_CODES else "auth_failed"
            self._send_now({"code": code, "message": safe_text(err.message, 400)})
            return False
        except (TimeoutError, socket.timeout):
            self._send_now({"code": "timeout", "message": f"no complete hello within "
                                                          f"{protocol.HANDSHAKE_TIMEOUT_S:g} s of connecting"})
            return False
        except OSError:
            return False
        self.sock.settimeout(None)
        if msg.type != "hello":
            self._send_now({"code": "auth_failed", "message": f"the first message must be hello, got {msg.type}"})
            return False
        self.identity = self.server.identities.match(msg.fields["token"])
        if self.identity is None:
            log.warning("rejected a client from %s: wrong token", self.address)
            self._send_now({"code": "auth_failed", "message": "wrong token: use the token file of this backend, or "
                                                              "the token its admin made for you (it may have been "
                                                              "revoked)"})
            return False
        log.info("client %s is %s (%s)", self.address, self.identity.name, self.identity.role)
        return True

    def _send_error(self, err: BaseException, job_id: str | None = None, request_id: str | None = None) -> None:
        if isinstance(err, protocol.ProtocolError):
            code, message = err.code, err.message
        elif isinstance(err, (JobError, StoreError)):
            code, message = err.code, err.message
            job_id = getattr(err, "job_id", None) or job_id
        elif isinstance(err, Overloaded):
            code, message = "overloaded", str(err)
        else:
            code = error_code(err)
            message = ("internal error; the details are in the backend log" if code == "internal"
                       else self.server.service.scrub(str(err) or type(err).__name__))
        fields = {"code": code, "message": safe_text(message, protocol.MAX_MESSAGE_CHARS // 2)}
        if job_id:
            fields["job_id"] = job_id
        if request_id:
            fields["request_id"] = request_id
        self.send("error", fields)

    def _reserve(self, nbytes: int) -> None:
        if not self.server.budget.take(nbytes, INCOMING_WAIT_S):
            raise Overloaded(f"the server's buffers stayed full for {INCOMING_WAIT_S:g} s; try again later")
        self._incoming = nbytes

    def _give_incoming(self) -> None:
        self.server.budget.give(self._incoming)
        self._incoming = 0

    def _read_loop(self) -> None:
        while not self.closed.is_set():
            try:
                msg = protocol.recv_message(self.sock, self.server.max_payload, direction=protocol.CLIENT_TO_SERVER,
                                            reserve=self._reserve)
            except protocol.ConnectionClosed:
                return
            except protocol.ProtocolError as err:
                self._give_incoming()
                self._send_error(err)
                if err.code in protocol.FATAL_CODES:
                    return
                continue
            except Overloaded as err:
                log.warning("disconnecting %s: %s", self.address, err)
                self._send_error(err)
                return
            except OSError:
                return
            if not self.server.identities.still_valid(self.identity):
                log.warning("disconnecting %s: the identity %s was revoked", self.address, self.identity.name)
                self._send_error(protocol.ProtocolError("auth_failed", f"the token of {self.identity.name} was "
                                                                       f"revoked; ask the backend's admin for a new one"))
                self._give_incoming()
                return
            try:
                self.dispatch(msg)
            except Exception as err:  # noqa: BLE001 — a bad request must never kill the connection or the server
                if error_code(err) == "internal":
                    log.exception("error handling %s", msg.type)
                self._send_error(err, msg.fields.get("job_id"), msg.fields.get("request_id"))
            finally:
                del msg
                self._give_incoming()

    def dispatch(self, msg: protocol.Message) -> None:
        """Answer one request with exactly one reply (or, for attach, the job's replayed state)."""
        service = self.server.service
        f = msg.fields
        scope = self.identity.scope  # None = every job (an admin), else only this artist's
        if msg.type == "submit":
            job_id, position = service.submit(f["pipeline"], f["params"], dict(msg.arrays), listener=self.listener,
                                              owner=self.identity.name)
            self.jobs.add(job_id)
            accepted = {"job_id": job_id, "queue_position": position}
            if "request_id" in f:
                accepted["request_id"] = f["request_id"]
            self.send("accepted", accepted)
        elif msg.type == "cancel":
            job_id = f["job_id"]
            job = service.get(job_id, owner=scope)
            if job["status"] in ("queued", "running") and job_id not in self.jobs:
                raise JobError("not_attached", f"job {job_id} was submitted on another connection; attach to it "
                                               f"first to cancel it")
            service.cancel(job_id, requester=self.listener, owner=scope)  # cancelled now or when it stops; or an error
        elif msg.type == "attach":
            service.attach(f["job_id"], self.listener, owner=scope)
            self.jobs.add(f["job_id"])
        elif msg.type == "list_jobs":
            jobs, next_cursor = service.list_jobs(f.get("limit", protocol.LIST_JOBS_DEFAULT_LIMIT), f.get("cursor"),
                                                  owner=scope)
            self.send("jobs", {"jobs": jobs, "next_cursor": next_cursor})
        elif msg.type == "get_result":
            metadata, arrays = service.get_result(f["job_id"], owner=scope)
            try:
                frame = protocol.encode_message("result", {"job_id": f["job_id"], "metadata": metadata}, arrays)
            except protocol.ProtocolError as err:
                log.warning("job %s: stored result does not encode: %s", f["job_id"], err)
                raise StoreError("result_damaged", f"job {f['job_id']}: its result file result.npz holds arrays "
                                                   f"that are not a valid result ({err.code}); delete the job",
                                 f["job_id"]) from None
            self._enqueue(frame, False, "result")
        elif msg.type == "delete_job":
            service.delete(f["job_id"], owner=scope)
            self.jobs.discard(f["job_id"])
            self.send("deleted", {"job_id": f["job_id"]})
        elif msg.type == "ping":
            self.send("pong", {"nonce": f["nonce"]} if "nonce" in f else {})
        elif msg.type == "hello":
            self.send("error", {"code": "bad_field", "message": "hello was already received on this connection"})
        else:  # a server->client type sent by a client: recv_message(direction=...) already rejects these
            self.send("error", {"code": "unknown_type", "message": f"{msg.type} is not a request"})


class BackendServer:
    """TCP listener + connections around a :class:`JobService`.

    Args:
        service: the job service.
        token: the admin's secret (the token file); a client presents it, or an identity's token, in ``hello``.
        host, port: where to listen (port 0 picks a free one; see :attr:`address`).
        tokens_file: the identities file (tokens.json; one token per artist), or None for the admin alone.
        tls_context: a server ``ssl.SSLContext`` (:func:`blender_addon.core.tls.server_context`) to speak TLS
            only, or None for plain TCP.
        max_payload: largest accepted frame payload in bytes (mesh + images), after authentication.
        max_connections: most connections at once (authenticated or not).
        max_client_queue: most bytes of replies queued for one client before it is disconnected.
        max_buffered: most bytes buffered for all clients together (incoming frames + queued replies).
    """

    def __init__(self, service: JobService, token: str, host: str = "127.0.0.1", port: int = 9876,
                 max_payload: int = protocol.DEFAULT_MAX_PAYLOAD_BYTES,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 max_client_queue: int = DEFAULT_MAX_CLIENT_QUEUE_BYTES,
                 max_buffered: int = DEFAULT_MAX_BUFFERED_BYTES, tokens_file=None,
                 tls_context: ssl.SSLContext | None = None):
        if not token:
            raise ValueError("the server needs a non-empty token")
        if max_connections < 1 or max_client_queue < 1 or max_buffered < 1:
            raise ValueError("max_connections, max_client_queue and max_buffered must be >= 1")
        self.service = service
        self.identities = Identities(token, tokens_file)
        self.tls = tls_context
        self.max_payload = max_payload
        self.max_connections = max_connections
        self.max_client_queue = max_client_queue
        self.budget = ByteBudget(max_buffered)
        self._sock = socket.create_server((host, port), reuse_port=False, backlog=128)
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self._connections: set[Connection] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._welcome: dict[str, Any] | None = None

    def welcome_fields(self) -> dict[str, Any]:
        if self._welcome is None:
            pipelines = {name: {"summary": spec.summary, "inputs": required_input_names(spec),
                                "optional_inputs": optional_input_names(spec),
                                "one_of_inputs": one_of_input_names(spec),
                                "params": describe_config(spec.config_class)} for name, spec in PIPELINES.items()}
            self._welcome = {"protocol_version": protocol.PROTOCOL_VERSION, "server_version": __version__,
                             "device": device_description(self.service.device), "pipelines": pipelines,
                             "default_model": DEFAULT_SD_MODEL, "models": [DEFAULT_SD_MODEL, TINY_RANDOM, RANDOM_SD15]}
        memory = device_memory(self.service.device)  # free memory changes: asked anew for every client
        if memory is None:
            return self._welcome
        return {**self._welcome, "memory_total_bytes": memory.total, "memory_free_bytes": memory.free}

    @property
    def connection_count(self) -> int:
        with self._lock:
            return len(self._connections)

    def serve_forever(self) -> None:
        """Accept clients until :meth:`shutdown`."""
        self._sock.settimeout(0.5)
        while not self._stopping.is_set():
            try:
                sock, address = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stopping.is_set():
                    break
                raise
            accepted_at = time.monotonic()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                full = len(self._connections) >= self.max_connections
                if not full:
                    conn = Connection(self, sock, address, accepted_at)
                    self._connections.add(conn)
            if full:
                log.warning("refused %s: %d connections already (--max-connections)", address, self.max_connections)
                threading.Thread(target=self._refuse, args=(sock,), daemon=True).start()
                continue
            threading.Thread(target=conn.run, name=f"lf-conn-{address}", daemon=True).start()

    def _refuse(self, sock: socket.socket) -> None:
        frame = protocol.encode_message("error", {"code": "too_many_connections", "message":
                                                  f"the backend serves at most {self.max_connections} connections "
                                                  f"at once; try again later"})
        try:
            sock.settimeout(2.0)
            sock.sendall(frame)
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.close()

    def forget(self, conn: Connection) -> None:
        with self._lock:
            self._connections.discard(conn)

    def shutdown(self) -> None:
        self._stopping.set()
        try:
            self._sock.close()
        except OSError:
            pass
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.service.shutdown()
