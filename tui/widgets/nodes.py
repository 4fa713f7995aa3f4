"""The nodes table: one row per member, refreshed in place so the cursor stays on its node."""

from __future__ import annotations

from typing import Any

from textual.reactive import var
from textual.widgets import DataTable

from orchestrator.cluster import ClusterView, NodeView
from orchestrator.fmt import alarms_text, human_bytes, ms_text, stall_text

COLUMNS = (
    "NAME",
    "ROLE",
    "TERM",
    "LEADER",
    "COMMIT",
    "APPLIED",
    "LAG",
    "STATE",
    "GROUP",
    "STALL ms",
    "FSYNC p99",
    "RTT",
    "ALARMS",
    "PID",
    "CPU%",
    "RSS",
    "CLIENT URL",
)
WIDTHS = {"ROLE": 18, "STATE": 11, "LEADER": 6, "CLIENT URL": 28}  # the longest values they take
STALL_WARN_MS = 50  # a stall this long eats half a default heartbeat interval: shown in red
ROLE_STYLE = {
    "leader": "bold green",
    "candidate": "bold yellow",
    "pre-candidate": "yellow",
    "follower": "",
    "no-leader": "red",
}


def stall_cell(p99: float | None, mx: float | None) -> str:
    """Loop stall p99/max over the last minute; red once it threatens heartbeats; '-' for real etcd."""
    text = stall_text(p99, mx)
    return f"[red]{text}[/]" if (mx or 0) >= STALL_WARN_MS else text


def row_cells(v: NodeView, lead_commit: int, group: str) -> list[str]:
    """One node's cells, in COLUMNS order (Rich markup for the coloured ones)."""
    role = v.role + (" (learner)" if v.learner else "")
    style = ROLE_STYLE.get(v.role, "")
    return [
        v.name,
        f"[{style}]{role or '-'}[/]" if style else (role or "-"),
        str(v.term or "-"),
        v.leader or "-",
        str(v.commit),
        str(v.applied),
        str(max(0, lead_commit - v.applied)) if v.role and lead_commit else "-",
        v.state,
        group,
        stall_cell(v.loop_stall_p99_ms, v.loop_stall_max_ms),
        ms_text(v.fsync_p99_ms),
        ms_text(v.peer_rtt_ms),
        f"[bold red]{alarms_text(v.alarms)}[/]" if v.alarms else "-",
        str(v.pid or "-"),
        f"{v.cpu:.0f}" if v.pid else "-",
        human_bytes(v.rss) if v.rss else "-",
        v.client_url,
    ]


class NodeTable(DataTable[str]):
    """Renders `view` (None: nothing yet) with each node's partition group from `groups`."""

    view: var[ClusterView | None] = var(None)
    groups: var[list[list[str]]] = var(list)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self._shown: dict[str, list[str]] = {}  # the cells on screen, by node

    def on_mount(self) -> None:
        for c in COLUMNS:
            self.add_column(c, key=c, width=WIDTHS.get(c))
        self._fill()

    def watch_view(self) -> None:
        self._fill()

    def watch_groups(self) -> None:
        self._fill()

    @property
    def selected(self) -> str | None:
        """The name of the node under the cursor, None while the table is empty."""
        if self.row_count == 0:
            return None
        return str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)

    def _fill(self) -> None:
        """Update rows in place (removing, updating, adding by node name) rather than rebuilding."""
        view = self.view
        if view is None or not self.columns:  # data may arrive before the columns (added on mount)
            return
        where = {n: str(i + 1) for i, g in enumerate(self.groups) for n in g}
        lead_commit = next((v.commit for v in view.nodes if v.name == view.leader), 0)
        rows = {v.name: row_cells(v, lead_commit, where.get(v.name, "-")) for v in view.nodes}
        existing = {str(k.value) for k in self.rows}
        for name in existing - rows.keys():
            self.remove_row(name)
            self._shown.pop(name, None)
        for name, cells in rows.items():
            if name in existing:
                before = self._shown.get(name, [])
                for i, (col, val) in enumerate(zip(COLUMNS, cells, strict=True)):
                    if i >= len(before) or before[i] != val:  # only what changed: each update re-renders
                        self.update_cell(name, col, val)
            else:
                self.add_row(*cells, key=name)
            self._shown[name] = cells
