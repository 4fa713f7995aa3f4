"""etcd's key-value semantics: the MVCC store, the replicated state machine, watches."""

from .apply import KVStateMachine
from .mvcc import KV, Event, KVError, MVCCStore
from .watch import Batch, WatchHub, WatchStream

__all__ = ["KV", "Batch", "Event", "KVError", "KVStateMachine", "MVCCStore", "WatchHub", "WatchStream"]
