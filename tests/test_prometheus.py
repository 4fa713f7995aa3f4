"""A real Prometheus (Debian's `prometheus`) scraping a cluster `orchestrate up --prometheus` started.

Both engines: PromQL sees one leader, and a survivor's leader-change counter rises after
`orchestrate kill leader`. The builtin engine also: /health is 503 on the cut-off side of a split
and 200 after heal, `add` reaches Prometheus through a regenerated config and SIGHUP, and `status`
shows fsync p99 from each node's /metrics. Every wait is bounded; `down --purge` runs in finally.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from orchestrator import prometheus
from orchestrator.config import ConfigError, parse
from orchestrator.state import ClusterState
from tests.procs import free_port_block

T = TypeVar("T")

needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus not installed (Debian package prometheus)"
)
needs_etcd = pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd binary not installed (etcd-server)")


class Orch:
    """`python -m orchestrator` in subprocesses against one cluster in a temporary root."""

    def __init__(self, root: Path, name: str = "p") -> None:
        self.root, self.name = root, name
        self.client_port, self.peer_port = free_port_block(5), free_port_block(5)

    def __call__(self, *args: str, timeout: float = 60, path: str | None = None) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ) if path is None else {**os.environ, "PATH": path}
        return subprocess.run(
            [sys.executable, "-m", "orchestrator", "--root", str(self.root), "--name", self.name, *args],
            cwd=self.root.parent,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env=env,
        )

    def up(self, *extra: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
        ports = ("--client-port", str(self.client_port), "--peer-port", str(self.peer_port))
        return self("up", *ports, "--heartbeat-ms", "50", "--election-ms", "500", *extra, path=path)

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads((self.root / self.name / "state.json").read_text())
        return out

    def prom_url(self) -> str:
        return f"http://127.0.0.1:{self.state()['prom']['port']}"

    def metrics(self, node: str) -> str:
        return f"127.0.0.1:{self.state()['nodes'][node]['metrics_port']}"

    def cleanup(self) -> None:
        """down --purge, then SIGKILL whatever still runs from this root (a failed down must not leak)."""
        pids: list[int] = []
        f = self.root / self.name / "state.json"
        if f.exists():
            st = json.loads(f.read_text())
            pids = [r["pid"] for r in st["nodes"].values() if r["pid"]] + ([st["prom"]["pid"]] if st["prom"] else [])
        self("down", "--purge", timeout=60)
        mine = str(self.root / self.name) + "/"
        for p in psutil.process_iter(["cmdline"]):
            if p.pid != os.getpid() and (p.pid in pids or any(mine in a for a in (p.info["cmdline"] or []))):
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def orch(tmp_path: Path) -> Iterator[Orch]:
    o = Orch(tmp_path / "state")
    try:
        yield o
    finally:
        o.cleanup()


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 15.0) -> T:
    """probe() until it returns something other than None; AssertionError naming `what` at the timeout."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            got = probe()
        except prometheus.PrometheusError as e:
            got, last = None, e
        if got is not None:
            return got
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last})")


def scalar(url: str, promql: str) -> float | None:
    res = prometheus.query(url, promql)
    return res[0][1] if len(res) == 1 else None


def by_member(url: str, promql: str) -> dict[str, float]:
    return {labels.get("member", "?"): v for labels, v in prometheus.query(url, promql)}


def health(addr: str) -> int:
    try:
        with urllib.request.urlopen(f"http://{addr}/health", timeout=1.0) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, OSError):
        return 0


def one_leader_then_failover(o: Orch) -> None:
    """The PromQL both engines must answer alike: one leader; a survivor counts the change after kill leader."""
    url = o.prom_url()
    # Prometheus scrapes every second: wait for all three targets and one leader among them
    wait_for("3 targets up", lambda: True if scalar(url, "sum(up)") == 3 else None)
    assert wait_for("one leader", lambda: scalar(url, "sum(etcd_server_is_leader)") or None) == 1
    leaders = by_member(url, "etcd_server_is_leader == 1")
    assert len(leaders) == 1
    (old,) = leaders
    before = by_member(url, "etcd_server_leader_changes_seen_total")
    assert set(before) == {"n1", "n2", "n3"} and all(v >= 1 for v in before.values())
    r = o("kill", "leader")
    assert r.returncode == 0 and f"kill {old}" in r.stdout, r.stderr + r.stdout
    survivors = sorted(set(before) - {old})

    def risen() -> dict[str, float] | None:
        now = by_member(url, "etcd_server_leader_changes_seen_total")
        up = {m: now[m] for m in survivors if m in now and now[m] > before[m]}
        return up or None

    wait_for("a survivor's etcd_server_leader_changes_seen_total to increase", risen)

    def new_leader() -> dict[str, float] | None:
        # the killed leader's last sample stays until Prometheus' next failed scrape marks it stale
        now = by_member(url, "etcd_server_is_leader == 1")
        return now if len(now) == 1 and set(now) <= set(survivors) else None

    wait_for("one new leader among the survivors (PromQL)", new_leader)


# -- no processes -------------------------------------------------------------------------------------
def test_config_state_and_histograms() -> None:
    cfg = parse("nodes: 3\nprometheus: true\nports: {client: 30000, peer: 30010, metrics: 30020}\n", "c.yaml")
    assert cfg.prometheus and cfg.metrics_port_of("n3") == 30022
    assert parse("nodes: 3\n", "c.yaml").metrics_port_of("n1") == 0  # picked at `up`
    with pytest.raises(ConfigError, match="metrics ports 30000-30002 overlap client ports"):
        parse("nodes: 3\nports: {client: 30000, peer: 30010, metrics: 30000}\n", "c.yaml")
    with pytest.raises(ConfigError, match=r"c.yaml:1: prometheus: expected true or false"):
        parse("prometheus: yes please\n", "c.yaml")
    # a state file written before metrics ports and Prometheus still loads: no metrics URL, no Prometheus
    old = {
        "name": "o",
        "engine": "builtin",
        "network": "local",
        "token": "t",
        "heartbeat_ms": 100,
        "election_ms": 1000,
        "snapshot_count": 10000,
        "log_level": "info",
        "nodes": {"n1": {"name": "n1", "client_port": 30000, "peer_port": 30010}},
    }
    st = ClusterState.from_json(json.dumps(old))
    assert st.nodes["n1"].metrics_port == 0 and st.nodes["n1"].metrics_url == "" and st.prom is None
    assert ClusterState.from_json(st.to_json()) == st
    text = "\n".join(
        [
            'etcd_disk_wal_fsync_duration_seconds_bucket{le="0.001"} 50',
            'etcd_disk_wal_fsync_duration_seconds_bucket{le="0.002"} 100',
            'etcd_disk_wal_fsync_duration_seconds_bucket{le="+Inf"} 100',
            "etcd_disk_wal_fsync_duration_seconds_count 100",
            'etcd_network_peer_round_trip_time_seconds_bucket{To="a",le="0.0002"} 0',
            'etcd_network_peer_round_trip_time_seconds_bucket{To="a",le="0.0004"} 10',
            'etcd_network_peer_round_trip_time_seconds_bucket{To="a",le="+Inf"} 10',
        ]
    )
    fsync, rtt = prometheus.fsync_and_rtt_ms(text)
    assert fsync == pytest.approx(1.98) and rtt == pytest.approx(0.3)
    assert prometheus.fsync_and_rtt_ms("") == (None, None)


def test_missing_prometheus_is_one_line_and_starts_nothing(tmp_path: Path) -> None:
    o = Orch(tmp_path / "state")
    try:
        r = o.up("--nodes", "3", "--prometheus", path="/nonexistent")
        assert r.returncode == 2, r.stderr + r.stdout
        assert r.stderr.strip().splitlines() == [
            "orchestrate: prometheus is not installed (Debian package `prometheus`; scripts/setup.sh installs it)"
        ]
        assert not (o.root / o.name / "state.json").exists()
    finally:
        o.cleanup()


# -- a real Prometheus ----------------------------------------------------------------------------------
@needs_prometheus
def test_builtin_cluster_scraped_by_prometheus(orch: Orch) -> None:
    o = orch
    r = o.up("--nodes", "3", "--prometheus")
    assert r.returncode == 0, r.stderr + r.stdout
    st = o.state()
    for n in ("n1", "n2", "n3"):
        assert f"metrics {n}: http://127.0.0.1:{st['nodes'][n]['metrics_port']}/metrics" in r.stdout
    assert f"prometheus: {o.prom_url()}" in r.stdout
    assert (o.root / o.name / "prometheus" / "prometheus.yml").exists()
    # status reads each node's /metrics: fsync p99 for every node, the metrics URL in --json
    js = json.loads(o("status", "-w", "json").stdout)
    assert js["prometheus_url"] == o.prom_url()
    for node in js["nodes"]:
        assert node["metrics_url"] == f"http://{o.metrics(node['name'])}"
        assert node["fsync_p99_ms"] >= 0
    table = o("status").stdout
    assert "FSYNC p99" in table and "RTT" in table

    one_leader_then_failover(o)

    # /health: 503 on the side cut off from the quorum, 200 again after heal
    dead = next(n for n, rec in o.state()["nodes"].items() if rec["desired"] == "stopped")
    r = o("start", dead)
    assert r.returncode == 0, r.stderr + r.stdout
    wait_for(
        "every /health 200", lambda: True if all(health(o.metrics(n)) == 200 for n in ("n1", "n2", "n3")) else None
    )
    victim = "n1" if dead != "n1" else "n2"  # any one node alone is a minority of three
    r = o("chaos", "isolate", victim)
    assert r.returncode == 0, r.stderr + r.stdout
    wait_for(f"{victim} /health 503 while isolated", lambda: True if health(o.metrics(victim)) == 503 else None)
    majority = [n for n in ("n1", "n2", "n3") if n != victim]
    assert all(health(o.metrics(n)) == 200 for n in majority)
    assert o("chaos", "heal").returncode == 0
    wait_for(f"{victim} /health 200 after heal", lambda: True if health(o.metrics(victim)) == 200 else None)

    # add: the regenerated scrape config reaches the running Prometheus (SIGHUP), so it scrapes n4 too
    r = o("add", "n4", "--voter")
    assert r.returncode == 0, r.stderr + r.stdout
    url = o.prom_url()
    wait_for("n4 scraped", lambda: True if by_member(url, "up == 1").get("n4") == 1 else None)

    r = o("down")
    assert r.returncode == 0 and "prometheus" in r.stdout, r.stderr + r.stdout
    assert o.state()["prom"] is None
    r = o("down", "--purge")
    assert "Prometheus' data" in r.stdout and not (o.root / o.name / "prometheus").exists()


@needs_prometheus
@needs_etcd
def test_etcd_cluster_scraped_by_prometheus(orch: Orch) -> None:
    o = orch
    r = o.up("--nodes", "3", "--engine", "etcd", "--prometheus")
    assert r.returncode == 0, r.stderr + r.stdout
    pid = o.state()["nodes"]["n1"]["pid"]
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert argv[argv.index("--listen-metrics-urls") + 1] == f"http://{o.metrics('n1')}"
    assert health(o.metrics("n1")) == 200  # real etcd serves /health on its metrics URL too
    one_leader_then_failover(o)
