"""The job store: one SQLite row per job plus a folder of artifact files, with paging, deletion and a size/age cap.

Layout: ``<data_dir>/jobs.sqlite3`` (table ``jobs``) and ``<data_dir>/jobs/<job_id>/`` (``inputs.npz``,
``params.json``, ``result.npz``, ``texture.png``, ``result.glb``, ``preview.png``).

- Listing pages with an opaque cursor (``"<created>:<job_id>"`` of the last record of a page, newest first); a page
  stops at ``limit`` records or :data:`PAGE_BUDGET_BYTES` of JSON, whichever comes first. Records carry each text
  once, capped and escaped (:func:`job_record`), so any stored text lists, also text written by older versions.
- A result file that is missing or unreadable raises :class:`StoreError` ``result_damaged`` naming the job and the
  file, never a server path.
- The cap policy (:meth:`JobStore.prune`) deletes finished jobs only (done/failed/cancelled), those finished longest
  ago first; queued and running jobs are never deleted.
- Each row records its ``owner``, the identity that submitted it (``backend/serving/identities.py``); a store
  written before identities existed gains the column on open, every old job owned by ``admin``.

Thread-safe: one SQLite connection guarded by a lock.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import sqlite3
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from blender_addon.core import protocol
from blender_addon.core.protocol import safe_text

from ..geometry.mesh import save_glb, side_by_side
from ..pipelines.io import meshes_from_arrays, point_clouds_from_arrays
from .identities import ADMIN_NAME

log = logging.getLogger(__name__)

TERMINAL = ("done", "failed", "cancelled")
"""Statuses of finished jobs: the only ones that may be deleted."""

PAGE_BUDGET_BYTES = 512 << 10
"""Most JSON bytes of job records in one ``jobs`` page (half of the protocol's 1 MiB header limit)."""

RECORD_TEXT_CHARS = protocol.LIST_PROMPT_CHARS
"""Most characters of any text in a listed record (prompt, other string params)."""

RECORD_ERROR_CHARS = 1000
"""Most characters of a failed job's error in a listed record."""

_CURSOR_RE = re.compile(r"(-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?):([A-Za-z0-9_-]{1,64})\Z")


class StoreError(Exception):
    """A store request that cannot be served; ``code`` is a protocol error code (``message`` has no server path)."""

    def __init__(self, code: str, message: str, job_id: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.job_id = job_id


def _clean(value: Any, limit: int, depth: int = 0) -> Any:
    """A JSON value safe to send: every string (keys too) valid Unicode and capped at ``limit`` characters."""
    if isinstance(value, str):
        return safe_text(value, limit)
    if depth > 20:
        return None
    if isinstance(value, dict):
        return {safe_text(k, 64): _clean(v, limit, depth + 1) for k, v in list(value.items())[:256]}
    if isinstance(value, (list, tuple)):
        return [_clean(v, limit, depth + 1) for v in value[:256]]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def job_record(job: dict) -> dict:
    """The JSON a client sees in a ``jobs`` page (keys :data:`protocol.JOB_RECORD_KEYS`): each text once, capped
    and escaped; ``params`` without the prompt (it is the record's ``prompt``)."""
    params = job["params"] if isinstance(job["params"], dict) else {}
    prompt = params.get("prompt")
    return {"job_id": job["job_id"], "pipeline": safe_text(job["pipeline"], protocol.MAX_NAME_CHARS),
            "status": job["status"], "prompt": None if prompt is None else safe_text(prompt, RECORD_TEXT_CHARS),
            "created": job["created"], "started": job["started"], "finished": job["finished"],
            "error": None if job["error"] is None else safe_text(job["error"], RECORD_ERROR_CHARS),
            "params": _clean({k: v for k, v in params.items() if k != "prompt"}, RECORD_TEXT_CHARS),
            "owner": safe_text(job.get("owner") or ADMIN_NAME, protocol.MAX_NAME_CHARS)}


def encode_cursor(created: float, job_id: str) -> str:
    """The opaque ``next_cursor`` after the record (created, job_id)."""
    return f"{created!r}:{job_id}"


def decode_cursor(cursor: str) -> tuple[float, str]:
    """``(created, job_id)`` of a cursor made by :func:`encode_cursor`. Raises StoreError("bad_field")."""
    match = _CURSOR_RE.match(cursor) if isinstance(cursor, str) else None
    created = float(match.group(1)) if match else math.nan
    if not math.isfinite(created):
        raise StoreError("bad_field", "list_jobs.cursor is not a cursor this server issued (send jobs.next_cursor "
                                      "back unchanged, or no cursor for the first page)")
    return created, match.group(2)


def _folder_bytes(folder: Path) -> int:
    total = 0
    try:
        for entry in folder.iterdir():
            try:
                total += entry.stat().st_size
            except OSError:
                pass
    except OSError:
        return 0
    return total


class JobStore:
    """SQLite rows + artifact folders. See the module docstring.

    Args:
        data_dir: store folder (created).
    """

    COLUMNS = ("job_id", "pipeline", "params", "status", "created", "started", "finished", "error", "error_code",
               "metadata", "timings", "owner", "worker")

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.jobs_dir = self.data_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.data_dir / "jobs.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, params TEXT NOT NULL, "
            "status TEXT NOT NULL, created REAL NOT NULL, started REAL, finished REAL, error TEXT, error_code TEXT, "
            f"metadata TEXT, timings TEXT, owner TEXT NOT NULL DEFAULT '{ADMIN_NAME}')")
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if "size_bytes" not in columns:  # stores written before the cap policy: sizes are measured on demand
            self._db.execute("ALTER TABLE jobs ADD COLUMN size_bytes INTEGER")
        if "owner" not in columns:  # stores written before identities: every job is the admin's
            self._db.execute(f"ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT '{ADMIN_NAME}'")
            log.debug("job store %s: added the owner column (existing jobs belong to %s)", self.data_dir, ADMIN_NAME)
        if "worker" not in columns:  # which worker ran the job ("local", "ray:actor-2@host"); NULL before it ran
            self._db.execute("ALTER TABLE jobs ADD COLUMN worker TEXT")
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created DESC, job_id DESC)")
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, created DESC, job_id DESC)")

    # ---- rows ----------------------------------------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def insert(self, job_id: str, pipeline: str, params: dict, inputs: dict[str, np.ndarray],
               owner: str = ADMIN_NAME) -> None:
        """A new queued job of ``owner`` (an identity name) with its inputs and params files."""
        folder = self.job_dir(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "inputs.npz", **inputs)
        (folder / "params.json").write_text(json.dumps(params, indent=2))
        with self._lock:
            self._db.execute("INSERT INTO jobs (job_id, pipeline, params, status, created, size_bytes, owner) "
                             "VALUES (?, ?, ?, 'queued', ?, ?, ?)",
                             (job_id, pipeline, json.dumps(params), time.time(), _folder_bytes(folder), owner))

    def update(self, job_id: str, **values: Any) -> None:
        for key in ("metadata", "timings"):
            if key in values and not isinstance(values[key], str):
                values[key] = json.dumps(values[key])
        cols = ", ".join(f"{k} = ?" for k in values)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {cols} WHERE job_id = ?", (*values.values(), job_id))

    def get(self, job_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(self.COLUMNS)} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return self._row(row) if row else None

    def list(self, limit: int = 100, status: tuple[str, ...] | None = None) -> list[dict]:
        """Raw rows, newest first (for recovery and the CLI); ``limit`` is clamped to SQLite's integer range."""
        query = f"SELECT {', '.join(self.COLUMNS)} FROM jobs"
        args: list[Any] = []
        if status:
            query += f" WHERE status IN ({', '.join('?' * len(status))})"
            args += list(status)
        query += " ORDER BY created DESC, job_id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (*args, max(0, min(int(limit), 2 ** 62)))).fetchall()
        return [self._row(r) for r in rows]

    def page(self, limit: int, cursor: str | None = None,
             owner: str | None = None) -> tuple[list[dict], str | None]:
        """One page of :func:`job_record` s, newest first, and the cursor of the next page (None = last page).

        Args:
            limit: most records, 1 … ``protocol.LIST_JOBS_MAX_LIMIT``.
            cursor: a ``next_cursor`` of an earlier page, or None for the newest jobs.
            owner: only this identity's jobs; None = every job.
        Raises:
            StoreError: bad_field (a limit out of range or a cursor this store did not issue).
        """
        if type(limit) is not int or not 1 <= limit <= protocol.LIST_JOBS_MAX_LIMIT:
            raise StoreError("bad_field", f"list_jobs.limit must be an int in [1, {protocol.LIST_JOBS_MAX_LIMIT}]")
        query = f"SELECT {', '.join(self.COLUMNS)} FROM jobs"
        args: list[Any] = []
        where = []
        if cursor is not None:
            created, job_id = decode_cursor(cursor)
            where.append("(created < ? OR (created = ? AND job_id < ?))")
            args += [created, created, job_id]
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY created DESC, job_id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (*args, limit + 1)).fetchall()
        records: list[dict] = []
        used = 0
        for row in rows[:limit]:
            record = job_record(self._row(row))
            size = len(json.dumps(record, ensure_ascii=False).encode("utf-8", "backslashreplace"))
            if records and used + size > PAGE_BUDGET_BYTES:
                break
            records.append(record)
            used += size
        more = len(records) < len(rows)
        last = records[-1] if records else None
        return records, (encode_cursor(last["created"], last["job_id"]) if more and last else None)

    def _row(self, row) -> dict:
        job = dict(zip(self.COLUMNS, row))
        for key in ("params", "metadata", "timings"):
            try:
                job[key] = json.loads(job[key]) if job[key] else ({} if key != "metadata" else None)
            except ValueError:  # a damaged row still lists
                job[key] = {} if key != "metadata" else None
        return job

    # ---- files ---------------------------------------------------------------------------------------------------

    def load_inputs(self, job_id: str) -> dict[str, np.ndarray]:
        with np.load(self.job_dir(job_id) / "inputs.npz", allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    def save_result(self, job_id: str, arrays: dict[str, np.ndarray]) -> None:
        """Write ``result.npz`` (the result's wire arrays, every mesh and point cloud), ``texture.png``,
        ``normal_map.png`` (the first mesh's tangent-space normal map, when it has one) and ``result.glb`` (every
        mesh with its vertex colours, then every point cloud: one node each, named like the wire groups, laid out
        side by side) into the job folder."""
        from PIL import Image

        folder = self.job_dir(job_id)
        np.savez(folder / "result.npz", **arrays)
        results = meshes_from_arrays(arrays)
        clouds = point_clouds_from_arrays(arrays)
        texture = results[0].texture if results else None
        if texture is not None:
            Image.fromarray(texture.squeeze(-1) if texture.shape[-1] == 1 else texture).save(folder / "texture.png")
        normal_map = results[0].normal_map if results else None
        if normal_map is not None:
            Image.fromarray(normal_map).save(folder / "normal_map.png")
        if results or clouds:  # several meshes / clouds (samples): one node each, side by side along +X
            meshes = [r.mesh for r in results]
            items = meshes + [c.points for c in clouds]
            offsets = side_by_side(items) if len(items) > 1 else np.zeros((len(items), 3))
            save_glb(folder / "result.glb", meshes, texture, offsets=offsets[:len(meshes)],
                     v_colors=[r.v_color for r in results], point_clouds=[(c.points, c.colors) for c in clouds],
                     point_offsets=offsets[len(meshes):], normal_map=normal_map)
        self.measure(job_id)

    def load_result(self, job_id: str) -> dict[str, np.ndarray]:
        """The result arrays of a done job. Raises StoreError("result_damaged") naming the job and the file."""
        path = self.job_dir(job_id) / "result.npz"
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except FileNotFoundError:
            raise StoreError("result_damaged", f"job {job_id}: its result file result.npz is missing from the job "
                                               f"store; delete the job (delete_job) and submit it again",
                             job_id) from None
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
            log.warning("job %s: damaged %s: %s", job_id, path, err)
            raise StoreError("result_damaged", f"job {job_id}: its result file result.npz is damaged "
                                               f"({type(err).__name__}); delete the job (delete_job) and submit it "
                                               f"again", job_id) from None

    def save_preview(self, job_id: str, image: np.ndarray) -> None:
        from PIL import Image

        Image.fromarray(image).save(self.job_dir(job_id) / "preview.png")
        self.measure(job_id)

    def measure(self, job_id: str) -> int:
        """Record and return the bytes the job's folder takes now."""
        size = _folder_bytes(self.job_dir(job_id))
        with self._lock:
            self._db.execute("UPDATE jobs SET size_bytes = ? WHERE job_id = ?", (size, job_id))
        return size

    def delete(self, job_id: str) -> None:
        """Remove the job's row and folder (no status check: callers refuse queued/running jobs)."""
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    # ---- cap policy ----------------------------------------------------------------------------------------------

    def total_bytes(self) -> int:
        """Bytes of every job folder (sizes recorded in the rows; unknown sizes are measured once)."""
        with self._lock:
            unknown = [r[0] for r in self._db.execute("SELECT job_id FROM jobs WHERE size_bytes IS NULL")]
        for job_id in unknown:
            self.measure(job_id)
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(size_bytes), 0) FROM jobs").fetchone()[0])

    def prune(self, max_bytes: int | None = None, max_age_s: float | None = None,
              now: float | None = None) -> list[tuple[str, str]]:
        """Apply the cap policy; return ``[(job_id, reason), ...]`` of the deleted jobs.

        1. finished jobs (done/failed/cancelled) that finished more than ``max_age_s`` seconds ago are deleted;
        2. while the store takes more than ``max_bytes``, the finished job that finished longest ago is deleted;
        3. queued and running jobs are never deleted (the store may stay above the cap because of them).
        None or 0 disables a cap.
        """
        now = time.time() if now is None else now
        deleted: list[tuple[str, str]] = []
        marks = ", ".join("?" * len(TERMINAL))
        if max_age_s:
            with self._lock:
                old = [r[0] for r in self._db.execute(
                    f"SELECT job_id FROM jobs WHERE status IN ({marks}) AND COALESCE(finished, created) < ? "
                    f"ORDER BY COALESCE(finished, created), job_id", (*TERMINAL, now - max_age_s))]
            for job_id in old:
                self.delete(job_id)
                deleted.append((job_id, f"finished more than {max_age_s / 86400:g} days ago"))
        if max_bytes:
            total = self.total_bytes()
            if total > max_bytes:
                with self._lock:
                    rows = self._db.execute(
                        f"SELECT job_id, size_bytes FROM jobs WHERE status IN ({marks}) "
                        f"ORDER BY COALESCE(finished, created), job_id", TERMINAL).fetchall()
                for job_id, size in rows:
                    if total <= max_bytes:
                        break
                    self.delete(job_id)
                    total -= size or 0
                    deleted.append((job_id, f"the store was over its size cap of {max_bytes / 1e9:g} GB"))
        for job_id, reason in deleted:
            log.info("job store: deleted job %s (%s)", job_id, reason)
        return deleted

    def close(self) -> None:
        with self._lock:
            self._db.close()
