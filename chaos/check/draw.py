"""The picture of a register anomaly: one self-contained HTML page (inline SVG, no script, no network).

Like porcupine's view: each client is a row, each operation a bar from invocation to completion;
the longest order found that explains the history is numbered in green, the operation no order
could place is red, the operations the search never placed are grey.
"""

from __future__ import annotations

import html
import re
import time
from pathlib import Path

from ..history import FAIL, OK, Op
from .model import INVALID, KeyResult, Result, relevant, rows_of
from .search import search

ROW_H, LEFT, WIDTH = 34, 90, 1100
SVG_NS = "http://www.w3.org/2000/svg"  # a name, never fetched


def _label(op: Op) -> str:
    if op.kind == "put":
        return f"put {op.value!r}"
    if op.kind == "get":
        return f"get → {op.value!r}" if op.outcome == OK else "get ?"
    tail = "" if op.outcome != OK else (" ✓" if op.succeeded else " ✗")
    return f"cas {op.expect!r}→{op.value!r}{tail}"


def _window(kr: KeyResult, ops: list[Op], around: int = 36) -> list[Op]:
    hist = sorted((o for o in ops if o.key == kr.key and o.outcome != FAIL), key=lambda o: o.invoke)
    culprit = kr.culprit
    if culprit is None or culprit not in hist:
        return hist[-around:]
    pos = hist.index(culprit)
    return hist[max(0, pos - around * 2 // 3) : pos + around // 3 + 1]


def _order_without_culprit(kr: KeyResult, ops: list[Op], budget_s: float = 2.0) -> list[Op] | None:
    """An order of every other operation of the key, if one exists: it shows what the culprit contradicts."""
    hist = [o for o in relevant([o for o in ops if o.key == kr.key]) if o is not kr.culprit]
    out = search(rows_of(hist), time.monotonic() + budget_s, 200_000)
    return [hist[i] for i in out.prefix] if out.verdict == "valid" else None


def _held_before(order: list[Op], culprit: Op) -> tuple[str | None, int] | None:
    """The register's value in `order` after the last op that returned before `culprit` was invoked."""
    last = max((n for n, o in enumerate(order) if o.complete is not None and o.complete < culprit.invoke), default=-1)
    if last < 0:
        return None
    value: str | None = None
    for o in order[: last + 1]:
        if o.kind == "put" or (o.kind == "cas" and (o.succeeded or o.outcome != OK) and value == o.expect):
            value = o.value
    return value, last + 1


def page(kr: KeyResult, ops: list[Op]) -> str:
    shown = _window(kr, ops)
    order, what = kr.prefix, "the longest order found that explains the history"
    placed = {id(o) for o in order}
    if kr.culprit is not None and sum(id(o) in placed for o in shown) < len(shown) // 2:
        # the search gave up far from here (a value owed to the culprit blocked every write):
        # show instead how everything else can be ordered
        alt = _order_without_culprit(kr, ops)
        if alt is not None:
            order, what = alt, "an order that explains every operation except the red one"
    step = {id(o): n for n, o in enumerate(order, 1)}
    held = _held_before(order, kr.culprit) if kr.culprit is not None and order else None
    t_lo = min(o.invoke for o in shown)
    t_hi = max(max((o.complete for o in shown if o.complete is not None), default=t_lo), max(o.invoke for o in shown))
    span = (t_hi - t_lo) or 1.0
    right = t_hi + span * 0.08

    def x(t: float) -> float:
        return LEFT + (t - t_lo) / (right - t_lo) * (WIDTH - LEFT - 10)

    clients = sorted({o.client for o in shown})
    row = {c: i for i, c in enumerate(clients)}
    height = ROW_H * len(clients) + 50
    svg = [f'<svg xmlns="{SVG_NS}" width="{WIDTH}" height="{height}" font-family="monospace" font-size="11">']
    for c, i in row.items():
        svg.append(f'<text x="4" y="{i * ROW_H + 22}">client {c}</text>')
        svg.append(f'<line x1="{LEFT}" x2="{WIDTH}" y1="{i * ROW_H + 30}" y2="{i * ROW_H + 30}" stroke="#eee"/>')
    for o in shown:
        x0 = x(o.invoke)
        x1 = x(o.complete) if o.complete is not None else x(right)
        y = row[o.client] * ROW_H + 6
        if o is kr.culprit:
            fill, mark = "#e74c3c", "✗ "
        elif id(o) in step:
            fill, mark = "#58b368", f"{step[id(o)]}. "
        else:
            fill, mark = "#bbb", ""
        dash = ' stroke-dasharray="4 3"' if o.complete is None else ""
        tip = html.escape(o.describe() + (" — CANNOT BE PLACED" if o is kr.culprit else ""))
        svg.append(
            f'<g><title>{tip}</title><rect x="{x0:.1f}" y="{y}" width="{max(2.0, x1 - x0):.1f}" height="20" '
            f'rx="3" fill="{fill}" stroke="#333"{dash}/>'
            f'<text x="{x0 + 3:.1f}" y="{y + 14}">{html.escape(mark + _label(o))}</text></g>'
        )
    if kr.culprit is not None and kr.culprit.complete is not None:
        cx = x(kr.culprit.complete)
        svg.append(
            f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="0" y2="{height - 30}" stroke="#e74c3c" stroke-dasharray="2 2"/>'
        )
    svg.append(f'<text x="{LEFT}" y="{height - 10}">time {t_lo:.4f}s … {t_hi:.4f}s (run clock)</text></svg>')
    last = max((step[id(o)] for o in shown if id(o) in step), default=len(order))
    tail = order[max(0, last - 12) : last]
    listed = "".join(
        f"<li value='{last - len(tail) + n}'>{html.escape(o.describe())}</li>" for n, o in enumerate(tail, 1)
    )
    culprit = html.escape(kr.culprit.describe()) if kr.culprit else "?"
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>anomaly on key {html.escape(kr.key)}</title>"
        "<style>body{font-family:sans-serif;margin:1.5em}pre{background:#f6f6f6;padding:.6em}</style></head><body>"
        f"<h2>Key {html.escape(kr.key)} is not linearizable: {html.escape(kr.kind)}</h2>"
        f"<p><b>No order places:</b> <code>{culprit}</code> (red). Green bars are {what} "
        f"({len(order)} of {kr.ops} operations), numbered in that order; grey ones it does not place; "
        "dashed bars have an unknown outcome. The red dashed line is when the culprit returned: it had to take "
        "effect before it. Hover a bar for the full record.</p>"
        + (
            f"<p>In that order the register holds <code>{html.escape(repr(held[0]))}</code> once every operation "
            f"acknowledged before the red one began has taken effect (step {held[1]}).</p>"
            if held
            else ""
        )
        + "\n".join(svg)
        + f"<h3>That order, up to the last operation shown</h3><ol>{listed}</ol>"
        + f"<pre>{html.escape(kr.explain())}</pre></body></html>"
    )


def draw_anomaly(result: Result, ops: list[Op], folder: Path) -> list[Path]:
    """One HTML page per invalid key in `folder`; the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for kr in result.keys:
        if kr.verdict != INVALID:
            continue
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", kr.key)[:80] or "key"
        path = folder / f"anomaly-{safe}.html"
        path.write_text(page(kr, ops))
        paths.append(path)
    return paths
