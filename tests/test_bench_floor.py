"""The floor engine of `orchestrate bench`: what it reports when a floor fails to start."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import psutil
import pytest

from bench import floor


async def test_a_floor_that_cannot_start_says_why_and_is_reaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child's own error is the one useful line (its stderr went to /dev/null: the user saw
    `floor server failed to start (exit 3): b''`), and the dead child is waited for."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named grpc' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(sys, "executable", str(fake))
    before = {p.pid for p in psutil.Process().children()}
    with pytest.raises(RuntimeError) as err:
        async with floor.floor_cluster(1, 8):
            pass
    assert "exit 3" in str(err.value)
    assert "No module named grpc" in str(err.value), str(err.value)
    zombies = [p for p in psutil.Process().children() if p.pid not in before and p.status() == psutil.STATUS_ZOMBIE]
    assert not zombies, zombies
