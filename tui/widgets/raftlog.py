"""The log view, in the spirit of RaftScope: every member's last log entries as cells coloured by term.

One row per member, all rows aligned on the same log indexes so a lagging follower or a divergent
uncommitted tail stands out. A cell shows its term's last digit; committed entries are solid,
uncommitted ones hollow; the applied mark and the leader's match/next for each follower are given
as numbers beside the cells, with the election timer as a small bar (how close a follower is to
campaigning). Beside the rows, Raft messages per second between every pair of members.
"""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text
from textual.reactive import var
from textual.widgets import Static

from orchestrator.cluster import ClusterView, NodeView

# background colours cycled by term, distinct on dark and light themes
TERM_COLOURS = ("dodger_blue2", "green4", "dark_orange3", "medium_purple3", "red3", "cyan4", "gold3", "deep_pink3")
ROLE_MARK = {"leader": "L", "candidate": "C", "pre-candidate": "P", "follower": "F"}
STATE_MARK = {"paused": "‖", "stopped": "✗", "unreachable": "?", "removed": "-"}  # when not running
FIXED = 60  # columns used by everything on a row except the cells (name, role, term, c/a, m/n, timer)
TIMER_W = 6
TAIL = 64  # entries a builtin node reports (Admin status "raft".log_terms)


def term_style(term: int, committed: bool) -> str:
    colour = TERM_COLOURS[term % len(TERM_COLOURS)]
    return f"bold white on {colour}" if committed else f"{colour} underline"


def window(view: ClusterView, width: int) -> tuple[int, int]:
    """The log indexes [lo, hi] shown: the newest entries any member has, as many as fit."""
    cells = max(8, min(TAIL, width - FIXED))
    ends = [(v.raft or {}).get("log_first", 1) + len((v.raft or {}).get("log_terms", [])) - 1 for v in _with_log(view)]
    hi = max(ends, default=0)
    return hi - cells + 1, hi  # a fixed width: a young log is padded on the left, the layout never moves


def _with_log(view: ClusterView) -> list[NodeView]:
    return [v for v in view.nodes if v.raft and v.state == "running"]


def timer_bar(elapsed: float, timeout: float) -> Text:
    """Election-timer progress: full means this member is about to campaign."""
    if timeout <= 0:
        return Text(" " * TIMER_W)
    frac = min(1.0, max(0.0, elapsed / timeout))
    full = round(frac * TIMER_W)
    style = "red" if frac > 0.8 else ("yellow" if frac > 0.5 else "green")
    return Text("█" * full, style=style) + Text("░" * (TIMER_W - full), style="dim")


def row(v: NodeView, lo: int, hi: int, leader: NodeView | None) -> Text:
    """One member: name, role, term, its cells in [lo, hi], commit/applied, match/next, timer."""
    t = Text()
    mark = ROLE_MARK.get(v.role, "-") if v.state == "running" else STATE_MARK.get(v.state, "?")
    t.append(f"{v.name:>5} ", style="bold")
    t.append(f"{mark} ", style="bold green" if v.role == "leader" else "")
    t.append(f"t{v.term:<4} " if v.term else "t-    ")
    d = v.raft or {}
    first = d.get("log_first", 1)
    terms = d.get("log_terms", [])
    run, run_style = "", ""
    for i in range(lo, hi + 1):  # cells of one style go in one span: ~10 spans a row instead of ~60
        k = i - first
        if v.state != "running" or not d or i < 1:
            ch, style = " ", ""
        elif k < 0:
            ch, style = "▒", "dim"  # older than the tail the node reports (or in its snapshot)
        elif k >= len(terms):
            ch, style = "·", "dim"
        else:
            ch, style = str(terms[k] % 10), term_style(terms[k], i <= v.commit)
        if style != run_style and run:
            t.append(run, style=run_style)
            run = ""
        run, run_style = run + ch, style
    if run:
        t.append(run, style=run_style)
    t.append(f" c{v.commit:<7} a{v.applied:<7}")
    p = (leader.peers or {}).get(v.name) if leader is not None and leader is not v else None
    if p is not None:
        t.append(f" m{p.get('match', 0):<7} n{p.get('next', 0):<7}", style="" if p.get("active") else "red")
    else:
        t.append(" " * 18)
    if d and v.role != "leader" and v.state == "running":
        t.append(" ")
        t.append_text(timer_bar(d.get("election_elapsed_ms", 0.0), d.get("election_timeout_ms", 0.0)))
    return t


def render_log(view: ClusterView | None, width: int) -> Text:
    if view is None or not _with_log(view):
        return Text("log view: no builtin member reports its log (real etcd does not)", style="dim")
    lo, hi = window(view, width)
    leader = next((v for v in view.nodes if v.name == view.leader), None)
    out = Text(
        f"{'':>5} {'':2}{'':6}{f'log {max(1, lo)}..{hi}':<22}(solid: committed, underlined: not yet; ▒ earlier)\n",
        style="dim",
    )
    for v in view.nodes:
        out.append_text(row(v, lo, hi, leader))
        out.append("\n")
    return out


class Rates:
    """Messages per second between members, from the counters of two successive views."""

    def __init__(self) -> None:
        self._last: dict[str, dict[str, int]] = {}
        self._at = 0.0
        self.per_s: dict[tuple[str, str], float] = {}

    def update(self, view: ClusterView, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        cur = {v.name: dict((v.raft or {}).get("msgs_sent", {})) for v in view.nodes if v.raft}
        dt = now - self._at
        if self._last and dt > 0:
            self.per_s = {
                (a, b): max(0, n - self._last.get(a, {}).get(b, n)) / dt
                for a, sent in cur.items()
                for b, n in sent.items()
            }
        self._last, self._at = cur, now


def render_matrix(view: ClusterView | None, rates: Rates) -> Text:
    if view is None or not rates.per_s:
        return Text("msgs/s: measuring…", style="dim")
    names = [v.name for v in view.nodes]
    w = max(4, *(len(n) for n in names)) + 1
    out = Text("msgs/s " + "".join(f"{n:>{w}}" for n in names) + "\n", style="bold")
    for a in names:
        out.append(f"{a:>6} ", style="bold")
        for b in names:
            r = rates.per_s.get((a, b))
            cell = "·" if a == b or r is None else f"{r:.0f}"
            out.append(f"{cell:>{w}}", style="dim" if not r else "")
        out.append("\n")
    return out


def _shape(text: Text) -> tuple[int, int]:
    """What the layout depends on: the number of lines and the widest one."""
    lines = text.plain.splitlines()
    return len(lines), max((len(line) for line in lines), default=0)


class _Changing(Static):
    """A Static that re-renders only when its text changed, and reflows the layout only when its
    shape did (a reflow of the whole screen each second was most of the dashboard's CPU)."""

    _shown: Text | None = None

    def show(self, text: Text) -> None:
        old = self._shown
        if old is not None and old == text:
            return
        reflow = old is None or _shape(text) != _shape(old)
        self._shown = text
        self.update(text, layout=reflow)


class RaftLogView(_Changing):
    """The per-member log rows."""

    view: var[ClusterView | None] = var(None)

    def watch_view(self) -> None:
        self.show(render_log(self.view, self.size.width or 160))

    def on_resize(self, _event: Any) -> None:
        self.show(render_log(self.view, self.size.width or 160))


class MessageMatrix(_Changing):
    view: var[ClusterView | None] = var(None)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rates = Rates()

    def watch_view(self) -> None:
        if self.view is not None:
            self.rates.update(self.view)
        self.show(render_matrix(self.view, self.rates))
