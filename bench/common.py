"""Shared pieces of the benchmarks: throwaway clusters of either engine on free ports."""

from __future__ import annotations

import contextlib
import statistics
import tempfile
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from orchestrator.cluster import Cluster
from orchestrator.config import ClusterConfig
from orchestrator.ports import port_block


@contextlib.asynccontextmanager
async def cluster(
    engine: str,
    n: int = 3,
    heartbeat_ms: int = 100,
    election_ms: int = 1000,
    timeout: float = 60.0,
    tls: bool = False,
) -> AsyncIterator[Cluster]:
    """A fresh cluster in a temporary state dir (tls: client ports speak TLS, as `up --tls`); always torn down."""
    with tempfile.TemporaryDirectory(prefix=f"qlbench-{engine}-") as tmp:
        cfg = replace(
            ClusterConfig(),
            name=f"bench-{engine}",
            engine=engine,
            client_port=port_block(n + 2),
            peer_port=port_block(n + 2),
            heartbeat_ms=heartbeat_ms,
            election_ms=election_ms,
            tls=tls,
        ).with_nodes(n)
        c = Cluster(Path(tmp), cfg.name)
        c.create(cfg)
        try:
            await c.up(timeout)
            yield c
        finally:
            c.down(purge=True)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]
