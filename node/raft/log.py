"""The in-memory Raft log: a snapshot, a compaction offset and the entries after it.

The log also tracks which prefix has been persisted (``stable``), so a Ready
batch hands out exactly the entries not yet on disk, and committed entries are
only handed to the application once they are durable locally.
"""

from __future__ import annotations

from .types import Entry, Snapshot


class LogError(Exception):
    """An internal invariant of the log was broken (a bug, never bad input)."""


class RaftLog:
    def __init__(self, snapshot: Snapshot | None = None, entries: list[Entry] | None = None) -> None:
        snap = snapshot if snapshot is not None else Snapshot()
        self.snapshot: Snapshot = snap
        self.offset: int = snap.index  # entries[0].index == offset + 1
        self.offset_term: int = snap.term
        self.entries: list[Entry] = []
        self.committed: int = snap.index
        self.applied: int = snap.index
        self.stable: int = snap.index
        self.pending_snapshot: Snapshot | None = None  # received, not yet persisted/applied
        if entries:
            ents = [e for e in entries if e.index > self.offset]
            if ents and ents[0].index != self.offset + 1:
                raise LogError(f"entries start at {ents[0].index}, expected {self.offset + 1}")
            self.entries = ents
            self.stable = self.last_index()

    # -- queries ---------------------------------------------------------
    def first_index(self) -> int:
        return self.offset + 1

    def last_index(self) -> int:
        return self.offset + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.offset_term

    def term(self, index: int) -> int | None:
        """Term of the entry at index, or None when it is compacted or beyond the end."""
        if index == self.offset:
            return self.offset_term
        if self.offset < index <= self.last_index():
            return self.entries[index - self.offset - 1].term
        if index == self.snapshot.index:
            return self.snapshot.term
        return None

    def match_term(self, index: int, term: int) -> bool:
        t = self.term(index)
        return t is not None and t == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        lt = self.last_term()
        return last_term > lt or (last_term == lt and last_index >= self.last_index())

    def slice(self, lo: int, hi: int, max_bytes: int = 0, max_count: int = 0) -> list[Entry] | None:
        """Entries [lo, hi); None when lo is compacted. Always at least one entry if any."""
        if lo <= self.offset:
            return None
        hi = min(hi, self.last_index() + 1)
        if lo >= hi:
            return []
        ents = self.entries[lo - self.offset - 1 : hi - self.offset - 1]
        if max_count and len(ents) > max_count:
            ents = ents[:max_count]
        if max_bytes:
            size = 0
            for i, e in enumerate(ents):
                size += len(e.data) + 24
                if size > max_bytes and i > 0:
                    return ents[:i]
        return ents

    def unstable_entries(self) -> list[Entry]:
        if self.stable >= self.last_index():
            return []
        start = max(self.stable, self.offset)
        return self.entries[start - self.offset :]

    def next_committed(self, max_bytes: int = 0) -> list[Entry]:
        """Committed and durable entries the application has not applied yet."""
        lo = self.applied + 1
        if self.pending_snapshot is not None:
            lo = max(lo, self.pending_snapshot.index + 1)
        hi = min(self.committed, self.stable) + 1
        if lo >= hi:
            return []
        return self.slice(lo, hi, max_bytes=max_bytes) or []

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """Largest index <= index whose term is <= term (etcd's fast back-tracking)."""
        index = min(index, self.last_index())
        while index > self.offset:
            t = self.term(index)
            if t is not None and t <= term:
                return index
            index -= 1
        return index

    # -- mutations -------------------------------------------------------
    def append(self, entries: list[Entry]) -> int:
        if not entries:
            return self.last_index()
        after = entries[0].index - 1
        if after < self.committed:
            raise LogError(f"append after {after} would overwrite committed {self.committed}")
        if after < self.last_index():
            del self.entries[after - self.offset :]
        elif after > self.last_index():
            raise LogError(f"gap: append after {after}, last index {self.last_index()}")
        self.entries.extend(entries)
        self.stable = min(self.stable, after)
        return self.last_index()

    def maybe_append(self, index: int, log_term: int, committed: int, entries: list[Entry]) -> int | None:
        """Follower side of AppendEntries; returns the last new index or None on mismatch."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        conflict = 0
        for e in entries:
            if not self.match_term(e.index, e.term):
                conflict = e.index
                break
        if conflict:
            if conflict <= self.committed:
                raise LogError(f"entry {conflict} conflicts with committed {self.committed}")
            self.append(entries[conflict - index - 1 :])
        self.commit_to(min(committed, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise LogError(f"commit {index} beyond last index {self.last_index()}")
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        if index > self.committed and self.term(index) == term:
            self.committed = index
            return True
        return False

    def stable_to(self, index: int, term: int) -> None:
        if self.match_term(index, term) and index > self.stable:
            self.stable = index

    def restore(self, snap: Snapshot) -> None:
        """Replace the log by a snapshot received from the leader."""
        self.snapshot = snap
        self.offset = snap.index
        self.offset_term = snap.term
        self.entries = []
        self.committed = snap.index
        self.stable = snap.index  # entries; the snapshot itself is pending
        self.pending_snapshot = snap

    def snapshot_applied(self, snap: Snapshot) -> None:
        if self.pending_snapshot is not None and self.pending_snapshot.index == snap.index:
            self.pending_snapshot = None
        self.applied = max(self.applied, snap.index)

    def compact(self, snap: Snapshot, keep: int) -> None:
        """Install a snapshot the application made at an applied index; keep `keep` entries before it."""
        if snap.index <= self.snapshot.index:
            return
        if snap.index > self.applied:
            raise LogError(f"snapshot {snap.index} beyond applied {self.applied}")
        self.snapshot = snap
        new_offset = max(self.offset, snap.index - keep)
        if new_offset > self.offset:
            t = self.term(new_offset)
            if t is None:
                raise LogError(f"cannot compact to {new_offset}")
            del self.entries[: new_offset - self.offset]
            self.offset, self.offset_term = new_offset, t
