"""The connection to the backend: the socket client and the local backend process this Blender started (bpy side;
main thread only).

:class:`Connection` owns :class:`.core.client.BackendClient` (all socket I/O runs on the client's threads) and
:class:`.core.backend_process.LocalBackend`; it shows its state in ``window_manager.latentforge`` (connection line,
backend info) and keeps the connected backend's ``welcome`` (its pipelines and their config descriptions).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import bpy

from .core import paths, protocol
from .core.backend_process import LocalBackend
from .core.client import BackendClient
from .core.text import backend_summary
from .core.tls import is_loopback
from .properties import sync_backend_fields
from .runtime import runtime_state

__all__ = ["Connection", "is_loopback"]


class Connection:
    """Client + local backend lifecycle of this Blender session.

    Args:
        report: ``(level, text)`` callback for messages to the user ("INFO", "WARNING", "ERROR").
        on_unreachable: ``(why)`` callback when the local backend did not start and nothing else answers (the session
            fails its pending submits).

    Methods that start something raise ``ValueError`` / ``OSError`` / ``FileNotFoundError`` with a message for the
    user (operators report it).
    """

    def __init__(self, report: Callable[[str, str], None], on_unreachable: Callable[[str], None]):
        self.client: BackendClient | None = None
        self.local_backend: LocalBackend | None = None
        self._report = report
        self._on_unreachable = on_unreachable
        self._token_file: str = ""
        self._tls_fingerprint: str = ""
        self._queued_sends: list[tuple[str, dict, dict]] = []
        self._backend_exit_reported = False
        self._fallback_address: tuple[str, int] | None = None

    # ------------------------------------------------------------------------------------------------- state

    @property
    def connected(self) -> bool:
        """True while the client is connected (handshake done)."""
        return self.client is not None and self.client.connected

    @property
    def welcome(self) -> dict | None:
        """The connected backend's ``welcome`` fields, or None while not connected."""
        return self.client.welcome if self.connected else None

    @property
    def pipelines(self) -> dict[str, Any] | None:
        """The connected backend's pipelines, name -> ``{"summary", "inputs", "optional_inputs", "params": {field:
        {"default", "type", "doc", "low", "high", "choices"}}}``, or None while not connected (or not told)."""
        welcome = self.welcome
        pipelines = welcome.get("pipelines") if welcome else None
        return pipelines if isinstance(pipelines, dict) else None

    def set_status(self, text: str, connected: bool) -> None:
        """Show the connection line in the panel (``connection_status``; ``backend_info`` cleared when down)."""
        try:
            state = runtime_state()
            state.connection_status = text
            state.connected = connected
            if not connected:
                state.backend_info = ""
        except (AttributeError, IndexError):
            pass

    def show_connected(self, host: str, port: int, welcome: dict) -> None:
        """Show "Connected to host:port" and the backend's device and version; make every scene's model settings
        match the backend's pipeline descriptions (:func:`.properties.sync_backend_fields`)."""
        self.set_status(f"Connected to {host}:{port}", connected=True)
        runtime_state().backend_info = backend_summary(welcome)
        pipelines = welcome.get("pipelines") if isinstance(welcome.get("pipelines"), dict) else None
        if pipelines is None:
            pipelines = self.pipelines
        for scene in bpy.data.scenes:
            settings = getattr(scene, "latentforge", None)
            if settings is not None:
                sync_backend_fields(settings, pipelines)

    def sync_status(self) -> None:
        """Restore the status line after a file load replaced the window manager (and its runtime state)."""
        client = self.client
        if client is not None and client.connected and not runtime_state().connected and client.welcome is not None:
            self.show_connected(client.host, client.port, client.welcome)

    # ------------------------------------------------------------------------------------------- connecting

    def ensure_connected(self, prefs) -> None:
        """Connect (or start the local backend) unless a connection is up or under way."""
        if self.client is not None and self.client.running:
            return
        if self.local_backend is not None and self.local_backend.state == "starting":
            return
        self.connect(prefs)

    def connect(self, prefs, start_local: bool | None = None) -> None:
        """(Re)connect with the add-on preferences ``prefs``.

        LOCAL mode with ``start_local`` (default: ``prefs.auto_start``): start the backend unless the one this
        session started still runs, and connect when it prints its address. Otherwise connect to
        ``prefs.host:prefs.port``.

        Raises:
            FileNotFoundError / ValueError: no token file, a bad interpreter/folder, a TLS Fingerprint that is not
                64 hex digits, or a remote host while Blender's "Allow Online Access" is off.
            OSError: the backend process could not be spawned.
        """
        self.close_client()
        self._token_file = bpy.path.abspath(prefs.token_file) if prefs.token_file else str(paths.token_path())
        self._tls_fingerprint = prefs.tls_fingerprint.strip()
        start_local = prefs.auto_start if start_local is None else start_local
        if prefs.backend_mode == "LOCAL" and start_local:
            backend = self.local_backend
            if backend is not None and backend.state == "listening":
                self._create_client(*backend.address)
            elif backend is None or backend.state in ("exited", "not_started"):
                self.start_local_backend(prefs)
            return
        host = prefs.host.strip()
        if not is_loopback(host) and not getattr(bpy.app, "online_access", True):
            raise ValueError(f"{host} is not this computer and Blender's 'Allow Online Access' is off "
                             "(Preferences > System > Network), or use an SSH tunnel to 127.0.0.1")
        if not is_loopback(host) and not self._tls_fingerprint:
            self._report("WARNING", f"{host} is reached over plain TCP: the token and your meshes cross the network "
                                    "unencrypted; set TLS Fingerprint (a backend started with --tls) or use an SSH "
                                    "tunnel")
        self._create_client(host, prefs.port)

    def start_local_backend(self, prefs) -> None:
        """Start ``<python> -m backend serve`` from the preferences; the client connects once it listens.

        Raises:
            ValueError: one is already running, or the interpreter/folder preferences are empty.
            OSError: the process could not be spawned.
        """
        if self.local_backend is not None and self.local_backend.state in ("starting", "listening"):
            raise ValueError(f"a backend started by Blender is already running (pid {self.local_backend.process.pid})")
        python = bpy.path.abspath(prefs.python_path) if prefs.python_path else ""
        repo_root = bpy.path.abspath(prefs.repo_root) if prefs.repo_root else ""
        if not python or not repo_root:
            raise ValueError("set 'Backend Python' and 'Backend Folder' in the add-on preferences "
                             "(install.py fills them in), or switch to Remote mode")
        self._token_file = bpy.path.abspath(prefs.token_file) if prefs.token_file else str(paths.token_path())
        paths.ensure_token(Path(self._token_file))  # our own backend: make its secret if install.py did not
        data_dir = bpy.path.abspath(prefs.data_dir) if prefs.data_dir else None
        backend = LocalBackend(python, repo_root, prefs.host.strip(), prefs.port, self._token_file, data_dir=data_dir)
        backend.start()
        self.local_backend = backend
        self._fallback_address = (prefs.host.strip(), int(prefs.port))
        self._backend_exit_reported = False
        self.set_status(f"Starting backend (pid {backend.process.pid})…", connected=False)
        self._report("INFO", "starting the local backend: " + " ".join(backend.command()))

    def stop_local_backend(self) -> int | None:
        """Stop the backend this session started (if any); returns its exit code."""
        if self.local_backend is None:
            return None
        self.close_client()
        code = self.local_backend.stop()
        self.local_backend = None
        self.set_status("Backend stopped", connected=False)
        return code

    def _create_client(self, host: str, port: int) -> None:
        token = paths.read_token(Path(self._token_file))
        local = self.local_backend is not None and self.local_backend.address == (host, int(port))
        client = BackendClient(host, int(port), token, client_name=f"blender {bpy.app.version_string} / latentforge",
                               tls_fingerprint=None if local else self._tls_fingerprint or None)
        client.start()
        self.client = client
        self.set_status(f"Connecting to {host}:{port}…", connected=False)
        queued, self._queued_sends = self._queued_sends, []
        for msg_type, fields, arrays in queued:
            client.send(msg_type, fields, arrays)

    def close_client(self) -> None:
        """Close the connection (no reconnect); the backend process, if any, keeps running."""
        if self.client is not None:
            self.client.close()
            self.client = None
        self.set_status("Not connected", connected=False)

    def shutdown(self) -> None:
        """Close the client and stop the backend this session started (called on unregister)."""
        self.close_client()
        if self.local_backend is not None:
            self.local_backend.stop()
            self.local_backend = None

    # -------------------------------------------------------------------------------------------- sending

    def send(self, msg_type: str, fields: dict, arrays: dict | None = None) -> None:
        """Validate and queue a message now; while the local backend starts, keep it until the client exists.

        Raises:
            protocol.ProtocolError: the message is invalid (nothing queued).
            RuntimeError: no connection is up or under way.
        """
        if self.client is not None and self.client.running:
            self.client.send(msg_type, fields, arrays)
        elif self.local_backend is not None and self.local_backend.state == "starting":
            protocol.encode_message(msg_type, fields, arrays)  # validate now, on the caller
            self._queued_sends.append((msg_type, fields, dict(arrays or {})))
        else:
            raise RuntimeError("not connected to a LatentForge backend (press Connect)")

    # ------------------------------------------------------------------------------------------ polling

    def poll_local_backend(self) -> None:
        """Connect once the local backend listens; report its exit (and try the configured address instead)."""
        backend = self.local_backend
        if backend is None:
            return
        state = backend.state
        if state == "listening" and self.client is None:
            try:
                self._create_client(*backend.address)
            except (OSError, ValueError) as e:
                self._report("ERROR", f"cannot connect to the local backend: {e}")
        elif state == "exited" and not self._backend_exit_reported:
            self._backend_exit_reported = True
            tail = " | ".join(line for line in backend.log_tail(5) if line.strip())
            self._report("ERROR", f"the local backend exited with code {backend.returncode}: {tail}")
            if self.client is None and self._fallback_address is not None:
                # Most often the port is taken by a backend that already runs (e.g. from a terminal): use it.
                host, port = self._fallback_address
                try:
                    self._create_client(host, port)
                    self._report("WARNING", f"the local backend did not start ({tail}); trying {host}:{port}")
                except (OSError, ValueError) as e:
                    self.set_status("Backend not running", connected=False)
                    self._queued_sends.clear()
                    self._on_unreachable(f"the local backend did not start ({e})")
