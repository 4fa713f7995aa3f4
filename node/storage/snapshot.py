"""Snapshot files: written atomically (temp file, fsync, rename, fsync dir) and checksummed."""

from __future__ import annotations

import os
import re
import struct
import zlib
from pathlib import Path

from node.raft import ConfState, Snapshot

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
    def __init__(self, directory: Path, keep: int = 2) -> None:
        self.dir = directory
        self.keep = keep
        directory.mkdir(parents=True, exist_ok=True)

    def _files(self) -> list[tuple[int, Path]]:
        out = []
        for p in self.dir.iterdir():
            m = _NAME.match(p.name)
            if m:
                out.append((int(m.group(2), 16), p))
            elif p.name.endswith(".tmp"):
                p.unlink()  # a save that crashed before its rename
        return sorted(out)

    def save(self, s: Snapshot) -> Path:
        path = self.dir / f"{s.term:016x}-{s.index:016x}.snap"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(encode_snapshot(s))
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        for _, old in self._files()[: -self.keep]:
            old.unlink()
        return path

    def load(self) -> Snapshot | None:
        """The newest snapshot; a corrupted newest one is an error, not silently skipped."""
        files = self._files()
        if not files:
            return None
        path = files[-1][1]
        return decode_snapshot(path.read_bytes(), str(path))
