from __future__ import annotations

import os
import re
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from tests.procs import NodeProcs

# The one rule for skips: tests that need etcd, etcdctl or the netns backend (network namespaces,
# iptables) skip on a developer's machine without them, but CI runs as root with everything
# installed, so there such a skip means a broken environment and must FAIL instead. A skip reason
# matching this pattern is turned into a failure when running as root. Add to it when you add a test
# whose skip CI must never take. QUORUMLAB_ALLOW_SKIPS=1 keeps the skips (a root shell on a machine
# that really lacks them).
REQUIRED_AS_ROOT = re.compile(
    r"etcd binary|etcd-server|etcd-client|etcdctl|netns|network namespace|iptables|sshd|openssh|prometheus",
    re.IGNORECASE,
)


def _infra_skip(report: pytest.TestReport | pytest.CollectReport) -> str | None:
    """The skip reason if this is a skip that root must not take, else None."""
    if not report.skipped or hasattr(report, "wasxfail"):
        return None
    if os.geteuid() != 0 or os.environ.get("QUORUMLAB_ALLOW_SKIPS") == "1":
        return None
    lr = report.longrepr
    reason = lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)
    return reason if REQUIRED_AS_ROOT.search(reason) else None


def _fail_instead(report: pytest.TestReport | pytest.CollectReport, reason: str) -> None:
    report.outcome = "failed"
    report.longrepr = (
        f"{reason}\nThis would be a skip, but running as root (as CI does) every etcd, etcdctl and netns test "
        "must run: install what is missing (scripts/setup.sh), or set QUORUMLAB_ALLOW_SKIPS=1 to skip anyway."
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    reason = _infra_skip(rep)
    if reason is not None:
        _fail_instead(rep, reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, None, None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    reason = _infra_skip(rep)
    if reason is not None:
        _fail_instead(rep, reason)


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
