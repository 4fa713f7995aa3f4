"""Starting and signalling node processes on this machine (subprocess + psutil).

Nodes start in their own session so a Ctrl-C in the shell that ran
`orchestrate up` does not reach them; a record keeps pid and create time so a
recycled pid is never mistaken for our node.
"""

from __future__ import annotations

import contextlib
import os
import signal
import site
import subprocess
import time
from pathlib import Path

import psutil

from .state import NodeRecord


def package_root() -> Path:
    """The directory our packages (`node`, `orchestrator`) were imported from."""
    return Path(__file__).resolve().parent.parent


def child_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a node: `python -m node` must import the same code as this orchestrator.

    An installed package (site-packages) needs nothing; a source checkout run without an install
    (`python -m orchestrator` from the repo) gets its root prepended to PYTHONPATH, since a node's
    cwd is its own directory, never the repo.
    """
    env = dict(os.environ if base is None else base)
    env["PYTHONUNBUFFERED"] = "1"
    root = str(package_root())
    site_dirs = {os.path.realpath(p) for p in [*site.getsitepackages(), site.getusersitepackages()]}
    if os.path.realpath(root) not in site_dirs:
        parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if root not in parts:
            env["PYTHONPATH"] = os.pathsep.join([root, *parts])
    return env


class LocalLauncher:
    def __init__(self) -> None:
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        # psutil measures CPU between two calls on the same Process object: keep them
        self._procs: dict[tuple[int, float], psutil.Process] = {}

    def start(self, cmd: list[str], log: Path, cwd: Path, netns: str = "") -> tuple[int, float]:
        """Start a node with absolute paths only, in its own directory `cwd` (created 0700 if missing)."""
        if not (log.is_absolute() and cwd.is_absolute()):
            raise ValueError(f"a node gets absolute paths only, not {log} / {cwd}")
        log.parent.mkdir(parents=True, exist_ok=True)
        cwd.mkdir(mode=0o700, parents=True, exist_ok=True)
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        env = child_env()
        with open(log, "ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
            out.flush()
            p = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=cwd,
                env=env,
            )
        self._children[p.pid] = p
        try:
            ct = psutil.Process(p.pid).create_time()
        except psutil.Error:
            ct = 0.0
        return p.pid, ct

    def exit_code(self, rec: NodeRecord) -> int | None:
        """The exit status of a node this launcher started and that has exited, else None."""
        child = self._children.get(rec.pid)
        return child.poll() if child is not None else None

    def process(self, rec: NodeRecord) -> psutil.Process | None:
        """Our node's process, or None if it is gone (or the pid now belongs to someone else)."""
        if not rec.pid:
            return None
        child = self._children.get(rec.pid)
        if child is not None and child.poll() is not None:
            return None
        try:
            p = self._procs.get((rec.pid, rec.create_time))
            if p is None:
                p = psutil.Process(rec.pid)
                if rec.create_time and abs(p.create_time() - rec.create_time) > 0.5:
                    return None
                self._procs[(rec.pid, rec.create_time)] = p
            if p.status() == psutil.STATUS_ZOMBIE:
                return None
            return p
        except psutil.Error:
            return None

    def state(self, rec: NodeRecord) -> str:
        p = self.process(rec)
        if p is None:
            return "stopped"
        try:
            return "paused" if p.status() == psutil.STATUS_STOPPED else "running"
        except psutil.Error:
            return "stopped"

    def signal(self, rec: NodeRecord, sig: int) -> bool:
        p = self.process(rec)
        if p is None:
            return False
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)
            return True
        return False

    def wait_gone(self, rec: NodeRecord, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process(rec) is None:
                return True
            time.sleep(0.05)
        return self.process(rec) is None

    def stop(self, rec: NodeRecord, timeout: float = 10.0) -> None:
        """SIGTERM (a leader hands over first), then SIGKILL if it does not exit in time."""
        if self.state(rec) == "paused":
            self.signal(rec, signal.SIGCONT)
        if self.signal(rec, signal.SIGTERM) and not self.wait_gone(rec, timeout):
            self.kill(rec)

    def kill(self, rec: NodeRecord) -> None:
        self.signal(rec, signal.SIGKILL)
        self.wait_gone(rec, 5.0)

    def usage(self, rec: NodeRecord) -> tuple[float, int]:
        """(CPU % since the last call, RSS bytes)."""
        p = self.process(rec)
        if p is None:
            return 0.0, 0
        try:
            return p.cpu_percent(None), p.memory_info().rss
        except psutil.Error:
            return 0.0, 0
