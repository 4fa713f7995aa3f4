"""The anomaly picture: one self-contained HTML page per invalid key, naming the culprit."""

from __future__ import annotations

import re
from pathlib import Path

from chaos.checker import INVALID, check, draw_anomaly
from chaos.history import OK, Op
from tests.test_checker import generate
from tests.test_checker_search import _stale


def test_stale_read_is_drawn(tmp_path: Path) -> None:
    h = generate(3_000, 8, 2, seed=4)
    bad = _stale(h)
    assert bad is not None
    r = check(h, budget_s=30)
    assert r.verdict == INVALID
    (path,) = draw_anomaly(r, h, tmp_path / "report")
    assert path.parent == tmp_path / "report" and path.name == f"anomaly-{bad.key}.html"
    text = path.read_text()
    assert "stale read" in text and "CANNOT BE PLACED" in text
    culprit = re.search(r"<title>([^<]*CANNOT BE PLACED)</title>", text)
    assert culprit is not None and f"= {bad.value!r}".replace("'", "&#x27;") in culprit.group(1)
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "<script" not in text
    # the neighbours are explained: many green, numbered bars near the culprit, and what it should have read
    assert text.count('fill="#58b368"') >= 10
    assert "In that order the register holds" in text


def test_one_page_per_invalid_key_and_none_for_valid(tmp_path: Path) -> None:
    h = [
        Op(1, 1, "put", "a/x", "1", outcome=OK, invoke=0, complete=1),
        Op(2, 2, "get", "a/x", "7", outcome=OK, invoke=2, complete=3),
        Op(3, 1, "put", "ok", "1", outcome=OK, invoke=0, complete=1),
    ]
    r = check(h)
    paths = draw_anomaly(r, h, tmp_path)
    assert [p.name for p in paths] == ["anomaly-a_x.html"]
    assert "read of a value never written" in paths[0].read_text()
    assert draw_anomaly(check(h[2:]), h[2:], tmp_path / "none") == []
