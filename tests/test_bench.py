"""`orchestrate bench`: a tiny matrix against both engines (and the floor), its output's structure, its cleanup.

Never asserts speed: only that both engines served, the numbers are consistent with each other,
the ratios are the ones computed from the numbers shown, and nothing it started outlives it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from bench.cli import render

REPO = Path(__file__).resolve().parent.parent
TINY = ["--nodes", "1", "--ops", "put", "--rounds", "1", "--failover-rounds", "0", "--up-rounds", "0"]
needs_etcd = pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd binary not on PATH")


def _bench(args: list[str], **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "bench", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,  # type: ignore[call-overload]
    )


@dataclass(frozen=True)
class _Seen:
    pid: int
    created: float
    cmdline: tuple[str, ...]


def _note_children(p: subprocess.Popen[str], seen: set[_Seen]) -> None:
    try:
        kids = psutil.Process(p.pid).children(recursive=True)
    except psutil.Error:
        return
    for k in kids:
        try:
            seen.add(_Seen(k.pid, k.create_time(), tuple(k.cmdline())))
        except psutil.Error:
            pass


def _watch(p: subprocess.Popen[str], timeout: float) -> tuple[set[_Seen], tuple[str, str]]:
    """Wait for the bench, noting every process it started meanwhile (others' benches may share the machine)."""
    seen: set[_Seen] = set()
    box: dict[str, tuple[str, str]] = {}
    reader = threading.Thread(target=lambda: box.setdefault("io", p.communicate()), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while reader.is_alive() and time.monotonic() < deadline:
        _note_children(p, seen)
        time.sleep(0.1)
    reader.join(max(0.0, deadline - time.monotonic()))
    if "io" not in box:
        p.kill()
        _kill_all(seen)  # its nodes and workers too: a hung bench must not leak them into the suite
        pytest.fail("bench did not finish in time")
    return seen, box["io"]


def _kill_all(procs: Iterable[_Seen]) -> None:
    for s in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(s.pid, signal.SIGKILL)


def _alive(seen: set[_Seen], timeout: float = 20.0) -> list[_Seen]:
    """Those of `seen` still running (the same process: pid and start time) after up to `timeout` s."""

    def running(s: _Seen) -> bool:
        try:
            q = psutil.Process(s.pid)
            return q.create_time() == s.created and q.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    deadline = time.monotonic() + timeout
    while True:
        left = [s for s in seen if running(s)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


@needs_etcd
def test_tiny_matrix_both_engines(tmp_path: Path) -> None:
    p = _bench([*TINY, "--clients", "4", "--seconds", "1", "-w", "json", "--out", str(tmp_path)])
    try:
        seen, (out, err) = _watch(p, 180)
    finally:
        p.kill()
    assert p.returncode == 0, err
    doc = json.loads(out)
    assert json.loads((tmp_path / "bench.json").read_text())["cells"] == doc["cells"]
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    [cell] = doc["cells"]
    assert (cell["nodes"], cell["op"], cell["clients"]) == (1, "put", 4)
    for e in ("builtin", "etcd"):
        m = cell[e]
        assert m["ops"] > 0 and m["ops_per_s"] > 0, (e, m)
        assert m["errors"] == 0, (e, m)
        assert 0 < m["p50_ms"] <= m["p90_ms"] <= m["p99_ms"] <= m["max_ms"], (e, m)
        [rnd] = m["rounds"]
        assert rnd["ops_per_s"] == pytest.approx(rnd["ops"] / rnd["seconds"], rel=0.01)
        assert 0.9 < rnd["seconds"] < 3.0  # the phase lasted what was asked (it stops by itself)
        assert list(m["rss_mb"]) == ["n1"] and m["rss_mb"]["n1"] > 1
        assert m["cpu_pct"]["n1"] > 0 and m["cpu_ms_per_op"] > 0
    assert cell["ratio"]["ops_per_s"] == round(cell["builtin"]["ops_per_s"] / cell["etcd"]["ops_per_s"], 3)
    assert cell["ratio"]["p99_ms"] == round(cell["builtin"]["p99_ms"] / cell["etcd"]["p99_ms"], 3)
    # the table shows the same medians and the ratio they give
    table = render(doc).splitlines()
    row = table[2].split()
    shown_b, shown_e, shown_ratio = float(row[3].replace(",", "")), float(row[9].replace(",", "")), float(row[15])
    assert shown_ratio == pytest.approx(shown_b / shown_e, abs=0.02)
    assert any("qlbench-" in " ".join(x.cmdline) for x in seen), "the nodes were watched"
    assert not _alive(seen), "bench left processes running"


@needs_etcd
def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    p = _bench([*TINY, "--clients", "2", "--seconds", "30", "--out", str(tmp_path)])
    seen: set[_Seen] = set()
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # until a load worker runs: mid-phase
            _note_children(p, seen)
            if any("bench.loadgen" in " ".join(x.cmdline) for x in seen):
                break
            time.sleep(0.2)
        else:
            pytest.fail("no load phase started")
        time.sleep(1.0)
        p.send_signal(signal.SIGINT)
        rc = p.wait(timeout=60)
    finally:
        p.kill()
        p.communicate()
    assert rc == 130
    left = _alive(seen)
    _kill_all(left)  # do not leak into the rest of the suite, then fail
    assert not left, f"still running after Ctrl-C: {left}"
    # the throwaway state dirs its nodes ran in (named in their command lines), not other benches' on this machine
    tmp = Path(tempfile.gettempdir())
    dirs = {tmp / Path(a).relative_to(tmp).parts[0] for x in seen for a in x.cmdline if a.startswith(f"{tmp}/qlbench-")}
    assert dirs, "the nodes were watched"
    left_dirs = {d for d in dirs if d.exists()}
    assert not left_dirs, f"throwaway state not removed: {left_dirs}"


def test_bad_input_is_one_line() -> None:
    p = _bench(["--clients", "0,16"])
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2
    assert err.strip().count("\n") == 0 and "--clients" in err and "Traceback" not in err


async def test_floor_cluster_serves_and_stops() -> None:
    """N bare servers on their own ports answer etcd's KV calls; leaving the block ends every one of them."""
    import grpc

    from bench.floor import floor_cluster
    from node.pb import rpc_pb2, rpc_pb2_grpc

    async with floor_cluster(2, value_size=8) as fc:
        pids = [p.pid for p in fc.popens]
        assert len(set(fc.endpoints)) == 2 and set(fc.procs()) == {"n1", "n2"}
        for ep in fc.endpoints:
            async with grpc.aio.insecure_channel(ep) as ch:
                kv = rpc_pb2_grpc.KVStub(ch)
                put = await kv.Put(rpc_pb2.PutRequest(key=b"k", value=b"v"), timeout=5)
                got = await kv.Range(rpc_pb2.RangeRequest(key=b"k"), timeout=5)
                txn = await kv.Txn(rpc_pb2.TxnRequest(), timeout=5)
                dele = await kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"k"), timeout=5)
                assert put.header.revision > 0 and txn.succeeded and dele.deleted == 1
                assert got.count == 1 and got.kvs[0].value == b"v" * 8
    left = [x for x in pids if psutil.pid_exists(x) and psutil.Process(x).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"floor servers still running: {left}"


def test_tiny_matrix_with_floor(tmp_path: Path) -> None:
    args = ["--nodes", "3", "--engines", "builtin,floor", "--ops", "put,sget", "--clients", "4", "--seconds", "1"]
    args += ["--rounds", "1", "--failover-rounds", "1", "--up-rounds", "0", "--out", str(tmp_path)]
    p = _bench(args)
    try:
        seen, (out, err) = _watch(p, 180)
    finally:
        p.kill()
    assert p.returncode == 0, err
    floors = [x for x in seen if f"qlbench-floor-{p.pid}" in " ".join(x.cmdline)]
    assert len(floors) == 3, "one floor process per node"
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert [(c["nodes"], c["op"], c["clients"]) for c in doc["cells"]] == [(3, "put", 4), (3, "sget", 4)]
    for cell in doc["cells"]:
        m = cell["floor"]
        assert m["ops"] > 0 and m["errors"] == 0, m
        assert list(m["rss_mb"]) == ["n1", "n2", "n3"] and m["cpu_ms_per_op"] > 0, m  # every process counted
        assert len(m["cpu_pct"]) == 3 and sum(m["cpu_pct"].values()) > 0, m  # (few clients may leave a node idle)
        r = cell["ratio_floor"]
        assert r["ops_per_s"] == round(cell["builtin"]["ops_per_s"] / m["ops_per_s"], 3)
        assert r["cpu_ms_per_op"] == round(cell["builtin"]["cpu_ms_per_op"] / m["cpu_ms_per_op"], 3)
        assert "ratio" not in cell  # no etcd in this run
    assert list(doc["failover_s"]) == ["builtin"]  # the floor has no leader to kill
    table = out.splitlines()
    head = table[1].split()
    assert head[3:13] == ["builtin", "ops/s", "p50", "p90", "p99", "max", "cpu/op", "floor", "ops/s", "p99"]
    row = table[2].split()
    shown_b, shown_f, shown_ratio = (float(row[i].replace(",", "")) for i in (3, 9, 12))
    assert shown_ratio == pytest.approx(shown_b / shown_f, abs=0.02)
    assert sum("floor: bare grpc.aio" in line for line in table) == 1  # said once
    assert not _alive(seen), "bench left processes running"


def test_ctrl_c_stops_floor(tmp_path: Path) -> None:
    p = _bench(["--engines", "floor", *TINY, "--clients", "2", "--seconds", "30", "--out", str(tmp_path)])
    seen: set[_Seen] = set()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # floor servers and a load worker running: mid-phase
            try:
                kids = psutil.Process(p.pid).children(recursive=True)
                seen |= {_Seen(k.pid, k.create_time(), tuple(k.cmdline())) for k in kids}
            except psutil.Error:
                pass
            cmds = [" ".join(s.cmdline) for s in seen]
            if any("bench.loadgen" in c for c in cmds) and any(f"qlbench-floor-{p.pid}" in c for c in cmds):
                break
            time.sleep(0.2)
        else:
            pytest.fail("no load phase started")
        p.send_signal(signal.SIGINT)
        rc = p.wait(timeout=60)
    finally:
        p.kill()
        p.communicate()
    left = _alive(seen)
    _kill_all(left)  # do not leak into the rest of the suite, then fail
    assert rc == 130
    assert not left, f"still running after Ctrl-C: {left}"
