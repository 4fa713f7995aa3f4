"""etcdserverpb.Cluster: membership changes go through Raft one at a time."""

from __future__ import annotations

import grpc

from node.errors import EtcdError, Reason
from node.pb import rpc_pb2, rpc_pb2_grpc
from node.raft import ConfChange, ConfChangeType, ConfState
from node.server.members import Member, member_id, normalize_url

from .context import Ctx, grpc_errors


class ClusterService(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, ctx: Ctx, token: str) -> None:
        self.ctx = ctx
        self.token = token

    def _members(self) -> list[rpc_pb2.Member]:
        node = self.ctx.node
        conf = node.raft.conf_state() if node.raft is not None else ConfState()
        out = []
        for mid in sorted(set(node.members) | conf.voters | conf.learners):
            m = node.members.get(mid, Member(mid))
            out.append(
                rpc_pb2.Member(
                    ID=mid,
                    name=m.name,
                    peerURLs=m.peer_urls,
                    clientURLs=m.client_urls,
                    isLearner=mid in conf.learners,
                )
            )
        return out

    @grpc_errors
    async def MemberList(
        self, request: rpc_pb2.MemberListRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberListResponse:
        if request.linearizable:
            await self.ctx.node.read_barrier()
        return rpc_pb2.MemberListResponse(header=self.ctx.header(), members=self._members())

    @grpc_errors
    async def MemberAdd(
        self, request: rpc_pb2.MemberAddRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberAddResponse:
        await self.ctx.check_admin(context)  # etcd: member changes need the root role
        if not request.peerURLs:
            raise EtcdError(Reason.PEER_URLS_NOT_PROVIDED)
        urls = [normalize_url(u) for u in request.peerURLs]
        for m in self.ctx.node.members.values():
            if set(urls) & set(m.peer_urls):
                raise EtcdError(Reason.PEER_URL_EXISTS)
        mid = member_id(urls[0], self.token)
        new = Member(mid, "", urls, [], request.isLearner)
        kind = ConfChangeType.ADD_LEARNER if request.isLearner else ConfChangeType.ADD_NODE
        await self.ctx.node.propose_conf_change(ConfChange(kind, mid), new)
        resp = rpc_pb2.MemberAddResponse(header=self.ctx.header(), members=self._members())
        resp.member.CopyFrom(rpc_pb2.Member(ID=mid, peerURLs=urls, isLearner=request.isLearner))
        return resp

    def _require_member(self, mid: int) -> Member:
        m = self.ctx.node.members.get(mid)
        if m is None:
            raise EtcdError(Reason.MEMBER_NOT_FOUND)
        return m

    @grpc_errors
    async def MemberRemove(
        self, request: rpc_pb2.MemberRemoveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberRemoveResponse:
        await self.ctx.check_admin(context)  # etcd: member changes need the root role
        m = self._require_member(request.ID)
        await self.ctx.node.propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, request.ID), m)
        return rpc_pb2.MemberRemoveResponse(header=self.ctx.header(), members=self._members())

    @grpc_errors
    async def MemberPromote(
        self, request: rpc_pb2.MemberPromoteRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberPromoteResponse:
        await self.ctx.check_admin(context)  # etcd: member changes need the root role
        node = self.ctx.node
        m = self._require_member(request.ID)
        r = node.raft
        if r is None or not r.is_learner(request.ID):
            raise EtcdError(Reason.MEMBER_NOT_LEARNER)
        if node.lead == node.member_id:
            match = r.match_index(request.ID)
            if match is None or match < r.committed_index * 0.9:
                raise EtcdError(Reason.LEARNER_NOT_READY)
        await node.propose_conf_change(ConfChange(ConfChangeType.ADD_NODE, request.ID), m)
        return rpc_pb2.MemberPromoteResponse(header=self.ctx.header(), members=self._members())

    @grpc_errors
    async def MemberUpdate(
        self, request: rpc_pb2.MemberUpdateRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberUpdateResponse:
        await self.ctx.check_admin(context)  # etcd: member changes need the root role
        self._require_member(request.ID)
        await self.ctx.node.propose_peer_urls(request.ID, [normalize_url(u) for u in request.peerURLs])
        return rpc_pb2.MemberUpdateResponse(header=self.ctx.header(), members=self._members())
