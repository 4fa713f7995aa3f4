"""Wire encoding of Raft messages between peers: msgpack arrays, length-prefixed frames.

Never pickle: a peer port is reachable from the network, so only plain data
(ints, bytes, lists) crosses it and every decode is validated by construction.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from node.raft import ConfState, Entry, EntryType, Message, MsgType, Snapshot

FRAME = struct.Struct(">I")
MAX_FRAME = 16 << 20  # a frame bigger than this closes the connection: batches and snapshot chunks stay far below
MAX_HELLO_FRAME = 4096  # before a peer has proved itself, nothing bigger than a hello is read

# frame kinds
F_HELLO = 0  # [F_HELLO, cluster_id, from_id, to_id]
F_MSGS = 1  # [F_MSGS, [message, ...]]
F_SNAP_CHUNK = 2  # [F_SNAP_CHUNK, total, chunk, message-or-None (on the last chunk)]
F_REFUSE = 3  # [F_REFUSE, reason]
F_DISCOVER = 4  # [F_DISCOVER, peer_url] -> [F_DISCOVER, cluster_id, [member ids]] (joining a cluster)
# With a cluster secret, before anything else (node/secret.py): client [F_AUTH, nonce_c], server
# [F_AUTH, nonce_s], client [F_AUTH, mac("client")], server [F_AUTH, mac("server")]
F_AUTH = 5


class CodecError(Exception):
    pass


def snap_to_wire(s: Snapshot, with_data: bool = True) -> list[Any]:
    return [s.index, s.term, sorted(s.conf.voters), sorted(s.conf.learners), s.data if with_data else b""]


def _bytes(x: Any) -> bytes:
    """Only real bytes: bytes(n) of an int n would allocate n zero bytes on a peer's say-so."""
    if not isinstance(x, bytes):
        raise TypeError(f"expected bytes, got {type(x).__name__}")
    return x


def snap_from_wire(v: list[Any]) -> Snapshot:
    idx, term, voters, learners, data = v
    return Snapshot(int(idx), int(term), ConfState(frozenset(voters), frozenset(learners)), _bytes(data))


def msg_to_wire(m: Message, with_snapshot_data: bool = True) -> list[Any]:
    return [
        int(m.type),
        m.to,
        m.frm,
        m.term,
        m.log_term,
        m.index,
        [[e.index, e.term, int(e.type), e.data] for e in m.entries],
        m.commit,
        m.reject,
        m.reject_hint,
        snap_to_wire(m.snapshot, with_snapshot_data) if m.snapshot is not None else None,
        m.context,
    ]


# plain dict lookups: calling the Enum class per message and per entry showed in the profile
_MSG_TYPES = {int(t): t for t in MsgType}
_ENTRY_TYPES = {int(t): t for t in EntryType}


def msg_from_wire(v: list[Any]) -> Message:
    try:
        t, to, frm, term, log_term, index, ents, commit, reject, hint, snap, ctx = v
        mtype = _MSG_TYPES[t]
        etype = _ENTRY_TYPES
        return Message(
            mtype,
            to=int(to),
            frm=int(frm),
            term=int(term),
            log_term=int(log_term),
            index=int(index),
            entries=[Entry(int(i), int(tm), etype[ty], _bytes(d)) for i, tm, ty, d in ents],
            commit=int(commit),
            reject=bool(reject),
            reject_hint=int(hint),
            snapshot=snap_from_wire(snap) if snap is not None else None,
            context=_bytes(ctx),
        )
    except (ValueError, TypeError, KeyError) as e:
        raise CodecError(f"malformed raft message: {e!r}") from e


def pack(obj: Any) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return FRAME.pack(len(body)) + body


def unpack(body: bytes) -> Any:
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise CodecError(f"malformed frame: {e}") from e
