"""Human-readable text both sides show (bpy-free): the add-on's progress line and the command line's progress."""

from __future__ import annotations


def format_duration(seconds: float | None) -> str:
    """``"1h 02m"`` / ``"3m 05s"`` / ``"42s"`` for a duration in seconds; ``""`` when unknown (None) or negative."""
    if seconds is None or seconds < 0:
        return ""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


def backend_summary(welcome: dict) -> str:
    """The connected backend in one line, from its ``welcome``: ``"cuda:0 (NVIDIA RTX 4070) · 12.0 GB, 10.9 GB free ·
    backend 0.4.0"`` (the memory part only when the backend reports it; decimal GB), then ``· alice (artist)`` when
    the token is an identity other than the token file's admin."""
    parts = [str(welcome.get("device", "?"))]
    total, free = welcome.get("memory_total_bytes"), welcome.get("memory_free_bytes")
    if isinstance(total, int) and isinstance(free, int):
        parts.append(f"{total / 1e9:.1f} GB, {free / 1e9:.1f} GB free")
    parts.append(f"backend {welcome.get('server_version', '?')}")
    identity, role = welcome.get("identity"), welcome.get("role")
    if isinstance(identity, str) and identity != "admin":  # a studio backend: whose jobs this connection sees
        parts.append(f"{identity} ({role})")
    return " · ".join(parts)
