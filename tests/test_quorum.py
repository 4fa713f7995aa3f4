"""The quorum arithmetic against a table written out by hand (never computed by the code under test)."""

from __future__ import annotations

import pytest

from node.raft import quorum as raft_quorum
from orchestrator.quorum import explain, fault_tolerance, quorum, table

# N voters -> (quorum, failed members tolerated), as the notes state them
TABLE = {1: (1, 0), 2: (2, 0), 3: (2, 1), 4: (3, 1), 5: (3, 2), 6: (4, 2), 7: (4, 3)}


@pytest.mark.parametrize("n", sorted(TABLE))
def test_quorum_and_tolerance(n: int) -> None:
    q, ft = TABLE[n]
    assert quorum(n) == q
    assert fault_tolerance(n) == ft
    assert raft_quorum(n) == q  # the Raft core counts votes and acks with the same majority


def test_table() -> None:
    assert table() == [(n, q, ft) for n, (q, ft) in sorted(TABLE.items())]
    assert table(3) == [(1, 1, 0), (2, 2, 0), (3, 2, 1)]


def test_no_voters() -> None:
    assert quorum(0) == 0 and fault_tolerance(0) == 0


def test_explain_first_line_states_the_numbers() -> None:
    assert explain(1)[0] == "1 voting members: quorum 1 (= 1/2 + 1), tolerates 0 failed members."
    assert explain(3)[0] == "3 voting members: quorum 2 (= 3/2 + 1), tolerates 1 failed member."
    assert explain(7)[0] == "7 voting members: quorum 4 (= 7/2 + 1), tolerates 3 failed members."


def test_explain_one_and_two() -> None:
    assert explain(1)[1:] == ["A single member is its own quorum: no replication, and losing it loses the cluster."]
    assert explain(2)[1:] == ["2 members need both for quorum: losing either stops writes, so 2 is no better than 1."]


@pytest.mark.parametrize("n", [3, 5, 7])
def test_explain_odd_sizes_need_no_caveat(n: int) -> None:
    assert len(explain(n)) == 1


@pytest.mark.parametrize(("n", "odd_q", "half"), [(4, 2, 2), (6, 3, 3)])
def test_explain_even_sizes(n: int, odd_q: int, half: int) -> None:
    q, ft = TABLE[n]
    lines = explain(n)
    assert len(lines) == 3
    assert lines[1] == (
        f"{n} is even: it tolerates no more failures than {n - 1} (both tolerate {ft}) but needs a bigger "
        f"quorum ({q} vs {odd_q})."
    )
    assert lines[2] == (
        f"A network split into {half}/{half} leaves neither side with {q} members, so no side can write; "
        f"with {n - 1} members every split leaves one side with quorum."
    )
