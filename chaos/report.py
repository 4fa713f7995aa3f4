"""The pictures in an experiment report: throughput and latency over time with fault windows shaded,
and for an invalid transaction history each anomaly's transactions and the cycle of their edges."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt

if TYPE_CHECKING:
    from .elle import Anomaly
    from .workload import Workload


def fault_windows(events: list[dict[str, Any]], size: int, end: float) -> list[tuple[float, float, str]]:
    """(start, end, label) for each fault, closed by its undo or by the next heal."""
    open_: list[tuple[float, str, str]] = []  # (start, label, id)
    out = []
    for ev in events:
        if ev.get("size") != size:
            continue
        if ev["kind"] == "fault":
            open_.append((ev["t"], ev["what"], ev["data"].get("id", "")))
        elif ev["kind"] == "heal":
            fid = ev["data"].get("id")
            verb = ev["data"].get("verb")
            keep = []
            for start, label, oid in open_:
                closes = (
                    (fid and oid == fid)
                    or (not fid and not verb)
                    or (verb in ("start", "restart", "resume") and any(n in label for n in ev["data"].get("nodes", [])))
                )
                if closes:
                    out.append((start, ev["t"], label))
                else:
                    keep.append((start, label, oid))
            open_ = keep
    out += [(start, end, label) for start, label, _ in open_]
    return out


def plot(path: Path, histories: list[tuple[int, Workload, Any]], events: list[dict[str, Any]], title: str) -> None:
    if not histories:
        return
    fig, axes = plt.subplots(2 * len(histories), 1, figsize=(11, 4.2 * len(histories)), sharex=True, squeeze=False)
    for k, (size, wl, _) in enumerate(histories):
        ax_t, ax_l = axes[2 * k][0], axes[2 * k + 1][0]
        samples = wl.samples
        end = max((s.t + s.latency for s in samples), default=1.0)
        bin_s = 0.25
        bins = int(end / bin_s) + 1
        ok_counts = [0] * bins
        bad_counts = [0] * bins
        for s in samples:
            b = min(bins - 1, int((s.t + s.latency) / bin_s))
            (ok_counts if s.ok else bad_counts)[b] += 1
        xs = [i * bin_s for i in range(bins)]
        ax_t.plot(xs, [c / bin_s for c in ok_counts], color="tab:blue", lw=1.2, label="acknowledged ops/s")
        ax_t.plot(xs, [c / bin_s for c in bad_counts], color="tab:red", lw=1.0, label="failed or unknown ops/s")
        ax_t.set_ylabel("ops/s")
        ax_t.set_title(f"{title} — {size} nodes")
        ax_t.legend(loc="upper right", fontsize=8)
        colors = {"put": "tab:blue", "get": "tab:green", "cas": "tab:purple", "txn": "tab:cyan"}
        for kind, color in colors.items():
            pts = [(s.t, s.latency * 1000) for s in samples if s.kind == kind and s.ok]
            if pts:
                ax_l.scatter([p[0] for p in pts], [p[1] for p in pts], s=3, color=color, label=f"{kind} ok")
        bad = [(s.t, s.latency * 1000) for s in samples if not s.ok]
        if bad:
            ax_l.scatter(
                [p[0] for p in bad], [p[1] for p in bad], s=6, color="tab:red", marker="x", label="fail/unknown"
            )
        ax_l.set_yscale("log")
        ax_l.set_ylabel("latency (ms)")
        ax_l.set_xlabel("seconds since start")
        ax_l.legend(loc="upper right", fontsize=8, markerscale=3)
        for start, stop, label in fault_windows(events, size, end):
            for ax in (ax_t, ax_l):
                ax.axvspan(start, stop, color="orange", alpha=0.18)
            ax_t.text(start, ax_t.get_ylim()[1] * 0.92, label[:40], fontsize=7, va="top")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_cycles(anomalies: list[Anomaly], folder: Path, limit: int = 5) -> list[Path]:
    """One HTML page per transaction anomaly (up to `limit`): the transactions, and for a cycle its
    edges drawn as an SVG ring, so the reader sees which dependency closes the loop."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    shown = sorted(anomalies, key=lambda a: not a.is_cycle)[:limit]  # cycles first: they need the picture
    for n, a in enumerate(shown):
        path = folder / f"anomaly-{n + 1}-{re.sub(r'[^A-Za-z0-9._-]+', '_', a.name)}.html"
        path.write_text(_cycle_page(a))
        paths.append(path)
    return paths


_EDGE_COLORS = {"ww": "#1f77b4", "wr": "#2ca02c", "rw": "#d62728", "rt": "#9467bd"}


def _cycle_page(a: Anomaly) -> str:
    esc = html.escape
    parts = [
        f"<html><head><meta charset='utf-8'><title>{esc(a.name)}</title></head>"
        f"<body style='font-family:sans-serif'><h2>{esc(a.name)}</h2><p>{esc(a.text)}</p>"
    ]
    if a.edges:
        ids = [e[0] for e in a.edges]
        ops = {op.id: op for op in a.ops}
        k = len(ids)
        r, cx, cy, w, h = 190.0, 420.0, 260.0, 250.0, 44.0
        pos = {
            t: (
                cx + r * 1.6 * math.cos(2 * math.pi * i / k - math.pi / 2),
                cy + r * math.sin(2 * math.pi * i / k - math.pi / 2),
            )
            for i, t in enumerate(ids)
        }
        svg = [
            "<svg width='840' height='540' xmlns='http://www.w3.org/2000/svg'>",
            "<defs><marker id='arr' viewBox='0 0 10 10' refX='10' refY='5' markerWidth='8' markerHeight='8' "
            "orient='auto-start-reverse'><path d='M 0 0 L 10 5 L 0 10 z' fill='#444'/></marker></defs>",
        ]
        for src, dst, kind in a.edges:
            (x1, y1), (x2, y2) = pos[src], pos[dst]
            dx, dy = x2 - x1, y2 - y1
            d = math.hypot(dx, dy) or 1.0
            # stop at the boxes' edges
            sx, sy = x1 + dx / d * h, y1 + dy / d * h
            ex, ey = x2 - dx / d * h, y2 - dy / d * h
            color = _EDGE_COLORS.get(kind.split("+")[0], "#444")
            svg.append(
                f"<line x1='{sx:.0f}' y1='{sy:.0f}' x2='{ex:.0f}' y2='{ey:.0f}' stroke='{color}' stroke-width='2.5' "
                "marker-end='url(#arr)'/>"
                f"<text x='{(sx + ex) / 2:.0f}' y='{(sy + ey) / 2 - 6:.0f}' fill='{color}' font-size='15' "
                f"font-weight='bold'>{esc(kind)}</text>"
            )
        for t, (x, y) in pos.items():
            op = ops.get(t)
            label = f"T{t}" if t >= 0 else "final read"
            detail = op.describe() if op is not None else ""
            svg.append(
                f"<g><title>{esc(detail)}</title><rect x='{x - w / 2:.0f}' y='{y - h / 2:.0f}' width='{w:.0f}' "
                f"height='{h:.0f}' rx='6' fill='#f4f4f4' stroke='#333'/>"
                f"<text x='{x:.0f}' y='{y + 5:.0f}' text-anchor='middle' font-size='14'>{esc(label)} "
                f"client {op.client if op else '?'}</text></g>"
            )
        svg.append("</svg>")
        parts += svg
        parts.append(
            "<p>ww: wrote the next version · wr: the second read what the first wrote · rw: the first read a "
            "version the second overwrote · rt: the first completed before the second began</p>"
        )
    parts.append("<h3>Transactions</h3><pre>" + esc("\n".join(op.describe() for op in a.ops)) + "</pre>")
    parts.append("<pre>" + esc(a.explain()) + "</pre></body></html>")
    return "\n".join(parts)
