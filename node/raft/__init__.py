"""Pure, deterministic Raft consensus core (no I/O, no clocks, injected RNG)."""

from .raft import CAMPAIGN_TRANSFER, Config, PeerStatus, Raft, Status, quorum
from .types import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    ProposalDropped,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SoftState,
)

__all__ = [
    "CAMPAIGN_TRANSFER",
    "NONE",
    "Config",
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Entry",
    "EntryType",
    "HardState",
    "Message",
    "MsgType",
    "PeerStatus",
    "ProposalDropped",
    "Raft",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SoftState",
    "Status",
    "quorum",
]
