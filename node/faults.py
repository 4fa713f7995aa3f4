"""The in-process, iptables-style fault rule table enforced by the peer transport.

Rules name directed peer pairs by member name ("*" matches any). A node
enforces a rule both when it sends (it is the source) and when it receives
(it is the destination), so a partition holds even if only one side knows.
This is chaos' unprivileged network backend; it only exists when the node was
started with --enable-fault-injection.
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass
from typing import Any

ACTIONS = ("drop", "loss", "delay")


@dataclass(frozen=True, slots=True)
class Rule:
    src: str
    dst: str
    action: str  # drop | loss | delay
    probability: float = 1.0  # for loss
    delay_ms: float = 0.0  # for delay
    jitter_ms: float = 0.0

    def matches(self, src: str, dst: str) -> bool:
        return self.src in ("*", src) and self.dst in ("*", dst)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FaultRuleError(ValueError):
    pass


def make_rule(
    src: str, dst: str, action: str, probability: float = 1.0, delay_ms: float = 0.0, jitter_ms: float = 0.0
) -> Rule:
    if action not in ACTIONS:
        raise FaultRuleError(f"unknown fault action {action!r}; expected one of {', '.join(ACTIONS)}")
    if not src or not dst:
        raise FaultRuleError("a rule needs a source and a destination (use '*' for any)")
    if action == "loss" and not 0.0 <= probability <= 1.0:
        raise FaultRuleError(f"loss probability must be within [0, 1], got {probability}")
    if action == "delay" and (delay_ms < 0 or jitter_ms < 0):
        raise FaultRuleError("delay and jitter must be >= 0 ms")
    return Rule(src, dst, action, probability, delay_ms, jitter_ms)


class FaultTable:
    def __init__(self, seed: int | None = None) -> None:
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self._rng = random.Random(seed)

    def set(self, rules: list[Rule]) -> None:
        with self._lock:
            self._rules = list(rules)

    def add(self, rules: list[Rule]) -> None:
        with self._lock:
            self._rules = [r for r in self._rules if r not in rules] + list(rules)

    def clear(self) -> None:
        with self._lock:
            self._rules = []

    def rules(self) -> list[Rule]:
        with self._lock:
            return list(self._rules)

    def verdict(self, src: str, dst: str) -> float | None:
        """None: drop the message; otherwise the delay in seconds to add (0 = deliver now)."""
        rules = self._rules
        if not rules:
            return 0.0
        delay = 0.0
        for r in rules:
            if not r.matches(src, dst):
                continue
            if r.action == "drop":
                return None
            if r.action == "loss" and self._rng.random() < r.probability:
                return None
            if r.action == "delay":
                delay = max(delay, (r.delay_ms + self._rng.uniform(0, r.jitter_ms)) / 1000.0)
        return delay
