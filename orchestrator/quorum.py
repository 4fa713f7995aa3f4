"""The seed's arithmetic: quorum = N/2 + 1, fault tolerance = N - quorum, and why odd sizes."""

from __future__ import annotations


def quorum(n: int) -> int:
    return n // 2 + 1 if n > 0 else 0


def fault_tolerance(n: int) -> int:
    return n - quorum(n) if n > 0 else 0


def explain(n: int) -> list[str]:
    """Plain-language lines about an N-voter cluster, as the seed notes reason about it."""
    q, ft = quorum(n), fault_tolerance(n)
    lines = [f"{n} voting members: quorum {q} (= {n}/2 + 1), tolerates {ft} failed member{'s' * (ft != 1)}."]
    if n == 1:
        lines.append("A single member is its own quorum: no replication, and losing it loses the cluster.")
    elif n == 2:
        lines.append("2 members need both for quorum: losing either stops writes, so 2 is no better than 1.")
    elif n % 2 == 0:
        lines.append(
            f"{n} is even: it tolerates no more failures than {n - 1} (both tolerate {ft}) but needs a bigger "
            f"quorum ({q} vs {quorum(n - 1)})."
        )
        half = n // 2
        lines.append(
            f"A network split into {half}/{half} leaves neither side with {q} members, so no side can write; "
            f"with {n - 1} members every split leaves one side with quorum."
        )
    return lines


def table(max_n: int = 7) -> list[tuple[int, int, int]]:
    return [(n, quorum(n), fault_tolerance(n)) for n in range(1, max_n + 1)]
