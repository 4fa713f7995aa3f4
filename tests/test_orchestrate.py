"""`orchestrate` end to end, through the CLI in subprocesses, on free ports in a temporary state root."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from node.client import Client, ClientError
from orchestrator import targets
from orchestrator.cluster import Cluster, ClusterView, NodeView, OrchestrateError
from orchestrator.config import ConfigError, parse
from orchestrator.state import ClusterState, NodeRecord, StateDir
from tests import procs
from tests.procs import REPO


class Orch:
    def __init__(self, root: Path, name: str, nodes_max: int = 8) -> None:
        self.root, self.name = root, name
        self.client_port = procs.free_port_block(nodes_max)
        self.peer_port = procs.free_port_block(nodes_max)
        self.cwd = root.parent  # never the repo: the CLI must work from anywhere

    def __call__(self, *args: str, stdin: str | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "orchestrator", "--root", str(self.root), "--name", self.name, *args]
        return subprocess.run(
            cmd,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            input=stdin,
            timeout=timeout,
            stdin=None if stdin is not None else subprocess.DEVNULL,
        )

    def up(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self(
            "up",
            "--client-port",
            str(self.client_port),
            "--peer-port",
            str(self.peer_port),
            "--heartbeat-ms",
            "50",
            "--election-ms",
            "500",
            *extra,
        )

    def status(self) -> dict[str, Any]:
        r = self("status", "-w", "json")
        assert r.returncode in (0, 1), r.stderr
        out: dict[str, Any] = json.loads(r.stdout)
        return out

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        st: dict[str, Any] = {}
        while time.monotonic() < deadline:
            st = self.status()
            if pred(st):
                return st
            time.sleep(0.2)
        raise AssertionError(f"condition not met; last status: {json.dumps(st)[:2000]}")

    def pids(self) -> list[int]:
        f = self.root / self.name / "state.json"
        if not f.exists():
            return []
        return [r["pid"] for r in json.loads(f.read_text())["nodes"].values() if r["pid"]]

    def node_procs(self) -> list[int]:
        """Every live process whose command line names this cluster's state dir (whatever the state file says)."""
        mine = str(self.root / self.name) + "/"
        return [
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if any(mine in a for a in (p.info["cmdline"] or [])) and p.pid != os.getpid()
        ]

    def cleanup(self) -> None:
        self("down", "--purge", timeout=60)
        for pid in self.pids() + self.node_procs():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def orch(tmp_path: Path) -> Iterator[Callable[..., Orch]]:
    made: list[Orch] = []

    def make(name: str = "t") -> Orch:
        o = Orch(tmp_path / "state", name)
        made.append(o)
        return o

    yield make
    for o in made:
        o.cleanup()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


# -- config validation (no processes) -----------------------------------------------------------
def test_config_errors_name_file_line_and_field() -> None:
    with pytest.raises(ConfigError, match=r"c\.yaml:3: nodes: expected a node count"):
        parse("name: x\nengine: builtin\nnodes: five\n", "c.yaml")
    with pytest.raises(ConfigError, match=r"c\.yaml:2: engin: unknown key; did you mean 'engine'\?"):
        parse("nodes: 3\nengin: etcd\n", "c.yaml")
    with pytest.raises(ConfigError, match=r"c\.yaml:1: engine: expected one of builtin, etcd, got 'etdc' \(did you"):
        parse("engine: etdc\n", "c.yaml")
    with pytest.raises(ConfigError, match=r"c\.yaml:3: ports.client: expected an integer"):
        parse("nodes: 3\nports:\n  client: lots\n", "c.yaml")
    with pytest.raises(ConfigError, match=r"c\.yaml:1: compaction.mode: expected one of periodic, revision"):
        parse("compaction: {mode: hourly}\n", "c.yaml")
    with pytest.raises(ConfigError, match=r"c\.yaml:2: not valid YAML"):
        parse("nodes: 3\n  bad: [indent\n", "c.yaml")
    with pytest.raises(ConfigError, match="overlap"):
        parse("nodes: 5\nports: {client: 2379, peer: 2381}\n", "c.yaml")
    with pytest.raises(ConfigError, match="timeouts: election_ms"):
        parse("timeouts: {heartbeat_ms: 100, election_ms: 150}\n", "c.yaml")
    cfg = parse((REPO / "cluster.yaml").read_text(), "cluster.yaml")
    assert cfg.nodes == ("n1", "n2", "n3") and cfg.client_port == 2379
    # a remote host would silently run its nodes here: refused until nodes can run over SSH
    with pytest.raises(ConfigError, match=r"c.yaml:2: hosts: 'me@db1': a remote host is a mapping"):
        parse("nodes: 3\nhosts: [me@db1]\n", "c.yaml")
    with pytest.raises(ConfigError, match=r"c.yaml:2: hosts\[\].address: expected a loopback address"):
        parse("nodes: 3\nhosts: [{name: localhost, address: 10.0.0.5}]\n", "c.yaml")
    assert parse("hosts: [{name: localhost, address: 127.0.0.2}]\n", "c.yaml").hosts[0].address == "127.0.0.2"


def test_cli_reports_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: 3\nhosts: localhost\n")
    r = subprocess.run(
        [sys.executable, "-m", "orchestrator", "--config", str(bad), "status"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert f"{bad}:2: hosts: expected a non-empty list of hosts" in r.stderr


# -- a builtin cluster through its whole life ---------------------------------------------------------
def test_up_status_kill_pause_stop_kv_down(orch: Callable[..., Orch]) -> None:
    o = orch("life")
    r = o.up("--nodes", "3")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "QUORUM OK" in r.stdout and "quorum 2 (= 3/2+1)" in r.stdout
    st = o.status()
    assert st["n"] == 3 and st["quorum"] == 2 and st["fault_tolerance"] == 1 and st["has_quorum"]
    assert {n["name"] for n in st["nodes"]} == {"n1", "n2", "n3"}
    assert len({n["cluster_id"] for n in st["nodes"]}) == 1 and st["warnings"] == []
    for n in st["nodes"]:  # loop stall and alarms per node (the builtin engine reports them)
        assert n["loop_stall_max_ms"] >= n["loop_stall_p99_ms"] >= 0 and n["alarms"] == []
    # every node got an absolute data dir, runs in it, and got the compaction/quota defaults
    for name, rec in json.loads((o.root / "life" / "state.json").read_text())["nodes"].items():
        data = o.root / "life" / "data" / name
        assert os.readlink(f"/proc/{rec['pid']}/cwd") == str(data)
        argv = Path(f"/proc/{rec['pid']}/cmdline").read_bytes().decode().split("\0")
        assert argv[argv.index("--data-dir") + 1] == str(data)
        assert argv[argv.index("--auto-compaction-mode") + 1] == "revision"
        assert argv[argv.index("--auto-compaction-retention") + 1] == "10000"
        assert argv[argv.index("--quota-backend-bytes") + 1] == str(256 << 20)
    text = o("status").stdout
    assert "STALL ms" in text and "ALARMS" in text
    old = st["leader"]
    assert old

    # a second `up` of the same cluster is refused
    r = o.up("--nodes", "3")
    assert r.returncode == 2 and "already running" in r.stderr

    # kv through the CLI
    assert o("kv", "put", "greeting", "hello").stdout.strip() == "OK"
    assert o("kv", "get", "greeting").stdout.split() == ["greeting", "hello"]
    txn = 'value("greeting") = "hello"\n\nput greeting bonjour\n\nput greeting nope\n'
    assert o("kv", "txn", stdin=txn).stdout.split()[0] == "SUCCESS"
    assert o("kv", "get", "greeting").stdout.split() == ["greeting", "bonjour"]

    # kill the leader: another node leads
    r = o("kill", "leader")
    assert r.returncode == 0 and old in r.stdout
    st = o.wait(lambda s: s["leader"] not in ("", old) and s["has_quorum"])
    assert next(n for n in st["nodes"] if n["name"] == old)["state"] == "stopped"
    r = o("start", old)
    assert r.returncode == 0 and f"start {old}: serving after" in r.stdout, r.stderr
    o.wait(lambda s: all(n["role"] for n in s["nodes"]))

    # pause / resume a follower
    follower = next(n["name"] for n in o.status()["nodes"] if n["role"] == "follower")
    assert o("pause", follower).returncode == 0
    assert next(n for n in o.status()["nodes"] if n["name"] == follower)["state"] == "paused"
    assert o("resume", follower).returncode == 0
    o.wait(lambda s: next(n for n in s["nodes"] if n["name"] == follower)["state"] == "running")

    # stop / start keeps data
    assert o("stop", "n1").returncode == 0
    assert o("start", "n1").returncode == 0
    o.wait(lambda s: next(n for n in s["nodes"] if n["name"] == "n1")["role"] != "")
    assert o("kv", "get", "greeting").stdout.split() == ["greeting", "bonjour"]

    # unknown node
    r = o("kill", "n9")
    assert r.returncode == 2 and "unknown node 'n9'" in r.stderr

    # down leaves no process behind
    pids = o.pids()
    assert o("down").returncode == 0
    assert not any(_alive(p) for p in pids)
    r = o("status")
    assert r.returncode == 1  # no quorum: everything is stopped


def test_status_exit_code_follows_quorum(orch: Callable[..., Orch]) -> None:
    o = orch("q")
    assert o.up("--nodes", "3").returncode == 0
    assert o("status").returncode == 0
    o("kill", "n1")
    o("kill", "n2")
    time.sleep(1.5)
    r = o("status")
    assert r.returncode == 1 and "NO QUORUM" in r.stdout


def test_add_and_remove_follow_the_quorum_line(orch: Callable[..., Orch]) -> None:
    o = orch("members")
    assert o.up("--nodes", "5").returncode == 0
    st = o.status()
    assert (st["n"], st["quorum"]) == (5, 3)
    r = o("add", "n6")
    assert r.returncode == 0, r.stderr
    assert "quorum 4 (= 6/2+1)" in r.stdout and "6 is even" in r.stdout
    st = o.status()
    assert (st["n"], st["quorum"], st["fault_tolerance"]) == (6, 4, 2)
    r = o("remove", "n6")
    assert r.returncode == 0, r.stderr
    st = o.status()
    assert (st["n"], st["quorum"]) == (5, 3)
    assert "n6" not in {n["name"] for n in st["nodes"]}


def test_port_in_use_is_refused(orch: Callable[..., Orch]) -> None:
    o = orch("ports")
    with socket.socket() as s:
        s.bind(("127.0.0.1", o.client_port + 1))
        s.listen()
        r = o.up("--nodes", "3")
    assert r.returncode == 2
    assert f"n2 client port 127.0.0.1:{o.client_port + 1}" in r.stderr
    assert o.pids() == [] and o.node_procs() == []  # nothing was started
    assert not o.root.exists(), "a refused up left its state dir (or a .lock) behind"


def test_up_that_times_out_stops_what_it_started(orch: Callable[..., Orch]) -> None:
    o = orch("slow")
    r = o.up("--nodes", "3", "--timeout", "0.3")  # the nodes are still booting when the time is up
    assert r.returncode == 2
    assert "did not become ready within 0.3s" in r.stderr and "last log lines" in r.stderr
    # it stopped what it started and says so; no lock, no state, no node left running
    assert "stopped n1, n2, n3 and removed the new cluster's state and data" in r.stderr, r.stderr
    assert o.node_procs() == []
    left = sorted(str(p.relative_to(o.root)) for p in o.root.rglob("*"))
    assert left == ["slow", "slow/logs", "slow/logs/n1.log", "slow/logs/n2.log", "slow/logs/n3.log"], left
    r = o("down", "--purge")
    assert r.returncode == 0 and not (o.root / "slow").exists()
    assert o.up("--nodes", "3").returncode == 0  # and the next up starts clean


def test_up_whose_node_cannot_start_stops_the_others(orch: Callable[..., Orch]) -> None:
    o = orch("broken")
    d = o.root / "broken" / "data"
    d.mkdir(parents=True)
    (d / "n2").write_text("not a directory")  # not a data dir the check could refuse: a file in its place
    r = o.up("--nodes", "3", "--timeout", "10")
    assert r.returncode == 2
    assert f"cannot start n2: File exists: {d / 'n2'}" in r.stderr
    assert "stopped n1 and removed the new cluster's state and data" in r.stderr, r.stderr
    assert o.node_procs() == [] and (d / "n2").read_text() == "not a directory"
    assert not (o.root / "broken" / "state.json").exists()


def test_down_purge_removes_only_what_the_cluster_made(orch: Callable[..., Orch]) -> None:
    """Files a user put in the cluster's directory survive a purge, and the purge names them."""
    o = orch("p")
    assert o.up("--nodes", "2").returncode == 0
    top = o.root / "p"
    assert (top / "data" / "n1" / "member.json").exists() and (top / "logs" / "n1.log").exists()
    mine = {
        top / "notes.txt": "mine",
        top / "data" / "n1" / "keep.txt": "mine too",  # beside a node's data
        top / "data" / "photos" / "cat.jpg": "not node data",  # a dir in data/ that is no node's
        top / "logs" / "app.log": "my own log",  # a .log the launcher never wrote
    }
    for f, text in mine.items():
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    pids = o.pids()
    r = o("down", "--purge")
    assert r.returncode == 0, r.stderr
    assert not any(_alive(p) for p in pids)
    for f, text in mine.items():
        assert f.read_text() == text, f"purge deleted {f}"
        assert str(f) in r.stdout, r.stdout  # named as kept
    assert "kept " in r.stdout and f"not made by the cluster, so {top} stays" in r.stdout
    assert f"removed from {top}: state, data of n1, n2, 2 log files" in r.stdout, r.stdout
    left = sorted(str(p.relative_to(top)) for p in top.rglob("*") if p.is_file())
    assert left == sorted(str(f.relative_to(top)) for f in mine), left  # and nothing of the cluster's


def test_lock_never_holds_a_directory_purged_while_it_waited(tmp_path: Path) -> None:
    """A `down` waiting on the lock while another invocation purges and re-makes the directory must lock
    the new directory (with or without create), not the deleted inode it opened first."""
    import fcntl
    import threading

    for create in (False, True):
        d = StateDir(tmp_path, f"c{int(create)}")
        d.ensure()
        holder = os.open(d.path, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(holder, fcntl.LOCK_EX)
        entered = threading.Event()
        held: list[bool] = []

        def waiter(
            d: StateDir = d, create: bool = create, entered: threading.Event = entered, held: list[bool] = held
        ) -> None:
            with d.lock(create=create):
                entered.set()
                probe = os.open(d.path, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held.append(False)  # nobody holds the directory that is there now
                except BlockingIOError:
                    held.append(True)
                finally:
                    os.close(probe)

        t = threading.Thread(target=waiter)
        t.start()
        try:
            time.sleep(0.3)
            assert not entered.is_set(), "lock() did not wait for the holder"
            shutil.rmtree(d.path)  # the holder purges, and a new cluster of the same name is made
            d.path.mkdir()
        finally:
            fcntl.flock(holder, fcntl.LOCK_UN)
            os.close(holder)
            t.join(10)
        assert held == [True], (create, held)


def test_a_data_dir_of_another_cluster_is_refused(orch: Callable[..., Orch]) -> None:
    a, b = orch("a"), orch("b")
    assert a.up("--nodes", "1").returncode == 0
    assert a("down").returncode == 0
    foreign = a.root / "a" / "data" / "n1"

    # a new cluster finding another cluster's member in its data dir refuses before starting anything
    (b.root / "b" / "data").mkdir(parents=True)
    shutil.copytree(foreign, b.root / "b" / "data" / "n1")
    r = b.up("--nodes", "1")
    assert r.returncode == 2
    d = b.root / "b" / "data" / "n1"
    assert f"data dir {d} already holds data of member 'n1' of cluster" in r.stderr and f"rm -r {d}" in r.stderr
    assert b.node_procs() == [] and (d / "member.json").exists(), "refused, and nothing of it was deleted"
    assert not (b.root / "b" / "state.json").exists()

    # an existing (stopped) cluster whose member's data dir was swapped for another cluster's: start refuses
    shutil.rmtree(d)
    assert b.up("--nodes", "1").returncode == 0
    assert b("stop", "n1").returncode == 0
    shutil.rmtree(d)
    shutil.copytree(foreign, d)
    r = b("start", "n1")
    assert r.returncode == 2 and f"data dir {d} belongs to cluster" in r.stderr, r.stderr
    assert b.node_procs() == []


def test_status_flags_nodes_that_disagree_with_the_state_file(orch: Callable[..., Orch]) -> None:
    o, other = orch("main"), orch("other")
    assert o.up("--nodes", "3").returncode == 0
    st = o.status()
    cid = st["nodes"][0]["cluster_id"]

    # a voter added behind orchestrate's back: the quorum line still counts the state file's 3, with a warning
    ml = subprocess.run(
        [
            "etcdctl",
            "--endpoints",
            f"127.0.0.1:{o.client_port}",
            "member",
            "add",
            "x",
            f"--peer-urls=http://127.0.0.1:{o.peer_port + 7}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    if ml.returncode == 0:
        st = o.wait(lambda s: len(s["leader_voters"]) == 4)
        assert (st["n"], st["quorum"]) == (3, 2)
        assert any("counts voters" in w and "uses the state file's 3" in w for w in st["warnings"]), st["warnings"]
        xid = ml.stdout.split("Member ")[1].split()[0]
        subprocess.run(
            ["etcdctl", "--endpoints", f"127.0.0.1:{o.client_port}", "member", "remove", xid],
            capture_output=True,
            timeout=30,
            env={**os.environ, "ETCDCTL_API": "3"},
        )
        o.wait(lambda s: len(s["leader_voters"]) == 3)

    # n3's address now answers as a member of another cluster (its record points at another cluster's node)
    assert other.up("--nodes", "1").returncode == 0
    assert o("kill", "n3").returncode == 0
    f = o.root / "main" / "state.json"
    state = json.loads(f.read_text())
    theirs = json.loads((other.root / "other" / "state.json").read_text())["nodes"]["n1"]
    for k in ("client_port", "peer_port", "pid", "create_time"):
        state["nodes"]["n3"][k] = theirs[k]
    state["nodes"]["n3"]["desired"] = "running"
    f.write_text(json.dumps(state))
    st = o.status()
    n3 = next(n for n in st["nodes"] if n["name"] == "n3")
    assert n3["cluster_id"] != cid and n3["problem"] == f"cluster {n3['cluster_id']}, not {cid}"
    assert any(w.startswith("n3 answers as a member of cluster") for w in st["warnings"]), st["warnings"]
    assert (st["n"], st["quorum"]) == (3, 2)
    text = o("status").stdout
    assert "n3 !" in text and "warning: n3 answers as a member of cluster" in text
    state["nodes"]["n3"]["pid"] = 0  # hand n3's port back before cleanup: `down` must not stop the other's node
    f.write_text(json.dumps(state))


def test_start_waits_for_serving_and_fails_with_the_log_on_a_corrupt_wal(orch: Callable[..., Orch]) -> None:
    o = orch("wal")
    assert o.up("--nodes", "3").returncode == 0
    assert o("kv", "put", "k", "v").returncode == 0
    assert o("stop", "n1").returncode == 0
    seg = sorted((o.root / "wal" / "data" / "n1" / "wal").glob("*.wal"))[0]
    with open(seg, "r+b") as fh:
        fh.write(b"XXXXXXXX")  # the segment's magic: corruption, never a torn tail
    r = o("start", "n1")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "start n1" not in r.stdout and "Traceback" not in r.stderr.split("last lines of")[0]
    assert "n1 exited with status 1 instead of serving; last lines of" in r.stderr
    assert "WAL corrupted at" in r.stderr and str(seg) in r.stderr
    r = o("restart", "n1")
    assert r.returncode == 1 and "WAL corrupted at" in r.stderr
    # n2 and n3 alone have a quorum and take writes, but `up` promises every member: it fails, and says so
    assert o("down").returncode == 0
    r = o.up("--nodes", "3", "--timeout", "20")
    assert r.returncode == 2 and "(n1 exited)" in r.stderr, r.stderr
    assert "stopped n2, n3; the cluster's data is kept" in r.stderr
    assert o.node_procs() == []


@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd binary not installed (Debian package etcd-server)")
def test_etcd_engine_up_status_kill_down(orch: Callable[..., Orch]) -> None:
    o = orch("etcd")
    r = o.up("--nodes", "3", "--engine", "etcd")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "(etcd)" in r.stdout
    st = o.status()
    assert st["engine"] == "etcd" and st["has_quorum"] and st["leader"]
    old = st["leader"]
    assert o("kill", "leader").returncode == 0
    o.wait(lambda s: s["leader"] not in ("", old) and s["has_quorum"])
    assert o("kv", "put", "k", "v").returncode == 0
    for n in st["nodes"]:
        assert "loop_stall_max_ms" not in n and n["cluster_id"]  # etcd reports no loop stall: absent, not 0
    live = next(p for p in o.pids() if _alive(p))
    argv = Path(f"/proc/{live}/cmdline").read_bytes().decode().split("\0")
    assert argv[argv.index("--auto-compaction-retention") + 1] == "10000"
    assert argv[argv.index("--data-dir") + 1].startswith("/")
    pids = o.pids()
    assert o("down", "--purge").returncode == 0
    assert not any(_alive(p) for p in pids)


def test_up_checks_one_cluster_and_every_configured_voter(tmp_path: Path) -> None:
    """The checks `up` waits on, on views made by hand: mixed cluster ids fail at once; missing voters wait."""
    c = Cluster(tmp_path, "u")
    st = ClusterState("u", "builtin", "local", "tok", 50, 500, 100, "info")
    for i, n in enumerate(("n1", "n2", "n3")):
        st.nodes[n] = NodeRecord(n, 30000 + i, 31000 + i)
    c._st = st

    def view(
        ids: list[str], leader_voters: list[str], roles: tuple[str, ...] = ("leader", "follower", "follower")
    ) -> ClusterView:
        nodes = [
            NodeView(f"n{i + 1}", "running", role=r, cluster_id=cid)
            for i, (cid, r) in enumerate(zip(ids, roles, strict=True))
        ]
        return ClusterView("u", "builtin", nodes, st.voter_names(), "n1", 2, leader_voters)

    c._check_one_cluster(view(["a", "a", "a"], ["n1", "n2", "n3"]))
    with pytest.raises(OrchestrateError, match=rf"n3: cluster b \({tmp_path / 'u' / 'data' / 'n3'}\)"):
        c._check_one_cluster(view(["a", "a", "b"], ["n1", "n2", "n3"]))
    st.cluster_id = "b"  # recorded by an earlier up: the state file decides who is odd
    with pytest.raises(OrchestrateError, match="n1: cluster a"):
        c._check_one_cluster(view(["a", "b", "b"], ["n1", "n2", "n3"]))
    assert c._not_all_voters(view(["b"] * 3, ["n1", "n2", "n3"])) == ""
    assert "missing n3" in c._not_all_voters(view(["b"] * 3, ["n1", "n2"]))
    assert "not configured: n4" in c._not_all_voters(view(["b"] * 3, ["n1", "n2", "n3", "n4"]))
    assert "n2 not answering" in c._not_all_voters(view(["b"] * 3, ["n1", "n2", "n3"], ("leader", "", "follower")))


def test_up_refuses_members_of_two_clusters_even_past_the_data_dir_check(orch: Callable[..., Orch]) -> None:
    """A state file without a cluster id (an older orchestrate) cannot vouch for the data dirs, so the
    pre-start check lets n3's foreign data through: `up` must still see two cluster ids and fail."""
    x, y = orch("x"), orch("y")
    assert y.up("--nodes", "n3").returncode == 0  # a one-member cluster whose member is also called n3
    assert y("down").returncode == 0
    assert x.up("--nodes", "3").returncode == 0
    assert x("down").returncode == 0
    f = x.root / "x" / "state.json"
    state = json.loads(f.read_text())
    state["cluster_id"] = ""
    f.write_text(json.dumps(state))
    d = x.root / "x" / "data" / "n3"
    shutil.rmtree(d)
    shutil.copytree(y.root / "y" / "data" / "n3", d)
    r = x.up("--nodes", "3", "--timeout", "20")
    assert r.returncode == 2, r.stdout
    assert "members of another cluster answered: n3: cluster" in r.stderr and str(d) in r.stderr, r.stderr
    assert "the cluster's data is kept" in r.stderr
    assert x.node_procs() == []


def test_a_state_file_of_the_previous_version_still_loads(tmp_path: Path) -> None:
    """Earlier versions kept the netns placement, the chaos state and made_root in an untyped `extra`
    dict: such a file loads into the typed fields, and is written back in the new shape."""
    old = {
        "name": "old",
        "engine": "builtin",
        "network": "netns",
        "token": "tok",
        "heartbeat_ms": 50,
        "election_ms": 500,
        "snapshot_count": 100,
        "log_level": "info",
        "cluster_id": "abc",
        "compaction_mode": "periodic",
        "compaction_retention": "1h",
        "quota_backend_bytes": 1024,
        "created": 1.5,
        "config_source": "flags",
        "nodes": {
            "n1": {
                "name": "n1",
                "client_port": 30001,
                "peer_port": 31001,
                "address": "10.231.7.2",
                "netns": "ql-abcdef-0",
                "pid": 0,
                "create_time": 0.0,
                "desired": "stopped",
                "host": "localhost",
                "member_id": "",
                "learner": False,
            }
        },
        "extra": {
            "netns": {"tag": "abcdef", "subnet": 7},
            "chaos": {
                "rules": {
                    "partition-1": [{"src": "n1", "dst": "n2", "action": "drop", "probability": 1.0, "delay_ms": 0.0}]
                },
                "groups": [["n1"], ["n2", "n3"]],
                "next_id": 1,
            },
            "made_root": True,
        },
    }
    d = StateDir(tmp_path, "old")
    d.ensure()
    d.file.write_text(json.dumps(old))
    st = d.load()
    assert st.netns is not None and (st.netns.tag, st.netns.subnet) == ("abcdef", 7)
    assert st.made_root and st.cluster_id == "abc" and st.nodes["n1"].netns == "ql-abcdef-0"
    assert st.chaos.groups == [["n1"], ["n2", "n3"]] and st.chaos.next_id == 1
    (rule,) = st.chaos.rules["partition-1"]
    assert (rule.src, rule.dst, rule.action) == ("n1", "n2", "drop")
    c = Cluster(tmp_path, "old")
    nn = c.netns()
    assert nn is not None and nn.ns(0) == "ql-abcdef-0"
    d.save(st)
    new = json.loads(d.file.read_text())
    assert "extra" not in new and new["netns"] == {"tag": "abcdef", "subnet": 7} and new["made_root"] is True
    assert d.load() == st  # the new shape reads back the same


def test_node_view_reports_only_what_the_engine_reported() -> None:
    """`status --json` shows an engine's own fields (voters, peers, revision …) only when it reported them."""
    bare = NodeView("n1", "stopped").to_dict()
    assert not {"voters", "learners", "revision", "peers", "fault_rules", "alarms", "loop_stall_max_ms"} & set(bare)
    etcd = NodeView("n1", "running", role="leader", revision=7, alarms=[]).to_dict()
    assert etcd["revision"] == 7 and etcd["alarms"] == [] and "voters" not in etcd and "peers" not in etcd
    builtin = NodeView(
        "n1", "running", voters=["n1"], learners=[], last_index=3, revision=2, peers={}, fault_rules=[]
    ).to_dict()
    assert list(builtin)[-6:] == ["voters", "learners", "last_index", "revision", "peers", "fault_rules"]


async def test_one_resolver_for_names_and_roles() -> None:
    """orchestrator/targets.py: what the CLI's node verbs and chaos faults both resolve targets with."""
    names = ["n1", "n2", "n3", "n4", "n5"]
    nodes = [NodeView(n, "running", role="follower", leader="n3") for n in names]
    nodes[2].role, nodes[4].state, nodes[4].role = "leader", "stopped", ""
    view = ClusterView("t", "builtin", nodes, names, "n3", 4)

    async def current() -> ClusterView:
        return view

    assert await targets.resolve("n2", names, current) == ["n2"]
    assert await targets.resolve(["n1", "n4"], names, current) == ["n1", "n4"]
    assert await targets.resolve("leader", names, current) == ["n3"]
    assert await targets.resolve("followers", names, current) == ["n1", "n2", "n4"]
    assert (await targets.resolve("follower", names, current))[0] in ("n1", "n2", "n4")
    assert (await targets.resolve("random", names, current))[0] in ("n1", "n2", "n3", "n4")
    assert await targets.resolve("minority", names, current) == ["n1", "n2"]
    assert await targets.resolve("majority", names, current) == ["n3", "n1", "n2"]
    assert await targets.resolve("all", names, current) == names
    with pytest.raises(targets.TargetError, match="unknown node 'n9'"):
        await targets.resolve("n9", names, current)
    with pytest.raises(targets.TargetError, match="unknown node 'minority'"):
        await targets.resolve("minority", names, current, targets.NODE_TARGETS)
    with pytest.raises(targets.TargetError, match="there is no leader"):
        await targets.resolve("leader", names, current_without_leader(view))


def current_without_leader(view: ClusterView) -> Callable[[], Awaitable[ClusterView]]:
    async def current() -> ClusterView:
        return ClusterView(view.name, view.engine, view.nodes, view.voters, "", view.term)

    return current


def test_up_gives_the_cluster_a_private_secret_that_admin_and_chaos_use(orch: Callable[..., Orch]) -> None:
    """Issue #11: the secret is a 0600 file handed over by path; Admin needs it; chaos verbs have it."""
    o = orch("sec")
    assert o.up("--nodes", "3").returncode == 0
    secret_file = o.root / "sec" / "peer.secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    secret = secret_file.read_text().strip()
    for pid in o.pids():
        cmdline = psutil.Process(pid).cmdline()
        assert cmdline[cmdline.index("--peer-auth-file") + 1] == str(secret_file)
        assert not any(secret in a for a in cmdline)
    ep = f"127.0.0.1:{o.client_port}"

    async def anonymous_admin() -> str:
        async with Client([ep], timeout=3.0) as c:
            await c.put("k", "v")  # the etcd API needs nothing
            try:
                await c.list_faults(ep)
            except ClientError as e:
                return str(e.code)
        return "OK"

    assert asyncio.run(anonymous_admin()) == "StatusCode.UNAUTHENTICATED"
    r = o("chaos", "isolate", "n1")
    assert r.returncode == 0, r.stderr
    assert o("chaos", "heal").returncode == 0
    o.wait(lambda s: len(s["leader_voters"]) == 3)
    r = o("down", "--purge")
    assert r.returncode == 0 and not secret_file.exists()
