"""Manage one running cluster: up, down, status, node verbs and membership, for both engines."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.client import Client, ClientError

from . import engines
from .config import ClusterConfig
from .launcher import LocalLauncher
from .quorum import explain, fault_tolerance, quorum
from .state import ClusterState, NodeRecord, StateDir

ROLES = ("leader", "follower", "random")


class OrchestrateError(Exception):
    """A user-facing failure; the message says what to do."""


@dataclass
class NodeView:
    name: str
    state: str  # running | stopped | paused | unreachable | removed
    role: str = ""
    term: int = 0
    leader: str = ""
    commit: int = 0
    applied: int = 0
    pid: int = 0
    client_url: str = ""
    member_id: str = ""
    cpu: float = 0.0
    rss: int = 0
    learner: bool = False
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("extra")
        d.update(self.extra)
        return d


@dataclass
class ClusterView:
    name: str
    engine: str
    nodes: list[NodeView]
    voters: list[str]
    leader: str
    term: int

    @property
    def n(self) -> int:
        return len(self.voters)

    @property
    def quorum(self) -> int:
        return quorum(self.n)

    @property
    def fault_tolerance(self) -> int:
        return fault_tolerance(self.n)

    @property
    def live_voters(self) -> list[str]:
        return [v.name for v in self.nodes if v.name in self.voters and v.state == "running" and v.role]

    @property
    def has_quorum(self) -> bool:
        """A leader exists and a quorum of voters are up and agree on it."""
        if not self.leader:
            return False
        agree = [v for v in self.nodes if v.name in self.voters and v.leader == self.leader and v.state == "running"]
        return len(agree) >= self.quorum

    def can_lose(self) -> int:
        return max(0, len(self.live_voters) - self.quorum) if self.has_quorum else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "engine": self.engine,
            "leader": self.leader,
            "term": self.term,
            "voters": self.voters,
            "n": self.n,
            "quorum": self.quorum,
            "fault_tolerance": self.fault_tolerance,
            "live_voters": self.live_voters,
            "has_quorum": self.has_quorum,
            "can_lose": self.can_lose(),
            "notes": explain(self.n)[1:],
            "nodes": [v.to_dict() for v in self.nodes],
        }


def netns_identity(state_path: Path) -> tuple[str, int]:
    """A short tag and a /24 for this cluster's namespaces, stable for its state directory."""
    import hashlib

    h = hashlib.sha1(str(state_path.resolve()).encode()).hexdigest()
    return h[:6], 1 + int(h[6:10], 16) % 250


def port_free(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


class Cluster:
    def __init__(self, root: Path, name: str, launcher: LocalLauncher | None = None) -> None:
        self.dir = StateDir(root, name)
        self.name = name
        self.launcher = launcher or LocalLauncher()
        self._st: ClusterState | None = None

    # -- state -------------------------------------------------------------------------
    @property
    def st(self) -> ClusterState:
        if self._st is None:
            if not self.dir.exists():
                raise OrchestrateError(
                    f"no cluster named {self.name!r} here ({self.dir.path}); start one with `orchestrate up`"
                )
            self._st = self.dir.load()
        return self._st

    def save(self) -> None:
        self.dir.save(self.st)

    def reload(self) -> None:
        """Forget cached state: another invocation (or the dashboard) may have changed it on disk."""
        if self.dir.exists():
            self._st = None

    def record(self, name: str) -> NodeRecord:
        rec = self.st.nodes.get(name)
        if rec is None or rec.desired == "removed":
            known = ", ".join(self.st.live_names())
            raise OrchestrateError(f"unknown node {name!r}; this cluster has {known} (or say leader/follower/random)")
        return rec

    def client(self, names: list[str] | None = None, timeout: float = 3.0) -> Client:
        names = names or self.st.live_names()
        return Client([self.st.nodes[n].endpoint for n in names], timeout=timeout)

    def running(self) -> list[str]:
        return [n for n in self.st.live_names() if self.launcher.state(self.st.nodes[n]) != "stopped"]

    # -- up / down -----------------------------------------------------------------------------
    def create(self, cfg: ClusterConfig, token: str | None = None) -> None:
        if self.dir.exists():
            old = self.dir.load()
            alive = [n for n, r in old.nodes.items() if r.desired != "removed" and self.launcher.process(r)]
            if alive:
                pids = ", ".join(f"{n} pid {old.nodes[n].pid}" for n in alive)
                raise OrchestrateError(
                    f"cluster {self.name!r} is already running ({pids}); `orchestrate down` first, "
                    "or pick another name with --name"
                )
            if [n for n in old.live_names()] != list(cfg.nodes) or old.engine != cfg.engine:
                raise OrchestrateError(
                    f"a stopped cluster {self.name!r} exists with nodes {', '.join(old.live_names())} on engine "
                    f"{old.engine}; `orchestrate down --purge` removes it, or `orchestrate start all` restarts it"
                )
            self._st = old
            return
        st = ClusterState(
            name=cfg.name,
            engine=cfg.engine,
            network=cfg.network,
            token=token or f"{cfg.name}-{random.getrandbits(32):08x}",
            heartbeat_ms=cfg.heartbeat_ms,
            election_ms=cfg.election_ms,
            snapshot_count=cfg.snapshot_count,
            log_level=cfg.log_level,
            created=time.time(),
            config_source=cfg.source,
        )
        for name in cfg.nodes:
            host = cfg.host_of(name)
            st.nodes[name] = NodeRecord(name, cfg.client_port_of(name), cfg.peer_port_of(name), host.name, host.address)
        if cfg.network == "netns":
            tag, subnet = netns_identity(self.dir.path)
            st.extra["netns"] = {"tag": tag, "subnet": subnet}
            for i, name in enumerate(cfg.nodes):
                self._place_in_netns(st, name, i)
        self._st = st

    def netns(self) -> Any:
        from chaos.net import Netns

        info = self.st.extra.get("netns")
        return Netns(info["tag"], info["subnet"]) if info else None

    def _place_in_netns(self, st: ClusterState, name: str, index: int) -> None:
        from chaos.net import Netns

        info = st.extra["netns"]
        nn = Netns(info["tag"], info["subnet"])
        rec = st.nodes[name]
        rec.address, rec.netns = nn.address(index), nn.ns(index)

    def check_ports(self, names: list[str]) -> None:
        busy = []
        for n in names:
            r = self.st.nodes[n]
            if r.netns:
                continue  # a fresh namespace of its own: nothing else listens there
            for kind, port in (("client", r.client_port), ("peer", r.peer_port)):
                if not port_free(r.address, port):
                    busy.append(f"{n} {kind} port {r.address}:{port}")
        if busy:
            raise OrchestrateError(
                "ports already in use: " + "; ".join(busy) + ". Another cluster or program is listening there; "
                "stop it, or pick other ports (ports.client / ports.peer in cluster.yaml, or --client-port)"
            )

    def spawn(self, name: str, cluster_state: str = "new", members: list[str] | None = None) -> None:
        st = self.st
        rec = st.nodes[name]
        data = self.dir.data_dir(name)  # on a restart both engines ignore cluster_state: the data decides
        cmd = engines.command(st, rec, data, cluster_state, members or st.live_names())
        rec.pid, rec.create_time = self.launcher.start(cmd, self.dir.log_file(name), rec.netns)
        rec.desired = "running"

    async def up(self, timeout: float, progress: Callable[[str], None] | None = None) -> ClusterView:
        names = self.st.live_names()
        nn = self.netns()
        if nn is not None:
            nn.create(len(self.st.nodes))
        self.check_ports(names)
        for n in names:
            self.spawn(n)
        self.save()
        return await self.wait_ready(timeout, progress)

    async def wait_ready(self, timeout: float, progress: Callable[[str], None] | None = None) -> ClusterView:
        """Wait until a leader is elected and a write succeeds; on timeout explain what is missing."""
        deadline = time.monotonic() + timeout
        say = progress or (lambda s: None)
        view: ClusterView | None = None
        while time.monotonic() < deadline:
            view = await self.view(usage=False)
            dead = [v.name for v in view.nodes if v.state == "stopped"]
            if dead and len(dead) == len(view.nodes):
                break
            up = sum(1 for v in view.nodes if v.role)
            if not view.leader:
                say(f"waiting for a leader: {up}/{len(view.nodes)} nodes answering")
            else:
                say(f"leader {view.leader} elected (term {view.term}); waiting for a write to commit")
                try:
                    async with self.client(timeout=2.0) as c:
                        await c.put("quorumlab/up", str(time.time()))
                    await self._record_member_ids()
                    return await self.view(usage=False)
                except ClientError as e:
                    say(f"write not yet accepted: {e}")
            await asyncio.sleep(0.2)
        raise OrchestrateError(self.diagnose(view, timeout))

    def diagnose(self, view: ClusterView | None, timeout: float) -> str:
        lines = [f"cluster {self.name!r} did not become ready within {timeout:.0f}s"]
        for n in self.st.live_names():
            rec = self.st.nodes[n]
            state = self.launcher.state(rec)
            v = next((x for x in view.nodes if x.name == n), None) if view else None
            role = v.role if v and v.role else "not answering"
            lines.append(f"  {n}: process {state}, {role} ({rec.client_url}); last log lines:")
            tail = self.log_tail(n, 4)
            lines += [f"      {t}" for t in tail] or ["      (empty log)"]
        return "\n".join(lines)

    def log_tail(self, name: str, n: int) -> list[str]:
        p = self.dir.log_file(name)
        if not p.exists():
            return []
        return p.read_text(errors="replace").splitlines()[-n:]

    async def _record_member_ids(self) -> None:
        with contextlib.suppress(ClientError):
            async with self.client(timeout=2.0) as c:
                ml = await c.members()
            for m in ml.members:
                if m.name in self.st.nodes:
                    self.st.nodes[m.name].member_id = f"{m.ID:x}"
            self.save()

    def down(self, purge: bool) -> list[str]:
        self.reload()  # pids may have changed since we read the state (a restart elsewhere)
        stopped = []
        for n in self.st.live_names():
            rec = self.st.nodes[n]
            if self.launcher.process(rec) is not None:
                self.launcher.stop(rec, timeout=max(5.0, self.st.election_ms / 1000 * 4))
                stopped.append(n)
            rec.desired = "stopped"
        nn = self.netns()
        if nn is not None:
            nn.destroy()
        if purge:
            shutil.rmtree(self.dir.path, ignore_errors=True)
            self._st = None
        else:
            self.save()
        return stopped

    # -- status ------------------------------------------------------------------------------------
    async def view(self, usage: bool = True, timeout: float = 1.0) -> ClusterView:
        st = self.st
        names = st.live_names()
        ids = {r.member_id: n for n, r in st.nodes.items() if r.member_id}
        if usage:  # psutil measures CPU between two calls: prime now, read after the queries
            for n in names:
                self.launcher.usage(st.nodes[n])
            t0 = time.monotonic()
        async with self.client(timeout=timeout) as c:
            views = await asyncio.gather(*(self._node_view(c, n, ids) for n in names))
        if usage:
            await asyncio.sleep(max(0.0, 0.25 - (time.monotonic() - t0)))
            for v in views:
                if v.state != "stopped":
                    v.cpu, v.rss = self.launcher.usage(st.nodes[v.name])
        voters: list[str] = []
        leader_views = [v for v in views if v.role == "leader"]
        leader = max(leader_views, key=lambda v: v.term).name if leader_views else ""
        term = max((v.term for v in views), default=0)
        src = next((v for v in views if v.name == leader), None) or next(
            (v for v in views if v.extra.get("voters")), None
        )
        if src is not None and src.extra.get("voters"):
            voters = list(src.extra["voters"])
        if not voters:
            voters = [v.name for v in views if not v.learner] if any(v.role for v in views) else names
        for v in views:
            v.learner = v.learner or bool(src and v.name in (src.extra.get("learners") or []))
        return ClusterView(st.name, st.engine, views, voters, leader, term)

    async def _node_view(self, c: Client, name: str, ids: dict[str, str]) -> NodeView:
        rec = self.st.nodes[name]
        state = self.launcher.state(rec)
        v = NodeView(name, state, pid=rec.pid if state != "stopped" else 0, client_url=rec.client_url,
                     member_id=rec.member_id)  # fmt: skip
        if state != "running":
            return v
        try:
            if self.st.engine == "builtin":
                s = await c.admin_status(rec.endpoint, timeout=0.8)
                v.role, v.term, v.leader = s["role"], s["term"], s["leader"]
                v.commit, v.applied, v.member_id = s["commit"], s["applied"], s["id"]
                v.learner = name in s.get("learners", [])
                v.extra = {
                    "voters": s.get("voters", []),
                    "learners": s.get("learners", []),
                    "last_index": s.get("last_index", 0),
                    "revision": s.get("revision", 0),
                    "peers": s.get("peers", {}),
                    "fault_rules": s.get("fault_rules") or [],
                }
            else:
                s2 = await c.status(rec.endpoint)
                mid = f"{s2.header.member_id:x}"
                v.member_id = mid
                v.term, v.commit, v.applied = s2.raftTerm, s2.raftIndex, s2.raftAppliedIndex
                v.role = "leader" if s2.leader == s2.header.member_id else ("follower" if s2.leader else "no-leader")
                v.leader = ids.get(f"{s2.leader:x}", f"{s2.leader:x}") if s2.leader else ""
                v.learner = s2.isLearner
                v.extra = {"revision": s2.header.revision}
                if rec.member_id != mid:
                    rec.member_id = mid
        except ClientError as e:
            v.state = "unreachable"
            v.error = str(e)
        return v

    # -- node verbs --------------------------------------------------------------------------------
    async def resolve(self, target: str) -> str:
        if target in ROLES:
            view = await self.view(usage=False)
            if target == "leader":
                if not view.leader:
                    raise OrchestrateError("there is no leader right now")
                return view.leader
            pool = [v.name for v in view.nodes if v.state == "running" and v.role]
            if target == "follower":
                pool = [n for n in pool if n != view.leader]
            if not pool:
                raise OrchestrateError(f"no running {target} node to pick")
            return random.choice(pool)
        self.record(target)
        return target

    def start_node(self, name: str) -> None:
        rec = self.record(name)
        state = self.launcher.state(rec)
        if state == "paused":
            raise OrchestrateError(f"{name} is paused; `orchestrate resume {name}`")
        if state == "running":
            raise OrchestrateError(f"{name} is already running (pid {rec.pid})")
        self.check_ports([name])
        self.spawn(name)
        self.save()

    def stop_node(self, name: str) -> None:
        rec = self.record(name)
        self.launcher.stop(rec, timeout=max(5.0, self.st.election_ms / 1000 * 4))
        rec.desired = "stopped"
        self.save()

    def kill_node(self, name: str) -> None:
        rec = self.record(name)
        if self.launcher.process(rec) is None:
            raise OrchestrateError(f"{name} is not running")
        self.launcher.kill(rec)
        rec.desired = "stopped"
        self.save()

    def pause_node(self, name: str) -> None:
        rec = self.record(name)
        if self.launcher.state(rec) != "running":
            raise OrchestrateError(f"{name} is not running")
        self.launcher.signal(rec, signal.SIGSTOP)
        rec.desired = "paused"
        self.save()

    def resume_node(self, name: str) -> None:
        rec = self.record(name)
        if self.launcher.state(rec) != "paused":
            raise OrchestrateError(f"{name} is not paused")
        self.launcher.signal(rec, signal.SIGCONT)
        rec.desired = "running"
        self.save()

    def restart_node(self, name: str) -> None:
        rec = self.record(name)
        if self.launcher.process(rec) is not None:
            self.launcher.stop(rec, timeout=max(5.0, self.st.election_ms / 1000 * 4))
        self.spawn(name)
        self.save()

    async def move_leader(self, target: str) -> str:
        view = await self.view(usage=False)
        if not view.leader:
            raise OrchestrateError("there is no leader to move")
        rec = self.record(target)
        if not rec.member_id:
            await self._record_member_ids()
        if target == view.leader:
            return target
        async with self.client(timeout=10.0) as c:
            try:
                await c.move_leader(self.st.nodes[view.leader].endpoint, int(self.st.nodes[target].member_id, 16))
            except ClientError as e:
                raise OrchestrateError(f"move-leader to {target} failed: {e}") from None
        return target

    # -- membership ---------------------------------------------------------------------------------
    async def add(self, name: str, voter: bool, timeout: float = 30.0) -> ClusterView:
        st = self.st
        if name in st.nodes and st.nodes[name].desired != "removed":
            raise OrchestrateError(f"{name} is already a member")
        idx = len(st.nodes)
        base_c = min(r.client_port for r in st.nodes.values())
        base_p = min(r.peer_port for r in st.nodes.values())
        first = next(iter(st.nodes.values()))
        used_c = {r.client_port for r in st.nodes.values()}
        used_p = {r.peer_port for r in st.nodes.values()}
        while base_c + idx in used_c or base_p + idx in used_p:
            idx += 1
        rec = NodeRecord(name, base_c + idx, base_p + idx, first.host, first.address)
        if name in st.nodes:
            shutil.rmtree(self.dir.data_dir(name), ignore_errors=True)
        st.nodes[name] = rec
        if st.extra.get("netns"):
            self._place_in_netns(st, name, idx)
            self.netns().add_host(idx)
        try:
            self.check_ports([name])
        except OrchestrateError:
            del st.nodes[name]
            raise
        members = self.st.live_names()
        async with self.client([n for n in members if n != name and self.launcher.state(st.nodes[n]) == "running"],
                               timeout=10.0) as c:  # fmt: skip
            try:
                resp = await c.member_add([rec.peer_url], learner=not voter)
            except ClientError as e:
                del st.nodes[name]
                raise OrchestrateError(f"member add {name} failed: {e}") from None
            rec.member_id = f"{resp.member.ID:x}"
            self.spawn(name, "existing", members)
            self.save()
            if not voter:
                await self._promote(c, name, resp.member.ID, timeout)
        await self.wait_caught_up(name, timeout)
        return await self.wait_ready(timeout)

    async def wait_caught_up(self, name: str, timeout: float) -> None:
        """Until the node answers and has applied what the leader had committed when we started."""
        deadline = time.monotonic() + timeout
        target = -1
        while time.monotonic() < deadline:
            view = await self.view(usage=False)
            lead = next((v for v in view.nodes if v.name == view.leader), None)
            me = next((v for v in view.nodes if v.name == name), None)
            if lead is not None and target < 0:
                target = lead.commit
            if me is not None and me.role and target >= 0 and me.applied >= target:
                return
            await asyncio.sleep(0.2)
        raise OrchestrateError(f"{name} did not catch up within {timeout:.0f}s; see `orchestrate logs {name}`")

    async def _promote(self, c: Client, name: str, mid: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                await c.member_promote(mid)
                return
            except ClientError as e:
                last = str(e)
                if "in sync" not in last and "not leader" not in last and "no leader" not in last:
                    raise OrchestrateError(f"promoting {name} failed: {e}") from None
            await asyncio.sleep(0.3)
        raise OrchestrateError(f"{name} did not catch up to be promoted within {timeout:.0f}s ({last})")

    async def remove(self, name: str, timeout: float = 30.0) -> ClusterView:
        rec = self.record(name)
        if not rec.member_id:
            await self._record_member_ids()
        if not rec.member_id:
            raise OrchestrateError(f"cannot find {name}'s member id; is the cluster up?")
        others = [n for n in self.st.live_names() if n != name and self.launcher.state(self.st.nodes[n]) == "running"]
        if not others:
            raise OrchestrateError("no other running member to ask")
        async with self.client(others, timeout=10.0) as c:
            try:
                await c.member_remove(int(rec.member_id, 16))
            except ClientError as e:
                raise OrchestrateError(f"member remove {name} failed: {e}") from None
        # a removed member exits on its own; make sure of it
        if not self.launcher.wait_gone(rec, 5.0):
            self.launcher.stop(rec)
        rec.desired = "removed"
        self.save()
        return await self.wait_ready(timeout)
