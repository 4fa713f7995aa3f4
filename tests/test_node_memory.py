"""A node process's memory settings really take effect: gRPC's fork support off before grpc is first
imported, and glibc's malloc arenas capped (12 per node under load without the cap)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable

from bench.rss import arenas
from node.__main__ import MALLOC_ARENAS
from tests.procs import REPO, NodeProcs

Make = Callable[..., NodeProcs]

# records GRPC_ENABLE_FORK_SUPPORT at the moment grpc is first looked up, then runs `python -m node --help`
_SPY = r"""
import json, os, runpy, sys
seen = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "grpc" and not seen:
            seen.append(os.environ.get("GRPC_ENABLE_FORK_SUPPORT"))
        return None
sys.meta_path.insert(0, Spy())
sys.argv = ["node", "--help"]
try:
    runpy.run_module("node", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
sys.stderr.write(json.dumps(seen))
"""


def test_grpc_fork_support_is_off_before_grpc_is_imported() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    cp = subprocess.run(
        [sys.executable, "-c", _SPY], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(cp.stderr.strip().splitlines()[-1]) == ["0"]


async def test_node_process_runs_with_few_malloc_arenas(node_cluster: Make) -> None:
    cl = node_cluster(3)
    cl.start_all()
    await cl.wait_leader()
    async with cl.client_for() as c:
        for _ in range(5):  # concurrent puts: gRPC, peer and fsync threads all allocate
            await asyncio.gather(*(c.put(f"k{i}", "v" * 512) for i in range(100)))
    for name, p in cl.procs.items():
        count, _ = arenas(p.pid)
        # arenas() counts those beside the main heap: at most MALLOC_ARENAS - 1 (11 per node without the cap)
        assert count <= MALLOC_ARENAS - 1, f"{name}: {count} malloc arenas"
