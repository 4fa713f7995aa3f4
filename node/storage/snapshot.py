"""Snapshot files: written atomically (temp file, fsync, rename, fsync dir) and checksummed."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

from node.raft import ConfState, Snapshot

from .fileio import REAL, FileIO, storage_error

MAGIC = b"QLSNAP01"
_HEAD = struct.Struct(">QQII")  # index, term, voters, learners
_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.snap$")


class SnapshotCorruption(Exception):
    pass


def encode_snapshot(s: Snapshot) -> bytes:
    voters, learners = sorted(s.conf.voters), sorted(s.conf.learners)
    body = (
        _HEAD.pack(s.index, s.term, len(voters), len(learners))
        + struct.pack(f">{len(voters)}Q", *voters)
        + struct.pack(f">{len(learners)}Q", *learners)
        + s.data
    )
    return MAGIC + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def decode_snapshot(blob: bytes, where: str = "snapshot") -> Snapshot:
    if len(blob) < len(MAGIC) + _HEAD.size + 4 or blob[: len(MAGIC)] != MAGIC:
        raise SnapshotCorruption(f"{where}: not a quorumlab snapshot")
    body, (crc,) = blob[len(MAGIC) : -4], struct.unpack(">I", blob[-4:])
    if zlib.crc32(body) & 0xFFFFFFFF != crc:
        raise SnapshotCorruption(f"{where}: checksum mismatch")
    index, term, nv, nl = _HEAD.unpack_from(body)
    pos = _HEAD.size
    voters = struct.unpack_from(f">{nv}Q", body, pos)
    pos += 8 * nv
    learners = struct.unpack_from(f">{nl}Q", body, pos)
    pos += 8 * nl
    return Snapshot(index, term, ConfState(frozenset(voters), frozenset(learners)), bytes(body[pos:]))


class SnapshotStore:
    def __init__(self, directory: Path, keep: int = 2, io: FileIO | None = None) -> None:
        self.dir = directory
        self.keep = keep
        self.io = io or REAL
        try:
            self.io.makedirs(directory)
        except OSError as e:
            raise storage_error(e, directory, "creating") from e

    def _files(self) -> list[tuple[int, Path]]:
        out = []
        for name in self.io.listdir(self.dir):
            m = _NAME.match(name)
            if m:
                out.append((int(m.group(2), 16), self.dir / name))
            elif name.endswith(".tmp"):
                self.io.unlink(self.dir / name)  # a save that crashed before its rename
        return sorted(out)

    def save(self, s: Snapshot) -> Path:
        """Write atomically; on any error (DiskFull when out of space) no partial file is left
        and the previous snapshots stay. Older snapshots beyond `keep` are removed after."""
        path = self.dir / f"{s.term:016x}-{s.index:016x}.snap"
        self.io.write_file_atomic(path, encode_snapshot(s), "writing snapshot")
        try:
            for _, old in self._files()[: -self.keep]:
                self.io.unlink(old)
        except OSError as e:
            raise storage_error(e, self.dir, "removing old snapshots in") from e
        return path

    def load(self) -> Snapshot | None:
        """The newest snapshot; a corrupted newest one is an error, not silently skipped."""
        try:
            files = self._files()
            if not files:
                return None
            path = files[-1][1]
            blob = self.io.read(path)
        except OSError as e:
            raise storage_error(e, self.dir, "reading snapshots in") from e
        return decode_snapshot(blob, str(path))
