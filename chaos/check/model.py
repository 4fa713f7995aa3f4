"""Verdicts and results of a register check: what chaos.checker returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..history import FAIL, INFO, OK, Op
from .search import Row, make_row

VALID, INVALID, UNKNOWN = "valid", "invalid", "unknown"


@dataclass
class KeyResult:
    key: str
    verdict: str
    ops: int
    explored: int = 0
    culprit: Op | None = None
    kind: str = ""  # stale read | never-written value | lost write | ...
    window: list[Op] = field(default_factory=list)
    reason: str = ""  # why unknown: time budget, memo bound, skipped after another key failed
    prefix: list[Op] = field(default_factory=list)  # longest linearizable prefix found, in order
    seconds: float = 0.0

    def explain(self) -> str:
        if self.verdict != INVALID or self.culprit is None:
            why = f": {self.reason}" if self.reason else ""
            return f"key {self.key}: {self.verdict} ({self.ops} operations){why}"
        lines = [
            f"key {self.key}: NOT linearizable — {self.kind}",
            f"  cannot place: {self.culprit.describe()}",
            "  operations around it:",
        ]
        lines += [f"    {op.describe()}" for op in self.window]
        return "\n".join(lines)


@dataclass
class Result:
    verdict: str
    keys: list[KeyResult]
    seconds: float
    ops: int
    lost_writes: list[Op] = field(default_factory=list)

    def failures(self) -> list[KeyResult]:
        return [k for k in self.keys if k.verdict == INVALID]

    def unknown(self) -> list[KeyResult]:
        return [k for k in self.keys if k.verdict == UNKNOWN]

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "operations": self.ops,
            "keys": len(self.keys),
            "seconds": round(self.seconds, 3),
            "invalid_keys": [k.key for k in self.failures()],
            "unknown_keys": [k.key for k in self.unknown()],
            "unknown_reasons": {k.key: k.reason for k in self.unknown()},
            "lost_writes": [op.describe() for op in self.lost_writes],
            "explanations": [k.explain() for k in self.failures()],
        }

    def summary(self) -> str:
        head = f"{self.verdict.upper()}: {self.ops} operations on {len(self.keys)} keys checked in {self.seconds:.2f}s"
        parts = [head]
        if self.lost_writes:
            parts.append(f"{len(self.lost_writes)} acknowledged write(s) lost, e.g. {self.lost_writes[0].describe()}")
        parts += [k.explain() for k in self.failures()[:3]]
        undecided = [k for k in self.unknown() if not k.reason.startswith("not checked")]
        if undecided:
            parts.append("undecided: " + "; ".join(f"key {k.key} ({k.reason or 'time budget'})" for k in undecided[:5]))
        return "\n".join(parts)


def relevant(ops: list[Op]) -> list[Op]:
    """What the search sees: failed ops never happened, unknown reads tell nothing."""
    return [op for op in ops if op.outcome != FAIL and not (op.outcome == INFO and op.kind == "get")]


def rows_of(hist: list[Op]) -> list[Row]:
    return [make_row(o.kind, o.value, o.expect, o.succeeded, o.outcome == OK, o.invoke, o.complete) for o in hist]
