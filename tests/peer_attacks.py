"""What a local process without the cluster's secret can try on a member's peer port.

Raw sockets and the codec's own frame kinds, so the same attacks run against any version of the
node (tests/test_security.py; the "before" figures of issue #11 ran them on the code before it).
The attacker is as strong as it gets without the secret: it computes the member and cluster ids
from the peer URLs and the token (as every founding member does) and reads term and log index
through the client port. A few go further: a process holding the secret that speaks as another
member (member_sends, swapped_hello), and a TLS dialer with a certificate the node does not trust
(tls_discover).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import struct
from typing import Any

import msgpack

from node.raft import Entry, Message, MsgType
from node.server.codec import F_DISCOVER, F_HELLO, F_MSGS, F_SNAP_CHUNK, msg_to_wire, pack
from node.server.members import cluster_id, member_id

OP_PUT = 1  # node/kv/apply.py
K_APP = 1  # node/server/raftnode.py
F_AUTH = 5  # node/server/codec.py (spelled out: older versions have no such frame)
CLOSED = "CLOSED"  # read_reply: the node closed the connection (None: it said nothing, still open)


def ids(peer_urls: dict[str, str], token: str) -> tuple[int, dict[str, int]]:
    """(cluster id, member id by name), computed as the founding members do."""
    mids = {n: member_id(u, token) for n, u in peer_urls.items()}
    return cluster_id(list(mids.values()), token), mids


async def _open(port: int, fake_auth: bool = False) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection; with fake_auth, first the authentication exchange with a proof made up at random
    (a stranger who speaks the protocol but lacks the secret), whatever the node answers."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
    if fake_auth:
        with contextlib.suppress(ConnectionError):
            writer.write(pack([F_AUTH, os.urandom(32)]))
            await writer.drain()
            await read_reply(reader, 1.0)
            writer.write(pack([F_AUTH, os.urandom(32)]))
            await writer.drain()
            await read_reply(reader, 1.0)
    return reader, writer


async def read_reply(reader: asyncio.StreamReader, timeout: float = 2.0) -> Any:
    """The next frame the node sends; CLOSED when it closed the connection (EOF or reset); None when
    it said nothing within `timeout` (the connection is still open)."""
    try:
        head = await asyncio.wait_for(reader.readexactly(4), timeout)
        (n,) = struct.unpack(">I", head)
        return msgpack.unpackb(await asyncio.wait_for(reader.readexactly(n), timeout), raw=False)
    except (asyncio.IncompleteReadError, ConnectionError):
        return CLOSED
    except TimeoutError:
        return None


async def discover(port: int, fake_auth: bool = False) -> Any:
    reader, writer = await _open(port, fake_auth)
    try:
        writer.write(pack([F_DISCOVER, "http://127.0.0.1:1"]))
        await writer.drain()
        return await read_reply(reader)
    except ConnectionError:
        return CLOSED
    finally:
        writer.close()


async def bad_hello(port: int, fake_auth: bool = False) -> Any:
    """A hello for the wrong cluster and member: what does the refusal say?"""
    reader, writer = await _open(port, fake_auth)
    try:
        writer.write(pack([F_HELLO, 1, 2, 3]))
        await writer.drain()
        return await read_reply(reader)
    except ConnectionError:
        return CLOSED
    finally:
        writer.close()


async def tls_discover(port: int, ctx: ssl.SSLContext, first: list[Any] | None = None) -> Any:
    """A DISCOVER (or `first`) over TLS with `ctx` (say, a certificate from another CA): the node's
    answer, CLOSED when the handshake or the node refuses it."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"), 3.0
        )
    except (ssl.SSLError, ConnectionError):
        return CLOSED
    try:
        writer.write(pack(first or [F_DISCOVER, "https://127.0.0.1:1"]))
        await writer.drain()
        return await read_reply(reader)
    except (ConnectionError, ssl.SSLError):
        return CLOSED
    finally:
        writer.close()


def put_payload(key: bytes, value: bytes) -> bytes:
    from node.pb import rpc_pb2

    body = msgpack.packb([OP_PUT, rpc_pb2.PutRequest(key=key, value=value).SerializeToString()])
    return msgpack.packb([0, 0, K_APP, body])


async def send_msgs(port: int, cid: int, frm: int, to: int, msgs: list[Message], fake_auth: bool = False) -> Any:
    """Hello as member `frm`, then the messages; what the node answered (CLOSED, or None: silent)."""
    reader, writer = await _open(port, fake_auth)
    try:
        writer.write(pack([F_HELLO, cid, frm, to]))
        writer.write(pack([F_MSGS, [msg_to_wire(m) for m in msgs]]))
        await writer.drain()
        return await read_reply(reader, 1.0)
    except ConnectionError:
        return CLOSED
    finally:
        writer.close()


async def member_sends(
    port: int, secret: bytes, hello: list[Any], msgs: list[Message], tls: ssl.SSLContext | None = None
) -> Any:
    """As a process that holds the secret (and, with tls, a member's certificate): authenticate with
    `hello`, send msgs; the node's answer (None: silent, the connection still open)."""
    from node.server.transport import authenticate_to

    host = "127.0.0.1"
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=tls, server_hostname=host if tls else None), 3.0
    )
    try:
        await asyncio.wait_for(authenticate_to(reader, writer, secret, hello), 3.0)
        writer.write(pack([F_MSGS, [msg_to_wire(m) for m in msgs]]))
        await writer.drain()
        return await read_reply(reader, 2.0)
    except ConnectionError:
        return CLOSED
    finally:
        writer.close()


async def swapped_hello(port: int, secret: bytes, proved: list[Any], sent: list[Any]) -> Any:
    """A man in the middle: the proof is made for hello `proved`, but hello `sent` goes on the wire."""
    from node.secret import NONCE_BYTES, peer_mac

    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
    try:
        nc = os.urandom(NONCE_BYTES)
        writer.write(pack([F_AUTH, nc]))
        await writer.drain()
        got = await read_reply(reader, 2.0)
        if not (isinstance(got, list) and len(got) == 2):
            return got
        mac = peer_mac(secret, b"client", nc, got[1], pack(proved)[4:])
        writer.write(pack([F_AUTH, mac]) + pack(sent))
        await writer.drain()
        return await read_reply(reader, 2.0)
    except ConnectionError:
        return CLOSED
    finally:
        writer.close()


def forged_append(frm: int, to: int, term: int, last_index: int, log_term: int, key: bytes) -> Message:
    """An AppendEntries at `term` that appends a PUT after last_index and commits it."""
    e = Entry(last_index + 1, term, data=put_payload(key, b"forged"))
    return Message(
        MsgType.APP,
        to=to,
        frm=frm,
        term=term,
        log_term=log_term,
        index=last_index,
        entries=[e],
        commit=last_index + 1,
    )


def forged_vote(frm: int, to: int, term: int) -> Message:
    return Message(MsgType.VOTE, to=to, frm=frm, term=term, log_term=term, index=1 << 40)


async def _pump(writer: asyncio.StreamWriter, head: bytes, frames: int, frame: bytes, pid: int) -> tuple[int, float]:
    """Write head, then up to `frames` copies of frame until the node closes: (frames sent, peak RSS in MB)."""
    peak = rss_mb(pid)
    sent = 0
    try:
        writer.write(head)
        for _ in range(frames):
            writer.write(frame)
            await asyncio.wait_for(writer.drain(), 5.0)
            if writer.is_closing():
                break
            sent += 1
            peak = max(peak, rss_mb(pid))
    except (ConnectionError, TimeoutError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return sent, peak


async def snapshot_flood(
    port: int, cid: int, frm: int, to: int, mib: int, pid: int, fake_auth: bool = False
) -> tuple[int, float]:
    """Snapshot chunks that never end (1 MiB each): (MiB sent before the node closed, peak RSS of pid in MB)."""
    _, writer = await _open(port, fake_auth)
    chunk = pack([F_SNAP_CHUNK, 1 << 40, b"\0" * (1 << 20), None])
    return await _pump(writer, pack([F_HELLO, cid, frm, to]), mib, chunk, pid)


async def big_frame(port: int, announce: int, send_mib: int, pid: int) -> tuple[int, float]:
    """A frame header announcing `announce` bytes, then send_mib MiB of its body: (MiB sent, peak RSS in MB)."""
    _, writer = await _open(port)
    return await _pump(writer, struct.pack(">I", announce), send_mib, b"\0" * (1 << 20), pid)


async def idle_flood(port: int, conns: int, stop: asyncio.Event, pause: float = 0.3) -> int:
    """`conns` connections that never say a word, each reopened (after `pause`) once the node closes
    it, until `stop`: how many were opened."""
    opened = 0

    async def one() -> None:
        nonlocal opened
        while not stop.is_set():
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
            except (OSError, TimeoutError):
                await asyncio.sleep(pause)
                continue
            opened += 1
            try:
                while not stop.is_set() and await read_reply(reader, 0.5) is None:
                    pass
            finally:
                writer.close()
            await asyncio.sleep(pause)

    await asyncio.gather(*(one() for _ in range(conns)))
    return opened


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0
