"""Strict serializability of an append (list) history, checked the way Jepsen's Elle does: by cycles.

Every key is a list that transactions append unique values to, so one read of a key shows the
whole order of the writes before it. From the reads:

* version order per key: the longest read; every other read must be a prefix of it (a read that
  is not is itself an anomaly: ``incompatible-order``);
* dependency edges between committed transactions: ``ww`` (T1 appended the element just before
  T2's), ``wr`` (T2 read a list ending in T1's element), ``rw`` (T1 read a list that T2's
  element extends: T1 must come before T2); plus ``rt`` (T1 completed before T2 was invoked);
* a cycle is a transaction that must come before itself. Cycles are found by Tarjan's SCCs, then
  one cycle per component (chaos.elle_cycles), named by the weakest edges that form one: ``G0``
  (ww only), ``G1c`` (ww+wr), ``G-single`` (exactly one rw), ``G2`` (several rw); one that needs
  an ``rt`` edge is ``<name>-realtime`` (a stale read: serializable, but not in real-time order).
  When the budget runs out while naming, the rest are reported as ``cycle (not classified)``:
  still INVALID, never a name that might be wrong.
* checked directly: ``G1a`` (aborted read: an element of a failed transaction was read), ``G1b``
  (intermediate read: a list ending in a transaction's non-final append to that key),
  ``lost-update`` (two committed transactions read the same version of a key and both appended
  to it), ``duplicate-elements``, ``garbage-read`` (an element nobody appended to that key),
  ``internal`` (a read that does not end with the transaction's own earlier appends) and, with
  the final read, ``lost-write`` (an append of a transaction that took effect missing from the
  final list).

Unknown-outcome (``info``) transactions may or may not have happened: one whose append was read
took effect, all of it (a transaction is atomic), and joins the graph like an acknowledged one
(its own reads tell nothing): its appends nobody read come after every read of their keys, and
must be in the final read. One never observed is left out, which is always consistent.
Everything is polynomial: edges are linear in the reads, real-time edges come from a frontier of
recent completions (linear in operations x concurrency).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from .elle_cycles import RT, RW, UNCLASSIFIED, WR, WW, Graph, OutOfTime, Work, any_cycle, classify, edge_name, sccs
from .history import FAIL, OK, FinalRead, Op, parse_list

VALID, INVALID, UNKNOWN = "valid", "invalid", "unknown"
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


def _final_txn(final: FinalRead, keys: set[str], t: float) -> Op:
    mops: list[list[Any]] = [["r", k, parse_list(final.kvs[k][0]) if k in final.kvs else []] for k in sorted(keys)]
    return Op(FINAL_ID, -1, "txn", "", outcome=OK, invoke=t, complete=t, node="final read", mops=mops)


def check_append(ops: list[Op], final: FinalRead | None = None, budget_s: float = 60.0) -> TxnResult:
    """The verdict on an append history. Past the budget: what was found so far; a cycle found but not
    yet named is reported as a cycle (INVALID either way), and nothing found at all is UNKNOWN."""
    t_start = time.monotonic()
    c = _Checker([o for o in ops if o.kind == "txn"], final, Work(t_start + budget_s))
    note = ""
    try:
        c.run()
    except OutOfTime:
        note = f"the {budget_s:g}s budget ran out before the graph was checked"
    if c.unclassified:
        note = f"the {budget_s:g}s budget ran out while naming cycles: {c.unclassified} left unnamed"
    verdict = INVALID if c.anomalies else UNKNOWN if note else VALID
    return TxnResult(verdict, len(ops), c.n_nodes, time.monotonic() - t_start, c.anomalies, c.n_edges, note)


class _Checker:
    """One check, in stages: writes and reads indexed, direct anomalies and version orders, the
    dependency graph (with lost writes), then its cycles. Anomalies accumulate as it goes, so a
    budget that runs out keeps what was already found."""

    def __init__(self, txns: list[Op], final: FinalRead | None, work: Work) -> None:
        self.txns = txns
        self.final = final
        self.work = work
        self.anomalies: list[Anomaly] = []
        self.n_nodes = len(txns)
        self.n_edges = 0
        self.unclassified = 0
        self.failed_values: dict[int, Op] = {}
        self.appended: dict[int, tuple[Op, str]] = {}  # value -> (writer, key)
        self.last_append: dict[tuple[int, str], int] = {}  # (op id, key) -> its last appended value
        self.keys: set[str] = set()
        self.reads: dict[str, list[tuple[Op, list[int]]]] = {}  # key -> external reads (own appends cut off)
        self.order: dict[str, list[int]] = {}  # key -> version order

    def run(self) -> None:
        live = self._index()
        self._reads(live)
        self._lost_updates(live)
        self._version_orders()
        nodes, adj = self._graph(live)
        self._name_cycles(nodes, adj, sccs(adj, self.work))

    def _add(self, name: str, text: str, ops: list[Op]) -> None:
        self.anomalies.append(Anomaly(name, text, ops))

    # -- stage 1: who wrote what; what each transaction read from others -------------------------------
    def _index(self) -> list[Op]:
        """Every append's writer; the transactions that may have happened (the final read as the last)."""
        for o in self.txns:
            self.work.tick()
            for f, k, v in o.mops or []:
                self.keys.add(k)
                if f != "append":
                    continue
                if o.outcome == FAIL:
                    self.failed_values[v] = o
                else:
                    self.appended[v] = (o, k)
                    self.last_append[(o.id, k)] = v
        live = [o for o in self.txns if o.outcome != FAIL]
        if self.final is not None:
            end = max((o.complete or o.invoke for o in self.txns), default=0.0) + 1.0
            live.append(_final_txn(self.final, self.keys, end))
        return live

    def _reads(self, live: list[Op]) -> None:
        """External reads per key (minus the transaction's own earlier appends); `internal` anomalies."""
        self.reads = {k: [] for k in self.keys}
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
                    self._add("internal", f"read {k} = {v} misses its own appends {mine}", [o])
                    continue
                if k not in own:
                    self.reads[k].append((o, v))

    def _lost_updates(self, live: list[Op]) -> None:
        """Two committed transactions that read one version of a key and both appended to it."""
        read_then_append: dict[tuple[str, int], list[Op]] = {}
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
                    if k in seen:  # one entry per transaction and key
                        read_then_append.setdefault((k, seen[k]), []).append(o)
        for (k, n), group in read_then_append.items():
            if len(group) > 1:
                self._add(
                    "lost-update", f"{len(group)} transactions read {k} at length {n} and all appended to it", group
                )

    # -- stage 2: version order per key, and what a single read already shows ---------------------------
    def _version_orders(self) -> None:
        for k in sorted(self.keys):
            self.work.tick(len(self.reads[k]) + 1)
            longest = self._order_of(k)
            if longest is None:
                continue
            self.order[k] = longest
            self._direct(k, longest)

    def _order_of(self, k: str) -> list[int] | None:
        """The longest read of k, if every other read is a prefix of it (else the anomalies, and None)."""
        rs = self.reads[k]
        longest = max((r for _, r in rs), key=len, default=[])
        ok = True
        for o, r in rs:
            self.work.tick(len(r) + 1)
            if len(set(r)) != len(r):
                self._add("duplicate-elements", f"read {k} = {r} holds an element twice", [o])
                ok = False
            elif longest[: len(r)] != r:
                who = next(w for w, x in rs if x == longest)
                self._add(
                    "incompatible-order",
                    f"reads of {k} disagree on the order: {r} is not a prefix of {longest}",
                    [o, who],
                )
                ok = False
        return longest if ok else None

    def _direct(self, k: str, longest: list[int]) -> None:
        """G1a (a failed append read), garbage reads, G1b (a read ending in an intermediate append)."""
        rs = self.reads[k]
        for i, v in enumerate(longest):
            if v in self.failed_values:
                text = f"read {k} holds {v}, appended by a failed transaction"
                self.anomalies.append(Anomaly("G1a", text, [self.failed_values[v], *_readers(rs, i)]))
            elif v not in self.appended or self.appended[v][1] != k:
                self._add("garbage-read", f"read {k} holds {v}, which no transaction appended to {k}", _readers(rs, i))
        for o, r in rs:
            if r and r[-1] in self.appended:
                w = self.appended[r[-1]][0]
                if w is not o and self.last_append.get((w.id, k)) != r[-1]:
                    self._add("G1b", f"read {k} = {r} ends in an intermediate append of {w.id}", [w, o])

    # -- stage 3: the dependency graph -------------------------------------------------------------------
    def _graph(self, live: list[Op]) -> tuple[list[Op], Graph]:
        """Nodes: the transactions that took effect (acknowledged, or unknown but one of their appends was
        read: then all of it took effect). Edges ww / wr / rw per key, and real time."""
        observed = {v for lst in self.order.values() for v in lst}
        nodes = [o for o in live if o.outcome == OK or any(f == "append" and v in observed for f, _, v in o.mops or [])]
        self.n_nodes = len(nodes)
        index = {o.id: i for i, o in enumerate(nodes)}
        adj: Graph = [{} for _ in nodes]

        def edge(a: Op, b: Op, kind: int) -> None:
            ia, ib = index.get(a.id), index.get(b.id)
            if ia is not None and ib is not None and ia != ib:
                adj[ia][ib] = adj[ia].get(ib, 0) | kind

        unread_by_key: dict[str, list[Op]] = {}  # writers whose append to the key nobody read
        for o in nodes:
            for k in {kk for f, kk, v in o.mops or [] if f == "append" and v not in observed and kk in self.order}:
                unread_by_key.setdefault(k, []).append(o)
        for k, lst in self.order.items():
            self.work.tick(len(lst) + len(self.reads[k]))
            writers = [self.appended[v][0] for v in lst if v in self.appended]
            for a, b in itertools.pairwise(writers):
                edge(a, b, WW)
            unread = unread_by_key.get(k, [])
            if self.final is not None:
                self._lost_writes(k, unread, observed)
                unread = []
            for o in unread:  # after everything read, in some order
                if writers:
                    edge(writers[-1], o, WW)
            for o, r in self.reads[k]:
                if r and r[-1] in self.appended:
                    edge(self.appended[r[-1]][0], o, WR)
                if len(r) < len(lst):
                    if lst[len(r)] in self.appended:
                        edge(o, self.appended[lst[len(r)]][0], RW)
                else:
                    for u in unread:
                        edge(o, u, RW)
        _realtime(nodes, edge, self.work)
        self.work.check()
        self.n_edges = sum(len(a) for a in adj)
        return nodes, adj

    def _lost_writes(self, k: str, unread: list[Op], observed: set[int]) -> None:
        for o in unread:
            vals = [v for f, kk, v in o.mops or [] if f == "append" and kk == k and v not in observed]
            if o.outcome == OK:
                text = f"acknowledged append of {vals} to {k} is not in the final read"
            else:
                text = (
                    f"append of {vals} to {k} is not in the final read, yet the transaction took effect "
                    "(another of its appends was read): it was applied in part"
                )
            self._add("lost-write", text, [o])

    # -- stage 4: cycles ---------------------------------------------------------------------------------
    def _name_cycles(self, nodes: list[Op], adj: Graph, comps: list[list[int]]) -> None:
        """Each strongly connected component is a cycle: named by its weakest edges while time lasts,
        then reported unnamed (a cycle is a cycle: the verdict does not depend on its name)."""
        for comp in comps:
            try:
                if self.unclassified:
                    raise OutOfTime
                name, path = classify(adj, comp, self.work)
            except OutOfTime:
                self.unclassified += 1
                name, path = UNCLASSIFIED, any_cycle(adj, comp)
            edges = [(nodes[a].id, nodes[b].id, edge_name(adj[a][b])) for a, b in itertools.pairwise(path)]
            text = f"{len(path) - 1} transactions that must each come before the next, and the last before the first"
            self.anomalies.append(Anomaly(name, text, [nodes[i] for i in path[:-1]], edges))


def _readers(rs: list[tuple[Op, list[int]]], i: int) -> list[Op]:
    """The first transaction whose read reaches position i (one is enough to show it)."""
    return [o for o, r in rs if len(r) > i][:1]


def _realtime(nodes: list[Op], edge: Any, work: Work) -> None:
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
            work.tick(len(frontier) + 1)
            for p in frontier:
                edge(nodes[p], nodes[i], RT)
        else:
            frontier -= preds.get(i, frozenset())
            frontier.add(i)
