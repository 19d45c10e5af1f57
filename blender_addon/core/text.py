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
