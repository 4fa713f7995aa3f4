"""py-spy profiles of a node under load, summarised as the top self and inclusive entries.

`record(pid, seconds, out)` runs `py-spy record --format raw` (collapsed stacks, one line per
stack with a sample count); `top(path)` folds them into (function, share of samples) lists, the
figure the closing notes quote. Standalone: `python -m bench.profile STACKS.txt [-n 25]`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path


def py_spy() -> str | None:
    """The py-spy binary beside this interpreter, else on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path, rate: int = 200, gil: bool = True) -> subprocess.Popen[bytes]:
    """Start py-spy on pid in the background (non-blocking sampling: the node is not paused).

    gil: sample only the thread holding the GIL. The event loop is what limits a node; without it the
    fsync worker threads (waiting in fdatasync, GIL released) took a third of the samples (round 2)."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed (pip install '.[bench]')")
    cmd = [exe, "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", str(rate)]
    cmd += ["-f", "raw", "-o", str(out), "--nonblocking", *(["--gil"] if gil else [])]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _frame_name(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"; line numbers split one function into many
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1].rstrip(")")
    return f"{name} ({file})" if file else name


def top(path: Path, n: int = 20) -> dict[str, list[tuple[str, float]]]:
    """Self and inclusive shares of samples per function, largest first."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        total += c
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        self_c[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
    if not total:
        return {"self": [], "inclusive": [], "samples": []}

    def share(cnt: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100.0 * v / total, 1)) for k, v in cnt.most_common(n)]

    return {"self": share(self_c), "inclusive": share(incl), "samples": [("total", float(total))]}


def render(t: dict[str, list[tuple[str, float]]]) -> str:
    out = []
    for kind in ("self", "inclusive"):
        out.append(f"top {kind} (% of samples):")
        out += [f"  {pct:5.1f}  {name}" for name, pct in t[kind]]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stacks", type=Path)
    ap.add_argument("-n", type=int, default=25)
    a = ap.parse_args()
    try:
        text = render(top(a.stacks, a.n))
    except OSError as e:
        raise SystemExit(f"bench.profile: {a.stacks}: {e.strerror or e}") from None
    print(text)


if __name__ == "__main__":
    main()
