"""Watch streams for a workload: one per node on its keys (prev_kv on), every event recorded.

A stream that errs restarts from the last revision it saw + 1; one told its start revision was
compacted records the compact revision and restarts from it (the events before are gone for
good: chaos.watchcheck then holds the stream only to what it could still get). The compact
revision is also what `compact_revision` probes at the end of a run, for the watch checker: a
prev_kv at or below it may have been compacted away.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

import grpc

from node.client import CHANNEL_OPTIONS, ClientError, ClientTLS, prefix_end
from node.pb import kv_pb2, rpc_pb2, rpc_pb2_grpc

from .history import WatchRecord


def _channel(endpoint: str, tls: ClientTLS | None) -> grpc.aio.Channel:
    if tls is None:
        return grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(endpoint, tls.credentials(), options=CHANNEL_OPTIONS)


class _Compacted(Exception):
    def __init__(self, revision: int) -> None:
        super().__init__(f"start revision compacted (compact revision {revision})")
        self.revision = revision


@dataclass
class Watcher:
    endpoints: dict[str, str]  # node name -> host:port
    prefix: str
    log: list[WatchRecord]
    tls: ClientTLS | None = None
    t0: float = field(default_factory=time.monotonic)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._streams = itertools.count()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def start(self, revision: int) -> list[asyncio.Task[None]]:
        """One stream per node from `revision`; the tasks end when `stop` is set."""
        loop = asyncio.get_running_loop()
        return [loop.create_task(self._watch(next(self._streams), n, revision)) for n in sorted(self.endpoints)]

    async def _watch(self, sid: int, node: str, start: int) -> None:
        """Watch the keys on one node until stopped; after an error resume at last seen + 1."""
        nxt = [start]  # the next revision wanted: advanced by every event, kept across errors
        while not self.stop.is_set():
            self.log.append(WatchRecord(sid, "start", self.now(), node, start_revision=nxt[0]))
            ch = _channel(self.endpoints[node], self.tls)
            try:
                await self._stream(sid, node, ch, nxt)
            except _Compacted as c:
                self.log.append(WatchRecord(sid, "compacted", self.now(), node, revision=c.revision))
                nxt[0] = max(nxt[0], c.revision)
            except (TimeoutError, grpc.aio.AioRpcError, ClientError) as e:
                self.log.append(WatchRecord(sid, "error", self.now(), node, error=str(e)[:200]))
            finally:
                await ch.close()
            if not self.stop.is_set():
                try:
                    await asyncio.wait_for(self.stop.wait(), 0.2)
                except TimeoutError:
                    pass

    async def _stream(self, sid: int, node: str, ch: grpc.aio.Channel, nxt: list[int]) -> None:
        key = self.prefix.encode()
        create = rpc_pb2.WatchCreateRequest(key=key, range_end=prefix_end(key), start_revision=nxt[0], prev_kv=True)
        call = rpc_pb2_grpc.WatchStub(ch).Watch()
        stop = asyncio.ensure_future(self.stop.wait())
        batches = itertools.count()
        try:
            await call.write(rpc_pb2.WatchRequest(create_request=create))
            while True:
                read = asyncio.ensure_future(call.read())
                await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    read.cancel()
                    return
                resp = read.result()
                if resp is grpc.aio.EOF:
                    raise ClientError(None, "watch stream ended", node)
                if resp.compact_revision:
                    raise _Compacted(resp.compact_revision)
                if resp.canceled:
                    raise ClientError(grpc.StatusCode.CANCELLED, resp.cancel_reason or "watch canceled", node)
                b = next(batches)
                for ev in resp.events:
                    self.log.append(self._record(sid, node, b, ev))
                    nxt[0] = max(nxt[0], ev.kv.mod_revision + 1)
        finally:
            stop.cancel()
            call.cancel()

    def _record(self, sid: int, node: str, batch: int, ev: kv_pb2.Event) -> WatchRecord:
        put = ev.type == ev.PUT
        kv = ev.kv
        prev = ev.prev_kv.value.decode() if ev.HasField("prev_kv") else None
        return WatchRecord(
            sid,
            "event",
            self.now(),
            node,
            batch=batch,
            key=kv.key.decode(),
            type="put" if put else "delete",
            value=kv.value.decode() if put else None,
            revision=kv.mod_revision,
            prev_value=prev,
        )


async def compact_revision(endpoints: list[str], tls: ClientTLS | None = None, wait_s: float = 0.5) -> int | None:
    """The cluster's compact revision (0: never compacted), None when no endpoint answers.

    etcd tells it only to a watcher that asks for a compacted revision: watch one key from
    revision 1 and see whether the stream is cancelled with a compact revision."""
    for ep in endpoints:
        ch = _channel(ep, tls)
        call = rpc_pb2_grpc.WatchStub(ch).Watch()
        try:
            create = rpc_pb2.WatchCreateRequest(key=b"\0quorumlab-compact-probe", start_revision=1)
            await call.write(rpc_pb2.WatchRequest(create_request=create))
            while True:
                resp = await asyncio.wait_for(call.read(), 3.0)
                if resp is grpc.aio.EOF:
                    break
                if resp.compact_revision:
                    return int(resp.compact_revision)
                if resp.created:  # the cancel, when there is one, follows at once
                    try:
                        resp = await asyncio.wait_for(call.read(), wait_s)
                    except TimeoutError:
                        return 0
                    if resp is not grpc.aio.EOF and resp.compact_revision:
                        return int(resp.compact_revision)
                    return 0
        except (TimeoutError, grpc.aio.AioRpcError):
            continue
        finally:
            call.cancel()
            await ch.close()
    return None
