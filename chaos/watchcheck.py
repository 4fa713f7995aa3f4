"""Watch streams against the history: what etcd promises a watcher, checked stream by stream.

The reference is every change known to have been committed, as (revision, key) -> value: the
acknowledged writes of the history (a txn's or put's revision), every event any stream delivered,
and the final read's (mod_revision, key, value). Then for each stream, in delivery order:

* ``reordered``: an event's revision is below one already delivered;
* ``duplicate``: the same (revision, key) delivered twice;
* ``split revision``: the events of one revision came in different responses (not atomic);
* ``gap``: a committed change to a watched key with a revision between the stream's start and the
  last revision it delivered never came;
* ``bad resume``: a restart did not ask for last seen + 1, or what came first after it repeated
  or skipped changes (a duplicate or gap at the restart);
* ``wrong prev_kv``: an event's previous value is not the key's value at its previous revision
  (a missing one is excused when that revision is at or below a compact revision seen: the final
  read's probe, or a stream told its start was compacted);
* ``divergent``: two sources give one (revision, key) different values.

Only changes to the watched keys count (the workload's prefix), and a stream is held only to the
range it covered, so a stream cut off by a partition is not blamed for what came later, nor one
told its start was compacted (it resumes at the compact revision) for what compaction took.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from typing import Any

from .history import OK, FinalRead, Op, WatchRecord

VALID, INVALID = "valid", "invalid"


@dataclass
class Violation:
    name: str
    stream: int
    text: str
    records: list[WatchRecord] = field(default_factory=list)

    def explain(self) -> str:
        lines = [f"{self.name} (stream {self.stream}): {self.text}"]
        for r in self.records[:4]:
            lines.append(
                f"    t={r.t:8.3f} {r.what} {r.key} rev {r.revision} value {r.value!r} prev {r.prev_value!r}"
                if r.what == "event"
                else f"    t={r.t:8.3f} {r.what} from revision {r.start_revision} {r.error}"
            )
        return "\n".join(lines)


@dataclass
class WatchResult:
    verdict: str
    streams: int
    events: int
    seconds: float
    violations: list[Violation] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for v in self.violations:
            out[v.name] = out.get(v.name, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "checker": "watch",
            "verdict": self.verdict,
            "streams": self.streams,
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "violations": self.counts(),
            "explanations": [v.explain() for v in self.violations[:20]],
        }

    def summary(self) -> str:
        lines = [
            f"watch {self.verdict.upper()}: {self.events} events on {self.streams} streams "
            f"checked in {self.seconds:.2f}s"
        ]
        if self.violations:
            lines.append("  violations: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.counts().items())))
            lines += ["  " + v.explain().replace("\n", "\n  ") for v in self.violations[:10]]
        return "\n".join(lines)


_SOME = object()  # a change known to exist whose value is not known (an acknowledged append)


def reference(
    watch: list[WatchRecord], ops: list[Op], final: FinalRead | None, prefix: str
) -> tuple[dict[tuple[int, str], Any], list[Violation]]:
    ref: dict[tuple[int, str], Any] = {}
    bad: list[Violation] = []

    def add(rev: int, key: str, value: Any, stream: int, rec: WatchRecord | None) -> None:
        if not key.startswith(prefix) or rev <= 0:
            return
        old = ref.get((rev, key), _SOME)
        if old is not _SOME and value is not _SOME and old != value:
            text = f"revision {rev} of {key} is {old!r} in one source and {value!r} in another"
            bad.append(Violation("divergent", stream, text, [rec] if rec else []))
        if value is not _SOME or (rev, key) not in ref:
            ref[(rev, key)] = value

    for o in ops:
        if o.outcome != OK or not o.revision:
            continue
        if o.kind == "txn":
            for k in {m[1] for m in o.mops or [] if m[0] == "append"}:
                add(o.revision, k, _SOME, -1, None)
        elif o.kind == "put":
            add(o.revision, o.key, o.value, -1, None)
    for r in watch:
        if r.what == "event":
            add(r.revision, r.key, r.value, r.stream, r)
    if final is not None:
        for k, (v, rev) in final.kvs.items():
            add(rev, k, v, -1, None)
    return ref, bad


def check_watches(
    watch: list[WatchRecord], ops: list[Op], final: FinalRead | None = None, prefix: str = ""
) -> WatchResult:
    t0 = time.monotonic()
    ref, violations = reference(watch, ops, final, prefix)
    per_key: dict[str, list[int]] = {}
    for rev, key in sorted(ref):
        per_key.setdefault(key, []).append(rev)
    by_rev = sorted(ref)
    streams: dict[int, list[WatchRecord]] = {}
    for r in watch:
        streams.setdefault(r.stream, []).append(r)
    compacted = max([final.compact_revision if final else 0, *(r.revision for r in watch if r.what == "compacted")])
    for sid, recs in streams.items():
        violations += _stream(sid, recs, ref, per_key, by_rev, compacted)
    events = sum(1 for r in watch if r.what == "event")
    verdict = INVALID if violations else VALID
    return WatchResult(verdict, len(streams), events, time.monotonic() - t0, violations)


def _stream(
    sid: int,
    recs: list[WatchRecord],
    ref: dict[tuple[int, str], Any],
    per_key: dict[str, list[int]],
    by_rev: list[tuple[int, str]],
    compacted: int,
) -> list[Violation]:
    out: list[Violation] = []
    seen: set[tuple[int, str]] = set()
    batch_of: dict[int, tuple[int, int]] = {}  # revision -> (segment, batch) that carried it
    last = 0
    lo = 0
    segment = -1
    restarts: list[tuple[int, int]] = []  # (asked from, first revision delivered after) per restart
    holes: list[tuple[int, int]] = []  # revisions compacted before the stream could get them
    lost_to = 0  # the compact revision the last attempt was told of
    after_restart = False
    for r in recs:
        if r.what == "compacted":
            lost_to = r.revision
            continue
        if r.what == "start":
            segment += 1
            if segment == 0:
                lo = r.start_revision
            else:
                want = last + 1 if last else lo
                if lost_to > want:  # its next revision is gone: resuming at the compact revision is right
                    holes.append((want, lost_to - 1))
                    want, lost_to = lost_to, 0
                if r.start_revision != want:
                    text = f"restarted from revision {r.start_revision}, not last seen + 1 = {want}"
                    out.append(Violation("bad resume", sid, text, [r]))
                restarts.append((r.start_revision, 0))
                after_restart = True
            continue
        if r.what != "event":
            continue
        name = "bad resume" if after_restart else ""
        rk = (r.revision, r.key)
        if rk in seen:
            out.append(Violation(name or "duplicate", sid, f"{r.key} at revision {r.revision} delivered again", [r]))
        elif r.revision < last:
            text = f"{r.key} at revision {r.revision} delivered after revision {last}"
            out.append(Violation(name or "reordered", sid, text, [r]))
        if r.revision < lo:
            out.append(Violation("bad resume", sid, f"revision {r.revision} is before the start {lo}", [r]))
        carried = batch_of.setdefault(r.revision, (segment, r.batch))
        if carried != (segment, r.batch) and rk not in seen:
            text = f"revision {r.revision} came in more than one response ({r.key} separately)"
            out.append(Violation("split revision", sid, text, [r]))
        seen.add(rk)
        if after_restart and restarts:
            restarts[-1] = (restarts[-1][0], r.revision)
            after_restart = False
        last = max(last, r.revision)
        # prev_kv: the key's value at its previous committed revision, when that value is known
        revs = per_key.get(r.key, [])
        i = bisect.bisect_left(revs, r.revision)
        if i > 0:
            prev = ref[(revs[i - 1], r.key)]
            gone = r.prev_value is None and revs[i - 1] <= compacted  # it may have been compacted away
            if prev is not _SOME and r.prev_value != prev and not gone:
                text = f"{r.key} at revision {r.revision}: prev_kv {r.prev_value!r}, but it was {prev!r}"
                out.append(Violation("wrong prev_kv", sid, text, [r]))
        elif r.prev_value is not None and lo <= 1 and not compacted:  # else older revisions may be gone
            out.append(Violation("wrong prev_kv", sid, f"{r.key} was created at {r.revision} yet has a prev_kv", [r]))
    if last:
        a = bisect.bisect_left(by_rev, (lo, ""))
        b = bisect.bisect_right(by_rev, (last, "\U0010ffff"))
        for rk in by_rev[a:b]:
            if rk in seen or any(a <= rk[0] <= b for a, b in holes):
                continue
            at_restart = any(s <= rk[0] <= first for s, first in restarts)
            text = f"{rk[1]} changed at revision {rk[0]} (stream covered {lo}..{last}) and was never delivered"
            out.append(Violation("bad resume" if at_restart else "gap", sid, text))
    return out
