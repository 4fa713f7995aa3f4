"""The watch checker (chaos.watchcheck): a correct stream is valid; each broken promise, hand-made,
comes back under its name."""

from __future__ import annotations

from chaos.history import OK, FinalRead, Op, WatchRecord
from chaos.watchcheck import check_watches

OPS = [
    Op(0, 0, "txn", "", outcome=OK, invoke=0, complete=1, revision=2, mops=[["append", "a/0", 1]]),
    Op(
        1, 1, "txn", "", outcome=OK, invoke=2, complete=3, revision=3, mops=[["append", "a/0", 2], ["append", "a/1", 3]]
    ),
]
FINAL = FinalRead(3, {"a/0": ("1,2", 3), "a/1": ("3", 3)})


def start(rev: int, stream: int = 0) -> WatchRecord:
    return WatchRecord(stream, "start", start_revision=rev)


def ev(key: str, rev: int, value: str, prev: str | None, batch: int, stream: int = 0) -> WatchRecord:
    return WatchRecord(stream, "event", key=key, type="put", value=value, revision=rev, prev_value=prev, batch=batch)


E2 = ev("a/0", 2, "1", None, 0)
E3A = ev("a/0", 3, "1,2", "1", 1)
E3B = ev("a/1", 3, "3", None, 1)


def violations(log: list[WatchRecord]) -> set[str]:
    return set(check_watches(log, OPS, FINAL, prefix="a/").counts())


def test_a_correct_stream_and_a_resumed_one_are_valid() -> None:
    assert violations([start(1), E2, E3A, E3B]) == set()
    err = WatchRecord(0, "error", error="Socket closed")
    assert violations([start(1), E2, err, start(3), E3A, E3B]) == set()
    # a second stream that started late is held only to what it covered
    late = [ev("a/0", 3, "1,2", "1", 0, stream=1), ev("a/1", 3, "3", None, 0, stream=1)]
    assert violations([start(1), E2, E3A, E3B, start(3, stream=1), *late]) == set()


def test_reordered() -> None:
    assert "reordered" in violations([start(1), E3A, E3B, E2])


def test_duplicate() -> None:
    assert violations([start(1), E2, E2, E3A, E3B]) == {"duplicate"}


def test_gap() -> None:
    assert violations([start(1), E2, E3A]) == {"gap"}  # a/1's change at 3 never came
    assert violations([start(1), E3A, E3B]) == {"gap"}  # nor a/0's at 2


def test_split_revision() -> None:
    assert violations([start(1), E2, E3A, ev("a/1", 3, "3", None, 2)]) == {"split revision"}


def test_bad_resume() -> None:
    err = WatchRecord(0, "error", error="Socket closed")
    assert violations([start(1), E2, err, start(3), E2, E3A, E3B]) == {"bad resume"}  # replayed 2
    assert "bad resume" in violations([start(1), E2, err, start(4)])  # asked past 3
    assert violations([start(1), E2, err, start(3), E3B]) == {"bad resume"}  # skipped a/0 at 3


def test_wrong_prev_kv() -> None:
    assert violations([start(1), E2, ev("a/0", 3, "1,2", "7", 1), E3B]) == {"wrong prev_kv"}
    assert violations([start(1), E2, E3A, ev("a/1", 3, "3", "0", 1)]) == {"wrong prev_kv"}


def test_divergent_values() -> None:
    assert "divergent" in violations([start(1), E2, ev("a/0", 3, "1,9", "1", 1), E3B])


def test_a_missing_prev_kv_is_wrong_only_above_the_compact_revision() -> None:
    no_prev = ev("a/0", 3, "1,2", None, 1)  # a/0's previous revision is 2
    log = [start(1), E2, no_prev, E3B]
    assert violations(log) == {"wrong prev_kv"}
    compacted_at = {1: {"wrong prev_kv"}, 2: set(), 3: set()}
    for rev, want in compacted_at.items():
        fin = FinalRead(FINAL.revision, FINAL.kvs, compact_revision=rev)
        assert set(check_watches(log, OPS, fin, prefix="a/").counts()) == want, rev
    # a prev_kv that is there but wrong is wrong whatever was compacted
    fin = FinalRead(FINAL.revision, FINAL.kvs, compact_revision=3)
    assert set(check_watches([start(1), E2, ev("a/0", 3, "1,2", "7", 1), E3B], OPS, fin, prefix="a/").counts()) == {
        "wrong prev_kv"
    }


def test_a_stream_told_its_start_was_compacted_resumes_at_the_compact_revision() -> None:
    gone = WatchRecord(0, "compacted", revision=3)
    # revision 2 is gone for it: no gap; and a/0 at 3 may then come without its prev_kv
    assert violations([start(1), gone, start(3), ev("a/0", 3, "1,2", None, 0), ev("a/1", 3, "3", None, 0)]) == set()
    assert violations([start(1), gone, start(4)]) == {"bad resume"}
