"""Failover after kill -9 of the leader: quorumlab vs real etcd, in one run.

Measured from SIGKILL of the leader to (a) a new leader reported by a survivor
and (b) the first write acknowledged through a survivor. Median of --rounds.

    python -m bench.failover --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import time

from node.client import ClientError

from .common import cluster, median


async def one_engine(engine: str, rounds: int, n: int) -> dict[str, list[float]]:
    leader_s: list[float] = []
    write_s: list[float] = []
    async with cluster(engine, n) as c:
        for _ in range(rounds):
            view = await c.view(usage=False)
            old = view.leader
            survivors = [x for x in c.st.live_names() if x != old]
            client = c.client(survivors, timeout=0.5)
            t0 = time.monotonic()
            c.kill_node(old)
            got_leader = got_write = 0.0
            while time.monotonic() - t0 < 30 and not got_write:
                if not got_leader:
                    v = await c.view(usage=False, timeout=0.3)
                    if v.leader and v.leader != old:
                        got_leader = time.monotonic() - t0
                try:
                    await client.put("bench/failover", str(t0))
                    got_write = time.monotonic() - t0
                    got_leader = got_leader or got_write
                except ClientError:
                    await asyncio.sleep(0.01)
            await client.close()
            leader_s.append(got_leader)
            write_s.append(got_write)
            c.start_node(old)
            await c.wait_ready(60)
            await asyncio.sleep(1.0)
    return {"leader_s": leader_s, "write_s": write_s}


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    engines = ["builtin"] + (["etcd"] if shutil.which("etcd") and not args.builtin_only else [])
    out: dict[str, object] = {"rounds": args.rounds, "nodes": args.nodes, "election_ms": 1000, "heartbeat_ms": 100}
    for e in engines:
        r = await one_engine(e, args.rounds, args.nodes)
        out[e] = {
            "new_leader_median_s": round(median(r["leader_s"]), 3),
            "first_write_median_s": round(median(r["write_s"]), 3),
            "samples_write_s": [round(x, 3) for x in r["write_s"]],
        }
    if "etcd" in out:
        ours = out["builtin"]["first_write_median_s"]  # type: ignore[index]
        theirs = out["etcd"]["first_write_median_s"]  # type: ignore[index]
        out["ratio_builtin_over_etcd"] = round(ours / theirs, 2) if theirs else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--builtin-only", action="store_true")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(main_async(args)), indent=2))


if __name__ == "__main__":
    main()
