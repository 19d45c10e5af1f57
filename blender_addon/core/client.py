"""Socket client for the LatentForge backend; bpy-free, stdlib + numpy only.

Threads (docs/architecture.md, *Processes and threads*): the caller (Blender's main thread) never touches the socket. One worker thread owns the
connection: it connects, sends ``hello``, reads ``welcome`` and then reads frames; a writer thread per live
connection sends the frames that the caller queued. Everything the worker learns is put on :attr:`BackendClient.events`
as :class:`~.protocol.Message` objects, which the caller drains without blocking (:meth:`BackendClient.poll_events`).

Besides the server's messages (``welcome`` is turned into ``client_connected``), the queue carries three synthetic
message types, named so that they cannot clash with the protocol's:

==========================  ====================================================================================
``client_connected``        fields = the server's ``welcome`` fields, plus ``host`` (str) and ``port`` (int)
``client_disconnected``     ``{"reason": str, "will_retry": bool, "retry_in_s": float|None}`` after a live
                            connection ended
``client_error``            ``{"message": str, "will_retry": bool, "retry_in_s": float|None}`` when a connection
                            attempt or a send fails (no live connection was lost)
==========================  ====================================================================================

Reconnection: after a failure the worker waits ``backoff_initial_s`` seconds, doubling up to ``backoff_max_s``, and
resets the delay after a successful handshake. It gives up (``will_retry`` False) when the server rejects the
handshake with ``auth_failed`` or ``version_mismatch``, since retrying cannot fix those.

Frames that the caller queues while no connection is up wait in the outgoing queue and go out, in order, right after
the next handshake.

TLS: with ``tls_fingerprint`` set, every connection is TLS (:mod:`.tls`): the server's certificate must have that
SHA-256 fingerprint, checked before ``hello`` (so the token never reaches another server). A mismatch, a backend
without TLS and a failed TLS handshake are not retried; neither is a TLS-only backend reached without TLS
(``tls_required``).
"""

from __future__ import annotations

import queue
import socket
import ssl
import threading
import time
import uuid
from typing import Any, Mapping

import numpy as np

from . import protocol, tls

EVENT_CONNECTED = "client_connected"
EVENT_DISCONNECTED = "client_disconnected"
EVENT_ERROR = "client_error"
SYNTHETIC_TYPES = frozenset({EVENT_CONNECTED, EVENT_DISCONNECTED, EVENT_ERROR})

# Server answers to the handshake that retrying cannot fix.
FATAL_HANDSHAKE_CODES = frozenset({"auth_failed", "version_mismatch", "tls_required"})


class BackendClient:
    """Non-blocking client of one LatentForge backend.

    Args:
        host: server address, e.g. ``"127.0.0.1"``.
        port: TCP port in [1, 65535].
        token: the handshake secret (the content of the backend's token file, stripped).
        client_name: free text sent in ``hello`` (shown in the backend's logs).
        reconnect: reconnect after a lost connection or a failed attempt (with backoff).
        connect_timeout_s: seconds allowed for TCP connect + ``hello``/``welcome``.
        backoff_initial_s: first delay before reconnecting, seconds (> 0).
        backoff_max_s: largest delay before reconnecting, seconds (>= ``backoff_initial_s``).
        max_payload: largest frame payload accepted from the server, bytes.
        tls_fingerprint: the backend certificate's SHA-256 fingerprint (64 hex digits, colons allowed) to speak TLS
            and pin it; None or ``""`` = plain TCP (loopback, or an SSH tunnel).

    Raises:
        ValueError: on an empty host, a port outside [1, 65535], an empty token, a non-positive backoff or a
            fingerprint that is not 64 hex digits.

    Nothing happens on the network until :meth:`start`. Every public method returns at once; results arrive as
    messages on :attr:`events`.
    """

    def __init__(self, host: str, port: int, token: str, client_name: str = "blender", *, reconnect: bool = True,
                 connect_timeout_s: float = 5.0, backoff_initial_s: float = 0.5, backoff_max_s: float = 10.0,
                 max_payload: int = protocol.DEFAULT_MAX_PAYLOAD_BYTES, tls_fingerprint: str | None = None):
        if not host:
            raise ValueError("host is empty")
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"port must be an int in [1, 65535], got {port!r}")
        if not token:
            raise ValueError("token is empty")
        if backoff_initial_s <= 0 or backoff_max_s < backoff_initial_s:
            raise ValueError(f"need 0 < backoff_initial_s <= backoff_max_s, got {backoff_initial_s}, {backoff_max_s}")
        self.host = host
        self.port = port
        self.client_name = client_name
        self.reconnect = reconnect
        self.connect_timeout_s = float(connect_timeout_s)
        self.backoff_initial_s = float(backoff_initial_s)
        self.backoff_max_s = float(backoff_max_s)
        self.max_payload = int(max_payload)
        self._pinned = tls.parse_fingerprint(tls_fingerprint) if tls_fingerprint else None
        self._token = token
        #: Messages for the caller (``protocol.Message``), in arrival order. Drain with :meth:`poll_events`.
        self.events: queue.Queue[protocol.Message] = queue.Queue()
        self._outgoing: queue.Queue[bytes] = queue.Queue()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._welcome: dict | None = None
        self._worker: threading.Thread | None = None

    # ------------------------------------------------------------------ state

    @property
    def connected(self) -> bool:
        """True while a handshaken connection is up."""
        return self._welcome is not None

    @property
    def welcome(self) -> dict | None:
        """The fields of the server's last ``welcome`` (device, pipelines, models...), None while not connected."""
        return self._welcome

    @property
    def running(self) -> bool:
        """True while the worker thread is alive (connecting, connected or waiting to reconnect)."""
        return self._worker is not None and self._worker.is_alive()

    # -------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the worker thread (connects in the background). Raises RuntimeError if started twice or closed."""
        if self._worker is not None:
            raise RuntimeError("BackendClient.start() called twice")
        if self._closing.is_set():
            raise RuntimeError("BackendClient is closed")
        self._worker = threading.Thread(target=self._run, name=f"latentforge-client-{self.host}:{self.port}",
                                        daemon=True)
        self._worker.start()

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop reconnecting, close the socket and join the threads (at most ``timeout_s`` seconds). Idempotent."""
        self._closing.set()
        with self._lock:
            sock = self._sock
        if sock is not None:
            _shutdown(sock)
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout_s)

    # ---------------------------------------------------------------- sending

    def send(self, msg_type: str, fields: Mapping[str, Any] | None = None,
             arrays: Mapping[str, np.ndarray] | None = None) -> None:
        """Encode a message now (on the caller's thread) and queue it for the writer thread.

        Raises:
            protocol.ProtocolError: the message breaks the schema (bad field, bad dtype/shape, NaN/Inf geometry...);
                nothing is queued then.
            RuntimeError: the client is closed.
        """
        if self._closing.is_set():
            raise RuntimeError("BackendClient is closed")
        frame = protocol.encode_message(msg_type, dict(fields or {}), dict(arrays or {}))
        self._outgoing.put(frame)

    def submit(self, pipeline: str, params: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None,
               request_id: str | None = None) -> str:
        """Queue a ``submit``; returns its ``request_id`` (a fresh uuid4 hex when None), echoed by ``accepted``.

        ``arrays`` are the pipeline inputs, e.g. ``mesh.v_pos`` (N,3) float32, ``mesh.t_pos_idx`` (F,3) int32,
        optional ``mesh.uv`` (M,2) float32 + ``mesh.uv_idx`` (F,3) int32. Raises like :meth:`send`.
        """
        request_id = request_id or uuid.uuid4().hex
        self.send("submit", {"pipeline": pipeline, "params": dict(params), "request_id": request_id}, arrays)
        return request_id

    def cancel(self, job_id: str) -> None:
        """Queue a ``cancel`` for ``job_id``; the server answers ``cancelled`` (or ``error``)."""
        self.send("cancel", {"job_id": job_id})

    def attach(self, job_id: str) -> None:
        """Queue an ``attach``: the server resumes streaming ``job_id``'s messages to this connection."""
        self.send("attach", {"job_id": job_id})

    def list_jobs(self, limit: int | None = None, cursor: str | None = None) -> None:
        """Queue a ``list_jobs`` for one page (newest first); the server answers ``jobs`` with ``next_cursor``.

        Args:
            limit: most jobs in the page, 1 … ``protocol.LIST_JOBS_MAX_LIMIT`` (server default when None).
            cursor: ``next_cursor`` of the previous ``jobs`` page; None = the newest page.
        """
        fields: dict[str, Any] = {}
        if limit is not None:
            fields["limit"] = int(limit)
        if cursor is not None:
            fields["cursor"] = cursor
        self.send("list_jobs", fields)

    def delete_job(self, job_id: str) -> None:
        """Queue a ``delete_job``: the server deletes a finished job and its files and answers ``deleted`` (or
        ``error``: ``job_active`` for a queued/running job, ``not_found``)."""
        self.send("delete_job", {"job_id": job_id})

    def get_result(self, job_id: str) -> None:
        """Queue a ``get_result``; the server answers ``result`` (or ``error`` if the job has none)."""
        self.send("get_result", {"job_id": job_id})

    def ping(self, nonce: str | None = None) -> None:
        """Queue a ``ping``; the server answers ``pong`` with the same nonce."""
        self.send("ping", {} if nonce is None else {"nonce": nonce})

    # -------------------------------------------------------------- receiving

    def poll_events(self, max_events: int | None = None) -> list[protocol.Message]:
        """Return the queued messages (at most ``max_events``) without blocking; ``[]`` when none."""
        out: list[protocol.Message] = []
        while max_events is None or len(out) < max_events:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                break
        return out

    def wait_event(self, timeout_s: float) -> protocol.Message | None:
        """Block up to ``timeout_s`` seconds for the next message (for scripts and tests, not Blender's UI)."""
        try:
            return self.events.get(timeout=timeout_s)
        except queue.Empty:
            return None

    # ----------------------------------------------------------------- worker

    def _emit(self, msg_type: str, **fields: Any) -> None:
        self.events.put(protocol.Message(type=msg_type, fields=fields, arrays={}))

    def _run(self) -> None:
        delay = self.backoff_initial_s
        while not self._closing.is_set():
            try:
                sock, welcome = self._handshake()
            except _FatalHandshake as e:
                self._emit(EVENT_ERROR, message=str(e), will_retry=False, retry_in_s=None)
                return
            except (OSError, protocol.ProtocolError, protocol.ConnectionClosed) as e:
                if self._closing.is_set():
                    return
                retry = self.reconnect
                self._emit(EVENT_ERROR, message=f"cannot connect to {self.host}:{self.port}: {_describe(e)}",
                           will_retry=retry, retry_in_s=delay if retry else None)
                if not retry or self._closing.wait(delay):
                    return
                delay = min(delay * 2.0, self.backoff_max_s)
                continue

            delay = self.backoff_initial_s
            reason = self._serve(sock, welcome)
            if self._closing.is_set():
                return
            retry = self.reconnect
            self._emit(EVENT_DISCONNECTED, reason=reason, will_retry=retry, retry_in_s=delay if retry else None)
            if not retry or self._closing.wait(delay):
                return
            delay = min(delay * 2.0, self.backoff_max_s)

    @property
    def uses_tls(self) -> bool:
        """True when connections are TLS with a pinned certificate fingerprint."""
        return self._pinned is not None

    def _start_tls(self, sock: socket.socket) -> tls.TLSStream:
        deadline = time.monotonic() + self.connect_timeout_s
        try:
            return tls.connect(sock, self._pinned, self.host, self.port, deadline)
        except tls.TLSRefused as e:
            raise _FatalHandshake(str(e)) from None
        except ssl.SSLError as e:
            raise _FatalHandshake(f"TLS handshake with {self.host}:{self.port} failed ({e.reason or e}): is that "
                                  f"backend started with `serve --tls`? (clear the TLS Fingerprint for a plain one)"
                                  ) from None

    def _handshake(self) -> tuple[socket.socket, dict]:
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._closing.is_set():
                    raise OSError("client closed")
                self._sock = sock
            if self._pinned is not None:
                sock = self._start_tls(sock)
                with self._lock:
                    self._sock = sock
            protocol.send_message(sock, "hello", {"protocol_version": protocol.PROTOCOL_VERSION,
                                                  "token": self._token, "client": self.client_name})
            reply = protocol.recv_message(sock, self.max_payload, direction=protocol.SERVER_TO_CLIENT)
            if reply.type == "error":
                code = str(reply.fields.get("code", ""))
                text = f"handshake rejected by {self.host}:{self.port}: {code}: {reply.fields.get('message', '')}"
                if code in FATAL_HANDSHAKE_CODES:
                    raise _FatalHandshake(text)
                raise OSError(text)
            if reply.type != "welcome":
                raise OSError(f"expected 'welcome' from {self.host}:{self.port}, got {reply.type!r}")
            sock.settimeout(None)
            return sock, dict(reply.fields)
        except BaseException:
            with self._lock:
                self._sock = None
            _shutdown(sock)
            sock.close()
            raise

    def _serve(self, sock: socket.socket, welcome: dict) -> str:
        """Run one live connection until it ends; returns why it ended."""
        stop_writer = threading.Event()
        writer = threading.Thread(target=self._write_loop, args=(sock, stop_writer), daemon=True,
                                  name=f"latentforge-writer-{self.host}:{self.port}")
        self._welcome = welcome
        self._emit(EVENT_CONNECTED, **{**welcome, "host": self.host, "port": self.port})
        writer.start()
        reason = "closed by client"
        try:
            while not self._closing.is_set():
                try:
                    msg = protocol.recv_message(sock, self.max_payload, direction=protocol.SERVER_TO_CLIENT)
                except protocol.ProtocolError as e:
                    if e.fatal:
                        raise
                    # A complete but invalid frame was consumed: the stream is still in sync, keep the connection.
                    self._emit(EVENT_ERROR, message=f"ignored an invalid message from the server: {e}",
                               will_retry=False, retry_in_s=None)
                    continue
                self.events.put(msg)
        except protocol.ConnectionClosed:
            reason = "the server closed the connection"
        except protocol.ProtocolError as e:
            reason = f"protocol error from server: {e}"
        except OSError as e:
            reason = "closed by client" if self._closing.is_set() else f"connection lost: {_describe(e)}"
        finally:
            self._welcome = None
            stop_writer.set()
            with self._lock:
                self._sock = None
            _shutdown(sock)
            writer.join(2.0)
            sock.close()
        return reason

    def _write_loop(self, sock: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                frame = self._outgoing.get(timeout=0.05)
            except queue.Empty:
                continue
            try:
                sock.sendall(frame)
            except OSError as e:
                if not stop.is_set():
                    self._emit(EVENT_ERROR, message=f"a message could not be sent ({_describe(e)}); it was dropped",
                               will_retry=False, retry_in_s=None)
                _shutdown(sock)  # wakes the reader, which reports the lost connection
                return


class _FatalHandshake(Exception):
    """The server rejected the handshake in a way retrying cannot fix."""


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _describe(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if isinstance(e, protocol.ProtocolError) else f"{type(e).__name__}: {text}"
