"""Start and stop a local LatentForge backend process; bpy-free, stdlib only.

The add-on runs ``<python> -m backend serve --host H --port P --token-file F [--data-dir D] [--device X]`` with
``cwd = repo_root``, where ``python`` and ``repo_root`` come from the install config written by ``install.py``
(:func:`.paths.read_config`). The backend prints ``LATENTFORGE_LISTENING <host> <port>`` on stdout once its socket
listens; a daemon thread reads stdout, keeps the last lines for error messages and records that address. Nothing
here blocks except :meth:`LocalBackend.wait_listening` and :meth:`LocalBackend.stop`, which take a timeout.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import paths

LISTENING_PREFIX = "LATENTFORGE_LISTENING"


class LocalBackend:
    """One backend child process started by the add-on.

    Args:
        python: the backend interpreter (the venv ``install.py`` made), an existing file.
        repo_root: the LatentForge checkout holding the ``backend`` package, an existing folder (the process's cwd).
        host: address to bind, e.g. ``"127.0.0.1"``.
        port: TCP port to bind, in [0, 65535]; 0 lets the OS pick (the chosen one is read from the LISTENING line).
        token_file: the token file the backend reads (created by the backend or install.py, not here).
        data_dir: the job store folder; None keeps the backend's default.
        device: e.g. ``"cuda"`` or ``"cpu"``; None keeps the backend's default.
        extra_args: more command-line arguments appended after the above.
        log_lines: how many of the last stdout/stderr lines to keep for error messages.

    Raises:
        ValueError: a missing interpreter or repo folder, or a port outside [0, 65535] (raised by :meth:`start`
            for the paths so that the message names the bad value when the user acts).
    """

    def __init__(self, python: str | os.PathLike, repo_root: str | os.PathLike, host: str, port: int,
                 token_file: str | os.PathLike, data_dir: str | os.PathLike | None = None, device: str | None = None,
                 extra_args: tuple[str, ...] = (), log_lines: int = 200):
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in [0, 65535], got {port!r}")
        self.python = str(python)
        self.repo_root = str(repo_root)
        self.host = host
        self.port = port
        self.token_file = str(token_file)
        self.data_dir = None if data_dir is None else str(data_dir)
        self.device = device
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen | None = None
        self._log: collections.deque[str] = collections.deque(maxlen=log_lines)
        self._address: tuple[str, int] | None = None
        self._listening = threading.Event()
        self._reader: threading.Thread | None = None

    @classmethod
    def from_install_config(cls, host: str, port: int, token_file: str | os.PathLike,
                            config: dict | None = None, **kwargs) -> "LocalBackend":
        """Build from ``install.py``'s config (``python``, ``repo_root``, optional ``data_dir``).

        Raises:
            ValueError: the config lacks ``python`` or ``repo_root`` (install.py has not run).
        """
        config = paths.read_config() if config is None else config
        missing = [k for k in ("python", "repo_root") if not config.get(k)]
        if missing:
            raise ValueError(f"install config {paths.config_path()} lacks {missing}; run `python install.py` first")
        kwargs.setdefault("data_dir", config.get("data_dir"))
        return cls(config["python"], config["repo_root"], host, port, token_file, **kwargs)

    def command(self) -> list[str]:
        """The argv this backend runs with."""
        cmd = [self.python, "-m", "backend", "serve", "--host", self.host, "--port", str(self.port),
               "--token-file", self.token_file]
        if self.data_dir:
            cmd += ["--data-dir", self.data_dir]
        if self.device:
            cmd += ["--device", self.device]
        return cmd + list(self.extra_args)

    def start(self) -> None:
        """Spawn the process (returns at once; see :attr:`address` / :meth:`wait_listening`).

        Raises:
            ValueError: ``python`` is not a file or ``repo_root`` has no ``backend`` folder.
            RuntimeError: already started and still running.
            OSError: the process could not be spawned.
        """
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"the backend is already running (pid {self.process.pid})")
        if not Path(self.python).is_file():
            raise ValueError(f"backend interpreter not found: {self.python!r} (set it in the add-on preferences)")
        if not (Path(self.repo_root) / "backend").is_dir():
            raise ValueError(f"no 'backend' package in repo_root {self.repo_root!r} (set it in the add-on preferences)")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP")}
        env["PYTHONPATH"] = self.repo_root
        env["PYTHONUNBUFFERED"] = "1"
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if sys.platform == "win32" else 0
        self._log.clear()
        self._address = None
        self._listening.clear()
        self.process = subprocess.Popen(self.command(), cwd=self.repo_root, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                        encoding="utf-8", errors="replace", creationflags=flags)
        self._reader = threading.Thread(target=self._read_stdout, args=(self.process,), daemon=True,
                                        name="latentforge-backend-stdout")
        self._reader.start()

    def _read_stdout(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\r\n")
            self._log.append(line)
            if line.startswith(LISTENING_PREFIX + " ") and not self._listening.is_set():
                parts = line.split()
                if len(parts) == 3 and parts[2].isdigit():
                    self._address = (parts[1], int(parts[2]))
                    self._listening.set()

    @property
    def address(self) -> tuple[str, int] | None:
        """``(host, port)`` from the LISTENING line, None until the backend printed it."""
        return self._address

    @property
    def state(self) -> str:
        """``"not_started"``, ``"starting"``, ``"listening"`` or ``"exited"``."""
        if self.process is None:
            return "not_started"
        if self.process.poll() is not None:
            return "exited"
        return "listening" if self._listening.is_set() else "starting"

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_tail(self, n: int = 20) -> list[str]:
        """The last ``n`` lines the process printed (stdout and stderr merged)."""
        return list(self._log)[-n:]

    def wait_listening(self, timeout_s: float) -> tuple[str, int]:
        """Block until the LISTENING line (for scripts/tests; the add-on polls :attr:`state` instead).

        Raises:
            RuntimeError: the process exited first (message has its last output lines) or was never started.
            TimeoutError: no LISTENING line within ``timeout_s`` seconds.
        """
        if self.process is None:
            raise RuntimeError("the backend was not started")
        deadline = time.monotonic() + timeout_s
        while not self._listening.wait(0.05):
            if self.process.poll() is not None:
                if self._reader is not None:
                    self._reader.join(1.0)
                if self._listening.is_set():
                    break
                raise RuntimeError(f"the backend exited with code {self.process.returncode} before listening:\n"
                                   + "\n".join(self.log_tail()))
            if time.monotonic() > deadline:
                raise TimeoutError(f"the backend printed no {LISTENING_PREFIX} line within {timeout_s:.0f} s")
        assert self._address is not None
        return self._address

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """Terminate the process (SIGTERM, then SIGKILL after ``timeout_s``); returns its exit code. Idempotent."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        if self._reader is not None:
            self._reader.join(1.0)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode
