"""Operation histories: what each client invoked, when, and how it ended.

One record per operation (invoke and completion folded together), saved as
JSON lines. Outcomes follow Jepsen: ``ok`` (it happened), ``fail`` (it
certainly did not happen: the server refused it before proposing), ``info``
(unknown: a timeout or lost connection; a write may still be applied later).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

OK, FAIL, INFO = "ok", "fail", "info"


@dataclass
class Op:
    id: int
    client: int
    kind: str  # put | get | cas
    key: str
    value: str | None = None  # put: value written; cas: new value; get: value read (None: absent)
    expect: str | None = None  # cas: expected value (None: the key must not exist)
    succeeded: bool | None = None  # cas with outcome ok: whether the compare matched
    outcome: str = INFO
    invoke: float = 0.0  # monotonic seconds since the run started
    complete: float | None = None  # None when the outcome is unknown
    node: str = ""
    revision: int = 0
    error: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

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
        else:
            what = f"cas({self.key}, {self.expect!r} → {self.value!r})"
            if self.outcome == OK:
                what += " succeeded" if self.succeeded else " did not match"
        return f"{t} client {self.client:<3} {what} {self.outcome} via {self.node or '?'}"


def save(ops: list[Op], path: Path) -> None:
    with open(path, "w") as f:
        for op in ops:
            f.write(op.to_json() + "\n")


def load(path: Path) -> list[Op]:
    ops = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                ops.append(Op.from_dict(json.loads(line)))
            except (ValueError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not a history record ({e})") from None
    return ops
