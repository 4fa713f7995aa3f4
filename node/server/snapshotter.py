"""Snapshot policy: when to snapshot, and building one without stalling the Raft loop.

Once `snapshot_count` entries were applied since the last snapshot, one background task
(never two) records the applied index and the membership between Ready batches, lets the
state machine pack its state off the loop, hands the result to the Raft loop to compact
the in-memory log (cheap), and writes the file on a worker thread. A snapshot from the
leader that lands meanwhile supersedes ours: the state machine raises while packing, or
Raft's log already starts past our index, and ours is dropped. Failures follow etcd: a
full disk raises NOSPACE and serving goes on (the WAL still holds every entry); any other
failure to save a snapshot ends the process.

The snapshot body is the msgpack map {"members": [member wire...], "app": <state bytes>}.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgpack

from node.raft import Raft, Snapshot
from node.storage import DiskFull

from .membership import Membership

if TYPE_CHECKING:
    from .interfaces import NodeConfig, NodeStorage, StateMachine

log = logging.getLogger("quorumlab.node")


class Snapshotter:
    def __init__(
        self,
        cfg: NodeConfig,
        sm: StateMachine,
        membership: Membership,
        *,
        post: Callable[[Callable[[], None]], None],
        applied: Callable[[], int],
        hit_disk_full: Callable[[NodeStorage, str, DiskFull, str], Awaitable[None]],
        fatal: Callable[[str, BaseException], None],
    ) -> None:
        self.cfg = cfg
        self.sm = sm
        self.membership = membership
        self._post = post
        self._applied = applied
        self._hit_disk_full = hit_disk_full
        self._fatal = fatal
        self.last_index = 0  # the newest snapshot, ours or the leader's
        self.task: asyncio.Task[None] | None = None
        self.file_lock = threading.Lock()  # one writer in snap/ at a time (tmp files)
        self._restores = 0  # snapshots from the leader installed so far

    def restored(self, index: int) -> None:
        """A snapshot from the leader replaced the state (called in the Raft loop)."""
        self._restores += 1
        self.last_index = max(self.last_index, index)

    def maybe_start(self, r: Raft, storage: NodeStorage) -> None:
        """Start the (single) background snapshot once snapshot_count entries were applied since the last."""
        if self.task is not None:
            return
        if self._applied() - self.last_index < self.cfg.snapshot_count:
            return
        self.task = asyncio.get_running_loop().create_task(self._snapshot(r, storage), name="raft-snapshot")

    async def _snapshot(self, r: Raft, storage: NodeStorage) -> None:
        restores = self._restores
        try:
            await self._build(r, storage)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - etcd panics when a snapshot cannot be saved
            if self._restores != restores:
                # the leader's snapshot replaced the state we were packing (the state machine
                # says so by raising): that newer snapshot is already on disk
                log.info("%s: background snapshot abandoned: %s", self.cfg.name, e)
                return
            self._fatal("making a snapshot failed", e)
        finally:
            self.task = None

    async def _build(self, r: Raft, storage: NodeStorage) -> None:
        t0 = time.monotonic()
        # This first step runs between Ready batches, where applied, the membership and
        # raft's ConfState always agree (apply and advance() happen with no await between).
        index = r.applied_index
        if index != self._applied():
            return  # cannot happen (see above); try again after the next apply
        conf = r.conf_state()
        members = self.membership.to_wire()
        app = await self.sm.snapshot_async()  # the state as of this call, built off the loop
        data = await asyncio.to_thread(pack_envelope, members, app)
        loop = asyncio.get_running_loop()
        installed: asyncio.Future[tuple[Snapshot, int] | None] = loop.create_future()

        def install() -> None:
            # in the Raft loop: compacting the in-memory log is cheap; the file is written below
            if installed.done():
                return  # the node is stopping and the task was cancelled
            r.compact(index, data, keep_entries=self.cfg.snapshot_catchup_entries, conf=conf)
            snap = r.snapshot_meta
            if snap.index != index:
                installed.set_result(None)  # superseded by a newer snapshot from the leader
                return
            self.last_index = index
            installed.set_result((snap, r.first_index()))

        self._post(install)
        res = await installed
        if res is None:
            return
        snap, release_before = res
        try:
            await asyncio.to_thread(self._save_locked, storage, snap, release_before)
        except DiskFull as e:
            what = f"saving the snapshot at index {index}"
            await self._hit_disk_full(storage, what, e, "and serving on without it (the WAL holds every entry)")
            return
        log.info(
            "snapshot at index %d (%d bytes, %.0f ms in the background); log compacted to %d",
            index,
            len(data),
            (time.monotonic() - t0) * 1000,
            release_before - 1,
        )

    def _save_locked(self, storage: NodeStorage, snap: Snapshot, release_before: int) -> None:
        with self.file_lock:
            storage.save_snapshot(snap, release_before)


def pack_envelope(members: list[Any], app: bytes) -> bytes:
    """The snapshot body, the msgpack map {"members": ..., "app": <bin>} (run on a worker thread).

    Built from parts and joined once: msgpack.packb would copy the app bytes twice while holding
    the GIL (seconds for a large state, with the event loop and its heartbeats stuck behind it),
    whereas bytes.join copies large buffers with the GIL released."""
    n = len(app)
    if n < 1 << 8:
        head = b"\xc4" + n.to_bytes(1, "big")
    elif n < 1 << 16:
        head = b"\xc5" + n.to_bytes(2, "big")
    elif n < 1 << 32:
        head = b"\xc6" + n.to_bytes(4, "big")
    else:
        raise ValueError(f"snapshot of {n} bytes is larger than msgpack's 4 GiB bin limit")
    parts = [b"\x82", msgpack.packb("members"), msgpack.packb(members), msgpack.packb("app"), head, app]
    return b"".join(parts)


def unpack_envelope(data: bytes) -> tuple[list[Any], bytes]:
    """(members wire, application state) of a snapshot body."""
    blob = msgpack.unpackb(data)
    return blob["members"], blob["app"]
