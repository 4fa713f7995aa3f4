"""The `orchestrate bench` verb: parse, run `bench.matrix`, print the table (or JSON), draw the PNG."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.cluster import OrchestrateError

from .loadgen import OPS
from .matrix import ALL_ENGINES, ENGINES, BenchOptions, run_bench


def _list(kind: Callable[[str], Any], allowed: tuple[Any, ...] | None = None) -> Callable[[str], tuple[Any, ...]]:
    """An argparse type for comma-separated lists (each item converted, optionally from a fixed set)."""

    def convert(raw: str) -> tuple[Any, ...]:
        try:
            items = tuple(kind(x.strip()) for x in raw.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {raw!r}") from None
        if not items:
            raise argparse.ArgumentTypeError("expected at least one item")
        bad = [x for x in items if (allowed is not None and x not in allowed) or (kind is int and x <= 0)]
        if bad:
            what = f"one of {', '.join(map(str, allowed))}" if allowed else "positive"
            raise argparse.ArgumentTypeError(f"{bad[0]} is not {what}")
        return tuple(dict.fromkeys(items))

    return convert


def add_parsers(sub: Any) -> None:
    b = sub.add_parser(
        "bench",
        help="throughput, latency, failover, up time and memory: quorumlab beside real etcd (A B A B)",
    )
    b.add_argument(
        "--engines",
        type=_list(str, ALL_ENGINES),
        default=ENGINES,
        help="builtin,etcd (default), floor: bare grpc.aio servers answering constants, the most Python can serve",
    )
    b.add_argument("--nodes", "-n", type=_list(int), default=(1, 3), help="cluster sizes (default 1,3)")
    b.add_argument("--ops", type=_list(str, OPS), default=OPS, help="put,get,sget,txn (get is linearizable)")
    b.add_argument("--clients", type=_list(int), default=(1, 16, 64, 256), help="concurrent requests (1,16,64,256)")
    b.add_argument("--seconds", type=_positive_float, default=5.0, help="duration of each load phase")
    b.add_argument("--rounds", type=_positive_int, default=2, help="phases per engine per cell, alternating")
    b.add_argument("--procs", type=_positive_int, default=2, help="load generator processes")
    b.add_argument("--value-size", type=_positive_int, default=256)
    b.add_argument("--failover-rounds", type=_natural, default=5, help="kill -9 of the leader (0: skip)")
    b.add_argument("--up-rounds", type=_natural, default=3, help="`up` → writable (0: skip)")
    b.add_argument("--up-nodes", type=_positive_int, default=3)
    b.add_argument("--profile", action="store_true", help="py-spy our leader during the heaviest put cell")
    b.add_argument("--out", type=Path, help="directory for bench.json, bench.png, profile (default reports/bench-…)")
    b.add_argument("-w", "--write-out", choices=["table", "json"], default="table")
    b.set_defaults(fn=cmd_bench)


def _num(kind: type[int] | type[float], lo: float, raw: str) -> Any:
    try:
        v = kind(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {raw!r}") from None
    if not v >= lo or (isinstance(v, float) and math.isinf(v)) or (lo > 0 and v == 0):
        raise argparse.ArgumentTypeError(f"expected a {'positive' if lo > 0 else 'non-negative'} number, got {raw}")
    return v


def _positive_float(raw: str) -> float:
    return float(_num(float, 1e-9, raw))


def _positive_int(raw: str) -> int:
    return int(_num(int, 1, raw))


def _natural(raw: str) -> int:
    return int(_num(int, 0, raw))


def _bar() -> Callable[[int, int, str], None]:
    tty = sys.stderr.isatty()
    t0 = time.monotonic()

    def say(done: int, total: int, what: str) -> None:
        el = time.monotonic() - t0
        if tty:
            width = 24
            fill = int(width * done / max(1, total))
            sys.stderr.write(f"\r\033[K[{'#' * fill}{'.' * (width - fill)}] {done}/{total} {el:5.0f}s  {what}")
        else:
            sys.stderr.write(f"[{el:5.0f}s {done}/{total}] {what}\n")
        sys.stderr.flush()

    return say


def _f(x: Any, nd: int = 1) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    return f"{x:,.{nd}f}"


# (key in a cell, engine divided by, column label): builtin / that engine, from the medians shown
RATIOS = (("ratio", "etcd", "ratio"), ("ratio_floor", "floor", "/floor"))


def render(doc: dict[str, Any]) -> str:
    engines = doc["options"]["engines"]
    head = ["NODES", "OP", "CLIENTS"]
    for e in engines:
        # the floor's own latency spread says little: its throughput, p99 and CPU are the reference
        head += (
            [f"{e} ops/s", "p99", "cpu/op"] if e == "floor" else [f"{e} ops/s", "p50", "p90", "p99", "max", "cpu/op"]
        )
    ratios = [r for r in RATIOS if "builtin" in engines and r[1] in engines]
    for _, _, label in ratios:
        head += [f"{label} ops/s", f"{label} p99", f"{label} cpu/op"]
    rows = []
    for c in doc["cells"]:
        row = [str(c["nodes"]), c["op"], str(c["clients"])]
        for e in engines:
            m = c.get(e, {})
            shown = ("p99_ms",) if e == "floor" else ("p50_ms", "p90_ms", "p99_ms", "max_ms")
            row += [_f(m.get("ops_per_s"), 0)] + [_f(m.get(k)) for k in shown]
            row += [_f(m.get("cpu_ms_per_op"), 3)]
        for key, _, _ in ratios:
            r = c.get(key, {})
            row += [_f(r.get("ops_per_s"), 2), _f(r.get("p99_ms"), 2), _f(r.get("cpu_ms_per_op"), 2)]
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    legend = ", ".join(f"{label} = builtin / {other}" for _, other, label in ratios)
    out = [
        "latencies in ms, medians over rounds; cpu/op = CPU ms of all nodes per operation"
        + (f"; {legend} (same run)" if legend else "")
    ]
    out.append("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    out += ["  ".join(x.rjust(w) for x, w in zip(r, widths, strict=True)) for r in rows]
    errs = [(c, e) for c in doc["cells"] for e in engines if c.get(e, {}).get("errors")]
    for c, e in errs:
        m = c[e]
        out.append(f"note: {e} {c['nodes']}n {c['op']} x{c['clients']}: {m['errors']} errors ({m['first_error']})")
    for title, key in (("failover after kill -9 (to first write), s", "failover_s"), ("up → writable, s", "up_s")):
        t = doc[key]
        if any(e in t for e in engines):
            parts = [f"{e} {_f(t[e]['median'], 3)} {t[e]['samples']}" for e in engines if e in t]
            ratio = f"  ratio {_f(t.get('ratio'), 2)}" if t.get("ratio") is not None else ""
            out.append(f"{title}: " + "; ".join(parts) + ratio)
    for e, per_n in doc["usage"].items():
        for n, u in per_n.items():
            out.append(
                f"usage {e} {n}n: RSS max per node {_f(u['rss_mb_max'])} MB, "
                f"CPU median per node {_f(u['cpu_pct_median_per_node'])}% (100% = one core)"
            )
    out += [f"note: {n}" for n in doc.get("notes", [])]
    if "profile" in doc:
        out.append(f"profile of our leader ({doc['profile']['stacks']}), top self:")
        out += [f"  {pct:5.1f}%  {name}" for name, pct in doc["profile"]["self"][:10]]
    if doc.get("png"):
        out.append(f"chart: {doc['png']}")
    return "\n".join(out)


def plot(doc: dict[str, Any], path: Path) -> None:
    """Throughput and p99 latency per cell, one bar per engine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = doc["options"]["engines"]
    cells = doc["cells"]
    labels = [f"{c['nodes']}n {c['op']} x{c['clients']}" for c in cells]
    fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.6 * len(cells) + 2), 7), sharex=True)
    w = 0.8 / max(1, len(engines))
    for j, e in enumerate(engines):
        xs = [i + j * w for i in range(len(cells))]
        axes[0].bar(xs, [c.get(e, {}).get("ops_per_s", 0) for c in cells], w, label=e)
        axes[1].bar(xs, [c.get(e, {}).get("p99_ms", 0) for c in cells], w, label=e)
    axes[0].set_ylabel("ops/s (median)")
    axes[1].set_ylabel("p99 latency, ms (median)")
    axes[0].legend()
    axes[1].set_xticks([i + w * (len(engines) - 1) / 2 for i in range(len(cells))])
    axes[1].set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    axes[0].set_title("orchestrate bench: throughput and latency per engine")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


async def cmd_bench(ctx: Any, a: argparse.Namespace) -> int:
    if "etcd" in a.engines and shutil.which("etcd") is None:
        raise OrchestrateError("etcd is not on PATH: install etcd or pass --engines builtin")
    out = a.out or Path("reports") / time.strftime("bench-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    o = BenchOptions(
        engines=a.engines,
        nodes=a.nodes,
        ops=a.ops,
        clients=a.clients,
        seconds=a.seconds,
        rounds=a.rounds,
        procs=a.procs,
        value_size=a.value_size,
        failover_rounds=a.failover_rounds,
        up_rounds=a.up_rounds,
        up_nodes=a.up_nodes,
        profile=out / "leader.stacks" if a.profile else None,
    )
    try:
        doc = await run_bench(o, _bar())
    except RuntimeError as e:
        raise OrchestrateError(f"bench: {e}") from None
    finally:
        if sys.stderr.isatty():
            sys.stderr.write("\r\033[K")
    png = out / "bench.png"
    plot(doc, png)
    doc["png"] = str(png)
    (out / "bench.json").write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc, indent=2) if a.write_out == "json" else render(doc))
    return 0
