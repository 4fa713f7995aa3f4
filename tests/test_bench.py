"""`orchestrate bench`: a tiny matrix against both engines, its output's structure, and its cleanup.

Never asserts speed: only that both engines served, the numbers are consistent with each other,
the ratios are the ones computed from the numbers shown, and nothing it started outlives it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from bench.cli import render

REPO = Path(__file__).resolve().parent.parent
TINY = ["--nodes", "1", "--ops", "put", "--rounds", "1", "--failover-rounds", "0", "--up-rounds", "0"]
needs_etcd = pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd binary not on PATH")


def _ours() -> set[int]:
    """Pids of bench-made processes: throwaway cluster nodes and load workers."""
    out = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "qlbench-" in cmd or "bench.loadgen" in cmd:
            out.add(p.info["pid"])
    return out


def _bench(args: list[str], **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "bench", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,  # type: ignore[call-overload]
    )


def _gone(before: set[int], timeout: float = 20.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = _ours() - before
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


@needs_etcd
def test_tiny_matrix_both_engines(tmp_path: Path) -> None:
    before = _ours()
    p = _bench([*TINY, "--clients", "4", "--seconds", "1", "-w", "json", "--out", str(tmp_path)])
    try:
        out, err = p.communicate(timeout=180)
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
    assert not _gone(before), "bench left processes running"


@needs_etcd
def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    before = _ours()
    dirs_before = set(Path(tempfile.gettempdir()).glob("qlbench-*"))
    p = _bench([*TINY, "--clients", "2", "--seconds", "30", "--out", str(tmp_path)])
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # until a load worker runs: mid-phase
            if any("bench.loadgen" in " ".join(psutil.Process(x).cmdline()) for x in _ours() - before):
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
    left = _gone(before)
    for pid in left:  # do not leak into the rest of the suite, then fail
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"still running after Ctrl-C: {left}"
    left_dirs = set(Path(tempfile.gettempdir()).glob("qlbench-*")) - dirs_before
    assert not left_dirs, f"throwaway state not removed: {left_dirs}"


def test_bad_input_is_one_line() -> None:
    p = _bench(["--clients", "0,16"])
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2
    assert err.strip().count("\n") == 0 and "--clients" in err and "Traceback" not in err
