"""etcd's --quota-backend-bytes and NOSPACE alarm, on real nodes with the real etcdctl.

Over the quota, puts fail with etcd's exact error and the member raises NOSPACE for
itself, cluster-wide; reads, deletes and compaction keep working; `etcdctl alarm list`
and `alarm disarm` behave as etcd's. The state machine refuses the same requests at apply
while the alarm is active, so every member applies the same thing.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from node.api.quota import SpaceGuard
from node.client import ClientError
from node.errors import EtcdError, Reason
from node.kv import KVStateMachine
from node.kv.apply import OP_ALARM, OP_DELETE, OP_LEASE_GRANT, OP_PUT, OP_TXN, encode
from node.pb import rpc_pb2
from node.server.raftnode import NodeConfig, RaftNode
from tests.procs import NodeProcs

# etcd's exact texts (the spec: not imported from the code under test)
ERR_NO_SPACE = "etcdserver: mvcc: database space exceeded"

Make = Callable[..., NodeProcs]
QUOTA = 200 * 1024
needs_etcdctl = pytest.mark.skipif(shutil.which("etcdctl") is None, reason="needs etcdctl (scripts/setup.sh)")


def etcdctl(c: NodeProcs, *args: str, names: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ETCDCTL_API": "3"}
    cmd = ["etcdctl", "--endpoints", ",".join(c.endpoints(names)), "--dial-timeout", "3s", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20, env=env)


def test_apply_refuses_space_while_nospace_is_active() -> None:
    """etcd's capped applier: deterministic at apply, whatever the API layer let through."""
    sm = KVStateMachine()
    i = iter(range(1, 1000))

    def ap(op: int, msg: object) -> object:
        return sm.apply(next(i), encode(op, msg))

    ap(OP_PUT, rpc_pb2.PutRequest(key=b"a", value=b"1"))
    ap(OP_ALARM, rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.ACTIVATE, memberID=7, alarm=rpc_pb2.NOSPACE))
    put = ap(OP_PUT, rpc_pb2.PutRequest(key=b"b", value=b"2"))
    assert (
        isinstance(put, EtcdError)
        and str(put) == ERR_NO_SPACE
        and put.reason is Reason.NO_SPACE
        and put.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    txn_put = rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"c", value=b"3"))])
    assert isinstance(ap(OP_TXN, txn_put), EtcdError)
    assert isinstance(ap(OP_LEASE_GRANT, rpc_pb2.LeaseGrantRequest(ID=5, TTL=10)), EtcdError)
    # deletes (alone or in a txn) still apply: they are how space is freed
    txn_del = rpc_pb2.TxnRequest(
        success=[rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=b"zz"))]
    )
    assert not isinstance(ap(OP_TXN, txn_del), EtcdError)
    assert not isinstance(ap(OP_DELETE, rpc_pb2.DeleteRangeRequest(key=b"a")), EtcdError)
    assert sm.store.get(b"b") is None and sm.store.get(b"a") is None
    # etcd's reply to a deactivation names the alarm that went away
    resp = ap(OP_ALARM, rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.DEACTIVATE, memberID=7, alarm=rpc_pb2.NOSPACE))
    assert isinstance(resp, rpc_pb2.AlarmResponse) and [(a.memberID, a.alarm) for a in resp.alarms] == [(7, 1)]
    assert not isinstance(ap(OP_PUT, rpc_pb2.PutRequest(key=b"b", value=b"2")), EtcdError)


async def test_guard_refuses_writes_while_the_disk_is_full(tmp_path: Path) -> None:
    """Between a full disk and the alarm being applied, writes are refused at once (reads are not)."""
    sm = KVStateMachine()
    cfg = NodeConfig(
        name="n1",
        data_dir=tmp_path,
        listen_peer="127.0.0.1:1",
        listen_client="127.0.0.1:2",
        initial_cluster={"n1": "http://127.0.0.1:1"},
    )
    node = RaftNode(cfg, sm)  # not started: only its disk_full flag is used
    guard = SpaceGuard(node, sm, QUOTA)
    await guard.admit(rpc_pb2.PutRequest(key=b"k", value=b"v"))
    node.disk_full = True
    for req in (
        rpc_pb2.PutRequest(key=b"k", value=b"v"),
        rpc_pb2.LeaseGrantRequest(ID=1, TTL=10),
        rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"k"))]),
    ):
        with pytest.raises(EtcdError) as ei:
            await guard.admit(req)
        assert (
            str(ei.value) == ERR_NO_SPACE
            and ei.value.reason is Reason.NO_SPACE
            and ei.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        )
    await guard.admit(rpc_pb2.DeleteRangeRequest(key=b"k"))  # costs nothing: allowed
    await guard.admit(rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b"k"))]))


def _unstarted_guard(tmp_path: Path, fail: list[BaseException]) -> tuple[SpaceGuard, KVStateMachine, list[int]]:
    """A SpaceGuard on an unstarted node whose propose applies to the state machine after a
    short delay (a Raft round trip); the first proposals raise the errors in `fail`."""
    sm = KVStateMachine()
    cfg = NodeConfig(
        name="n1",
        data_dir=tmp_path,
        listen_peer="127.0.0.1:1",
        listen_client="127.0.0.1:2",
        initial_cluster={"n1": "http://127.0.0.1:1"},
        request_timeout=2.0,
    )
    node = RaftNode(cfg, sm)
    node.member_id = 7
    calls: list[int] = []

    async def propose(payload: bytes, timeout: float | None = None) -> object:
        calls.append(len(calls) + 1)
        await asyncio.sleep(0.05)
        if fail:
            raise fail.pop(0)
        return sm.apply(len(calls), payload)

    node.propose = propose  # type: ignore[method-assign]
    return SpaceGuard(node, sm, QUOTA), sm, calls


async def test_refusals_wait_for_one_shared_alarm_proposal(tmp_path: Path) -> None:
    """etcd's quotaAlarmer: the NOSPACE error comes only after the Alarm went through Raft, and
    concurrent refusals share that one proposal instead of each raising a duplicate."""
    guard, _sm, calls = _unstarted_guard(tmp_path, [])
    big = rpc_pb2.PutRequest(key=b"k", value=b"x" * QUOTA)
    seen: list[bool] = []

    async def one() -> None:
        with pytest.raises(EtcdError) as ei:
            await guard.admit(big)
        assert (
            str(ei.value) == ERR_NO_SPACE
            and ei.value.reason is Reason.NO_SPACE
            and ei.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        seen.append(guard.active())

    await asyncio.gather(*(one() for _ in range(5)))
    assert seen == [True] * 5, "refused before the alarm was applied"
    assert calls == [1]
    for req in (big, rpc_pb2.PutRequest(key=b"k", value=b"small")):
        with pytest.raises(EtcdError):
            await guard.admit(req)  # refused while the alarm is active, at once
    assert calls == [1]  # and no new proposal
    await guard.admit(rpc_pb2.DeleteRangeRequest(key=b"k"))  # costs nothing: admitted


async def test_a_failed_alarm_proposal_still_refuses_and_the_next_one_retries(tmp_path: Path) -> None:
    guard, _sm, calls = _unstarted_guard(tmp_path, [RuntimeError("raft is gone")])
    big = rpc_pb2.PutRequest(key=b"k", value=b"x" * QUOTA)
    with pytest.raises(EtcdError):
        await guard.admit(big)
    assert not guard.active() and calls == [1]
    with pytest.raises(EtcdError):
        await guard.admit(big)
    assert guard.active() and calls == [1, 2]


async def test_the_disk_full_retry_survives_any_error(tmp_path: Path) -> None:
    """The background raise after a full disk keeps retrying whatever the proposal raises."""
    guard, _sm, calls = _unstarted_guard(tmp_path, [RuntimeError("unexpected"), EtcdError(Reason.NO_LEADER)])
    guard.node._set_disk_full()
    deadline = time.monotonic() + 5
    while not guard.active():
        assert time.monotonic() < deadline, f"NOSPACE never raised after {len(calls)} proposals"
        await asyncio.sleep(0.02)
    assert len(calls) == 3
    with pytest.raises(EtcdError):
        await guard.admit(rpc_pb2.PutRequest(key=b"k", value=b"v"))  # the disk is full: refused


async def _fill(c: NodeProcs, via: str, deadline_s: float = 20.0) -> tuple[int, int]:
    """Overwrite a few keys with 4 KiB values through member `via` until the quota refuses;
    returns (puts acknowledged, last acknowledged revision). Right after the first refusal the
    same member already lists the alarm: etcd returns the error only once its Alarm request
    went through Raft, so a client told "database space exceeded" can see why."""
    ok, last = 0, 0
    value = b"x" * 4096
    async with c.client_for([via], timeout=5.0) as cl:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            try:
                r = await cl.put(b"q%d" % (ok % 4), value)
            except ClientError as e:
                assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED, e
                assert str(e) == ERR_NO_SPACE
                alarms = [(a.memberID, a.alarm) for a in (await cl.alarms()).alarms]
                assert alarms == [(int((await cl.admin_status(c.endpoint(via)))["id"], 16), rpc_pb2.NOSPACE)], (
                    f"refused with NOSPACE before the alarm was applied: {alarms}"
                )
                return ok, last
            ok, last = ok + 1, r.header.revision
    raise AssertionError(f"{ok} puts of 4 KiB never hit a {QUOTA}-byte quota")


@needs_etcdctl
async def test_quota_nospace_alarm_list_disarm(node_cluster: Make) -> None:
    c = node_cluster(3, extra=["--quota-backend-bytes", str(QUOTA)])
    c.start_all()
    leader = await c.wait_leader()
    follower = next(n for n in c.names if n != leader)  # its alarm goes through the leader
    acked, last_rev = await _fill(c, follower)
    assert 30 < acked < 60, acked  # ~200 KiB of 4 KiB values, history included

    # etcdctl sees etcd's exact error, through any member (the alarm is replicated)
    for n in c.names:
        r = etcdctl(c, "put", "more", "x" * 4096, names=[n])
        assert r.returncode != 0 and "Error: etcdserver: mvcc: database space exceeded" in r.stderr, r
    r = etcdctl(c, "lease", "grant", "100")
    assert r.returncode != 0 and "database space exceeded" in r.stderr
    r = etcdctl(c, "alarm", "list")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("memberID:") and lines[0].rstrip().endswith("alarm:NOSPACE"), r
    member_ids = {int(s["id"], 16) for s in (await c.statuses()).values()}
    assert int(lines[0].split()[0].split(":")[1]) in member_ids

    # reads are served, linearizable and serializable, and deletes work
    r = etcdctl(c, "get", "q0", "--print-value-only")
    assert r.returncode == 0 and len(r.stdout.strip()) == 4096
    r = etcdctl(c, "get", "q1", "--consistency=s", "--print-value-only", names=[c.names[-1]])
    assert r.returncode == 0 and len(r.stdout.strip()) == 4096
    r = etcdctl(c, "del", "q3")
    assert r.returncode == 0 and r.stdout.strip() == "1"
    # endpoint status lists the alarm in its errors, as etcd does
    r = etcdctl(c, "endpoint", "status", "-w", "json")
    st = json.loads(r.stdout)
    assert all(any(e.endswith("alarm:NOSPACE ") for e in s["Status"].get("errors", [])) for s in st), st
    statuses = await c.statuses()
    assert all(s["alarms"] == ["NOSPACE"] and s["quota_backend_bytes"] == QUOTA for s in statuses.values())
    assert statuses[leader]["db_size"] >= QUOTA - 4096 - 300

    # disarming while still over the quota: the next put raises it again (as etcd)
    r = etcdctl(c, "alarm", "disarm")
    assert r.returncode == 0 and "alarm:NOSPACE" in r.stdout
    r = etcdctl(c, "put", "more", "x" * 4096)
    assert "database space exceeded" in r.stderr, r
    for _ in range(50):
        if "NOSPACE" in etcdctl(c, "alarm", "list").stdout:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the NOSPACE alarm was not raised again")

    # compact + defrag free the space; disarm; puts work again everywhere
    r = etcdctl(c, "compact", str(last_rev + 1))  # +1: the delete above
    assert r.returncode == 0, r
    r = etcdctl(c, "defrag")
    assert r.returncode == 0, r
    for _ in range(50):  # physical compaction runs in small steps after the Compact is applied
        if all(s["db_size"] < QUOTA // 4 for s in (await c.statuses()).values()):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"compaction did not shrink the db: {await c.statuses()}")
    r = etcdctl(c, "alarm", "disarm")
    assert r.returncode == 0 and r.stdout.strip().endswith("alarm:NOSPACE"), r
    assert etcdctl(c, "alarm", "list").stdout.strip() == ""
    for n in c.names:
        r = etcdctl(c, "put", f"after-{n}", "ok", names=[n])
        assert r.returncode == 0 and r.stdout.strip() == "OK", r
    r = etcdctl(c, "lease", "grant", "100")
    assert r.returncode == 0, r
    assert all(s["alarms"] == [] for s in (await c.statuses()).values())


async def test_quota_flag_is_validated(tmp_path: object) -> None:
    import sys

    from tests.procs import REPO

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "node",
            "--name",
            "n1",
            "--data-dir",
            str(tmp_path),
            "--initial-cluster",
            "n1=127.0.0.1:1",
            "--quota-backend-bytes",
            "lots",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--quota-backend-bytes must be a whole number of bytes, not 'lots'" in lines[0]
    assert "Traceback" not in r.stderr
