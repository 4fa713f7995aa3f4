"""`orchestrate`: the command line front door."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

from node.client import ClientError

from . import config as cfgmod
from . import kvcli
from .cluster import Cluster, ClusterView, NodeStartError, OrchestrateError
from .context import Ctx
from .engines import EngineError
from .fmt import alarms_text, human_bytes, ms_text, stall_text
from .netns import netns_available
from .quorum import explain, table


def render(view: ClusterView, usage: bool = True) -> str:
    cols = ["NAME", "STATE", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "STALL ms", "FSYNC p99", "RTT", "ALARMS"]
    cols += ["PID", "CLIENT URL"]
    if usage:
        cols[7:7] = ["CPU%", "RSS"]
    rows = []
    for v in view.nodes:
        role = v.role + (" (learner)" if v.learner else "")
        name = v.name + (" !" if v.problem else "")
        row = [name, v.state, role or "-", str(v.term or "-"), v.leader or "-", str(v.commit), str(v.applied)]
        if usage:
            row += [f"{v.cpu:.0f}" if v.pid else "-", human_bytes(v.rss) if v.rss else "-"]
        row += [stall_text(v.loop_stall_p99_ms, v.loop_stall_max_ms), ms_text(v.fsync_p99_ms), ms_text(v.peer_rtt_ms)]
        row += [alarms_text(v.alarms)]
        row += [str(v.pid or "-"), v.client_url]
        rows.append(row)
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    out = [f"cluster {view.name} ({view.engine}): leader {view.leader or 'NONE'}, term {view.term}"]
    out.append("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    out += ["  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    verdict = (
        f"QUORUM OK: can lose {view.can_lose()} more"
        if view.has_quorum
        else "NO QUORUM: writes and linearizable reads fail"
    )
    out.append(
        f"voters {view.n} · quorum {view.quorum} (= {view.n}/2+1) · fault tolerance {view.fault_tolerance} · "
        f"live voters {len(view.live_voters)} · {verdict}"
    )
    out += [f"note: {line}" for line in explain(view.n)[1:]]
    out += [f"warning: {w}" for w in view.warnings]
    if any(v.loop_stall_max_ms is not None for v in view.nodes):
        out.append("STALL: the node's event-loop stalls over the last 60 s, p99/max in ms")
    if any(v.fsync_p99_ms is not None or v.peer_rtt_ms is not None for v in view.nodes):
        out.append(
            "FSYNC p99 / RTT: from each node's /metrics since it started (WAL fsync p99, median peer round trip)"
        )
    if view.prometheus_url:
        out.append(f"prometheus: {view.prometheus_url}")
    return "\n".join(out)


def metrics_lines(c: Cluster) -> list[str]:
    """What `up` prints under the table: each node's metrics URL (/metrics, /health) and Prometheus'."""
    st = c.st
    out = [f"metrics {n}: {st.nodes[n].metrics_url}/metrics" for n in st.live_names() if st.nodes[n].metrics_port]
    if st.prom is not None:
        out.append(f"prometheus: {st.prom.url} (scraping {len(out)} node{'s' * (len(out) != 1)})")
    return out


def _progress(enabled: bool) -> Callable[[str], None]:
    last = [""]
    t0 = time.monotonic()

    def say(msg: str) -> None:
        if not enabled or msg == last[0]:
            return
        last[0] = msg
        if sys.stderr.isatty():
            sys.stderr.write(f"\r\033[K[{time.monotonic() - t0:4.1f}s] {msg}")
        else:
            sys.stderr.write(f"[{time.monotonic() - t0:4.1f}s] {msg}\n")
        sys.stderr.flush()

    return say


def _end_progress() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")


# -- verbs ----------------------------------------------------------------------------------
UP_FLAGS = {  # `up` flag (argparse dest) -> ClusterConfig field: validated by the field's own validator
    "nodes": "nodes",
    "engine": "engine",
    "net": "network",
    "heartbeat_ms": "heartbeat_ms",
    "election_ms": "election_ms",
    "client_port": "client_port",
    "peer_port": "peer_port",
    "metrics_port": "metrics_port",
    "snapshot_count": "snapshot_count",
    "log_level": "log_level",
    "compaction_mode": "compaction_mode",
    "compaction_retention": "compaction_retention",
    "quota_backend_bytes": "quota_backend_bytes",
    "fault_injection": "fault_injection",
    "tls": "tls",
    "prometheus": "prometheus",
    "name": "name",
}


async def cmd_up(ctx: Ctx, a: argparse.Namespace) -> int:
    flags: dict[str, Any] = {field: getattr(a, dest) for dest, field in UP_FLAGS.items()}
    cfg = cfgmod.apply_flags(ctx.cfg, flags)
    if cfg.network == "netns":
        why = netns_available()
        if why:
            raise OrchestrateError(f"--net netns: {why}; use --net local (in-process fault rules) instead")
    c = Cluster(ctx.root, cfg.name)
    with c.dir.lock(create=True):
        try:
            c.create(cfg)
        except BaseException:
            c.dir.remove_if_empty()  # a refused up leaves nothing behind
            raise
        view = await c.up(a.timeout, _progress(not a.quiet))
    _end_progress()
    print(render(view, usage=False))
    for line in metrics_lines(c):
        print(line)
    if a.tui:
        ctx.after = lambda: run_tui(ctx)  # Textual runs its own event loop: start it after ours
    return 0


async def cmd_down(ctx: Ctx, a: argparse.Namespace) -> int:
    c = ctx.cluster()
    with c.dir.lock():
        stopped = c.down(a.purge)
    print(f"stopped {', '.join(stopped) or 'nothing (no node was running)'}")
    for what in c.removed:
        print(f"removed {what}")
    if c.kept:
        shown = ", ".join(c.kept[:5]) + (f" and {len(c.kept) - 5} more" if len(c.kept) > 5 else "")
        print(f"kept {shown}: not made by the cluster, so {c.dir.path} stays")
    return 0


async def cmd_status(ctx: Ctx, a: argparse.Namespace) -> int:
    c = ctx.cluster()
    while True:
        view = await c.view(usage=True)
        if a.write_out == "json":
            print(json.dumps(view.to_dict(), indent=2))
        else:
            if a.watch:
                sys.stdout.write("\033[H\033[J")
            print(render(view))
        if not a.watch:
            return 0 if view.has_quorum else 1
        await asyncio.sleep(a.watch)


async def cmd_node(ctx: Ctx, a: argparse.Namespace) -> int:
    c = ctx.cluster()
    targets = c.st.live_names() if a.node == "all" else [await c.resolve(a.node)]
    verb = a.cmd
    was = f" (was {a.node})" if a.node in ("leader", "follower", "random") else ""
    started: list[str] = []
    with c.dir.lock():
        for name in targets:
            if verb == "start":
                if a.node == "all" and c.launcher.state(c.st.nodes[name]) != "stopped":
                    continue
                c.start_node(name)
                started.append(name)
                continue
            elif verb == "stop":
                c.stop_node(name)
            elif verb == "kill":
                c.kill_node(name)
            elif verb == "pause":
                c.pause_node(name)
            elif verb == "resume":
                c.resume_node(name)
            elif verb == "restart":
                c.restart_node(name)
                started.append(name)
                continue
            print(f"{verb} {name}{was}")
    # start / restart report success only once the node serves (a corrupt WAL makes it exit instead)
    say = _progress(True)
    failed: list[str] = []
    for name in started:
        try:
            took = await c.wait_serving(name, a.timeout, say)
        except NodeStartError as e:
            _end_progress()
            print(f"orchestrate: {e}", file=sys.stderr)
            failed.append(name)
            continue
        _end_progress()
        print(f"{verb} {name}{was}: serving after {took:.1f}s (pid {c.st.nodes[name].pid})")
    return 1 if failed else 0


async def cmd_add(ctx: Ctx, a: argparse.Namespace) -> int:
    c = ctx.cluster()
    with c.dir.lock():
        view = await c.add(a.node, a.voter, a.timeout)
    print(render(view, usage=False))
    return 0


async def cmd_remove(ctx: Ctx, a: argparse.Namespace) -> int:
    c = ctx.cluster()
    name = await c.resolve(a.node)
    with c.dir.lock():
        view = await c.remove(name, a.timeout)
    print(render(view, usage=False))
    return 0


async def cmd_move_leader(ctx: Ctx, a: argparse.Namespace) -> int:
    c = ctx.cluster()
    target = await c.resolve(a.node)
    await c.move_leader(target)
    print(f"leader is now {target}")
    return 0


async def cmd_logs(ctx: Ctx, a: argparse.Namespace) -> int:
    c = ctx.cluster()
    name = await c.resolve(a.node)
    path = c.dir.log_file(name)
    if c.remote is None and not path.exists():
        raise OrchestrateError(f"no log for {name} yet ({path})")
    for line in c.log_tail(name, a.lines):  # over SSH for a node on a remote host
        print(line)
    if a.follow:
        for line in c.follow_log(name):  # `tail -F` over the kept SSH connection, or the local file
            sys.stdout.write(line)
            sys.stdout.flush()
    return 0


async def cmd_quorum(ctx: Ctx, a: argparse.Namespace) -> int:
    print("N  QUORUM  FAULT TOLERANCE")
    for n, q, ft in table(a.max):
        print(f"{n:<2} {q:<7} {ft}")
    print()
    for n in range(1, a.max + 1):
        for line in explain(n)[1:]:
            print(f"N={n}: {line}")
    return 0


async def cmd_clusters(ctx: Ctx, a: argparse.Namespace) -> int:
    from .state import StateDir

    names = StateDir.clusters(ctx.root)
    if not names:
        print(f"no clusters under {ctx.root}")
    for n in names:
        c = Cluster(ctx.root, n)
        running = c.running()
        print(f"{n}: {c.st.engine}, {len(c.st.live_names())} nodes, {len(running)} running")
    return 0


def run_tui(ctx: Ctx) -> int:
    try:
        from tui.app import main as tui_main
    except ImportError as e:
        raise OrchestrateError(f"the dashboard is not available: {e}") from None
    return tui_main(ctx.root, ctx.name)


async def cmd_tui(ctx: Ctx, a: argparse.Namespace) -> int:
    ctx.after = lambda: run_tui(ctx)
    return 0


# -- parser -------------------------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    """argparse with one clear line for bad input (exit 2), never a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def positive(kind: type[int] | type[float], hi: float | None = None) -> Callable[[str], Any]:
    """An argparse type for counts and seconds that must be > 0 (and at most hi)."""

    def convert(raw: str) -> Any:
        try:
            v = kind(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {raw!r}") from None
        if not v > 0 or (hi is not None and v > hi) or v != v:
            rng = f" up to {hi:g}" if hi is not None else ""
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}{rng}, got {raw}")
        return v

    convert.__name__ = kind.__name__
    return convert


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="orchestrate",
        description="Start, inspect and break a local Raft key-value cluster (quorumlab or real etcd).",
    )
    p.add_argument("--config", "-c", help="cluster definition (default: ./cluster.yaml if present)")
    p.add_argument(
        "--name",
        type=cfgmod.flag_type("name"),
        help="cluster name (default: from the config, or the only cluster here)",
    )
    p.add_argument("--root", help="state directory root (default: data_dir from the config, .quorumlab)")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start a cluster and wait until it accepts writes")
    ft = cfgmod.flag_type
    up.add_argument("--nodes", "-n", type=ft("nodes"), help="node count or comma-separated names")
    up.add_argument("--engine", type=ft("engine"), help=" | ".join(cfgmod.ENGINES))
    up.add_argument("--net", type=ft("network"), help=" | ".join(cfgmod.NETWORKS))
    up.add_argument("--timeout", type=positive(float), default=30.0, help="seconds to wait for a leader and a write")
    up.add_argument("--client-port", type=ft("client_port"), help="first client port (node i gets +i)")
    up.add_argument("--peer-port", type=ft("peer_port"), help="first peer port (node i gets +i)")
    up.add_argument(
        "--metrics-port",
        type=ft("metrics_port"),
        help="first metrics port, etcd's --listen-metrics-urls (node i gets +i; default: free ports)",
    )
    up.add_argument("--heartbeat-ms", type=ft("heartbeat_ms"), help="etcd's --heartbeat-interval")
    up.add_argument("--election-ms", type=ft("election_ms"), help="etcd's --election-timeout")
    up.add_argument("--snapshot-count", type=ft("snapshot_count"))
    up.add_argument("--log-level", type=ft("log_level"))
    up.add_argument(
        "--auto-compaction-mode",
        dest="compaction_mode",
        type=ft("compaction_mode"),
        help="periodic | revision (default: revision)",
    )
    up.add_argument(
        "--auto-compaction-retention",
        dest="compaction_retention",
        type=ft("compaction_retention"),
        help="revisions to keep (revision mode, default 10000) or a duration (periodic: 1h)",
    )
    up.add_argument(
        "--quota-backend-bytes",
        type=ft("quota_backend_bytes"),
        help="NOSPACE alarm past this keyspace size: bytes or 256MiB (default 256MiB)",
    )
    up.add_argument(
        "--no-fault-injection",
        dest="fault_injection",
        action="store_const",
        const=False,
        default=None,
        help="builtin nodes without the fault-rule API (then no local-backend chaos; default: on)",
    )
    up.add_argument(
        "--tls",
        action="store_const",
        const=True,
        default=None,
        help="client ports speak TLS with a CA and certificates made in the state dir (tls/); clients need "
        "tls/ca.crt and, as the nodes require client certificates, tls/client.crt and client.key",
    )
    up.add_argument(
        "--prometheus",
        action="store_const",
        const=True,
        default=None,
        help="also start a real Prometheus (Debian `prometheus`) scraping every node; `down` stops it",
    )
    up.add_argument("--tui", action="store_true", help="open the dashboard once the cluster is up")
    up.add_argument("--quiet", "-q", action="store_true")
    up.add_argument("--name", dest="up_name", type=ft("name"), help="cluster name (same as the global --name)")
    up.set_defaults(fn=cmd_up)

    down = sub.add_parser("down", help="stop every node (--purge also deletes the data)")
    down.add_argument("--purge", action="store_true")
    down.set_defaults(fn=cmd_down)

    st = sub.add_parser("status", help="nodes, roles, leader, quorum; exit 1 without quorum")
    st.add_argument("-w", "--write-out", choices=["table", "json"], default="table")
    st.add_argument("--watch", type=positive(float), nargs="?", const=1.0, default=None, help="refresh every S seconds")
    st.set_defaults(fn=cmd_status)

    node_help = "a node name, or leader / follower / random"
    for verb, h in (
        ("start", "start a stopped node (or all)"),
        ("stop", "stop a node gracefully (SIGTERM)"),
        ("kill", "kill a node (SIGKILL)"),
        ("restart", "stop then start a node"),
        ("pause", "freeze a node (SIGSTOP)"),
        ("resume", "unfreeze a node (SIGCONT)"),
    ):
        sp = sub.add_parser(verb, help=h)
        sp.add_argument("node", help=node_help + (" / all" if verb in ("start", "stop") else ""))
        if verb in ("start", "restart"):
            sp.add_argument(
                "--timeout",
                type=positive(float),
                default=120.0,
                help="seconds to wait until it serves (it replays its WAL first)",
            )
        sp.set_defaults(fn=cmd_node)

    add = sub.add_parser("add", help="add a member (as a learner, promoted once caught up)")
    add.add_argument("node", help="new node name, e.g. n6")
    add.add_argument("--voter", action="store_true", help="add directly as a voter")
    add.add_argument("--timeout", type=positive(float), default=30.0)
    add.set_defaults(fn=cmd_add)

    rm = sub.add_parser("remove", help="remove a member from the cluster")
    rm.add_argument("node", help=node_help)
    rm.add_argument("--timeout", type=positive(float), default=30.0)
    rm.set_defaults(fn=cmd_remove)

    ml = sub.add_parser("move-leader", help="transfer leadership to a node")
    ml.add_argument("node", help=node_help)
    ml.set_defaults(fn=cmd_move_leader)

    lg = sub.add_parser("logs", help="show a node's log")
    lg.add_argument("node", help=node_help)
    lg.add_argument("-f", "--follow", action="store_true")
    lg.add_argument("-n", "--lines", type=positive(int), default=40)
    lg.set_defaults(fn=cmd_logs)

    q = sub.add_parser("quorum", help="the quorum / fault tolerance table from the notes")
    q.add_argument("--max", type=positive(int, cfgmod.MAX_NODES), default=7)
    q.set_defaults(fn=cmd_quorum)

    cl = sub.add_parser("clusters", help="list clusters in the state directory")
    cl.set_defaults(fn=cmd_clusters)

    tu = sub.add_parser("tui", help="open the live dashboard")
    tu.set_defaults(fn=cmd_tui)

    kvcli.add_parsers(sub)
    # the CLI is the composition root: chaos builds on the orchestrator, and its verbs join here
    from chaos import cli as chaos_cli

    chaos_cli.add_parsers(sub)
    _bench_parsers(sub)
    return p


def _bench_parsers(sub: Any) -> None:
    """`orchestrate bench` (the bench/ package, installed with the others): imported here, at the root."""
    from bench import cli as bench_cli

    bench_cli.add_parsers(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "up_name", None):
        args.name = args.up_name
    try:
        ctx = Ctx(args)
        rc: int = asyncio.run(args.fn(ctx, args))
        if ctx.after is not None and rc == 0:
            rc = ctx.after()
        sys.stdout.flush()  # a closed pipe shows up here, not at exit
        return rc
    except BrokenPipeError:
        # the reader went away (`orchestrate check ... | head -1`): stop quietly like any Unix filter,
        # with the status a shell reports for SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except NodeStartError as e:
        _end_progress()
        print(f"orchestrate: {e}", file=sys.stderr)
        return 1
    except (OrchestrateError, cfgmod.ConfigError, EngineError) as e:
        _end_progress()
        print(f"orchestrate: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a state dir we cannot write, a full disk: say so, no traceback
        _end_progress()
        print(f"orchestrate: {e.filename + ': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        return 2
    except ClientError as e:
        print(f"orchestrate: {e.endpoint + ': ' if e.endpoint else ''}{e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
