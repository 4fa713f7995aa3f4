"""How the chaos workload classifies a client error: ``fail`` only when the write certainly did not
happen, ``info`` (unknown outcome) whenever it may still be applied. Calling a maybe-applied write
``fail`` makes the checker drop it, and a later read of its value is then reported as a violation
that never happened (or a real lost write is hidden)."""

from __future__ import annotations

import grpc
import pytest

from chaos.history import FAIL, INFO
from chaos.workload import classify
from node.client import ClientError, Reason

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
