"""Write-ahead log: segmented files of checksummed records, one fsync per batch.

Record layout (big-endian)::

    u32 length | u32 crc32(length) | u8 type | u32 crc32(type+payload) | payload

The length carries its own checksum so that a flipped bit in it is reported
as corruption instead of being mistaken for a torn tail (which would silently
drop every later record). Recovery rules:

* a record cut short at the end of the newest segment, a final record whose
  checksum fails, or an all-zero tail is a torn write: it is truncated away;
* anything else that fails a checksum is corruption: recovery refuses with an
  error naming the file and byte offset, and nothing is modified.
"""

from __future__ import annotations

import itertools
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from node.raft import Entry, EntryType, HardState

MAGIC = b"QLWAL001"
_HDR = struct.Struct(">IIBI")  # length, crc(length), type, crc(type+payload)
_ENTRY = struct.Struct(">QQB")  # index, term, entry type
_HS = struct.Struct(">QQQ")  # term, vote, commit
_RESET = struct.Struct(">QQ")  # index, term

REC_ENTRY = 1
REC_HARD_STATE = 2
REC_SNAPSHOT_RESET = 3  # the log was replaced by a snapshot from the leader

SEGMENT_BYTES = 64 << 20
_SEG_RE = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")


class WalCorruption(Exception):
    """A record in the middle of the log failed its checksum; we refuse to guess."""

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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WAL:
    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.dir = directory
        self.segment_bytes = segment_bytes
        self._fd = -1
        self._size = 0
        self._seq = 0
        self._hs = HardState()

    # -- opening and recovery ----------------------------------------------------
    @classmethod
    def open(cls, directory: Path, segment_bytes: int = SEGMENT_BYTES) -> tuple[WAL, WalState]:
        directory.mkdir(parents=True, exist_ok=True)
        wal = cls(directory, segment_bytes)
        segs = wal._segments()
        state = WalState()
        # Read everything first; only cut torn tails once the whole log has been checked.
        cuts: list[tuple[Path, int]] = []
        for i, (_, _, path) in enumerate(segs):
            cut = wal._read_segment(path, state, last=(i == len(segs) - 1))
            if cut is not None:
                cuts.append((path, cut))
        for path, cut in cuts:
            with open(path, "r+b") as f:
                f.truncate(cut)
                os.fsync(f.fileno())
            state.truncated.append(f"{path.name}@{cut}")
        wal._hs = state.hard_state
        if segs:
            wal._seq = segs[-1][0]
            wal._open_segment(segs[-1][2])
        else:
            wal._cut(first_index=1)
        return wal, state

    def _segments(self) -> list[tuple[int, int, Path]]:
        out = []
        for p in self.dir.iterdir():
            m = _SEG_RE.match(p.name)
            if m:
                out.append((int(m.group(1), 16), int(m.group(2), 16), p))
        return sorted(out)

    def _read_segment(self, path: Path, state: WalState, last: bool) -> int | None:
        """Apply the records of one segment to state; return an offset to truncate at, if torn."""
        data = path.read_bytes()
        if len(data) < len(MAGIC):
            if last:
                return 0
            raise WalCorruption(path, 0, "segment shorter than its header")
        if data[: len(MAGIC)] != MAGIC:
            raise WalCorruption(path, 0, "bad segment magic")
        pos, end = len(MAGIC), len(data)

        def torn_or_corrupt(off: int, why: str) -> int:
            if last and (data[off:].count(0) == end - off or why == "short"):
                return off
            raise WalCorruption(path, off, why)

        while pos < end:
            if end - pos < _HDR.size:
                return torn_or_corrupt(pos, "short")
            n, lcrc, rtype, crc = _HDR.unpack_from(data, pos)
            if _crc(data[pos : pos + 4]) != lcrc:
                return torn_or_corrupt(pos, "record length checksum mismatch")
            body = pos + _HDR.size
            if body + n > end:
                return torn_or_corrupt(pos, "short")
            payload = data[body : body + n]
            if _crc(bytes([rtype]) + payload) != crc:
                if last and body + n == end:
                    return pos  # the final record was only partly written
                return torn_or_corrupt(pos, "record checksum mismatch")
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
            os.close(self._fd)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._size = os.fstat(self._fd).st_size

    def _cut(self, first_index: int) -> None:
        """Start a new segment; it begins with the current hard state so old segments can go."""
        self._seq += 1
        path = self.dir / f"{self._seq:016x}-{first_index:016x}.wal"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(MAGIC + encode_record(REC_HARD_STATE, _HS.pack(self._hs.term, self._hs.vote, self._hs.commit)))
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
        _fsync_dir(self.dir)
        self._open_segment(path)

    def save(
        self,
        hard_state: HardState | None,
        entries: list[Entry],
        reset: tuple[int, int] | None = None,
        sync: bool = True,
    ) -> None:
        """Append one batch with a single write and (when sync) a single fdatasync."""
        if entries and self._size >= self.segment_bytes:
            self._cut(entries[0].index)
        buf = bytearray()
        if reset is not None:
            buf += encode_record(REC_SNAPSHOT_RESET, _RESET.pack(*reset))
        for e in entries:
            buf += encode_entry(e)
        if hard_state is not None:
            self._hs = hard_state
            buf += encode_record(REC_HARD_STATE, _HS.pack(hard_state.term, hard_state.vote, hard_state.commit))
        if buf:
            os.write(self._fd, bytes(buf))
            self._size += len(buf)
        if sync and buf:
            os.fdatasync(self._fd)

    def release_to(self, index: int) -> int:
        """Delete whole segments whose entries all lie before `index` (after a snapshot)."""
        segs = self._segments()
        removed = 0
        for (_, _first, path), (_, nxt_first, _) in itertools.pairwise(segs):
            if nxt_first <= index:
                path.unlink()
                removed += 1
            else:
                break
        if removed:
            _fsync_dir(self.dir)
        return removed

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
