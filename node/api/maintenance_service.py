"""etcdserverpb.Maintenance: Status, Alarm, Hash/HashKV, Defragment, MoveLeader (Snapshot: see below).

With auth enabled, Defragment, Hash, HashKV and Snapshot need the root role; Status, Alarm and
MoveLeader stay open, as in etcd 3.4.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

import grpc

from node.errors import EtcdError, Reason
from node.kv.apply import OP_ALARM, encode
from node.pb import rpc_pb2, rpc_pb2_grpc

from .context import VERSION, Ctx, grpc_errors

SNAPSHOT_UNSUPPORTED = (
    "quorumlab: snapshot save is not supported: etcdctl expects a bbolt database file and this node's "
    "store is not bbolt (back up with `orchestrate kv get --prefix ''` instead)"
)

_RAW = {
    Reason.PERMISSION_DENIED: Reason.RAW_PERMISSION_DENIED,
    Reason.USER_EMPTY: Reason.RAW_USER_EMPTY,
    Reason.USER_NOT_FOUND: Reason.RAW_USER_NOT_FOUND,
    Reason.INVALID_AUTH_TOKEN: Reason.RAW_INVALID_AUTH_TOKEN,
}


class MaintenanceService(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx

    async def _check_admin(self, context: grpc.aio.ServicerContext) -> None:
        """The root role, refused with the auth store's raw error as etcd 3.4's maintenance server does."""
        try:
            await self.ctx.check_admin(context)
        except EtcdError as e:
            raise EtcdError(_RAW.get(e.reason, Reason.RAW_PERMISSION_DENIED)) from None

    @grpc_errors
    async def Status(self, request: rpc_pb2.StatusRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.StatusResponse:
        node, sm = self.ctx.node, self.ctx.sm
        size = sm.db_size()
        r = node.raft
        resp = rpc_pb2.StatusResponse(
            header=self.ctx.header(),
            version=VERSION,
            dbSize=size,
            dbSizeInUse=size,
            leader=node.lead,
            raftIndex=node.committed,
            raftTerm=node.term,
            raftAppliedIndex=node.applied,
            isLearner=r is not None and r.is_learner(node.member_id),
        )
        if not node.has_leader():
            resp.errors.append(Reason.NO_LEADER.text)
        for m, a in sm.alarms:  # as etcd: each active alarm, in the protobuf text form of AlarmMember
            resp.errors.append(f"memberID:{m} alarm:{rpc_pb2.AlarmType.Name(a)} ")  # type: ignore[arg-type]
        return resp

    @grpc_errors
    async def Alarm(self, request: rpc_pb2.AlarmRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.AlarmResponse:
        if request.action == rpc_pb2.AlarmRequest.GET:
            return self.ctx.fill(self.ctx.sm.alarm_list())
        res = await self.ctx.propose(encode(OP_ALARM, request))
        return self.ctx.fill(res)

    @grpc_errors
    async def Defragment(
        self, request: rpc_pb2.DefragmentRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DefragmentResponse:
        await self._check_admin(context)
        return rpc_pb2.DefragmentResponse(header=self.ctx.header())  # in memory: nothing to defragment

    @grpc_errors
    async def Hash(self, request: rpc_pb2.HashRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.HashResponse:
        await self._check_admin(context)
        h = zlib.crc32(await self.ctx.sm.snapshot_async()) & 0xFFFFFFFF
        return rpc_pb2.HashResponse(header=self.ctx.header(), hash=h)

    @grpc_errors
    async def HashKV(self, request: rpc_pb2.HashKVRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.HashKVResponse:
        await self._check_admin(context)
        h, crev, hrev = self.ctx.sm.hash_kv(request.revision)
        return rpc_pb2.HashKVResponse(header=self.ctx.header(), hash=h, compact_revision=crev, hash_revision=hrev)

    async def Snapshot(  # type: ignore[override]
        self, request: rpc_pb2.SnapshotRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpc_pb2.SnapshotResponse]:
        try:
            await self._check_admin(context)
        except EtcdError as e:
            await context.abort(e.code or grpc.StatusCode.UNKNOWN, str(e))
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, SNAPSHOT_UNSUPPORTED)
        yield rpc_pb2.SnapshotResponse()  # pragma: no cover - abort raises

    @grpc_errors
    async def MoveLeader(
        self, request: rpc_pb2.MoveLeaderRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MoveLeaderResponse:
        node = self.ctx.node
        if node.lead != node.member_id:
            raise EtcdError(Reason.NOT_LEADER)
        r = node.raft
        if r is None or not r.is_voter(request.targetID) or request.targetID == node.member_id:
            raise EtcdError(Reason.BAD_LEADER_TRANSFEREE)
        await node.transfer_leadership(request.targetID)
        return rpc_pb2.MoveLeaderResponse(header=self.ctx.header())

    @grpc_errors
    async def Downgrade(
        self, request: rpc_pb2.DowngradeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DowngradeResponse:
        raise EtcdError(Reason.DOWNGRADE_UNSUPPORTED)
