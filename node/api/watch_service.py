"""etcdserverpb.Watch: one bidirectional stream carries many watchers."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import grpc

from node.errors import EtcdError, Reason
from node.kv import Batch, WatchHub, WatchStream
from node.kv.apply import to_pb
from node.kv.mvcc import DELETE
from node.kv.watch import OUTBOX_LIMIT
from node.pb import kv_pb2, rpc_pb2, rpc_pb2_grpc

from .context import Ctx


def _grpc_error_text(r: Reason) -> str:
    """Go's status.Error(...).Error(), which etcd puts in a watch's cancel_reason for auth refusals."""
    return f"rpc error: code = {_GO_CODES[r.code]} desc = {r.text}"


_GO_CODES = {
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
}
_AUTH_CANCEL = {
    r: _grpc_error_text(r)
    for r in (Reason.INVALID_AUTH_TOKEN, Reason.AUTH_OLD_REVISION, Reason.USER_EMPTY, Reason.PERMISSION_DENIED)
}
# any other auth refusal is reported as permission denied, as etcd does
_AUTH_CANCEL[Reason.USER_NOT_FOUND] = _AUTH_CANCEL[Reason.PERMISSION_DENIED]

PROGRESS_INTERVAL = float(os.environ.get("QUORUMLAB_WATCH_PROGRESS_INTERVAL", "600"))


def batch_to_pb(ctx: Ctx, b: Batch) -> rpc_pb2.WatchResponse:
    resp = rpc_pb2.WatchResponse(
        header=ctx.header(b.revision),
        watch_id=b.watch_id,
        created=b.created,
        canceled=b.canceled,
        compact_revision=b.compact_revision,
        cancel_reason=b.cancel_reason,
    )
    for e in b.events:
        ev = resp.events.add(type=kv_pb2.Event.DELETE if e.type == DELETE else kv_pb2.Event.PUT)
        ev.kv.CopyFrom(to_pb(e.kv))
        if b.prev_kv and e.prev_kv is not None:
            ev.prev_kv.CopyFrom(to_pb(e.prev_kv))
    return resp


class WatchService(rpc_pb2_grpc.WatchServicer):
    def __init__(self, ctx: Ctx, hub: WatchHub) -> None:
        self.ctx = ctx
        self.hub = hub

    async def Watch(  # type: ignore[override]
        self, request_iterator: AsyncIterator[rpc_pb2.WatchRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpc_pb2.WatchResponse]:
        try:
            self.ctx.check_has_leader(context)
        except EtcdError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        out: asyncio.Queue[Batch] = asyncio.Queue()

        def send(b: Batch) -> bool:
            if out.qsize() >= OUTBOX_LIMIT:
                return False
            out.put_nowait(b)
            return True

        stream = WatchStream(self.hub, send)
        reader = asyncio.get_running_loop().create_task(self._read(request_iterator, stream, out, context))
        ticker = asyncio.get_running_loop().create_task(self._progress(stream, out))
        try:
            while True:
                b = await out.get()
                yield batch_to_pb(self.ctx, b)
        finally:
            reader.cancel()
            ticker.cancel()
            stream.close()

    async def _read(
        self,
        requests: AsyncIterator[rpc_pb2.WatchRequest],
        stream: WatchStream,
        out: asyncio.Queue[Batch],
        context: grpc.aio.ServicerContext,
    ) -> None:
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            async for req in requests:
                which = req.WhichOneof("request_union")
                if which == "create_request":
                    cr = req.create_request
                    try:
                        await self._check_permitted(cr, context)
                        stream.create(
                            cr.key,
                            cr.range_end,
                            cr.start_revision,
                            prev_kv=cr.prev_kv,
                            filters=frozenset(int(f) for f in cr.filters),
                            progress_notify=cr.progress_notify,
                            watch_id=cr.watch_id,
                        )
                    except EtcdError as e:
                        reason = _AUTH_CANCEL.get(e.reason, str(e))
                        out.put_nowait(
                            Batch(-1, self.hub.store.revision, [], created=True, canceled=True, cancel_reason=reason)
                        )
                elif which == "cancel_request":
                    stream.cancel(req.cancel_request.watch_id)
                elif which == "progress_request":
                    out.put_nowait(Batch(-1, self.hub.progress(), []))

    async def _check_permitted(self, cr: rpc_pb2.WatchCreateRequest, context: grpc.aio.ServicerContext) -> None:
        """etcd's isWatchPermitted: read permission on the watched key or range, checked at create."""
        auth = self.ctx.sm.auth
        if auth.enabled:
            auth.check(await self.ctx.auth_info(context), cr.key, cr.range_end, False)

    async def _progress(self, stream: WatchStream, out: asyncio.Queue[Batch]) -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL)
            if out.empty():
                for w in list(stream.watchers.values()):
                    if w.progress_notify:
                        out.put_nowait(Batch(w.id, self.hub.progress(), []))
