"""The asyncio driver around the pure Raft core: ticks, the Ready loop, durability, apply.

One coroutine owns the Raft object. Everything else (peer messages, ticks,
client proposals, reads) is put in an inbox and handled at the top of the
loop, so Raft is never touched between ready() and advance() while an fsync is
in flight on a worker thread; requests that arrive during the fsync are
group-committed in the next batch.

Ordering per batch: leader's outgoing appends are sent while it persists (the
thesis §10.2.1 allows it; the leader counts itself only after its own fsync),
everything else — votes, append replies — only after the batch is durable.

Snapshots are built by one background task (the state machine packs its state
off the loop) and installed back through the inbox, so neither the Ready loop
nor the event loop that sends heartbeats waits for them.

Failures are loud: a full disk releases a reserve file, raises the disk-full
hooks (the NOSPACE alarm) and retries once; any other exception escaping the
Ready loop is a bug or a broken disk, and like etcd's panic it ends the
process with the traceback in the log (see `_fatal`). That includes an exception
from the Raft core itself: only ProposalDropped, which node/raft documents as an
expected refusal, is caught around `Raft.step` and the posted calls. And one from
the state machine's `apply`: it turns expected refusals into results (node.errors),
so anything it raises is a bug that would let this member's state drift.

The driver's helpers follow etcd's server: the member registry is `Membership`
(membership.py), requests waiting for their entry or read are `Wait`/`WaitApplied`
(waits.py), the snapshot policy is `Snapshotter` (snapshotter.py); the Admin status
JSON is rendered by node/api/admin_service.py from the public fields here.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgpack

from node.errors import EtcdError, Reason
from node.faults import FaultTable
from node.raft import (
    NONE,
    ConfChange,
    ConfChangeType,
    Config,
    Entry,
    EntryType,
    Message,
    MsgType,
    ProposalDropped,
    Raft,
    Ready,
    Role,
    Snapshot,
    Status,
)
from node.raft.types import DropReason
from node.storage import DiskFull, DiskStorage, StorageError

from .bootstrap import new_identity
from .interfaces import ConfigError, NodeConfig, NodeStorage, StateMachine
from .loopmon import LoopMonitor
from .members import Member, member_id
from .membership import (
    Membership,
    attributes_payload,
    conf_change_context,
    ctx_request,
    peer_urls_payload,
)
from .readloop import ReadRounds
from .snapshotter import Snapshotter, unpack_envelope
from .transport import Transport
from .waits import Wait, WaitApplied

log = logging.getLogger("quorumlab.node")

# entry kinds in the envelope [origin member id, request seq, kind, payload]; only the
# origin resolves the waiting request, and seq starts at a random 62-bit value so a
# restarted member never mistakes an old entry for a new request
K_APP = 1  # payload for the application state machine
K_ATTRS = 2  # a member publishes its name and client URLs
K_PEER_URLS = 3  # MemberUpdate: a member's new peer URLs

MAX_APPLY_LAG = 5000  # etcd: "too many requests" beyond this commit-apply gap
# The most the Raft loop holds the event loop applying entries or handling Ready batches
# before it lets heartbeats, peer messages and replies through (a backlog of big txns
# would otherwise hold it for as long as the whole backlog takes).
APPLY_BUDGET_S = 0.01
READ_RETRY_S = 0.5  # a ReadIndex round is resent this often (etcd's readIndexRetryTime)
# what a proposer is told when the core drops its proposal (etcd's texts)
_DROPPED = {
    DropReason.NO_LEADER: Reason.NO_LEADER,
    DropReason.LEADER_REMOVED: Reason.LEADER_REMOVED,
    DropReason.LEADERSHIP_TRANSFER: Reason.LEADERSHIP_TRANSFER,
    DropReason.CONF_CHANGE_PENDING: Reason.CONF_CHANGE_PENDING,
}
EXIT_FATAL = 70  # EX_SOFTWARE: the Ready loop hit a bug or an unrecoverable storage error


def _fail_future(fut: asyncio.Future[Any], why: Reason) -> None:
    if not fut.done():
        fut.set_exception(EtcdError(why))


RTT_GIVE_UP_S = 5.0  # an unanswered heartbeat older than this is not a round trip
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Fewer, cheaper garbage collections: a profile under put load found ~15% of the leader's
    time in CPython's cyclic GC, as every request allocates futures and messages (gen 0 filled
    every few requests) and full passes walked the whole recovered key-value state. The state
    recovered at start is frozen (never scanned again); reference counting still frees almost
    everything at once, the collector only finds cycles.
    """
    global _gc_tuned
    if _gc_tuned:  # once per process: several members in one process (the tests) must not each pay it
        return
    _gc_tuned = True
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


_gc_tuned = False


def exit_process(code: int = EXIT_FATAL) -> None:
    """Leave now, as a Go panic does: flush the log first, run no more Python code."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


class RaftNode:
    def __init__(self, cfg: NodeConfig, sm: StateMachine) -> None:
        self.cfg = cfg
        self.sm = sm
        self.faults = FaultTable(cfg.seed) if cfg.enable_fault_injection else None
        self.membership = Membership()
        self.storage: NodeStorage | None = None
        self.raft: Raft | None = None
        self.transport: Transport | None = None
        self.member_id = 0
        self.cluster_id = 0
        self.applied = 0
        self.committed = 0
        self._inbox: deque[Message | Callable[[], None]] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._background: set[asyncio.Task[None]] = set()  # unawaited tasks, referenced until done
        self._pending: Wait[int, Any] = Wait()  # proposals by request seq, resolved when applied here
        # linearizable reads, one ReadIndex round for all that arrived before it (resolved by ReadStates)
        self._read_rounds = ReadRounds(self._send_read_index, READ_RETRY_S, lambda: self.cfg.request_timeout)
        self._applied_waits = WaitApplied()
        self._seq = itertools.count(random.getrandbits(62))
        self._stopping = False
        self.stopped = asyncio.Event()
        self.removed = False
        self.leader_changes = 0
        self.started_at = time.monotonic()
        self.lead = NONE
        self.term = 0
        self.on_leader_change: list[Callable[[int, int], None]] = []
        # observers for /metrics (node/metrics): called on the loop, after the fact, with seconds
        self.proposals_failed = 0
        self.on_fsync: list[Callable[[float], None]] = []
        self.on_apply_batch: list[Callable[[float], None]] = []
        self.on_peer_rtt: list[Callable[[int, float], None]] = []
        self._heartbeat_sent: dict[int, float] = {}  # peer -> when the first unanswered heartbeat left
        self._persist_s = 0.0
        self.published = False
        self.disk_full = False
        self.on_disk_full: list[Callable[[], None]] = []
        self._disk_clear_lock = asyncio.Lock()  # one reserve re-creation at a time (reserve.bin.tmp)
        self.on_fatal: Callable[[BaseException], None] = lambda _e: exit_process()
        self.fatal_error: BaseException | None = None
        self.loopmon = LoopMonitor(cfg.heartbeat_ms / 2000, name=cfg.name)
        self.snapshotter = Snapshotter(
            cfg,
            sm,
            self.membership,
            post=self._post,
            applied=lambda: self.applied,
            hit_disk_full=self._hit_disk_full,
            fatal=self._fatal,
        )

    @property
    def members(self) -> dict[int, Member]:
        """The member table (read by the Cluster service); changed only by applied entries."""
        return self.membership.members

    # ------------------------------------------------------------------
    # start / stop
    # ------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.cfg
        storage, rec = await asyncio.to_thread(DiskStorage.open, cfg.data_dir)
        self.storage = storage
        for t in rec.truncated:
            log.warning("WAL repaired at start: %s (an unsynced write from a crash)", t)
        if cfg.reserve_bytes > 0 and not await asyncio.to_thread(storage.reserve_space, cfg.reserve_bytes):
            log.warning(
                "no room for the %d-byte disk reserve in %s: if the disk fills up this member cannot record "
                "the NOSPACE alarm and will stop",
                cfg.reserve_bytes,
                cfg.data_dir,
            )
        fresh = rec.meta is None
        if fresh:
            meta = await new_identity(cfg)
        else:
            assert rec.meta is not None
            meta = rec.meta
            if meta.name != cfg.name:
                raise ConfigError(f"data dir {cfg.data_dir} belongs to member {meta.name!r}, not {cfg.name!r}")
        self.member_id, self.cluster_id = meta.member_id, meta.cluster_id
        rcfg = Config(
            self.member_id,
            election_tick=max(2, cfg.election_ms // cfg.heartbeat_ms),
            heartbeat_tick=1,
            pre_vote=cfg.pre_vote,
            check_quorum=True,
        )
        rng = random.Random(cfg.seed if cfg.seed is not None else int.from_bytes(os.urandom(8), "big"))
        self.raft = Raft(rcfg, rng, rec.hard_state, rec.snapshot, rec.entries)
        if rec.snapshot is not None:
            self._restore_snapshot(rec.snapshot)
        if fresh and cfg.initial_cluster_state == "new" and not rec.entries and rec.snapshot is None:
            ids = {name: member_id(url, cfg.initial_cluster_token) for name, url in cfg.initial_cluster.items()}
            ctx = {
                mid: msgpack.packb(Member(mid, name, [cfg.initial_cluster[name]]).to_wire())
                for name, mid in ids.items()
            }
            self.raft.bootstrap(ids.values(), ctx)
            # the bootstrap entries must be durable before this data dir claims to be a member:
            # a crash in between would otherwise restart with no membership at all
            rd = self.raft.ready()
            await asyncio.to_thread(storage.persist, rd)
            self.raft.advance(rd)
        if fresh:
            storage.write_meta(meta)
        if fresh and cfg.initial_cluster_state == "existing":
            # we learn the membership from the leader's log or snapshot
            self.membership.seed(cfg.initial_cluster, cfg.initial_cluster_token, cfg.name)
        self.applied = self.raft.applied_index
        self.snapshotter.last_index = self.raft.snapshot_meta.index
        tune_gc()
        self.loopmon.start()
        # Like etcd, fast-forward the election clock at start: T-1 of the randomized [T, 2T)
        # ticks, so a booting cluster elects within 1..T ticks (still spread out at random)
        # instead of idling a whole timeout. Pre-vote keeps a restarted member harmless.
        for _ in range(rcfg.election_tick - 1):
            self.raft.tick()
        self.transport = Transport(
            self.member_id,
            self.cluster_id,
            self.membership.name_of,
            self._deliver,
            self.faults,
            on_peer_lost=self._peer_lost,
            on_unreachable=lambda pid, m: self._post(lambda: self._report_unreachable(pid)),
            on_snapshot_sent=lambda pid, ok: self._post(lambda: self._report_snapshot(pid, ok)),
            member_ids=lambda: sorted(set(self.members) | self._raft().member_ids()),
            secret=cfg.peer_secret,
            spool_dir=cfg.data_dir,
            snapshot_limit=cfg.snapshot_limit,
            spool_margin=cfg.reserve_bytes + cfg.disk_free_margin,
            tls=cfg.peer_tls,
        )
        await self.transport.listen(cfg.listen_peer)
        self._sync_peers()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(), name="raft-loop"),
            loop.create_task(self._ticker(), name="raft-ticker"),
        ]
        log.info(
            "member %s (%x) of cluster %x started; peer %s, %d entries recovered, commit %d",
            cfg.name,
            self.member_id,
            self.cluster_id,
            cfg.peer_url(),
            len(rec.entries),
            rec.hard_state.commit,
        )

    async def stop(self, transfer: bool = True) -> None:
        """Graceful stop: hand leadership to the most caught-up voter first."""
        if self._stopping:
            return
        r = self.raft
        if transfer and r is not None and r.role == Role.LEADER and len(r.conf_state().voters) > 1:
            await self._transfer_before_stop()
        self._stopping = True
        self._wake.set()
        snap_task = self.snapshotter.task
        tasks = [*self._tasks, *([snap_task] if snap_task is not None else [])]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self.loopmon.stop()
        if self.transport is not None:
            await self.transport.close()
        if self.storage is not None:
            self.storage.close()
        self._fail_all(Reason.STOPPED)
        self.stopped.set()

    async def _transfer_before_stop(self) -> None:
        r = self.raft
        assert r is not None
        candidates = sorted(
            ((ps.match, pid) for pid, ps in r.status().peers.items() if pid != self.member_id and r.is_voter(pid)),
            reverse=True,
        )
        if not candidates:
            return
        target = candidates[0][1]
        self._post(lambda: r.transfer_leader(target))
        deadline = time.monotonic() + self.cfg.election_ms / 1000 * 2
        while time.monotonic() < deadline and r.role == Role.LEADER:
            await asyncio.sleep(self.cfg.heartbeat_ms / 1000 / 2)
        if r.role != Role.LEADER:
            log.info("leadership transferred to %x before stopping", target)

    # ------------------------------------------------------------------
    # the loop
    # ------------------------------------------------------------------
    def _post(self, item: Message | Callable[[], None]) -> None:
        self._inbox.append(item)
        self._wake.set()

    def _deliver(self, m: Message) -> None:
        self._post(m)

    async def _ticker(self) -> None:
        period = self.cfg.heartbeat_ms / 1000
        nxt = time.monotonic()
        while True:
            nxt += period
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
            if time.monotonic() - nxt > 5 * period:
                nxt = time.monotonic()  # we were paused (SIGSTOP): do not burst ticks
            self._post(self._tick)

    def _tick(self) -> None:
        assert self.raft is not None
        self.raft.tick()

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - every other failure is fatal, see _fatal
            self._fatal("the Raft loop failed", e)

    async def _loop(self) -> None:
        r = self.raft
        assert r is not None and self.storage is not None and self.transport is not None
        busy_since = time.perf_counter()
        while not self._stopping:
            if not self._inbox and not r.has_ready():
                await self._wake.wait()
                busy_since = time.perf_counter()
            self._wake.clear()
            while self._inbox:
                item = self._inbox.popleft()
                try:
                    if isinstance(item, Message):
                        if item.type == MsgType.HEARTBEAT_RESP:
                            self._heartbeat_answered(item.frm)
                        r.step(item)
                    else:
                        item()
                except ProposalDropped as e:
                    # expected (node/raft documents it): a proposal or read the leader cannot take now.
                    # Anything else Raft raises is a bug: it escapes to _run, which ends the process.
                    log.debug("dropped: %s", e)
            # one Ready per turn, then the inbox again: ticks and peer messages are never
            # stuck behind a backlog of entries to apply
            if r.has_ready() and not self._stopping:
                await self._handle_ready(r.ready())
                if time.perf_counter() - busy_since > APPLY_BUDGET_S:
                    await asyncio.sleep(0)  # let the rest of the event loop run
                    busy_since = time.perf_counter()

    def _fatal(self, what: str, exc: BaseException) -> None:
        """Like etcd's panic: the traceback goes to the log at CRITICAL and the process ends.

        Carrying on would leave a member that answers status calls and serializable reads
        while its Raft loop is dead (issue #9): worse than a crash the orchestrator can see.
        """
        if self.fatal_error is not None:
            return
        self.fatal_error = exc
        log.critical(
            "%s: %s: %s; stopping this member (exit code %d)",
            self.cfg.name,
            what,
            exc,
            EXIT_FATAL,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        self._stopping = True
        self._wake.set()
        self._fail_all(Reason.STOPPED)
        self.on_fatal(exc)

    async def _handle_ready(self, rd: Ready) -> None:
        r = self.raft
        assert r is not None and self.storage is not None and self.transport is not None
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state.lead)
        early: list[Message] = []
        late: list[Message] = []
        for m in rd.messages:
            if r.role == Role.LEADER and m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP, MsgType.TIMEOUT_NOW):
                early.append(m)
            else:
                late.append(m)
        if early:
            now = time.monotonic()
            for m in early:
                if m.type == MsgType.HEARTBEAT:
                    sent = self._heartbeat_sent.get(m.to)
                    if sent is None or now - sent > RTT_GIVE_UP_S:  # a peer that was away starts afresh
                        self._heartbeat_sent[m.to] = now
            self.transport.send(early)
        # Committed entries are already durable here (Raft hands out only committed entries at or
        # below the stable index) and on a quorum, and never conflict with the new entries this
        # Ready persists: apply them (and answer their clients) before this batch's fsync instead
        # of one fsync later. A snapshot in the Ready must be restored first, so then apply after.
        if rd.snapshot is None:
            self._apply_committed(rd)
        if rd.entries or rd.hard_state is not None or rd.snapshot is not None:
            await self._persist(rd)
        if late:
            self.transport.send(late)
        if rd.snapshot is not None:
            self._restore_snapshot(rd.snapshot)
            self._apply_committed(rd)
        for rs in rd.read_states:
            self._read_rounds.resolve(rs.context, rs.index)
        r.advance(rd)
        self.committed = r.committed_index
        if rd.committed_entries or rd.snapshot is not None:
            self._applied_waits.trigger(self.applied)
            if not self._stopping:
                self.snapshotter.maybe_start(r, self.storage)

    def _apply_committed(self, rd: Ready) -> None:
        ents = rd.committed_entries
        if ents:
            t0 = time.perf_counter()
            until = t0 + APPLY_BUDGET_S
            for n, e in enumerate(ents, 1):
                self._apply_entry(e)
                if n < len(ents) and time.perf_counter() > until:
                    rd.committed_entries = ents[:n]  # advance() marks these; the rest come in the next Ready
                    break
            took = time.perf_counter() - t0
            for cb in self.on_apply_batch:
                cb(took)

    def _heartbeat_answered(self, peer: int) -> None:
        sent = self._heartbeat_sent.pop(peer, None)
        if sent is not None:
            took = time.monotonic() - sent
            for cb in self.on_peer_rtt:
                cb(peer, took)

    def pending_proposals(self) -> int:
        """Proposals made here and not yet applied (or failed)."""
        return len(self._pending)

    async def _persist(self, rd: Ready) -> None:
        """Make the batch durable; a full disk frees the reserve and retries once, then it is fatal."""
        storage = self.storage
        assert storage is not None
        try:
            await self._persist_once(storage, rd)
        except DiskFull as e:
            await self._hit_disk_full(storage, "persisting the log", e, "and retrying")
            await asyncio.to_thread(self._persist_locked, storage, rd)  # a second failure escapes: fatal
            if rd.must_sync or rd.snapshot is not None:
                for cb in self.on_fsync:
                    cb(self._persist_s)

    async def _persist_once(self, storage: NodeStorage, rd: Ready) -> None:
        if rd.must_sync or rd.snapshot is not None:
            await asyncio.to_thread(self._persist_locked, storage, rd)
            for cb in self.on_fsync:
                cb(self._persist_s)
        else:
            storage.persist(rd)  # a commit-index-only update: no fsync needed

    def _persist_locked(self, storage: NodeStorage, rd: Ready) -> None:
        t0 = time.perf_counter()
        if rd.snapshot is None:
            storage.persist(rd)
        else:
            with self.snapshotter.file_lock:  # a received snapshot is written into snap/ like ours
                storage.persist(rd)
        self._persist_s = time.perf_counter() - t0  # the WAL write and its fdatasync

    async def _hit_disk_full(self, storage: NodeStorage, what: str, err: DiskFull, then: str) -> None:
        """A write found the disk full: free the reserve (the next WAL append needs the room, and a
        reserve left in place would let a disarm believe the disk has space again), raise NOSPACE."""
        freed = await asyncio.to_thread(storage.release_reserve)
        log.error(
            "%s: disk full while %s (%s); released the %d-byte reserve, raising NOSPACE %s",
            self.cfg.name,
            what,
            err,
            freed,
            then,
        )
        self._set_disk_full()

    def _set_disk_full(self) -> None:
        if self.disk_full:
            return
        self.disk_full = True
        for hook in self.on_disk_full:
            try:
                hook()
            except Exception:  # a failing hook must not hide the disk-full state
                log.exception("a disk-full hook failed")

    async def try_clear_disk_full(self) -> bool:
        """After space was freed (alarm disarm): re-create the reserve and check that the disk
        really has room besides it; only then is the disk usable again.

        Serialized: two disarms applied back to back must not both write reserve.bin.tmp. The
        reserve may still exist (a snapshot that hit the full disk did not need it), so its
        presence proves nothing: the free space on the data dir's filesystem decides. The
        reserve is written and fsync'd on a worker thread: megabytes of I/O never run on the loop."""
        async with self._disk_clear_lock:
            if self.storage is None:
                return False
            if self.cfg.reserve_bytes > 0:
                try:
                    ok = await asyncio.to_thread(self.storage.reserve_space, self.cfg.reserve_bytes)
                except StorageError as e:
                    log.error("%s: cannot re-create the disk reserve: %s", self.cfg.name, e)
                    ok = False
                if not ok:
                    log.warning("%s: still no room for the %d-byte disk reserve", self.cfg.name, self.cfg.reserve_bytes)
                    return False
            free = await asyncio.to_thread(self.free_bytes)
            if free is None or free < self.cfg.disk_free_margin:
                log.warning(
                    "%s: the disk is still full: %s bytes free in %s besides the reserve, %d needed",
                    self.cfg.name,
                    "unknown" if free is None else free,
                    self.cfg.data_dir,
                    self.cfg.disk_free_margin,
                )
                return False
            if self.disk_full:
                log.info("%s: disk space available again (%d bytes free); reserve re-created", self.cfg.name, free)
            self.disk_full = False
            return True

    def free_bytes(self) -> int | None:
        """Bytes an unprivileged writer can still use on the data dir's filesystem (None: unknown)."""
        try:
            st = os.statvfs(self.cfg.data_dir)
        except OSError as e:
            log.error("%s: cannot read the free space of %s: %s", self.cfg.name, self.cfg.data_dir, e)
            return None
        return st.f_bavail * st.f_frsize

    def _on_soft_state(self, lead: int) -> None:
        assert self.raft is not None
        if lead != self.lead:
            self.leader_changes += 1
            log.info(
                "%s: leader is now %s (term %d)",
                self.cfg.name,
                self.membership.name_of(lead) if lead else "unknown",
                self.raft.term,
            )
            old = self.lead
            self.lead = lead
            for cb in self.on_leader_change:
                cb(old, lead)
            if lead == NONE:
                self._read_rounds.fail_current(Reason.LEADER_CHANGED)
            else:
                self._read_rounds.leader_changed()
        self.term = self.raft.term
        if lead != NONE and not self.published:
            self._post(self._publish)

    def _publish(self) -> None:
        """Tell the cluster our name and client URL (etcd's member attributes)."""
        url = self.cfg.client_url()
        if self.membership.published(self.member_id, self.cfg.name, url):
            self.published = True
            return
        body = attributes_payload(self.member_id, self.cfg.name, url)
        with contextlib.suppress(ProposalDropped):
            assert self.raft is not None
            self.raft.propose(msgpack.packb([self.member_id, 0, K_ATTRS, body]))

    # ------------------------------------------------------------------
    # apply
    # ------------------------------------------------------------------
    def _apply_entry(self, e: Entry) -> None:
        self.applied = e.index
        if e.type == EntryType.CONF_CHANGE:
            cc = ConfChange.decode(e.data)
            changed = self._apply_member_change(cc)
            origin, req = ctx_request(cc.context)
            if origin == self.member_id:
                self._pending.trigger(req, changed)
            return
        if not e.data:
            return  # a new leader's empty entry
        try:
            origin, req, kind, payload = msgpack.unpackb(e.data)
        except (ValueError, msgpack.ExtraData) as ex:
            log.error("entry %d is not a valid envelope: %s", e.index, ex)
            return
        result: Any = None
        try:
            if kind == K_APP:
                result = self.sm.apply(e.index, payload)  # a refusal comes back as the result
            elif kind == K_ATTRS:
                if self.membership.set_attributes(payload) == self.member_id:
                    self.published = True
            elif kind == K_PEER_URLS and self.membership.set_peer_urls(payload):
                self._sync_peers()
        except Exception as ex:
            # a bug: this member's state may now differ from the others'. It escapes to _run,
            # which ends the process (exit 70); the proposer is told "server stopped".
            ex.add_note(f"while applying entry {e.index}")
            raise
        if origin == self.member_id:
            self._pending.trigger(req, result)

    def _apply_member_change(self, cc: ConfChange) -> Member | None:
        m = self.membership.apply_conf_change(cc)
        if cc.type == ConfChangeType.REMOVE_NODE and cc.node_id == self.member_id:
            self.removed = True
            log.warning("this member was removed from the cluster; stopping")
            asyncio.get_running_loop().call_soon(self._stop_soon)
        self._sync_peers()
        return m

    def _stop_soon(self) -> None:
        task = asyncio.ensure_future(self.stop(transfer=False))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _sync_peers(self) -> None:
        if self.transport is None or self.raft is None:
            return
        self.transport.set_peers(self.membership.peer_urls(set(self.members) | self.raft.member_ids()))

    def _restore_snapshot(self, snap: Snapshot) -> None:
        if not snap.data:
            return
        members, app = unpack_envelope(snap.data)
        self.membership.restore(members)
        self.snapshotter.restored(snap.index)
        self.sm.restore(app)
        self.applied = snap.index
        me = self.membership.get(self.member_id)
        self.published = self.published or (me is not None and self.cfg.client_url() in me.client_urls)
        self._sync_peers()

    # ------------------------------------------------------------------
    # waiting for things
    # ------------------------------------------------------------------
    async def wait_applied(self, index: int, timeout: float) -> None:
        if self.applied >= index:
            return
        fut = self._applied_waits.register(index)
        timer = asyncio.get_running_loop().call_later(timeout, _fail_future, fut, Reason.TIMEOUT)
        try:
            await fut
        finally:
            timer.cancel()

    def _fail_all(self, why: Reason) -> None:
        self._pending.fail_all(lambda: EtcdError(why))
        self._read_rounds.close(why)

    # ------------------------------------------------------------------
    # client-facing operations
    # ------------------------------------------------------------------
    def _check_serving(self) -> None:
        if self._stopping or self.removed:
            raise EtcdError(Reason.STOPPED)
        if self.committed - self.applied > MAX_APPLY_LAG:
            raise EtcdError(Reason.TOO_MANY_REQUESTS)

    def has_leader(self) -> bool:
        return self.lead != NONE

    async def propose(self, payload: bytes, timeout: float | None = None) -> Any:
        """Replicate an application command; returns sm.apply's result once applied here."""
        self._check_serving()
        if self.lead == NONE:
            raise EtcdError(Reason.NO_LEADER)
        req = next(self._seq)
        data = msgpack.packb([self.member_id, req, K_APP, payload])
        return await self._submit(req, lambda: self._raft().propose(data), timeout)

    async def propose_peer_urls(self, mid: int, urls: list[str], timeout: float | None = None) -> None:
        self._check_serving()
        if self.lead == NONE:
            raise EtcdError(Reason.NO_LEADER)
        req = next(self._seq)
        data = msgpack.packb([self.member_id, req, K_PEER_URLS, peer_urls_payload(mid, urls)])
        await self._submit(req, lambda: self._raft().propose(data), timeout)

    async def propose_conf_change(self, cc: ConfChange, member: Member, timeout: float | None = None) -> Any:
        self._check_serving()
        if self.lead == NONE:
            raise EtcdError(Reason.NO_LEADER)
        req = next(self._seq)
        cc.context = conf_change_context(self.member_id, req, member)
        return await self._submit(req, lambda: self._raft().propose_conf_change(cc), timeout)

    async def _submit(self, req: int, action: Callable[[], None], timeout: float | None) -> Any:
        loop = asyncio.get_running_loop()
        fut = self._pending.register(req, loop)

        def run() -> None:
            try:
                action()
            except ProposalDropped as e:
                self._pending.fail(req, EtcdError(_DROPPED[e.reason]))

        self._post(run)
        # a timer instead of wait_for(shield(...)): no extra futures and callbacks per request
        timer = loop.call_later(timeout or self.cfg.request_timeout, self._pending.fail, req, EtcdError(Reason.TIMEOUT))
        try:
            return await fut
        except EtcdError:
            self.proposals_failed += 1
            raise
        finally:
            timer.cancel()
            if not fut.done() or fut.cancelled():
                self._pending.forget(req)  # the caller went away: a later apply finds nobody waiting

    async def read_barrier(self, timeout: float | None = None) -> int:
        """ReadIndex: returns once this node has applied everything committed before the call.

        Reads share rounds (node/server/readloop.py): one ReadIndex for all reads that arrived
        while the previous round was in flight."""
        self._check_serving()
        if self.lead == NONE:
            raise EtcdError(Reason.NO_LEADER)
        t = timeout or self.cfg.request_timeout
        deadline = time.monotonic() + t
        fut = self._read_rounds.join()
        timer = asyncio.get_running_loop().call_later(t, _fail_future, fut, Reason.TIMEOUT)
        try:
            index = await fut
        finally:
            timer.cancel()
        await self.wait_applied(index, max(0.001, deadline - time.monotonic()))
        return index

    def _send_read_index(self, ctx: bytes) -> None:
        def run() -> None:
            try:
                self._raft().read_index(ctx)
            except ProposalDropped:
                self._read_rounds.fail(ctx, Reason.NO_LEADER)

        self._post(run)

    async def transfer_leadership(self, target: int, timeout: float | None = None) -> None:
        if self.lead == NONE:
            raise EtcdError(Reason.NO_LEADER)
        self._post(lambda: self._raft().transfer_leader(target))
        deadline = time.monotonic() + (timeout or self.cfg.request_timeout)
        while time.monotonic() < deadline:
            if self.lead == target:
                return
            await asyncio.sleep(self.cfg.heartbeat_ms / 1000 / 2)
        raise EtcdError(Reason.TIMEOUT)

    def campaign(self) -> None:
        self._post(lambda: self._raft().campaign())

    def _raft(self) -> Raft:
        assert self.raft is not None
        return self.raft

    # ------------------------------------------------------------------
    # transport callbacks
    # ------------------------------------------------------------------
    def _report_unreachable(self, pid: int) -> None:
        r = self._raft()
        if r.role == Role.LEADER and r.match_index(pid) is not None:
            r.report_unreachable(pid)

    def _report_snapshot(self, pid: int, ok: bool) -> None:
        r = self._raft()
        if r.role == Role.LEADER and r.match_index(pid) is not None:
            r.report_snapshot(pid, ok)

    def _peer_lost(self, pid: int) -> None:
        """The leader's stream closed: its process most likely died. Suspect it now."""
        if not self.cfg.fast_failover or self._stopping:
            return

        def suspect() -> None:
            r = self._raft()
            if r.role == Role.FOLLOWER and r.lead == pid:
                r.forget_leader()
                delay = random.uniform(0.1, 0.35) * self.cfg.election_ms / 1000
                asyncio.get_running_loop().call_later(delay, lambda: self._post(self._campaign_if_leaderless))

        self._post(suspect)

    def _campaign_if_leaderless(self) -> None:
        r = self._raft()
        if r.lead == NONE and r.role == Role.FOLLOWER and r.promotable():
            log.info("%s: leader connection lost; starting a pre-vote early", self.cfg.name)
            r.campaign()

    # ------------------------------------------------------------------
    # introspection (the Admin service renders the status JSON from these)
    # ------------------------------------------------------------------
    def status(self) -> Status:
        return self._raft().status()

    def connected(self, pid: int) -> bool:
        """Whether the transport holds a live stream to `pid`."""
        return self.transport.connected(pid) if self.transport is not None else False

    def uptime_s(self) -> float:
        return time.monotonic() - self.started_at
