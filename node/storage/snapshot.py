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


def _header(s: Snapshot) -> bytes:
    voters, learners = sorted(s.conf.voters), sorted(s.conf.learners)
    return (
        _HEAD.pack(s.index, s.term, len(voters), len(learners))
        + struct.pack(f">{len(voters)}Q", *voters)
        + struct.pack(f">{len(learners)}Q", *learners)
    )


def snapshot_parts(s: Snapshot) -> tuple[bytes, bytes, bytes]:
    """MAGIC+header, the data, the crc: written one after the other, so the (large) data is never
    copied into a new buffer. The crc covers header and data, computed incrementally."""
    head = _header(s)
    crc = zlib.crc32(s.data, zlib.crc32(head)) & 0xFFFFFFFF
    return MAGIC + head, s.data, struct.pack(">I", crc)


def encode_snapshot(s: Snapshot) -> bytes:
    """The whole file as one buffer (tests and tools; save() writes the parts without joining)."""
    return b"".join(snapshot_parts(s))


def decode_snapshot(blob: bytes, where: str = "snapshot") -> Snapshot:
    if len(blob) < len(MAGIC) + _HEAD.size + 4 or blob[: len(MAGIC)] != MAGIC:
        raise SnapshotCorruption(f"{where}: not a quorumlab snapshot")
    body, (crc,) = memoryview(blob)[len(MAGIC) : -4], struct.unpack(">I", blob[-4:])  # no copy
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
        self._write_atomic(path, snapshot_parts(s))
        try:
            for _, old in self._files()[: -self.keep]:
                self.io.unlink(old)
        except OSError as e:
            raise storage_error(e, self.dir, "removing old snapshots in") from e
        return path

    def _write_atomic(self, path: Path, parts: tuple[bytes, ...]) -> None:
        """FileIO.write_file_atomic for several buffers: temp file, write each part, fsync, rename,
        fsync dir; on error the temp file is removed and the previous file stays."""
        tmp = path.with_name(path.name + ".tmp")
        fd = -1
        try:
            fd = self.io.create(tmp)
            for part in parts:
                self.io.write_all(fd, part)
            self.io.fsync(fd)
            self.io.close(fd)
            fd = -1
            self.io.rename(tmp, path)
            self.io.fsync_dir(path.parent)
        except OSError as e:
            if fd >= 0:
                try:
                    self.io.close(fd)
                except OSError:
                    pass
            try:
                self.io.unlink(tmp)
            except OSError:
                pass
            raise storage_error(e, path, "writing snapshot") from e

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
