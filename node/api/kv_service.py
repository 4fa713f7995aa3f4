"""etcdserverpb.KV: Range, Put, DeleteRange, Txn, Compact.

Range and read-only Txn replies are read in chunks and serialized piece by piece
(node/kv/reads.py), then handed to gRPC as wire bytes, so a large reply never holds
the event loop (which also carries the Raft heartbeats) for more than a few ms.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from node.errors import EtcdError, Reason
from node.kv.apply import (
    OP_COMPACT,
    OP_DELETE,
    OP_PUT,
    OP_TXN,
    encode,
    encode_body,
    validate_delete,
    validate_put,
    validate_range,
    validate_txn,
)
from node.kv.auth import AuthInfo
from node.kv.reads import read_range, read_txn
from node.pb import rpc_pb2, rpc_pb2_grpc

from .context import Ctx, grpc_errors

JOIN_OFF_LOOP = 1 << 20  # replies larger than this are joined on a worker thread


def _passthrough(serialize: Any) -> Any:
    """A response serializer that sends wire bytes as they are and serializes messages."""

    def ser(resp: Any) -> bytes:
        return resp if isinstance(resp, bytes) else serialize(resp)

    return ser


def add_kv_service(servicer: KVService, server: grpc.aio.Server) -> None:
    """rpc_pb2_grpc.add_KVServicer_to_server, except that Range and Txn may answer with bytes."""
    handlers = {
        "Range": grpc.unary_unary_rpc_method_handler(
            servicer.Range,
            request_deserializer=rpc_pb2.RangeRequest.FromString,
            response_serializer=_passthrough(rpc_pb2.RangeResponse.SerializeToString),
        ),
        "Put": grpc.unary_unary_rpc_method_handler(
            servicer.Put,
            request_deserializer=rpc_pb2.PutRequest.FromString,
            response_serializer=rpc_pb2.PutResponse.SerializeToString,
        ),
        "DeleteRange": grpc.unary_unary_rpc_method_handler(
            servicer.DeleteRange,
            request_deserializer=rpc_pb2.DeleteRangeRequest.FromString,
            response_serializer=rpc_pb2.DeleteRangeResponse.SerializeToString,
        ),
        "Txn": grpc.unary_unary_rpc_method_handler(
            servicer.Txn,
            request_deserializer=rpc_pb2.TxnRequest.FromString,
            response_serializer=_passthrough(rpc_pb2.TxnResponse.SerializeToString),
        ),
        "Compact": grpc.unary_unary_rpc_method_handler(
            servicer.Compact,
            request_deserializer=rpc_pb2.CompactionRequest.FromString,
            response_serializer=rpc_pb2.CompactionResponse.SerializeToString,
        ),
    }
    # one generic handler serves every client (registered handlers are only a lookup shortcut)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("etcdserverpb.KV", handlers),))


async def _join(parts: list[bytes]) -> bytes:
    if sum(len(p) for p in parts) > JOIN_OFF_LOOP:
        return await asyncio.to_thread(b"".join, parts)
    return b"".join(parts)


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
    async def Range(self, request: rpc_pb2.RangeRequest, context: grpc.aio.ServicerContext) -> bytes:
        self.ctx.check_size(request)
        validate_range(request)
        ai = await self.ctx.auth_info(context)
        if not request.serializable:
            await self.ctx.node.read_barrier()
        auth = self.ctx.sm.auth
        if auth.enabled:  # etcd's doSerialize: check, read, and refuse if auth changed meanwhile
            auth.check(ai, request.key, request.range_end, False)
        out = await read_range(self.ctx.sm, request)
        self._check_auth_unchanged(ai)
        return await _join(out.parts(self.ctx.header(out.revision)))

    def _check_auth_unchanged(self, ai: AuthInfo | None) -> None:
        if ai is not None and ai.revision != self.ctx.sm.auth.revision:
            raise EtcdError(Reason.AUTH_OLD_REVISION)

    @grpc_errors
    async def Put(self, request: rpc_pb2.PutRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.PutResponse:
        body = self.ctx.serialized(request)
        validate_put(request)
        await self.ctx.space.admit(request)
        res = await self.ctx.propose(encode_body(OP_PUT, body, await self.ctx.auth_info(context)))
        return self.ctx.fill(res)

    @grpc_errors
    async def DeleteRange(
        self, request: rpc_pb2.DeleteRangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DeleteRangeResponse:
        body = self.ctx.serialized(request)
        validate_delete(request)
        res = await self.ctx.propose(encode_body(OP_DELETE, body, await self.ctx.auth_info(context)))
        return self.ctx.fill(res)

    @grpc_errors
    async def Txn(self, request: rpc_pb2.TxnRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.TxnResponse | bytes:
        self.ctx.check_size(request)
        validate_txn(request)
        sm = self.ctx.sm
        ai = await self.ctx.auth_info(context)
        if sm.txn_is_read_only(request):
            if not _all_serializable(request):
                await self.ctx.node.read_barrier()
            if sm.auth.enabled:
                sm.auth.check_txn(ai, request, sm.lease_keys)
            out = await read_txn(sm, request)
            self._check_auth_unchanged(ai)
            return await _join(out.parts(self.ctx.header(out.revision)))
        await self.ctx.space.admit(request)
        res = await self.ctx.propose(encode(OP_TXN, request, ai))
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
        res = await self.ctx.propose(encode(OP_COMPACT, request, await self.ctx.auth_info(context)))
        return self.ctx.fill(res)
