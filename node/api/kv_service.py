"""etcdserverpb.KV: Range, Put, DeleteRange, Txn, Compact."""

from __future__ import annotations

import grpc

from node.api.pb import rpc_pb2, rpc_pb2_grpc
from node.kv.apply import (
    OP_COMPACT,
    OP_DELETE,
    OP_PUT,
    OP_TXN,
    encode,
    validate_delete,
    validate_put,
    validate_range,
    validate_txn,
)

from .context import Ctx, grpc_errors, raise_if_error


def _all_serializable(t: rpc_pb2.TxnRequest) -> bool:
    for ops in (t.success, t.failure):
        for op in ops:
            which = op.WhichOneof("request")
            if which == "request_range" and not op.request_range.serializable:
                return False
            if which == "request_txn" and not _all_serializable(op.request_txn):
                return False
    return True


class KVService(rpc_pb2_grpc.KVServicer):
    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx

    @grpc_errors
    async def Range(self, request: rpc_pb2.RangeRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.RangeResponse:
        self.ctx.check_size(request)
        validate_range(request)
        if not request.serializable:
            await self.ctx.node.read_barrier()
        return self.ctx.fill(self.ctx.sm.range(request))

    @grpc_errors
    async def Put(self, request: rpc_pb2.PutRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.PutResponse:
        self.ctx.check_size(request)
        validate_put(request)
        res = raise_if_error(await self.ctx.node.propose(encode(OP_PUT, request)))
        return self.ctx.fill(res)

    @grpc_errors
    async def DeleteRange(
        self, request: rpc_pb2.DeleteRangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DeleteRangeResponse:
        self.ctx.check_size(request)
        validate_delete(request)
        res = raise_if_error(await self.ctx.node.propose(encode(OP_DELETE, request)))
        return self.ctx.fill(res)

    @grpc_errors
    async def Txn(self, request: rpc_pb2.TxnRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.TxnResponse:
        self.ctx.check_size(request)
        validate_txn(request)
        sm = self.ctx.sm
        if sm.txn_is_read_only(request):
            if not _all_serializable(request):
                await self.ctx.node.read_barrier()
            return self._fill_txn(sm.read_txn(request))
        res = raise_if_error(await self.ctx.node.propose(encode(OP_TXN, request)))
        return self._fill_txn(res)

    def _fill_txn(self, resp: rpc_pb2.TxnResponse, nested: bool = False) -> rpc_pb2.TxnResponse:
        if nested:
            rev = resp.header.revision
            resp.header.Clear()
            resp.header.revision = rev
        else:
            self.ctx.fill(resp)
        for r in resp.responses:
            inner = getattr(r, r.WhichOneof("response") or "response_range")
            if r.WhichOneof("response") == "response_txn":
                self._fill_txn(inner, nested=True)
            else:
                inner.header.Clear()  # etcd fills only the revision in nested responses
                inner.header.revision = resp.header.revision
        return resp

    @grpc_errors
    async def Compact(
        self, request: rpc_pb2.CompactionRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.CompactionResponse:
        res = raise_if_error(await self.ctx.node.propose(encode(OP_COMPACT, request)))
        return self.ctx.fill(res)
