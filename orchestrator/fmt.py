"""Pure text formatting shared by the `orchestrate` status table and the dashboard.

No imports of ours: the CLI (the composition root) and tui/ both use these, so they
live below both instead of in orchestrator/cli.py.
"""

from __future__ import annotations


def human_bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n //= 1024  # type: ignore[assignment]
    return f"{n}B"


def stall_text(p99: float | None, mx: float | None) -> str:
    """Event-loop stall over the last minute as 'p99/max' ms; '-' when the engine does not report it."""
    if p99 is None and mx is None:
        return "-"
    return f"{p99 or 0:.0f}/{mx or 0:.0f}"


def alarms_text(alarms: list[str] | None) -> str:
    return ",".join(alarms) if alarms else "-"


def ms_text(ms: float | None) -> str:
    """A latency from a node's /metrics in ms; '-' when not scraped (no metrics URL, or it did not answer)."""
    if ms is None:
        return "-"
    return f"{ms:.1f}" if ms < 10 else f"{ms:.0f}"
