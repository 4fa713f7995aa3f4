"""A small async etcd v3 client for the rest of quorumlab (orchestrator, chaos, dashboard).

It speaks only etcd's public API plus our Admin service, so it drives a
quorumlab cluster and a real etcd cluster alike (Admin calls on real etcd
fail with UNIMPLEMENTED, which callers treat as "not available").

Failover follows etcd's Go client: reads and other safe calls move on to the
next endpoint when one is unavailable; writes are retried elsewhere only when
the server said it never took them (no leader), never after a timeout.

Every failure is a ClientError: a node.errors.EtcdError whose reason is etcd's error
constant, found by the whole text the node answered (as etcd's rpctypes), so callers
decide by `code` and `reason`, never by reading the message.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from node.errors import EtcdError, lookup
from node.errors import Reason as Reason  # re-exported: what callers of the client classify by
from node.pb import admin_pb2, admin_pb2_grpc, kv_pb2, rpc_pb2, rpc_pb2_grpc
from node.secret import ADMIN_METADATA_KEY, admin_token

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.max_send_message_length", 2 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.enable_retries", 0),
]


# what grpc's channel says when it never reached the server (grpc's own texts, which have no
# fixed list: matched as fragments, here only)
_UNREACHABLE_TEXTS = ("failed to connect", "connect failed", "connection refused")


def received_reason(code: grpc.StatusCode | None, text: str) -> Reason:
    """etcd's reason for a received (code, text); the one place a connection failure is recognised."""
    reason = lookup(text)
    if reason is Reason.UNKNOWN and code == grpc.StatusCode.UNAVAILABLE:
        low = text.lower()
        if any(s in low for s in _UNREACHABLE_TEXTS):
            return Reason.UNREACHABLE
    return reason


class ClientError(EtcdError):
    """A call failed: the code and text as received (code None: no status at all), the endpoint asked."""

    def __init__(self, code: grpc.StatusCode | None, message: str, endpoint: str = "") -> None:
        super().__init__(received_reason(code, message), message)
        self.code = code
        self.endpoint = endpoint


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range end for a prefix: the last byte below 0xff incremented; b'' -> b'\\0' (all keys)."""
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\x00"


def _b(x: str | bytes) -> bytes:
    return x.encode() if isinstance(x, str) else x


@dataclass
class _Conn:
    endpoint: str
    channel: grpc.aio.Channel
    kv: rpc_pb2_grpc.KVStub
    watch: rpc_pb2_grpc.WatchStub
    lease: rpc_pb2_grpc.LeaseStub
    cluster: rpc_pb2_grpc.ClusterStub
    maint: rpc_pb2_grpc.MaintenanceStub
    admin: admin_pb2_grpc.AdminStub
    auth: rpc_pb2_grpc.AuthStub


@dataclass(frozen=True)
class ClientTLS:
    """What etcdctl's --cacert/--cert/--key give: the CA that signed the servers (PEM) and, for a
    server with --client-cert-auth, our certificate and key. The server's name is checked against
    the endpoint's host (its certificate must list that IP or name)."""

    ca: bytes
    cert: bytes | None = None
    key: bytes | None = None

    @classmethod
    def from_files(cls, ca: Path, cert: Path | None = None, key: Path | None = None) -> ClientTLS:
        """Read the PEM files (OSError when one is missing or unreadable)."""
        return cls(ca.read_bytes(), cert.read_bytes() if cert else None, key.read_bytes() if key else None)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


class _NotSent(Exception):
    """Authenticating at an endpoint failed for want of the endpoint (unreachable, no leader, too
    slow): the request itself was never sent, so even a write may move on to the next endpoint."""

    def __init__(self, err: ClientError) -> None:
        super().__init__(str(err))
        self.err = err


def _strip(ep: str) -> str:
    return ep.split("://", 1)[-1].rstrip("/")


class Client:
    def __init__(
        self,
        endpoints: Sequence[str],
        timeout: float = 5.0,
        secret: bytes | None = None,
        tls: ClientTLS | None = None,
        user: str | None = None,
        password: str = "",
    ) -> None:
        """secret: the cluster's (its state dir's peer.secret); Admin calls then carry the token derived from it.
        tls: connect over TLS to every endpoint (a cluster started with `orchestrate up --tls`).
        user, password: etcd auth, as etcd's Go client: Authenticate on first use, send the simple
        token as metadata `token`, authenticate again when a node calls it invalid; a cluster
        with auth disabled ("authentication is not enabled") is used without a token."""
        if not endpoints:
            raise ValueError("no endpoints given")
        self._user, self._password = user, password
        self._token: str | None = None  # None: not asked yet; "": auth is not enabled
        self._auth_lock = asyncio.Lock()
        self._admin_md = ((ADMIN_METADATA_KEY, admin_token(secret)),) if secret is not None else None
        self.endpoints = [_strip(e) for e in endpoints]
        self.timeout = timeout
        self._creds = tls.credentials() if tls is not None else None
        self._conns: dict[str, _Conn] = {}
        self._next = 0

    def _conn(self, ep: str) -> _Conn:
        c = self._conns.get(ep)
        if c is None:
            ch = (
                grpc.aio.insecure_channel(ep, options=CHANNEL_OPTIONS)
                if self._creds is None
                else grpc.aio.secure_channel(ep, self._creds, options=CHANNEL_OPTIONS)
            )
            c = _Conn(
                ep,
                ch,
                rpc_pb2_grpc.KVStub(ch),
                rpc_pb2_grpc.WatchStub(ch),
                rpc_pb2_grpc.LeaseStub(ch),
                rpc_pb2_grpc.ClusterStub(ch),
                rpc_pb2_grpc.MaintenanceStub(ch),
                admin_pb2_grpc.AdminStub(ch),
                rpc_pb2_grpc.AuthStub(ch),
            )
            self._conns[ep] = c
        return c

    async def close(self) -> None:
        for c in self._conns.values():
            await c.channel.close()
        self._conns.clear()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _auth_md(self, ep: str, renew: bool = False) -> tuple[tuple[str, str], ...] | None:
        """The token metadata for calls when a user was given (authenticating at ep if needed)."""
        if self._user is None:
            return None
        stale = self._token if renew else None
        if self._token is None or renew:
            async with self._auth_lock:  # one Authenticate for every caller waiting on it, not one each
                if self._token is None or (renew and self._token == stale):
                    await self._authenticate(ep)
        return (("token", self._token),) if self._token else None

    async def _authenticate(self, ep: str) -> None:
        req = rpc_pb2.AuthenticateRequest(name=self._user, password=self._password)
        try:
            r = await self._conn(ep).auth.Authenticate(req, timeout=self.timeout)
            self._token = str(r.token)
        except grpc.aio.AioRpcError as e:
            err = ClientError(e.code(), e.details() or str(e.code()), ep)
            if err.reason != Reason.AUTH_NOT_ENABLED:
                raise err from None
            self._token = ""

    async def _auth_md_at(self, ep: str, renew: bool = False) -> tuple[tuple[str, str], ...] | None:
        """_auth_md, with an endpoint-side Authenticate failure turned into _NotSent."""
        try:
            return await self._auth_md(ep, renew)
        except ClientError as e:
            if e.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise _NotSent(e) from None
            raise

    async def _invoke(self, ep: str, service: str, method: str, req: Any, timeout: float) -> Any:
        """One call at ep with the auth token. Authenticated again, once, when the node calls the
        token invalid, or says "user name is empty" to a client that sent none because auth was
        off when it first asked (auth enabled since)."""
        stub = getattr(self._conn(ep), service)
        md = await self._auth_md_at(ep)
        try:
            return await getattr(stub, method)(req, timeout=timeout, metadata=md)
        except grpc.aio.AioRpcError as e:
            want = Reason.INVALID_AUTH_TOKEN if md is not None else Reason.USER_EMPTY
            if self._user is None or e.details() != want.text:
                raise
        return await getattr(stub, method)(req, timeout=timeout, metadata=await self._auth_md_at(ep, renew=True))

    async def _call(self, service: str, method: str, req: Any, *, safe: bool, timeout: float | None = None) -> Any:
        """Try endpoints in round-robin order; move on only when it is safe to."""
        last: ClientError | None = None
        n = len(self.endpoints)
        start = self._next
        self._next = (self._next + 1) % n
        for i in range(n):
            ep = self.endpoints[(start + i) % n]
            try:
                return await self._invoke(ep, service, method, req, timeout or self.timeout)
            except _NotSent as e:
                last = e.err
                continue
            except grpc.aio.AioRpcError as e:
                err = ClientError(e.code(), e.details() or str(e.code()), ep)
                never_taken = e.code() == grpc.StatusCode.UNAVAILABLE and err.reason in (
                    Reason.NO_LEADER,
                    Reason.UNREACHABLE,
                )
                if (
                    safe and e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                ) or never_taken:
                    last = err
                    continue
                raise err from None
        assert last is not None
        raise last

    # -- KV ------------------------------------------------------------------------------
    async def put(
        self, key: str | bytes, value: str | bytes, lease: int = 0, prev_kv: bool = False
    ) -> rpc_pb2.PutResponse:
        req = rpc_pb2.PutRequest(key=_b(key), value=_b(value), lease=lease, prev_kv=prev_kv)
        return await self._call("kv", "Put", req, safe=False)

    async def get(
        self,
        key: str | bytes,
        *,
        prefix: bool = False,
        range_end: bytes = b"",
        revision: int = 0,
        limit: int = 0,
        serializable: bool = False,
        keys_only: bool = False,
        count_only: bool = False,
        sort_order: int = 0,
        sort_target: int = 0,
    ) -> rpc_pb2.RangeResponse:
        k = _b(key)
        if prefix:
            range_end = prefix_end(k)
            if not k:
                k = b"\x00"
        req = rpc_pb2.RangeRequest(
            key=k,
            range_end=range_end,
            revision=revision,
            limit=limit,
            serializable=serializable,
            keys_only=keys_only,
            count_only=count_only,
            sort_order=sort_order,  # type: ignore[arg-type]
            sort_target=sort_target,  # type: ignore[arg-type]
        )
        return await self._call("kv", "Range", req, safe=True)

    async def get_value(self, key: str | bytes, **kw: Any) -> bytes | None:
        r = await self.get(key, **kw)
        return r.kvs[0].value if r.kvs else None

    async def delete(
        self, key: str | bytes, *, prefix: bool = False, prev_kv: bool = False
    ) -> rpc_pb2.DeleteRangeResponse:
        k = _b(key)
        req = rpc_pb2.DeleteRangeRequest(key=k, range_end=prefix_end(k) if prefix else b"", prev_kv=prev_kv)
        return await self._call("kv", "DeleteRange", req, safe=False)

    async def txn(self, req: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
        return await self._call("kv", "Txn", req, safe=False)

    async def cas(self, key: str | bytes, expect: bytes | None, new: bytes) -> bool:
        """Compare-and-set: put new if the value is expect (None: the key must not exist)."""
        k = _b(key)
        if expect is None:
            cmp = rpc_pb2.Compare(key=k, target=rpc_pb2.Compare.CREATE, result=rpc_pb2.Compare.EQUAL, create_revision=0)
        else:
            cmp = rpc_pb2.Compare(key=k, target=rpc_pb2.Compare.VALUE, result=rpc_pb2.Compare.EQUAL, value=expect)
        req = rpc_pb2.TxnRequest(
            compare=[cmp], success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k, value=new))]
        )
        return bool((await self.txn(req)).succeeded)

    async def compact(self, revision: int, physical: bool = True) -> rpc_pb2.CompactionResponse:
        return await self._call(
            "kv", "Compact", rpc_pb2.CompactionRequest(revision=revision, physical=physical), safe=False
        )

    async def watch(
        self,
        key: str | bytes,
        *,
        prefix: bool = False,
        start_revision: int = 0,
        prev_kv: bool = False,
        endpoint: str | None = None,
    ) -> AsyncIterator[kv_pb2.Event]:
        k = _b(key)
        create = rpc_pb2.WatchCreateRequest(
            key=k, range_end=prefix_end(k) if prefix else b"", start_revision=start_revision, prev_kv=prev_kv
        )
        conn = self._conn(endpoint or self.endpoints[0])
        call = conn.watch.Watch(metadata=await self._auth_md(conn.endpoint))
        await call.write(rpc_pb2.WatchRequest(create_request=create))
        try:
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    return
                if resp.canceled:
                    raise ClientError(grpc.StatusCode.CANCELLED, resp.cancel_reason or "watch canceled", conn.endpoint)
                for ev in resp.events:
                    yield ev
        finally:
            call.cancel()

    # -- leases --------------------------------------------------------------------------
    async def lease_grant(self, ttl: int, lease_id: int = 0) -> rpc_pb2.LeaseGrantResponse:
        return await self._call("lease", "LeaseGrant", rpc_pb2.LeaseGrantRequest(TTL=ttl, ID=lease_id), safe=False)

    async def lease_revoke(self, lease_id: int) -> rpc_pb2.LeaseRevokeResponse:
        return await self._call("lease", "LeaseRevoke", rpc_pb2.LeaseRevokeRequest(ID=lease_id), safe=False)

    async def lease_ttl(self, lease_id: int, keys: bool = False) -> rpc_pb2.LeaseTimeToLiveResponse:
        req = rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=keys)
        return await self._call("lease", "LeaseTimeToLive", req, safe=True)

    async def lease_keepalive_once(self, lease_id: int) -> int:
        conn = self._conn(self.endpoints[self._next % len(self.endpoints)])
        call = conn.lease.LeaseKeepAlive(timeout=self.timeout, metadata=await self._auth_md(conn.endpoint))
        try:
            await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
            resp = await call.read()
        except grpc.aio.AioRpcError as e:
            raise ClientError(e.code(), e.details() or "", conn.endpoint) from None
        finally:
            call.cancel()
        return int(resp.TTL) if resp is not grpc.aio.EOF else 0

    async def leases(self) -> list[int]:
        r = await self._call("lease", "LeaseLeases", rpc_pb2.LeaseLeasesRequest(), safe=True)
        return [ls.ID for ls in r.leases]

    # -- auth ------------------------------------------------------------------------------
    async def auth_status(self) -> rpc_pb2.AuthStatusResponse:
        """etcd 3.5's AuthStatus: whether auth is enabled and the auth revision (root only once enabled)."""
        req = rpc_pb2.AuthStatusRequest()
        return await self._call("auth", "AuthStatus", req, safe=True)

    # -- cluster and maintenance -----------------------------------------------------------
    async def members(self, linearizable: bool = False) -> rpc_pb2.MemberListResponse:
        return await self._call(
            "cluster", "MemberList", rpc_pb2.MemberListRequest(linearizable=linearizable), safe=True
        )

    async def member_add(self, peer_urls: list[str], learner: bool = False) -> rpc_pb2.MemberAddResponse:
        req = rpc_pb2.MemberAddRequest(peerURLs=peer_urls, isLearner=learner)
        return await self._call("cluster", "MemberAdd", req, safe=False)

    async def member_remove(self, member_id: int) -> rpc_pb2.MemberRemoveResponse:
        return await self._call("cluster", "MemberRemove", rpc_pb2.MemberRemoveRequest(ID=member_id), safe=False)

    async def member_promote(self, member_id: int) -> rpc_pb2.MemberPromoteResponse:
        return await self._call("cluster", "MemberPromote", rpc_pb2.MemberPromoteRequest(ID=member_id), safe=False)

    async def _at(self, endpoint: str, service: str, method: str, req: Any, timeout: float | None = None) -> Any:
        """One call to this endpoint, no failover: the caller asked about this node."""
        try:
            ep = _strip(endpoint)
            if service == "admin":
                stub = getattr(self._conn(ep), service)
                return await getattr(stub, method)(req, timeout=timeout or self.timeout, metadata=self._admin_md)
            return await self._invoke(ep, service, method, req, timeout or self.timeout)
        except _NotSent as e:
            raise e.err from None
        except grpc.aio.AioRpcError as e:
            raise ClientError(e.code(), e.details() or "", endpoint) from None

    async def status(self, endpoint: str) -> rpc_pb2.StatusResponse:
        """Maintenance.Status of one endpoint."""
        return await self._at(endpoint, "maint", "Status", rpc_pb2.StatusRequest())

    async def move_leader(self, endpoint: str, target_id: int) -> None:
        await self._at(endpoint, "maint", "MoveLeader", rpc_pb2.MoveLeaderRequest(targetID=target_id))

    async def alarms(self) -> rpc_pb2.AlarmResponse:
        return await self._call("maint", "Alarm", rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.GET), safe=True)

    # -- quorumlab's Admin service -----------------------------------------------------------
    async def admin_status(self, endpoint: str, timeout: float | None = None) -> dict[str, Any]:
        r = await self._at(endpoint, "admin", "Status", admin_pb2.StatusRequest(), timeout)
        out: dict[str, Any] = json.loads(r.json)
        return out

    async def set_faults(self, endpoint: str, rules: list[dict[str, Any]], add: bool = False) -> list[dict[str, Any]]:
        req = admin_pb2.FaultRules(rules=[admin_pb2.FaultRule(**r) for r in rules])
        r = await self._at(endpoint, "admin", "AddFaults" if add else "SetFaults", req)
        return [_rule_dict(x) for x in r.rules]

    async def clear_faults(self, endpoint: str) -> None:
        await self._at(endpoint, "admin", "ClearFaults", admin_pb2.FaultRulesRequest())

    async def list_faults(self, endpoint: str) -> list[dict[str, Any]]:
        r = await self._at(endpoint, "admin", "ListFaults", admin_pb2.FaultRulesRequest())
        return [_rule_dict(x) for x in r.rules]


def _rule_dict(r: admin_pb2.FaultRule) -> dict[str, Any]:
    return {
        "src": r.src,
        "dst": r.dst,
        "action": r.action,
        "probability": r.probability,
        "delay_ms": r.delay_ms,
        "jitter_ms": r.jitter_ms,
    }
