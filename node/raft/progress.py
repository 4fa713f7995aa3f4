"""The leader's view of one follower: how far it matches and how to feed it next."""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.IntEnum):
    PROBE = 0  # one append at a time until we find where logs match
    REPLICATE = 1  # optimistic pipelining within an in-flight window
    SNAPSHOT = 2  # a snapshot is on its way; send nothing else


class Inflights:
    """Last indexes of appends sent but not yet acknowledged (bounded window)."""

    __slots__ = ("cap", "items")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.items: deque[int] = deque()

    def add(self, index: int) -> None:
        self.items.append(index)

    def free_le(self, index: int) -> None:
        while self.items and self.items[0] <= index:
            self.items.popleft()

    def free_first(self) -> None:
        if self.items:
            self.items.popleft()

    def full(self) -> bool:
        return len(self.items) >= self.cap

    def reset(self) -> None:
        self.items.clear()


class Progress:
    __slots__ = (
        "inflights",
        "last_contact_tick",
        "match",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "snapshot_stale",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.recent_active = True
        self.snapshot_stale = False
        self.inflights = Inflights(max_inflight)
        self.last_contact_tick = 0

    def _reset_state(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_stale = False
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = index

    def maybe_update(self, index: int) -> bool:
        updated = False
        if index > self.match:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """Handle a rejected append; False when the rejection is stale."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1, 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def sent_entries(self, last_index: int, count: int) -> None:
        if self.state == ProgressState.REPLICATE:
            if count:
                self.next = last_index + 1
                self.inflights.add(last_index)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True
