"""Who a client is: one token per artist plus the admin, and the file that holds them.

- The token file (``<home>/token``, written by install.py) belongs to the identity ``admin`` (role admin): one
  artist at home is the admin of their own backend, as before identities existed.
- ``<home>/tokens.json`` (mode 0600, written by ``python -m backend tokens add|revoke``) holds more identities:
  ``{"version": 1, "identities": {name: {"role": "artist"|"admin", "sha256": hex, "created": unix seconds}}}``.
  Only the SHA-256 of each token is stored, never the token (tokens are 32 random bytes, so a plain hash is enough:
  there is nothing to guess).
- An artist lists, attaches to, cancels, deletes and fetches results of their own jobs only; an admin of every job.

:class:`Identities` is what a running server asks at each ``hello``: it re-reads ``tokens.json`` when the file
changed (a ``stat`` per call), so ``tokens add`` and ``tokens revoke`` take effect without a restart. A file that
cannot be read any more fails closed: no identity of it is accepted (the admin token still is) until it is fixed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from blender_addon.core import protocol

log = logging.getLogger(__name__)

ADMIN_NAME = "admin"
"""The identity of the token file; jobs stored before identities existed belong to it."""
ROLES = protocol.ROLES
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
"""Identity names: 1–32 characters, lower-case letters, digits, ``_ . -``, starting with a letter or digit."""
TOKENS_FILE_VERSION = 1


class IdentityError(ValueError):
    """A bad identity name, an unknown one, or a tokens file that cannot be used (the message says which)."""


@dataclass(frozen=True)
class Identity:
    """An authenticated client: its ``name`` (job owner) and ``role`` (``"artist"`` or ``"admin"``); ``digest`` is
    the SHA-256 of the token it presented (tokens.json identities), so a re-issued token does not revive an old
    connection."""

    name: str
    role: str
    digest: str = field(default="", compare=False, repr=False)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def scope(self) -> str | None:
        """The owner whose jobs this identity may see and touch; None = every job (an admin)."""
        return None if self.is_admin else self.name


ADMIN = Identity(ADMIN_NAME, "admin")


def token_hash(token: str) -> str:
    """SHA-256 of the token's UTF-8 bytes, 64 lower-case hex digits (what tokens.json stores)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def check_name(name: str) -> str:
    """``name`` if it is a valid identity name other than the admin's. Raises IdentityError."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise IdentityError(f"identity name {protocol.safe_text(str(name), 40)!r} must be 1-32 characters of a-z, "
                            f"0-9, '_', '.', '-', starting with a letter or digit")
    if name == ADMIN_NAME:
        raise IdentityError(f"{ADMIN_NAME!r} is the identity of the token file; choose another name "
                            f"(`tokens add NAME --admin` makes another admin)")
    return name


# ---- the file ------------------------------------------------------------------------------------------------------

def read_tokens_file(path: Path) -> dict[str, dict]:
    """``{name: {"role", "sha256", "created"}}`` from ``path``; ``{}`` when it does not exist.

    Raises:
        IdentityError: the file is not JSON of the documented form (the message names the file and the entry).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise IdentityError(f"cannot read the tokens file {path}: {err.strerror or err}") from None
    try:
        data = json.loads(text)
    except ValueError as err:
        raise IdentityError(f"the tokens file {path} is not JSON ({err})") from None
    if not isinstance(data, dict) or data.get("version") != TOKENS_FILE_VERSION \
            or not isinstance(data.get("identities"), dict):
        raise IdentityError(f"the tokens file {path} is not a version-{TOKENS_FILE_VERSION} tokens file "
                            f"({{\"version\": 1, \"identities\": {{...}}}})")
    entries = {}
    for name, entry in data["identities"].items():
        ok = (isinstance(entry, dict) and NAME_RE.fullmatch(str(name)) and name != ADMIN_NAME
              and entry.get("role") in ROLES and isinstance(entry.get("sha256"), str)
              and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]))
        if not ok:
            raise IdentityError(f"the tokens file {path} has a bad entry {protocol.safe_text(str(name), 40)!r} "
                                f"(needs a valid name other than {ADMIN_NAME!r}, role artist|admin and a sha256 of "
                                f"64 hex digits)")
        entries[name] = {"role": entry["role"], "sha256": entry["sha256"], "created": entry.get("created")}
    return entries


def write_tokens_file(path: Path, entries: dict[str, dict]) -> None:
    """Write ``entries`` to ``path`` atomically (a temporary file, mode 0600, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"version": TOKENS_FILE_VERSION, "identities": dict(sorted(entries.items()))}
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def add_identity(path: Path, name: str, admin: bool = False) -> str:
    """Make a new random token for ``name`` (role admin when ``admin``, else artist), store its hash and return
    the token (shown once: it is not stored). Raises IdentityError for a bad or taken name."""
    entries = read_tokens_file(path)
    check_name(name)
    if name in entries:
        raise IdentityError(f"identity {name!r} exists already; `tokens revoke {name}` first to give it a new token")
    token = secrets.token_hex(32)
    entries[name] = {"role": "admin" if admin else "artist", "sha256": token_hash(token), "created": time.time()}
    write_tokens_file(path, entries)
    return token


def revoke_identity(path: Path, name: str) -> None:
    """Remove ``name`` from the tokens file (its token stops working at the next hello or request).
    Raises IdentityError when there is no such identity."""
    entries = read_tokens_file(path)
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none"
        raise IdentityError(f"no identity {protocol.safe_text(str(name), 40)!r} in {path} (identities: {known})")
    del entries[name]
    write_tokens_file(path, entries)


# ---- the server's view ---------------------------------------------------------------------------------------------

class Identities:
    """The tokens a server accepts: ``admin_token`` (the token file) and the identities of ``tokens_file``.

    Args:
        admin_token: the token file's content (stripped, non-empty).
        tokens_file: path of tokens.json, or None for the admin alone.
    Raises:
        IdentityError: the tokens file exists but cannot be used (checked once at start, so a typo stops the
            server instead of locking every artist out).
    """

    def __init__(self, admin_token: str, tokens_file: Path | None = None):
        if not admin_token:
            raise ValueError("the server needs a non-empty admin token")
        self.admin_token = admin_token
        self.tokens_file = Path(tokens_file) if tokens_file is not None else None
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._entries: dict[str, dict] = {}
        if self.tokens_file is not None:
            self._entries = read_tokens_file(self.tokens_file)
            self._stamp = self._file_stamp()

    def _file_stamp(self) -> tuple | None:
        try:
            st = self.tokens_file.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _current(self) -> dict[str, dict]:
        """The identities of tokens.json as of now (re-read when its stat changed)."""
        if self.tokens_file is None:
            return {}
        with self._lock:
            stamp = self._file_stamp()
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._entries = read_tokens_file(self.tokens_file)
                    log.info("tokens file re-read: %d identities", len(self._entries))
                except IdentityError as err:
                    log.error("%s; no identity of it is accepted until it is fixed", err)
                    self._entries = {}
            return self._entries

    def match(self, token: str) -> Identity | None:
        """The identity whose token is ``token``, or None. Every stored hash is compared (constant time each), so
        the time taken does not depend on which one matched."""
        found = ADMIN if protocol.tokens_match(self.admin_token, token) else None
        digest = token_hash(token).encode("ascii")
        for name, entry in self._current().items():
            if hmac.compare_digest(digest, entry["sha256"].encode("ascii")) and found is None:
                found = Identity(name, entry["role"], entry["sha256"])
        return found

    def still_valid(self, identity: Identity) -> bool:
        """False once ``identity`` was revoked or its role changed since it said hello."""
        if identity == ADMIN and not identity.digest:
            return True
        entry = self._current().get(identity.name)
        return entry is not None and entry["role"] == identity.role and entry["sha256"] == identity.digest

    def names(self) -> list[Identity]:
        """Every identity: the admin first, then tokens.json's, by name."""
        return [ADMIN] + [Identity(n, e["role"]) for n, e in sorted(self._current().items())]
