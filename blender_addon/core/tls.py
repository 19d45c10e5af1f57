"""TLS for a remote backend, stdlib only (``ssl``): certificate fingerprints, contexts and a thread-safe stream.

The backend presents a self-signed certificate; the client does no CA verification and instead pins the SHA-256
fingerprint of the certificate's DER bytes (what ``python -m backend tls fingerprint`` prints, next to the token):
it checks the fingerprint with a constant-time compare right after the TLS handshake, before ``hello`` (and so the
token) is sent. TLS 1.2 is the oldest version either side accepts.

:class:`TLSStream` is TLS over a connected TCP socket through ``ssl.SSLObject`` and two memory BIOs, for a peer
that reads on one thread and writes on another (both the server's connections and the add-on's client do): OpenSSL
forbids concurrent ``SSL_read``/``SSL_write`` on one connection, so every call into the ``SSLObject`` holds one
short lock, while the blocking socket reads and writes happen outside it (writes in order, under a second lock).
It has the socket methods the protocol helpers use (``recv_into``, ``sendall``, ``settimeout``, ``shutdown``,
``close``).

Errors: :class:`TLSRefused` (an ``OSError``) when retrying cannot help: the pinned fingerprint does not match, or
the peer speaks the plain protocol (:class:`PlainPeer`: a plain backend for a TLS client, a plain client for a TLS
server). Handshake failures otherwise raise ``ssl.SSLError``; timeouts ``TimeoutError``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import socket
import ssl
import threading
import time

from .protocol import MAGIC, SERVER_TO_CLIENT, ProtocolError, decode_frame

FINGERPRINT_BYTES = 32
"""A SHA-256 digest."""
RECV_CHUNK = 64 << 10
"""Most raw bytes read from the socket at once (what one read may buffer before TLS consumes it)."""
SEND_CHUNK = 256 << 10
"""Plaintext encrypted at once by :meth:`TLSStream.sendall` (bounds the ciphertext held in memory)."""

_SEPARATORS = re.compile(r"[\s:]")


class TLSRefused(OSError):
    """A TLS connection that retrying cannot fix (wrong certificate fingerprint, a peer without TLS)."""


class PlainPeer(TLSRefused):
    """The peer spoke the plain LatentForge protocol (its first bytes are the frame magic), not TLS; ``first_bytes``
    holds what it sent first (a plain backend's ``error`` frame, for a client)."""

    def __init__(self, message: str, first_bytes: bytes = b""):
        super().__init__(message)
        self.first_bytes = first_bytes


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (``127.0.0.0/8``, ``::1``); False for anything else,
    including ``0.0.0.0``, ``::``, an empty host (every interface) and other host names."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fingerprint(der: bytes) -> str:
    """SHA-256 of a certificate's DER bytes as upper-case hex pairs joined by colons (``"3F:A0:…"``, 95 characters;
    the form ``openssl x509 -noout -fingerprint -sha256`` prints)."""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def parse_fingerprint(text: str) -> bytes:
    """The 32 digest bytes of a SHA-256 fingerprint written as 64 hex digits, with or without colons or spaces, in
    either case, optionally after ``sha256:`` / ``SHA256 Fingerprint=``.

    Raises:
        ValueError: naming the setting when the text is not 64 hex digits.
    """
    cleaned = _SEPARATORS.sub("", str(text))
    cleaned = re.sub(r"^(?i:sha-?256(?:fingerprint)?[=:]?)", "", cleaned)
    if not re.fullmatch(r"[0-9A-Fa-f]{64}", cleaned):
        raise ValueError(f"TLS fingerprint must be a SHA-256 fingerprint, 64 hex digits (colons allowed), e.g. what "
                         f"`python -m backend tls fingerprint` prints; got {len(cleaned)} characters")
    return bytes.fromhex(cleaned)


def short(fp: bytes | str) -> str:
    """The first four bytes of a fingerprint (``"3F:A0:12:C4…"``), for messages."""
    digest = fp if isinstance(fp, bytes) else parse_fingerprint(fp)
    return ":".join(f"{b:02X}" for b in digest[:4]) + "…"


def client_context() -> ssl.SSLContext:
    """A client context for a pinned self-signed certificate: TLS 1.2+, no CA or host name verification (the
    caller checks the certificate's fingerprint instead, :meth:`TLSStream.check_fingerprint`)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def server_context(cert_file, key_file) -> ssl.SSLContext:
    """A server context (TLS 1.2+) presenting the PEM certificate ``cert_file`` with its private key ``key_file``.

    Raises:
        OSError / ssl.SSLError: a file is missing, unreadable, or the key does not match the certificate.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_file), str(key_file))
    return context


class TLSStream:
    """TLS over the connected blocking socket ``sock``, safe for one reading and one writing thread at once.

    Args:
        sock: a connected TCP socket (this stream owns it from now on).
        context: from :func:`client_context` or :func:`server_context`.
        server_side: True on the backend.
        server_hostname: the name sent in the client's SNI (client side only; not verified).

    Call :meth:`handshake` before anything else.
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_side: bool,
                 server_hostname: str | None = None):
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side,
                                     server_hostname=None if server_side or is_ip(server_hostname)
                                     else server_hostname)
        self._server_side = server_side
        self._lock = threading.Lock()  # every call into the SSLObject and the BIOs
        self._send_lock = threading.Lock()  # ciphertext leaves in the order it was made
        self._timeout: float | None = sock.gettimeout()
        self._first = True

    # ---- socket-like surface -------------------------------------------------------------------------------------

    def settimeout(self, timeout: float | None) -> None:
        """Timeout in seconds of each :meth:`recv_into` as a whole, and of each socket write (None = block)."""
        self._timeout = timeout
        self.sock.settimeout(timeout)

    def gettimeout(self) -> float | None:
        return self._timeout

    def setsockopt(self, *args) -> None:
        self.sock.setsockopt(*args)

    def shutdown(self, how: int) -> None:
        """Shut the TCP socket down (unblocks a thread blocked in a read or write); no TLS close_notify."""
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()

    def recv_into(self, buffer, nbytes: int = 0) -> int:
        """Decrypt up to ``nbytes`` (0 = ``len(buffer)``) bytes into ``buffer``; 0 at EOF (a TCP close without
        close_notify counts as EOF, as ``SSLSocket``'s ``suppress_ragged_eofs``).

        Raises:
            TimeoutError: no data within the timeout set by :meth:`settimeout` (for the whole call).
            ssl.SSLError: the peer sent something that is not TLS of this session.
        """
        nbytes = nbytes or memoryview(buffer).nbytes
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            with self._lock:
                try:
                    got = self._tls.read(nbytes, buffer)
                except ssl.SSLWantReadError:
                    got = None
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    got = 0
                flush = self._outgoing.pending > 0
            if flush:  # reading can make TLS records to send (key updates): never wait for the writer here
                self._flush(block=False)
            if got is not None:
                return got
            self._feed(deadline)

    def sendall(self, data) -> None:
        """Encrypt and send all of ``data`` (in :data:`SEND_CHUNK` pieces). Raises OSError from the socket."""
        view = memoryview(data).cast("B")
        for start in range(0, len(view), SEND_CHUNK):
            with self._lock:
                self._tls.write(view[start:start + SEND_CHUNK])
            self._flush(block=True)

    # ---- TLS -----------------------------------------------------------------------------------------------------

    def handshake(self, deadline: float | None = None) -> None:
        """Run the TLS handshake, all of it before ``deadline`` (a :func:`time.monotonic` time; None = the timeout
        of :meth:`settimeout` per read).

        Raises:
            PlainPeer: the peer's first bytes are the plain protocol's frame magic.
            TimeoutError: the deadline passed.
            ssl.SSLError: the handshake failed (no common version or cipher, not TLS, a bad certificate).
            OSError: from the socket.
        """
        while True:
            with self._lock:
                try:
                    self._tls.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
            self._flush(block=True)
            if done:
                return
            self._feed(deadline if deadline is not None else
                       (None if self._timeout is None else time.monotonic() + self._timeout))

    def peer_fingerprint(self) -> str:
        """:func:`fingerprint` of the certificate the peer presented (after :meth:`handshake`); ``""`` if none."""
        with self._lock:
            der = self._tls.getpeercert(binary_form=True)
        return fingerprint(der) if der else ""

    def check_fingerprint(self, pinned: bytes, where: str) -> None:
        """Compare the peer certificate's SHA-256 with ``pinned`` (32 bytes) in constant time.

        Raises:
            TLSRefused: they differ; the message names both fingerprints' first bytes and ``where``.
        """
        with self._lock:
            der = self._tls.getpeercert(binary_form=True) or b""
        actual = hashlib.sha256(der).digest()
        if not hmac.compare_digest(actual, pinned):
            raise TLSRefused(f"the TLS certificate of {where} does not match the pinned fingerprint: it presents "
                             f"{short(actual)}, the add-on pins {short(pinned)} (a different backend, a new "
                             f"certificate, or someone in between; check `python -m backend tls fingerprint` on "
                             f"the server)")

    @property
    def version(self) -> str | None:
        """The negotiated TLS version, e.g. ``"TLSv1.3"``."""
        with self._lock:
            return self._tls.version()

    # ---- plumbing --------------------------------------------------------------------------------------------------

    def _feed(self, deadline: float | None) -> None:
        """Read one chunk of ciphertext from the socket into the incoming BIO (EOF included)."""
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("TLS read timed out")
            self.sock.settimeout(left)
        data = self.sock.recv(RECV_CHUNK)
        if self._first and data:
            self._first = False
            if MAGIC.startswith(data[:len(MAGIC)]):
                raise PlainPeer("the peer speaks the plain LatentForge protocol, not TLS", bytes(data))
        with self._lock:
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()

    def _flush(self, block: bool) -> None:
        """Send the ciphertext waiting in the outgoing BIO, in order. With ``block`` False, leave it to the thread
        sending now (the last thread to release the send lock always looks again, so nothing is left behind)."""
        while True:
            if not self._send_lock.acquire(blocking=block):
                return
            try:
                while True:
                    with self._lock:
                        data = self._outgoing.read()
                    if not data:
                        break
                    self.sock.sendall(data)
            finally:
                self._send_lock.release()
            with self._lock:
                if not self._outgoing.pending:
                    return
            block = False


def is_ip(host: str | None) -> bool:
    """True when ``host`` is an IP address literal (SNI carries host names only)."""
    if not host:
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def connect(sock: socket.socket, pinned: bytes, host: str, port: int, deadline: float | None) -> TLSStream:
    """Client side: TLS over the connected ``sock`` to ``host:port``, then the pinned-fingerprint check.

    Raises:
        TLSRefused: a fingerprint mismatch, or a backend without TLS (:class:`PlainPeer`, reworded).
        OSError: a TLS backend that refused the connection before TLS because it is full (its plain
            ``too_many_connections`` error: worth retrying later).
        ssl.SSLError / TimeoutError: see :meth:`TLSStream.handshake`.
    """
    stream = TLSStream(sock, client_context(), server_side=False, server_hostname=host)
    try:
        stream.handshake(deadline)
    except PlainPeer as err:
        try:
            refusal = decode_frame(err.first_bytes, 1 << 16, direction=SERVER_TO_CLIENT)
        except ProtocolError:
            refusal = None
        if refusal is not None and refusal.type == "error" and refusal.fields.get("code") == "too_many_connections":
            raise OSError(f"{host}:{port} refused the connection: too_many_connections: "
                          f"{refusal.fields.get('message', '')}") from None
        raise PlainPeer(f"the backend at {host}:{port} speaks plain TCP, not TLS: clear the add-on's TLS Fingerprint "
                        f"(loopback or an SSH tunnel), or start that backend with `serve --tls`") from None
    stream.check_fingerprint(pinned, f"{host}:{port}")
    return stream
