"""Power loss at any point never loses what persist() acknowledged, and recovery always succeeds.

A ``kill -9`` keeps the kernel's page cache, so process tests cannot see a missing fsync. Here the
real DiskStorage/WAL/SnapshotStore run on MemFS, a model of the page cache behind the FileIO layer:
written bytes become durable only at fsync/fdatasync of that file, creations/renames/unlinks only
at fsync of their directory. A power loss keeps the durable state plus, at most, a prefix of each
file's and each directory's unsynced operations (the last one possibly cut short), and in some
cases also loses whole 512-byte sectors of what it kept (the file grew, the sector was never
written), which the WAL's torn-write rule must recognise.

Also here: short writes, ENOSPC and its rollback (on the model and on a real 2 MiB tmpfs), the
space reserve, and WAL segments being released after a snapshot.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from node.raft import ConfState, Entry, EntryType, HardState, Ready, Snapshot
from node.storage import WAL, DiskFull, DiskStorage, FileIO, Meta, RecoveredState, StorageError

SECTOR = 512


class PowerLoss(Exception):
    """Raised by MemFS at the chosen operation: the machine is off from here on."""


@dataclass
class Inode:
    data: bytearray = field(default_factory=bytearray)  # what reads see (the page cache)
    durable: bytes = b""  # what the disk holds
    pending: list[tuple[int, int, bytes]] = field(default_factory=list)  # (offset, truncate-to, bytes) since sync


class MemFS(FileIO):
    """An in-memory file system with a page cache that a power loss empties."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.inodes: dict[int, Inode] = {}
        self.live: dict[str, dict[str, int]] = {}  # dir -> name -> inode, as seen
        self.durable: dict[str, dict[str, int]] = {}  # as on disk
        self.dir_pending: dict[str, list[tuple[str, str, str, int]]] = {}
        self.fds: dict[int, int] = {}
        self.next_ino = self.next_fd = 1
        self.ops = 0
        self.crash_at: int | None = None
        self.capacity: int | None = None
        self.short_writes = False
        self.torn_sectors = False

    # -- fault points ---------------------------------------------------------------
    def _tick(self) -> None:
        self.ops += 1
        if self.crash_at is not None and self.ops >= self.crash_at:
            self.crash_at = None
            raise PowerLoss

    def _used(self) -> int:
        return sum(len(i.data) for i in self.inodes.values())

    def _split(self, path: Path) -> tuple[str, str]:
        d = str(path.parent)
        if d not in self.live:
            raise FileNotFoundError(errno.ENOENT, "no such directory", d)
        return d, path.name

    def _ino(self, path: Path) -> int:
        d, name = self._split(path)
        if name not in self.live[d]:
            raise FileNotFoundError(errno.ENOENT, "no such file", str(path))
        return self.live[d][name]

    def _dirop(self, d: str, op: tuple[str, str, str, int]) -> None:
        self.dir_pending.setdefault(d, []).append(op)

    # -- FileIO primitives ------------------------------------------------------------
    def makedirs(self, path: Path) -> None:
        for p in [*reversed(path.parents), path]:
            self.live.setdefault(str(p), {})
            self.durable.setdefault(str(p), {})

    def listdir(self, path: Path) -> list[str]:
        if str(path) not in self.live:
            raise FileNotFoundError(errno.ENOENT, "no such directory", str(path))
        return list(self.live[str(path)])

    def read(self, path: Path) -> bytes:
        return bytes(self.inodes[self._ino(path)].data)

    def open_append(self, path: Path) -> int:
        ino = self._ino(path)
        self._tick()
        fd, self.next_fd = self.next_fd, self.next_fd + 1
        self.fds[fd] = ino
        return fd

    def create(self, path: Path) -> int:
        d, name = self._split(path)
        self._tick()
        if name in self.live[d]:
            ino = self.live[d][name]
            self.ftruncate_ino(ino, 0)
        else:
            ino, self.next_ino = self.next_ino, self.next_ino + 1
            self.inodes[ino] = Inode()
            self.live[d][name] = ino
            self._dirop(d, ("link", name, "", ino))
        fd, self.next_fd = self.next_fd, self.next_fd + 1
        self.fds[fd] = ino
        return fd

    def write(self, fd: int, data: memoryview) -> int:
        node = self.inodes[self.fds[fd]]
        n = len(data)
        if self.short_writes and n > 1 and self.rng.random() < 0.3:
            n = self.rng.randrange(1, n)
        if self.capacity is not None:
            room = self.capacity - self._used()
            if room <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            n = min(n, room)
        if self.crash_at is not None and self.ops + 1 >= self.crash_at:
            n = self.rng.randrange(0, n + 1)  # the power goes out in the middle of this write
        chunk = bytes(data[:n])
        node.pending.append((len(node.data), -1, chunk))
        node.data += chunk
        self._tick()
        return n

    def ftruncate_ino(self, ino: int, size: int) -> None:
        node = self.inodes[ino]
        del node.data[size:]
        node.data += bytes(size - len(node.data))
        node.pending.append((size, size, b""))

    def ftruncate(self, fd: int, size: int) -> None:
        self._tick()
        self.ftruncate_ino(self.fds[fd], size)

    def fdatasync(self, fd: int) -> None:
        self._tick()
        node = self.inodes[self.fds[fd]]
        node.durable, node.pending = bytes(node.data), []

    fsync = fdatasync

    def size(self, fd: int) -> int:
        return len(self.inodes[self.fds[fd]].data)

    def close(self, fd: int) -> None:
        del self.fds[fd]

    def rename(self, src: Path, dst: Path) -> None:
        d, s = self._split(src)
        ino = self._ino(src)
        self._tick()
        del self.live[d][s]
        self.live[d][dst.name] = ino
        self._dirop(d, ("rename", s, dst.name, ino))

    def unlink(self, path: Path) -> None:
        d, name = self._split(path)
        self._ino(path)
        self._tick()
        del self.live[d][name]
        self._dirop(d, ("unlink", name, "", 0))

    def fsync_dir(self, path: Path) -> None:
        self._tick()
        d = str(path)
        self.durable[d] = dict(self.live[d])
        self.dir_pending[d] = []

    # -- the power loss ---------------------------------------------------------------
    def power_loss(self) -> None:
        """Keep what is durable plus a random prefix of what is not; the page cache is gone."""
        rng = self.rng
        for d, dops in self.dir_pending.items():
            ents = self.durable[d]
            for kind, name, new, ino in dops[: rng.randint(0, len(dops))]:
                if kind == "link":
                    ents[name] = ino
                elif kind == "unlink":
                    ents.pop(name, None)
                elif name in ents:
                    ents[new] = ents.pop(name)
        self.dir_pending = {}
        for node in self.inodes.values():
            data = bytearray(node.durable)
            ops = node.pending[: rng.randint(0, len(node.pending))]
            low = len(data)
            for i, (off, trunc, chunk) in enumerate(ops):
                if i == len(ops) - 1 and chunk and rng.random() < 0.5:
                    chunk = chunk[: rng.randint(0, len(chunk))]
                low = min(low, off)
                if trunc >= 0:
                    del data[trunc:]
                    data += bytes(trunc - len(data))
                else:
                    data[off : off + len(chunk)] = chunk
            if self.torn_sectors and len(data) > low and rng.random() < 0.5:
                # the file grew but some of its new sectors never reached the disk
                for s in range(low - low % SECTOR, len(data), SECTOR):
                    if rng.random() < 0.3:
                        a, b = max(s, low), min(s + SECTOR, len(data))
                        data[a:b] = bytes(b - a)
            node.data, node.durable, node.pending = data, bytes(data), []
        self.live = {d: dict(e) for d, e in self.durable.items()}
        self.fds = {}
        alive = {ino for ents in self.live.values() for ino in ents.values()}
        self.inodes = {ino: n for ino, n in self.inodes.items() if ino in alive}


# ---------------------------------------------------------------------------------------------
# A driver that persists Ready-like batches the way the node does, and remembers what was acked
# ---------------------------------------------------------------------------------------------
Log = dict[int, tuple[int, bytes]]


@dataclass
class Model:
    """What the node believes, and what the disk must give back after any power loss."""

    log: Log = field(default_factory=dict)  # every entry since the last reset, not compacted
    hs: HardState = field(default_factory=HardState)
    snap: Snapshot | None = None
    snaps: dict[int, Snapshot] = field(default_factory=dict)
    meta: Meta | None = None
    # durable promises
    acked_hs: HardState = field(default_factory=HardState)
    acked_snap: int = 0
    acked_meta: Meta | None = None
    # every log state the disk may legitimately show: from the last acked batch on
    candidates: list[Log] = field(default_factory=lambda: [{}])
    hard_states: list[HardState] = field(default_factory=lambda: [HardState()])

    def last(self) -> int:
        return max(self.log, default=self.snap.index if self.snap else 0)


def _ready_batches(m: Model, rng: random.Random) -> Iterator[tuple[str, Ready | Snapshot]]:
    """An endless stream of things a Raft node asks its storage to do."""
    while True:
        r = rng.random()
        last = m.last()
        if r < 0.55:  # append; the commit index trails
            n = rng.randint(1, 6)
            term = max(m.hs.term, 1)
            ents = [
                Entry(last + i, term, EntryType.NORMAL, rng.randbytes(rng.choice((0, 5, 40, 300))))
                for i in range(1, n + 1)
            ]
            hs = HardState(term, m.hs.vote or 1, max(m.hs.commit, rng.randint(m.hs.commit, last)))
            yield "ready", Ready(hard_state=hs, entries=ents, must_sync=True)
        elif r < 0.65:  # a new leader overwrites the uncommitted tail
            start = rng.randint(m.hs.commit + 1, last + 1) if last >= m.hs.commit + 1 else last + 1
            start = max(start, (m.snap.index if m.snap else 0) + 1)
            term = m.hs.term + 1
            ents = [Entry(start + i, term, EntryType.NORMAL, rng.randbytes(20)) for i in range(rng.randint(1, 4))]
            yield (
                "ready",
                Ready(hard_state=HardState(term, rng.randint(1, 5), m.hs.commit), entries=ents, must_sync=True),
            )
        elif r < 0.72:  # a vote in a new term, nothing else
            yield "ready", Ready(hard_state=HardState(m.hs.term + 1, rng.randint(1, 5), m.hs.commit), must_sync=True)
        elif r < 0.85:  # commit index only: no fsync, as the node does
            if m.hs.commit < last:
                hs = HardState(m.hs.term, m.hs.vote, rng.randint(m.hs.commit + 1, last))
                yield "ready", Ready(hard_state=hs, must_sync=False)
        elif r < 0.95:  # the application's snapshot, then the WAL is released up to it
            base = m.snap.index if m.snap else 0
            if m.hs.commit > base and m.hs.commit in m.log:
                c = m.hs.commit
                snap = Snapshot(c, m.log[c][0], ConfState(frozenset({1, 2, 3})), rng.randbytes(rng.randint(50, 3000)))
                yield "snapshot", snap
        else:  # a snapshot from the leader replaces the log
            low = max(m.hs.commit, m.snap.index if m.snap else 0) + 1  # a new committed index
            idx = rng.randint(low, max(low, last) + 5)  # may fall inside our (stale) tail
            term = m.hs.term + 1
            snap = Snapshot(idx, term, ConfState(frozenset({1, 2})), rng.randbytes(rng.randint(50, 2000)))
            yield "ready", Ready(snapshot=snap, hard_state=HardState(term, 0, idx), must_sync=True)


def _apply(log: Log, ents: list[Entry]) -> Log:
    out = dict(log)
    for e in ents:
        for i in [i for i in out if i >= e.index]:
            del out[i]
        out[e.index] = (e.term, e.data)
    return out


def _do(ds: DiskStorage, m: Model, kind: str, item: Ready | Snapshot, rng: random.Random) -> None:
    """Persist one item, recording first what the disk may show if the power goes mid-way."""
    if kind == "snapshot":
        assert isinstance(item, Snapshot)
        m.snaps[item.index] = item
        ds.save_snapshot(item, release_before=max(1, item.index - rng.randint(0, 3)))
        m.snap = item
        m.acked_snap = max(m.acked_snap, item.index)
        return
    assert isinstance(item, Ready)
    base = {} if item.snapshot is not None else m.log
    if item.snapshot is not None:
        m.snaps[item.snapshot.index] = item.snapshot
    for p in range(len(item.entries) + 1):  # a torn batch leaves a prefix of its records
        m.candidates.append(_apply(base, item.entries[:p]))
    if item.hard_state is not None:
        m.hard_states.append(item.hard_state)
    ds.persist(item)
    m.log = _apply(base, item.entries)
    if item.snapshot is not None:
        m.snap = item.snapshot
    if item.hard_state is not None:
        m.hs = item.hard_state
    if item.must_sync or item.snapshot is not None:  # durable now: older states are no longer allowed
        m.acked_hs = m.hs
        m.candidates = [m.log]
        m.hard_states = [m.hs]
        if item.snapshot is not None:
            m.acked_snap = max(m.acked_snap, item.snapshot.index)


def _check(rec: RecoveredState, m: Model, where: str) -> None:
    assert rec.meta == m.acked_meta or (m.acked_meta is None and rec.meta == m.meta), where
    hs, a = rec.hard_state, m.acked_hs
    assert hs in m.hard_states or hs == a, (where, hs, m.hard_states)
    assert hs.term >= a.term and hs.commit >= a.commit, (where, hs, a)
    if hs.term == a.term and a.vote:
        assert hs.vote == a.vote, (where, hs, a)
    base = rec.snapshot.index if rec.snapshot else 0
    assert base >= m.acked_snap, (where, base, m.acked_snap)
    if rec.snapshot is not None:
        assert rec.snapshot == m.snaps[base], where
    got = {e.index: (e.term, e.data) for e in rec.entries}
    ok = any({i: v for i, v in c.items() if i > base} == got for c in m.candidates)
    assert ok, (where, sorted(got)[:3], sorted(got)[-3:], [sorted(c)[-3:] for c in m.candidates])


def _reset_model(m: Model, rec: RecoveredState) -> None:
    m.log = {e.index: (e.term, e.data) for e in rec.entries}
    m.hs = m.acked_hs = rec.hard_state
    m.snap = rec.snapshot
    m.acked_snap = rec.snapshot.index if rec.snapshot else 0
    m.candidates, m.hard_states = [m.log], [m.hs]
    m.meta = m.acked_meta = rec.meta


def run_case(seed: int) -> None:
    rng = random.Random(seed)
    fs = MemFS(rng)
    fs.short_writes = rng.random() < 0.3
    fs.torn_sectors = rng.random() < 0.5
    root = Path("/data")
    fs.makedirs(root)
    m = Model()
    seg = rng.choice((600, 2000, 8000))
    for rnd in range(3):
        where = f"seed {seed} round {rnd}"
        try:
            ds, rec = DiskStorage.open(root, io=fs, segment_bytes=seg)
        except Exception as e:  # a clear report of which seed and round could not recover
            raise AssertionError(f"{where}: recovery refused a state a power loss can produce: {e}") from e
        _check(rec, m, where)
        _reset_model(m, rec)
        fs.crash_at = fs.ops + rng.randint(1, 150)
        try:
            if rec.meta is None:
                m.meta = Meta("n1", 1, 7)
                ds.write_meta(m.meta)
                m.acked_meta = m.meta
            if rng.random() < 0.3:
                ds.reserve_space(rng.randint(1, 3000))
            if rng.random() < 0.2:
                fs.capacity = fs._used() + rng.randint(0, 20000)
            stream = _ready_batches(m, rng)
            for _ in range(rng.randint(5, 60)):
                kind, item = next(stream)
                try:
                    _do(ds, m, kind, item, rng)
                except DiskFull:
                    ds.release_reserve()  # what the node does: drop the ballast, then retry
                    fs.capacity = None
                    _do(ds, m, kind, item, rng)
        except PowerLoss:
            pass
        fs.crash_at = None
        fs.capacity = None
        fs.power_loss()


def test_power_loss_at_random_points_never_loses_acknowledged_state() -> None:
    for seed in range(300):
        run_case(seed)


# ---------------------------------------------------------------------------------------------
# The file layer itself, on the model
# ---------------------------------------------------------------------------------------------
def test_short_writes_are_completed() -> None:
    fs = MemFS(random.Random(3))
    fs.short_writes = True
    root = Path("/d")
    fs.makedirs(root)
    ds, _ = DiskStorage.open(root, io=fs)
    ents = [Entry(i, 1, EntryType.NORMAL, bytes([i]) * 500) for i in range(1, 41)]
    for i in range(0, 40, 4):
        ds.persist(Ready(hard_state=HardState(1, 1, i), entries=ents[i : i + 4], must_sync=True))
    ds.close()
    fs.power_loss()
    _, rec = DiskStorage.open(root, io=fs)
    assert rec.entries == ents and rec.truncated == []


def test_disk_full_rolls_back_and_retry_succeeds_on_the_model() -> None:
    fs = MemFS(random.Random(4))
    root = Path("/d")
    fs.makedirs(root)
    ds, _ = DiskStorage.open(root, io=fs)
    ds.write_meta(Meta("n1", 1, 2))
    ds.persist(Ready(hard_state=HardState(1, 1, 0), entries=[Entry(1, 1, data=b"a" * 100)], must_sync=True))
    snap1 = Snapshot(1, 1, ConfState(frozenset({1})), b"s" * 100)
    ds.save_snapshot(snap1, 1)
    wal_before = {n: fs.read(root / "wal" / n) for n in fs.listdir(root / "wal")}
    fs.capacity = fs._used() + 50
    big = Ready(hard_state=HardState(1, 1, 1), entries=[Entry(2, 1, data=b"b" * 400)], must_sync=True)
    with pytest.raises(DiskFull) as ei:
        ds.persist(big)
    assert ei.value.errno == errno.ENOSPC and "/d/wal/" in str(ei.value)
    assert {n: fs.read(root / "wal" / n) for n in fs.listdir(root / "wal")} == wal_before  # rolled back
    with pytest.raises(DiskFull):
        ds.save_snapshot(Snapshot(1, 1, ConfState(frozenset({1})), b"t" * 400), 1)
    assert sorted(fs.listdir(root / "snap")) == ["0000000000000001-0000000000000001.snap"]  # no .tmp
    with pytest.raises(DiskFull):
        ds.write_meta(Meta("n1" * 100, 1, 2))
    assert sorted(fs.listdir(root)) == ["member.json"]  # no member.json.tmp left
    fs.capacity = None
    ds.persist(big)  # the same batch again: a clean record
    ds.close()
    fs.power_loss()
    _, rec = DiskStorage.open(root, io=fs)
    assert rec.meta == Meta("n1", 1, 2) and rec.snapshot == snap1
    assert [e.index for e in rec.entries] == [2] and rec.truncated == []


# ---------------------------------------------------------------------------------------------
# Releasing WAL segments after a snapshot, on real files
# ---------------------------------------------------------------------------------------------
def test_release_frees_segments_and_recovery_after_release(tmp_path: Path) -> None:
    ds, _ = DiskStorage.open(tmp_path, segment_bytes=4096)
    ents = [Entry(i, 1, EntryType.NORMAL, b"x" * 200) for i in range(1, 401)]
    for i in range(0, 400, 10):
        ds.persist(Ready(hard_state=HardState(1, 1, i + 10), entries=ents[i : i + 10], must_sync=True))
    wal_dir = tmp_path / "wal"
    before = sorted(wal_dir.glob("*.wal"))
    size_before = sum(p.stat().st_size for p in before)
    assert len(before) > 10
    snap = Snapshot(350, 1, ConfState(frozenset({1})), b"state at 350")
    ds.save_snapshot(snap, release_before=341)  # the node keeps a few entries for slow followers
    after = sorted(wal_dir.glob("*.wal"))
    assert len(after) < len(before) // 3
    assert sum(p.stat().st_size for p in after) < size_before // 3
    # every kept segment is needed: the oldest one holds entry 341
    first_of_second = int(after[1].name.split("-")[1].split(".")[0], 16) if len(after) > 1 else 10**9
    assert first_of_second > 341
    ds.persist(Ready(hard_state=HardState(1, 1, 401), entries=[Entry(401, 1)], must_sync=True))
    ds.close()
    ds2, rec = DiskStorage.open(tmp_path, segment_bytes=4096)
    ds2.close()
    assert rec.snapshot == snap and rec.truncated == []
    assert [e.index for e in rec.entries] == list(range(351, 402))
    assert rec.entries[:50] == ents[350:] and rec.hard_state == HardState(1, 1, 401)


def test_entries_without_their_snapshot_are_refused(tmp_path: Path) -> None:
    """Segments released but the snapshot file gone: a gap, never silently accepted."""
    ds, _ = DiskStorage.open(tmp_path, segment_bytes=2048)
    for i in range(1, 200, 5):
        ds.persist(Ready(entries=[Entry(j, 1, data=b"y" * 100) for j in range(i, i + 5)], must_sync=True))
    ds.save_snapshot(Snapshot(150, 1, ConfState(frozenset({1})), b"s"), 150)
    ds.close()
    for p in (tmp_path / "snap").iterdir():
        p.unlink()
    with pytest.raises(StorageError, match="no snapshot"):
        DiskStorage.open(tmp_path)


# ---------------------------------------------------------------------------------------------
# The space reserve
# ---------------------------------------------------------------------------------------------
def test_reserve_is_created_released_and_ignored_by_recovery(tmp_path: Path) -> None:
    ds, _ = DiskStorage.open(tmp_path)
    ds.persist(Ready(hard_state=HardState(1, 1, 1), entries=[Entry(1, 1, data=b"a")], must_sync=True))
    assert ds.reserve_space(100_000)
    assert (tmp_path / "reserve.bin").stat().st_size == 100_000
    assert ds.reserve_space(100_000)  # already there
    (tmp_path / "reserve.bin.tmp").write_bytes(b"left by a crash")
    ds.close()
    ds, rec = DiskStorage.open(tmp_path)
    assert [e.index for e in rec.entries] == [1] and rec.truncated == []
    assert not (tmp_path / "reserve.bin.tmp").exists()
    assert ds.release_reserve() == 100_000
    assert not (tmp_path / "reserve.bin").exists()
    assert ds.release_reserve() == 0
    ds.close()


@contextlib.contextmanager
def _small_tmpfs(size: str) -> Iterator[Path]:
    mnt = Path(tempfile.mkdtemp(prefix="ql-tmpfs-"))
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True)
        try:
            yield mnt
        finally:
            # a failed assertion may still hold a WAL fd open: detach lazily rather than leak
            if subprocess.run(["umount", str(mnt)], check=False, capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(mnt)], check=True)
    finally:
        mnt.rmdir()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
def test_disk_full_on_a_real_small_tmpfs() -> None:
    opened: list[DiskStorage] = []

    def open_(d: Path) -> tuple[DiskStorage, RecoveredState]:
        ds, rec = DiskStorage.open(d)
        opened.append(ds)
        return ds, rec

    with _small_tmpfs("2m") as mnt:
        try:
            data = mnt / "data"
            ds, _ = open_(data)
            ds.write_meta(Meta("n1", 1, 2))
            assert ds.reserve_space(256 << 10)
            acked: list[Entry] = []
            idx, failed = 1, None
            for _ in range(10_000):
                ents = [Entry(idx + i, 1, EntryType.NORMAL, os.urandom(3000)) for i in range(5)]
                rd = Ready(hard_state=HardState(1, 1, idx), entries=ents, must_sync=True)
                try:
                    ds.persist(rd)
                except DiskFull as e:
                    failed = (rd, e)
                    break
                acked += ents
                idx += 5
            assert failed is not None, "the tmpfs never filled"
            rd, err = failed
            assert err.errno == errno.ENOSPC and str(data / "wal") in str(err) and "ENOSPC" in str(err)
            with pytest.raises(DiskFull):
                ds.persist(rd)  # still full: the same error, still nothing half-written
            with pytest.raises(DiskFull):
                ds.save_snapshot(Snapshot(idx - 1, 1, ConfState(frozenset({1})), os.urandom(400_000)), 1)
            assert not list((data / "snap").iterdir())  # no half-written snapshot
            ds.close()
            ds, rec = open_(data)  # a full disk is not a corrupt one
            assert rec.entries == acked and rec.truncated == [] and rec.meta == Meta("n1", 1, 2)
            assert ds.release_reserve() == 256 << 10
            ds.persist(rd)  # the retry succeeds once the ballast is gone
            ds.close()
            ds, rec = open_(data)
            assert rec.entries == acked + rd.entries and rec.hard_state == HardState(1, 1, idx)
            assert not (data / "reserve.bin").exists()
        finally:
            for d in opened:
                d.close()


def test_wal_writes_go_through_the_injected_layer(tmp_path: Path) -> None:
    """The hot path is one write and one fdatasync per synced batch, through the FileIO."""
    calls: list[str] = []

    class Counting(FileIO):
        def write(self, fd: int, data: memoryview) -> int:
            calls.append("write")
            return super().write(fd, data)

        def fdatasync(self, fd: int) -> None:
            calls.append("fdatasync")
            super().fdatasync(fd)

    wal, _ = WAL.open(tmp_path, io=Counting())
    calls.clear()
    wal.save(HardState(1, 1, 0), [Entry(1, 1), Entry(2, 1)])
    wal.save(HardState(1, 1, 2), [], sync=False)
    wal.close()
    assert calls == ["write", "fdatasync", "write"]
