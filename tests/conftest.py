from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.procs import NodeProcs


@pytest.fixture
def node_cluster(tmp_path: Path) -> Iterator[Callable[..., NodeProcs]]:
    """Make clusters of real node processes; every one is killed at teardown, pass or fail."""
    made: list[NodeProcs] = []

    def make(n: int = 3, **kw: object) -> NodeProcs:
        c = NodeProcs(tmp_path / f"c{len(made)}", n, **kw)  # type: ignore[arg-type]
        c.base.mkdir(parents=True)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
