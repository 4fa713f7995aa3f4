"""Strict serializability of an append (list) history, checked the way Jepsen's Elle does: by cycles.

Every key is a list that transactions append unique values to, so one read of a key shows the
whole order of the writes before it. From the reads:

* version order per key: the longest read; every other read must be a prefix of it (a read that
  is not is itself an anomaly: ``incompatible-order``);
* dependency edges between committed transactions: ``ww`` (T1 appended the element just before
  T2's), ``wr`` (T2 read a list ending in T1's element), ``rw`` (T1 read a list that T2's
  element extends: T1 must come before T2); plus ``rt`` (T1 completed before T2 was invoked);
* a cycle is a transaction that must come before itself. Cycles are found by Tarjan's SCCs, then
  the shortest cycle per component, and named by the weakest edges that form one: ``G0`` (ww
  only), ``G1c`` (ww+wr), ``G-single`` (exactly one rw), ``G2`` (several rw); one that needs an
  ``rt`` edge is ``<name>-realtime`` (a stale read: serializable, but not in real-time order).
* checked directly: ``G1a`` (aborted read: an element of a failed transaction was read), ``G1b``
  (intermediate read: a list ending in a transaction's non-final append to that key),
  ``lost-update`` (two committed transactions read the same version of a key and both appended
  to it), ``duplicate-elements``, ``garbage-read`` (an element nobody appended to that key),
  ``internal`` (a read that does not end with the transaction's own earlier appends) and, with
  the final read, ``lost-write`` (an acknowledged append missing from the final list).

Unknown-outcome (``info``) transactions may or may not have happened: one whose append was read
took effect and joins the graph (its own reads tell nothing); one never observed is left out,
which is always consistent. Everything is polynomial: edges are linear in the reads, real-time
edges come from a frontier of recent completions (linear in operations x concurrency).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .history import FAIL, INFO, OK, FinalRead, Op, parse_list

VALID, INVALID, UNKNOWN = "valid", "invalid", "unknown"
WW, WR, RW, RT = 1, 2, 4, 8
EDGE_NAMES = {WW: "ww", WR: "wr", RW: "rw", RT: "rt"}
FINAL_ID = -1  # the synthetic transaction that is the final read


@dataclass
class Anomaly:
    name: str  # G0 | G1a | G1b | G1c | G-single | G2 | <cycle>-realtime | lost-update | ...
    text: str
    ops: list[Op] = field(default_factory=list)
    edges: list[tuple[int, int, str]] = field(default_factory=list)  # a cycle: (from id, to id, ww|wr|rw|rt)

    @property
    def is_cycle(self) -> bool:
        return bool(self.edges)

    def explain(self) -> str:
        lines = [f"{self.name}: {self.text}"]
        lines += [f"    {op.describe()}" for op in self.ops[:8]]
        if self.edges:
            lines.append("    cycle: " + " ".join(f"T{a} -{k}-> T{b}" for a, b, k in self.edges))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "text": self.text,
            "ops": [op.id for op in self.ops],
            "edges": self.edges,
            "explanation": self.explain(),
        }


@dataclass
class TxnResult:
    verdict: str
    ops: int
    txns: int
    seconds: float
    anomalies: list[Anomaly] = field(default_factory=list)
    edges: int = 0
    note: str = ""

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.anomalies:
            out[a.name] = out.get(a.name, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "checker": "elle",
            "verdict": self.verdict,
            "operations": self.ops,
            "transactions": self.txns,
            "edges": self.edges,
            "seconds": round(self.seconds, 3),
            "anomalies": self.counts(),
            "explanations": [a.explain() for a in self.anomalies[:20]],
            "note": self.note,
        }

    def summary(self) -> str:
        head = (
            f"{self.verdict.upper()}: {self.txns} transactions ({self.ops} operations), {self.edges} dependency "
            f"edges, checked for strict serializability in {self.seconds:.2f}s"
        )
        parts = [head]
        if self.note:
            parts.append(f"  {self.note}")
        if self.anomalies:
            parts.append("  anomalies: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.counts().items())))
            parts += ["  " + a.explain().replace("\n", "\n  ") for a in self.anomalies[:10]]
        return "\n".join(parts)


class _Budget(Exception):
    pass


def _final_txn(final: FinalRead, keys: set[str], t: float) -> Op:
    mops: list[list[Any]] = [["r", k, parse_list(final.kvs[k][0]) if k in final.kvs else []] for k in sorted(keys)]
    return Op(FINAL_ID, -1, "txn", "", outcome=OK, invoke=t, complete=t, node="final read", mops=mops)


def check_append(ops: list[Op], final: FinalRead | None = None, budget_s: float = 60.0) -> TxnResult:
    t_start = time.monotonic()
    deadline = t_start + budget_s
    txns_all = [o for o in ops if o.kind == "txn"]
    try:
        anomalies, n_txns, n_edges = _check(txns_all, final, deadline)
        verdict = INVALID if anomalies else VALID
        note = ""
    except _Budget:
        anomalies, n_txns, n_edges = [], len(txns_all), 0
        verdict, note = UNKNOWN, f"the {budget_s:g}s budget ran out before the graph was checked"
    return TxnResult(verdict, len(ops), n_txns, time.monotonic() - t_start, anomalies, n_edges, note)


def _check(txns_all: list[Op], final: FinalRead | None, deadline: float) -> tuple[list[Anomaly], int, int]:
    anomalies: list[Anomaly] = []
    failed_values: dict[int, Op] = {}
    appended: dict[int, tuple[Op, str]] = {}  # value -> (writer, key)
    last_append: dict[tuple[int, str], int] = {}  # (op id, key) -> its last appended value
    keys: set[str] = set()
    for o in txns_all:
        for f, k, v in o.mops or []:
            keys.add(k)
            if f == "append":
                if o.outcome == FAIL:
                    failed_values[v] = o
                else:
                    appended[v] = (o, k)
                    last_append[(o.id, k)] = v
    live = [o for o in txns_all if o.outcome != FAIL]
    if final is not None:
        end = max((o.complete or o.invoke for o in txns_all), default=0.0) + 1.0
        live.append(_final_txn(final, keys, end))

    # external reads (minus the transaction's own earlier appends), per key
    reads: dict[str, list[tuple[Op, list[int]]]] = {k: [] for k in keys}
    read_before_append: dict[tuple[str, int], list[Op]] = {}
    for o in live:
        if o.outcome != OK:
            continue  # an unknown transaction's reads were not recorded
        own: dict[str, list[int]] = {}
        for f, k, v in o.mops or []:
            if f == "append":
                own.setdefault(k, []).append(v)
                continue
            if v is None:
                continue
            mine = own.get(k, [])
            if mine and v[len(v) - len(mine) :] != mine:
                anomalies.append(Anomaly("internal", f"read {k} = {v} misses its own appends {mine}", [o]))
                continue
            ext = v[: len(v) - len(mine)]
            if k not in own:
                reads[k].append((o, ext))
    for o in live:
        if o.outcome != OK:
            continue
        seen: dict[str, int] = {}
        wrote: set[str] = set()
        for f, k, v in o.mops or []:
            if f == "r" and v is not None and k not in seen and k not in wrote:
                seen[k] = len(v)
            elif f == "append" and k not in wrote:
                wrote.add(k)
                if k in seen:  # read k, then appended to it: one entry per transaction and key
                    read_before_append.setdefault((k, seen[k]), []).append(o)
    for (k, n), group in read_before_append.items():
        if len(group) > 1:
            anomalies.append(
                Anomaly(
                    "lost-update", f"{len(group)} transactions read {k} at length {n} and all appended to it", group
                )
            )

    # version orders
    order: dict[str, list[int]] = {}
    for k in sorted(keys):
        rs = reads[k]
        longest = max((r for _, r in rs), key=len, default=[])
        bad_key = False
        for o, r in rs:
            if len(set(r)) != len(r):
                anomalies.append(Anomaly("duplicate-elements", f"read {k} = {r} holds an element twice", [o]))
                bad_key = True
            elif longest[: len(r)] != r:
                who = next(w for w, x in rs if x == longest)
                text = f"reads of {k} disagree on the order: {r} is not a prefix of {longest}"
                anomalies.append(Anomaly("incompatible-order", text, [o, who]))
                bad_key = True
        if time.monotonic() > deadline:
            raise _Budget
        if bad_key:
            continue
        order[k] = longest
        for i, v in enumerate(longest):
            if v in failed_values:
                text = f"read {k} holds {v}, appended by a failed transaction"
                anomalies.append(Anomaly("G1a", text, [failed_values[v], *_readers(rs, i)]))
            elif v not in appended or appended[v][1] != k:
                text = f"read {k} holds {v}, which no transaction appended to {k}"
                anomalies.append(Anomaly("garbage-read", text, _readers(rs, i)))
        for o, r in rs:
            if r and r[-1] in appended:
                w = appended[r[-1]][0]
                if w is not o and last_append.get((w.id, k)) != r[-1]:
                    anomalies.append(Anomaly("G1b", f"read {k} = {r} ends in an intermediate append of {w.id}", [w, o]))

    # who took effect: acknowledged, or unknown but observed
    observed = {v for lst in order.values() for v in lst}
    nodes: list[Op] = []
    for o in live:
        if o.outcome == INFO and not any(f == "append" and v in observed for f, _, v in o.mops or []):
            continue
        nodes.append(o)
    index = {o.id: i for i, o in enumerate(nodes)}
    adj: list[dict[int, int]] = [{} for _ in nodes]

    def edge(a: Op, b: Op, kind: int) -> None:
        if a is b:
            return
        ia, ib = index.get(a.id), index.get(b.id)
        if ia is None or ib is None:
            return
        adj[ia][ib] = adj[ia].get(ib, 0) | kind

    unread_by_key: dict[str, list[Op]] = {}
    for o in nodes:
        if o.outcome == OK:
            for k in {kk for f, kk, v in o.mops or [] if f == "append" and v not in observed and kk in order}:
                unread_by_key.setdefault(k, []).append(o)
    for k, lst in order.items():
        writers = [appended[v][0] for v in lst if v in appended]
        for a, b in itertools.pairwise(writers):
            edge(a, b, WW)
        unread = [o for o in unread_by_key.get(k, []) if o.id in index]
        if final is not None:
            for o in unread:
                vals = [v for f, kk, v in o.mops or [] if f == "append" and kk == k and v not in observed]
                text = f"acknowledged append of {vals} to {k} is not in the final read"
                anomalies.append(Anomaly("lost-write", text, [o]))
            unread = []
        for o in unread:  # after everything read, in some order
            if writers:
                edge(writers[-1], o, WW)
        for o, r in reads[k]:
            if r and r[-1] in appended:
                edge(appended[r[-1]][0], o, WR)
            if len(r) < len(lst):
                nxt = lst[len(r)]
                if nxt in appended:
                    edge(o, appended[nxt][0], RW)
            else:
                for u in unread:
                    edge(o, u, RW)
    _realtime(nodes, edge)
    if time.monotonic() > deadline:
        raise _Budget
    n_edges = sum(len(a) for a in adj)
    for comp in _sccs(adj):
        if time.monotonic() > deadline:
            raise _Budget
        cyc = _classify(comp, adj)
        if cyc is not None:
            name, path = cyc
            edges = [(nodes[a].id, nodes[b].id, _edge_name(adj[a][b])) for a, b in itertools.pairwise(path)]
            text = f"{len(path) - 1} transactions that must each come before the next, and the last before the first"
            anomalies.append(Anomaly(name, text, [nodes[i] for i in path[:-1]], edges))
    return anomalies, len(nodes), n_edges


def _readers(rs: list[tuple[Op, list[int]]], i: int) -> list[Op]:
    """The first transaction whose read reaches position i (one is enough to show it)."""
    return [o for o, r in rs if len(r) > i][:1]


def _edge_name(kinds: int) -> str:
    return "+".join(name for k, name in EDGE_NAMES.items() if kinds & k)


def _realtime(nodes: list[Op], edge: Any) -> None:
    """T1 -rt-> T2 when T1 completed before T2 was invoked, transitively reduced through a frontier."""
    events: list[tuple[float, int, int]] = []  # (time, 0 invoke | 1 complete, node): at a tie, no order
    for i, o in enumerate(nodes):
        events.append((o.invoke, 0, i))
        if o.outcome == OK and o.complete is not None:
            events.append((o.complete, 1, i))
    events.sort()
    frontier: set[int] = set()
    preds: dict[int, frozenset[int]] = {}
    for _, what, i in events:
        if what == 0:  # invoked: everything on the frontier completed strictly earlier
            preds[i] = frozenset(frontier)
            for p in frontier:
                edge(nodes[p], nodes[i], RT)
        else:
            frontier -= preds.get(i, frozenset())
            frontier.add(i)


def _sccs(adj: list[dict[int, int]], mask: int = WW | WR | RW | RT, within: set[int] | None = None) -> list[list[int]]:
    """Tarjan's strongly connected components (iterative), those with more than one node."""
    n = len(adj)
    idx = [-1] * n
    low = [0] * n
    on = [False] * n
    stack: list[int] = []
    out: list[list[int]] = []
    counter = 0
    roots = range(n) if within is None else sorted(within)
    for root in roots:
        if idx[root] != -1:
            continue
        work = [(root, iter(adj[root].items()))]
        idx[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on[root] = True
        while work:
            v, it = work[-1]
            advanced = False
            for w, k in it:
                if not k & mask or (within is not None and w not in within):
                    continue
                if idx[w] == -1:
                    idx[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on[w] = True
                    work.append((w, iter(adj[w].items())))
                    advanced = True
                    break
                if on[w]:
                    low[v] = min(low[v], idx[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == idx[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on[w] = False
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(comp)
    return out


def _bfs(adj: list[dict[int, int]], src: int, dst: int, mask: int, within: set[int]) -> list[int] | None:
    """Shortest path src -> dst over edges with a kind in mask, inside `within`."""
    prev = {src: src}
    q = deque([src])
    while q:
        v = q.popleft()
        for w, k in adj[v].items():
            if not k & mask or w not in within:
                continue
            if w == dst:
                path = [w, v]
                while v != src:
                    v = prev[v]
                    path.append(v)
                return path[::-1]
            if w not in prev:
                prev[w] = v
                q.append(w)
    return None


def _cycle(adj: list[dict[int, int]], comp: list[int], mask: int) -> list[int] | None:
    within = set(comp)
    for sub in _sccs(adj, mask, within):
        s = min(sub)
        return _bfs(adj, s, s, mask, set(sub))
    return None


def _single(adj: list[dict[int, int]], comp: list[int], other: int, tries: int = 2000) -> list[int] | None:
    """A cycle with exactly one rw edge: an rw edge a -> b, then back b -> a over `other` edges only."""
    within = set(comp)
    for a in comp:
        for b, k in adj[a].items():
            if k & RW and b in within:
                back = _bfs(adj, b, a, other, within) if b != a else None
                if back is not None:
                    return [a, *back]
                tries -= 1
                if tries <= 0:
                    return None
    return None


def _classify(comp: list[int], adj: list[dict[int, int]]) -> tuple[str, list[int]] | None:
    """The weakest-edged cycle in one component, with its name."""
    for rt, suffix in ((0, ""), (RT, "-realtime")):
        for name, mask in (("G0", WW), ("G1c", WW | WR)):
            path = _cycle(adj, comp, mask | rt)
            if path is not None:
                return name + suffix, path
        path = _single(adj, comp, WW | WR | rt)
        if path is not None:
            return "G-single" + suffix, path
        path = _cycle(adj, comp, WW | WR | RW | rt)
        if path is not None:
            return "G2" + suffix, path
    return None
