"""A node's data directory: member metadata, WAL and snapshots, persisted in the order Raft needs.

Layout: ``member.json``, ``wal/*.wal``, ``snap/*.snap`` and, when the node keeps one, the space
reserve ``reserve.bin`` (ballast that is deleted to make room after ENOSPC; recovery never reads it).
Every write and sync goes through one FileIO (node/storage/fileio.py), the real OS by default.
"""

from __future__ import annotations

import errno
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from node.raft import Entry, HardState, Ready, Snapshot

from .fileio import REAL, DiskFull, FileIO, StorageError, storage_error
from .snapshot import SnapshotStore
from .wal import SEGMENT_BYTES, WAL


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


_CHUNK = 1 << 20


class DiskStorage:
    META = "member.json"
    RESERVE = "reserve.bin"

    def __init__(self, data_dir: Path, wal: WAL, snaps: SnapshotStore, io: FileIO | None = None) -> None:
        self.data_dir = data_dir
        self.wal = wal
        self.snaps = snaps
        self.io = io or REAL

    @classmethod
    def open(
        cls, data_dir: Path, io: FileIO | None = None, segment_bytes: int = SEGMENT_BYTES
    ) -> tuple[DiskStorage, RecoveredState]:
        fio = io or REAL
        meta = None
        mp = data_dir / cls.META
        try:
            fio.makedirs(data_dir)
            names = fio.listdir(data_dir)
            raw = fio.read(mp) if cls.META in names else None
        except OSError as e:
            raise storage_error(e, data_dir, "opening the data dir") from e
        if raw is not None:
            try:
                meta = Meta(**json.loads(raw.decode()))
            except (ValueError, TypeError) as e:
                raise StorageError(f"{mp}: unreadable member metadata ({e})", path=mp) from e
        snaps = SnapshotStore(data_dir / "snap", io=fio)
        snap = snaps.load()
        wal, st = WAL.open(data_dir / "wal", segment_bytes, io=fio)
        if st.reset is not None and (snap is None or snap.index < st.reset[0]):
            wal.close()
            raise StorageError(f"{data_dir}: WAL refers to snapshot {st.reset[0]} but no such snapshot file exists")
        ents = st.entries
        if snap is not None:
            at = [e.term for e in ents if e.index == snap.index]
            ents = [e for e in ents if e.index > snap.index]
            if ents and ents[0].index != snap.index + 1:
                wal.close()
                raise StorageError(f"{data_dir}: WAL entries start at {ents[0].index}, snapshot ends at {snap.index}")
            stale = bool(at) and at[0] != snap.term
            behind = not ents and not at
            if (stale or behind) and st.reset != (snap.index, snap.term):
                # A snapshot from the leader reached its file but a crash lost its WAL mark: as
                # Raft does on InstallSnapshot, the snapshot replaces a log that does not contain
                # it. Write the mark now, or the next appends would leave a gap in the WAL.
                ents = []
                wal.save(None, [], reset=(snap.index, snap.term))
                st.truncated.append(f"WAL marked as reset to snapshot {snap.index} (the mark was lost)")
        elif ents and ents[0].index != 1:
            wal.close()
            raise StorageError(f"{data_dir}: WAL entries start at {ents[0].index} but there is no snapshot")
        if cls.RESERVE + ".tmp" in names:
            try:
                fio.unlink(data_dir / (cls.RESERVE + ".tmp"))  # a reserve_space that crashed
            except OSError as e:
                wal.close()
                raise storage_error(e, data_dir, "cleaning up the data dir") from e
        return cls(data_dir, wal, snaps, fio), RecoveredState(meta, st.hard_state, snap, ents, st.truncated)

    def write_meta(self, meta: Meta) -> None:
        """Atomically (temp file, fsync, rename, fsync dir); DiskFull leaves the old file in place."""
        data = json.dumps(asdict(meta)).encode()
        self.io.write_file_atomic(self.data_dir / self.META, data, "writing member metadata")

    def persist(self, rd: Ready) -> None:
        """Snapshot file first, then its WAL mark, entries and hard state in one fsync.

        Raises StorageError (DiskFull when out of space) with nothing half-written: the same
        Ready may be persisted again."""
        reset = None
        if rd.snapshot is not None:
            self.snaps.save(rd.snapshot)
            reset = (rd.snapshot.index, rd.snapshot.term)
        self.wal.save(rd.hard_state, rd.entries, reset=reset, sync=rd.must_sync or reset is not None)

    def save_snapshot(self, snap: Snapshot, release_before: int) -> None:
        """A snapshot the application made; WAL segments wholly before release_before may go."""
        self.snaps.save(snap)
        self.wal.release_to(release_before)

    # -- space reserve ---------------------------------------------------------------------
    def reserve_space(self, nbytes: int) -> bool:
        """Make sure reserve.bin holds nbytes (written and fsync'd): ballast to delete when the
        disk fills up, so the node can still make progress. False if there is no room for it."""
        io, path = self.io, self.data_dir / self.RESERVE
        tmp = path.with_name(path.name + ".tmp")
        try:
            if self.RESERVE in io.listdir(self.data_dir):
                fd = io.open_append(path)
                try:
                    have = io.size(fd)
                finally:
                    io.close(fd)
                if have == nbytes:
                    return True
                self.release_reserve()
            fd = io.create(tmp)
            try:
                zeros, left = bytes(min(_CHUNK, nbytes)), nbytes
                while left > 0:
                    io.write_all(fd, zeros[: min(left, len(zeros))])
                    left -= min(left, len(zeros))
                io.fsync(fd)
            finally:
                io.close(fd)
            io.rename(tmp, path)
            io.fsync_dir(self.data_dir)
            return True
        except OSError as e:
            try:
                io.unlink(tmp)
            except OSError:
                pass
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                return False
            raise storage_error(e, path, "writing the space reserve") from e

    def release_reserve(self) -> int:
        """Delete reserve.bin; the number of bytes freed (0 if there was none)."""
        io, path = self.io, self.data_dir / self.RESERVE
        try:
            if self.RESERVE not in io.listdir(self.data_dir):
                return 0
            fd = io.open_append(path)
            try:
                size = io.size(fd)
            finally:
                io.close(fd)
            io.unlink(path)
            io.fsync_dir(self.data_dir)
        except OSError as e:
            raise storage_error(e, path, "removing the space reserve") from e
        return size

    def close(self) -> None:
        self.wal.close()


__all__ = ["DiskFull", "DiskStorage", "Meta", "RecoveredState", "StorageError"]
