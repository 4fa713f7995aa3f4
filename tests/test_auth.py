"""etcd's Auth service: the same etcdctl script against quorumlab and real etcd 3.4, line by line.

Plus what only our cluster can show: a token from one member works on another, auth state
survives kill -9 and a snapshot install, and permission checks on prefixes really refuse.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tests.procs import EtcdProcs, NodeProcs
from tests.test_etcdctl import Step, _start, etcdctl, mask, pytestmark  # noqa: F401  (same skip rule)

ROOT = ["--user", "root:rootpw"]
ALICE = ["--user", "alice:alicepw"]
BOB = ["--user", "bob:bobpw"]

SCRIPT = [
    Step(["auth", "enable"], name="enable without root user"),
    Step(["user", "add", "root:rootpw"]),
    Step(["user", "add", "root:again"], name="duplicate user"),
    Step(["role", "add", "r1"]),
    Step(["role", "add", "r1"], name="duplicate role"),
    Step(["role", "grant-permission", "r1", "readwrite", "foo"]),
    Step(["role", "grant-permission", "r1", "read", "pre/", "--prefix"]),
    Step(["role", "grant-permission", "r1", "write", "w/", "w0"]),
    Step(["role", "grant-permission", "nosuch", "read", "x"], name="grant on missing role"),
    Step(["user", "add", "alice:alicepw"]),
    Step(["user", "add", "bob:bobpw"]),
    Step(["user", "add", "carol", "--no-password"]),
    Step(["user", "get", "carol"]),
    Step(["user", "grant-role", "alice", "r1"]),
    Step(["user", "grant-role", "alice", "nosuch"], name="grant missing role"),
    Step(["user", "grant-role", "root", "root"]),
    Step(["put", "pre/a", "1"]),
    Step(["put", "foo", "v0"]),
    Step(["auth", "enable"]),
    Step(["get", "foo"], name="no credentials"),
    Step(["put", "foo", "x"], name="write without credentials"),
    Step([*ALICE, "put", "foo", "v1"]),
    Step([*ALICE, "get", "foo"]),
    Step([*ALICE, "put", "foo", "v2", "--prev-kv"]),
    Step([*ALICE, "get", "pre/", "--prefix"]),
    Step([*ALICE, "get", "pre/a"]),
    Step([*ALICE, "put", "pre/b", "2"], name="write on read-only prefix"),
    Step([*ALICE, "get", "pr", "--prefix"], name="prefix wider than granted"),
    Step([*ALICE, "get", "foo", "--prefix"], name="prefix of a single-key grant"),
    Step([*ALICE, "put", "w/x", "1"]),
    Step([*ALICE, "get", "w/x"], name="read on write-only range"),
    Step([*ALICE, "del", "w/x"]),
    Step([*ALICE, "del", "foo", "--prev-kv"]),
    Step([*ALICE, "put", "other", "1"], name="write outside grants"),
    Step([*ALICE, "get", "pre/a", "-w", "json"], name="the denied put took no revision"),
    Step([*BOB, "get", "foo"], name="user without roles"),
    Step(["--user", "alice:wrong", "get", "foo"], name="wrong password"),
    Step(["--user", "nobody:pw", "get", "foo"], name="unknown user"),
    Step(["--user", "carol:any", "get", "foo"], name="no-password user cannot authenticate"),
    Step([*ALICE, "txn"], stdin='value("foo") = "v2"\n\nput foo t1\n\nget pre/a\n\n', name="txn allowed"),
    Step([*ALICE, "txn"], stdin='value("other") = "1"\n\nput foo t2\n\n\n', name="txn compare denied"),
    Step([*ALICE, "txn"], stdin="\nput pre/a x\n\n\n", name="txn put denied"),
    Step([*ALICE, "watch", "other"], timeout=3, name="watch denied"),
    Step([*ALICE, "user", "list"], name="user list needs root"),
    Step([*ALICE, "role", "get", "r1"], name="role get of own role"),
    Step([*ALICE, "user", "get", "alice"], name="user get of self"),
    Step([*ALICE, "user", "get", "bob"], name="user get of another"),
    Step([*ALICE, "role", "add", "r2"], name="role add needs root"),
    Step([*ALICE, "member", "add", "x", "--peer-urls=http://127.0.0.1:1"], name="member add needs root"),
    Step([*ALICE, "endpoint", "hashkv"], name="hashkv needs root", numbers=True),
    Step([*ROOT, "user", "list"]),
    Step([*ROOT, "role", "list"]),
    Step([*ROOT, "role", "get", "r1"]),
    Step([*ROOT, "user", "get", "alice"]),
    Step([*ROOT, "get", "", "--prefix", "--keys-only"], name="root reads everything"),
    Step([*ROOT, "user", "delete", "root"], name="delete root while enabled"),
    Step([*ROOT, "user", "revoke-role", "root", "root"], name="revoke root's root role"),
    Step([*ROOT, "role", "delete", "root"], name="delete root role"),
    Step([*ROOT, "role", "revoke-permission", "r1", "pre/", "--prefix"]),
    Step([*ROOT, "role", "revoke-permission", "r1", "nothing"], name="revoke missing permission"),
    Step([*ALICE, "get", "pre/a"], name="after revoke"),
    Step([*ROOT, "user", "revoke-role", "alice", "r1"]),
    Step([*ROOT, "user", "revoke-role", "alice", "r1"], name="revoke twice"),
    Step([*ROOT, "user", "passwd", "bob", "--interactive=false"], stdin="bobpw2\n"),
    Step([*BOB, "get", "foo"], name="old password"),
    Step([*ROOT, "user", "delete", "bob"]),
    Step([*ROOT, "role", "delete", "r1"]),
    Step([*ROOT, "auth", "disable"]),
    Step(["get", "foo"], name="after disable"),
    Step(["user", "list"]),
    Step(["auth", "disable"], name="disable twice"),
]


def _run_script(eps: list[str]) -> list[str]:
    return [mask(etcdctl(eps, step), step) for step in SCRIPT]


async def test_auth_script_matches_real_etcd(node_cluster: Callable[..., NodeProcs]) -> None:
    ours = node_cluster(1, heartbeat_ms=50, election_ms=500)
    ours.start_all()
    await ours.wait_leader()
    theirs = node_cluster(1)
    theirs.__class__ = EtcdProcs
    theirs.start_all()
    await theirs.wait_leader()
    a_out = await asyncio.to_thread(_run_script, ours.endpoints())
    b_out = await asyncio.to_thread(_run_script, theirs.endpoints())
    diffs = [
        f"--- etcdctl {' '.join(s.args)} {s.name}\nquorumlab:\n{a}\netcd:\n{b}"
        for s, a, b in zip(SCRIPT, a_out, b_out, strict=True)
        if a != b
    ]
    assert not diffs, "\n\n".join(diffs)


def _ctl(eps: list[str], *args: str, stdin: str = "") -> str:
    return etcdctl(eps, Step(list(args), stdin=stdin))


def _setup_auth(eps: list[str]) -> None:
    for args in (
        ["user", "add", "root:rootpw"],
        ["user", "grant-role", "root", "root"],
        ["role", "add", "r1"],
        ["role", "grant-permission", "r1", "readwrite", "app/", "--prefix"],
        ["user", "add", "alice:alicepw"],
        ["user", "grant-role", "alice", "r1"],
        ["auth", "enable"],
    ):
        out = _ctl(eps, *args)
        assert out.startswith("rc=0"), (args, out)


async def test_prefix_permission_refuses_outside_the_prefix(node_cluster: Callable[..., NodeProcs]) -> None:
    """Planted-bug guard: a grant on prefix app/ must not open the keys around it."""
    c = node_cluster(1, heartbeat_ms=50, election_ms=500)
    c.start_all()
    await c.wait_leader()
    eps = c.endpoints()
    await asyncio.to_thread(_setup_auth, eps)
    assert "rc=0" in _ctl(eps, *ALICE, "put", "app/x", "1")
    assert "app/x\n1" in _ctl(eps, *ALICE, "get", "app/", "--prefix")
    for args in (["get", "ap", "--prefix"], ["get", "app0"], ["put", "apq", "1"], ["get", "app/", "--from-key"]):
        out = _ctl(eps, *ALICE, *args)
        assert "Error: etcdserver: permission denied" in out, (args, out)


async def _token(c: NodeProcs, name: str, user: str, pw: str) -> str:
    import grpc

    from node.pb import rpc_pb2, rpc_pb2_grpc

    async with grpc.aio.insecure_channel(c.endpoint(name)) as ch:
        r = await rpc_pb2_grpc.AuthStub(ch).Authenticate(
            rpc_pb2.AuthenticateRequest(name=user, password=pw), timeout=10
        )
    return str(r.token)


async def _get_with(c: NodeProcs, name: str, token: str, key: bytes) -> Any:
    import grpc

    from node.pb import rpc_pb2, rpc_pb2_grpc

    async with grpc.aio.insecure_channel(c.endpoint(name)) as ch:
        return await rpc_pb2_grpc.KVStub(ch).Range(
            rpc_pb2.RangeRequest(key=key), metadata=(("token", token),), timeout=10
        )


async def test_token_from_one_member_works_on_another_and_state_survives(
    node_cluster: Callable[..., NodeProcs],
) -> None:
    import grpc

    c = node_cluster(3, heartbeat_ms=50, election_ms=500)
    c.start_all()
    await c.wait_leader()
    eps = c.endpoints()
    await asyncio.to_thread(_setup_auth, eps)
    assert "rc=0" in _ctl(eps, *ALICE, "put", "app/k", "v")
    token = await _token(c, "n1", "alice", "alicepw")
    assert token.count(".") == 1 and len(token.split(".")[0]) == 16
    for n in ("n1", "n2", "n3"):
        r = await _get_with(c, n, token, b"app/k")
        assert [kv.value for kv in r.kvs] == [b"v"], n
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await _get_with(c, "n2", "bogus.999999", b"app/k")
    assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert ei.value.details() == "etcdserver: invalid auth token"
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await _get_with(c, "n3", token, b"zzz")
    assert ei.value.details() == "etcdserver: permission denied"

    # kill -9 every member and restart: users, roles and the enabled flag come back from the WAL
    for n in ("n1", "n2", "n3"):
        c.kill(n)
    for n in ("n1", "n2", "n3"):
        c.start(n)
    await c.wait_leader()
    assert "Error: etcdserver: user name is empty" in _ctl(eps, "get", "app/k")
    assert "app/k\nv" in _ctl(eps, *ALICE, "get", "app/k")
    assert "permission denied" in _ctl(eps, *ALICE, "get", "other")
    assert "alice\nroot" in _ctl(eps, *ROOT, "user", "list")


async def test_node_client_authenticates_with_user_and_password(node_cluster: Callable[..., NodeProcs]) -> None:
    from node.client import Client, ClientError
    from node.errors import Reason

    c = node_cluster(1, heartbeat_ms=50, election_ms=500)
    c.start_all()
    await c.wait_leader()
    async with Client(c.endpoints(), user="alice", password="alicepw") as cl:
        await cl.put("app/before", "1")  # auth not enabled yet: works without a token
    await asyncio.to_thread(_setup_auth, c.endpoints())
    async with Client(c.endpoints(), user="alice", password="alicepw") as cl:
        await cl.put("app/k", "v")
        assert await cl.get_value("app/k") == b"v"
        with pytest.raises(ClientError) as ei:
            await cl.put("elsewhere", "v")
        assert ei.value.reason is Reason.PERMISSION_DENIED
    async with Client(c.endpoints()) as anon:
        with pytest.raises(ClientError) as ei:
            await anon.get_value("app/k")
        assert ei.value.reason is Reason.USER_EMPTY
    async with Client(c.endpoints(), user="alice", password="nope") as bad:
        with pytest.raises(ClientError) as ei:
            await bad.get_value("app/k")
        assert ei.value.reason is Reason.AUTH_FAILED


async def test_auth_state_travels_in_the_snapshot_and_old_snapshots_load() -> None:
    """What a new member gets by snapshot install (and a restart from a snapshot) is what it restores."""
    import msgpack

    from node.kv.apply import KVStateMachine, encode_auth
    from node.kv.auth import hash_password
    from node.pb import auth_pb2, rpc_pb2

    sm = KVStateMachine()
    old = await sm.snapshot_async()
    assert "auth" not in msgpack.unpackb(old), "a cluster that never used auth keeps the old format"
    steps = [
        ("UserAdd", rpc_pb2.AuthUserAddRequest(name="root", password=hash_password("pw"))),
        ("UserGrantRole", rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root")),
        ("RoleAdd", rpc_pb2.AuthRoleAddRequest(name="r")),
        (
            "RoleGrantPermission",
            rpc_pb2.AuthRoleGrantPermissionRequest(
                name="r", perm=auth_pb2.Permission(permType=auth_pb2.Permission.READ, key=b"a", range_end=b"b")
            ),
        ),
        ("AuthEnable", rpc_pb2.AuthEnableRequest()),
    ]
    for i, (method, req) in enumerate(steps, start=1):
        res = sm.apply(i, encode_auth(method, req, None))
        assert not isinstance(res, Exception), (method, res)
    snap = await sm.snapshot_async()
    fresh = KVStateMachine()
    fresh.restore(snap)
    assert fresh.auth.dump() == sm.auth.dump()
    assert fresh.auth.enabled and fresh.auth.roles["r"][0].key == b"a"
    assert b"pw" not in snap.replace(b"pwd", b"")  # only the hash is stored
    fresh.restore(old)  # a snapshot from before auth: auth off, nothing kept
    assert not fresh.auth.enabled and not fresh.auth.users


async def test_new_member_gets_auth_by_snapshot_and_enforces_it(node_cluster: Callable[..., NodeProcs]) -> None:
    """A member added after the log was compacted learns users, roles and the enabled flag only
    from the snapshot it installs: it must refuse what the others refuse and honour their tokens."""
    import grpc

    from node.client import Client
    from orchestrator.ports import free_ports

    c = node_cluster(
        3, heartbeat_ms=50, election_ms=500, extra=["--snapshot-count", "40", "--snapshot-catchup-entries", "5"]
    )
    c.start_all()
    leader = await c.wait_leader()
    eps = c.endpoints()
    await asyncio.to_thread(_setup_auth, eps)
    auth_idx = (await c.statuses([leader]))[leader]["commit"]  # every auth entry is at or below this
    async with Client(eps, user="alice", password="alicepw", timeout=10) as cl:
        for i in range(150):
            await cl.put(f"app/{i:04d}", f"v{i}")
    st = (await c.statuses([leader]))[leader]
    assert st["snapshot_index"] > auth_idx + 5, "the leader must have compacted the auth entries away"

    # MemberAdd (root only) then start n4 with --initial-cluster-state existing
    (c.client["n4"], c.peer["n4"]) = free_ports(2)
    async with Client(eps, user="root", password="rootpw", timeout=10) as root:
        await root.member_add([f"http://127.0.0.1:{c.peer['n4']}"])
    c.names.append("n4")
    c.start("n4", "existing", initial=",".join(f"{n}=127.0.0.1:{c.peer[n]}" for n in c.names))
    await c.wait_applied(["n4"], st["commit"], timeout=30)
    assert (await c.statuses(["n4"]))["n4"]["snapshot_index"] > auth_idx  # it could not replay the auth entries

    n4 = [c.endpoint("n4")]
    assert "Error: etcdserver: user name is empty" in _ctl(n4, "get", "app/0001")
    assert "app/0001\nv1" in _ctl(n4, *ALICE, "get", "app/0001", "--consistency=s")
    assert "permission denied" in _ctl(n4, *ALICE, "get", "other", "--consistency=s")
    assert "authentication failed" in _ctl(n4, "--user", "alice:wrong", "get", "app/0001")
    assert "alice\nroot" in _ctl(n4, *ROOT, "user", "list")
    for issuer in ("n1", "n4"):  # a token issued elsewhere is honoured here, and the other way round
        token = await _token(c, issuer, "alice", "alicepw")
        reader = "n4" if issuer != "n4" else "n2"
        r = await _get_with(c, reader, token, b"app/0002")
        assert [kv.value for kv in r.kvs] == [b"v2"], issuer
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await _get_with(c, reader, token, b"other")
        assert ei.value.details() == "etcdserver: permission denied"


async def test_concurrent_first_calls_share_one_authenticate(node_cluster: Callable[..., NodeProcs]) -> None:
    """32 calls racing on a fresh Client must cost one Authenticate (one log entry), not 32: a
    load tool with many workers per client otherwise floods the members' scrypt checks."""
    from node.client import Client

    c = node_cluster(1, heartbeat_ms=50, election_ms=500)
    c.start_all()
    await c.wait_leader()
    await asyncio.to_thread(_setup_auth, c.endpoints())
    async with Client(c.endpoints(), user="alice", password="alicepw", timeout=30) as cl:
        before = (await c.statuses())["n1"]["commit"]
        got = await asyncio.gather(*(cl.get_value(f"app/{i}") for i in range(32)))  # reads: no log entries
        after = (await c.statuses())["n1"]["commit"]
    assert got == [None] * 32
    assert after - before == 1, f"{after - before} Authenticate entries for one client"
