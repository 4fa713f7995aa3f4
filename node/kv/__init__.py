"""etcd's key-value semantics: the MVCC store, the replicated state machine, watches."""

from .apply import KVStateMachine
from .mvcc import KV, Event, MVCCStore
from .watch import Batch, WatchHub, WatchStream

__all__ = ["KV", "Batch", "Event", "KVStateMachine", "MVCCStore", "WatchHub", "WatchStream"]
