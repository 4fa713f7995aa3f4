"""Linearizable reads in ReadIndex rounds (node/server/readloop.py): sharing, resends, leader changes.

Driven the same way as tests/test_node_driver.py: the real RaftNode loop, a recording transport,
every peer message delivered by hand, no ticks. Each test names the invariant it guards.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from node.errors import EtcdError
from node.raft import Entry, Message, MsgType
from node.raft.types import EntryType
from node.server.raftnode import READ_RETRY_S
from tests import test_node_driver
from tests.test_node_driver import Driven, Make, elect

driven = test_node_driver.driven  # the fixture: one RaftNode on recording parts


async def _elected(d: Driven) -> None:
    await elect(d)
    d.deliver(Message(MsgType.APP_RESP, to=1, frm=2, term=2, index=d.raft.log.last_index()))
    await d.settle()  # the leader's first entry of the term is committed: it may serve reads


def _read_rounds(d: Driven) -> list[bytes]:
    """The contexts of the ReadIndex heartbeat rounds the leader sent, in order, once each."""
    seen: list[bytes] = []
    for m, _ in d.journal.sends(MsgType.HEARTBEAT):
        if m.context and m.context not in seen:
            seen.append(m.context)
    return seen


async def test_reads_share_a_round_but_never_one_that_started_before_them(driven: Make) -> None:
    """One heartbeat round serves every read that arrived while the previous round was in flight,
    and a read never takes the index of a round sent before it arrived: a write acknowledged in
    between would be missing from it (a stale read)."""
    d = driven([1, 2, 3])
    await _elected(d)
    first = asyncio.create_task(d.node.read_barrier(2.0))
    await d.settle()
    [ctx_a] = _read_rounds(d)
    # a write commits while the first round is in flight; then three more reads arrive
    write = asyncio.create_task(d.node.propose(b"w", timeout=2.0))
    await d.settle()
    w = d.raft.log.last_index()
    d.deliver(Message(MsgType.APP_RESP, to=1, frm=2, term=2, index=w))
    await d.settle()
    assert write.done() and d.node.applied >= w  # acknowledged
    later = [asyncio.create_task(d.node.read_barrier(2.0)) for _ in range(3)]
    await d.settle()
    assert _read_rounds(d) == [ctx_a], "a second round went out while the first was in flight"
    d.deliver(Message(MsgType.HEARTBEAT_RESP, to=1, frm=2, term=2, context=ctx_a))
    await d.settle()
    assert first.done() and first.result() < w
    assert not any(t.done() for t in later), "a read took the index of a round sent before it arrived"
    rounds = _read_rounds(d)
    assert len(rounds) == 2, rounds  # one round for the three later reads
    d.deliver(Message(MsgType.HEARTBEAT_RESP, to=1, frm=3, term=2, context=rounds[1]))
    await d.settle()
    assert [t.result() for t in later] == [w, w, w]
    assert d.node._read_rounds.rounds == 2


async def test_a_lost_round_is_resent_and_a_read_times_out_alone(driven: Make) -> None:
    d = driven([1, 2, 3])
    await _elected(d)
    read = asyncio.create_task(d.node.read_barrier(3.0))
    await asyncio.sleep(1.2)  # nobody answers: the round goes out again every READ_RETRY_S
    copies = _read_rounds(d)  # each copy with a context of its own (a late answer confirms only its own)
    assert len(copies) >= 2 and not read.done() and d.node._read_rounds.rounds == 1
    sent = [m for m, _ in d.journal.sends(MsgType.HEARTBEAT) if m.context in copies]
    assert len(sent) >= 4, sent  # to both followers, at least twice
    d.deliver(Message(MsgType.HEARTBEAT_RESP, to=1, frm=2, term=2, context=copies[0]))  # the first copy's answer
    await d.settle()
    assert read.done() and read.result() >= 1
    with pytest.raises(EtcdError, match="timed out"):
        await d.node.read_barrier(0.2)  # no answer at all: this read fails by its own deadline


def _read_index_sent(d: Driven, to: int) -> list[bytes]:
    return [m.entries[0].data for m, _ in d.journal.sends(MsgType.READ_INDEX) if m.to == to]


async def _wait_until(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(0.01)
    return cond()


async def _reap(*tasks: asyncio.Task[int]) -> None:
    """A test that fails midway leaves no read task behind (nor an unretrieved exception)."""
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_resent_round_never_confirms_a_read_with_acks_older_than_it(driven: Make) -> None:
    """A read is confirmed only by heartbeat answers sent after the leader recorded it.

    The round's resend reuses its context. On the leader, a later copy of context A stands behind
    a read B that arrived in between; a late answer to the FIRST heartbeat of A (sent before B was
    recorded) then matches the second copy of A and confirms B too ("confirming a read confirms
    every read queued before it"). An isolated or paused leader thus answers B at its old commit
    index: a stale read if a new leader committed a write meanwhile (etcd-io/etcd#20418, fixed in
    etcd by a new request id per retry, etcd-io/etcd#21399, and etcd-io/raft#397)."""
    d = driven([1, 2, 3])
    await _elected(d)
    own = asyncio.create_task(d.node.read_barrier(4.0))  # round A, this leader's own reads
    try:
        await _stale_acks_confirm(d, own)
    finally:
        await _reap(own)


async def _stale_acks_confirm(d: Driven, own: asyncio.Task[int]) -> None:
    await d.settle()
    [ctx_a] = _read_rounds(d)
    # both followers answer that heartbeat, but the answers are late (held by the network / a pause)
    late = [Message(MsgType.HEARTBEAT_RESP, to=1, frm=p, term=2, context=ctx_a) for p in (2, 3)]
    # a read forwarded by follower 3 arrives: B is recorded after A's first heartbeat went out
    ctx_b = b"B-from-3"
    d.deliver(Message(MsgType.READ_INDEX, to=1, frm=3, entries=[Entry(0, 0, EntryType.NORMAL, ctx_b)]))
    await d.settle()
    await asyncio.sleep(READ_RETRY_S + 0.15)  # round A is resent: a second copy of A stands behind B
    await d.settle()
    d.deliver(late[0])  # answers A's first copy: this round is confirmed (correctly)
    await d.settle()
    assert own.done() and not own.exception()
    d.deliver(late[1])  # the surplus answer to A's FIRST heartbeat, sent before B was recorded
    await d.settle()
    confirmed_b = [m for m, _ in d.journal.sends(MsgType.READ_INDEX_RESP) if m.entries[0].data == ctx_b]
    assert not confirmed_b, (
        "read B was confirmed by heartbeat answers all sent before B was recorded: an isolated leader "
        "would serve it at a stale index"
    )


async def test_a_round_goes_to_a_new_leader_at_once(driven: Make) -> None:
    """A follower whose leader changes straight from one member to another (no "no leader" Ready in
    between) must not leave its round with the old leader, which dropped it (pending_reads are
    cleared on step-down). Today it waits READ_RETRY_S for the resend; etcd fails the round at once
    with "leader changed" on any new leader."""
    d = driven([1, 2, 3])
    await d.settle()
    d.deliver(Message(MsgType.HEARTBEAT, to=1, frm=2, term=2, commit=3))
    await d.settle()
    assert d.node.lead == 2
    read = asyncio.create_task(d.node.read_barrier(3.0))
    try:
        await _moves_to_new_leader(d, read)
    finally:
        await _reap(read)


async def _moves_to_new_leader(d: Driven, read: asyncio.Task[int]) -> None:
    await d.settle()
    assert len(_read_index_sent(d, 2)) == 1
    d.deliver(Message(MsgType.HEARTBEAT, to=1, frm=3, term=3, commit=3))  # 3 leads term 3; 2 is gone
    await d.settle()
    assert d.node.lead == 3
    # the round goes to 3 (with any context: a resend may carry a new one) or fails as etcd's does
    moved = await _wait_until(lambda: bool(_read_index_sent(d, 3)) or read.done(), READ_RETRY_S * 0.5)
    assert moved, "the round stayed with the old leader until the retry timer"
    if not read.done():
        [ctx3] = _read_index_sent(d, 3)
        answer = Message(
            MsgType.READ_INDEX_RESP, to=1, frm=3, term=3, index=3, entries=[Entry(0, 0, EntryType.NORMAL, ctx3)]
        )
        d.deliver(answer)
        await d.settle()
    assert read.done()
    if read.exception() is not None:
        with pytest.raises(EtcdError, match="leader changed"):
            read.result()
