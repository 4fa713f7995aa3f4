"""Chaos end to end: every built-in experiment, the netns backend with real iptables, real etcd, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chaos import experiment as exp
from chaos.history import APPEND, Op, load
from chaos.net import netdevs, netns_available, remove_netdevs
from chaos.workload import Workload
from orchestrator.ports import port_block
from tests.procs import REPO

BUILTINS = [name for name, _ in exp.list_builtin()]
NETNS_WHY = netns_available()


async def _run(name: str, tmp: Path, **kw: object) -> exp.RunResult:
    spec = exp.load(name)
    runner = exp.Runner(spec, tmp / "state", tmp / "reports", seed=7, **kw)  # type: ignore[arg-type]
    return await runner.run()


def _assert_ran(r: exp.RunResult) -> None:
    assert r.verdict == "valid", exp.summary(r)
    assert r.expectations or r.tables, "an experiment must measure something"
    assert all(e.passed for e in r.expectations)
    out = Path(r.report_dir)
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["verdict"] == "valid" and verdict["name"] == r.name
    assert (out / "events.json").exists()
    if r.check:
        assert (out / "timeline.png").stat().st_size > 10_000  # a real picture, not an empty file
        hist = next(out.glob("history*.jsonl"))
        ops = load(hist)
        assert ops and any(o.outcome == "ok" for o in ops)
        assert r.check["verdict"] == "valid"
        for d in r.check["per_size"]:
            if d.get("checker") == "elle":  # the append workload: transactions and watch streams both checked
                assert d["transactions"] > 100 and d["edges"] > 0
                assert d["watch"]["verdict"] == "valid" and d["watch"]["events"] > 100, d["watch"]


@pytest.mark.parametrize("name", [n for n in BUILTINS if n != "quorum-table"])
async def test_builtin_experiment_local_backend(name: str, tmp_path: Path) -> None:
    r = await _run(name, tmp_path)
    _assert_ran(r)


async def test_quorum_table_matches_the_notes(tmp_path: Path) -> None:
    r = await _run("quorum-table", tmp_path)
    _assert_ran(r)
    measured = {row["n"]: row["measured_fault_tolerance"] for row in r.tables}
    assert measured == {1: 0, 2: 0, 3: 1, 4: 1, 5: 2, 6: 2, 7: 3}


@pytest.mark.skipif(NETNS_WHY is not None, reason=f"netns backend unavailable: {NETNS_WHY}")
@pytest.mark.parametrize("name", ["split-3-3", "split-4-2", "leader-isolation"])
async def test_partitions_with_real_iptables_in_namespaces(name: str, tmp_path: Path) -> None:
    before = netdevs()
    try:
        r = await _run(name, tmp_path, net="netns")
        _assert_ran(r)
        assert any(e["kind"] == "fault" and "partition" in e["what"] for e in r.events)
    finally:
        left = remove_netdevs(netdevs() - before)  # only what this test made: never a user's cluster's
    assert left == [], f"the experiment left namespaces behind: {left}"


@pytest.mark.skipif(NETNS_WHY is not None, reason=f"netns backend unavailable: {NETNS_WHY}")
async def test_latency_under_netns_falls_back_to_the_nodes(tmp_path: Path) -> None:
    f = tmp_path / "delay.yaml"
    f.write_text(
        "cluster: {nodes: 3}\nworkload: {clients: 2}\nsteps:\n  - wait_for: leader\n"
        "  - delay: {ms: 80, nodes: leader}\n  - expect: {writable: true, within: 5}\n  - heal: {}\n"
        "checks: [linearizable]\n"
    )
    before = netdevs()
    try:
        r = await _run(str(f), tmp_path, net="netns")
        _assert_ran(r)
        assert any("added latency 80 ms" in e["what"] for e in r.events)
    finally:
        remove_netdevs(netdevs() - before)


@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd binary not installed (Debian package etcd-server)")
async def test_experiment_against_real_etcd(tmp_path: Path) -> None:
    r = await _run("leader-kill", tmp_path, engine="etcd")
    _assert_ran(r)


@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd binary not installed (Debian package etcd-server)")
async def test_append_transactions_and_watches_against_real_etcd(tmp_path: Path) -> None:
    r = await _run("append-leader-kill", tmp_path, engine="etcd")
    _assert_ran(r)


async def test_an_append_client_without_its_compares_is_caught(tmp_path: Path) -> None:
    """The planted bug kept as a test: without the mod_revision guard, concurrent read-modify-write
    transactions overwrite each other's appends, and the checker must name it."""
    f = tmp_path / "unguarded.yaml"
    f.write_text(
        "cluster: {nodes: 3}\nworkload: {kind: append, clients: 6, hot_keys: 2, guard: false}\n"
        "steps:\n  - wait_for: leader\n  - sleep: 2\n  - expect: {writable: true}\n"
        "checks: [strict-serializable]\n"
    )
    r = await _run(str(f), tmp_path)
    assert r.verdict == "invalid", exp.summary(r)
    found = r.check["per_size"][0]["anomalies"]
    assert {"lost-update", "lost-write"} & set(found), found
    pictures = r.check["per_size"][0]["pictures"]
    assert pictures and all(Path(p).read_text().startswith("<html>") for p in pictures)


@pytest.mark.skipif(
    shutil.which("etcd") is None or NETNS_WHY is not None,
    reason="needs etcd and the netns backend (root) to partition real etcd",
)
async def test_real_etcd_split_with_iptables(tmp_path: Path) -> None:
    before = netdevs()
    try:
        r = await _run("split-4-2", tmp_path, engine="etcd", net="netns")
        _assert_ran(r)
    finally:
        remove_netdevs(netdevs() - before)


def _orch(root: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "--root", str(root), "--name", "cx", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_chaos_cli_partition_heal_and_check(tmp_path: Path) -> None:
    root = tmp_path / "state"
    try:
        r = _orch(
            root,
            "up",
            "--nodes",
            "5",
            "--client-port",
            str(port_block(6)),
            "--peer-port",
            str(port_block(6)),
            "--heartbeat-ms",
            "50",
            "--election-ms",
            "500",
        )
        assert r.returncode == 0, r.stderr
        r = _orch(root, "chaos", "partition", "n1,n2", "n3,n4,n5")
        assert r.returncode == 0 and "n1,n2 | n3,n4,n5" in r.stdout, r.stderr
        r = _orch(root, "chaos", "drop", "n3", "n4")  # combines with the partition
        assert r.returncode == 0, r.stderr
        listed = _orch(root, "chaos", "list").stdout
        assert "partition-1" in listed and "drop-2" in listed
        # every node's rule table holds both faults
        st = json.loads(_orch(root, "status", "-w", "json").stdout)
        rules = next(n for n in st["nodes"] if n["name"] == "n3")["fault_rules"]
        assert {"src": "n3", "dst": "n4"} in [{"src": x["src"], "dst": x["dst"]} for x in rules]
        assert _orch(root, "chaos", "heal").returncode == 0
        st = json.loads(_orch(root, "status", "-w", "json").stdout)
        assert all(not n["fault_rules"] for n in st["nodes"] if n["state"] == "running")
        r = _orch(root, "chaos", "isolate", "n9")
        assert r.returncode == 2 and "unknown node 'n9'" in r.stderr
    finally:
        _orch(root, "down", "--purge")
    # `orchestrate check` on a saved history
    hist = tmp_path / "h.jsonl"
    hist.write_text(
        '{"id":0,"client":1,"kind":"put","key":"x","value":"1","outcome":"ok","invoke":0,"complete":1}\n'
        '{"id":1,"client":2,"kind":"get","key":"x","value":"0","outcome":"ok","invoke":2,"complete":3}\n'
    )
    r = _orch(root, "check", str(hist))
    assert r.returncode == 1 and "NOT linearizable" in r.stdout and "never written" in r.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    r = _orch(root, "check", str(bad))
    assert r.returncode == 2 and "bad.jsonl:1" in r.stderr
    # an append history (found from its records) with a watch stream and the final read
    txn = tmp_path / "txn.jsonl"
    lines = [
        '{"id":0,"client":1,"kind":"txn","key":"","outcome":"ok","invoke":0,"complete":1,"revision":2,'
        '"mops":[["append","a/0",1]]}',
        '{"id":1,"client":2,"kind":"txn","key":"","outcome":"ok","invoke":2,"complete":3,"revision":2,'
        '"mops":[["r","a/0",[1]]]}',
        '{"watch":{"stream":0,"what":"start","start_revision":1}}',
        '{"watch":{"stream":0,"what":"event","key":"a/0","type":"put","value":"1","revision":2}}',
        '{"final":{"revision":2,"kvs":{"a/0":["1",2]}}}',
    ]
    txn.write_text("\n".join(lines) + "\n")
    r = _orch(root, "check", str(txn))
    assert r.returncode == 0 and "strict serializability" in r.stdout and "watch VALID" in r.stdout, r.stdout
    txn.write_text("\n".join(lines).replace('"mops":[["r","a/0",[1]]]', '"mops":[["r","a/0",[]]]') + "\n")
    r = _orch(root, "check", str(txn))
    assert r.returncode == 1 and "G-single-realtime" in r.stdout, r.stdout
    txn.write_text("\n".join([*lines[:4], lines[3], lines[4]]) + "\n")  # the event delivered twice
    r = _orch(root, "check", str(txn), "-w", "json")
    assert r.returncode == 1 and json.loads(r.stdout)["watch"]["violations"] == {"duplicate": 1}, r.stdout


def test_a_watch_check_opens_the_watches(tmp_path: Path) -> None:
    f = tmp_path / "e.yaml"
    f.write_text("workload: {kind: append, clients: 2}\nchecks: [strict-serializable, watch]\n")
    assert exp.load(str(f))["workload"]["watch"] is True
    f.write_text("workload: {kind: append, clients: 2, watch: false}\nchecks: [watch]\n")
    with pytest.raises(exp.ExperimentError, match=r"checks: watch, but workload\.watch is false"):
        exp.load(str(f))
    f.write_text("checks: [watch]\n")
    with pytest.raises(exp.ExperimentError, match="checks: watch needs a workload"):
        exp.load(str(f))


def test_a_watch_check_without_records_is_not_valid() -> None:
    d = exp.check_recorded([], None, None, [], APPEND, True, budget_s=5)
    assert d["verdict"] == "unknown" and d["watch"]["verdict"] == "unknown"


def test_a_failed_final_read_does_not_hide_an_invalid_history(tmp_path: Path) -> None:
    spec = {"name": "x", "checks": ["strict-serializable"], "workload": {"kind": APPEND, "clients": 1}}
    runner = exp.Runner(spec, tmp_path / "state", tmp_path / "reports")
    wl = Workload({}, kind=APPEND)
    g1c: list[list[list[Any]]] = [[["append", "a/0", 1], ["r", "a/1", [2]]], [["append", "a/1", 2], ["r", "a/0", [1]]]]
    wl.history = [Op(i, i, "txn", "", outcome="ok", invoke=0, complete=1, mops=m) for i, m in enumerate(g1c)]
    runner._check([(3, wl, None)], tmp_path)  # None: the cluster never answered the final read
    assert runner.result.check["verdict"] == "invalid", runner.result.check
    wl.history = wl.history[:1]
    wl.history[0].mops = [["append", "a/0", 1]]
    runner._check([(3, wl, None)], tmp_path)
    assert runner.result.check["verdict"] == "unknown", runner.result.check


def test_experiment_file_errors(tmp_path: Path) -> None:
    f = tmp_path / "e.yaml"
    f.write_text("steps:\n  - expect: {writable: false, on: each-side}\n")
    with pytest.raises(exp.ExperimentError, match="say at:"):
        exp.load(str(f))
    f.write_text("steps:\n  - explode: now\n")
    with pytest.raises(exp.ExperimentError, match="unknown step 'explode'"):
        exp.load(str(f))
    with pytest.raises(exp.ExperimentError, match="no experiment 'nope'"):
        exp.load("nope")
    f.write_text("workload: {kind: bank}\n")
    with pytest.raises(exp.ExperimentError, match="kind 'bank' is not one of register, append"):
        exp.load(str(f))
    f.write_text("workload: {clients: 2, watches: true}\n")
    with pytest.raises(exp.ExperimentError, match="unknown key 'watches'"):
        exp.load(str(f))
    f.write_text("checks: [serializable]\n")
    with pytest.raises(exp.ExperimentError, match="unknown check 'serializable'"):
        exp.load(str(f))
