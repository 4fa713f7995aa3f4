"""A new member's identity: its member id and the id of the cluster it founds or joins.

etcd derives both from the peer URLs and the cluster token, so every founding member computes the
same cluster id without talking; a member joining an existing cluster asks the members it was told
about (over their peer port) and must already have been added (`member add`).
"""

from __future__ import annotations

import asyncio
import time

from node.storage import Meta

from .interfaces import ConfigError, NodeConfig
from .members import cluster_id, member_id, normalize_url
from .transport import discover


async def new_identity(cfg: NodeConfig) -> Meta:
    """The metadata a fresh data dir is stamped with, after checking the flags agree."""
    if cfg.name not in cfg.initial_cluster:
        raise ConfigError(f"--initial-cluster does not list this member's name {cfg.name!r}")
    if normalize_url(cfg.initial_cluster[cfg.name]) != cfg.peer_url():
        raise ConfigError(
            f"--initial-cluster gives {cfg.name} peer URL {cfg.initial_cluster[cfg.name]}, "
            f"but this member advertises {cfg.peer_url()}"
        )
    mid = member_id(cfg.peer_url(), cfg.initial_cluster_token)
    if cfg.initial_cluster_state == "new":
        ids = [member_id(u, cfg.initial_cluster_token) for u in cfg.initial_cluster.values()]
        return Meta(cfg.name, mid, cluster_id(ids, cfg.initial_cluster_token))
    if cfg.initial_cluster_state == "existing":
        return Meta(cfg.name, mid, await discover_cluster_id(cfg))
    raise ConfigError(f"--initial-cluster-state must be new or existing, not {cfg.initial_cluster_state!r}")


async def discover_cluster_id(cfg: NodeConfig, timeout: float = 10.0) -> int:
    """Ask the existing members (over their peer port) which cluster we are joining."""
    others = [u for n, u in cfg.initial_cluster.items() if n != cfg.name]
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for u in others:
            try:
                cid, members = await discover(u, cfg.peer_url(), secret=cfg.peer_secret, tls=cfg.peer_tls)
            except Exception as e:  # noqa: BLE001 - report the last reason below
                last = f"{u}: {e}"
                continue
            if member_id(cfg.peer_url(), cfg.initial_cluster_token) not in members:
                raise ConfigError(
                    f"the cluster at {u} has no member with peer URL {cfg.peer_url()}; add it first "
                    "(etcdctl member add / orchestrate add)"
                )
            return cid
        await asyncio.sleep(0.3)
    raise ConfigError(f"could not reach any existing member to join ({last})")
