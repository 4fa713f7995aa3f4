"""bench/startup.py: the phases of `orchestrate up` come from real marks, add up to the wall time, and
every round is purged. Never asserts speed."""

from __future__ import annotations

import psutil
import pytest

from bench.startup import PHASES, NodeTimes, import_total_s, parse_node_log, phases_of, run_round

TABLE = """import time: self [us] | cumulative | imported package
import time:       100 |        100 | _io
import time:       500 |        500 |   os
import time:       200 |        700 | site
import time:      1000 |       3000 | orchestrator.cli
import time:      2000 |       2000 |   node.client
"""

LOG = """
=== 2026-11-27 13:00:00 starting: python -m node --name n1
import time:       300 |      250000 | node.__main__
2026-11-27 13:00:00,400 INFO quorumlab.node: member n1 (1) of cluster 2 started; peer http://x:1, 0 entries
2026-11-27 13:00:00,402 INFO quorumlab: n1 serving clients on http://127.0.0.1:5
2026-11-27 13:00:00,900 INFO quorumlab.node: n1: leader is now n1 (term 2)
"""


def test_import_table_sums_top_level_only() -> None:
    # 100 + 700 (site's 500 us child counted once) + 3000 (the script's import; node.client is inside it)
    assert import_total_s(TABLE) == pytest.approx(0.0038)
    assert import_total_s("no table here") is None


def test_node_log_marks_from_the_last_start() -> None:
    earlier = "\n=== 2026-11-27 12:00:00 starting: old\n2026-11-27 12:00:00,100 INFO q: n1 serving clients on x\n"
    nt = parse_node_log(earlier + LOG, spawned=100.0)
    assert nt.imports_s == pytest.approx(0.25)
    assert nt.peer_up is not None and nt.grpc_up is not None and nt.leader_known is not None
    assert nt.grpc_up - nt.peer_up == pytest.approx(0.002, abs=1e-6)
    assert nt.leader_known - nt.peer_up == pytest.approx(0.5, abs=1e-6)


def test_phases_add_up_and_never_go_negative() -> None:
    nodes = {"n1": NodeTimes(10.1, 0.2, 10.4, 10.41, 10.7), "n2": NodeTimes(10.11, 0.3, 10.45, 10.46, None)}
    ph = phases_of(10.0, 11.0, 0.08, nodes, (10.75, 10.8))
    assert list(ph) == [k for k, _ in PHASES]
    assert all(v >= 0 for v in ph.values())
    assert sum(ph.values()) == pytest.approx(1000.0)
    assert ph["poll_lag"] == pytest.approx(50.0)  # leader 10.7 -> first write 10.75


def _ours() -> set[int]:
    """Processes of any startup round (their paths carry the bench's temp-dir prefix)."""
    out = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        if any("qlbench-startup-" in a for a in p.info["cmdline"] or ()):
            out.add(p.info["pid"])
    return out


def test_one_real_round_marks_in_order_and_purged() -> None:
    before = _ours()
    r = run_round(3, importtime=True)
    t_end = r.t0 + r.wall_s
    slack = 0.03  # process start times tick in 10 ms
    assert set(r.nodes) == {"n1", "n2", "n3"}
    for n in r.nodes.values():
        assert n.imports_s is not None and n.imports_s > 0
        assert n.peer_up is not None and n.grpc_up is not None and n.leader_known is not None
        assert r.t0 - slack <= n.spawned <= n.peer_up <= n.grpc_up <= t_end
        assert n.spawned + n.imports_s <= n.peer_up + slack
    assert r.phases["cli_imports"] > 0 and r.phases["node_imports"] > 0
    assert all(v >= 0 for v in r.phases.values())
    assert sum(r.phases.values()) == pytest.approx(r.wall_s * 1000, abs=1.0)
    assert r.cpu["cli"] > 0 and r.cpu["nodes"] > 0
    assert _ours() - before == set()  # down --purge stopped every node


def test_failed_up_is_one_error_and_leaves_nothing() -> None:
    before = _ours()
    with pytest.raises(RuntimeError, match="exited"):
        run_round(3, importtime=False, engine="nosuch")
    assert _ours() - before == set()
