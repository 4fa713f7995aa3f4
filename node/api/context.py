"""What every service needs: the node, the state machine, headers and etcd's error mapping."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from node.kv import KVError
from node.kv.apply import KVStateMachine
from node.pb import rpc_pb2
from node.server.raftnode import ERR_NO_LEADER, NodeError, RaftNode

from .lessor import Lessor
from .quota import SpaceGuard

MAX_REQUEST_BYTES = int(1.5 * 1024 * 1024)
GRPC_RECV_LIMIT = MAX_REQUEST_BYTES + 512 * 1024
ERR_TOO_LARGE = "etcdserver: request is too large"
ERR_NOT_LEADER = "etcdserver: not leader"
VERSION = "3.5.0"  # the etcd API level we speak; etcdctl gates features on it

T = TypeVar("T")


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
        """Complete a response header that the state machine filled with a revision."""
        rev = resp.header.revision if resp.HasField("header") else None
        resp.header.CopyFrom(self.header(rev or None))
        return resp

    def check_size(self, req: Any) -> None:
        if req.ByteSize() > MAX_REQUEST_BYTES:
            raise KVError(ERR_TOO_LARGE, "INVALID_ARGUMENT")

    def check_has_leader(self, context: grpc.aio.ServicerContext) -> None:
        md = dict(context.invocation_metadata() or ())
        if md.get("hasleader") == "true" and not self.node.has_leader():
            raise NodeError(ERR_NO_LEADER)

    def leader_client_url(self) -> str | None:
        m = self.node.members.get(self.node.lead)
        if m is None or not m.client_urls:
            return None
        return m.client_urls[0]


def grpc_errors(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Turn NodeError/KVError into gRPC status codes with etcd's exact messages."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await fn(self, request, context)
        except (NodeError, KVError) as e:
            code = getattr(grpc.StatusCode, e.code, grpc.StatusCode.UNKNOWN)
            await context.abort(code, str(e))
            raise  # unreachable: abort raises

    return wrapper


def raise_if_error(result: Any) -> Any:
    if isinstance(result, Exception):
        raise result
    return result
