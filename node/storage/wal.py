"""Write-ahead log: segmented files of checksummed records, one write and one fdatasync per batch.

Record layout (big-endian)::

    u32 length | u32 crc32(length) | u8 type | u32 crc32(type+payload) | payload

The length carries its own checksum so that a flipped bit in it is reported as corruption instead
of being mistaken for a torn tail (which would silently drop every later record).

Recovery rules. Only the newest segment can hold a torn write: older segments are fdatasync'd
before the next one is cut. At the first record of the newest segment that does not read back:

* a record cut short by the end of the file (an incomplete header or body), or a tail that is all
  zeros, is a torn write: it is truncated away;
* a complete record whose checksum fails is corruption, wherever it is, including the very last
  record: recovery refuses with WalCorruption naming the file and byte offset, and modifies
  nothing. The one exception (etcd's ``isTornEntry``): a power loss can extend a file without
  writing some of its 512-byte sectors, which then read back as zeros. So a failing record is
  torn if one of the sectors it overlaps (aligned to the file offset) reads as zeros from the
  record's start, or the sector's start, to the sector's end or the end of the file. Zeros that
  the record's verified length field legitimately holds do not count.

Anything that fails to read in an older segment is corruption. Write errors never leave a
half-written batch behind: the segment is truncated back to its previous length before the error
(DiskFull for ENOSPC/EDQUOT) is raised, so the caller may retry the same batch.
"""

from __future__ import annotations

import errno
import itertools
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from node.raft import Entry, EntryType, HardState

from .fileio import REAL, DiskFull, FileIO, StorageError, storage_error

MAGIC = b"QLWAL001"
_HDR = struct.Struct(">IIBI")  # length, crc(length), type, crc(type+payload)
_ENTRY = struct.Struct(">QQB")  # index, term, entry type
_HS = struct.Struct(">QQQ")  # term, vote, commit
_RESET = struct.Struct(">QQ")  # index, term

REC_ENTRY = 1
REC_HARD_STATE = 2
REC_SNAPSHOT_RESET = 3  # the log was replaced by a snapshot from the leader

SEGMENT_BYTES = 64 << 20
SECTOR = 512
_SEG_RE = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")


class WalCorruption(Exception):
    """A complete record failed its checksum (or the log is inconsistent); we refuse to guess."""

    def __init__(self, path: Path, offset: int, why: str) -> None:
        super().__init__(f"WAL corrupted at {path} offset {offset}: {why}; refusing to start (restore from a peer)")
        self.path = path
        self.offset = offset


@dataclass
class WalState:
    hard_state: HardState = field(default_factory=HardState)
    entries: list[Entry] = field(default_factory=list)
    reset: tuple[int, int] | None = None  # last snapshot reset (index, term)
    truncated: list[str] = field(default_factory=list)  # torn tails that were cut


def _crc(b: bytes) -> int:
    return zlib.crc32(b) & 0xFFFFFFFF


def encode_record(rtype: int, payload: bytes) -> bytes:
    n = len(payload)
    lb = struct.pack(">I", n)
    return _HDR.pack(n, _crc(lb), rtype, _crc(bytes([rtype]) + payload)) + payload


def encode_entry(e: Entry) -> bytes:
    return encode_record(REC_ENTRY, _ENTRY.pack(e.index, e.term, int(e.type)) + e.data)


def _hs_record(hs: HardState) -> bytes:
    return encode_record(REC_HARD_STATE, _HS.pack(hs.term, hs.vote, hs.commit))


def _unwritten_sector(data: bytes, pos: int, rec_end: int, length_ok: bool) -> bool:
    """Does a sector overlapping [pos, rec_end) read as zeros from pos (or its start) to its end
    (or EOF)? That is what a power loss leaves where the file grew but a sector was never written."""
    end = len(data)
    s = pos - pos % SECTOR
    while s < rec_end:
        a, b = max(s, pos), min(s + SECTOR, end)
        if data[a:b] == bytes(b - a) and not (length_ok and b <= pos + 8):
            return True  # (a length field and its checksum that verified are genuinely zero)
        s += SECTOR
    return False


class WAL:
    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES, io: FileIO | None = None) -> None:
        self.dir = directory
        self.segment_bytes = segment_bytes
        self.io = io or REAL
        self._fd = -1
        self._path = directory
        self._size = 0  # bytes written to the open segment
        self._synced = 0  # of which known durable
        self._seq = 0
        self._hs = HardState()
        self._broken: str | None = None

    # -- opening and recovery ----------------------------------------------------
    @classmethod
    def open(
        cls, directory: Path, segment_bytes: int = SEGMENT_BYTES, io: FileIO | None = None
    ) -> tuple[WAL, WalState]:
        wal = cls(directory, segment_bytes, io)
        fio = wal.io
        try:
            fio.makedirs(directory)
            segs = wal._segments()
            state = WalState()
            # Read everything first; only cut torn tails once the whole log has been checked.
            cut: tuple[Path, int] | None = None
            for i, (_, _, path) in enumerate(segs):
                off = wal._read_segment(path, state, last=(i == len(segs) - 1))
                if off is not None:
                    cut = (path, off)
            for name in fio.listdir(directory):
                if name.endswith(".tmp"):
                    fio.unlink(directory / name)  # a segment cut that crashed before its rename
            first_index = 1
            if cut is not None:
                path, off = cut
                if off < len(MAGIC):  # not even a segment header survived: drop the file
                    fio.unlink(path)
                    fio.fsync_dir(directory)
                    wal._seq, first_index, _ = segs.pop()
                    wal._seq -= 1
                else:
                    fd = fio.open_append(path)
                    try:
                        fio.ftruncate(fd, off)
                        fio.fsync(fd)
                    finally:
                        fio.close(fd)
                state.truncated.append(f"{path.name}@{off}")
            wal._hs = state.hard_state
            if segs:
                wal._seq = segs[-1][0]
                wal._open_segment(segs[-1][2])
            else:
                wal._cut(first_index)
        except OSError as e:
            raise storage_error(e, directory, "opening the WAL in") from e
        return wal, state

    def _segments(self) -> list[tuple[int, int, Path]]:
        out = []
        for name in self.io.listdir(self.dir):
            m = _SEG_RE.match(name)
            if m:
                out.append((int(m.group(1), 16), int(m.group(2), 16), self.dir / name))
        return sorted(out)

    def _read_segment(self, path: Path, state: WalState, last: bool) -> int | None:
        """Apply the records of one segment to state; return an offset to truncate at, if torn."""
        data = self.io.read(path)
        end = len(data)
        head = data[: len(MAGIC)]
        if head != MAGIC:
            if last and (MAGIC.startswith(head) or head == bytes(len(head))):
                return 0  # the segment's own header never made it to disk
            raise WalCorruption(path, 0, "bad segment magic" if len(head) == len(MAGIC) else "segment too short")
        pos = len(MAGIC)

        while pos < end:
            if end - pos < _HDR.size:
                if last:
                    return pos  # an incomplete header at the end: torn
                raise WalCorruption(path, pos, "segment ends inside a record header")
            n, lcrc, rtype, crc = _HDR.unpack_from(data, pos)
            body = pos + _HDR.size
            if _crc(data[pos : pos + 4]) != lcrc:
                if last and _unwritten_sector(data, pos, min(body, end), length_ok=False):
                    return pos
                raise WalCorruption(path, pos, "record length checksum mismatch")
            if body + n > end:
                if last:
                    return pos  # an incomplete body at the end: torn
                raise WalCorruption(path, pos, "segment ends inside a record")
            payload = data[body : body + n]
            if _crc(bytes([rtype]) + payload) != crc:
                if last and _unwritten_sector(data, pos, body + n, length_ok=True):
                    return pos
                raise WalCorruption(path, pos, "record checksum mismatch")
            self._apply_record(path, pos, rtype, payload, state)
            pos = body + n
        return None

    @staticmethod
    def _apply_record(path: Path, pos: int, rtype: int, payload: bytes, state: WalState) -> None:
        if rtype == REC_ENTRY:
            index, term, etype = _ENTRY.unpack_from(payload)
            e = Entry(index, term, EntryType(etype), payload[_ENTRY.size :])
            ents = state.entries
            if ents and index <= ents[-1].index:
                first = ents[0].index
                del ents[max(0, index - first) :]  # a later leader overwrote the tail
            elif ents and index != ents[-1].index + 1:
                raise WalCorruption(path, pos, f"entry {index} does not follow {ents[-1].index}")
            ents.append(e)
        elif rtype == REC_HARD_STATE:
            state.hard_state = HardState(*_HS.unpack(payload))
        elif rtype == REC_SNAPSHOT_RESET:
            state.reset = _RESET.unpack(payload)
            state.entries = []
        else:
            raise WalCorruption(path, pos, f"unknown record type {rtype}")

    # -- writing ---------------------------------------------------------------------
    def _open_segment(self, path: Path) -> None:
        if self._fd >= 0:
            self.io.close(self._fd)
            self._fd = -1
        self._fd = self.io.open_append(path)
        self._path = path
        self._size = self._synced = self.io.size(self._fd)

    def _cut(self, first_index: int) -> None:
        """Start a new segment; it begins with the current hard state so old segments can go.

        The old segment is synced first (so only the newest can ever hold a torn write), and the
        new one appears under its name complete and durable (temp file, fsync, rename, fsync dir)."""
        io = self.io
        if self._fd >= 0 and self._synced < self._size:
            self._sync_or_roll_back()
        path = self.dir / f"{self._seq + 1:016x}-{first_index:016x}.wal"
        tmp = path.with_name(path.name + ".tmp")
        fd = io.create(tmp)
        try:
            io.write_all(fd, MAGIC + _hs_record(self._hs))
            io.fsync(fd)
        except OSError:
            io.close(fd)
            try:
                io.unlink(tmp)
            except OSError:
                pass
            raise
        io.close(fd)
        io.rename(tmp, path)
        try:
            io.fsync_dir(self.dir)
        except OSError as e:
            # the new name may or may not survive a crash; carrying on in the old segment could
            # later let this header-only segment shadow newer records, so stop writing
            self._broken = f"directory fsync failed after cutting {path.name}: {e}"
            raise
        self._seq += 1
        self._open_segment(path)

    def save(
        self,
        hard_state: HardState | None,
        entries: list[Entry],
        reset: tuple[int, int] | None = None,
        sync: bool = True,
    ) -> None:
        """Append one batch with a single write and (when sync) a single fdatasync.

        On any error the segment is rolled back (see module docstring) and a StorageError,
        DiskFull for ENOSPC/EDQUOT, is raised; the same batch may then be saved again."""
        if self._broken is not None:
            raise StorageError(f"WAL {self.dir} is unusable after an earlier error ({self._broken}); restart the node")
        buf = bytearray()
        if reset is not None:
            buf += encode_record(REC_SNAPSHOT_RESET, _RESET.pack(*reset))
        for e in entries:
            buf += encode_entry(e)
        if hard_state is not None:
            buf += _hs_record(hard_state)
        if not buf:
            return
        io = self.io
        try:
            if entries and self._size >= self.segment_bytes:
                self._cut(entries[0].index)
        except OSError as e:
            raise storage_error(e, self.dir, "cutting a new WAL segment in") from e
        prev_size, prev_hs = self._size, self._hs
        try:
            io.write_all(self._fd, bytes(buf))
        except OSError as e:
            self._rollback(prev_size, e)
            raise storage_error(e, self._path, "appending to") from e
        self._size += len(buf)
        if hard_state is not None:
            self._hs = hard_state
        if not sync:
            return
        try:
            self._sync_or_roll_back()
        except OSError as e:
            self._hs = prev_hs
            raise storage_error(e, self._path, "syncing") from e

    def _sync_or_roll_back(self) -> None:
        """fdatasync the open segment. After a failed fsync the kernel may have dropped dirty pages
        and report success next time ("fsyncgate"), so: out of space, drop everything unsynced
        (a retry rewrites it); any other error, refuse further writes, as etcd panics."""
        try:
            self.io.fdatasync(self._fd)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                self._rollback(self._synced, e)
            else:
                self._broken = f"fdatasync of {self._path.name} failed: {e}"
            raise
        self._synced = self._size

    def _rollback(self, size: int, cause: OSError) -> None:
        """Truncate the open segment back to size so a retry starts at a clean record boundary."""
        try:
            self.io.ftruncate(self._fd, size)
        except OSError as e:
            self._broken = f"could not roll back {self._path.name} to {size} bytes after {cause}: {e}"
            return
        self._size = size
        self._synced = min(self._synced, size)

    def release_to(self, index: int) -> int:
        """Delete whole segments whose entries all lie before `index` (after a snapshot).

        Oldest first, so that whatever subset a crash keeps is still a contiguous run."""
        try:
            segs = self._segments()
            removed = 0
            for (_, _first, path), (_, nxt_first, _) in itertools.pairwise(segs):
                if nxt_first <= index:
                    self.io.unlink(path)
                    removed += 1
                else:
                    break
            if removed:
                self.io.fsync_dir(self.dir)
        except OSError as e:
            raise storage_error(e, self.dir, "releasing WAL segments in") from e
        return removed

    def close(self) -> None:
        if self._fd >= 0:
            self.io.close(self._fd)
            self._fd = -1


__all__ = ["MAGIC", "SEGMENT_BYTES", "WAL", "DiskFull", "StorageError", "WalCorruption", "WalState"]
