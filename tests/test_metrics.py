"""/metrics, /health and /version on --listen-metrics-urls: etcd's names and rules, ours and real etcd alike."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.prometheus import fsync_and_rtt_ms, parse_histograms, scrape
from tests.procs import REPO, EtcdProcs, NodeProcs

NAMES = (
    "etcd_server_has_leader",
    "etcd_server_is_leader",
    "etcd_server_leader_changes_seen_total",
    "etcd_server_proposals_committed_total",
    "etcd_server_proposals_applied_total",
    "etcd_server_proposals_pending",
    "etcd_server_proposals_failed_total",
    "etcd_disk_wal_fsync_duration_seconds_bucket",
    "etcd_disk_backend_commit_duration_seconds_bucket",
    "etcd_network_peer_round_trip_time_seconds_bucket",
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_server_slow_apply_total",
)
WAL_FSYNC = "etcd_disk_wal_fsync_duration_seconds"


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3.0) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


async def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(pred):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_metrics_health_version(node_cluster: Callable[..., NodeProcs]) -> None:
    c = node_cluster(3, metrics=True)
    c.start_all()
    await c.wait_leader()
    async with c.client_for() as cl:
        for i in range(20):
            await cl.put(f"k{i}", "v")
    url = {n: f"http://127.0.0.1:{c.metrics_port[n]}" for n in c.names}
    deadline = time.monotonic() + 15
    while True:  # one scrape of all three in which exactly one is leader (a loaded machine may elect meanwhile)
        texts = {n: (await asyncio.to_thread(get, url[n] + "/metrics"))[1] for n in c.names}
        leaders = [n for n, t in texts.items() if value(t, "etcd_server_is_leader") == 1]
        if len(leaders) == 1 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    for n, text in texts.items():
        missing = [m for m in NAMES if m not in text]
        assert not missing, f"{n} lacks {missing}"
        assert value(text, "etcd_server_has_leader") == 1
        assert value(text, "etcd_server_proposals_applied_total") >= 20
    assert sum(value(t, "etcd_server_is_leader") for t in texts.values()) == 1
    leader = leaders[0]
    fs = parse_histograms(texts[leader], WAL_FSYNC)[""]
    assert fs.count >= 20, "every appended batch is one fsync the histogram saw"
    p99, rtt = fsync_and_rtt_ms(texts[leader])
    assert p99 is not None and p99 > 0
    assert rtt is not None and rtt > 0, "the leader measures heartbeat round trips to its followers"
    rtts = parse_histograms(texts[leader], "etcd_network_peer_round_trip_time_seconds")
    assert len(rtts) == 2 and all(h.count > 0 for h in rtts.values()), f"one timed series per follower: {rtts}"
    async with c.client_for([leader]) as cl:
        for i in range(10):
            await cl.put(f"more{i}", "v")
    again = parse_histograms(await asyncio.to_thread(scrape, f"127.0.0.1:{c.metrics_port[leader]}"), WAL_FSYNC)[""]
    assert again.count >= fs.count + 10, "ten acknowledged puts one after another: at least ten more fsyncs"
    st = (await c.statuses([leader]))[leader]
    assert st["metrics_url"] == url[leader], "Admin status names the metrics URL"
    # the log view's data (Admin status "raft"): the log tail and per-peer message counts on the wire
    raft = st["raft"]
    assert raft["log_first"] + len(raft["log_terms"]) - 1 == st["last_index"] and raft["log_terms"][-1] == st["term"]
    others = sorted(n for n in c.names if n != leader)
    assert sorted(raft["msgs_sent"]) == others and sorted(raft["msgs_recv"]) == others
    await asyncio.sleep(0.3)  # a few heartbeats and their answers
    later = (await c.statuses([leader]))[leader]["raft"]
    assert all(later["msgs_sent"][n] > raft["msgs_sent"][n] for n in others), (raft, later)
    assert all(later["msgs_recv"][n] > raft["msgs_recv"][n] for n in others), (raft, later)
    assert await asyncio.to_thread(get, url[leader] + "/health") == (200, '{"health":"true"}')
    status, body = await asyncio.to_thread(get, url[leader] + "/version")
    assert status == 200 and set(json.loads(body)) == {"etcdserver", "etcdcluster"}
    assert (await asyncio.to_thread(get, url[leader] + "/nope"))[0] == 404

    # no quorum: two of three gone, the survivor is unhealthy (503) and says so within its election timeout
    others = [n for n in c.names if n != leader]
    for n in others:
        c.kill(n)
    await wait_for(lambda: get(url[leader] + "/health") == (503, '{"health":"false"}'), 10, "503 without quorum")
    for n in others:
        c.start(n)
    await wait_for(lambda: get(url[leader] + "/health")[0] == 200, 20, "healthy after the others return")


async def test_leader_changes_counted(node_cluster: Callable[..., NodeProcs]) -> None:
    c = node_cluster(3, metrics=True)
    c.start_all()
    leader = await c.wait_leader()
    survivor = next(n for n in c.names if n != leader)
    before = value(
        await asyncio.to_thread(scrape, f"127.0.0.1:{c.metrics_port[survivor]}"),
        "etcd_server_leader_changes_seen_total",
    )
    c.kill(leader)
    await c.wait_leader(among=[n for n in c.names if n != leader])
    after = value(
        await asyncio.to_thread(scrape, f"127.0.0.1:{c.metrics_port[survivor]}"),
        "etcd_server_leader_changes_seen_total",
    )
    assert after > before


def test_histogram_quantile_matches_prometheus() -> None:
    text = "\n".join(
        [
            'x_bucket{le="0.001"} 0',
            'x_bucket{le="0.002"} 50',
            'x_bucket{le="0.004"} 100',
            'x_bucket{le="+Inf"} 100',
            "x_count 100",
        ]
    )
    h = parse_histograms(text, "x")[""]
    assert h.quantile(0.5) == pytest.approx(0.002)
    assert h.quantile(0.75) == pytest.approx(0.003)
    assert h.quantile(0.99) == pytest.approx(0.00396)


@pytest.mark.skipif(shutil.which("etcd") is None, reason="needs the etcd binary (Debian etcd-server)")
async def test_same_names_on_real_etcd(tmp_path: Path) -> None:
    c = EtcdProcs(tmp_path, 1, metrics=True)
    try:
        c.start_all()
        await c.wait_leader()
        text = await asyncio.to_thread(scrape, f"127.0.0.1:{c.metrics_port['n1']}")
        ours_only = {"etcd_network_peer_round_trip_time_seconds_bucket"}  # etcd has no peer on one node
        missing = [m for m in NAMES if m not in text and m not in ours_only]
        assert not missing, f"real etcd lacks {missing}: our names drifted from etcd's"
        assert (await asyncio.to_thread(get, f"http://127.0.0.1:{c.metrics_port['n1']}/health"))[0] == 200
    finally:
        c.close()


def test_metrics_url_flag_refusals(node_cluster: Callable[..., NodeProcs]) -> None:
    """A taken metrics port is one clear line and exit 1 (as the client port's); https and lists exit 2."""
    c = node_cluster(1, metrics=True)
    flag = c.args("n1").index("--listen-metrics-urls") + 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", c.metrics_port["n1"]))
        taken.listen()
        r = subprocess.run(c.args("n1"), cwd=REPO, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r.stderr
    assert f"cannot listen for metrics on 127.0.0.1:{c.metrics_port['n1']}: address already in use" in r.stderr
    for url, why in (
        ("https://127.0.0.1:1", "https is not supported"),
        ("http://127.0.0.1:1,http://127.0.0.1:2", "one URL only"),
    ):
        args = c.args("n1")
        args[flag] = url
        r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and why in r.stderr, r.stderr
