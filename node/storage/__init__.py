"""Durable state of one node: the write-ahead log, snapshot files and member metadata."""

from .disk import DiskStorage, Meta, RecoveredState
from .snapshot import SnapshotCorruption, SnapshotStore, decode_snapshot, encode_snapshot
from .wal import WAL, WalCorruption, WalState

__all__ = [
    "WAL",
    "DiskStorage",
    "Meta",
    "RecoveredState",
    "SnapshotCorruption",
    "SnapshotStore",
    "WalCorruption",
    "WalState",
    "decode_snapshot",
    "encode_snapshot",
]
