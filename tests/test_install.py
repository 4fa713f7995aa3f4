"""`pip install .` (not editable) into a fresh venv, then `orchestrate` from a directory that is not the repo.

The new venv borrows the project venv's dependencies through a .pth file (so nothing is downloaded
but the build backend), which does not activate the project's editable install: `import node` must
resolve to the new copy in the new site-packages, and the nodes must run from it with no PYTHONPATH.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import pytest

from tests.procs import REPO, free_port_block

pytestmark = pytest.mark.skipif(shutil.which("etcdctl") is None, reason="etcdctl not installed (Debian: etcd-client)")

SKIP = shutil.ignore_patterns(
    ".venv",
    ".git",
    "__pycache__",
    "*.egg-info",
    "build",
    "dist",
    ".quorumlab",
    "reports",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "*.pyc",
)


def files(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


def repo_writes_since(t0: float) -> list[str]:
    """Files a cluster could have left in the repo (state, data, logs) changed since t0."""
    found = []
    for dirpath, dirs, names in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in (".venv", ".git", "node_modules")]
        for n in names:
            if n in ("state.json", "member.json") or n.endswith((".wal", ".snap", ".log")) or ".quorumlab" in dirpath:
                p = os.path.join(dirpath, n)
                with contextlib.suppress(OSError):
                    if os.stat(p).st_mtime >= t0:
                        found.append(p)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


class Installed:
    def __init__(self, venv: Path, work: Path) -> None:
        self.venv, self.work = venv, work
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        self.env["PATH"] = f"{venv / 'bin'}{os.pathsep}{self.env.get('PATH', '')}"

    def run(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / args[0]), *args[1:]],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def orch(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("orchestrate", "--name", "inst", *args)

    def state(self) -> dict[str, Any]:
        f = self.work / ".quorumlab" / "inst" / "state.json"
        return json.loads(f.read_text()) if f.exists() else {"nodes": {}}

    def pids(self) -> list[int]:
        return [r["pid"] for r in self.state()["nodes"].values() if r["pid"]]


def etcdctl(endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["etcdctl", "--endpoints", endpoint, "--command-timeout=5s", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "ETCDCTL_API": "3"},
    )


def test_non_editable_install_runs_from_anywhere(tmp_path: Path) -> None:
    t0 = time.time()
    venv, src, work = tmp_path / "venv", tmp_path / "src", tmp_path / "work"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    py = str(venv / "bin" / "python")
    purelib = Path(
        subprocess.run(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # the project venv's dependencies, without its editable quorumlab (a .pth line adds a path, never runs hooks)
    (purelib / "zz_project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    shutil.copytree(REPO, src, ignore=SKIP)
    r = subprocess.run(
        [sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-warn-script-location", str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    shutil.rmtree(src)
    inst = Installed(venv, work)
    r = inst.run("python", "-c", "import node, orchestrator; print(node.__file__); print(orchestrator.__file__)")
    assert r.returncode == 0, r.stderr
    for line in r.stdout.split():
        assert Path(line).is_relative_to(purelib), f"imported {line}, not the new install in {purelib}"
    site_before = files(purelib)

    client, peer = free_port_block(5), free_port_block(5)  # reserved blocks: they never overlap
    ports = ("--client-port", str(client), "--peer-port", str(peer), "--heartbeat-ms", "50", "--election-ms", "500")
    try:
        r = inst.orch("up", "--nodes", "3", "-q", *ports)
        assert r.returncode == 0, r.stderr + r.stdout
        root = work / ".quorumlab" / "inst"
        pids3 = inst.pids()
        assert len(pids3) == 3
        for name, rec in inst.state()["nodes"].items():
            pid = rec["pid"]
            data = root / "data" / name
            assert os.readlink(f"/proc/{pid}/cwd") == str(data), "a node runs in its own data dir"
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert argv[0].decode() == py and argv[argv.index(b"--data-dir") + 1].decode() == str(data)
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert not [e for e in env if e.startswith(b"PYTHONPATH=")], "an installed package needs no PYTHONPATH"

        assert etcdctl(f"127.0.0.1:{client}", "put", "greeting", "hello").stdout.strip() == "OK"
        got = etcdctl(f"127.0.0.1:{client + 2}", "get", "greeting")
        assert got.stdout.split() == ["greeting", "hello"], got.stderr

        r = inst.orch("down", "--purge")
        assert r.returncode == 0, r.stderr
        assert f"removed {root} (state, data of n1, n2, n3, 3 log files)" in r.stdout
        assert not any(work.iterdir()), f"down --purge left {list(work.rglob('*'))}"
        assert not any(alive(p) for p in pids3)

        # the same name again, with 5 members: a brand-new cluster, nothing reused
        r = inst.orch("up", "--nodes", "5", "-q", *ports)
        assert r.returncode == 0, r.stderr + r.stdout
        st = json.loads(inst.orch("status", "-w", "json").stdout)
        names = {f"n{i}" for i in range(1, 6)}
        assert (st["n"], st["quorum"], st["has_quorum"], st["warnings"]) == (5, 3, True, [])
        assert set(st["leader_voters"]) == names
        assert len({n["cluster_id"] for n in st["nodes"]}) == 1 and st["nodes"][0]["cluster_id"]
        ml = json.loads(etcdctl(f"127.0.0.1:{client + 4}", "member", "list", "-w", "json").stdout)
        assert sorted(m["name"] for m in ml["members"]) == sorted(names)
        assert not any(m.get("isLearner") for m in ml["members"])
        for i in range(5):
            r2 = etcdctl(f"127.0.0.1:{client + i}", "put", f"k{i}", "v")
            assert r2.stdout.strip() == "OK", (i, r2.stderr)
        pids5 = inst.pids()
        r = inst.orch("down", "--purge")
        assert r.returncode == 0, r.stderr
        assert not any(work.iterdir()) and not any(alive(p) for p in pids5)

        assert files(purelib) == site_before, "something was written inside the installed package"
        assert repo_writes_since(t0) == [], "the cluster wrote into the repo"
    finally:
        if (work / ".quorumlab").exists():
            inst.orch("down", "--purge")
        for pid in inst.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
