"""Member identities and the member table (names and URLs), replicated through the log."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from typing import Any

ID_MASK = (1 << 63) - 1  # keep ids positive in every language's int64


def member_id(peer_url: str, token: str, salt: str = "") -> int:
    h = hashlib.sha256(f"{normalize_url(peer_url)}|{token}|{salt}".encode()).digest()
    return (struct.unpack(">Q", h[:8])[0] & ID_MASK) or 1


def cluster_id(member_ids: list[int], token: str) -> int:
    h = hashlib.sha256(("|".join(f"{m:x}" for m in sorted(member_ids)) + "|" + token).encode()).digest()
    return (struct.unpack(">Q", h[:8])[0] & ID_MASK) or 1


def normalize_url(u: str) -> str:
    u = u.strip().rstrip("/")
    return u if "://" in u else f"http://{u}"


def parse_initial_cluster(spec: str) -> dict[str, str]:
    """'n1=127.0.0.1:12379,n2=http://127.0.0.1:12380' -> {name: peer url}."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, eq, url = part.partition("=")
        if not eq or not name or not url:
            raise ValueError(f"--initial-cluster: expected name=host:port, got {part!r}")
        if name in out:
            raise ValueError(f"--initial-cluster: member {name!r} listed twice")
        out[name] = normalize_url(url)
    if not out:
        raise ValueError("--initial-cluster is empty")
    return out


@dataclass
class Member:
    id: int
    name: str = ""
    peer_urls: list[str] = field(default_factory=list)
    client_urls: list[str] = field(default_factory=list)
    is_learner: bool = False

    def to_wire(self) -> list[Any]:
        return [self.id, self.name, self.peer_urls, self.client_urls, self.is_learner]

    @classmethod
    def from_wire(cls, v: list[Any]) -> Member:
        return cls(int(v[0]), str(v[1]), list(v[2]), list(v[3]), bool(v[4]))
