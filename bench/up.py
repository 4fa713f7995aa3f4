"""Time from `orchestrate up --nodes N` to the first successful write, builtin vs etcd, one run.

Runs the real CLI in a subprocess (so interpreter start-up counts, as it does
for a user) against a temporary state root and free ports; median of --rounds.

    python -m bench.up --rounds 5 --nodes 5
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orchestrator.ports import port_block

from .common import median

REPO = Path(__file__).resolve().parent.parent


def one(engine: str, nodes: int) -> float:
    with tempfile.TemporaryDirectory(prefix="qlbench-up-") as root:
        base = [sys.executable, "-m", "orchestrator", "--root", root, "--name", "up"]
        t0 = time.monotonic()
        r = subprocess.run(
            [
                *base,
                "up",
                "--nodes",
                str(nodes),
                "--engine",
                engine,
                "-q",
                "--client-port",
                str(port_block(nodes)),
                "--peer-port",
                str(port_block(nodes)),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        took = time.monotonic() - t0
        subprocess.run([*base, "down", "--purge"], cwd=REPO, capture_output=True, timeout=120)
        if r.returncode != 0:
            raise SystemExit(f"up failed: {r.stderr}")
        return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--nodes", type=int, default=5)
    a = ap.parse_args()
    out: dict[str, object] = {"nodes": a.nodes, "rounds": a.rounds}
    for engine in ["builtin"] + (["etcd"] if shutil.which("etcd") else []):
        xs = [one(engine, a.nodes) for _ in range(a.rounds)]
        out[engine] = {"median_s": round(median(xs), 3), "samples_s": [round(x, 3) for x in xs]}
    if "etcd" in out:
        out["ratio_builtin_over_etcd"] = round(out["builtin"]["median_s"] / out["etcd"]["median_s"], 2)  # type: ignore[index]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
