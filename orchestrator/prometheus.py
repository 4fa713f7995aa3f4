"""A real Prometheus (Debian's `prometheus`) scraping every member's metrics URL, and a reader of /metrics.

`orchestrate up --prometheus` writes a scrape config listing each node's metrics URL (builtin or
real etcd alike), starts Prometheus beside the nodes with its data in the cluster's state dir, and
`down` stops it. The scrape interval is short (1 s) because a cluster here lives for minutes.
`scrape()` reads one node's /metrics directly for `status` and the dashboard (fsync p99, peer RTT).
"""

from __future__ import annotations

import json
import math
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

SCRAPE_INTERVAL = "1s"
READY_TIMEOUT_S = 20.0


class PrometheusError(Exception):
    pass


def binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        raise PrometheusError("prometheus is not installed (Debian package `prometheus`; scripts/setup.sh installs it)")
    return path


def scrape_config(cluster: str, targets: dict[str, str]) -> dict[str, object]:
    """One job per cluster; each target labelled with its member name. targets: name -> host:port."""
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [
            {
                "job_name": f"quorumlab-{cluster}",
                "static_configs": [
                    {"targets": [addr], "labels": {"member": name}} for name, addr in sorted(targets.items())
                ],
            }
        ],
    }


def write_config(path: Path, cluster: str, targets: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(scrape_config(cluster, targets), sort_keys=False))


def command(config: Path, data: Path, listen: str) -> list[str]:
    return [
        binary(),
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        f"--web.listen-address={listen}",
        "--storage.tsdb.retention.time=1d",
        "--log.level=warn",
    ]


def ready(url: str, timeout: float = 1.0) -> bool:
    """One probe of Prometheus' /-/ready (blocking: callers on an event loop use a thread)."""
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=timeout) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_ready(url: str, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1.0) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(0.2)
    raise PrometheusError(f"prometheus at {url} not ready after {timeout:.0f}s ({last})")


def query(url: str, promql: str, timeout: float = 3.0) -> list[tuple[dict[str, str], float]]:
    """An instant PromQL query: [(labels, value)]."""
    q = urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=timeout) as r:
            body = json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise PrometheusError(f"query {promql!r} at {url}: {e}") from e
    if body.get("status") != "success":
        raise PrometheusError(f"query {promql!r}: {body.get('error', body)}")
    return [(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]


@dataclass
class Histogram:
    buckets: list[tuple[float, float]]  # (upper bound, cumulative count), +Inf last
    count: float

    def quantile(self, q: float) -> float | None:
        """Prometheus' histogram_quantile over the cumulative buckets (linear within a bucket)."""
        if self.count <= 0 or not self.buckets:
            return None
        rank = q * self.count
        prev_le, prev_c = 0.0, 0.0
        for le, c in self.buckets:
            if c >= rank:
                if math.isinf(le):
                    return prev_le
                span = c - prev_c
                return prev_le + (le - prev_le) * ((rank - prev_c) / span if span else 1.0)
            prev_le, prev_c = le, c
        return prev_le


def parse_histograms(text: str, name: str) -> dict[str, Histogram]:
    """The histogram `name` from Prometheus text format, by its label set other than `le`."""
    out: dict[str, list[tuple[float, float]]] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        metric, _, value = line.rpartition(" ")
        base, _, labels = metric.partition("{")
        labels = labels.rstrip("}")
        pairs = [p for p in labels.split(",") if p]
        le = next((p.split("=", 1)[1].strip('"') for p in pairs if p.startswith("le=")), None)
        key = ",".join(p for p in pairs if not p.startswith("le="))
        if base == f"{name}_bucket" and le is not None:
            out.setdefault(key, []).append((float(le), float(value)))
        elif base == f"{name}_count":
            counts[key] = float(value)
    return {k: Histogram(sorted(v), counts.get(k, v[-1][1] if v else 0.0)) for k, v in out.items()}


def scrape(addr: str, timeout: float = 1.0) -> str:
    """The text of http://addr/metrics ('' if it cannot be read)."""
    try:
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=timeout) as r:
            return str(r.read().decode("utf-8", "replace"))
    except (urllib.error.URLError, OSError):
        return ""


def fsync_and_rtt_ms(text: str) -> tuple[float | None, float | None]:
    """(WAL fsync p99, median peer round trip) in ms from one node's /metrics text."""
    fs = parse_histograms(text, "etcd_disk_wal_fsync_duration_seconds")
    p99 = fs[""].quantile(0.99) if "" in fs else None
    rtts = [h.quantile(0.5) for h in parse_histograms(text, "etcd_network_peer_round_trip_time_seconds").values()]
    known = [r for r in rtts if r is not None]
    rtt = sorted(known)[len(known) // 2] if known else None
    return (None if p99 is None else p99 * 1000), (None if rtt is None else rtt * 1000)
