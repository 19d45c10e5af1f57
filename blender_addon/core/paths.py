"""Where LatentForge keeps its per-user files: the backend token, the install config and the job store.

Shared by ``install.py`` (system Python), the backend and the Blender add-on; stdlib only.

Layout of the home folder (``$LATENTFORGE_HOME``, else the platform's per-user config folder)::

    token          secret for the socket handshake, mode 0600 (hex string, 64 chars); its holder is the admin
    tokens.json    one token per artist (``python -m backend tokens``): names, roles, SHA-256 of each token, mode 0600
    tls-cert.pem   the backend's self-signed TLS certificate (``serve --tls``, ``install.py --tls``)
    tls-key.pem    its private key, mode 0600
    config.json    {"python", "repo_root", "host", "port", "data_dir", "version"} written by install.py
    data/          the backend's job store (jobs.sqlite3 + jobs/<job_id>/ artifact folders)
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9876


def home_dir() -> Path:
    """The per-user LatentForge folder (not created here).

    ``$LATENTFORGE_HOME`` wins; else ``%APPDATA%/LatentForge`` on Windows, ``~/Library/Application
    Support/LatentForge`` on macOS and ``$XDG_CONFIG_HOME/latentforge`` (default ``~/.config``) elsewhere.
    """
    env = os.environ.get("LATENTFORGE_HOME")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming")) / "LatentForge"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "LatentForge"
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "latentforge"


def token_path() -> Path:
    return home_dir() / "token"


def tokens_path() -> Path:
    """The identities file of a studio backend (one token per artist), ``<home>/tokens.json``."""
    return home_dir() / "tokens.json"


def tls_cert_path() -> Path:
    """The backend's TLS certificate (PEM), ``<home>/tls-cert.pem``."""
    return home_dir() / "tls-cert.pem"


def tls_key_path() -> Path:
    """The private key of :func:`tls_cert_path` (PEM, mode 0600), ``<home>/tls-key.pem``."""
    return home_dir() / "tls-key.pem"


def config_path() -> Path:
    return home_dir() / "config.json"


def default_data_dir() -> Path:
    return home_dir() / "data"


def read_token(path: Path | None = None) -> str:
    """Return the handshake token stored at ``path`` (default :func:`token_path`).

    Raises:
        FileNotFoundError: with a message telling the user to run ``python install.py``.
    """
    path = Path(path) if path else token_path()
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"No LatentForge token at {path}. Run `python install.py` (it writes one), "
            "or point the add-on/backend at the token file of your backend."
        ) from None
    if not token:
        raise ValueError(f"The token file {path} is empty; run `python install.py` to write a new one.")
    return token


def ensure_token(path: Path | None = None) -> tuple[str, bool]:
    """Read the token at ``path``, creating a fresh random one (mode 0600) if it is missing or empty.

    Returns:
        ``(token, created)``.
    """
    path = Path(path) if path else token_path()
    try:
        return read_token(path), False
    except (FileNotFoundError, ValueError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return token, True


def read_config(path: Path | None = None) -> dict:
    """The install config (see module docstring); ``{}`` when install.py has not written one."""
    path = Path(path) if path else config_path()
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def write_config(config: dict, path: Path | None = None) -> Path:
    """Write ``config`` as JSON atomically; returns the path."""
    path = Path(path) if path else config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
