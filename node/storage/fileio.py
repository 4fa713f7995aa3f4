"""The one file layer every storage write and sync goes through.

Keeping all writes, syncs, renames and unlinks behind one small class lets a test swap in a model
of the page cache (tests/test_storage_powerloss.py) and cut the power at any call, which a
``kill -9`` process test cannot do: the kernel keeps the page cache of a killed process.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

_FULL = (errno.ENOSPC, errno.EDQUOT)


class StorageError(Exception):
    """Persisting or recovering a node's data failed; the message names the file and the cause."""

    def __init__(self, msg: str, *, path: Path | None = None, err: int | None = None) -> None:
        super().__init__(msg)
        self.path = path
        self.errno = err


class DiskFull(StorageError):
    """ENOSPC or EDQUOT. Raised after any partial write was rolled back, so retrying is safe."""


def storage_error(e: OSError, path: Path, doing: str) -> StorageError:
    """Turn an OSError into a StorageError (DiskFull when out of space) naming errno and path."""
    code = e.errno
    name = errno.errorcode.get(code, str(code)) if code is not None else "?"
    msg = f"{doing} {path}: {e.strerror or e} ({name})"
    cls = DiskFull if code in _FULL else StorageError
    return cls(msg, path=path, err=code)


class FileIO:
    """The real OS. Subclasses override the primitives; write_all and the helpers build on them."""

    # -- primitives -------------------------------------------------------------------
    def open_append(self, path: Path) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND)

    def create(self, path: Path) -> int:
        """A new (or emptied) file for writing."""
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def write(self, fd: int, data: memoryview) -> int:
        """One write(2); may write less than asked."""
        return os.write(fd, data)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def close(self, fd: int) -> None:
        os.close(fd)

    def rename(self, src: Path, dst: Path) -> None:
        os.rename(src, dst)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def fsync_dir(self, path: Path) -> None:
        """Make the directory's entries (creations, renames, unlinks) durable."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, path: Path) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def listdir(self, path: Path) -> list[str]:
        return os.listdir(path)

    def makedirs(self, path: Path) -> None:
        """Create path (and parents) if missing, and make the new entry durable in its parent."""
        if path.is_dir():
            return
        os.makedirs(path, exist_ok=True)
        self.fsync_dir(path.parent)

    # -- built on the primitives ------------------------------------------------------------
    def write_all(self, fd: int, data: bytes) -> None:
        """Write every byte or raise: a short write is continued, never counted as done."""
        view = memoryview(data)
        while view:
            n = self.write(fd, view)
            if n <= 0:
                raise OSError(errno.EIO, "write made no progress")
            view = view[n:]

    def write_file_atomic(self, path: Path, data: bytes, doing: str) -> None:
        """Temp file, write all, fsync, rename, fsync dir. On error the temp file is removed and
        whatever was at path before stays; the error is a StorageError (DiskFull when full)."""
        tmp = path.with_name(path.name + ".tmp")
        fd = -1
        try:
            fd = self.create(tmp)
            self.write_all(fd, data)
            self.fsync(fd)
            self.close(fd)
            fd = -1
            self.rename(tmp, path)
            self.fsync_dir(path.parent)
        except OSError as e:
            if fd >= 0:
                try:
                    self.close(fd)
                except OSError:
                    pass
            try:
                self.unlink(tmp)
            except OSError:
                pass
            raise storage_error(e, path, doing) from e


REAL = FileIO()
