"""Durable state of one node: the write-ahead log, snapshot files and member metadata."""

from .disk import DiskStorage, Meta, RecoveredState
from .fileio import REAL, DiskFull, FileIO, StorageError
from .snapshot import SnapshotCorruption, SnapshotStore, decode_snapshot, encode_snapshot
from .wal import WAL, WalCorruption, WalState

__all__ = [
    "REAL",
    "WAL",
    "DiskFull",
    "DiskStorage",
    "FileIO",
    "Meta",
    "RecoveredState",
    "SnapshotCorruption",
    "SnapshotStore",
    "StorageError",
    "WalCorruption",
    "WalState",
    "decode_snapshot",
    "encode_snapshot",
]
