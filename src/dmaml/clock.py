"""Time as people read it, for progress lines, plans and status tables."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """``seconds`` as people read it: 42s, 5m12s, 3h05m."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
