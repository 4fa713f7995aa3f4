"""Operation histories: what each client invoked, when, and how it ended.

One record per operation (invoke and completion folded together), saved as
JSON lines. Outcomes follow Jepsen: ``ok`` (it happened), ``fail`` (it
certainly did not happen: the server refused it before proposing), ``info``
(unknown: a timeout or lost connection; a write may still be applied later).

Two workload kinds share the format: ``register`` (put / get / cas on single
keys) and ``append`` (``txn`` operations whose micro-ops read or append to
list-valued keys). The same file may also hold watch records
(``{"watch": {...}}``, every event a watch stream delivered) and one final-read
record (``{"final": {...}}``, every key's value and mod_revision after the
run), so one file is enough to re-check a run. Files written before those
existed still load: the new fields all have defaults.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

OK, FAIL, INFO = "ok", "fail", "info"
REGISTER, APPEND = "register", "append"

# a micro-op of a txn: ["r", key, [values] or None (not known)] or ["append", key, value]
MicroOp = list[Any]


@dataclass
class Op:
    id: int
    client: int
    kind: str  # put | get | cas | txn
    key: str
    value: str | None = None  # put: value written; cas: new value; get: value read (None: absent)
    expect: str | None = None  # cas: expected value (None: the key must not exist)
    succeeded: bool | None = None  # cas with outcome ok: whether the compare matched
    outcome: str = INFO
    invoke: float = 0.0  # monotonic seconds since the run started
    complete: float | None = None  # None when the outcome is unknown
    node: str = ""
    revision: int = 0  # a write's revision (txn: the revision its puts got), a read's header revision
    error: str = ""
    mops: list[MicroOp] | None = None  # txn only

    def to_json(self) -> str:
        d = asdict(self)
        if d["mops"] is None:
            del d["mops"]  # register histories stay byte-for-byte what they were
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Op:
        return cls(**d)

    def describe(self) -> str:
        t = (
            f"[{self.invoke:8.3f} → {self.complete:8.3f}]"
            if self.complete is not None
            else f"[{self.invoke:8.3f} → ?       ]"
        )
        if self.kind == "put":
            what = f"put({self.key}, {self.value!r})"
        elif self.kind == "get":
            what = f"get({self.key}) = {self.value!r}" if self.outcome == OK else f"get({self.key})"
        elif self.kind == "txn":
            what = "txn " + " ".join(_mop_text(m, self.outcome == OK) for m in self.mops or [])
        else:
            what = f"cas({self.key}, {self.expect!r} → {self.value!r})"
            if self.outcome == OK:
                what += " succeeded" if self.succeeded else " did not match"
        return f"{t} client {self.client:<3} {what} {self.outcome} via {self.node or '?'}"


def _mop_text(m: MicroOp, known: bool) -> str:
    f, k, v = m
    if f == "append":
        return f"append({k}, {v})"
    if not known or v is None:
        return f"r({k})"
    if len(v) > 6:  # long lists: their length and how they end is what an explanation needs
        return f"r({k})=[…{len(v) - 3} more…, {', '.join(map(str, v[-3:]))}]"
    return f"r({k})={v}"


def parse_list(text: str) -> list[int]:
    """An append key's value: its elements comma-joined ("" is the empty list)."""
    return [int(x) for x in text.split(",")] if text else []


@dataclass
class WatchRecord:
    """One thing a watch stream saw: a (re)start from a revision, an event, or the error that ended it."""

    stream: int
    what: str  # start | event | error | compacted (its start revision was; revision = the compact revision)
    t: float = 0.0
    node: str = ""
    start_revision: int = 0  # start: the revision asked for
    batch: int = 0  # event: which response (of this stream) carried it
    key: str = ""
    type: str = ""  # put | delete
    value: str | None = None
    revision: int = 0  # event: the kv's mod_revision
    prev_value: str | None = None  # event: prev_kv's value (None: no prev_kv)
    error: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WatchRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class FinalRead:
    """Every key after the run healed: key -> (value, mod_revision), read at `revision`."""

    revision: int
    kvs: dict[str, tuple[str, int]] = field(default_factory=dict)
    compact_revision: int = 0  # the cluster's, probed with the final read (watches: older values may be gone)


@dataclass
class Recorded:
    ops: list[Op]
    watch: list[WatchRecord] = field(default_factory=list)
    final: FinalRead | None = None

    @property
    def kind(self) -> str:
        return APPEND if any(o.kind == "txn" for o in self.ops) else REGISTER


def save(ops: list[Op], path: Path, watch: list[WatchRecord] | None = None, final: FinalRead | None = None) -> None:
    with open(path, "w") as f:
        for op in ops:
            f.write(op.to_json() + "\n")
        for w in watch or []:
            f.write(json.dumps({"watch": asdict(w)}, separators=(",", ":")) + "\n")
        if final is not None:
            fin = {"revision": final.revision, "kvs": final.kvs, "compact_revision": final.compact_revision}
            f.write(json.dumps({"final": fin}) + "\n")


def load_all(path: Path) -> Recorded:
    """Operations, watch records and the final read of a history file (any workload kind)."""
    rec = Recorded([])
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                d = json.loads(line)
                if not isinstance(d, dict):
                    raise TypeError("not a JSON object")
                if "watch" in d:
                    rec.watch.append(WatchRecord.from_dict(d["watch"]))
                elif "final" in d:
                    fin = d["final"]
                    kvs = {str(k): (str(v[0]), int(v[1])) for k, v in fin["kvs"].items()}
                    rec.final = FinalRead(int(fin["revision"]), kvs, int(fin.get("compact_revision", 0)))
                else:
                    rec.ops.append(Op.from_dict(d))
            except (ValueError, TypeError, KeyError, IndexError) as e:
                raise ValueError(f"{path}:{n}: not a history record ({e})") from None
    return rec


def load(path: Path) -> list[Op]:
    return load_all(path).ops
