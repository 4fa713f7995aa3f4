"""Finding free ports (tests, benchmarks and experiments never use etcd's defaults)."""

from __future__ import annotations

import random
import socket


def port_block(n: int, lo: int = 30000, hi: int = 60000) -> int:
    """A base port with n consecutive free ports on 127.0.0.1 (for client + i and peer + i)."""
    for _ in range(500):
        base = random.randrange(lo, hi - n)
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError(f"no block of {n} free ports in {lo}-{hi}")
