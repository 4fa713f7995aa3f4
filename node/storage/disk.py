"""A node's data directory: member metadata, WAL and snapshots, persisted in the order Raft needs."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from node.raft import Entry, HardState, Ready, Snapshot

from .snapshot import SnapshotStore
from .wal import WAL


@dataclass
class Meta:
    """Who this data directory belongs to; checked on every start."""

    name: str
    member_id: int
    cluster_id: int
    version: int = 1


@dataclass
class RecoveredState:
    meta: Meta | None
    hard_state: HardState
    snapshot: Snapshot | None
    entries: list[Entry]
    truncated: list[str] = field(default_factory=list)


class StorageError(Exception):
    pass


class DiskStorage:
    META = "member.json"

    def __init__(self, data_dir: Path, wal: WAL, snaps: SnapshotStore) -> None:
        self.data_dir = data_dir
        self.wal = wal
        self.snaps = snaps

    @classmethod
    def open(cls, data_dir: Path) -> tuple[DiskStorage, RecoveredState]:
        data_dir.mkdir(parents=True, exist_ok=True)
        meta = None
        mp = data_dir / cls.META
        if mp.exists():
            try:
                meta = Meta(**json.loads(mp.read_text()))
            except (ValueError, TypeError) as e:
                raise StorageError(f"{mp}: unreadable member metadata ({e})") from e
        snaps = SnapshotStore(data_dir / "snap")
        snap = snaps.load()
        wal, st = WAL.open(data_dir / "wal")
        if st.reset is not None and (snap is None or snap.index < st.reset[0]):
            raise StorageError(f"{data_dir}: WAL refers to snapshot {st.reset[0]} but no such snapshot file exists")
        ents = st.entries
        if snap is not None:
            ents = [e for e in ents if e.index > snap.index]
            if ents and ents[0].index != snap.index + 1:
                raise StorageError(f"{data_dir}: WAL entries start at {ents[0].index}, snapshot ends at {snap.index}")
        return cls(data_dir, wal, snaps), RecoveredState(meta, st.hard_state, snap, ents, st.truncated)

    def write_meta(self, meta: Meta) -> None:
        path = self.data_dir / self.META
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(meta)))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.rename(tmp, path)

    def persist(self, rd: Ready) -> None:
        """Snapshot file first, then its WAL mark, entries and hard state in one fsync."""
        reset = None
        if rd.snapshot is not None:
            self.snaps.save(rd.snapshot)
            reset = (rd.snapshot.index, rd.snapshot.term)
        self.wal.save(rd.hard_state, rd.entries, reset=reset, sync=rd.must_sync or reset is not None)

    def save_snapshot(self, snap: Snapshot, release_before: int) -> None:
        """A snapshot the application made; WAL segments wholly before release_before may go."""
        self.snaps.save(snap)
        self.wal.release_to(release_before)

    def close(self) -> None:
        self.wal.close()
