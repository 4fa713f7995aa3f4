"""Peer transport: one outbound TCP stream per peer, batched length-prefixed msgpack frames.

* With a cluster secret (--peer-auth-file), both sides of every connection first prove they
  know it (challenge-response, node/secret.py) before any other frame, DISCOVER included; a
  stranger gets the connection closed and one (rate-limited) log line, and learns nothing.
* With peer TLS (node/server/peer_tls.py) the listener of an https:// peer URL runs the TLS
  handshake first (a failure is one rate-limited log line), and https:// peers are dialed over TLS.
* A hello frame carries the cluster id and both member ids; a node of another
  cluster (or a message for another member) is refused and the refusal logged. With a secret the
  proofs cover the hello, and every message on the connection must come from the member it
  named: a member cannot speak as another one on its connection (the sender check). Over TLS, a
  dialer whose certificate lists peer URLs (URI SANs) may only name the member with one of them.
* Bounded: a frame over MAX_FRAME (MAX_HELLO_FRAME before the hello) closes the connection;
  at most MAX_UNPROVEN connections may be on their way through the hello (a new one evicts the
  oldest, so idle strangers cannot lock members out; the first frame is due within
  FIRST_FRAME_TIMEOUT); one snapshot per peer arrives at a time (a newer transfer closes the
  connection of an older one: it may be half-open), up to a size cap, spooled to an unlinked
  file in the data dir only while that leaves the disk reserve free; a malformed frame closes
  its connection with one log line, anything else that goes wrong there with a traceback.
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
import os
import socket
import ssl
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import IO, Any

import msgpack

from node.faults import FaultTable
from node.raft import Message, MsgType
from node.secret import NONCE_BYTES, peer_mac, same

from .codec import (
    F_AUTH,
    F_DISCOVER,
    F_HELLO,
    F_MSGS,
    F_REFUSE,
    F_SNAP_CHUNK,
    FRAME,
    MAX_FRAME,
    MAX_HELLO_FRAME,
    CodecError,
    msg_from_wire,
    msg_to_wire,
    pack,
    unpack,
)
from .members import normalize_url
from .peer_tls import PeerTLS, describe, is_https

log = logging.getLogger("quorumlab.transport")

# A follower passes these on to the leader with the original sender kept (so a ReadIndex answer
# reaches the member that asked), and a member that stopped being leader passes them on again: they
# may name another member than the connection's. Each is only a request the leader may refuse.
FORWARDED = frozenset({MsgType.PROP, MsgType.READ_INDEX, MsgType.TRANSFER_LEADER})

SNAP_CHUNK = 1 << 20
QUEUE_LIMIT = 10_000
BATCH_LIMIT = 512
BATCH_BYTES = 4 << 20  # a batch frame is cut here, far below MAX_FRAME (one entry is at most ~1.5 MiB)
HELLO_TIMEOUT = 5.0  # authentication and hello, from accept
FIRST_FRAME_TIMEOUT = 1.0  # the first frame (authentication or hello), from accept
MAX_UNPROVEN = 64  # connections still in their hello; one more evicts the oldest
# free space an incoming snapshot must leave in its spool dir: the WAL's disk reserve and margin
# (node/server/interfaces.py NodeConfig.reserve_bytes + disk_free_margin)
SPOOL_MARGIN = (8 << 20) + (1 << 20)
# twice etcd's default quota (2 GiB): a member's snapshot never comes near it, a flood stops there
SNAPSHOT_LIMIT = 4 << 30
MAC_BYTES = 32
TLS_DIAL_TIMEOUT = 3.0  # connect and TLS handshake to an https:// peer


class AuthError(CodecError):
    """The other side did not prove that it knows the cluster secret."""


class TLSRefused(CodecError):
    """The TLS handshake on the peer port failed (a plaintext dialer, an untrusted certificate, ...)."""


class WrongSender(CodecError):
    """A message whose sender is not the member its connection authenticated as."""


class TransferRefused(CodecError):
    """An incoming snapshot this node cannot take now (no room to spool it); the leader retries."""


def _auth_value(frame: Any, size: int) -> bytes:
    if not (isinstance(frame, list) and len(frame) == 2 and frame[0] == F_AUTH and isinstance(frame[1], bytes)):
        raise AuthError("no authentication (a peer without the cluster secret, or with --peer-auth-file missing)")
    if len(frame[1]) != size:
        raise AuthError("malformed authentication frame")
    return frame[1]


async def authenticate_to(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: bytes, first: list[Any]
) -> None:
    """Who connected: prove we know the secret and send `first` (the hello or a DISCOVER), which the
    proofs cover; then make the server prove it too."""
    nc = os.urandom(NONCE_BYTES)
    body = pack(first)[FRAME.size :]
    try:
        writer.write(pack([F_AUTH, nc]))
        await writer.drain()
        ns = _auth_value(await read_frame(reader, MAX_HELLO_FRAME), NONCE_BYTES)
        writer.write(pack([F_AUTH, peer_mac(secret, b"client", nc, ns, body)]) + FRAME.pack(len(body)) + body)
        await writer.drain()
        proof = _auth_value(await read_frame(reader, MAX_HELLO_FRAME), MAC_BYTES)
    except asyncio.IncompleteReadError as e:
        raise AuthError(
            "the peer closed the connection during authentication (a different cluster secret, or none)"
        ) from e
    if not same(proof, peer_mac(secret, b"server", nc, ns, body)):
        raise AuthError("the peer could not prove it knows the cluster secret")


async def _authenticate_from(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: bytes) -> Any:
    """Who accepted: the client proves itself first, so a stranger gets nothing but a nonce. Returns
    the client's first frame, which its proof covers."""
    nc = _auth_value(await asyncio.wait_for(read_frame(reader, MAX_HELLO_FRAME), FIRST_FRAME_TIMEOUT), NONCE_BYTES)
    ns = os.urandom(NONCE_BYTES)
    writer.write(pack([F_AUTH, ns]))
    await writer.drain()
    proof = _auth_value(await read_frame(reader, MAX_HELLO_FRAME), MAC_BYTES)
    body = await _read_body(reader, MAX_HELLO_FRAME)
    if not same(proof, peer_mac(secret, b"client", nc, ns, body)):
        raise AuthError("wrong proof of the cluster secret")
    writer.write(pack([F_AUTH, peer_mac(secret, b"server", nc, ns, body)]))
    await writer.drain()
    return unpack(body)


async def dial(url: str, timeout: float, tls: PeerTLS | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to a peer URL: over TLS (verifying the peer against the peer CA) when it is https://."""
    host, port = parse_hostport(url)
    if not is_https(url):
        return await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    # an https peer with no peer TLS flags: the system's CAs, as etcd's dialer without --peer-trusted-ca-file
    ctx = tls.client if tls is not None else ssl.create_default_context()
    try:
        return await asyncio.wait_for(
            asyncio.open_connection(
                host, port, ssl=ctx, server_hostname=host, ssl_handshake_timeout=max(timeout, TLS_DIAL_TIMEOUT)
            ),
            max(timeout, TLS_DIAL_TIMEOUT),
        )
    except ssl.SSLError as e:
        raise TLSRefused(describe(e)) from e


def parse_hostport(addr: str) -> tuple[str, int]:
    a = addr.split("://", 1)[-1].rstrip("/")
    host, _, port = a.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {addr!r}")
    return host.strip("[]"), int(port)


async def discover(
    peer_url: str, my_peer_url: str, timeout: float = 2.0, secret: bytes | None = None, tls: PeerTLS | None = None
) -> tuple[int, list[int]]:
    """Ask a member over its peer port which cluster it belongs to and who its members are."""
    reader, writer = await dial(peer_url, timeout, tls)
    try:
        if secret is not None:
            await asyncio.wait_for(authenticate_to(reader, writer, secret, [F_DISCOVER, my_peer_url]), timeout)
        else:
            writer.write(pack([F_DISCOVER, my_peer_url]))
            await writer.drain()
        frame = await asyncio.wait_for(read_frame(reader), timeout)
        if not (isinstance(frame, list) and len(frame) == 3 and frame[0] == F_DISCOVER):
            raise CodecError("unexpected discovery reply")
        return int(frame[1]), [int(x) for x in frame[2]]
    finally:
        writer.close()


async def _read_body(reader: asyncio.StreamReader, limit: int) -> bytes:
    head = await reader.readexactly(FRAME.size)
    (n,) = FRAME.unpack(head)
    if n > limit:
        raise CodecError(f"frame of {n} bytes exceeds the {limit}-byte limit")
    return await reader.readexactly(n)


async def read_frame(reader: asyncio.StreamReader, limit: int = MAX_FRAME) -> Any:
    return unpack(await _read_body(reader, limit))


class _SnapshotRx:
    """One snapshot arriving from one peer, spooled to an unlinked file so memory stays flat."""

    def __init__(self, total: Any, limit: int, spool_dir: Path | None, margin: int = SPOOL_MARGIN) -> None:
        if not isinstance(total, int) or not 0 <= total <= limit:
            raise CodecError(f"a snapshot of {total!r} bytes (the limit is {limit})")
        self.total = total
        self.received = 0
        # without a data dir (unit tests) the bytes are held, still capped by `limit`
        self.file: IO[bytes] | None = None
        if spool_dir is not None:
            try:
                st = os.statvfs(spool_dir)
                free = st.f_bavail * st.f_frsize
                if free - total < margin:
                    raise TransferRefused(
                        f"no room to spool a snapshot of {total} bytes in {spool_dir}: {free} bytes free, "
                        f"{margin} kept for the log (the leader retries)"
                    )
                self.file = tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115 - close()
            except OSError as e:
                raise TransferRefused(f"cannot spool a snapshot in {spool_dir}: {e}") from e
        self.buf = bytearray()

    async def add(self, total: Any, chunk: Any, meta: Any) -> Message | None:
        """Take one chunk; the complete message once the last one arrived."""
        if total != self.total or not isinstance(chunk, bytes):
            raise CodecError("a snapshot chunk that does not belong to the transfer in progress")
        self.received += len(chunk)
        if self.received > self.total:
            raise CodecError("snapshot larger than announced")
        if chunk:
            if self.file is not None:
                try:
                    await asyncio.to_thread(self.file.write, chunk)
                except OSError as e:
                    raise TransferRefused(f"cannot spool the snapshot: {e}") from e
            else:
                self.buf += chunk
        if meta is None:
            return None
        m = msg_from_wire(meta)
        if m.snapshot is None or self.received != self.total:
            raise CodecError("incomplete snapshot")
        m.snapshot.data = await asyncio.to_thread(self._read) if self.file is not None else bytes(self.buf)
        return m

    def _read(self) -> bytes:
        assert self.file is not None
        self.file.seek(0)
        return self.file.read()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.buf = bytearray()


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
                reader, w = await dial(self.addr, 1.0, self.t.tls)
                writer = w
                hello = [F_HELLO, self.t.cluster_id, self.t.member_id, self.id]
                if self.t.secret is not None:
                    await asyncio.wait_for(authenticate_to(reader, w, self.t.secret, hello), HELLO_TIMEOUT)
                else:
                    w.write(pack(hello))
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
            if watch.done():
                raise ConnectionError("peer closed the connection")
            if self.queue.empty():
                # a Task and asyncio.wait per batch showed in the put-load profile: only when idle
                get = asyncio.ensure_future(self.queue.get())
                done, _ = await asyncio.wait({get, watch}, return_when=asyncio.FIRST_COMPLETED)
                if watch in done:
                    get.cancel()
                    raise ConnectionError("peer closed the connection")
                batch = [get.result()]
            else:
                batch = [self.queue.get_nowait()]
            while not self.queue.empty() and len(batch) < BATCH_LIMIT:
                batch.append(self.queue.get_nowait())
            plain: list[Any] = []
            size = 0
            for m in batch:
                if m.type == MsgType.SNAP and m.snapshot is not None:
                    if plain:
                        writer.write(pack([F_MSGS, plain]))
                        plain, size = [], 0
                    await self._send_snapshot(writer, m)
                else:
                    plain.append(msg_to_wire(m))
                    size += 64 + len(m.context) + sum(len(e.data) + 16 for e in m.entries)
                    if size >= BATCH_BYTES:
                        writer.write(pack([F_MSGS, plain]))
                        plain, size = [], 0
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
        secret: bytes | None = None,
        spool_dir: Path | None = None,
        snapshot_limit: int = SNAPSHOT_LIMIT,
        spool_margin: int = SPOOL_MARGIN,
        tls: PeerTLS | None = None,
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
        # Raft messages queued for / delivered from each peer since start, after fault rules (the
        # dashboard's message rates: a partitioned link shows as zero)
        self.msgs_sent: dict[int, int] = {}
        self.msgs_recv: dict[int, int] = {}
        self._conns: set[asyncio.StreamWriter] = set()
        self.secret = secret  # None: no authentication, as before --peer-auth-file existed
        self.tls = tls  # NodeConfig.peer_tls; None: plaintext peer port, http:// peers only
        self.spool_dir = spool_dir
        self.snapshot_limit = snapshot_limit
        # connections still in their hello, oldest first (a dict keeps insertion order)
        self._unproven: dict[asyncio.StreamWriter, None] = {}
        # peer -> the connection its snapshot is arriving on (one transfer per peer)
        self._snapshots_from: dict[int, asyncio.StreamWriter] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # fire-and-forget tasks, kept until done
        self.spool_margin = spool_margin
        self._refusal_logged = 0.0
        # an https listener: its socket, accept loop and the TLS handshakes in progress (oldest first)
        self._tls_sock: socket.socket | None = None
        self._tls_accept: asyncio.Task[None] | None = None
        self._handshakes: dict[asyncio.Task[None], None] = {}
        self._refusals_quiet = 0

    async def listen(self, addr: str) -> None:
        host, port = parse_hostport(addr)
        if self.tls is None or self.tls.server is None:
            self.server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
            return
        # TLS: our own accept loop, so a failed handshake surfaces here with its reason (a server
        # made with ssl= drops it silently) and the first bytes reach the TLS layer on any loop
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setblocking(False)
        self._tls_sock = sock
        self._tls_accept = asyncio.get_running_loop().create_task(self._accept_tls(sock, self.tls.server))

    async def _accept_tls(self, sock: socket.socket, ctx: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(sock)
            except OSError as e:  # out of file descriptors, say: keep serving the others
                log.warning("peer port: accept failed: %s", e)
                await asyncio.sleep(0.1)
                continue
            if len(self._handshakes) >= MAX_UNPROVEN:
                oldest = next(iter(self._handshakes))
                self._log_refusal(addr, f"{MAX_UNPROVEN} TLS handshakes in progress; closing the oldest")
                oldest.cancel()
            task = loop.create_task(self._tls_handshake(conn, addr, ctx))
            self._handshakes[task] = None
            self._tasks.add(task)  # the connection's whole life runs in it: keep it referenced
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(lambda t: self._handshakes.pop(t, None))

    async def _tls_handshake(self, conn: socket.socket, addr: Any, ctx: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop)
        try:
            # uvloop returns its own SSL protocol here: the stream's is the one we made
            protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol,
                conn,
                ssl=ctx,
                ssl_handshake_timeout=HELLO_TIMEOUT,
            )
        except asyncio.CancelledError:  # evicted (logged then) or closing
            conn.close()
            return
        except (ssl.SSLError, OSError, TimeoutError) as e:
            conn.close()
            self._log_refusal(addr, describe(e))
            return
        self._handshakes.pop(asyncio.current_task(), None)  # type: ignore[arg-type]  # proven: out of the eviction pool
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        await self._handle(reader, writer)

    def set_peers(self, peers: dict[int, str]) -> None:
        """Reconcile outbound streams with the current membership (id -> peer address)."""
        for pid in list(self.peers):
            if pid not in peers or self.peers[pid].addr != peers[pid]:
                p = self.peers.pop(pid)
                self._spawn(p.stop())
        for pid, addr in peers.items():
            if pid != self.member_id and pid not in self.peers:
                p = _Peer(self, pid, addr)
                self.peers[pid] = p
                p.start()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """A task nobody awaits, referenced until it ends (the loop itself keeps only weak ones)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
            return
        self.msgs_sent[p.id] = self.msgs_sent.get(p.id, 0) + 1

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

    def _log_refusal(self, addr: Any, why: str) -> None:
        """One line per refused stranger, at most one a second (a flood must not flood the log)."""
        now = time.monotonic()
        if now - self._refusal_logged < 1.0:
            self._refusals_quiet += 1
            return
        more = f" ({self._refusals_quiet} more refused since the last line)" if self._refusals_quiet else ""
        log.warning("refusing peer connection from %s: %s%s", addr, why, more)
        self._refusal_logged, self._refusals_quiet = now, 0

    async def _hello(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Any:
        """Authenticate (with a secret), then the first frame: a hello or a DISCOVER (TLS is done by then)."""
        if self.secret is not None:
            return await _authenticate_from(reader, writer, self.secret)
        return await asyncio.wait_for(read_frame(reader, MAX_HELLO_FRAME), FIRST_FRAME_TIMEOUT)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = 0
        addr = writer.get_extra_info("peername")
        if len(self._unproven) >= MAX_UNPROVEN:
            # evict the oldest: a member proves itself in milliseconds, an idle stranger never does
            oldest = next(iter(self._unproven))
            del self._unproven[oldest]
            self._log_refusal(
                oldest.get_extra_info("peername"),
                f"{MAX_UNPROVEN} connections are on their way through the hello; closing the oldest",
            )
            oldest.close()
        self._conns.add(writer)
        snap: _SnapshotRx | None = None
        try:
            self._unproven[writer] = None
            try:
                hello = await asyncio.wait_for(self._hello(reader, writer), HELLO_TIMEOUT)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, CodecError) as e:
                self._log_refusal(addr, str(e) or type(e).__name__)
                return
            finally:
                self._unproven.pop(writer, None)
            if isinstance(hello, list) and len(hello) == 2 and hello[0] == F_DISCOVER:
                writer.write(pack([F_DISCOVER, self.cluster_id, self._member_ids()]))
                await writer.drain()
                return
            if isinstance(hello, list) and hello and hello[0] == F_AUTH:
                self._log_refusal(addr, "the peer authenticates, but this node has no --peer-auth-file")
                return
            if not (
                isinstance(hello, list)
                and len(hello) == 4
                and hello[0] == F_HELLO
                and all(isinstance(x, int) for x in hello[1:])
            ):
                self._log_refusal(addr, "expected a hello frame")
                return
            _, cid, frm, to = hello
            if cid != self.cluster_id or to != self.member_id:
                # the refusal only echoes what the peer sent: it names none of this node's ids
                log.warning(
                    "refusing peer %x from %s: it wants member %x of cluster %x (this is member %x of cluster %x)",
                    frm,
                    addr,
                    to,
                    cid,
                    self.member_id,
                    self.cluster_id,
                )
                writer.write(pack([F_REFUSE, f"this node is not member {to:x} of cluster {cid:x}"]))
                await writer.drain()
                return
            wrong = self._not_certified_for(writer, frm)
            if wrong is not None:
                self._log_refusal(addr, wrong)
                return
            peer = int(frm)
            self.inbound[peer] = self.inbound.get(peer, 0) + 1
            me = self.names(self.member_id)
            while True:
                frame = await read_frame(reader)
                if not (isinstance(frame, list) and frame):
                    raise CodecError("a frame that is not a list")
                kind = frame[0]
                if kind == F_MSGS and len(frame) == 2 and isinstance(frame[1], list):
                    msgs = [msg_from_wire(v) for v in frame[1]]
                elif kind == F_SNAP_CHUNK and len(frame) == 4:
                    _, total, chunk, meta = frame
                    if snap is None:
                        snap = _SnapshotRx(total, self.snapshot_limit, self.spool_dir, self.spool_margin)
                        older = self._snapshots_from.get(peer)
                        if older is not None:
                            # the newest transfer wins: the older connection may be half-open for good
                            log.warning("peer %x started a new snapshot; closing its older transfer", peer)
                            older.close()
                        self._snapshots_from[peer] = writer
                    m = await snap.add(total, chunk, meta)
                    if m is None:
                        continue
                    snap.close()
                    snap = None
                    self._release_snapshot(peer, writer)
                    msgs = [m]
                else:
                    raise CodecError(f"unexpected frame kind {kind!r}")
                for m in msgs:
                    if m.frm != peer and m.type not in FORWARDED:
                        # the sender check: this connection speaks for `peer` only
                        raise WrongSender(f"a message from member {m.frm:x} on the connection of member {peer:x}")
                if self.faults is not None:
                    src = self.names(peer)
                    msgs = [m for m in msgs if self.faults.verdict(src, me) is not None]
                for m in msgs:
                    if m.to == self.member_id:
                        self.msgs_recv[peer] = self.msgs_recv.get(peer, 0) + 1
                        self.deliver(m)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            raise
        except (CodecError, msgpack.UnpackException) as e:  # a bad frame: one line, no traceback
            log.warning("dropping connection from peer %x (%s): %s", peer, addr, str(e) or type(e).__name__)
        except Exception:  # a bug (deliver, the fault filter, ...): loud, and this connection ends
            log.exception("dropping connection from peer %x (%s) after an unexpected error", peer, addr)
        finally:
            if snap is not None:
                snap.close()
                self._release_snapshot(peer, writer)
            self._conns.discard(writer)
            writer.close()
            if peer:
                self.inbound[peer] -= 1
                if self.inbound[peer] == 0 and self._on_peer_lost is not None:
                    self._on_peer_lost(peer)

    def _not_certified_for(self, writer: asyncio.StreamWriter, frm: int) -> str | None:
        """Why the dialer's certificate may not speak as member `frm` (None: it may).

        A certificate listing peer URLs as URI SANs (orchestrator/pki.py issues them so) speaks only
        for the member with one of those URLs; one without URI SANs (etcd-style) is not checked."""
        cert = writer.get_extra_info("peercert")
        if not cert:
            return None
        uris = {normalize_url(str(v)).lower() for k, v in cert.get("subjectAltName", ()) if k == "URI"}
        if not uris:
            return None
        p = self.peers.get(frm)
        if p is None:
            return f"its certificate is for {', '.join(sorted(uris))}; member {frm:x} is not known here"
        if normalize_url(p.addr).lower() not in uris:
            return f"its certificate is for {', '.join(sorted(uris))}, not member {frm:x} ({p.addr})"
        return None

    def _release_snapshot(self, peer: int, writer: asyncio.StreamWriter) -> None:
        if self._snapshots_from.get(peer) is writer:
            del self._snapshots_from[peer]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self._tls_accept is not None:
            self._tls_accept.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._tls_accept
        for t in list(self._handshakes):
            t.cancel()
        if self._tls_sock is not None:
            self._tls_sock.close()
        for w in list(self._conns):
            w.close()
        for p in list(self.peers.values()):
            await p.stop()
        self.peers.clear()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
