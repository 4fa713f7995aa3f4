"""etcdserverpb.Lease: grant and revoke go through the log; keep-alive and TTL are the leader's.

A follower forwards keep-alives and time-to-live questions to the leader's
client URL, since only the leader's clock decides expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import AsyncIterator

import grpc

from node.errors import EtcdError, Reason, from_status, lookup
from node.kv.apply import MAX_LEASE_TTL, OP_LEASE_GRANT, OP_LEASE_REVOKE, encode
from node.pb import rpc_pb2, rpc_pb2_grpc

from .context import Ctx, grpc_errors


class LeaseService(rpc_pb2_grpc.LeaseServicer):
    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _leader_stub(self) -> rpc_pb2_grpc.LeaseStub:
        url = self.ctx.leader_client_url()
        if url is None:
            raise EtcdError(Reason.NO_LEADER)
        target = url.split("://", 1)[-1]
        ch = self._channels.get(target)
        if ch is None:
            ch = grpc.aio.insecure_channel(target)
            self._channels[target] = ch
        return rpc_pb2_grpc.LeaseStub(ch)

    @grpc_errors
    async def LeaseGrant(
        self, request: rpc_pb2.LeaseGrantRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseGrantResponse:
        if request.TTL > MAX_LEASE_TTL:
            raise EtcdError(Reason.LEASE_TTL_TOO_LARGE)
        # etcd's minimum TTL is 1.5 election timeouts (rounded up to a second); applied here, before
        # proposing, so every node applies the same value
        min_ttl = math.ceil(1.5 * self.ctx.node.cfg.election_ms / 1000)
        req = rpc_pb2.LeaseGrantRequest(TTL=max(request.TTL, min_ttl), ID=request.ID or random.getrandbits(62) + 1)
        await self.ctx.space.admit(req)
        res = await self.ctx.propose(encode(OP_LEASE_GRANT, req, await self.ctx.auth_info(context)))
        return self.ctx.fill(res)

    @grpc_errors
    async def LeaseRevoke(
        self, request: rpc_pb2.LeaseRevokeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseRevokeResponse:
        res = await self.ctx.propose(encode(OP_LEASE_REVOKE, request, await self.ctx.auth_info(context)))
        return self.ctx.fill(res)

    async def _keep_alive_one(self, lease_id: int) -> rpc_pb2.LeaseKeepAliveResponse:
        if self.ctx.lessor.is_leader():
            ttl = self.ctx.lessor.keep_alive(lease_id)
            return rpc_pb2.LeaseKeepAliveResponse(header=self.ctx.header(), ID=lease_id, TTL=ttl)
        call = self._leader_stub().LeaseKeepAlive()
        try:
            await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
            resp = await asyncio.wait_for(call.read(), 5.0)
        finally:
            call.cancel()
        if not isinstance(resp, rpc_pb2.LeaseKeepAliveResponse):
            raise EtcdError(Reason.NO_LEADER)
        return rpc_pb2.LeaseKeepAliveResponse(header=self.ctx.header(), ID=resp.ID, TTL=resp.TTL)

    async def LeaseKeepAlive(  # type: ignore[override]
        self, request_iterator: AsyncIterator[rpc_pb2.LeaseKeepAliveRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpc_pb2.LeaseKeepAliveResponse]:
        try:
            self.ctx.check_has_leader(context)
        except EtcdError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        with contextlib.suppress(asyncio.CancelledError):
            async for req in request_iterator:
                try:
                    yield await self._keep_alive_one(req.ID)
                except (TimeoutError, EtcdError, grpc.aio.AioRpcError) as e:
                    await context.abort(
                        grpc.StatusCode.UNAVAILABLE, str(e) if isinstance(e, EtcdError) else Reason.NO_LEADER.text
                    )

    @grpc_errors
    async def LeaseTimeToLive(
        self, request: rpc_pb2.LeaseTimeToLiveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        """With keys=True and auth on, the caller needs read on every attached key (etcd's fix
        for CVE-2023-32082, 3.4.26/3.5.9): key names are not for whoever knows a lease ID. The
        member that builds the answer (the leader) decides; a follower forwards the caller's token."""
        auth = self.ctx.sm.auth
        check = request.keys and auth.enabled
        ai = await self.ctx.auth_info(context) if check else None
        if self.ctx.lessor.is_leader():
            ls = self.ctx.sm.leases.get(request.ID)
            resp = rpc_pb2.LeaseTimeToLiveResponse(header=self.ctx.header(), ID=request.ID)
            if ls is None:
                resp.TTL = -1
                return resp
            if request.keys:
                keys = sorted(ls.keys)
                if check:
                    for k in keys:
                        auth.check(ai, k, b"", False)
                resp.keys.extend(keys)
            resp.TTL = self.ctx.lessor.remaining(request.ID)
            resp.grantedTTL = ls.ttl
            return resp
        try:
            md = self.ctx.token_metadata(context) if check else None
            fwd = await self._leader_stub().LeaseTimeToLive(request, timeout=5.0, metadata=md)
        except grpc.aio.AioRpcError as e:
            text = e.details() or Reason.NO_LEADER.text
            if lookup(text).code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN):
                raise from_status(e.code(), text) from e  # the leader's refusal (auth), as it said it
            # the leader's answer, passed on as Unavailable (this member could not serve it)
            raise from_status(grpc.StatusCode.UNAVAILABLE, text) from e
        fwd.header.CopyFrom(self.ctx.header())
        return fwd

    @grpc_errors
    async def LeaseLeases(
        self, request: rpc_pb2.LeaseLeasesRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseLeasesResponse:
        resp = rpc_pb2.LeaseLeasesResponse(header=self.ctx.header())
        for lid in sorted(self.ctx.sm.leases):
            resp.leases.add(ID=lid)
        return resp
