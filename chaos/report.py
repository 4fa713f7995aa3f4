"""The picture in every experiment report: throughput and latency over time, fault windows shaded."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt

if TYPE_CHECKING:
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
        colors = {"put": "tab:blue", "get": "tab:green", "cas": "tab:purple"}
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
