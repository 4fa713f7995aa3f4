"""Peer transport: one outbound TCP stream per peer, batched length-prefixed msgpack frames.

* A hello frame carries the cluster id and both member ids; a node of another
  cluster (or a message for another member) is refused and the refusal logged.
* Outbound queues are bounded; Raft tolerates loss, so a full queue drops and
  the peer is reported unreachable rather than blocking the Ready loop.
* Snapshots travel in chunks so one large state never becomes one huge frame.
* Fault rules are enforced on send and on receive.
* When an inbound stream from a peer closes (its process died), on_peer_lost
  fires: the node uses it to suspect a dead leader without waiting out the
  election timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from node.faults import FaultTable
from node.raft import Message, MsgType

from .codec import (
    F_DISCOVER,
    F_HELLO,
    F_MSGS,
    F_REFUSE,
    F_SNAP_CHUNK,
    FRAME,
    MAX_FRAME,
    CodecError,
    msg_from_wire,
    msg_to_wire,
    pack,
    unpack,
)

log = logging.getLogger("quorumlab.transport")

SNAP_CHUNK = 1 << 20
QUEUE_LIMIT = 10_000
BATCH_LIMIT = 512


def parse_hostport(addr: str) -> tuple[str, int]:
    a = addr.split("://", 1)[-1].rstrip("/")
    host, _, port = a.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {addr!r}")
    return host.strip("[]"), int(port)


async def discover(peer_url: str, my_peer_url: str, timeout: float = 2.0) -> tuple[int, list[int]]:
    """Ask a member over its peer port which cluster it belongs to and who its members are."""
    host, port = parse_hostport(peer_url)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(pack([F_DISCOVER, my_peer_url]))
        await writer.drain()
        frame = await asyncio.wait_for(read_frame(reader), timeout)
        if not (isinstance(frame, list) and len(frame) == 3 and frame[0] == F_DISCOVER):
            raise CodecError("unexpected discovery reply")
        return int(frame[1]), [int(x) for x in frame[2]]
    finally:
        writer.close()


async def read_frame(reader: asyncio.StreamReader) -> Any:
    head = await reader.readexactly(FRAME.size)
    (n,) = FRAME.unpack(head)
    if n > MAX_FRAME:
        raise CodecError(f"frame of {n} bytes exceeds the {MAX_FRAME} limit")
    return unpack(await reader.readexactly(n))


class _Peer:
    def __init__(self, transport: Transport, peer_id: int, addr: str) -> None:
        self.t = transport
        self.id = peer_id
        self.addr = addr
        self.queue: asyncio.Queue[Message] = asyncio.Queue(QUEUE_LIMIT)
        self.task: asyncio.Task[None] | None = None
        self.connected = False
        self.failures = 0

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"peer-{self.id}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            writer: asyncio.StreamWriter | None = None
            try:
                host, port = parse_hostport(self.addr)
                reader, w = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
                writer = w
                w.write(pack([F_HELLO, self.t.cluster_id, self.t.member_id, self.id]))
                await w.drain()
                self.connected = True
                self.failures = 0
                backoff = 0.05
                watch = asyncio.get_running_loop().create_task(self._watch_refusal(reader))
                try:
                    await self._pump(w, watch)
                finally:
                    watch.cancel()
            except asyncio.CancelledError:
                if writer is not None:
                    writer.close()
                raise
            except (TimeoutError, OSError, ConnectionError, CodecError, ValueError) as e:
                self.failures += 1
                if self.failures in (1, 10) or self.failures % 100 == 0:
                    log.info("peer %x at %s unreachable: %s", self.id, self.addr, e)
            finally:
                self.connected = False
                if writer is not None:
                    writer.close()
            # drop what queued up while we could not connect; raft will resend
            while not self.queue.empty():
                m = self.queue.get_nowait()
                self.t.on_unreachable(self.id, m)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def _watch_refusal(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(Exception):
            frame = await read_frame(reader)
            if frame and frame[0] == F_REFUSE:
                log.error("peer %x at %s refused us: %s", self.id, self.addr, frame[1])

    async def _pump(self, writer: asyncio.StreamWriter, watch: asyncio.Task[None]) -> None:
        while True:
            get = asyncio.ensure_future(self.queue.get())
            done, _ = await asyncio.wait({get, watch}, return_when=asyncio.FIRST_COMPLETED)
            if watch in done:
                get.cancel()
                raise ConnectionError("peer closed the connection")
            batch = [get.result()]
            while not self.queue.empty() and len(batch) < BATCH_LIMIT:
                batch.append(self.queue.get_nowait())
            plain: list[Any] = []
            for m in batch:
                if m.type == MsgType.SNAP and m.snapshot is not None:
                    if plain:
                        writer.write(pack([F_MSGS, plain]))
                        plain = []
                    await self._send_snapshot(writer, m)
                else:
                    plain.append(msg_to_wire(m))
            if plain:
                writer.write(pack([F_MSGS, plain]))
            await writer.drain()

    async def _send_snapshot(self, writer: asyncio.StreamWriter, m: Message) -> None:
        assert m.snapshot is not None
        data = m.snapshot.data
        total = len(data)
        pos = 0
        while True:
            chunk = data[pos : pos + SNAP_CHUNK]
            pos += len(chunk)
            last = pos >= total
            writer.write(pack([F_SNAP_CHUNK, total, chunk, msg_to_wire(m, with_snapshot_data=False) if last else None]))
            await writer.drain()
            if last:
                break
        self.t.on_snapshot_sent(self.id, True)


class Transport:
    def __init__(
        self,
        member_id: int,
        cluster_id: int,
        names: Callable[[int], str],
        deliver: Callable[[Message], None],
        faults: FaultTable | None = None,
        on_peer_lost: Callable[[int], None] | None = None,
        on_unreachable: Callable[[int, Message], None] | None = None,
        on_snapshot_sent: Callable[[int, bool], None] | None = None,
        member_ids: Callable[[], list[int]] | None = None,
    ) -> None:
        self.member_id = member_id
        self.cluster_id = cluster_id
        self.names = names
        self.deliver = deliver
        self.faults = faults
        self._on_peer_lost = on_peer_lost
        self._on_unreachable = on_unreachable
        self._on_snapshot_sent = on_snapshot_sent
        self._member_ids = member_ids or (lambda: [])
        self.peers: dict[int, _Peer] = {}
        self.server: asyncio.Server | None = None
        self.inbound: dict[int, int] = {}  # peer id -> open inbound streams
        self._conns: set[asyncio.StreamWriter] = set()

    async def listen(self, addr: str) -> None:
        host, port = parse_hostport(addr)
        self.server = await asyncio.start_server(self._handle, host, port, reuse_address=True)

    def set_peers(self, peers: dict[int, str]) -> None:
        """Reconcile outbound streams with the current membership (id -> peer address)."""
        for pid in list(self.peers):
            if pid not in peers or self.peers[pid].addr != peers[pid]:
                p = self.peers.pop(pid)
                asyncio.get_running_loop().create_task(p.stop())
        for pid, addr in peers.items():
            if pid != self.member_id and pid not in self.peers:
                p = _Peer(self, pid, addr)
                self.peers[pid] = p
                p.start()

    def send(self, msgs: list[Message]) -> None:
        loop = asyncio.get_running_loop()
        me = self.names(self.member_id)
        for m in msgs:
            p = self.peers.get(m.to)
            if p is None:
                continue
            if self.faults is not None:
                v = self.faults.verdict(me, self.names(m.to))
                if v is None:
                    self.on_unreachable(m.to, m)
                    continue
                if v > 0:
                    loop.call_later(v, self._enqueue, p, m)
                    continue
            self._enqueue(p, m)

    def _enqueue(self, p: _Peer, m: Message) -> None:
        try:
            p.queue.put_nowait(m)
        except asyncio.QueueFull:
            self.on_unreachable(p.id, m)

    def on_unreachable(self, peer: int, m: Message) -> None:
        if m.type == MsgType.SNAP:
            self.on_snapshot_sent(peer, False)
        if self._on_unreachable is not None:
            self._on_unreachable(peer, m)

    def on_snapshot_sent(self, peer: int, ok: bool) -> None:
        if self._on_snapshot_sent is not None:
            self._on_snapshot_sent(peer, ok)

    def connected(self, peer: int) -> bool:
        p = self.peers.get(peer)
        return p is not None and p.connected

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = 0
        self._conns.add(writer)
        try:
            hello = await asyncio.wait_for(read_frame(reader), 5.0)
            if isinstance(hello, list) and len(hello) == 2 and hello[0] == F_DISCOVER:
                writer.write(pack([F_DISCOVER, self.cluster_id, self._member_ids()]))
                await writer.drain()
                return
            if not (isinstance(hello, list) and len(hello) == 4 and hello[0] == F_HELLO):
                raise CodecError("expected a hello frame")
            _, cid, frm, to = hello
            if cid != self.cluster_id or to != self.member_id:
                why = (
                    f"cluster {cid:x} member {to:x} is not this node "
                    f"(cluster {self.cluster_id:x} member {self.member_id:x})"
                )
                log.warning("refusing peer %x from %s: %s", frm, writer.get_extra_info("peername"), why)
                writer.write(pack([F_REFUSE, why]))
                await writer.drain()
                return
            peer = int(frm)
            self.inbound[peer] = self.inbound.get(peer, 0) + 1
            snap_buf = bytearray()
            me = self.names(self.member_id)
            while True:
                frame = await read_frame(reader)
                kind = frame[0]
                if kind == F_MSGS:
                    msgs = [msg_from_wire(v) for v in frame[1]]
                elif kind == F_SNAP_CHUNK:
                    _, total, chunk, meta = frame
                    snap_buf += chunk
                    if len(snap_buf) > total:
                        raise CodecError("snapshot larger than announced")
                    if meta is None:
                        continue
                    m = msg_from_wire(meta)
                    if m.snapshot is None or len(snap_buf) != total:
                        raise CodecError("incomplete snapshot")
                    m.snapshot.data = bytes(snap_buf)
                    snap_buf = bytearray()
                    msgs = [m]
                else:
                    raise CodecError(f"unexpected frame kind {kind}")
                if self.faults is not None:
                    src = self.names(peer)
                    msgs = [m for m in msgs if self.faults.verdict(src, me) is not None]
                for m in msgs:
                    if m.to == self.member_id:
                        self.deliver(m)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        except CodecError as e:
            log.warning("dropping connection from peer %x: %s", peer, e)
        finally:
            self._conns.discard(writer)
            writer.close()
            if peer:
                self.inbound[peer] -= 1
                if self.inbound[peer] == 0 and self._on_peer_lost is not None:
                    self._on_peer_lost(peer)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in list(self._conns):
            w.close()
        for p in list(self.peers.values()):
            await p.stop()
        self.peers.clear()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
