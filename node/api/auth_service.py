"""etcdserverpb.Auth (etcd v3.4): every call is a log entry applied by node/kv/auth.py.

As in etcd 3.4 even the reads (UserGet, UserList, RoleGet, RoleList) go through the log, so
they are linearizable and checked against the replicated state. Passwords are hashed here,
on the member that takes the request and off the event loop, before anything is proposed.
scrypt is slow on purpose (tens of ms, 16 MiB each): one thread does every password check, so a
burst of Authenticate calls queues there instead of taking every core from the event loop
(which starved Raft: 32 at once on 2 cores made proposals time out).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

from node.errors import EtcdError, Reason
from node.kv.apply import encode_auth
from node.kv.auth import authenticate_extra, check_password, hash_password
from node.pb import rpc_pb2, rpc_pb2_grpc

from .context import Ctx, grpc_errors

AUTHENTICATE_TRIES = 3  # etcd retries until the auth revision did not move under the password check
T = TypeVar("T")


class AuthService(rpc_pb2_grpc.AuthServicer):
    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self._scrypt = ThreadPoolExecutor(1, thread_name_prefix="auth-scrypt")

    async def _slow(self, fn: Callable[..., T], *args: str) -> T:
        """A password hash or check, on the one scrypt thread."""
        return await asyncio.get_running_loop().run_in_executor(self._scrypt, fn, *args)

    async def _admin_first(self, context: grpc.aio.ServicerContext) -> None:
        """Refuse a non-root caller before the scrypt hash, not after: otherwise any user (or
        anyone, without a token) makes a member spend tens of ms and 16 MiB per request. The
        entry is checked again at apply, against the replicated state."""
        await self.ctx.check_admin(context)

    async def _propose(self, method: str, request: Any, context: grpc.aio.ServicerContext, extra: str = "") -> Any:
        ai = await self.ctx.auth_info(context)
        return self.ctx.fill(await self.ctx.propose(encode_auth(method, request, ai, extra)))

    @grpc_errors
    async def AuthEnable(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._propose("AuthEnable", request, context)

    @grpc_errors
    async def AuthDisable(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._propose("AuthDisable", request, context)

    @grpc_errors
    async def AuthStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._propose("AuthStatus", request, context)

    @grpc_errors
    async def Authenticate(self, request: rpc_pb2.AuthenticateRequest, context: grpc.aio.ServicerContext) -> Any:
        """etcd's: check the password against this member's (linearizable) state, then propose
        the token assignment without the password; every member assigns `<prefix>.<index>`."""
        await self.ctx.node.read_barrier()
        auth = self.ctx.sm.auth
        for _ in range(AUTHENTICATE_TRIES):
            checked = auth.revision
            stored = auth.password_of(request.name)
            if not await self._slow(check_password, stored, request.password):
                raise EtcdError(Reason.AUTH_FAILED)
            req = rpc_pb2.AuthenticateRequest(name=request.name)
            resp = await self.ctx.propose(encode_auth("Authenticate", req, None, authenticate_extra()))
            if checked == auth.revision:
                return self.ctx.fill(resp)
        # the users changed under every password check: the token may belong to a state in which
        # the password was wrong (etcd retries until its context ends; we give up sooner)
        raise EtcdError(Reason.AUTH_OLD_REVISION)

    @grpc_errors
    async def UserAdd(self, request: rpc_pb2.AuthUserAddRequest, context: grpc.aio.ServicerContext) -> Any:
        await self._admin_first(context)
        req = rpc_pb2.AuthUserAddRequest()
        req.CopyFrom(request)
        if request.name and not (request.HasField("options") and request.options.no_password):
            req.password = await self._slow(hash_password, request.password)
        else:
            req.password = ""
        return await self._propose("UserAdd", req, context)

    @grpc_errors
    async def UserGet(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._propose("UserGet", request, context)

    @grpc_errors
    async def UserList(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._propose("UserList", request, context)

    @grpc_errors
    async def UserDelete(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._propose("UserDelete", request, context)

    @grpc_errors
    async def UserChangePassword(
        self, request: rpc_pb2.AuthUserChangePasswordRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        await self._admin_first(context)
        hashed = await self._slow(hash_password, request.password)
        req = rpc_pb2.AuthUserChangePasswordRequest(name=request.name, password=hashed)
        return await self._propose("UserChangePassword", req, context)

    @grpc_errors
    async def UserGrantRole(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._propose("UserGrantRole", request, context)

    @grpc_errors
    async def UserRevokeRole(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._propose("UserRevokeRole", request, context)

    @grpc_errors
    async def RoleAdd(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._propose("RoleAdd", request, context)

    @grpc_errors
    async def RoleGet(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._propose("RoleGet", request, context)

    @grpc_errors
    async def RoleList(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._propose("RoleList", request, context)

    @grpc_errors
    async def RoleDelete(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._propose("RoleDelete", request, context)

    @grpc_errors
    async def RoleGrantPermission(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._propose("RoleGrantPermission", request, context)

    @grpc_errors
    async def RoleRevokePermission(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._propose("RoleRevokePermission", request, context)
