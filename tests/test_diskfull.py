"""A full disk (ENOSPC) on a real node: NOSPACE alarm, writes refused, reads served, recovery.

The node's data dir sits on a small tmpfs that a filler file nearly fills. Puts go on until
the disk is full; then the member raises NOSPACE (as etcd does for a full backend), refuses
further writes with etcd's error, keeps serving serializable and linearizable reads, and
after the filler is deleted and the alarm disarmed it takes writes again, with every
acknowledged put still readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from node.client import ClientError
from tests.procs import NodeProcs

# etcd's exact texts (the spec: not imported from the code under test)
ERR_NO_SPACE = "etcdserver: mvcc: database space exceeded"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root"),
    pytest.mark.skipif(shutil.which("etcdctl") is None, reason="needs etcdctl (scripts/setup.sh)"),
]

TMPFS_MB = 24
ROOM_MB = 3  # what the filler leaves free once the node (and its 8 MiB reserve) is up


class DataOn(NodeProcs):
    """NodeProcs whose data dirs live under `root` (the tmpfs) while logs stay in base."""

    def __init__(self, base: Path, root: Path, n: int) -> None:
        super().__init__(base, n)
        self.root = root

    def args(self, name: str, state: str = "new", initial: str | None = None) -> list[str]:
        a = super().args(name, state, initial)
        a[a.index("--data-dir") + 1] = str(self.root / name)
        return a


@contextlib.contextmanager
def tmpfs(path: Path, size_mb: int) -> Iterator[Path]:
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        r = subprocess.run(["umount", str(path)], capture_output=True)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def etcdctl(c: NodeProcs, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ETCDCTL_API": "3"}
    cmd = ["etcdctl", "--endpoints", ",".join(c.endpoints()), "--dial-timeout", "3s", "--command-timeout", "5s"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=20, env=env)


async def test_disk_full_raises_nospace_serves_reads_and_recovers(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", TMPFS_MB) as mnt:
        c = DataOn(tmp_path / "logs", mnt, 1)
        c.base.mkdir()
        try:
            await _scenario(c, mnt)
        finally:
            c.close()


async def _scenario(c: DataOn, mnt: Path) -> None:
    c.start_all()
    await c.wait_leader()
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    filler = mnt / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - ROOM_MB * 2**20))
        f.flush()
        os.fsync(f.fileno())

    acked: dict[bytes, bytes] = {}
    refusal: ClientError | None = None
    ep = c.endpoint("n1")
    async with c.client_for(timeout=5.0) as cl:
        end = time.monotonic() + 60
        i = 0
        while time.monotonic() < end:
            k, v = b"d%05d" % i, (b"%05d" % i) * 800
            try:
                await cl.put(k, v)
                acked[k] = v
            except ClientError as e:
                if e.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    refusal = e
                    break
                # a put caught by the full disk itself may time out; keep going until refused
            i += 1
            if (await cl.admin_status(ep))["disk_full"]:
                # the node raises the alarm by itself, before any other request comes
                for _ in range(30):
                    if (await cl.admin_status(ep))["alarms"] == ["NOSPACE"]:
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError("the disk is full but no NOSPACE alarm was raised")
                try:
                    await cl.put(b"one-more", b"x" * 4096)
                except ClientError as e:
                    refusal = e
                break
    assert refusal is not None, f"{len(acked)} puts of 4 KiB never filled a {ROOM_MB} MiB disk"
    assert str(refusal) == ERR_NO_SPACE and refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(acked) > 100, len(acked)

    r = etcdctl(c, "put", "more", "v")
    assert r.returncode != 0 and "Error: etcdserver: mvcc: database space exceeded" in r.stderr, r
    for _ in range(50):
        r = etcdctl(c, "alarm", "list")
        if "alarm:NOSPACE" in r.stdout:
            break
        await asyncio.sleep(0.1)
    assert r.stdout.startswith("memberID:") and "alarm:NOSPACE" in r.stdout, r
    some = sorted(acked)[len(acked) // 2]
    for consistency in ("s", "l"):
        r = etcdctl(c, "get", some.decode(), "--print-value-only", f"--consistency={consistency}")
        assert r.returncode == 0 and r.stdout.strip().encode() == acked[some], (consistency, r)
    r = etcdctl(c, "endpoint", "status", "-w", "json")
    assert r.returncode == 0, r
    (ep,) = json.loads(r.stdout)
    assert any(e.endswith("alarm:NOSPACE ") for e in ep["Status"].get("errors", [])), ep
    status = (await c.statuses())["n1"]
    assert status["alarms"] == ["NOSPACE"] and status.get("disk_full") is True, status
    assert "disk full" in c.log("n1").lower()

    # disarming while the disk is still full: writes stay refused and the alarm comes back
    r = etcdctl(c, "alarm", "disarm")
    assert r.returncode == 0 and "alarm:NOSPACE" in r.stdout, r
    for _ in range(50):  # without any write coming in
        if "alarm:NOSPACE" in etcdctl(c, "alarm", "list").stdout:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("disarmed while the disk is still full, and the alarm did not come back")
    r = etcdctl(c, "put", "more", "v")
    assert r.returncode != 0 and "database space exceeded" in r.stderr, r

    # free the space, disarm: writes work again
    filler.unlink()
    r = etcdctl(c, "alarm", "disarm")
    assert r.returncode == 0 and "alarm:NOSPACE" in r.stdout, r
    for _ in range(50):
        r = etcdctl(c, "put", "after", "ok")
        if r.returncode == 0:
            break
        await asyncio.sleep(0.1)
    assert r.returncode == 0 and r.stdout.strip() == "OK", r
    assert etcdctl(c, "alarm", "list").stdout.strip() == ""
    status = (await c.statuses())["n1"]
    assert status["alarms"] == [] and status.get("disk_full") is False, status

    # every acknowledged put is there, in the live process and, after a kill -9, on disk: the
    # WAL must hold them with no gap where the write that hit ENOSPC was rolled back and retried
    acked[b"after"] = b"ok"
    await _check_acked(c, acked, "in the live process")
    c.kill("n1", signal.SIGKILL)
    c.start("n1")
    try:
        await c.wait_leader(timeout=15)
    except AssertionError as e:
        raise AssertionError(f"n1 did not come back from its data dir: {e}\n{c.log('n1')[-3000:]}") from None
    await _check_acked(c, acked, "after kill -9 and a restart from the data dir")
    assert "WAL repaired" not in c.log("n1"), "the WAL needed a repair: it was torn by the full disk"


async def _check_acked(c: DataOn, acked: dict[bytes, bytes], when: str) -> None:
    async with c.client_for(timeout=10.0) as cl:
        got: dict[bytes, bytes] = {}
        for prefix in (b"d", b"after"):
            resp = await cl.get(prefix, prefix=True)
            got.update((kv.key, kv.value) for kv in resp.kvs)
    missing = [k for k, v in acked.items() if got.get(k) != v]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged puts lost {when}, e.g. {missing[:3]}"
