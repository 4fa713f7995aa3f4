"""How the chaos workload classifies a client error: ``fail`` only when the write certainly did not
happen, ``info`` (unknown outcome) whenever it may still be applied. Calling a maybe-applied write
``fail`` makes the checker drop it, and a later read of its value is then reported as a violation
that never happened (or a real lost write is hidden). And how its watch streams live through a
compaction, on a real node."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import grpc
import pytest

from chaos.history import FAIL, INFO, FinalRead, WatchRecord
from chaos.watchcheck import check_watches
from chaos.watcher import Watcher, compact_revision
from chaos.workload import classify
from node.client import ClientError, Reason
from tests.procs import EtcdProcs, NodeProcs

C = grpc.StatusCode

# refused before anything was proposed: the write certainly did not happen
CERTAIN_FAIL = [
    (C.UNAVAILABLE, "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Connection refused"),
    (C.UNAVAILABLE, "connect failed"),
    (C.UNAVAILABLE, "etcdserver: no leader"),
    (C.FAILED_PRECONDITION, "etcdserver: not leader"),
    (C.RESOURCE_EXHAUSTED, "etcdserver: too many requests"),
    (C.INVALID_ARGUMENT, "etcdserver: key is not provided"),
    (C.INVALID_ARGUMENT, "etcdserver: request is too large"),
    (C.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded"),
]

# the request may have been proposed (even committed) before the error: outcome unknown
UNKNOWN = [
    (C.UNAVAILABLE, "etcdserver: server stopped"),
    (C.UNAVAILABLE, "etcdserver: leader changed"),
    (C.UNAVAILABLE, "etcdserver: request timed out"),
    (C.UNAVAILABLE, "etcdserver: request timed out, possibly due to previous leader failure"),
    (C.UNAVAILABLE, "etcdserver: no leader (request timed out)"),  # a timeout wins over the refusal
    (C.DEADLINE_EXCEEDED, "Deadline Exceeded"),
    (C.UNAVAILABLE, "Socket closed"),
    (C.UNAVAILABLE, "recvmsg:Connection reset by peer"),
    (C.CANCELLED, "Cancelled"),
    (C.UNKNOWN, "Stream removed"),
    (None, "timed out waiting for the server"),
]


@pytest.mark.parametrize(("code", "msg"), CERTAIN_FAIL)
def test_write_refused_before_proposing_is_a_failure(code: grpc.StatusCode, msg: str) -> None:
    assert classify(ClientError(code, msg, "127.0.0.1:1"), is_write=True) == FAIL


@pytest.mark.parametrize(("code", "msg"), UNKNOWN)
def test_write_that_may_have_been_applied_is_unknown(code: grpc.StatusCode | None, msg: str) -> None:
    assert classify(ClientError(code, msg, "127.0.0.1:1"), is_write=True) == INFO


@pytest.mark.parametrize(("code", "msg"), CERTAIN_FAIL + UNKNOWN)
def test_a_failed_read_changed_nothing(code: grpc.StatusCode | None, msg: str) -> None:
    assert classify(ClientError(code, msg, "127.0.0.1:1"), is_write=False) == FAIL


def test_case_does_not_matter() -> None:
    assert classify(ClientError(C.UNAVAILABLE, "etcdserver: Server Stopped"), is_write=True) == INFO
    assert classify(ClientError(C.UNAVAILABLE, "etcdserver: No Leader"), is_write=True) == FAIL


# -- how the client names what it received (classify decides by these reasons) ---------------------
@pytest.mark.parametrize("reason", [r for r in Reason if r.text])
def test_every_etcd_text_comes_back_as_its_reason(reason: Reason) -> None:
    e = ClientError(reason.code, reason.text, "127.0.0.1:1")
    assert e.reason is reason and e.code == reason.code and str(e) == reason.text


def test_an_unknown_text_keeps_its_code_and_is_never_matched_by_a_fragment() -> None:
    e = ClientError(C.UNAVAILABLE, "etcdserver: no leader (request timed out)")
    assert e.reason is Reason.UNKNOWN and e.code == C.UNAVAILABLE
    assert ClientError(None, "timed out waiting for the server").code is None


def test_a_connection_failure_is_unreachable_only_when_unavailable() -> None:
    assert ClientError(C.UNAVAILABLE, "failed to connect to all addresses").reason is Reason.UNREACHABLE
    assert ClientError(C.UNKNOWN, "failed to connect to all addresses").reason is Reason.UNKNOWN
    assert ClientError(C.UNAVAILABLE, "Socket closed").reason is Reason.UNKNOWN


@pytest.mark.parametrize("engine", ["builtin", "etcd"])
async def test_a_watch_from_a_compacted_revision_resumes_and_the_compaction_is_known(
    engine: str, tmp_path: Path
) -> None:
    if engine == "etcd" and shutil.which("etcd") is None:
        pytest.skip("needs the etcd binary (Debian etcd-server)")
    c = (EtcdProcs if engine == "etcd" else NodeProcs)(tmp_path / "c", 1)
    c.base.mkdir(parents=True)
    try:
        c.start_all()
        await c.wait_leader()
        await _watch_through_a_compaction(c)
    finally:
        c.close()


async def _watch_through_a_compaction(c: NodeProcs) -> None:
    eps = c.endpoints()
    assert await compact_revision(eps) == 0
    async with c.client_for() as cl:
        revs = [(await cl.put(f"a/{i % 2}", str(i))).header.revision for i in range(4)]
        await cl.compact(revs[2])  # a/0's value at revs[2] stays; revs[2] - 1 is gone
        assert await compact_revision(eps) == revs[2]
        log: list[WatchRecord] = []
        stop = asyncio.Event()
        tasks = Watcher({"n1": eps[0]}, "a/", log, stop=stop).start(1)
        deadline = time.monotonic() + 15
        while not any(r.what == "event" and r.revision == revs[3] for r in log) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*tasks)
        got = await cl.get("a/", prefix=True)
    assert [(r.what, r.start_revision or r.revision) for r in log[:3]] == [
        ("start", 1),
        ("compacted", revs[2]),
        ("start", revs[2]),
    ]
    events = [(r.key, r.revision, r.prev_value) for r in log if r.what == "event"]
    # etcd reads prev_kv at revision - 1: compacted, so none (the builtin node keeps it: "0")
    assert events in ([("a/0", revs[2], None), ("a/1", revs[3], "1")], [("a/0", revs[2], "0"), ("a/1", revs[3], "1")])
    kvs = {kv.key.decode(): (kv.value.decode(), kv.mod_revision) for kv in got.kvs}
    final = FinalRead(got.header.revision, kvs, compact_revision=revs[2])
    res = check_watches(log, [], final, prefix="a/")
    assert res.verdict == "valid", res.summary()
