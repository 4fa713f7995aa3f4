"""Cycles in the dependency graph of chaos.elle, found and named within a work budget.

The graph is a list of adjacency dicts: node -> {successor: edge kinds (a bit set of WW|WR|RW|RT)}.
Everything here is polynomial and bounded by `Work`: every edge looked at is counted, and the clock
is read every few thousand, so a deadline holds even inside one search.
"""

from __future__ import annotations

import time
from collections import deque

WW, WR, RW, RT = 1, 2, 4, 8
ALL = WW | WR | RW | RT
EDGE_NAMES = {WW: "ww", WR: "wr", RW: "rw", RT: "rt"}
UNCLASSIFIED = "cycle (not classified)"
_CHUNK = 4096  # reachability bits per pass: bounds memory at (nodes x 512 bytes)

Graph = list[dict[int, int]]


class OutOfTime(Exception):
    """The time budget ran out in the middle of a search."""


class Work:
    """Counts edges visited; past the deadline the next check raises OutOfTime."""

    def __init__(self, deadline: float, every: int = 20_000) -> None:
        self.deadline = deadline
        self.every = every
        self.left = every
        self.edges = 0

    def tick(self, n: int = 1) -> None:
        self.edges += n
        self.left -= n
        if self.left <= 0:
            self.left = self.every
            self.check()

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise OutOfTime


class _Unbounded(Work):
    def __init__(self) -> None:
        super().__init__(float("inf"))

    def check(self) -> None:
        return None


def edge_name(kinds: int) -> str:
    return "+".join(name for k, name in EDGE_NAMES.items() if kinds & k)


def sccs(adj: Graph, work: Work, mask: int = ALL, within: set[int] | None = None) -> list[list[int]]:
    """Tarjan's strongly connected components (iterative), those with more than one node."""
    n = len(adj)
    idx = [-1] * n
    low = [0] * n
    on = [False] * n
    stack: list[int] = []
    out: list[list[int]] = []
    counter = 0
    for root in range(n) if within is None else sorted(within):
        if idx[root] != -1:
            continue
        work.tick(1)
        work_stack = [(root, iter(adj[root].items()))]
        idx[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on[root] = True
        while work_stack:
            v, it = work_stack[-1]
            advanced = False
            for w, k in it:
                work.tick()
                if not k & mask or (within is not None and w not in within):
                    continue
                if idx[w] == -1:
                    idx[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on[w] = True
                    work_stack.append((w, iter(adj[w].items())))
                    advanced = True
                    break
                if on[w]:
                    low[v] = min(low[v], idx[w])
            if advanced:
                continue
            work_stack.pop()
            if work_stack:
                low[work_stack[-1][0]] = min(low[work_stack[-1][0]], low[v])
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


def bfs(adj: Graph, src: int, dst: int, mask: int, within: set[int], work: Work) -> list[int] | None:
    """Shortest path src -> dst over edges with a kind in mask, inside `within`."""
    prev = {src: src}
    q = deque([src])
    while q:
        v = q.popleft()
        for w, k in adj[v].items():
            work.tick()
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


def any_cycle(adj: Graph, comp: list[int]) -> list[int]:
    """Some cycle through a strongly connected component (linear: one search, no budget)."""
    s = min(comp)
    path = bfs(adj, s, s, ALL, set(comp), _Unbounded())
    assert path is not None, "a strongly connected component has a cycle through each node"
    return path


def _cycle(adj: Graph, comp: list[int], mask: int, work: Work) -> list[int] | None:
    within = set(comp)
    for sub in sccs(adj, work, mask, within):
        s = min(sub)
        return bfs(adj, s, s, mask, set(sub), work)
    return None


def _topo(adj: Graph, comp: list[int], within: set[int], mask: int, work: Work) -> list[int] | None:
    """A topological order of `comp` over `mask` edges (Kahn), or None when they hold a cycle."""
    indeg = dict.fromkeys(comp, 0)
    for v in comp:
        for w, k in adj[v].items():
            work.tick()
            if k & mask and w in within:
                indeg[w] += 1
    q = deque(v for v in comp if indeg[v] == 0)
    order: list[int] = []
    while q:
        v = q.popleft()
        order.append(v)
        for w, k in adj[v].items():
            work.tick()
            if k & mask and w in within:
                indeg[w] -= 1
                if indeg[w] == 0:
                    q.append(w)
    return order if len(order) == len(comp) else None


def single(adj: Graph, comp: list[int], other: int, work: Work) -> list[int] | None:
    """A cycle with exactly one rw edge a -> b: b reaches a over `other` edges.

    Exact and polynomial: the `other` edges of the component hold no cycle (the caller looked for
    one first), so one pass in reverse topological order gives, for every node, the set of rw
    sources it reaches (bit sets, _CHUNK sources at a time); only an rw edge that closes a cycle
    is then searched for its path.
    """
    within = set(comp)
    rw = [(a, b) for a in comp for b, k in adj[a].items() if k & RW and b in within and a != b]
    work.tick(len(rw))
    if not rw:
        return None
    order = _topo(adj, comp, within, other, work)
    if order is None:  # not expected; every rw edge is then tried on its own
        for a, b in rw:
            back = bfs(adj, b, a, other, within, work)
            if back is not None:
                return [a, *back]
        return None
    sources = sorted({a for a, _ in rw})
    for lo in range(0, len(sources), _CHUNK):
        bit = {a: 1 << i for i, a in enumerate(sources[lo : lo + _CHUNK])}
        reach: dict[int, int] = {}
        for v in reversed(order):
            r = bit.get(v, 0)
            for w, k in adj[v].items():
                if k & other and w in within:
                    r |= reach[w]
            work.tick(len(adj[v]))
            reach[v] = r
        for a, b in rw:
            if a in bit and reach[b] & bit[a]:
                back = bfs(adj, b, a, other, within, work)
                assert back is not None
                return [a, *back]
    return None


def classify(adj: Graph, comp: list[int], work: Work) -> tuple[str, list[int]]:
    """The weakest-edged cycle in one strongly connected component, with its name."""
    for rt, suffix in ((0, ""), (RT, "-realtime")):
        for name, mask in (("G0", WW), ("G1c", WW | WR)):
            path = _cycle(adj, comp, mask | rt, work)
            if path is not None:
                return name + suffix, path
        path = single(adj, comp, WW | WR | rt, work)
        if path is not None:
            return "G-single" + suffix, path
        path = _cycle(adj, comp, WW | WR | RW | rt, work)
        if path is not None:
            return "G2" + suffix, path
    raise AssertionError("a strongly connected component without a cycle")
