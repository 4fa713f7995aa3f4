"""Real node processes on 127.0.0.1: election, failover after kill -9, catch-up by log and by snapshot."""

from __future__ import annotations

import asyncio
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from node.client import Client, ClientError
from tests.procs import REPO, NodeProcs

Make = Callable[..., NodeProcs]


async def _put_many(c: Client, prefix: str, n: int) -> None:
    for i in range(n):
        await c.put(f"{prefix}{i:05d}", f"v{i}")


async def test_three_nodes_elect_and_writes_through_a_follower_commit(node_cluster: Make) -> None:
    cl = node_cluster(3)
    cl.start_all()
    leader = await cl.wait_leader()
    follower = next(n for n in cl.names if n != leader)
    async with cl.client_for([follower]) as c:
        r = await c.put("k", "via-follower")
        assert r.header.member_id != 0 and r.header.revision >= 2
    st = await cl.statuses()
    idx = st[leader]["commit"]
    await cl.wait_applied(cl.names, idx)
    for n in cl.names:
        async with cl.client_for([n]) as c:
            assert await c.get_value("k", serializable=True) == b"via-follower"


async def test_kill_leader_new_leader_then_restart_catches_up(node_cluster: Make) -> None:
    cl = node_cluster(3)
    cl.start_all()
    old = await cl.wait_leader()
    async with cl.client_for() as c:
        await _put_many(c, "a", 20)
    cl.kill(old, signal.SIGKILL)
    t0 = time.monotonic()
    rest = [n for n in cl.names if n != old]
    new = await cl.wait_leader(among=rest, exclude=old)
    failover = time.monotonic() - t0
    assert new != old and failover < 5
    async with cl.client_for(rest) as c:
        await _put_many(c, "b", 20)  # writes continue with 2 of 3
        got = await c.get("a", prefix=True, count_only=True)
        assert got.count == 20  # every acknowledged write survived
    cl.start(old)
    st = await cl.statuses(rest)
    await cl.wait_applied([old], st[new]["commit"])
    async with cl.client_for([old]) as c:
        assert (await c.get("b", prefix=True, serializable=True, count_only=True)).count == 20


async def test_restarted_follower_catches_up_by_snapshot(node_cluster: Make) -> None:
    cl = node_cluster(3, extra=["--snapshot-count", "50", "--snapshot-catchup-entries", "10"])
    cl.start_all()
    leader = await cl.wait_leader()
    victim = next(n for n in cl.names if n != leader)
    cl.kill(victim)
    rest = [n for n in cl.names if n != victim]
    async with cl.client_for(rest) as c:
        await _put_many(c, "s", 200)
    st = await cl.statuses(rest)
    assert st[leader]["snapshot_index"] > 100  # the leader compacted its log
    cl.start(victim)
    await cl.wait_applied([victim], st[leader]["commit"])
    vs = (await cl.statuses([victim]))[victim]
    assert vs["snapshot_index"] > 0  # it could only catch up from a snapshot
    async with cl.client_for([victim]) as c:
        assert (await c.get("s", prefix=True, serializable=True, count_only=True)).count == 200
    assert "snapshot" in cl.log(victim).lower() or vs["snapshot_index"] > 0


async def test_all_nodes_killed_and_restarted_lose_no_acknowledged_write(node_cluster: Make) -> None:
    cl = node_cluster(3)
    cl.start_all()
    await cl.wait_leader()
    acked: list[str] = []
    async with cl.client_for() as c:
        for i in range(30):
            await c.put(f"d{i}", "x")
            acked.append(f"d{i}")
    for n in cl.names:
        cl.kill(n, signal.SIGKILL)
    cl.start_all()
    await cl.wait_leader()
    async with cl.client_for() as c:
        r = await c.get("d", prefix=True)
        assert sorted(kv.key.decode() for kv in r.kvs) == sorted(acked)


async def test_sigterm_on_leader_transfers_leadership_and_exits_cleanly(node_cluster: Make) -> None:
    cl = node_cluster(3)
    cl.start_all()
    leader = await cl.wait_leader()
    p = cl.procs[leader]
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=15) == 0
    assert "leadership transferred" in cl.log(leader)
    rest = [n for n in cl.names if n != leader]
    await cl.wait_leader(among=rest, timeout=3)


async def test_node_of_another_cluster_is_refused(node_cluster: Make) -> None:
    a = node_cluster(3, token="alpha")
    a.start_all()
    await a.wait_leader()
    # a stranger claiming to be a member of a different cluster, pointed at a's peers
    b = node_cluster(1, token="beta")
    stranger = f"{b.names[0]}=127.0.0.1:{b.peer[b.names[0]]}"
    a_peer = f"n2=127.0.0.1:{a.peer['n2']}"
    b.start(b.names[0], initial=f"{stranger},{a_peer}")
    await asyncio.sleep(2)
    assert "refusing peer" in a.log("n2")
    st = await a.statuses()
    assert all(len(s["voters"]) == 3 for s in st.values())


async def test_data_dir_of_another_member_is_refused(node_cluster: Make) -> None:
    cl = node_cluster(3)
    cl.start_all()
    await cl.wait_leader()
    cl.kill("n1")
    args = cl.args("n1")
    args[args.index("--name") + 1] = "n9"
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=20)
    assert r.returncode != 0
    assert "belongs to member 'n1'" in r.stderr or "does not list" in r.stderr


async def test_port_in_use_is_a_clear_error(node_cluster: Make) -> None:
    cl = node_cluster(1)
    cl.start_all()
    await cl.wait_leader()
    other = node_cluster(1)
    args = other.args("n1")
    args[args.index("--listen-client") + 1] = cl.endpoint("n1")  # taken
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=20)
    assert r.returncode == 1
    assert "cannot listen for clients" in r.stderr


async def test_proposals_fail_fast_without_leader(node_cluster: Make) -> None:
    cl = node_cluster(3)
    cl.start_all()
    leader = await cl.wait_leader()
    others = [n for n in cl.names if n != leader]
    for n in others:
        cl.kill(n)
    await asyncio.sleep(cl.election_ms * 3 / 1000)  # the leader's check-quorum fires
    async with cl.client_for([leader], timeout=3) as c:
        t0 = time.monotonic()
        with pytest.raises(ClientError) as ei:
            await c.put("x", "y")
        assert "no leader" in str(ei.value)
        assert time.monotonic() - t0 < 1.0


async def test_a_wal_write_that_fails_ends_the_process_with_the_traceback(node_cluster: Make) -> None:
    """etcd panics when its WAL cannot be written; a member whose Raft loop died must not linger.

    The trigger is real and works as any user on any filesystem: the running node's file size
    limit (RLIMIT_FSIZE, set with prlimit) is lowered to the live WAL segment's length, so its next
    append fails with EFBIG inside the Ready loop (Python ignores SIGXFSZ). EFBIG is not ENOSPC: it
    must not be taken for a full disk, it must end the process."""
    cl = node_cluster(1)
    cl.start_all()
    await cl.wait_leader()
    async with cl.client_for() as c:
        for i in range(4):  # make the segment longer than the log will ever get in this test
            await c.put(f"before/{i}", "x" * 200_000)
    seg = sorted((cl.base / "n1" / "wal").glob("*.wal"))[-1]
    limit = seg.stat().st_size
    log_size = (cl.base / "n1.log").stat().st_size
    assert log_size + 200_000 < limit, (log_size, limit)  # the log (traceback included) still fits
    p = cl.procs["n1"]
    resource.prlimit(p.pid, resource.RLIMIT_FSIZE, (limit, limit))
    async with cl.client_for(timeout=2) as c:
        with pytest.raises(ClientError):
            await c.put("after", "lost")
    code = await asyncio.to_thread(p.wait, 10)
    log = cl.log("n1")
    assert code == 70, log[-2000:]
    assert "CRITICAL" in log and "Traceback (most recent call last)" in log, log[-2000:]
    assert "EFBIG" in log and "stopping this member" in log, log[-2000:]
    assert "disk full" not in log.lower(), log[-2000:]  # not handled as ENOSPC (release reserve, NOSPACE)


def test_cli_rejects_bad_flags() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "node", "--name", "n1", "--data-dir", "/tmp/x", "--initial-cluster", "garbage"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert r.returncode == 2 and "expected name=host:port" in r.stderr
