"""What every service needs: the node, the state machine, headers and etcd's error mapping."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from node.errors import EtcdError, Reason
from node.kv.apply import KVStateMachine
from node.kv.auth import AuthInfo
from node.pb import rpc_pb2
from node.server.raftnode import RaftNode

from .lessor import Lessor
from .quota import SpaceGuard

MAX_REQUEST_BYTES = int(1.5 * 1024 * 1024)
GRPC_RECV_LIMIT = MAX_REQUEST_BYTES + 512 * 1024
VERSION = "3.5.0"  # the etcd API level we speak; etcdctl gates features on it

T = TypeVar("T")
TOKEN_KEYS = ("token", "authorization")  # etcd's gRPC metadata key, and its gateway's
TOKEN_INDEX_WAIT_S = 5.0  # how long a token from another member may wait for its entry here


class Ctx:
    def __init__(self, node: RaftNode, sm: KVStateMachine, lessor: Lessor, space: SpaceGuard) -> None:
        self.node = node
        self.sm = sm
        self.lessor = lessor
        self.space = space

    def header(self, revision: int | None = None) -> rpc_pb2.ResponseHeader:
        return rpc_pb2.ResponseHeader(
            cluster_id=self.node.cluster_id,
            member_id=self.node.member_id,
            revision=self.sm.store.revision if revision is None else revision,
            raft_term=self.node.term,
        )

    def fill(self, resp: Any) -> Any:
        """Complete a response header that the state machine filled with a revision.

        Fields set in place: a new ResponseHeader and CopyFrom per request showed in the put path."""
        h = resp.header
        if not h.revision:
            h.revision = self.sm.store.revision
        h.cluster_id = self.node.cluster_id
        h.member_id = self.node.member_id
        h.raft_term = self.node.term
        return resp

    def check_size(self, req: Any) -> None:
        if req.ByteSize() > MAX_REQUEST_BYTES:
            raise EtcdError(Reason.REQUEST_TOO_LARGE)

    def serialized(self, req: Any) -> bytes:
        """req's wire bytes, refused as check_size does: ByteSize() encodes the message too, so a
        request that is proposed anyway is encoded once, not twice."""
        body: bytes = req.SerializeToString()
        if len(body) > MAX_REQUEST_BYTES:
            raise EtcdError(Reason.REQUEST_TOO_LARGE)
        return body

    def check_has_leader(self, context: grpc.aio.ServicerContext) -> None:
        md = dict(context.invocation_metadata() or ())
        if md.get("hasleader") == "true" and not self.node.has_leader():
            raise EtcdError(Reason.NO_LEADER)

    async def propose(self, payload: bytes) -> Any:
        """Replicate a request and return its result; a refusal by the state machine is raised.

        KVStateMachine.apply returns a refusal (an EtcdError) instead of raising it: every member
        applies the entry, only the proposer turns it into the client's error, here.
        """
        result = await self.node.propose(payload)
        if isinstance(result, EtcdError):
            raise result
        return result

    def token_metadata(self, context: grpc.aio.ServicerContext) -> tuple[tuple[str, str], ...] | None:
        """The caller's token as metadata, for a request this member forwards to the leader."""
        token = next((v for k, v in context.invocation_metadata() or () if k in TOKEN_KEYS), None)
        return (("token", token),) if isinstance(token, str) else None

    async def auth_info(self, context: grpc.aio.ServicerContext) -> AuthInfo | None:
        """etcd's AuthInfoFromCtx: the user of the request's token at the current auth revision.

        None when auth is disabled (the metadata is not even read: the hot path pays one flag
        test; etcd would refuse a stale token here, we ignore it) or no token was sent. A token
        names the index of the entry that assigned it: a member that has not applied it yet
        waits for it, as etcd does, so a token from one member works on every member; an index
        the cluster has not committed is refused at once."""
        auth = self.sm.auth
        if not auth.enabled:
            return None
        token = next((v for k, v in context.invocation_metadata() or () if k in TOKEN_KEYS), None)
        if token is None:
            return None
        if not isinstance(token, str):
            raise EtcdError(Reason.INVALID_AUTH_TOKEN)
        _, dot, index = token.rpartition(".")
        if not dot or not index.isdigit():
            raise EtcdError(Reason.INVALID_AUTH_TOKEN)
        idx = int(index)
        if idx > self.node.committed:
            # not committed here: ask the leader (ReadIndex) rather than wait, so a made-up
            # index (`x.999999999`) is refused at once, not after TOKEN_INDEX_WAIT_S
            await self.node.read_barrier()
            if idx > self.node.applied:
                raise EtcdError(Reason.INVALID_AUTH_TOKEN)
        if idx > self.node.applied:
            try:
                await self.node.wait_applied(idx, TOKEN_INDEX_WAIT_S)
            except EtcdError:
                raise EtcdError(Reason.INVALID_AUTH_TOKEN) from None
        user = auth.token_user(token)
        if user is None:
            raise EtcdError(Reason.INVALID_AUTH_TOKEN)
        return AuthInfo(user, auth.revision)

    async def check_admin(self, context: grpc.aio.ServicerContext) -> None:
        """etcd's IsAdminPermitted at the API (member changes, Defragment, Hash, HashKV, Snapshot)."""
        if self.sm.auth.enabled:
            self.sm.auth.check_admin(await self.auth_info(context))

    def leader_client_url(self) -> str | None:
        m = self.node.members.get(self.node.lead)
        if m is None or not m.client_urls:
            return None
        return m.client_urls[0]


def grpc_errors(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Send an EtcdError as its gRPC status code with etcd's exact text."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await fn(self, request, context)
        except EtcdError as e:
            await context.abort(e.code or grpc.StatusCode.UNKNOWN, str(e))
            raise  # unreachable: abort raises

    return wrapper
