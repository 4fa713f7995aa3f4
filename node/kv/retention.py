"""etcd's --auto-compaction-mode / --auto-compaction-retention, parsed.

Pure functions with no gRPC or event-loop imports, so the node's flag parsing, the compactor
(node/api/compactor.py) and the orchestrator's config check accept and refuse exactly the same
values, with the same one-line messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MODES = ("periodic", "revision")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# ASCII digits only: str.isdigit/\d also accept e.g. "²", which float()/int() then refuse
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h)")


class RetentionError(ValueError):
    """A bad mode or retention; the message is one line naming the flag and the value."""


@dataclass(frozen=True)
class Retention:
    mode: str  # periodic | revision
    seconds: float = 0.0  # periodic
    revisions: int = 0  # revision

    @property
    def enabled(self) -> bool:
        return self.seconds > 0 or self.revisions > 0


def go_duration(s: str) -> float | None:
    """Go's time.ParseDuration for non-negative values ("1h30m", "90s", "1.5h"), in seconds;
    None if s is not one."""
    pos, total = 0, 0.0
    if not s:
        return None
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total if pos == len(s) else None


def parse_retention(mode: str, value: str) -> Retention:
    """etcd's parseCompactionRetention: a bare integer is hours (periodic) or revisions (revision);
    otherwise a Go duration, which only periodic mode can use. "0" disables auto-compaction."""
    if mode not in MODES:
        raise RetentionError(f"--auto-compaction-mode must be periodic or revision, not {mode!r}")
    v = value.strip()
    if v.isascii() and v.isdigit():
        n = int(v)
        return Retention(mode, seconds=n * 3600.0) if mode == "periodic" else Retention(mode, revisions=n)
    secs = go_duration(v)
    if secs is None:
        raise RetentionError(f"--auto-compaction-retention {value!r} is not a number or a duration like 1h, 30m, 90s")
    if mode == "revision":
        raise RetentionError(
            f"--auto-compaction-retention {value!r}: revision mode takes a count of revisions, not a duration"
        )
    return Retention(mode, seconds=secs)
