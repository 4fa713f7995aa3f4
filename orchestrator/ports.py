"""Reserving free ports for throwaway clusters (tests, benchmarks, experiments); never etcd's defaults.

A port is reserved across concurrent processes with a POSIX record lock on byte <port> of one lock
file per user, held for the life of the process (the kernel drops it when the process dies, even by
SIGKILL), then checked with a bind. Binding a port and releasing it at once let two processes pick
the same port between the release and the node's own bind. Ports come from below the kernel's
ephemeral range, which is never handed out as a client's source port.
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
import tempfile
import threading
from pathlib import Path

ETCD_DEFAULTS = range(2379, 2481)  # a user's own cluster may sit on these: never touch them
LOW = 10000

_LOCK_FILE = Path(tempfile.gettempdir()) / f"quorumlab-ports-{os.getuid()}.lock"
_lock_fd: int | None = None
_used: set[int] = set()  # reserved by this process
_mu = threading.Lock()
_rng = random.Random()


def _candidate_range() -> range:
    try:
        eph_lo = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        eph_lo = 32768
    return range(LOW, eph_lo) if eph_lo - LOW >= 1000 else range(0)


def _lock(port: int) -> bool:
    global _lock_fd
    if _lock_fd is None:
        _lock_fd = os.open(_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.lockf(_lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port)
    except OSError:
        return False  # another process holds it
    return True


def _unlock(port: int) -> None:
    assert _lock_fd is not None
    fcntl.lockf(_lock_fd, fcntl.LOCK_UN, 1, port)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _take(port: int) -> bool:
    if port in ETCD_DEFAULTS or port in _used or not _lock(port):
        return False
    if not _bindable(port):
        _unlock(port)
        return False
    _used.add(port)
    return True


def port_block(n: int) -> int:
    """A base port whose n consecutive ports (client + i, peer + i) are reserved for this process."""
    cands = _candidate_range()
    if len(cands) <= n:
        raise RuntimeError(f"no room for {n} consecutive ports below the ephemeral range")
    with _mu:
        for _ in range(2000):
            base = _rng.randrange(cands.start, cands.stop - n)
            taken: list[int] = []
            for port in range(base, base + n):
                if not _take(port):
                    break
                taken.append(port)
            else:
                return base
            for port in taken:
                _used.discard(port)
                _unlock(port)
    raise RuntimeError(f"could not reserve {n} consecutive free ports")


def free_ports(n: int) -> list[int]:
    """n single ports reserved for this process (not necessarily consecutive)."""
    out: list[int] = []
    cands = _candidate_range()
    with _mu:
        for _ in range(50 * n + 1000):
            if len(out) == n:
                break
            if cands:
                port = _rng.choice(cands)
            else:  # a tiny range below the ephemeral ports: let the kernel pick
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
            if _take(port):
                out.append(port)
    if len(out) < n:
        raise RuntimeError(f"could not reserve {n} free ports (got {len(out)})")
    return out
