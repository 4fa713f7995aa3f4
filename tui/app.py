"""The live dashboard: `orchestrate tui`.

Everything that talks to the cluster is async (gRPC aio) or runs in a worker
thread (process signals that wait), so the UI loop never blocks; the view
refreshes at 4 Hz, the probe writes at 4 Hz, and every key binding calls the
same orchestrator / chaos API as the CLI.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Header, Input, Label, OptionList, RichLog, Sparkline, Static

from chaos.experiment import list_builtin
from chaos.faults import Chaos, FaultError
from chaos.net import NetError
from chaos.workload import Workload
from node.client import Client, ClientError
from orchestrator.cli import alarms_text, human_bytes, stall_text
from orchestrator.cluster import Cluster, ClusterView, OrchestrateError

from .model import Series, Tracker, panel

REFRESH_S = 0.25
COLUMNS = ("NAME", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAG", "STATE", "GROUP", "STALL ms", "ALARMS",
           "PID", "CPU%", "RSS", "CLIENT URL")  # fmt: skip
STALL_WARN_MS = 50  # a stall this long eats half a default heartbeat interval: shown in red
ROLE_STYLE = {"leader": "bold green", "candidate": "bold yellow", "pre-candidate": "yellow", "follower": "",
              "no-leader": "red"}  # fmt: skip

HELP = """[b]quorumlab dashboard[/b]

Select a node with the arrow keys, then:
  k  kill it (SIGKILL)            s  stop / start it (graceful)
  p  pause / resume it (SIGSTOP)  r  restart it
  i  isolate it from the others   x  partition: type groups like  n1,n2 n3,n4,n5
  h  heal: clear network faults, resume paused nodes
  a  add a member (learner, then promoted)    d  remove the selected member
  l  move leadership to it        w  background workload on / off
  e  run a built-in experiment (on its own throwaway cluster)
  ?  this help                    q  quit

The quorum panel is the seed's arithmetic live: N voters, quorum N/2+1,
fault tolerance N - quorum, and a real probe write every 250 ms.
Press any key to close."""


class HelpScreen(ModalScreen[None]):
    def compose(self) -> ComposeResult:
        yield Static(HELP, id="help")

    def on_key(self) -> None:
        self.dismiss()


class PartitionScreen(ModalScreen[str]):
    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = names

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(f"Partition {', '.join(self.names)} into groups (space-separated, comma within a group).")
            yield Label("Nodes you do not name form their own groups. Esc cancels.")
            half = len(self.names) // 2
            yield Input(value=f"{','.join(self.names[:half])} {','.join(self.names[half:])}", id="groups")

    @on(Input.Submitted)
    def submitted(self, ev: Input.Submitted) -> None:
        self.dismiss(ev.value)

    def key_escape(self) -> None:
        self.dismiss("")


class ExperimentScreen(ModalScreen[str]):
    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Run which experiment? (on a separate throwaway cluster; Esc cancels)")
            yield OptionList(*[f"{n} — {d}" for n, d in list_builtin()], id="experiments")

    @on(OptionList.OptionSelected)
    def chosen(self, ev: OptionList.OptionSelected) -> None:
        self.dismiss(str(ev.option.prompt).split(" — ")[0])

    def key_escape(self) -> None:
        self.dismiss("")


class Dashboard(App[int]):
    CSS = """
    #top { height: 1fr; }
    #nodes { width: 3fr; }
    #quorum { width: 1fr; min-width: 38; border: round $accent; padding: 0 1; }
    #charts { height: 7; }
    .chart { width: 1fr; border: round $primary; }
    Sparkline { height: 3; }
    Sparkline.faults { height: 1; }
    Sparkline.faults > .sparkline--max-color { color: $error; }
    Sparkline.faults > .sparkline--min-color { color: $background; }
    #events { height: 10; border: round $secondary; }
    #message { height: auto; color: $warning; }
    #help, #dialog { width: 80; height: auto; border: thick $accent; background: $surface; padding: 1 2; }
    HelpScreen, PartitionScreen, ExperimentScreen { align: center middle; }
    """
    BINDINGS = [
        Binding("k", "kill", "kill"),
        Binding("s", "stop_start", "stop/start"),
        Binding("p", "pause_resume", "pause/resume"),
        Binding("r", "restart", "restart"),
        Binding("i", "isolate", "isolate"),
        Binding("x", "partition", "partition"),
        Binding("h", "heal", "heal"),
        Binding("a", "add", "add"),
        Binding("d", "remove", "remove"),
        Binding("l", "move_leader", "move leader"),
        Binding("w", "workload", "workload"),
        Binding("e", "experiment", "experiment"),
        Binding("question_mark", "help", "help"),
        Binding("q", "quit", "quit"),
    ]
    TITLE = "quorumlab"

    def __init__(self, root: Path, name: str, refresh_s: float = REFRESH_S, clock: bool = True) -> None:
        super().__init__()
        self.clock = clock
        self.root, self.cluster_name = root, name
        self.refresh_s = refresh_s
        self.cluster: Cluster | None = None
        self.view: ClusterView | None = None
        self.tracker = Tracker()
        self.writable: bool | None = None
        self.probe_ms = 0.0
        self.tput = Series()
        self.lat = Series()
        self.faults = Series()  # 1 while any fault is active: marks fault windows under both charts
        self._fault_ids: set[str] | None = None
        self._probe_ok = 0
        self.workload: Workload | None = None
        self._wl_seen = 0
        self.busy = False

    # -- layout ---------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header(show_clock=self.clock)
        yield Static("", id="message")
        with Horizontal(id="top"):
            yield DataTable(id="nodes", cursor_type="row", zebra_stripes=True)
            yield Static("", id="quorum")
        with Horizontal(id="charts"):
            with Vertical(classes="chart"):
                yield Label("acknowledged writes/s (probe + workload); red: a fault was active")
                yield Sparkline([0.0], id="tput")
                yield Sparkline([0.0], id="tput-faults", classes="faults")
            with Vertical(classes="chart"):
                yield Label("probe write latency ms; red: a fault was active")
                yield Sparkline([0.0], id="lat")
                yield Sparkline([0.0], id="lat-faults", classes="faults")
        yield RichLog(id="events", markup=True, wrap=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#nodes", DataTable)
        widths = {"ROLE": 18, "STATE": 11, "LEADER": 6, "CLIENT URL": 28}  # the longest values they take
        for c in COLUMNS:
            table.add_column(c, key=c, width=widths.get(c))
        self.sub_title = self.cluster_name
        self.set_interval(self.refresh_s, self.poll)
        self.set_interval(self.refresh_s, self.probe)
        self.poll_now()

    def poll_now(self) -> None:
        self.call_later(self.poll)

    # -- data ------------------------------------------------------------------------------------
    def _load_cluster(self) -> Cluster | None:
        """One Cluster object for the whole session (its launcher keeps psutil handles), re-read each poll."""
        c = self.cluster or Cluster(self.root, self.cluster_name)
        if not c.dir.exists():
            return None
        c.reload()
        return c

    async def poll(self) -> None:
        if self.busy:
            return
        self.busy = True
        try:
            await self._refresh()
        finally:
            self.busy = False

    async def _refresh(self) -> None:
        msg = self.query_one("#message", Static)
        c = self._load_cluster()
        if c is None:
            self.cluster = None
            msg.update(f"No cluster named {self.cluster_name!r} under {self.root}. Start one with "
                       f"`orchestrate up --nodes 5` (this screen picks it up automatically). q quits.")  # fmt: skip
            return
        self.cluster = c
        try:
            view = await c.view(usage=True, timeout=0.5)
        except (OrchestrateError, OSError, ValueError) as e:
            msg.update(f"cannot read cluster state: {e}")
            return
        msg.update("")
        self.view = view
        for ev in self.tracker.update(view):
            self.note(ev.render(), ev.kind)
        groups = c.st.extra.get("chaos", {}).get("groups", [])
        self._fill_table(view, groups)
        self._update_panel()
        self._diff_faults(c.st.extra.get("chaos", {}).get("rules", {}))
        wl_ok = 0
        if self.workload is not None:
            total = sum(1 for s in self.workload.samples if s.ok)
            wl_ok, self._wl_seen = total - self._wl_seen, total
        self.tput.push((self._probe_ok + wl_ok) / self.refresh_s)
        self._probe_ok = 0
        active = bool(c.st.extra.get("chaos", {}).get("rules")) or any(v.state != "running" for v in view.nodes)
        self.faults.push(1.0 if active else 0.0)
        self.query_one("#tput", Sparkline).data = self.tput.data()
        self.query_one("#lat", Sparkline).data = self.lat.data()
        for sid in ("#tput-faults", "#lat-faults"):  # 1 renders in the max (red) colour, 0 in the background
            self.query_one(sid, Sparkline).data = self.faults.data()

    def _fill_table(self, view: ClusterView, groups: list[list[str]]) -> None:
        table = self.query_one("#nodes", DataTable)
        where = {n: str(i + 1) for i, g in enumerate(groups) for n in g}
        lead_commit = next((v.commit for v in view.nodes if v.name == view.leader), 0)
        rows = {}
        for v in view.nodes:
            role = v.role + (" (learner)" if v.learner else "")
            style = ROLE_STYLE.get(v.role, "")
            state = v.state
            rows[v.name] = [
                v.name,
                f"[{style}]{role or '-'}[/]" if style else (role or "-"),
                str(v.term or "-"),
                v.leader or "-",
                str(v.commit),
                str(v.applied),
                str(max(0, lead_commit - v.applied)) if v.role and lead_commit else "-",
                state,
                where.get(v.name, "-"),
                self._stall_cell(v.loop_stall_p99_ms, v.loop_stall_max_ms),
                f"[bold red]{alarms_text(v.alarms)}[/]" if v.alarms else "-",
                str(v.pid or "-"),
                f"{v.cpu:.0f}" if v.pid else "-",
                human_bytes(v.rss) if v.rss else "-",
                v.client_url,
            ]
        existing = {str(k.value) for k in table.rows}
        for name in existing - rows.keys():
            table.remove_row(name)
        for name, cells in rows.items():
            if name in existing:
                for col, val in zip(COLUMNS, cells, strict=True):
                    table.update_cell(name, col, val)
            else:
                table.add_row(*cells, key=name)

    @staticmethod
    def _stall_cell(p99: float | None, mx: float | None) -> str:
        """Loop stall p99/max over the last minute; red once it threatens heartbeats; '-' for real etcd."""
        text = stall_text(p99, mx)
        return f"[red]{text}[/]" if (mx or 0) >= STALL_WARN_MS else text

    async def probe(self) -> None:
        c = self.cluster
        if c is None or self.view is None:
            return
        eps = [c.st.nodes[n].endpoint for n in c.running()]
        if not eps:
            self._set_writable(False, 0.0)
            return
        t0 = time.monotonic()
        try:
            async with Client(eps, timeout=0.5) as cl:
                await cl.put("quorumlab/probe", str(time.time()))
            ms = (time.monotonic() - t0) * 1000
            self._probe_ok += 1
            self.lat.push(ms)
            self._set_writable(True, ms)
        except ClientError as e:
            self._set_writable(False, 0.0, str(e))

    def _diff_faults(self, rules: dict[str, Any]) -> None:
        """Network faults come and go from any shell (`orchestrate chaos ...`): log each change."""
        ids = set(rules)
        if self._fault_ids is not None:
            for fid in sorted(ids - self._fault_ids):
                r = rules[fid][0] if rules[fid] else {}
                detail = (
                    f" ({len(rules[fid])} rules, e.g. {r.get('src')}→{r.get('dst')} {r.get('action')})" if r else ""
                )
                self.note(self.tracker.add(f"fault injected: {fid}{detail}", "fault").render(), "fault")
            for fid in sorted(self._fault_ids - ids):
                self.note(self.tracker.add(f"fault healed: {fid}", "heal").render(), "heal")
        self._fault_ids = ids

    def _update_panel(self) -> None:
        c, view = self.cluster, self.view
        if c is None or view is None:
            return
        groups = c.st.extra.get("chaos", {}).get("groups", [])
        p = panel(view, self.writable, self.probe_ms, c.st.election_ms, groups)
        self.query_one("#quorum", Static).update("\n".join(p.lines()))

    def _set_writable(self, ok: bool, ms: float, why: str = "") -> None:
        if self.writable is not None and ok != self.writable:
            self.note(self.tracker.add("writes work again" if ok else f"probe write failed: {why or 'no node up'}",
                                       "heal" if ok else "error").render(), "heal" if ok else "error")  # fmt: skip
        self.writable, self.probe_ms = ok, ms
        self._update_panel()

    def note(self, text: str, kind: str) -> None:
        color = {"leader": "green", "fault": "red", "error": "red", "heal": "cyan", "membership": "magenta"}
        c = color.get(kind)
        self.query_one("#events", RichLog).write(f"[{c}]{text}[/]" if c else text)

    # -- actions ----------------------------------------------------------------------------------
    def selected(self) -> str | None:
        table = self.query_one("#nodes", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        return str(key.value)

    @work(exclusive=False, group="actions")
    async def act(self, label: str, fn: Any, *args: Any) -> None:
        """Run an orchestrator/chaos call off the UI loop and log the outcome."""
        try:
            res = fn(*args)
            if asyncio.iscoroutine(res):
                await res
            self.note(self.tracker.add(label, "fault").render(), "fault")
        except (OrchestrateError, FaultError, NetError, ClientError, OSError) as e:
            self.note(self.tracker.add(f"{label} failed: {e}", "error").render(), "error")
        self.poll_now()

    def _need(self) -> tuple[Cluster, str] | None:
        name = self.selected()
        if self.cluster is None or name is None:
            self.bell()
            return None
        return self.cluster, name

    def action_kill(self) -> None:
        if x := self._need():
            self.act(f"killed {x[1]}", asyncio.to_thread, x[0].kill_node, x[1])

    def action_stop_start(self) -> None:
        if x := self._need():
            c, n = x
            if c.launcher.state(c.st.nodes[n]) == "stopped":
                self.act(f"started {n}", asyncio.to_thread, c.start_node, n)
            else:
                self.act(f"stopped {n}", asyncio.to_thread, c.stop_node, n)

    def action_pause_resume(self) -> None:
        if x := self._need():
            c, n = x
            if c.launcher.state(c.st.nodes[n]) == "paused":
                self.act(f"resumed {n}", asyncio.to_thread, c.resume_node, n)
            else:
                self.act(f"paused {n}", asyncio.to_thread, c.pause_node, n)

    def action_restart(self) -> None:
        if x := self._need():
            self.act(f"restarted {x[1]}", asyncio.to_thread, x[0].restart_node, x[1])

    async def _with_chaos(self, what: str, *args: Any) -> None:
        assert self.cluster is not None
        ch = Chaos.for_cluster(self.cluster)
        await getattr(ch, what)(*args)
        ch.save()

    def action_isolate(self) -> None:
        if x := self._need():
            self.act(f"isolated {x[1]}", self._with_chaos, "isolate", x[1])

    def action_heal(self) -> None:
        if self.cluster is not None:
            self.act("healed the network, resumed paused nodes", self._with_chaos, "heal")

    def action_partition(self) -> None:
        if self.cluster is None:
            self.bell()
            return

        def done(value: str | None) -> None:
            if value:
                groups = [g.split(",") for g in value.split()]
                self.act(f"partitioned {' | '.join(value.split())}", self._with_chaos, "partition", groups)

        self.push_screen(PartitionScreen(self.cluster.st.live_names()), done)

    def action_add(self) -> None:
        if self.cluster is None:
            self.bell()
            return
        taken = set(self.cluster.st.nodes)
        name = next(f"n{i}" for i in range(1, 100) if f"n{i}" not in taken)
        self.act(f"added {name}", self.cluster.add, name, False, 30.0)

    def action_remove(self) -> None:
        if x := self._need():
            self.act(f"removed {x[1]}", x[0].remove, x[1], 30.0)

    def action_move_leader(self) -> None:
        if x := self._need():
            self.act(f"moved leadership to {x[1]}", x[0].move_leader, x[1])

    async def action_workload(self) -> None:
        if self.workload is not None:
            wl, self.workload = self.workload, None
            await wl.stop()
            self.note(self.tracker.add("workload stopped").render(), "info")
            return
        if self.cluster is None:
            self.bell()
            return
        eps = {n: self.cluster.st.nodes[n].endpoint for n in self.cluster.st.live_names()}
        self.workload = Workload(eps, clients=4, timeout=1.0)
        self._wl_seen = 0
        self.workload.start()
        self.note(self.tracker.add("workload started: 4 clients, put/get/cas").render(), "info")

    def action_experiment(self) -> None:
        def chosen(name: str | None) -> None:
            if name:
                self.run_experiment(name)

        self.push_screen(ExperimentScreen(), chosen)

    @work(exclusive=True, group="experiment")
    async def run_experiment(self, name: str) -> None:
        self.note(self.tracker.add(f"experiment {name} started (its own cluster)").render(), "info")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orchestrator", "--root", str(self.root), "experiment", "run", name,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line.strip():
                self.note(f"  [dim]{line[:200]}[/]", "info")
        code = await proc.wait()
        self.note(
            self.tracker.add(f"experiment {name} finished: exit {code}").render(), "heal" if code == 0 else "error"
        )

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        if self.workload is not None:
            await self.workload.stop()
        self.exit(0)


def main(root: Path, name: str) -> int:
    return Dashboard(root, name).run() or 0
