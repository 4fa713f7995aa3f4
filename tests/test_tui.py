"""The dashboard driven by Textual's pilot against a real 3-node cluster, plus a snapshot."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from orchestrator.cluster import Cluster
from orchestrator.config import ClusterConfig
from orchestrator.ports import port_block
from tui.app import Dashboard


async def wait_until(pilot: Pilot[int], cond: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await pilot.pause(0.1)
    raise AssertionError("condition not met in time")


def cell(app: Dashboard, row: str, col: str) -> str:
    return str(app.query_one("#nodes", DataTable).get_cell(row, col))


def panel_text(app: Dashboard) -> str:
    return str(app.query_one("#quorum", Static).render())


async def select(app: Dashboard, pilot: Pilot[int], name: str) -> None:
    table = app.query_one("#nodes", DataTable)
    keys = [str(k.value) for k in table.rows]
    table.move_cursor(row=keys.index(name))
    await pilot.pause(0.05)


@pytest.fixture
async def cluster(tmp_path: Path):  # type: ignore[no-untyped-def]
    cfg = replace(
        ClusterConfig(),
        name="tui",
        client_port=port_block(6),
        peer_port=port_block(6),
        heartbeat_ms=50,
        election_ms=500,
    ).with_nodes(3)
    c = Cluster(tmp_path, "tui")
    c.create(cfg)
    try:
        await c.up(30)
        yield c
    finally:
        c.down(purge=True)
        # belt and braces: nothing started under this test's directory may outlive it
        for p in psutil.process_iter(["cmdline"]):
            if str(tmp_path) in " ".join(p.info["cmdline"] or []):
                p.kill()


async def test_kill_isolate_heal_from_the_keyboard(cluster: Cluster, tmp_path: Path) -> None:
    app = Dashboard(tmp_path, "tui")
    async with app.run_test(size=(170, 45)) as pilot:
        await wait_until(pilot, lambda: app.view is not None and bool(app.view.leader) and app.writable is True)
        assert app.view is not None
        old = app.view.leader
        assert "leader" in cell(app, old, "ROLE")
        assert "quorum N/2+1       2" in panel_text(app) and "WRITABLE" in panel_text(app)

        # k on the leader: another node becomes leader, the old one shows stopped
        await select(app, pilot, old)
        await pilot.press("k")
        await wait_until(pilot, lambda: app.view is not None and app.view.leader not in ("", old))
        new = app.view.leader
        await wait_until(pilot, lambda: "leader" in cell(app, new, "ROLE") and cell(app, old, "STATE") == "stopped")
        events = "\n".join(e.text for e in app.tracker.events)
        assert f"killed {old}" in events and f"leader is now {new}" in events

        # i on the last follower: its group changes, the panel loses it, can lose nothing more
        await pilot.press("s")  # start the killed node again (cursor is still on it)
        await wait_until(pilot, lambda: cell(app, old, "STATE") == "running" and "follower" in cell(app, old, "ROLE"))
        victim = next(n for n in ("n1", "n2", "n3") if n != new)
        await select(app, pilot, victim)
        await pilot.press("i")
        await wait_until(pilot, lambda: cell(app, victim, "GROUP") == "1")
        await wait_until(pilot, lambda: any("fault injected: partition" in e.text for e in app.tracker.events))
        await wait_until(pilot, lambda: "in contact w/ lead 2" in panel_text(app))
        assert "can lose           0 more" in panel_text(app)

        # h heals: groups vanish, everyone back in contact
        await pilot.press("h")
        await wait_until(pilot, lambda: cell(app, victim, "GROUP") == "-" and "in contact w/ lead 3" in panel_text(app))
        assert any("fault healed: partition" in e.text for e in app.tracker.events)
        await pilot.press("q")


async def test_starts_and_quits_without_a_cluster(tmp_path: Path) -> None:
    app = Dashboard(tmp_path, "nothing-here")
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.pause(0.5)
        msg = str(app.query_one("#message", Static).render())
        assert "No cluster named 'nothing-here'" in msg and "orchestrate up" in msg
        await pilot.press("k")  # nothing selected: a bell, not a crash
        await pilot.press("q")
    assert app.return_code == 0


def test_snapshot_no_cluster_screen(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async def settle(pilot: Pilot[int]) -> None:
        await pilot.pause(0.6)

    app = Dashboard(Path("/nonexistent-quorumlab-root"), "demo", clock=False)  # a clock never snapshots twice
    assert snap_compare(app, terminal_size=(120, 30), run_before=settle)


def log_rows(app: Dashboard) -> dict[str, str]:
    """The log view's rows by member name (the first word of each row)."""
    text = str(app.query_one("#raftlog", Static).render())
    rows = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if parts:
            rows[parts[0]] = line
    return rows


def commit_of(row: str) -> int:
    return int(next(w for w in row.split() if w.startswith("c") and w[1:].isdigit())[1:])


async def test_log_view_follows_a_lagging_follower_and_a_leader_change(cluster: Cluster, tmp_path: Path) -> None:
    app = Dashboard(tmp_path, "tui")
    async with app.run_test(size=(160, 45)) as pilot:
        await wait_until(pilot, lambda: app.view is not None and bool(app.view.leader) and len(log_rows(app)) == 3)
        assert app.view is not None
        leader = app.view.leader
        rows = log_rows(app)
        assert rows[leader].split()[1] == "L", rows[leader]
        lagger = next(n for n in ("n1", "n2", "n3") if n != leader)

        # a paused follower keeps its old commit index while the others move on
        cluster.pause_node(lagger)
        try:
            async with cluster.client([leader]) as c:
                for i in range(30):
                    await c.put(f"log/{i}", "x")
            await wait_until(pilot, lambda: commit_of(log_rows(app)[leader]) >= commit_of(log_rows(app)[lagger]) + 30)
            row = log_rows(app)[lagger]
            assert row.split()[1] == "‖", row  # shown as paused, no cells
            # the leader's row shows the follower's match index behind its own commit
            match = int(next(w for w in log_rows(app)[lagger].split() if w.startswith("m") and w[1:].isdigit())[1:])
            assert match < commit_of(log_rows(app)[leader])
        finally:
            cluster.resume_node(lagger)
        await wait_until(pilot, lambda: commit_of(log_rows(app)[lagger]) == commit_of(log_rows(app)[leader]))

        # kill the leader: another row takes the L and the term goes up
        old_term = app.view.term
        cluster.kill_node(leader)
        await wait_until(pilot, lambda: app.view is not None and app.view.leader not in ("", leader))
        new = app.view.leader
        await wait_until(pilot, lambda: log_rows(app)[new].split()[1] == "L")
        assert app.view.term > old_term
        assert log_rows(app)[leader].split()[1] == "✗"  # stopped
        await pilot.press("q")
