"""Regression tests for the reviewed auth defects: each fails on the code before its fix.

Lease key names leaking through LeaseTimeToLive (etcd's CVE-2023-32082), a txn put reading the
old value or using someone's lease without permission, expired tokens revived by WAL replay,
node.client's failover and late `auth enable`, password hashing before the admin check, a made-up
token index stalling requests, and etcd 3.5's AuthStatus.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from node.client import Client, ClientError
from node.errors import Reason
from node.pb import rpc_pb2, rpc_pb2_grpc
from tests.procs import NodeProcs
from tests.test_auth import _ctl, _get_with, _setup_auth, _token
from tests.test_etcdctl import pytestmark  # noqa: F401  (same skip rule: needs etcdctl)


def _setup_more(eps: list[str], *steps: list[str]) -> None:
    """_setup_auth (root, alice with readwrite on app/, auth on) plus steps run as root."""
    _setup_auth(eps)
    for args in steps:
        out = _ctl(eps, "--user", "root:rootpw", *args)
        assert out.startswith("rc=0"), (args, out)


async def _start(
    node_cluster: Callable[..., NodeProcs], n: int, extra: list[str] | None = None
) -> tuple[NodeProcs, str]:
    c = node_cluster(n, heartbeat_ms=50, election_ms=500, extra=extra)
    c.start_all()
    return c, await c.wait_leader()


async def _ttl_keys(c: NodeProcs, name: str, lease: int, token: str | None) -> Any:
    async with grpc.aio.insecure_channel(c.endpoint(name)) as ch:
        return await rpc_pb2_grpc.LeaseStub(ch).LeaseTimeToLive(
            rpc_pb2.LeaseTimeToLiveRequest(ID=lease, keys=True),
            metadata=(("token", token),) if token else None,
            timeout=10,
        )


async def test_lease_time_to_live_keys_need_read_on_every_key(node_cluster: Callable[..., NodeProcs]) -> None:
    """CVE-2023-32082: alice must not learn the names of root's keys from a lease ID, neither at
    the leader nor through a follower (which forwards to the leader with alice's token)."""
    c, leader = await _start(node_cluster, 3)
    eps = c.endpoints()
    await asyncio.to_thread(_setup_auth, [c.endpoint(leader)])
    async with Client(eps, user="root", password="rootpw", timeout=10) as root:
        secret = (await root.lease_grant(60)).ID
        await root.put("secret/k", "v", lease=secret)
        mine = (await root.lease_grant(60)).ID
        await root.put("app/mine", "v", lease=mine)
    follower = next(n for n in c.names if n != leader)
    token = await _token(c, leader, "alice", "alicepw")
    for n in (leader, follower):
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await _ttl_keys(c, n, secret, token)
        assert (ei.value.code(), ei.value.details()) == (
            grpc.StatusCode.PERMISSION_DENIED,
            Reason.PERMISSION_DENIED.text,
        ), n
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await _ttl_keys(c, n, secret, None)
        assert ei.value.details() == Reason.USER_EMPTY.text, n
        r = await _ttl_keys(c, n, mine, token)  # every attached key readable: the names are hers to see
        assert list(r.keys) == [b"app/mine"] and r.TTL > 0, n
    async with Client([c.endpoint(follower)], user="alice", password="alicepw", timeout=10) as alice:
        r = await alice.lease_ttl(secret)  # without keys: open, as in etcd
        assert r.TTL > 0 and not r.keys
        assert secret in await alice.leases()  # LeaseLeases lists IDs only, as etcd 3.5.9 still does


async def test_txn_put_prev_kv_needs_read_and_lease_keys_need_write(node_cluster: Callable[..., NodeProcs]) -> None:
    c, _ = await _start(node_cluster, 1)
    eps = c.endpoints()
    await asyncio.to_thread(
        _setup_more,
        eps,
        ["role", "add", "wo"],
        ["role", "grant-permission", "wo", "write", "wo/", "--prefix"],
        ["user", "add", "wuser:wpw"],
        ["user", "grant-role", "wuser", "wo"],
        ["put", "wo/k", "old-secret"],
    )
    put_prev = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"wo/k", value=b"new", prev_kv=True))
    async with Client(eps, user="wuser", password="wpw", timeout=10) as w:
        with pytest.raises(ClientError) as ei:
            await w.put("wo/k", "new", prev_kv=True)  # the single Put already refused it
        assert ei.value.reason is Reason.PERMISSION_DENIED
        with pytest.raises(ClientError) as ei:
            r = await w.txn(rpc_pb2.TxnRequest(success=[put_prev]))
            pytest.fail(f"write-only user got {r.responses[0].response_put.prev_kv.value!r}")
        assert ei.value.reason is Reason.PERMISSION_DENIED
        await w.txn(rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"wo/k"))]))
    async with Client(eps, user="root", password="rootpw", timeout=10) as root:
        lease = (await root.lease_grant(60)).ID
        await root.put("secret/k", "v", lease=lease)
    on_lease = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"app/x", value=b"v", lease=lease))
    async with Client(eps, user="alice", password="alicepw", timeout=10) as alice:
        with pytest.raises(ClientError) as ei:
            await alice.put("app/x", "v", lease=lease)
        assert ei.value.reason is Reason.PERMISSION_DENIED
        with pytest.raises(ClientError) as ei:
            await alice.txn(rpc_pb2.TxnRequest(success=[on_lease]))
        assert ei.value.reason is Reason.PERMISSION_DENIED
        assert await alice.get_value("app/x") is None


def test_replayed_authenticate_assigns_only_what_is_left_of_the_ttl() -> None:
    """The TTL runs from the proposer's wall clock carried in the entry, so replaying the entry
    later (restart) cannot hand out a fresh TTL."""
    from node.kv.apply import KVStateMachine, encode_auth
    from node.kv.auth import AuthStore, User, authenticate_extra

    wall = [1_000_000.0]
    mono = [50.0]
    sm = KVStateMachine()
    sm.auth = AuthStore(clock=lambda: mono[0], wall=lambda: wall[0], ttl=300.0)
    sm.auth.users["u"] = User("scrypt$00$00")
    sm.auth.enabled = True
    req = rpc_pb2.AuthenticateRequest(name="u")
    res = sm.apply(10, encode_auth("Authenticate", req, None, authenticate_extra(now=wall[0] - 100)))
    assert sm.auth.token_user(res.token) == "u"
    assert sm.auth.tokens[res.token][1] == mono[0] + 300  # a use refreshes the full TTL
    fresh = KVStateMachine()  # "after restart": the same entries replayed, 200 s later than issue
    fresh.auth = AuthStore(clock=lambda: mono[0], wall=lambda: wall[0], ttl=300.0)
    fresh.auth.users["u"], fresh.auth.enabled = User("scrypt$00$00"), True
    old = fresh.apply(10, encode_auth("Authenticate", req, None, authenticate_extra(now=wall[0] - 400)))
    assert fresh.auth.token_user(old.token) is None, "a token 400 s old came back to life"
    recent = fresh.apply(11, encode_auth("Authenticate", req, None, authenticate_extra(now=wall[0] - 100)))
    assert fresh.auth.tokens[recent.token][1] == mono[0] + 200, "only what is left of the TTL"
    legacy = fresh.apply(12, encode_auth("Authenticate", req, None, "abcdefghijklmnop"))  # pre-fix entries
    assert legacy.token == "abcdefghijklmnop.12" and fresh.auth.token_user(legacy.token) == "u"


async def test_expired_token_stays_dead_after_kill_and_restart(node_cluster: Callable[..., NodeProcs]) -> None:
    ttl = 4
    c, leader = await _start(node_cluster, 1, extra=["--auth-token-ttl", str(ttl)])  # etcd's flag
    await asyncio.to_thread(_setup_auth, c.endpoints())
    token = await _token(c, leader, "alice", "alicepw")
    issued = time.monotonic()
    await _get_with(c, leader, token, b"app/k")  # valid now
    await asyncio.sleep(max(0.0, issued + ttl + 1.0 - time.monotonic()))
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await _get_with(c, leader, token, b"app/k")
    assert ei.value.details() == Reason.INVALID_AUTH_TOKEN.text, "--auth-token-ttl must shorten the TTL"
    c.kill(leader)
    c.start(leader)
    await c.wait_leader()
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await _get_with(c, leader, token, b"app/k")
    assert ei.value.details() == Reason.INVALID_AUTH_TOKEN.text, "WAL replay revived an expired token"
    fresh = await _token(c, leader, "alice", "alicepw")  # and new ones still work after the restart
    await _get_with(c, leader, fresh, b"app/k")


async def test_client_fails_over_when_authenticating_and_notices_auth_enable(
    node_cluster: Callable[..., NodeProcs],
) -> None:
    c, _ = await _start(node_cluster, 1)
    eps = c.endpoints()
    async with Client(eps, user="alice", password="alicepw", timeout=10) as early:
        await early.put("app/before", "1")  # auth off: the client remembers "no token needed"
        await asyncio.to_thread(_setup_auth, eps)
        await early.put("app/after", "2")  # auth on since: "user name is empty", authenticate, retry
        assert await early.get_value("app/after") == b"2"
    async with Client(["127.0.0.1:1", *eps], user="alice", password="alicepw", timeout=5) as cl:
        await cl.put("app/failover", "3")  # a write too: Authenticate failed, the put was never sent
        assert await cl.get_value("app/failover") == b"3"
    async with Client(["127.0.0.1:1"], user="alice", password="alicepw", timeout=5) as dead:
        with pytest.raises(ClientError) as ei:
            await dead.get_value("app/x")
        assert ei.value.reason is Reason.UNREACHABLE


async def test_non_root_user_add_and_passwd_are_refused_before_any_log_entry(
    node_cluster: Callable[..., NodeProcs],
) -> None:
    """Refused at the API, before the scrypt hash: no entry is proposed (the apply-time check
    alone would have cost a hash and a log entry per request)."""
    c, leader = await _start(node_cluster, 1)
    eps = c.endpoints()
    await asyncio.to_thread(_setup_auth, eps)
    token = await _token(c, leader, "alice", "alicepw")
    before = (await c.statuses())[leader]["commit"]
    async with grpc.aio.insecure_channel(c.endpoint(leader)) as ch:
        stub = rpc_pb2_grpc.AuthStub(ch)
        for md, want in (((("token", token),), Reason.PERMISSION_DENIED), (None, Reason.USER_EMPTY)):
            for call in (
                stub.UserAdd(rpc_pb2.AuthUserAddRequest(name="mallory", password="pw"), metadata=md, timeout=10),
                stub.UserChangePassword(
                    rpc_pb2.AuthUserChangePasswordRequest(name="root", password="pw"), metadata=md, timeout=10
                ),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await call
                assert ei.value.details() == want.text
    assert (await c.statuses())[leader]["commit"] == before


async def test_made_up_token_index_is_refused_at_once(node_cluster: Callable[..., NodeProcs]) -> None:
    c, leader = await _start(node_cluster, 3)
    await asyncio.to_thread(_setup_auth, [c.endpoint(leader)])
    good = await _token(c, leader, "alice", "alicepw")
    for n in c.names:
        t0 = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await _get_with(c, n, "abcdefghijklmnop.999999999", b"app/k")
        took = time.monotonic() - t0
        assert ei.value.details() == Reason.INVALID_AUTH_TOKEN.text
        assert took < 2.5, f"{n} waited {took:.1f} s for an index nobody committed"
        await _get_with(c, n, good, b"app/k")  # a real token still works everywhere


async def test_auth_status(node_cluster: Callable[..., NodeProcs]) -> None:
    c, _ = await _start(node_cluster, 1)
    eps = c.endpoints()
    async with Client(eps) as anon:
        st = await anon.auth_status()
        assert not st.enabled and st.authRevision >= 1 and st.header.cluster_id
    await asyncio.to_thread(_setup_auth, eps)
    async with Client(eps, user="root", password="rootpw") as root:
        on = await root.auth_status()
        assert on.enabled and on.authRevision > st.authRevision
    async with Client(eps, user="alice", password="alicepw") as alice:
        with pytest.raises(ClientError) as ei:
            await alice.auth_status()
        assert ei.value.reason is Reason.PERMISSION_DENIED
    async with Client(eps) as anon:
        with pytest.raises(ClientError) as ei:
            await anon.auth_status()
        assert ei.value.reason is Reason.USER_EMPTY


async def test_authenticate_gives_up_with_old_revision_when_users_keep_changing() -> None:
    """A token must not be handed out when the auth state moved under every password check.

    The condition (the revision moves during each of the tries) cannot be forced with real
    processes, so this drives the real AuthService and AuthStore with a stand-in for the node
    whose every proposal lands after another change to the users (the revision moves), as when
    a busy root keeps editing them."""
    from types import SimpleNamespace

    from node.api.auth_service import AuthService
    from node.kv.auth import AuthStore, User, hash_password

    auth = AuthStore(ttl=300.0)
    auth.users["alice"] = User(hash_password("pw"))
    auth.enabled = True
    proposals: list[bytes] = []

    async def propose(payload: bytes) -> Any:
        proposals.append(payload)
        auth.revision += 1  # someone else's change was applied first
        return rpc_pb2.AuthenticateResponse(token=f"t.{len(proposals)}")

    async def read_barrier() -> int:
        return 0

    class Aborted(Exception):
        pass

    async def abort(code: grpc.StatusCode, text: str) -> None:
        raise Aborted(code, text)

    ctx = SimpleNamespace(
        node=SimpleNamespace(read_barrier=read_barrier),
        sm=SimpleNamespace(auth=auth),
        propose=propose,
        fill=lambda r: r,
    )
    svc = AuthService(ctx)  # type: ignore[arg-type]
    req = rpc_pb2.AuthenticateRequest(name="alice", password="pw")
    with pytest.raises(Aborted) as ei:
        got = await svc.Authenticate(req, SimpleNamespace(abort=abort))  # type: ignore[arg-type]
        pytest.fail(f"got token {got.token} although the auth revision moved under every check")
    assert ei.value.args == (grpc.StatusCode.INVALID_ARGUMENT, Reason.AUTH_OLD_REVISION.text)
    assert len(proposals) == 3
    proposals.clear()

    async def quiet(payload: bytes) -> Any:
        proposals.append(payload)
        return rpc_pb2.AuthenticateResponse(token="t.1")

    ctx.propose = quiet
    assert (await svc.Authenticate(req, SimpleNamespace(abort=abort))).token == "t.1"  # type: ignore[arg-type]
    assert len(proposals) == 1  # a quiet auth state: one try


def test_auth_token_ttl_flag_reaches_the_auth_store_and_refuses_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    from node.__main__ import build_parser, check_flags
    from node.kv import KVStateMachine

    base = ["--name", "n1", "--data-dir", "/nonexistent", "--initial-cluster", "n1=127.0.0.1:1"]
    args = build_parser().parse_args([*base, "--auth-token-ttl", "0"])
    assert check_flags(args) == "--auth-token-ttl must be a positive number of seconds, not 0"
    assert KVStateMachine(auth_token_ttl=7).auth.ttl == 7
    monkeypatch.setenv("QUORUMLAB_AUTH_TOKEN_TTL", "9")  # the environment knob still works without the flag
    assert KVStateMachine().auth.ttl == 9.0
    monkeypatch.delenv("QUORUMLAB_AUTH_TOKEN_TTL")
    assert KVStateMachine().auth.ttl == 300.0
