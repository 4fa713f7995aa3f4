"""Target names, resolved in one place: node names and the live roles the CLI and chaos accept.

A target is a node's name or a role resolved against a fresh view when a verb or fault is
applied: leader, follower (one at random), followers, random, minority, majority, all. Node verbs
(`orchestrate kill leader`) accept `NODE_TARGETS`, chaos faults all of `ROLE_TARGETS`.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

from .views import ClusterView

ROLE_TARGETS = ("leader", "follower", "followers", "random", "minority", "majority", "all")
NODE_TARGETS = ("leader", "follower", "random")  # one node each: what a node verb accepts besides names


class TargetError(Exception):
    """A target that names no node, or a role no node has right now; the message says which."""


def check_names(targets: list[str], names: list[str], roles: tuple[str, ...] = ROLE_TARGETS) -> None:
    for t in targets:
        if t not in names:
            raise TargetError(f"unknown node {t!r}; this cluster has {', '.join(names)} (or say {', '.join(roles)})")


async def resolve(
    target: str | list[str],
    names: list[str],
    view: Callable[[], Awaitable[ClusterView]],
    roles: tuple[str, ...] = ROLE_TARGETS,
) -> list[str]:
    """The live member names `target` means; `view` is awaited only for a role."""
    if isinstance(target, list):
        check_names(target, names, roles)
        return list(target)
    if target in names:
        return [target]
    if target not in roles:
        check_names([target], names, roles)
    return pick(target, await view(), names)


def pick(role: str, view: ClusterView, names: list[str]) -> list[str]:
    """The members that hold `role` in `view`; a minority avoids the leader when it can, a majority includes it."""
    running = [v.name for v in view.nodes if v.state == "running" and v.role]
    leader = view.leader
    followers = [n for n in running if n != leader]
    if role == "leader":
        if not leader:
            raise TargetError("there is no leader right now")
        return [leader]
    if role == "follower":
        if not followers:
            raise TargetError("no running follower")
        return [random.choice(followers)]
    if role == "followers":
        return followers
    if role == "random":
        if not running:
            raise TargetError("no running node")
        return [random.choice(running)]
    if role == "all":
        return list(names)
    if role == "minority":
        return sorted(names, key=lambda n: (n == leader, n))[: view.n // 2]
    if role == "majority":
        return sorted(names, key=lambda n: (n != leader, n))[: view.quorum]
    raise TargetError(f"unknown target {role!r} (say a node's name or one of {', '.join(ROLE_TARGETS)})")
