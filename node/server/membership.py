"""The member registry (names and URLs) as the log replicates it: etcd's membership.RaftCluster.

Raft's configuration says who votes; this table says what each member is called and
where it listens. It changes only when an entry is applied (a conf change, a member's
published attributes, a MemberUpdate) or a snapshot is restored, all in the Raft loop,
so it always agrees with the applied index. A conf change proposed through the API
carries `[origin member, request seq, member wire]` as its context, so every member
learns the new member's URLs and only the origin resolves the waiting request.
"""

from __future__ import annotations

from typing import Any

import msgpack

from node.raft import ConfChange, ConfChangeType

from .members import Member, member_id


class Membership:
    def __init__(self) -> None:
        self.members: dict[int, Member] = {}

    def get(self, mid: int) -> Member | None:
        return self.members.get(mid)

    def name_of(self, mid: int) -> str:
        """The member's name once it published one, its hex id before."""
        m = self.members.get(mid)
        if m is not None and m.name:
            return m.name
        return f"{mid:x}"

    def seed(self, initial_cluster: dict[str, str], token: str, own_name: str) -> None:
        """A member joining an existing cluster knows its peers' URLs before it learns the table."""
        for name, url in initial_cluster.items():
            if name != own_name:
                mid = member_id(url, token)
                self.members.setdefault(mid, Member(mid, name, [url]))

    def published(self, mid: int, name: str, client_url: str) -> bool:
        """Whether the table already holds the name and client URL this member would publish."""
        me = self.members.get(mid)
        return me is not None and me.name == name and client_url in me.client_urls

    def apply_conf_change(self, cc: ConfChange) -> Member | None:
        """The member added, promoted or removed by a committed conf change (None: unknown)."""
        info = ctx_member(cc.context)
        nid = cc.node_id
        if cc.type == ConfChangeType.REMOVE_NODE:
            return self.members.pop(nid, None)
        m = self.members.get(nid)
        if m is None:
            m = info or Member(nid)
            self.members[nid] = m
        elif info is not None:
            m.peer_urls = info.peer_urls or m.peer_urls
            m.name = m.name or info.name
        m.is_learner = cc.type == ConfChangeType.ADD_LEARNER
        return m

    def set_attributes(self, payload: bytes) -> int:
        """A member published its name and client URLs; returns its id."""
        mid, name, urls = msgpack.unpackb(payload)
        m = self.members.setdefault(int(mid), Member(int(mid)))
        m.name, m.client_urls = str(name), list(urls)
        return int(mid)

    def set_peer_urls(self, payload: bytes) -> bool:
        """MemberUpdate; False when the member is not (or no longer) in the table."""
        mid, urls = msgpack.unpackb(payload)
        m = self.members.get(int(mid))
        if m is None:
            return False
        m.peer_urls = list(urls)
        return True

    def peer_urls(self, ids: set[int]) -> dict[int, str]:
        """Where the transport reaches each of `ids` (members with no known URL are left out)."""
        return {
            mid: self.members[mid].peer_urls[0] for mid in ids if mid in self.members and self.members[mid].peer_urls
        }

    def to_wire(self) -> list[Any]:
        return [m.to_wire() for m in self.members.values()]

    def restore(self, wire: list[Any]) -> None:
        self.members = {int(v[0]): Member.from_wire(v) for v in wire}


def attributes_payload(mid: int, name: str, client_url: str) -> bytes:
    return bytes(msgpack.packb([mid, name, [client_url]]))


def peer_urls_payload(mid: int, urls: list[str]) -> bytes:
    return bytes(msgpack.packb([mid, urls]))


def conf_change_context(origin: int, req: int, member: Member) -> bytes:
    return bytes(msgpack.packb([origin, req, member.to_wire()]))


def ctx_request(ctx: bytes) -> tuple[int, int]:
    """(origin member, request seq) of a conf change proposed through the API; (0, 0) otherwise."""
    if not ctx:
        return 0, 0
    try:
        v = msgpack.unpackb(ctx)
    except (ValueError, msgpack.ExtraData):
        return 0, 0
    if isinstance(v, list) and len(v) == 3 and isinstance(v[0], int) and isinstance(v[1], int):
        return v[0], v[1]
    return 0, 0


def ctx_member(ctx: bytes) -> Member | None:
    """The member a conf change's context describes (API proposals and bootstrap entries)."""
    if not ctx:
        return None
    try:
        v = msgpack.unpackb(ctx)
    except (ValueError, msgpack.ExtraData):
        return None
    if isinstance(v, list) and len(v) == 3 and isinstance(v[2], list):
        return Member.from_wire(v[2])
    if isinstance(v, list) and len(v) == 5:
        return Member.from_wire(v)
    return None
