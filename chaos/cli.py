"""`orchestrate chaos ...`, `orchestrate experiment ...`, `orchestrate check ...`.

Faults injected from separate invocations combine: the active network rules
live in the cluster's state file, and every command re-sends the whole set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.config import flag_type
from orchestrator.context import Ctx

if TYPE_CHECKING:  # the verbs import their modules when they run: every `orchestrate` start builds this parser
    from .faults import Chaos


async def cmd_chaos(ctx: Ctx, a: argparse.Namespace) -> int:
    from .faults import Chaos, FaultError
    from .net import NetError, cleanup_all

    if a.chaos_cmd == "cleanup":
        removed = await asyncio.to_thread(cleanup_all)
        c = ctx.cluster() if ctx.cluster().dir.exists() else None
        if c is not None:
            ch = Chaos.for_cluster(c)
            if c.engine.fault_rules or c.st.network == "netns" or c.remote is not None:
                try:
                    await ch.heal()
                except (NetError, FaultError) as e:
                    print(f"note: could not clear node rule tables ({e})")
            ch.rules.clear()
            ch.groups = []
            ch.save()
        print(f"removed {len(removed)} namespaces/bridges" + (f": {', '.join(removed)}" if removed else ""))
        return 0
    c = ctx.cluster()
    with c.dir.lock():
        ch = Chaos.for_cluster(c)
        try:
            msg = await _apply(ch, a)
        except (FaultError, NetError) as e:
            print(f"orchestrate: {e}", file=sys.stderr)
            return 2
        ch.save()
    print(msg)
    return 0


async def _apply(ch: Chaos, a: argparse.Namespace) -> str:
    from .faults import FaultError

    k = a.chaos_cmd
    if k == "partition":
        groups = [g.split(",") for g in a.groups]
        fid = await ch.partition(groups)
        return f"{fid}: " + " | ".join(",".join(g) for g in ch.groups)
    if k == "isolate":
        fid = await ch.isolate(a.node)
        return f"{fid}: " + " | ".join(",".join(g) for g in ch.groups)
    if k == "bridge":
        return await ch.bridge(a.node)
    if k == "drop":
        return await ch.drop(a.src, a.dst)
    if k == "loss":
        return await ch.loss(a.probability, a.nodes.split(",") if "," in a.nodes else a.nodes)
    if k == "delay":
        return await ch.delay(a.ms, a.nodes.split(",") if "," in a.nodes else a.nodes)
    if k == "undo":
        if a.id not in ch.rules:
            active = ", ".join(ch.rules) or "none"
            raise FaultError(f"no active fault {a.id!r} (active: {active}; see `orchestrate chaos list`)")
        await ch.undo(a.id)
        return f"undid {a.id}"
    if k == "heal":
        await ch.heal()
        return "healed: network rules cleared, paused nodes resumed"
    if k == "list":
        if not ch.rules:
            return "no network faults active"
        return "\n".join(
            f"{fid}: {len(rules)} rules, e.g. {rules[0].src}->{rules[0].dst} {rules[0].action}"
            for fid, rules in ch.rules.items()
        )
    raise FaultError(f"unknown chaos command {k}")


async def cmd_experiment(ctx: Ctx, a: argparse.Namespace) -> int:
    from . import experiment as exp

    if a.exp_cmd == "list":
        for name, desc in exp.list_builtin():
            print(f"{name:24} {desc}")
        return 0
    spec = exp.load(a.ref)
    t0 = time.monotonic()
    bar = _Progress(sys.stderr.isatty())
    runner = exp.Runner(
        spec,
        ctx.root,
        Path(a.reports),
        engine=a.engine,
        net=a.net,
        hosts=ctx.cfg.hosts,
        seed=a.seed,
        heartbeat_ms=a.heartbeat_ms,
        election_ms=a.election_ms,
        progress=bar,
    )
    try:
        result = await runner.run()
    except exp.ExperimentError as e:
        bar.done()
        print(f"orchestrate: experiment {spec['name']}: {e}", file=sys.stderr)
        return 2
    bar.done()
    print(exp.summary(result))
    print(f"({time.monotonic() - t0:.1f}s; exit code {result.exit_code}: 0 valid, 1 invalid, 2 unknown)")
    return result.exit_code


class _Progress:
    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.t0 = time.monotonic()

    def __call__(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:6.1f}s] {msg}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line[:150])
            if msg.startswith("  expect"):
                sys.stderr.write("\n")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K")


async def cmd_check(ctx: Ctx, a: argparse.Namespace) -> int:
    """Check a history file of any workload kind (found from its records), and its watch records."""
    from . import experiment as exp
    from .history import APPEND, load_all

    try:
        rec = load_all(Path(a.history))
    except (OSError, ValueError) as e:
        print(f"orchestrate: {e}", file=sys.stderr)
        return 2
    final_values = None
    if rec.final is not None and rec.kind != APPEND:  # the unique keys' values: lost-write detection
        keys = {o.key for o in rec.ops if o.key.startswith("u/")}
        final_values = {k: rec.final.kvs[k][0] if k in rec.final.kvs else None for k in keys}
    d = await asyncio.to_thread(
        exp.check_recorded, rec.ops, rec.final, final_values, rec.watch, rec.kind, bool(rec.watch), a.budget
    )
    res = d.pop("_result", None)
    anomalies = d.pop("_anomalies", None)
    if a.write_out == "json":
        print(json.dumps(d, indent=2, default=str))
        return {"valid": 0, "invalid": 1, "unknown": 2}[d["verdict"]]
    if res is not None:
        print(res.summary())
    elif anomalies is not None:
        print(check_append_summary(d))
    if "watch" in d:
        w = d["watch"]
        bad = ", ".join(f"{k} x{v}" for k, v in w["violations"].items()) or "no violations"
        print(f"watch {w['verdict'].upper()}: {w['events']} events on {w['streams']} streams, {bad}")
        for x in w["explanations"][:5]:
            print("  " + x.replace("\n", "\n  "))
    if len({d["verdict"], d.get("watch", {}).get("verdict", d["verdict"])}) > 1:
        print(f"overall: {d['verdict'].upper()}")
    return {"valid": 0, "invalid": 1, "unknown": 2}[d["verdict"]]


def check_append_summary(d: dict[str, object]) -> str:
    """The text of an append check from its dict (what `experiment.check_recorded` gave)."""
    found = d.get("anomalies") or {}
    assert isinstance(found, dict)
    head = (
        f"{str(d['history_verdict']).upper()}: {d['transactions']} transactions "
        f"({d['operations']} operations), {d['edges']} dependency edges, checked for strict "
        f"serializability in {d['seconds']}s"
    )
    lines = [head]
    if d.get("note"):
        lines.append(f"  {d['note']}")
    if found:
        lines.append("  anomalies: " + ", ".join(f"{k} x{v}" for k, v in found.items()))
    expl = d.get("explanations") or []
    assert isinstance(expl, list)
    lines += ["  " + str(x).replace("\n", "\n  ") for x in expl[:10]]
    return "\n".join(lines)


def _number(raw: str, what: str) -> float:
    try:
        v = float(raw)
    except ValueError:
        v = float("nan")
    if not v == v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected {what}, got {raw!r}")
    return v


def _probability(raw: str) -> float:
    v = _number(raw, "a probability in (0, 1]")
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"expected a probability in (0, 1], got {raw}")
    return v


def _millis(raw: str) -> float:
    v = _number(raw, "a positive number")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {raw}")
    return v


def add_parsers(sub: Any) -> None:
    ch = sub.add_parser("chaos", help="inject faults into the running cluster")
    cs = ch.add_subparsers(dest="chaos_cmd", required=True, metavar="FAULT")
    p = cs.add_parser("partition", help="split into groups: chaos partition n1,n2,n3 n4,n5,n6")
    p.add_argument("groups", nargs="+", help="comma-separated groups; unnamed nodes form their own groups")
    p = cs.add_parser("isolate", help="cut one node off from all others")
    p.add_argument("node", help="a name or leader / follower / random")
    p = cs.add_parser("bridge", help="two halves that only reach each other through one middle node")
    p.add_argument("node")
    p = cs.add_parser("drop", help="drop messages one way: chaos drop n1 n2")
    p.add_argument("src")
    p.add_argument("dst")
    p = cs.add_parser("loss", help="lose a fraction of messages from some nodes")
    p.add_argument("probability", type=_probability)
    p.add_argument("nodes", nargs="?", default="all")
    p = cs.add_parser("delay", help="add latency to messages from some nodes (local backend)")
    p.add_argument("ms", type=_millis)
    p.add_argument("nodes", nargs="?", default="all")
    p = cs.add_parser("undo", help="remove one fault by its id (see chaos list)")
    p.add_argument("id")
    cs.add_parser("heal", help="remove every network fault and resume paused nodes")
    cs.add_parser("list", help="active network faults")
    cs.add_parser("cleanup", help="remove every quorumlab namespace, bridge and rule, even after a crash")
    ch.set_defaults(fn=cmd_chaos)

    ex = sub.add_parser("experiment", help="scripted chaos experiments with a verdict")
    es = ex.add_subparsers(dest="exp_cmd", required=True, metavar="ACTION")
    es.add_parser("list", help="the built-in experiments")
    r = es.add_parser("run", help="run a built-in experiment or a YAML file on a fresh throwaway cluster")
    r.add_argument("ref", help="experiment name or file")
    r.add_argument("--engine", type=flag_type("engine"), help="builtin | etcd")
    r.add_argument("--net", type=flag_type("network"), help="local | netns")
    r.add_argument("--reports", default="reports", help="where run folders go (default ./reports)")
    r.add_argument("--seed", type=int)
    r.add_argument("--heartbeat-ms", type=flag_type("heartbeat_ms"), default=50)
    r.add_argument("--election-ms", type=flag_type("election_ms"), default=500)
    ex.set_defaults(fn=cmd_experiment)

    ck = sub.add_parser(
        "check", help="check a recorded history: linearizability, strict serializability (append), watches"
    )
    ck.add_argument("history", help="a history.jsonl from an experiment report (any workload kind)")
    ck.add_argument("--budget", type=_millis, default=60.0, help="seconds before answering unknown")
    ck.add_argument("-w", "--write-out", choices=["text", "json"], default="text")
    ck.set_defaults(fn=cmd_check)
