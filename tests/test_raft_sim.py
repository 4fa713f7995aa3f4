"""Seeded simulation: safety over thousands of random schedules, and the seed notes' liveness claims."""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

from node.raft import Role, quorum
from tests.raftsim import SafetyViolation, Sim, random_schedule

SCHEDULES = int(os.environ.get("RAFT_SIM_SCHEDULES", "2000"))


def _run_range(start: int, count: int) -> tuple[int, int, str | None]:
    acked = 0
    for seed in range(start, start + count):
        try:
            sim = random_schedule(seed)
        except SafetyViolation as e:
            return seed - start, acked, str(e)
        acked += len(sim.acked)
    return count, acked, None


def test_random_schedules_are_safe(capsys: pytest.CaptureFixture[str]) -> None:
    workers = max(1, min(2, os.cpu_count() or 1))
    chunk = 50
    starts = list(range(0, SCHEDULES, chunk))
    t0 = time.monotonic()
    ran = acked = 0
    failures: list[str] = []
    # spawn, never fork: earlier tests in this process leave gRPC threads behind, and forking a
    # process with live gRPC threads can wedge the children
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for done, ack, err in pool.map(_run_range, starts, [min(chunk, SCHEDULES - s) for s in starts]):
            ran += done
            acked += ack
            if err:
                failures.append(err)
    elapsed = time.monotonic() - t0
    with capsys.disabled():  # shown in CI's output, not captured
        print(f"\nraft simulation: {ran} schedules, {acked} acknowledged proposals, {ran / elapsed:.1f} schedules/s")
    assert not failures, failures[0]
    assert ran == SCHEDULES


def _settle(sim: Sim, ticks: int = 60) -> None:
    sim.run_ticks(ticks)


def _commits(sim: Sim, nodes: set[int], ticks: int = 60) -> bool:
    """Keep proposing through each of `nodes` (as retrying clients would) and
    report whether any proposal was applied there."""
    datas: list[bytes] = []
    for _ in range(ticks // 5):
        datas += [d for d in (sim.propose(n) for n in sorted(nodes)) if d]
        sim.run_ticks(5)
    sim.run_ticks(20)
    have = {d for n in nodes if sim.nodes[n].raft is not None for _, d in sim.nodes[n].state}
    return any(d in have for d in datas)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7])
def test_quorum_table_by_crashing_nodes(n: int) -> None:
    """Kill nodes one by one: writes keep working while at most N - quorum are down."""
    sim = Sim(seed=100 + n, n=n)
    _settle(sim)
    tolerance = n - quorum(n)
    for down in range(n):
        alive = {i for i in sim.nodes if sim.nodes[i].raft is not None}
        writable = _commits(sim, alive, ticks=80)
        assert writable == (down <= tolerance), f"N={n} down={down} writable={writable}"
        sim.crash(max(alive))


def test_six_nodes_split_3_3_nothing_commits() -> None:
    sim = Sim(seed=63, n=6)
    _settle(sim)
    sim.partition({1, 2, 3}, {4, 5, 6})
    sim.run_ticks(40)  # old leader's check-quorum fires
    assert not _commits(sim, {1, 2, 3, 4, 5, 6}, ticks=100)
    assert sim.leader() is None or all(
        n.raft is None or n.raft.role != Role.LEADER or n.raft.term < max(sim.leaders) for n in sim.nodes.values()
    )
    sim.heal()
    assert _commits(sim, {1}, ticks=100)


def test_six_nodes_split_4_2_only_the_four_commit() -> None:
    sim = Sim(seed=64, n=6)
    _settle(sim)
    sim.partition({1, 2, 3, 4}, {5, 6})
    sim.run_ticks(40)
    assert _commits(sim, {1, 2, 3, 4}, ticks=100)
    assert not _commits(sim, {5, 6}, ticks=100)
    leaders = [n.id for n in sim.nodes.values() if n.raft is not None and n.raft.role == Role.LEADER]
    assert leaders and set(leaders) <= {1, 2, 3, 4}


def test_isolated_leader_steps_down_by_check_quorum() -> None:
    sim = Sim(seed=5, n=5)
    _settle(sim)
    ld = sim.leader()
    assert ld is not None
    sim.partition({ld.id}, set(sim.nodes) - {ld.id})
    sim.run_ticks(3 * sim.election_tick)
    assert ld.raft is not None and ld.raft.role != Role.LEADER
    new = sim.leader()
    assert new is not None and new.id != ld.id


def test_rejoining_node_does_not_disrupt_with_prevote() -> None:
    """A node back from isolation must not bump terms or depose the healthy leader."""
    sim = Sim(seed=9, n=3)
    _settle(sim)
    ld = sim.leader()
    assert ld is not None and ld.raft is not None
    other = next(i for i in sim.nodes if i != ld.id)
    sim.partition({other}, set(sim.nodes) - {other})
    sim.run_ticks(10 * sim.election_tick)
    iso = sim.nodes[other].raft
    assert iso is not None and iso.term == ld.raft.term  # pre-vote kept its term
    term = ld.raft.term
    sim.heal()
    sim.run_ticks(5 * sim.election_tick)
    assert sim.leader() is ld and ld.raft.term == term
