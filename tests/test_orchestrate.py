"""`orchestrate` end to end, through the CLI in subprocesses, on free ports in a temporary state root."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import ConfigError, parse
from orchestrator.ports import port_block
from tests.procs import REPO


class Orch:
    def __init__(self, root: Path, name: str, nodes_max: int = 8) -> None:
        self.root, self.name = root, name
        self.client_port = port_block(nodes_max)
        self.peer_port = port_block(nodes_max)

    def __call__(self, *args: str, stdin: str | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "orchestrator", "--root", str(self.root), "--name", self.name, *args]
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, input=stdin, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip

    def up(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self("up", "--client-port", str(self.client_port), "--peer-port", str(self.peer_port),
                    "--heartbeat-ms", "50", "--election-ms", "500", *extra)  # fmt: skip

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

    def cleanup(self) -> None:
        self("down", "--purge", timeout=60)
        for pid in self.pids():
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
    with pytest.raises(ConfigError, match=r"c\.yaml:2: not valid YAML"):
        parse("nodes: 3\n  bad: [indent\n", "c.yaml")
    with pytest.raises(ConfigError, match="overlap"):
        parse("nodes: 5\nports: {client: 2379, peer: 2381}\n", "c.yaml")
    with pytest.raises(ConfigError, match="timeouts: election_ms"):
        parse("timeouts: {heartbeat_ms: 100, election_ms: 150}\n", "c.yaml")
    cfg = parse((REPO / "cluster.yaml").read_text(), "cluster.yaml")
    assert cfg.nodes == ("n1", "n2", "n3") and cfg.client_port == 2379


def test_cli_reports_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: 3\nhosts: localhost\n")
    r = subprocess.run([sys.executable, "-m", "orchestrator", "--config", str(bad), "status"], cwd=REPO,
                       capture_output=True, text=True, timeout=30)  # fmt: skip
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
    assert o("start", old).returncode == 0
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
    assert o.pids() == []  # nothing was started


def test_up_times_out_with_a_diagnosis(orch: Callable[..., Orch], tmp_path: Path) -> None:
    o = orch("slow")
    # two of three nodes cannot start (their data dirs are files), so no quorum forms
    for n in ("n2", "n3"):
        d = o.root / "slow" / "data"
        d.mkdir(parents=True, exist_ok=True)
        (d / n).write_text("not a directory")
    r = o.up("--nodes", "3", "--timeout", "4")
    assert r.returncode == 2
    assert "did not become ready within 4s" in r.stderr
    assert "n2: process stopped" in r.stderr and "last log lines" in r.stderr


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
    pids = o.pids()
    assert o("down", "--purge").returncode == 0
    assert not any(_alive(p) for p in pids)
