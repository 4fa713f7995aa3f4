"""Plain data types exchanged between the Raft core and whoever drives it.

Everything here is a small slotted dataclass or enum so the driver can encode
it however it likes (the server uses msgpack); nothing is pickled.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

NONE = 0  # "no node": node ids start at 1


class Role(enum.IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


class EntryType(enum.IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


class MsgType(enum.IntEnum):
    # local inputs (term 0, never sent over the wire)
    HUP = 0
    BEAT = 1
    CHECK_QUORUM = 2
    UNREACHABLE = 3
    SNAP_STATUS = 4
    # wire messages
    PROP = 10
    APP = 11
    APP_RESP = 12
    VOTE = 13
    VOTE_RESP = 14
    PRE_VOTE = 15
    PRE_VOTE_RESP = 16
    SNAP = 17
    HEARTBEAT = 18
    HEARTBEAT_RESP = 19
    TRANSFER_LEADER = 20
    TIMEOUT_NOW = 21
    READ_INDEX = 22
    READ_INDEX_RESP = 23


class ConfChangeType(enum.IntEnum):
    ADD_NODE = 0
    REMOVE_NODE = 1
    ADD_LEARNER = 2


@dataclass(slots=True)
class Entry:
    index: int
    term: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(slots=True)
class ConfState:
    voters: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()

    def members(self) -> frozenset[int]:
        return self.voters | self.learners


@dataclass(slots=True)
class Snapshot:
    index: int = 0
    term: int = 0
    conf: ConfState = field(default_factory=ConfState)
    data: bytes = b""


@dataclass(slots=True)
class HardState:
    term: int = 0
    vote: int = NONE
    commit: int = 0


@dataclass(slots=True, frozen=True)
class SoftState:
    lead: int
    role: Role


@dataclass(slots=True)
class Message:
    type: MsgType
    to: int = NONE
    frm: int = NONE
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""


@dataclass(slots=True, frozen=True)
class ReadState:
    """A linearizable read may be served once applied >= index."""

    index: int
    context: bytes


@dataclass(slots=True)
class ConfChange:
    type: ConfChangeType
    node_id: int
    context: bytes = b""

    _HEAD = struct.Struct(">BQ")

    def encode(self) -> bytes:
        return self._HEAD.pack(int(self.type), self.node_id) + self.context

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        kind, node_id = cls._HEAD.unpack_from(data)
        return cls(ConfChangeType(kind), node_id, bytes(data[cls._HEAD.size :]))


@dataclass(slots=True)
class Ready:
    """One batch of work for the driver: persist, send, apply, then advance()."""

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    must_sync: bool = False

    def empty(self) -> bool:
        return (
            self.soft_state is None
            and self.hard_state is None
            and not self.entries
            and self.snapshot is None
            and not self.committed_entries
            and not self.messages
            and not self.read_states
        )


class DropReason(enum.Enum):
    """Why the core dropped a proposal or read; the value is the exception's message."""

    NO_LEADER = "no leader"
    LEADER_REMOVED = "leader was removed from the cluster"
    LEADERSHIP_TRANSFER = "leadership transfer in progress"
    CONF_CHANGE_PENDING = "a configuration change is already in progress"


class ProposalDropped(Exception):
    """The proposal was not accepted; `reason` says why, for the driver to map without reading text."""

    def __init__(self, reason: DropReason) -> None:
        self.reason = reason
        super().__init__(reason.value)
