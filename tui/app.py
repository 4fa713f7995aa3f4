"""The live dashboard: `orchestrate tui`.

Everything that talks to the cluster is async (gRPC aio) or runs in a worker
thread (process signals that wait), so the UI loop never blocks; the view
refreshes once a second (the probe writes as often), and every key binding calls the
same orchestrator / chaos API as the CLI.

The app owns the data (reactive attributes bound to the widgets in compose, so
setting one re-renders what shows it) and the workers: one exclusive worker
polls the cluster, one probes it, actions run in their own workers. The widgets
live in tui/widgets/, the modal screens in tui/screens.py, the layout in
dashboard.tcss, and what is shown is computed UI-free in tui/model.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.reactive import var
from textual.widgets import Footer, Header

from chaos.faults import Chaos, FaultError
from chaos.net import NetError
from chaos.workload import Workload
from node.client import Client, ClientError
from orchestrator.cluster import Cluster, ClusterView, OrchestrateError
from orchestrator.state import ChaosState, NetRule

from .model import QuorumPanel, Series, Tracker, panel
from .screens import ExperimentScreen, HelpScreen, PartitionScreen
from .widgets import Charts, EventLog, MessageMatrix, NodeTable, Notice, QuorumView, RaftLogView

REFRESH_S = 1.0


def chaos_state(c: Cluster) -> ChaosState:
    """What `orchestrate chaos` keeps in the state file: partition `groups` and fault `rules` by id."""
    return c.st.chaos


class Dashboard(App[int]):
    CSS_PATH = "dashboard.tcss"
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

    # What the widgets show (bound in compose): set them, the widgets re-render.
    notice: var[str] = var("")
    view: var[ClusterView | None] = var(None)
    groups: var[list[list[str]]] = var(list)
    quorum_panel: var[QuorumPanel | None] = var(None)
    tput_data: var[list[float]] = var(lambda: [0.0])
    lat_data: var[list[float]] = var(lambda: [0.0])
    fault_data: var[list[float]] = var(lambda: [0.0])

    def __init__(self, root: Path, name: str, refresh_s: float = REFRESH_S, clock: bool = True) -> None:
        super().__init__()
        self.clock = clock
        self.root, self.cluster_name = root, name
        self.refresh_s = refresh_s
        self.cluster: Cluster | None = None
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
        self._prober: tuple[list[str], Client] | None = None  # the probe's client, by endpoints
        self._poll_wanted = asyncio.Event()  # set by poll_now: refresh without waiting for the next tick

    # -- layout ---------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header(show_clock=self.clock)
        yield Notice(id="message").data_bind(text=Dashboard.notice)
        with Horizontal(id="top"):
            yield NodeTable(id="nodes").data_bind(Dashboard.view, Dashboard.groups)
            yield QuorumView(id="quorum").data_bind(panel=Dashboard.quorum_panel)
        with Horizontal(id="raft"):
            yield RaftLogView(id="raftlog").data_bind(Dashboard.view)
            yield MessageMatrix(id="msgs").data_bind(Dashboard.view)
        yield Charts(id="charts").data_bind(
            tput=Dashboard.tput_data, lat=Dashboard.lat_data, faults=Dashboard.fault_data
        )
        yield EventLog(id="events")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.cluster_name
        self.poll()
        self.probe()

    def poll_now(self) -> None:
        """Refresh as soon as the refresh in flight (if any) is done: an action's effect shows at once."""
        self._poll_wanted.set()

    # -- workers -----------------------------------------------------------------------------------
    async def _every(self, fn: Callable[[], Awaitable[None]], wake: asyncio.Event | None = None) -> None:
        """Call fn every refresh_s, never overlapping: a call that overruns skips the ticks it missed.

        `wake`, when set, starts the next call early (it is cleared just before the call).
        """
        start, count = time.monotonic(), 0
        while True:
            count = max(count + 1, int((time.monotonic() - start) / self.refresh_s) + 1)
            delay = max(0.0, start + count * self.refresh_s - time.monotonic())
            if wake is None:
                await asyncio.sleep(delay)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), delay)
                wake.clear()
            await fn()

    @work(exclusive=True, group="poll")
    async def poll(self) -> None:
        """The one refresh loop: a refresh takes at least 250 ms (CPU is sampled over that), so
        refreshes are sequenced in one long-lived worker rather than started per tick."""
        await self._refresh()
        await self._every(self._refresh, self._poll_wanted)

    @work(exclusive=True, group="probe")
    async def probe(self) -> None:
        """The probe loop: one real write every refresh_s."""
        await self._every(self._probe_once)

    # -- data ------------------------------------------------------------------------------------
    def _load_cluster(self) -> Cluster | None:
        """One Cluster object for the whole session (its launcher keeps psutil handles), re-read each poll."""
        c = self.cluster or Cluster(self.root, self.cluster_name)
        if not c.dir.exists():
            return None
        c.reload()
        return c

    async def _refresh(self) -> None:
        c = self._load_cluster()
        if c is None:
            self.cluster = None
            self.notice = (
                f"No cluster named {self.cluster_name!r} under {self.root}. Start one with "
                f"`orchestrate up --nodes 5` (this screen picks it up automatically). q quits."
            )
            return
        self.cluster = c
        try:
            view = await c.view(usage=True, timeout=0.5, keep=True)
        except (OrchestrateError, OSError, ValueError) as e:
            self.notice = f"cannot read cluster state: {e}"
            return
        self.notice = ""
        for ev in self.tracker.update(view):
            self.note(ev.render(), ev.kind)
        chaos = chaos_state(c)
        self.groups = chaos.groups
        self.view = view
        self._update_panel()
        self._diff_faults(chaos.rules)
        wl_ok = 0
        if self.workload is not None:
            total = sum(1 for s in self.workload.samples if s.ok)
            wl_ok, self._wl_seen = total - self._wl_seen, total
        self.tput.push((self._probe_ok + wl_ok) / self.refresh_s)
        self._probe_ok = 0
        active = bool(chaos.rules) or any(v.state != "running" for v in view.nodes)
        self.faults.push(1.0 if active else 0.0)
        self.tput_data = self.tput.data()
        self.lat_data = self.lat.data()
        self.fault_data = self.faults.data()

    async def _probe_once(self) -> None:
        c = self.cluster
        if c is None or self.view is None:
            return
        eps = [c.st.nodes[n].endpoint for n in c.running()]
        if not eps:
            self._set_writable(False, 0.0)
            return
        if self._prober is None or self._prober[0] != eps:
            if self._prober is not None:
                await self._prober[1].close()
            self._prober = (eps, Client(eps, timeout=0.5, tls=c.tls))  # kept: new channels per probe cost more
        t0 = time.monotonic()
        try:
            await self._prober[1].put("quorumlab/probe", str(time.time()))
            ms = (time.monotonic() - t0) * 1000
            self._probe_ok += 1
            self.lat.push(ms)
            self._set_writable(True, ms)
        except ClientError as e:
            self._set_writable(False, 0.0, str(e))

    def _diff_faults(self, rules: dict[str, list[NetRule]]) -> None:
        """Network faults come and go from any shell (`orchestrate chaos ...`): log each change."""
        ids = set(rules)
        if self._fault_ids is not None:
            for fid in sorted(ids - self._fault_ids):
                r = rules[fid][0] if rules[fid] else None
                detail = f" ({len(rules[fid])} rules, e.g. {r.src}→{r.dst} {r.action})" if r else ""
                self.record(f"fault injected: {fid}{detail}", "fault")
            for fid in sorted(self._fault_ids - ids):
                self.record(f"fault healed: {fid}", "heal")
        self._fault_ids = ids

    def _update_panel(self) -> None:
        c, view = self.cluster, self.view
        if c is None or view is None:
            return
        self.quorum_panel = panel(view, self.writable, self.probe_ms, c.st.election_ms, chaos_state(c).groups)

    def _set_writable(self, ok: bool, ms: float, why: str = "") -> None:
        if self.writable is not None and ok != self.writable:
            if ok:
                self.record("writes work again", "heal")
            else:
                self.record(f"probe write failed: {why or 'no node up'}", "error")
        self.writable, self.probe_ms = ok, ms
        self._update_panel()

    def note(self, text: str, kind: str) -> None:
        self.query_one(EventLog).note(text, kind)

    def record(self, text: str, kind: str = "info") -> None:
        """An event worth keeping: into the tracker's history (what tests read) and onto the log."""
        self.note(self.tracker.add(text, kind).render(), kind)

    # -- actions ----------------------------------------------------------------------------------
    def selected(self) -> str | None:
        return self.query_one(NodeTable).selected

    @work(exclusive=False, group="actions")
    async def act(self, label: str, fn: Any, *args: Any) -> None:
        """Run an orchestrator/chaos call off the UI loop and log the outcome."""
        try:
            res = fn(*args)
            if asyncio.iscoroutine(res):
                await res
            self.record(label, "fault")
        except (OrchestrateError, FaultError, NetError, ClientError, OSError) as e:
            self.record(f"{label} failed: {e}", "error")
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
            self.record("workload stopped")
            return
        if self.cluster is None:
            self.bell()
            return
        eps = {n: self.cluster.st.nodes[n].endpoint for n in self.cluster.st.live_names()}
        self.workload = Workload(eps, clients=4, timeout=1.0, tls=self.cluster.tls)
        self._wl_seen = 0
        self.workload.start()
        self.record("workload started: 4 clients, put/get/cas")

    def action_experiment(self) -> None:
        def chosen(name: str | None) -> None:
            if name:
                self.run_experiment(name)

        self.push_screen(ExperimentScreen(), chosen)

    @work(exclusive=True, group="experiment")
    async def run_experiment(self, name: str) -> None:
        self.record(f"experiment {name} started (its own cluster)")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "orchestrator",
            "--root",
            str(self.root),
            "experiment",
            "run",
            name,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line.strip():
                self.note(f"  [dim]{line[:200]}[/]", "info")
        code = await proc.wait()
        self.record(f"experiment {name} finished: exit {code}", "heal" if code == 0 else "error")

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        if self.workload is not None:
            await self.workload.stop()
        if self._prober is not None:
            await self._prober[1].close()
        if self.cluster is not None:
            await self.cluster.aclose()
        self.exit(0)


def main(root: Path, name: str) -> int:
    app = Dashboard(root, name)
    try:
        return app.run() or 0
    finally:
        if app.cluster is not None:
            app.cluster.close()  # the SSH connections to remote hosts, kept for the whole session
