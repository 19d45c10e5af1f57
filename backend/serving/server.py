"""The socket service: framed protocol over TCP (127.0.0.1 by default), one thread pair per client.

Each connection has a reader thread (decodes frames, dispatches requests) and a writer thread draining an outgoing
queue, so the job worker never blocks on a slow client: it only enqueues. Previews and progress are dropped for a
client whose queue is backed up; status, results and errors never are.

Errors: a framing error (bad magic, oversized lengths, truncated frame, wrong version, wrong token) gets an ``error``
message and the connection is closed (the byte stream cannot be trusted any more); any other bad request gets an
``error`` and the connection stays open. Nothing a client sends can stop the server or touch other clients' jobs.
"""

from __future__ import annotations

import logging
import math
import queue
import socket
import threading
from typing import Any

from blender_addon.core import protocol

from .. import __version__
from ..models.errors import TINY_RANDOM
from ..models.stable_diffusion import DEFAULT_SD_MODEL, RANDOM_SD15
from ..params import describe_config
from ..pipelines import PIPELINES
from ..pipelines.io import optional_input_names, required_input_names
from .service import JobError, JobService, error_code

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 10.0
DROPPABLE = ("progress", "preview", "partial")
MAX_QUEUED_DROPPABLE = 64


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


class Connection:
    """One client: handshake, request dispatch, and an outgoing queue drained by a writer thread."""

    def __init__(self, server: "BackendServer", sock: socket.socket, address):
        self.server = server
        self.sock = sock
        self.address = address
        self.outgoing: queue.Queue = queue.Queue()
        self.closed = threading.Event()
        self._droppable = 0
        self._lock = threading.Lock()

    # called from any thread (the job worker included): never blocks
    def send(self, msg_type: str, fields: dict, arrays: dict | None = None) -> None:
        if self.closed.is_set():
            return
        with self._lock:
            if msg_type in DROPPABLE:
                if self._droppable >= MAX_QUEUED_DROPPABLE:
                    return
                self._droppable += 1
        self.outgoing.put((msg_type, _json_safe_losses(fields), arrays or {}))

    def listener(self, msg_type: str, fields: dict, arrays: dict) -> None:
        """Job-event callback registered with the :class:`JobService`."""
        self.send(msg_type, fields, arrays)

    def run(self) -> None:
        writer = threading.Thread(target=self._write_loop, name=f"lf-writer-{self.address}", daemon=True)
        writer.start()
        try:
            if self._handshake():
                self._read_loop()
        finally:
            self.server.service.detach(self.listener)
            self.outgoing.put(None)  # let the writer flush what is queued, then close
            writer.join(timeout=30)
            self.closed.set()
            try:
                self.sock.close()
            except OSError:
                pass
            self.server.forget(self)

    def _write_loop(self) -> None:
        while True:
            item = self.outgoing.get()
            if item is None:
                break
            msg_type, fields, arrays = item
            if msg_type in DROPPABLE:
                with self._lock:
                    self._droppable -= 1
            try:
                protocol.send_message(self.sock, msg_type, fields, arrays)
            except protocol.ProtocolError as err:  # our own bug: never send an invalid message, report instead
                log.error("refusing to send invalid %s: %s", msg_type, err)
            except OSError:
                self.closed.set()
                break
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _handshake(self) -> bool:
        self.sock.settimeout(HELLO_TIMEOUT_S)
        try:
            msg = protocol.recv_message(self.sock, self.server.max_payload, direction=protocol.CLIENT_TO_SERVER)
        except protocol.ConnectionClosed:
            return False
        except (protocol.ProtocolError, OSError) as err:
            self._send_error(err)
            return False
        self.sock.settimeout(None)
        if msg.type != "hello":
            self.send("error", {"code": "auth_failed", "message": f"the first message must be hello, got {msg.type}"})
            return False
        if msg.fields["protocol_version"] != protocol.PROTOCOL_VERSION:
            self.send("error", {"code": "version_mismatch", "message":
                                f"client speaks protocol {msg.fields['protocol_version']}, this backend speaks "
                                f"{protocol.PROTOCOL_VERSION}; update the add-on or the backend"})
            return False
        if not protocol.tokens_match(self.server.token, msg.fields["token"]):
            log.warning("rejected a client from %s: wrong token", self.address)
            self.send("error", {"code": "auth_failed", "message": "wrong token: use the token file of this backend"})
            return False
        self.send("welcome", self.server.welcome_fields())
        return True

    def _send_error(self, err: BaseException, job_id: str | None = None, request_id: str | None = None) -> None:
        if isinstance(err, protocol.ProtocolError):
            code, message = err.code, err.message
        elif isinstance(err, socket.timeout):
            code, message = "timeout", "no hello within the handshake timeout"
        elif isinstance(err, JobError):
            code, message = err.code, err.message
        else:
            code, message = error_code(err), str(err) or type(err).__name__
        fields = {"code": code, "message": message}
        if job_id:
            fields["job_id"] = job_id
        if request_id:
            fields["request_id"] = request_id
        self.send("error", fields)

    def _read_loop(self) -> None:
        while not self.closed.is_set():
            try:
                msg = protocol.recv_message(self.sock, self.server.max_payload, direction=protocol.CLIENT_TO_SERVER)
            except protocol.ConnectionClosed:
                return
            except protocol.ProtocolError as err:
                self._send_error(err)
                if err.code in protocol.FATAL_CODES:
                    return
                continue
            except OSError:
                return
            try:
                self.dispatch(msg)
            except Exception as err:  # noqa: BLE001 — a bad request must never kill the connection or the server
                if error_code(err) == "internal":
                    log.exception("error handling %s", msg.type)
                self._send_error(err, msg.fields.get("job_id"), msg.fields.get("request_id"))

    def dispatch(self, msg: protocol.Message) -> None:
        service = self.server.service
        f = msg.fields
        if msg.type == "submit":
            job_id, position = service.submit(f["pipeline"], f["params"], dict(msg.arrays), listener=self.listener)
            accepted = {"job_id": job_id, "queue_position": position}
            if "request_id" in f:
                accepted["request_id"] = f["request_id"]
            self.send("accepted", accepted)
        elif msg.type == "cancel":
            service.cancel(f["job_id"])
        elif msg.type == "attach":
            service.attach(f["job_id"], self.listener)
        elif msg.type == "list_jobs":
            self.send("jobs", {"jobs": service.list_jobs(f.get("limit", 100))})
        elif msg.type == "get_result":
            metadata, arrays = service.get_result(f["job_id"])
            self.send("result", {"job_id": f["job_id"], "metadata": metadata}, arrays)
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
        token: shared secret every client must present in ``hello``.
        host, port: where to listen (port 0 picks a free one; see :attr:`address`).
        max_payload: largest accepted frame payload in bytes (mesh + images).
    """

    def __init__(self, service: JobService, token: str, host: str = "127.0.0.1", port: int = 9876,
                 max_payload: int = protocol.DEFAULT_MAX_PAYLOAD_BYTES):
        if not token:
            raise ValueError("the server needs a non-empty token")
        self.service = service
        self.token = token
        self.max_payload = max_payload
        self._sock = socket.create_server((host, port), reuse_port=False)
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self._connections: set[Connection] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def welcome_fields(self) -> dict[str, Any]:
        pipelines = {name: {"summary": spec.summary, "inputs": required_input_names(spec),
                            "optional_inputs": optional_input_names(spec),
                            "params": describe_config(spec.config_class)} for name, spec in PIPELINES.items()}
        return {"protocol_version": protocol.PROTOCOL_VERSION, "server_version": __version__,
                "device": device_description(self.service.device), "pipelines": pipelines,
                "default_model": DEFAULT_SD_MODEL, "models": [DEFAULT_SD_MODEL, TINY_RANDOM, RANDOM_SD15]}

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
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(self, sock, address)
            with self._lock:
                self._connections.add(conn)
            threading.Thread(target=conn.run, name=f"lf-conn-{address}", daemon=True).start()

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
