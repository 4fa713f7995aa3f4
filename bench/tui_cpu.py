"""CPU used by the dashboard with a 9-node cluster at its default refresh, and an SVG screenshot.

Runs the real Dashboard headless (Textual's test driver) in this process against
a real 9-node cluster, with one node isolated and the workload on, and
measures this process's CPU time over --seconds.

    python -m bench.tui_cpu --seconds 20 --svg docs/dashboard.svg
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import psutil

from chaos.faults import Chaos
from orchestrator.cluster import Cluster
from orchestrator.config import ClusterConfig
from orchestrator.ports import port_block
from tui.app import REFRESH_S, Dashboard


async def run(seconds: float, svg: Path | None, nodes: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="qlbench-tui-") as tmp:
        root = Path(tmp)
        cfg = replace(
            ClusterConfig(), name="dash", client_port=port_block(nodes + 2), peer_port=port_block(nodes + 2)
        ).with_nodes(nodes)
        c = Cluster(root, "dash")
        c.create(cfg)
        await c.up(60)
        try:
            app = Dashboard(root, "dash", clock=False)
            async with app.run_test(size=(160, 45)) as pilot:  # the terminal
                await pilot.pause(2.0)
                me = psutil.Process()
                t0, c0 = time.monotonic(), sum(me.cpu_times()[:2])
                await pilot.pause(seconds)
                cpu = (sum(me.cpu_times()[:2]) - c0) / (time.monotonic() - t0) * 100
                if svg is not None:
                    ch = Chaos.for_cluster(c)
                    await ch.isolate(c.st.live_names()[-1])
                    ch.save()
                    await pilot.press("w")
                    await pilot.pause(4.0)
                    svg.parent.mkdir(parents=True, exist_ok=True)
                    app.save_screenshot(filename=svg.name, path=str(svg.parent))
                    await pilot.press("w")
                await pilot.press("q")
        finally:
            c.down(purge=True)
    return {
        "nodes": nodes,
        "refresh_hz": round(1 / REFRESH_S, 2),
        "terminal": "160x45",
        "seconds": seconds,
        "dashboard_cpu_percent_of_one_core": round(cpu, 1),
        "screenshot": str(svg) if svg else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--nodes", type=int, default=9)
    ap.add_argument("--svg", type=Path)
    a = ap.parse_args()
    print(json.dumps(asyncio.run(run(a.seconds, a.svg, a.nodes)), indent=2))


if __name__ == "__main__":
    main()
