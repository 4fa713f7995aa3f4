"""Issue #11, peer authentication and Admin credentials: a stranger without the cluster secret changes
nothing and learns nothing, floods stay bounded, and Admin needs the credential.

Real node processes started with --peer-auth-file; the attacks are tests/peer_attacks.py, run both
as a process that ignores the authentication and as one that speaks it with a made-up proof.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from chaos.net import LocalBackend, NetError
from node.client import Client, ClientError
from node.pb import admin_pb2, admin_pb2_grpc
from node.raft import Entry, Message, MsgType, Snapshot
from node.secret import ADMIN_METADATA_KEY, SecretError, admin_token, load_secret, write_secret
from node.server.codec import F_HELLO, F_SNAP_CHUNK, msg_to_wire, pack
from node.server.transport import SNAPSHOT_LIMIT, Transport, authenticate_to
from orchestrator import config as cfgmod
from orchestrator.cluster import Cluster
from orchestrator.engines import engine_for
from tests import peer_attacks as attack
from tests.procs import NodeProcs

Make = Callable[..., NodeProcs]
SECRET = b"test-secret-" + os.urandom(16).hex().encode()
RSS_BOUND_MB = 40  # growth allowed while a stranger floods the peer port with 200 MiB


async def _settled(c: NodeProcs) -> dict[str, dict[str, Any]]:
    """Statuses once there is a leader and every member applied what it committed."""
    async with c.client_for() as cl:
        for _ in range(100):
            try:
                await cl.put("warm", "x")
                break
            except ClientError:
                await asyncio.sleep(0.1)
    await c.wait_leader()
    await asyncio.sleep(0.5)
    return await c.statuses()


def _ids(c: NodeProcs) -> tuple[int, dict[str, int]]:
    return attack.ids({n: f"127.0.0.1:{c.peer[n]}" for n in c.names}, c.token)


@pytest.mark.parametrize("fake_auth", [False, True], ids=["no-auth", "made-up-proof"])
async def test_stranger_cannot_append_vote_or_discover(node_cluster: Make, fake_auth: bool) -> None:
    c = node_cluster(3, secret=SECRET)
    c.start_all()
    before = await _settled(c)
    cid, mids = _ids(c)
    target = next(n for n, s in before.items() if s["role"] != "leader")
    leader = before[target]["leader"]
    port, st = c.peer[target], before[target]

    append = attack.forged_append(mids[leader], mids[target], st["term"] + 100, st["last_index"], st["term"], b"forged")
    vote = attack.forged_vote(mids[leader], mids[target], st["term"] + 50)
    pre_vote = Message(MsgType.PRE_VOTE, to=mids[target], frm=mids[leader], term=st["term"] + 60, index=1 << 40)
    replies = [await attack.send_msgs(port, cid, m.frm, m.to, [m], fake_auth) for m in (append, vote, pre_vote)]
    # what the node told the stranger: no cluster id, no member ids, no refusal naming this member
    told = {"discover": await attack.discover(port, fake_auth), "bad hello": await attack.bad_hello(port, fake_auth)}
    await asyncio.sleep(1.0)

    after = await c.statuses()
    forged = {}
    for n in c.names:
        async with Client([c.endpoint(n)], timeout=2.0) as cl:
            forged[n] = await cl.get_value("forged", serializable=True)
    # a real election may happen on a loaded machine; the forged terms (+50 and more) may not
    assert (
        {n: s["term"] < st["term"] + 50 for n, s in after.items()},
        forged,
        replies,
        told,
    ) == (
        {n: True for n in after},
        {n: None for n in c.names},
        [attack.CLOSED] * 3,
        {"discover": attack.CLOSED, "bad hello": attack.CLOSED},
    )
    log = c.log(target)
    assert "refusing peer connection" in log
    assert "Traceback" not in log


async def test_floods_from_a_stranger_keep_memory_bounded(node_cluster: Make) -> None:
    c = node_cluster(3, secret=SECRET)
    c.start_all()
    before = await _settled(c)
    cid, mids = _ids(c)
    target = next(n for n, s in before.items() if s["role"] != "leader")
    pid, port = c.procs[target].pid, c.peer[target]
    rss0 = attack.rss_mb(pid)
    for fake_auth in (False, True):
        sent, peak = await attack.snapshot_flood(
            port, cid, mids[before[target]["leader"]], mids[target], 200, pid, fake_auth
        )
        assert peak - rss0 < RSS_BOUND_MB, f"snapshot flood: RSS {rss0:.0f} -> {peak:.0f} MB after {sent} MiB"
        assert sent < 200
    sent, peak = await attack.big_frame(port, (1 << 32) - 1, 60, pid)
    assert peak - rss0 < RSS_BOUND_MB, f"big frame: RSS {rss0:.0f} -> {peak:.0f} MB after {sent} MiB"
    assert sent < 60
    after = await c.statuses()
    assert after[target]["term"] < before[target]["term"] + 50  # nothing forged; a real election may happen
    assert "Traceback" not in c.log(target)


async def _admin_call(endpoint: str, method: str, token: str | None) -> grpc.StatusCode:
    md = ((ADMIN_METADATA_KEY, token),) if token is not None else None
    req: Any = admin_pb2.CampaignRequest() if method == "Campaign" else admin_pb2.FaultRulesRequest()
    if method == "Status":
        req = admin_pb2.StatusRequest()
    async with grpc.aio.insecure_channel(endpoint) as ch:
        try:
            await getattr(admin_pb2_grpc.AdminStub(ch), method)(req, timeout=3.0, metadata=md)
        except grpc.aio.AioRpcError as e:
            return e.code()
    return grpc.StatusCode.OK


async def test_admin_needs_the_credential_and_etcd_clients_do_not(node_cluster: Make) -> None:
    c = node_cluster(3, secret=SECRET)
    c.start_all()
    before = await _settled(c)
    follower = next(n for n, s in before.items() if s["role"] != "leader")
    ep = c.endpoint(follower)
    for method in ("Status", "ListFaults", "ClearFaults", "Campaign"):
        assert await _admin_call(ep, method, None) == grpc.StatusCode.UNAUTHENTICATED, method
        assert await _admin_call(ep, method, "0" * 64) == grpc.StatusCode.PERMISSION_DENIED, method
    async with Client([ep], timeout=2.0) as anon:
        with pytest.raises(ClientError) as e:
            await anon.set_faults(ep, [{"src": "*", "dst": "*", "action": "drop"}])
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert "credential" in str(e.value)
        await anon.put("plain", "etcd-api")  # the etcd services need nothing
    # the refusals above are the proof; a real election may happen on a loaded machine
    assert all(s["term"] < before[n]["term"] + 50 for n, s in (await c.statuses()).items())
    async with c.client_for([follower]) as cl:  # with the credential
        rules = await cl.set_faults(ep, [{"src": "*", "dst": "*", "action": "drop", "probability": 1.0}])
        assert rules and rules[0]["action"] == "drop"
        await cl.clear_faults(ep)
        assert await cl.list_faults(ep) == []
    assert await _admin_call(ep, "Campaign", admin_token(SECRET)) == grpc.StatusCode.OK
    if shutil.which("etcdctl"):
        env = {**os.environ, "ETCDCTL_API": "3"}
        run = ["etcdctl", "--endpoints", ",".join(c.endpoints()), "--dial-timeout", "3s"]
        # the campaign above starts an election, and etcdctl does not retry "no leader": retry, bounded
        deadline = time.monotonic() + 15
        while True:
            put = subprocess.run([*run, "put", "k", "v"], env=env, capture_output=True, timeout=20, text=True)
            if put.returncode == 0 or "no leader" not in put.stderr or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert put.returncode == 0, put.stderr
        out = subprocess.run([*run, "get", "k"], check=True, env=env, capture_output=True, timeout=20, text=True)
        assert out.stdout.split() == ["k", "v"]


async def test_a_member_with_a_bad_frame_loses_its_connection_with_one_line(node_cluster: Make) -> None:
    c = node_cluster(3, secret=SECRET)
    c.start_all()
    before = await _settled(c)
    cid, mids = _ids(c)
    target = next(n for n, s in before.items() if s["role"] != "leader")
    mine = []  # the attacker's own connections, by the address the node logs
    for garbage in (pack(5), pack([1, "x"]), pack([1, [[11, 1]]]), pack([2, 1, 2]), b"\0\0\0\x03\xc1\xc1\xc1"):
        reader, writer = await asyncio.open_connection("127.0.0.1", c.peer[target])
        mine.append(str(writer.get_extra_info("sockname")))
        hello = [F_HELLO, cid, mids["n1"] if target != "n1" else mids["n2"], mids[target]]
        await authenticate_to(reader, writer, SECRET, hello)
        writer.write(garbage)
        await writer.drain()
        assert await attack.read_reply(reader, 3.0) == attack.CLOSED
        writer.close()
    lines = [ln for ln in c.log(target).splitlines() if "dropping connection from peer" in ln]
    assert [sum(addr in ln for ln in lines) for addr in mine] == [1] * 5
    assert "Traceback" not in c.log(target)
    assert c.alive(target)


async def test_a_member_cannot_speak_as_another_member(node_cluster: Make) -> None:
    """A process holding the secret authenticates as a follower and sends an AppendEntries in the
    leader's name: the node refuses it (one line, the connection closed), term unchanged, nothing
    committed. And a hello changed after the proof was made is refused: the proof covers it."""
    c = node_cluster(3, secret=SECRET)
    c.start_all()
    before = await _settled(c)
    cid, mids = _ids(c)
    leader = next(n for n, s in before.items() if s["role"] == "leader")
    target, other = [n for n in c.names if n != leader]
    st = before[target]
    forged = attack.forged_append(mids[leader], mids[target], st["term"] + 100, st["last_index"], st["term"], b"forged")
    reply = await attack.member_sends(c.peer[target], SECRET, [F_HELLO, cid, mids[other], mids[target]], [forged])
    assert reply == attack.CLOSED
    # the proof is made for one hello, another one is sent: refused before any message
    swapped = await attack.swapped_hello(
        c.peer[target], SECRET, [F_HELLO, cid, mids[other], mids[target]], [F_HELLO, cid, mids[leader], mids[target]]
    )
    assert swapped == attack.CLOSED
    await asyncio.sleep(0.5)
    after = await c.statuses()
    assert after[target]["term"] < st["term"] + 50
    async with Client([c.endpoint(target)], timeout=2.0) as cl:
        assert (await cl.get("forged")).kvs == []
    log = c.log(target)
    assert (
        sum(
            f"a message from member {mids[leader]:x} on the connection of member {mids[other]:x}" in ln
            for ln in log.splitlines()
        )
        == 1
    ), log
    assert "wrong proof of the cluster secret" in log
    assert "Traceback" not in log


async def test_a_forwarded_proposal_keeps_its_original_sender(node_cluster: Make) -> None:
    """A member that stopped being leader passes a proposal on with the sender it came from: that is
    Raft's forwarding, not impersonation. The connection stays open and the proposal is committed."""
    c = node_cluster(3, secret=SECRET)
    c.start_all()
    before = await _settled(c)
    cid, mids = _ids(c)
    leader = next(n for n, s in before.items() if s["role"] == "leader")
    relay, origin = [n for n in c.names if n != leader]
    prop = Message(
        MsgType.PROP,
        to=mids[leader],
        frm=mids[origin],
        entries=[Entry(0, 0, data=attack.put_payload(b"forwarded", b"ok"))],
    )
    reply = await attack.member_sends(c.peer[leader], SECRET, [F_HELLO, cid, mids[relay], mids[leader]], [prop])
    assert reply != attack.CLOSED, "a forwarded proposal must not cost the connection"
    deadline = time.monotonic() + 10
    async with Client([c.endpoint(leader)], timeout=2.0) as cl:
        while not (await cl.get("forwarded")).kvs:
            assert time.monotonic() < deadline, "the forwarded proposal was never committed"
            await asyncio.sleep(0.1)
    assert "on the connection of member" not in c.log(leader)


async def test_a_member_started_without_the_secret_is_shut_out(node_cluster: Make) -> None:
    c = node_cluster(3, secret=SECRET)
    c.start_all()
    before = await _settled(c)
    c.kill("n3")
    c.secret = None  # n3 comes back without --peer-auth-file
    c.start("n3")
    c.secret = SECRET
    await c.wait_leader(among=["n1", "n2"])
    async with c.client_for(["n1", "n2"]) as cl:
        for i in range(5):
            await cl.put(f"k{i}", "v")
    await asyncio.sleep(1.5)
    leader_commit = max(s["commit"] for s in (await c.statuses(["n1", "n2"])).values())
    async with Client([c.endpoint("n3")], timeout=2.0) as open_admin:  # n3 has no secret: Admin is open
        n3 = await open_admin.admin_status(c.endpoint("n3"))
    assert n3["applied"] < leader_commit
    assert n3["term"] >= before["n3"]["term"]
    assert "refusing peer connection" in c.log("n1") + c.log("n2")
    assert "Traceback" not in c.log("n1") + c.log("n2") + c.log("n3")


# -- in-process: the snapshot limits ---------------------------------------------------------------


async def _member_conn(t: Transport, port: int, frm: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await authenticate_to(reader, writer, SECRET, [F_HELLO, t.cluster_id, frm, t.member_id])
    return reader, writer


async def test_idle_connections_from_a_stranger_do_not_lock_members_out(node_cluster: Make) -> None:
    """Strangers keep more connections in their hello than the node admits; a member restarting
    meanwhile still gets through (the oldest unproven connection makes room), and every member
    takes writes."""
    c = node_cluster(3, secret=SECRET)
    c.start_all()
    await _settled(c)
    stop = asyncio.Event()
    flood = asyncio.gather(*(attack.idle_flood(c.peer[n], 100, stop) for n in c.names))
    try:

        async def through_the_flood() -> None:
            await asyncio.sleep(2.0)  # the pools are full by now
            c.kill("n3")
            c.start("n3")  # it must reconnect to both, and they to it, through the flood
            await c.wait_leader()
            for n in c.names:
                async with c.client_for([n]) as cl:
                    for attempt in range(100):
                        try:
                            await cl.put(f"during-flood-{n}", "v")
                            break
                        except ClientError:
                            if attempt == 99:
                                raise
                            await asyncio.sleep(0.2)

        await asyncio.wait_for(through_the_flood(), 45.0)
    finally:
        stop.set()
        opened = await asyncio.wait_for(flood, 10.0)
    assert sum(opened) > 3 * 100  # the flood did run: connections were closed and reopened
    logs = "".join(c.log(n) for n in c.names)
    assert "closing the oldest" in logs
    assert "Traceback" not in logs


async def test_snapshot_limits_a_newer_transfer_wins_and_a_full_spool_refuses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[Message] = []
    t = Transport(1, 7, str, got.append, secret=SECRET, spool_dir=tmp_path, snapshot_limit=4 << 20)
    await t.listen("127.0.0.1:0")
    assert t.server is not None
    port = t.server.sockets[0].getsockname()[1]
    try:
        meta = msg_to_wire(
            Message(MsgType.SNAP, to=1, frm=2, term=3, snapshot=Snapshot(5, 3)), with_snapshot_data=False
        )
        # too big: announced over the limit
        r, w = await _member_conn(t, port, 2)
        w.write(pack([F_SNAP_CHUNK, (4 << 20) + 1, b"x", None]))
        await w.drain()
        assert await attack.read_reply(r, 3.0) == attack.CLOSED
        w.close()
        # one transfer per peer, the newest wins: the older connection may be half-open for good
        r1, w1 = await _member_conn(t, port, 2)
        w1.write(pack([F_SNAP_CHUNK, 3, b"ab", None]))
        await w1.drain()
        assert await attack.read_reply(r1, 0.3) is None  # still open, transfer in progress
        r2, w2 = await _member_conn(t, port, 2)
        w2.write(pack([F_SNAP_CHUNK, 3, b"xy", None]))
        await w2.drain()
        assert await attack.read_reply(r1, 3.0) == attack.CLOSED
        w1.close()
        # the newer one completes, from its spool file
        w2.write(pack([F_SNAP_CHUNK, 3, b"z", meta]))
        await w2.drain()
        for _ in range(50):
            if got:
                break
            await asyncio.sleep(0.05)
        assert got and got[0].snapshot is not None and got[0].snapshot.data == b"xyz"
        assert await attack.read_reply(r2, 0.3) is None  # and its connection stays
        w2.close()
        assert SNAPSHOT_LIMIT >= 2 << 30  # a real member's snapshot (quota 2 GiB) always fits
        # no room in the spool dir besides the log's reserve: refused with one line
        t.spool_margin = 1 << 62
        caplog.clear()
        r3, w3 = await _member_conn(t, port, 2)
        w3.write(pack([F_SNAP_CHUNK, 3, b"ab", None]))
        await w3.drain()
        assert await attack.read_reply(r3, 3.0) == attack.CLOSED
        w3.close()
        refused = [r.getMessage() for r in caplog.records if "no room to spool" in r.getMessage()]
        assert len(refused) == 1 and not any(r.exc_info for r in caplog.records)
    finally:
        await t.close()


# -- the secret file and the fault-injection switch ------------------------------------------------


def test_secret_file_is_created_private_and_refused_when_others_can_read_it(tmp_path: Path) -> None:
    p = tmp_path / "peer.secret"
    write_secret(p)
    assert p.stat().st_mode & 0o777 == 0o600
    assert len(load_secret(p)) == 64
    p.chmod(0o644)
    with pytest.raises(SecretError, match="accessible by other users"):
        load_secret(p)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "node",
            "--name",
            "n1",
            "--data-dir",
            str(tmp_path / "d"),
            "--initial-cluster",
            "n1=127.0.0.1:1",
            "--peer-auth-file",
            str(p),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "chmod 600" in r.stderr


def test_fault_injection_switch_reaches_the_node_command_and_chaos(tmp_path: Path) -> None:
    assert cfgmod.parse("fault_injection: false\n").fault_injection is False
    assert cfgmod.parse("name: x\n").fault_injection is True
    with pytest.raises(cfgmod.ConfigError, match="fault_injection"):
        cfgmod.parse("fault_injection: maybe\n")
    for on in (True, False):
        c = Cluster(tmp_path, f"fi{on}")
        c.create(cfgmod.ClusterConfig(name=f"fi{on}", fault_injection=on))
        rec = c.st.nodes["n1"]
        cmd = engine_for("builtin").command(c.st, rec, tmp_path / "d", "new", ["n1"], sys.executable)
        assert ("--enable-fault-injection" in cmd) is on
        if on:
            LocalBackend(c)
        else:
            with pytest.raises(NetError, match="without fault injection"):
                LocalBackend(c)
