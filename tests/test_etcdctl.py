"""The real etcdctl against quorumlab and against real etcd: the same script, the same output.

Each step runs `ETCDCTL_API=3 etcdctl` against both clusters; outputs are
compared after masking what legitimately differs (member/lease ids, ports,
timings, sizes, raft indexes, version). Any other difference fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.procs import EtcdProcs, NodeProcs

pytestmark = pytest.mark.skipif(
    shutil.which("etcdctl") is None or shutil.which("etcd") is None,
    reason="needs Debian's etcd-client and etcd-server (scripts/setup.sh installs them)",
)


@dataclass
class Step:
    args: list[str]
    stdin: str = ""
    sort: bool = False  # compare as a set of lines (e.g. per-endpoint output order)
    numbers: bool = False  # mask every number (tables of raft indexes, sizes)
    timeout: float = 15.0
    name: str = ""


def etcdctl(endpoints: list[str], step: Step) -> str:
    env = {**os.environ, "ETCDCTL_API": "3"}
    cmd = ["etcdctl", "--endpoints", ",".join(endpoints), "--dial-timeout", "3s", *step.args]
    try:
        r = subprocess.run(cmd, input=step.stdin, capture_output=True, text=True, timeout=step.timeout, env=env)
        out = f"rc={r.returncode}\n{r.stdout}{_errors(r.stderr)}"
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        out = f"rc=timeout\n{stdout}"
    return out


def _errors(stderr: str) -> str:
    # keep etcdctl's own "Error: ..." lines, drop the client library's JSON warnings
    return "".join(line + "\n" for line in stderr.splitlines() if line.startswith("Error"))


MASKS = [
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:PORT"),
    (re.compile(r"\b[0-9a-f]{10,16}\b"), "ID"),
    (re.compile(r"took = [0-9.]+[µnm]?s"), "took = T"),
    (
        re.compile(
            r'"(cluster_id|member_id|raft_term|ID|leader|raftIndex|raftTerm|raftAppliedIndex|dbSize|dbSizeInUse)"'
            r":\d+"
        ),
        r'"\1":N',
    ),
    (re.compile(r"\b3\.\d+\.\d+\b"), "VERSION"),
]


def mask(text: str, step: Step) -> str:
    for rx, rep in MASKS:
        text = rx.sub(rep, text)
    if step.numbers:
        text = re.sub(r"\b\d+(\.\d+)?( ?[kMG]?B)?\b", "N", text)
        text = re.sub(r"[ -]+", " ", text)  # column widths follow the masked values
    # table padding follows the width of masked ids and values
    lines = [re.sub(r" {2,}", " ", ln) if ln.startswith("|") else ln for ln in text.splitlines()]
    if step.sort:
        lines = [lines[0], *sorted(lines[1:])]
    return "\n".join(lines)


SCRIPT = [
    Step(["put", "foo", "bar"]),
    Step(["put", "foo1", "bar1"]),
    Step(["put", "foo2", "bar2"]),
    Step(["put", "zoo", "z"]),
    Step(["put", "foo1", "bar1-v2"]),
    Step(["get", "foo", "--prefix"]),
    Step(["get", "foo", "--from-key"]),
    Step(["get", "foo", "--prefix", "--limit", "2"]),
    Step(["get", "foo", "--prefix", "--keys-only"]),
    Step(["get", "foo", "--prefix", "--sort-by=MODIFY", "--order=DESCEND"]),
    Step(["get", "foo", "--prefix", "--sort-by=VERSION", "--order=ASCEND"]),
    Step(["get", "foo1", "--rev=3"]),
    Step(["get", "foo", "--prefix", "-w", "json"]),
    Step(["get", "nothing-here"]),
    Step(["get", "foo", "--prefix", "--count-only", "-w", "json"]),
    Step(["get", "foo", "--rev=999"], name="future revision"),
    Step(["del", "foo2", "--prev-kv"]),
    Step(["del", "absent"]),
    Step(["put", "", "empty-key"], name="empty key"),
    Step(["txn"], stdin='value("foo") = "bar"\n\nput foo bar-txn\nget foo1\n\nput foo failed\n\n'),
    Step(["txn"], stdin='mod("foo") < "2"\n\nput x y\n\nget foo\n\n'),
    Step(["txn", "-w", "json"], stdin='create("zoo") > "0"\n\ndel zoo\n\n\n'),
    Step(["watch", "foo", "--prefix", "--rev=2", "--prev-kv"], timeout=3, name="watch replay"),
    Step(["compaction", "4"]),
    Step(["get", "foo", "--rev=3"], name="compacted revision"),
    Step(["compaction", "3"], name="compact again below"),
    Step(["alarm", "list"]),
    Step(["member", "list", "-w", "table"], sort=True),
    Step(["endpoint", "health", "--cluster"], sort=True),
    Step(["endpoint", "status", "--cluster", "-w", "table"], sort=True, numbers=True),
    Step(["lease", "list"]),
    Step(["lease", "revoke", "1234"], name="revoke missing lease"),
    Step(["lease", "timetolive", "1234"], name="ttl of missing lease"),
    Step(["lock", "mylock", "echo", "locked-and-ran"]),
    Step(["elect", "myelection", "proposal-1"], timeout=3, name="elect (blocks once elected)"),
]


async def _start(kind: type[NodeProcs], make: Callable[..., NodeProcs]) -> NodeProcs:
    c = make(3, heartbeat_ms=50, election_ms=500) if kind is NodeProcs else make(3)
    if kind is EtcdProcs:
        c.__class__ = EtcdProcs
    c.start_all()
    await c.wait_leader()
    return c


def _lease_flow(eps: list[str]) -> list[str]:
    """Lease steps need the granted id, so they run as a small dynamic script."""
    out = []
    g = etcdctl(eps, Step(["lease", "grant", "100"]))
    out.append(g)
    m = re.search(r"lease ([0-9a-f]+) granted", g)
    assert m, g
    lid = m.group(1)
    for args in (
        ["put", "leased", "v", f"--lease={lid}"],
        ["lease", "timetolive", lid, "--keys"],
        ["lease", "keep-alive", "--once", lid],
        ["lease", "list"],
        ["lease", "revoke", lid],
        ["get", "leased"],
        ["lease", "timetolive", lid],
    ):
        out.append(etcdctl(eps, Step(args)))
    return out


def _move_leader(eps: list[str]) -> str:
    st = etcdctl(eps, Step(["endpoint", "status", "-w", "json"]))
    rows = json.loads(st.split("\n", 1)[1])
    leader = next(r for r in rows if r["Status"]["leader"] == r["Status"]["header"]["member_id"])
    follower = next(r for r in rows if r is not leader)
    target = f"{follower['Status']['header']['member_id']:x}"
    return etcdctl([leader["Endpoint"]], Step(["move-leader", target]))


async def test_etcdctl_output_matches_real_etcd(node_cluster: Callable[..., NodeProcs]) -> None:
    ours = await _start(NodeProcs, node_cluster)
    theirs = await _start(EtcdProcs, node_cluster)
    diffs = []
    for step in SCRIPT:
        a = mask(etcdctl(ours.endpoints(), step), step)
        b = mask(etcdctl(theirs.endpoints(), step), step)
        if a != b:
            diffs.append(f"--- etcdctl {' '.join(step.args)} {step.name}\nquorumlab:\n{a}\netcd:\n{b}")
    for a_out, b_out in zip(_lease_flow(ours.endpoints()), _lease_flow(theirs.endpoints()), strict=True):
        s = Step([])
        if mask(a_out, s) != mask(b_out, s):
            diffs.append(f"--- lease flow\nquorumlab:\n{mask(a_out, s)}\netcd:\n{mask(b_out, s)}")
    a_ml, b_ml = mask(_move_leader(ours.endpoints()), Step([])), mask(_move_leader(theirs.endpoints()), Step([]))
    if a_ml != b_ml:
        diffs.append(f"--- move-leader\nquorumlab:\n{a_ml}\netcd:\n{b_ml}")
    await asyncio.sleep(0)
    assert not diffs, "\n\n".join(diffs)


async def test_watch_sees_writes_from_another_etcdctl(node_cluster: Callable[..., NodeProcs]) -> None:
    cl = await _start(NodeProcs, node_cluster)
    env = {**os.environ, "ETCDCTL_API": "3"}
    eps = ",".join(cl.endpoints())
    w = subprocess.Popen(
        ["etcdctl", "--endpoints", eps, "watch", "w/", "--prefix", "--prev-kv"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        await asyncio.sleep(1.0)
        for args in (["put", "w/a", "1"], ["put", "w/a", "2"], ["del", "w/a"], ["put", "other", "x"]):
            subprocess.run(
                ["etcdctl", "--endpoints", cl.endpoint("n2"), *args],
                env=env,
                check=True,
                capture_output=True,
                timeout=10,
            )
        await asyncio.sleep(1.0)
    finally:
        w.terminate()
    out, _ = w.communicate(timeout=10)
    assert out.split() == ["PUT", "w/a", "1", "PUT", "w/a", "1", "w/a", "2", "DELETE", "w/a", "2", "w/a"]
