"""Manage one running cluster: up, down, status, node verbs and membership, for both engines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from node.client import Client, ClientError, ClientTLS, Reason
from node.secret import SecretError

from . import targets
from .config import ClusterConfig
from .engines import Engine, engine_for
from .launcher import LocalLauncher
from .netns import Netns, netns_identity
from .ports import free_ports
from .remote import RemoteError, RemoteLauncher
from .state import ClusterState, NetnsPlacement, NodeRecord, PrometheusRecord, StateDir
from .views import ClusterView, NodeView

__all__ = ["Cluster", "ClusterView", "NodeStartError", "NodeView", "OrchestrateError", "port_free"]


def _data_dir_owner(d: Path) -> tuple[str, str] | None:
    """(member name, cluster id in hex) from a builtin node's member.json; None if absent or unreadable."""
    try:
        meta = json.loads((d / "member.json").read_text())
        return str(meta["name"]), f"{int(meta['cluster_id']):x}"
    except (OSError, ValueError, KeyError, TypeError):
        return None


class OrchestrateError(Exception):
    """A user-facing failure; the message says what to do."""


# A remote cluster without ports.metrics: node i's metrics port is its peer port + this (the orchestrator
# cannot see which ports are free on another host).
REMOTE_METRICS_OFFSET = 1000
SCRAPE_TIMEOUT_S = 0.5  # status and the dashboard read each node's /metrics this long at most
SCRAPE_EVERY_S = 2.0  # a dashboard polling at 4 Hz re-reads the metrics this often (p99s move slowly)
# wait_ready's pause between views once every node answers: a leader is often known 0.06-0.2 s after
# the last node serves, and at 0.2 s `up` sat a median ~100 ms past it (bench/startup.py). While nodes
# still start, a view (~5 ms of the CLI's CPU) competes with their imports: poll those less often.
READY_POLL_S = 0.05
READY_POLL_STARTING_S = 0.15

Latencies = dict[str, tuple[float | None, float | None]]  # node -> (fsync p99 ms, peer RTT ms)


def _scrape_all(addrs: dict[str, str], timeout: float) -> Latencies:
    """Every node's fsync p99 and peer RTT from its /metrics at once, read and parsed in threads."""
    if not addrs:
        return {}
    from . import prometheus  # urllib and yaml: status and the dashboard need it, `up` does not

    def one(addr: str) -> tuple[float | None, float | None]:
        text = prometheus.scrape(addr, timeout)
        return prometheus.fsync_and_rtt_ms(text) if text else (None, None)

    with ThreadPoolExecutor(min(len(addrs), 16)) as pool:
        futures = {n: pool.submit(one, a) for n, a in addrs.items()}
    return {n: f.result() for n, f in futures.items()}


class NodeStartError(OrchestrateError):
    """A node that was started did not come to serve: exit status 1, with the end of its log."""


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
        self._launcher: LocalLauncher | RemoteLauncher | None = launcher
        self._st: ClusterState | None = None
        self.fresh = False  # create() made a new cluster (nothing of it existed before this up)
        self.removed: list[str] = []  # what the last down(purge=True) deleted
        self.kept: list[str] = []  # what it found in the cluster's directory but did not make, so left alone
        self._prom_launcher = LocalLauncher()  # Prometheus always runs here, even for a remote cluster
        self._latencies: Latencies = {}  # the last /metrics readings, reused for SCRAPE_EVERY_S
        self._kept: tuple[tuple[str, ...], Client] | None = None  # view(keep=True)'s client, by endpoints
        self._scraped_at = -1e9

    @property
    def launcher(self) -> LocalLauncher | RemoteLauncher:
        """Local processes, or (a cluster on remote hosts) SSH with one kept connection per host."""
        if self._launcher is None:
            st = self._st if self._st is not None else (self.dir.load() if self.dir.exists() else None)
            self._launcher = RemoteLauncher(st.hosts, st.name) if st is not None and st.remote else LocalLauncher()
        return self._launcher

    @launcher.setter
    def launcher(self, value: LocalLauncher | RemoteLauncher) -> None:
        self._launcher = value

    @property
    def remote(self) -> RemoteLauncher | None:
        """The SSH launcher of a cluster on remote hosts; None for local nodes."""
        return self.launcher if isinstance(self.launcher, RemoteLauncher) else None

    def close(self) -> None:
        """Close the SSH connections (a no-op for local nodes)."""
        if self.remote is not None:
            self.remote.close()

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
            roles = "/".join(targets.NODE_TARGETS)
            raise OrchestrateError(f"unknown node {name!r}; this cluster has {known} (or say {roles})")
        return rec

    @property
    def engine(self) -> Engine:
        return engine_for(self.st.engine)

    @property
    def secret(self) -> bytes | None:
        """The cluster secret Admin calls prove themselves with (None: the cluster has none)."""
        try:
            return self.dir.secret()
        except SecretError as e:
            raise OrchestrateError(str(e)) from None

    @property
    def tls(self) -> ClientTLS | None:
        """What clients connect with: the cluster's CA and the orchestrator's certificate (None: plaintext)."""
        if not self.st.tls:
            return None
        if not self.dir.pki.exists():
            raise OrchestrateError(
                f"cluster {self.name!r} uses TLS but its CA ({self.dir.pki.ca_cert}) is gone; "
                "`orchestrate down --purge` and up again"
            )
        try:
            return self.dir.client_tls()
        except OSError as e:
            raise OrchestrateError(f"cannot read the cluster's TLS files: {e.strerror or e}: {e.filename}") from None

    def client(self, names: list[str] | None = None, timeout: float = 3.0) -> Client:
        names = names or self.st.live_names()
        return Client([self.st.nodes[n].endpoint for n in names], timeout=timeout, secret=self.secret, tls=self.tls)

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
            old.prometheus = old.prometheus or cfg.prometheus
            self._st = old
            self.fresh = False
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
            compaction_mode=cfg.compaction_mode,
            compaction_retention=cfg.retention,
            quota_backend_bytes=cfg.quota_backend_bytes,
            fault_injection=cfg.fault_injection,
            tls=cfg.tls,
            hosts={h.name: h for h in cfg.hosts if h.remote},
            metrics_port=cfg.metrics_port,
            prometheus=cfg.prometheus,
        )
        if st.remote and self._launcher is None:
            self._launcher = RemoteLauncher(st.hosts, st.name)
        for name in cfg.nodes:
            host = cfg.host_of(name)
            st.nodes[name] = NodeRecord(
                name,
                cfg.client_port_of(name),
                cfg.peer_port_of(name),
                host.name,
                host.address,
                tls=cfg.tls,
                metrics_port=cfg.metrics_port_of(name),
            )
        if cfg.network == "netns":
            tag, subnet = netns_identity(self.dir.path)
            st.netns = NetnsPlacement(tag, subnet)
            for i, name in enumerate(cfg.nodes):
                self._place_in_netns(st, name, i)
        self._st = st
        self.fresh = True

    def _assign_metrics_ports(self, names: list[str]) -> None:
        """A metrics port for each named node without one: ports.metrics + its index, a port reserved here
        (held by this process until the node binds it), or on a remote host its peer port + 1000."""
        st = self.st
        need = [n for n in names if not st.nodes[n].metrics_port]
        if not need:
            return
        if st.metrics_port:
            used = {r.metrics_port for r in st.nodes.values()}
            for n in need:
                port = st.metrics_port + list(st.nodes).index(n)
                while port in used:
                    port += 1
                st.nodes[n].metrics_port = port
                used.add(port)
        elif st.remote:
            for n in need:
                st.nodes[n].metrics_port = st.nodes[n].peer_port + REMOTE_METRICS_OFFSET
        else:
            try:
                ports = free_ports(len(need))
            except RuntimeError as e:
                raise OrchestrateError(f"no free metrics port: {e}") from None
            for n, port in zip(need, ports, strict=True):
                st.nodes[n].metrics_port = port

    def check_data_dirs(self, names: list[str]) -> None:
        """Refuse, before anything starts, a data dir that belongs to another cluster or member."""
        st = self.st
        for n in names:
            d = self.dir.data_dir(n)
            if st.remote or not d.is_dir() or not any(d.iterdir()):
                continue
            fix = (
                f"remove it (`rm -r {d}`, or `orchestrate --root {self.dir.root} --name {self.name} down --purge` "
                "for the whole cluster) or start this cluster under another --name or --root"
            )
            owner = _data_dir_owner(d)
            if self.fresh:
                whose = (
                    f"member {owner[0]!r} of cluster {owner[1]}"
                    if owner
                    else "an earlier cluster" + (" (etcd data)" if (d / "member").exists() else "")
                )
                raise OrchestrateError(
                    f"data dir {d} already holds data of {whose}, but {self.name!r} is a new cluster; {fix}"
                )
            if owner is None:
                continue  # etcd's data, or unreadable metadata: the node checks it, and up verifies the cluster id
            if owner[0] != n:
                raise OrchestrateError(f"data dir {d} belongs to member {owner[0]!r}, not {n!r}; {fix}")
            if st.cluster_id and owner[1] != st.cluster_id:
                raise OrchestrateError(
                    f"data dir {d} belongs to cluster {owner[1]}, but cluster {self.name!r} is {st.cluster_id}; {fix}"
                )

    def netns(self) -> Netns | None:
        """This cluster's namespace layout; None unless it runs with --net netns."""
        return self._netns(self.st)

    @staticmethod
    def _netns(st: ClusterState) -> Netns | None:
        return Netns(st.netns.tag, st.netns.subnet) if st.netns else None

    def _place_in_netns(self, st: ClusterState, name: str, index: int) -> None:
        nn = self._netns(st)
        assert nn is not None, "placed in a namespace only with --net netns"
        rec = st.nodes[name]
        rec.address, rec.netns = nn.address(index), nn.ns(index)

    def check_ports(self, names: list[str]) -> None:
        busy = []
        for n in names:
            r = self.st.nodes[n]
            if r.netns or self.st.remote:
                continue  # a fresh namespace of its own: nothing else listens there
            for kind, port in (("client", r.client_port), ("peer", r.peer_port), ("metrics", r.metrics_port)):
                if port and not port_free(r.address, port):
                    busy.append(f"{n} {kind} port {r.address}:{port}")
        if busy:
            raise OrchestrateError(
                "ports already in use: " + "; ".join(busy) + ". Another cluster or program is listening there; "
                "stop it, or pick other ports (ports.client / ports.peer / ports.metrics in cluster.yaml, or "
                "--client-port / --peer-port / --metrics-port)"
            )

    def spawn(self, name: str, cluster_state: str = "new", members: list[str] | None = None) -> None:
        st = self.st
        rec = st.nodes[name]
        data = self.dir.data_dir(name)  # on a restart both engines ignore cluster_state: the data decides
        python = st.host_python.get(rec.host, "python3") if st.remote else sys.executable
        cmd = self.engine.command(st, rec, data, cluster_state, members or st.live_names(), python)
        if st.remote and self.engine.name == "etcd":
            cmd[0] = "etcd"  # the host's own, checked by the deploy
        # a new cluster gets a secret; one made before secrets existed keeps running without, so a
        # restarted member never cuts itself off from members still running without it
        if self.engine.peer_auth and (self.fresh or self.dir.secret_file.exists()):
            cmd += ["--peer-auth-file", str(self.dir.ensure_secret())]
        if st.tls:
            try:
                self.dir.ensure()
                cmd += self.engine.tls_flags(st, rec, self.dir.pki)
            except OSError as e:
                raise OrchestrateError(f"cannot make {name}'s certificate: {e.strerror or e}: {e.filename}") from None
            except ValueError as e:  # a name the PKI refuses (the Admin certificate's CN)
                raise OrchestrateError(str(e)) from None
        # the node runs in its own data dir with absolute paths: never in the repo or the user's cwd
        try:
            if isinstance(self.launcher, RemoteLauncher):
                rec.pid, rec.create_time = self.launcher.start(cmd, self.dir.log_file(name), data, rec=rec)
            else:
                rec.pid, rec.create_time = self.launcher.start(cmd, self.dir.log_file(name), data, rec.netns)
        except RemoteError as e:
            raise OrchestrateError(str(e)) from None
        except OSError as e:
            raise OrchestrateError(f"cannot start {name}: {e.strerror or e}: {e.filename or data}") from None
        rec.desired = "running"

    async def up(self, timeout: float, progress: Callable[[str], None] | None = None) -> ClusterView:
        """Start every member and wait until they are the voters of one cluster that takes writes on
        every client port; if that fails, stop what was started (a new cluster's data goes too)."""
        names = self.st.live_names()
        started: list[str] = []
        try:
            if self.st.prometheus:
                self._prometheus_binary()  # before any node starts: a missing binary is one clear line
            self._assign_metrics_ports(names)
            self.check_data_dirs(names)
            nn = self.netns()
            if nn is not None:
                nn.create(len(self.st.nodes))
            if self.st.remote:
                self.deploy(progress)
            self.check_ports(names)
            for n in names:
                self.spawn(n)
                started.append(n)
            self.save()
            view = await self.wait_ready(timeout, progress, every_node=True)
            if self.st.prometheus:
                await self.start_prometheus(progress)
            self.fresh = False  # its members now own their data dirs: later starts check ids, not emptiness
            return view
        except BaseException as e:
            note = self._undo_up(started)
            if isinstance(e, OrchestrateError) and note:
                raise OrchestrateError(f"{e}\n{note}") from None
            raise

    def deploy(self, progress: Callable[[str], None] | None = None) -> None:
        """Install quorumlab on every host in parallel (warm hosts are skipped) and record each one's python."""
        from .remote_deploy import deploy

        rl = self.remote
        assert rl is not None
        say = progress or (lambda s: None)
        hosts = sorted({self.st.nodes[n].host for n in self.st.live_names()})
        say(f"deploying to {', '.join(hosts)}")

        def one(h: str) -> tuple[str, bool]:
            return deploy(rl.conn(h), self.st.engine)

        with ThreadPoolExecutor(len(hosts)) as pool:
            futures = {h: pool.submit(one, h) for h in hosts}
        errors = []
        for h, f in futures.items():
            try:
                self.st.host_python[h], installed = f.result()
                say(f"{h}: {'installed quorumlab' if installed else 'quorumlab already there'}")
            except RemoteError as e:
                errors.append(str(e))
        if errors:
            raise OrchestrateError("\n".join(errors))
        self.save()

    def _undo_up(self, started: list[str]) -> str:
        """After a failed up: stop the nodes it started; a new cluster leaves only its logs."""
        st = self.st
        self.stop_prometheus()
        stopped = []
        for n in started:
            rec = st.nodes[n]
            if self.launcher.process(rec) is not None:
                self.launcher.stop(rec, timeout=5.0)
                stopped.append(n)
            rec.desired = "stopped"
        what = f"stopped {', '.join(stopped)}" if stopped else "no node was left running"
        if not self.fresh:
            self.save()
            return f"{what}; the cluster's data is kept (`orchestrate down --purge` removes it)"
        nn = self.netns()
        if nn is not None:
            nn.destroy()
        if st.remote and started:
            with contextlib.suppress(OrchestrateError):
                self._remote_cleanup(purge=True)
        for n in started:
            shutil.rmtree(self.dir.data_dir(n), ignore_errors=True)
        self.dir.file.unlink(missing_ok=True)
        self.dir.secret_file.unlink(missing_ok=True)
        self.dir.remove_tls()
        self.dir.remove_prometheus()
        self.dir.remove_if_empty()
        self._st = None
        logs = self.dir.path / "logs"
        if not started:
            return ""
        purge = f"orchestrate --root {self.dir.root} --name {self.name} down --purge"
        kept = f"; its logs are kept in {logs} (`{purge}` removes them)" if logs.is_dir() else ""
        return f"{what} and removed the new cluster's state and data{kept}"

    async def wait_ready(
        self, timeout: float, progress: Callable[[str], None] | None = None, every_node: bool = False
    ) -> ClusterView:
        """Wait until a leader is elected and a write succeeds; on timeout explain what is missing.

        every_node (up): also every configured member must answer as a voter of one cluster (one
        cluster id, the leader's voters = the state file's) and take a write on its own client port.
        """
        deadline = time.monotonic() + timeout
        say = progress or (lambda s: None)
        view: ClusterView | None = None
        missing = ""
        while time.monotonic() < deadline:
            view = await self.view(usage=False)
            dead = [v.name for v in view.nodes if v.state == "stopped"]
            if dead and (every_node or len(dead) == len(view.nodes)):
                missing = f"{', '.join(dead)} exited"
                break
            self._check_one_cluster(view)
            up = sum(1 for v in view.nodes if v.role)
            if not view.leader:
                missing = f"no leader: {up}/{len(view.nodes)} nodes answering"
                say(f"waiting for a leader: {up}/{len(view.nodes)} nodes answering")
            elif every_node and (why := self._not_all_voters(view)):
                missing = why
                say(f"leader {view.leader} elected (term {view.term}); waiting: {why}")
            else:
                say(f"leader {view.leader} elected (term {view.term}); waiting for a write to commit")
                try:
                    targets = [v.name for v in view.nodes] if every_node else [""]
                    for n in targets:
                        async with self.client([n] if n else None, timeout=2.0) as c:
                            await c.put("quorumlab/up", str(time.time()))
                    await self._record_member_ids(view)
                    return await self.view(usage=False)
                except ClientError as e:
                    missing = f"a write through {e.endpoint or 'the cluster'} failed: {e}"
                    say(f"write not yet accepted: {e}")
            # nodes still starting are importing on the same cores: polling them fast only slows them
            await asyncio.sleep(READY_POLL_S if up == len(view.nodes) else READY_POLL_STARTING_S)
        raise OrchestrateError(self.diagnose(view, timeout, missing))

    def _check_one_cluster(self, view: ClusterView) -> None:
        """Members answering with different cluster ids never converge: say so now, naming the data dirs."""
        ids = {v.name: v.cluster_id for v in view.nodes if v.cluster_id}
        expect = self.st.cluster_id
        if not expect:
            counts: dict[str, int] = {}
            for cid in ids.values():
                counts[cid] = counts.get(cid, 0) + 1
            if len(counts) <= 1:
                return
            expect = max(counts, key=lambda k: counts[k])
        odd = sorted(n for n, cid in ids.items() if cid != expect)
        if odd:
            dirs = ", ".join(f"{n}: cluster {ids[n]} ({self.dir.data_dir(n)})" for n in odd)
            raise OrchestrateError(
                f"members of another cluster answered: {dirs}; cluster {self.name!r} is {expect}. Their data dirs "
                f"belong to another cluster: `orchestrate down --purge` and up again, or remove those dirs"
            )

    def _not_all_voters(self, view: ClusterView) -> str:
        want = set(self.st.voter_names())
        silent = [v.name for v in view.nodes if v.name in want and not v.role]
        if silent:
            return f"{', '.join(silent)} not answering yet"
        have = set(view.leader_voters)
        if have != want:
            extra = sorted(have - want)
            lacking = sorted(want - have)
            return (
                "the leader's voters are "
                + ", ".join(sorted(have))
                + (f" (missing {', '.join(lacking)})" if lacking else "")
                + (f" (not configured: {', '.join(extra)})" if extra else "")
            )
        return ""

    def diagnose(self, view: ClusterView | None, timeout: float, missing: str = "") -> str:
        lines = [
            f"cluster {self.name!r} did not become ready within {timeout:g}s" + (f" ({missing})" if missing else "")
        ]
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
        if self.remote is not None:
            try:
                return self.remote.log_tail(self.st.nodes[name], n)
            except RemoteError as e:
                return [f"(cannot read the log over SSH: {e})"]
        p = self.dir.log_file(name)
        if not p.exists():
            return []
        return p.read_text(errors="replace").splitlines()[-n:]

    async def _record_member_ids(self, view: ClusterView | None = None) -> None:
        if view is not None and not self.st.cluster_id:
            ids = {v.cluster_id for v in view.nodes if v.cluster_id}
            if len(ids) == 1:
                self.st.cluster_id = ids.pop()
        with contextlib.suppress(ClientError):
            async with self.client(timeout=2.0) as c:
                ml = await c.members()
            for m in ml.members:
                if m.name in self.st.nodes:
                    self.st.nodes[m.name].member_id = f"{m.ID:x}"
            if not self.st.cluster_id and ml.header.cluster_id:
                self.st.cluster_id = f"{ml.header.cluster_id:x}"
        self.save()

    def down(self, purge: bool) -> list[str]:
        """Stop every node; with purge remove exactly what the cluster made (listed in self.removed;
        anything else found in its directory is left alone and listed in self.kept)."""
        self.removed, self.kept = [], []
        if not self.dir.exists():
            if purge and self.dir.path.is_dir():  # what a failed up or a crash left (logs, data)
                if not self.dir.looks_like_cluster():
                    raise OrchestrateError(
                        f"{self.dir.path} is not a cluster's directory (no state.json, no node data, no node "
                        "logs): nothing removed; check --root and --name"
                    )
                self._purge(set(), made_root=False)
                return []
            self.st  # noqa: B018 - raises the "no cluster named" error
        self.reload()  # pids may have changed since we read the state (a restart elsewhere)
        stopped = []
        for n in self.st.live_names():
            rec = self.st.nodes[n]
            if self.launcher.process(rec) is not None:
                self.launcher.stop(rec, timeout=max(5.0, self.st.election_ms / 1000 * 4))
                stopped.append(n)
            rec.desired = "stopped"
        if self.stop_prometheus():
            stopped.append("prometheus")
        nn = self.netns()
        if nn is not None:
            self.removed += [f"network namespace or bridge {x} (and its rules)" for x in nn.destroy()]
        if self.st.remote:
            self.removed += self._remote_cleanup(purge)
        if purge:
            self._purge(set(self.st.nodes), made_root=self.st.made_root)
            self._st = None
        else:
            self.save()
        return stopped

    def _remote_cleanup(self, purge: bool) -> list[str]:
        """Remove our iptables chain from every host that may hold it, and (purge) the cluster's files there."""
        from . import remote_fw

        rl = self.remote
        assert rl is not None
        st = self.st
        done: list[str] = []
        chain = remote_fw.chain_name(st)
        errors = []
        for h in sorted(set(st.fw_hosts)):
            try:
                remote_fw.remove(rl.conn(h), chain)
                done.append(f"iptables chain {chain} on {h}")
            except RemoteError as e:
                errors.append(str(e))
        st.fw_hosts = [h for h in st.fw_hosts if any(h in e for e in errors)]
        if purge:
            for h in sorted({st.nodes[n].host for n in st.nodes}):
                try:
                    done.append(f"{rl.purge(h, list(st.nodes))} (data, logs, pid files, secrets)")
                except RemoteError as e:
                    errors.append(str(e))
        if errors:
            raise OrchestrateError("; ".join(errors))
        return done

    def follow_log(self, name: str) -> Iterator[str]:
        """New lines of a node's log as they are written (over SSH for a remote node)."""
        if self.remote is not None:
            return self.remote.follow(self.st.nodes[name])
        return _follow_file(self.dir.log_file(name))

    def _purge(self, nodes: set[str], made_root: bool) -> None:
        what, kept = self.dir.purge(nodes, made_root)
        path = self.dir.path
        self.removed.insert(0, f"{path} ({what})" if not path.exists() else f"from {path}: {what}")
        if made_root and not self.dir.root.exists():
            self.removed.insert(1, f"{self.dir.root} (made by this cluster's up, now empty)")
        self.kept = [str(k) for k in kept]

    # -- status ------------------------------------------------------------------------------------
    async def _poll_client(self, timeout: float) -> Client:
        """One client kept across views (the dashboard polls every second): new channels to every
        node on each poll cost more than the status calls themselves. Remade when the members change."""
        eps = tuple(self.st.nodes[n].endpoint for n in self.st.live_names())
        if self._kept is not None and self._kept[0] != eps:
            await self._kept[1].close()
            self._kept = None
        if self._kept is None:
            self._kept = (eps, self.client(timeout=timeout))
        self._kept[1].timeout = timeout
        return self._kept[1]

    async def aclose(self) -> None:
        """Close the kept client (see view(keep=True)) and the SSH connections."""
        if self._kept is not None:
            await self._kept[1].close()
            self._kept = None
        self.close()

    async def view(self, usage: bool = True, timeout: float = 1.0, keep: bool = False) -> ClusterView:
        """Every member's state. keep: reuse one client across calls (close it with aclose())."""
        st = self.st
        names = st.live_names()
        ids = {r.member_id: n for n, r in st.nodes.items() if r.member_id}
        if usage and self.remote is None:  # psutil measures CPU between two calls: prime now, read after the queries
            for n in names:
                self.launcher.usage(st.nodes[n])
        t0 = time.monotonic()
        # process states first (over SSH: one probe per host, in a thread), so no RPC deadline runs
        # while an SSH command blocks, and the dashboard's event loop never waits on the network
        if self.remote is not None:
            states = await asyncio.to_thread(lambda: {n: self.launcher.state(st.nodes[n]) for n in names})
        else:
            states = {n: self.launcher.state(st.nodes[n]) for n in names}
        # each running node's /metrics, read in threads beside the status calls (never on the loop)
        addrs = {n: st.nodes[n].metrics_addr for n in names if states[n] == "running" and st.nodes[n].metrics_port}
        fresh = usage and time.monotonic() - self._scraped_at >= SCRAPE_EVERY_S
        scraping = asyncio.ensure_future(asyncio.to_thread(_scrape_all, addrs, SCRAPE_TIMEOUT_S)) if fresh else None
        try:
            if keep:
                c = await self._poll_client(timeout)
                views = await asyncio.gather(*(self._node_view(c, n, ids, states[n]) for n in names))
            else:
                async with self.client(timeout=timeout) as c:
                    views = await asyncio.gather(*(self._node_view(c, n, ids, states[n]) for n in names))
        finally:
            if scraping is not None:
                self._latencies, self._scraped_at = await scraping, time.monotonic()
        if usage:
            for v in views:
                if v.name in addrs and v.name in self._latencies:
                    v.fsync_p99_ms, v.peer_rtt_ms = self._latencies[v.name]
        if usage and self.remote is not None:  # CPU since the last poll: a probe over SSH, so in a thread
            up = [v.name for v in views if v.state != "stopped"]
            got = await asyncio.to_thread(lambda: {n: self.launcher.usage(st.nodes[n]) for n in up})
            for v in views:
                if v.name in got:
                    v.cpu, v.rss = got[v.name]
        elif usage:
            await asyncio.sleep(max(0.0, 0.25 - (time.monotonic() - t0)))
            for v in views:
                if v.state != "stopped":
                    v.cpu, v.rss = self.launcher.usage(st.nodes[v.name])
        leader_views = [v for v in views if v.role == "leader"]
        leader = max(leader_views, key=lambda v: v.term).name if leader_views else ""
        term = max((v.term for v in views), default=0)
        if not self.engine.reports_membership and any(v.role for v in views):
            await self._member_list(views, timeout)
        src = next((v for v in views if v.name == leader), None) or next((v for v in views if v.voters), None)
        reported: list[str] = list(src.voters or []) if src is not None else []
        for v in views:
            v.learner = v.learner or bool(src and v.name in (src.learners or []))
        voters = st.voter_names()
        warnings = self._disagreements(views, voters, leader, reported)
        cv = ClusterView(st.name, st.engine, views, voters, leader, term, reported, warnings)
        cv.prometheus_url = st.prom.url if st.prom is not None else ""
        return cv

    async def _member_list(self, views: list[NodeView], timeout: float) -> None:
        """An engine whose status has no voter list (real etcd): ask for the member list once."""
        try:
            async with self.client([v.name for v in views if v.role], timeout=timeout) as c:
                ml = await c.members()
        except ClientError:
            return
        by_id = {r.member_id: n for n, r in self.st.nodes.items() if r.member_id}
        voters = [m.name or by_id.get(f"{m.ID:x}", f"{m.ID:x}") for m in ml.members if not m.isLearner]
        learners = [m.name or by_id.get(f"{m.ID:x}", f"{m.ID:x}") for m in ml.members if m.isLearner]
        for v in views:
            if v.role:
                v.voters, v.learners = voters, learners

    def _disagreements(self, views: list[NodeView], voters: list[str], leader: str, reported: list[str]) -> list[str]:
        """What the nodes say that the state file does not: another cluster id, another membership."""
        st = self.st
        configured = set(st.live_names())
        warnings = []
        for v in views:
            if v.cluster_id and st.cluster_id and v.cluster_id != st.cluster_id:
                v.problem = f"cluster {v.cluster_id}, not {st.cluster_id}"
                warnings.append(
                    f"{v.name} answers as a member of cluster {v.cluster_id}, but the state file says "
                    f"{st.cluster_id}: its data dir {self.dir.data_dir(v.name)} belongs to another cluster"
                )
                continue
            if v.voters and self.engine.reports_membership:
                seen = set(v.voters) | set(v.learners or [])
                if seen != configured:
                    v.problem = "members " + ",".join(sorted(seen))
                    warnings.append(
                        f"{v.name} sees members {', '.join(sorted(seen))}; the state file has "
                        f"{', '.join(sorted(configured))}"
                    )
        if leader and reported and set(reported) != set(voters):
            warnings.append(
                f"the leader {leader} counts voters {', '.join(sorted(reported))}, the state file "
                f"{', '.join(sorted(voters))}: the quorum line uses the state file's {len(voters)}"
            )
        return warnings

    async def _node_view(self, c: Client, name: str, ids: dict[str, str], state: str) -> NodeView:
        rec = self.st.nodes[name]
        v = NodeView(
            name,
            state,
            pid=rec.pid if state != "stopped" else 0,
            client_url=rec.client_url,
            member_id=rec.member_id,
            metrics_url=rec.metrics_url,
        )
        if state != "running":
            return v
        try:
            await self.engine.status(c, rec, v, ids)
        except ClientError as e:
            v.state = "unreachable"
            v.error = str(e)
        return v

    # -- node verbs --------------------------------------------------------------------------------
    async def resolve(self, target: str) -> str:
        """A node's name, or the one node a role (leader, follower, random) means right now."""
        names = self.st.live_names()
        if target not in names and target not in targets.NODE_TARGETS:
            self.record(target)  # raises: unknown node
        try:
            (name,) = await targets.resolve(target, names, lambda: self.view(usage=False), targets.NODE_TARGETS)
        except targets.TargetError as e:
            raise OrchestrateError(str(e)) from None
        return name

    def start_node(self, name: str) -> None:
        rec = self.record(name)
        state = self.launcher.state(rec)
        if state == "paused":
            raise OrchestrateError(f"{name} is paused; `orchestrate resume {name}`")
        if state == "running":
            raise OrchestrateError(f"{name} is already running (pid {rec.pid})")
        self.check_ports([name])
        self.check_data_dirs([name])
        self.spawn(name)
        self.save()

    async def wait_serving(self, name: str, timeout: float, progress: Callable[[str], None] | None = None) -> float:
        """Until the node answers on its client port (it replays its WAL first); seconds it took.

        A node that exits meanwhile, or is still silent at the timeout, is a NodeStartError
        carrying the last lines of its log.
        """
        say = progress or (lambda s: None)
        rec = self.record(name)
        t0 = time.monotonic()
        deadline = t0 + timeout
        async with Client([rec.endpoint], timeout=1.0, secret=self.secret, tls=self.tls) as c:
            while True:
                if self.launcher.process(rec) is None:
                    code = self.launcher.exit_code(rec)
                    how = f" with status {code}" if code is not None else ""
                    raise NodeStartError(self._start_failure(name, f"{name} exited{how} instead of serving"))
                try:
                    await self.engine.ping(c, rec)
                    return time.monotonic() - t0
                except ClientError:
                    pass
                waited = time.monotonic() - t0
                if time.monotonic() >= deadline:
                    raise NodeStartError(
                        self._start_failure(
                            name,
                            f"{name} (pid {rec.pid}) is not serving after {waited:.0f}s; it is left running "
                            f"(`orchestrate stop {name}` stops it)",
                        )
                    )
                last = next((ln for ln in reversed(self._this_run_log(name)) if ln.strip()), "")
                said = f": {last[-100:]}" if last else ""
                say(f"{name} starting (pid {rec.pid}, {waited:.0f}s; replaying its WAL){said}")
                await asyncio.sleep(0.2)

    def _start_failure(self, name: str, what: str) -> str:
        tail = [ln for ln in self._this_run_log(name) if ln.strip()][-8:]
        lines = [f"{what}; last lines of {self.dir.log_file(name)}:"]
        return "\n".join(lines + ([f"    {t}" for t in tail] or ["    (nothing logged)"]))

    def _this_run_log(self, name: str) -> list[str]:
        """The log lines since the launcher's last '=== … starting:' marker (this start only)."""
        lines = self.log_tail(name, 200)
        marks = [i for i, ln in enumerate(lines) if ln.startswith("=== ")]
        return lines[marks[-1] + 1 :] if marks else lines

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
        rec = NodeRecord(name, base_c + idx, base_p + idx, first.host, first.address, learner=not voter, tls=st.tls)
        if name in st.nodes:
            shutil.rmtree(self.dir.data_dir(name), ignore_errors=True)
        st.nodes[name] = rec
        self._assign_metrics_ports([name])
        nn = self.netns()
        if nn is not None:
            self._place_in_netns(st, name, idx)
            nn.add_host(idx)
        try:
            self.check_ports([name])
        except OrchestrateError:
            del st.nodes[name]
            raise
        members = self.st.live_names()
        async with self.client(
            [n for n in members if n != name and self.launcher.state(st.nodes[n]) == "running"], timeout=10.0
        ) as c:
            try:
                resp = await c.member_add([rec.peer_url], learner=not voter)
            except ClientError as e:
                del st.nodes[name]
                raise OrchestrateError(f"member add {name} failed: {e}") from None
            rec.member_id = f"{resp.member.ID:x}"
            self.spawn(name, "existing", members)
            self.save()
            await self.reload_prometheus()
            if not voter:
                await self._promote(c, name, resp.member.ID, timeout)
                rec.learner = False
                self.save()
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
                if e.reason not in (Reason.LEARNER_NOT_READY, Reason.NOT_LEADER, Reason.NO_LEADER):
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
        await self.reload_prometheus()
        return await self.wait_ready(timeout)

    # -- Prometheus -----------------------------------------------------------------------------------
    @staticmethod
    def _prometheus_binary() -> str:
        from . import prometheus

        try:
            return prometheus.binary()
        except prometheus.PrometheusError as e:
            raise OrchestrateError(str(e)) from None

    def _prom_rec(self) -> NodeRecord | None:
        """The recorded Prometheus as the launcher sees a process (pid + start time)."""
        p = self.st.prom
        return None if p is None else NodeRecord("prometheus", p.port, 0, pid=p.pid, create_time=p.create_time)

    def prometheus_running(self) -> bool:
        rec = self._prom_rec()
        return rec is not None and self._prom_launcher.process(rec) is not None

    def _write_scrape_config(self) -> None:
        """Every live node's metrics address (the hosts' addresses for a remote cluster), written atomically."""
        from . import prometheus

        st = self.st
        targets_ = {n: st.nodes[n].metrics_addr for n in st.live_names() if st.nodes[n].metrics_port}
        d = self.dir.prom_dir
        tmp = d / "prometheus.yml.tmp"
        prometheus.write_config(tmp, st.name, targets_)
        tmp.replace(d / "prometheus.yml")

    async def start_prometheus(self, progress: Callable[[str], None] | None = None) -> str:
        """Start Prometheus on a free 127.0.0.1 port with data in the state dir (or reload a running one)."""
        from . import prometheus

        say = progress or (lambda s: None)
        st = self.st
        if st.prom is not None and self.prometheus_running():
            await self.reload_prometheus()
            return st.prom.url
        self._prometheus_binary()
        d = self.dir.prom_dir
        d.mkdir(parents=True, exist_ok=True)
        self._write_scrape_config()
        try:
            (port,) = free_ports(1)
        except RuntimeError as e:
            raise OrchestrateError(f"no free port for Prometheus: {e}") from None
        cmd = prometheus.command(d / "prometheus.yml", d / "data", f"127.0.0.1:{port}")
        try:
            pid, ct = self._prom_launcher.start(cmd, d / "prometheus.log", d)
        except OSError as e:
            raise OrchestrateError(f"cannot start Prometheus: {e.strerror or e}") from None
        st.prom = PrometheusRecord(port, pid, ct)
        self.save()
        say(f"prometheus starting at {st.prom.url}")
        deadline = time.monotonic() + prometheus.READY_TIMEOUT_S
        while not await asyncio.to_thread(prometheus.ready, st.prom.url):
            if not self.prometheus_running() or time.monotonic() >= deadline:
                tail = (d / "prometheus.log").read_text(errors="replace").splitlines()[-5:]
                what = "exited" if not self.prometheus_running() else "is not ready"
                self.stop_prometheus()
                raise OrchestrateError(
                    f"Prometheus {what} (log {d / 'prometheus.log'}):\n" + "\n".join(f"    {t}" for t in tail)
                )
            await asyncio.sleep(0.2)
        return st.prom.url

    async def reload_prometheus(self) -> None:
        """After add/remove: rewrite the scrape config and SIGHUP Prometheus so it scrapes the new members."""
        rec = self._prom_rec()
        if rec is None or not self.prometheus_running():
            return
        self._write_scrape_config()
        self._prom_launcher.signal(rec, signal.SIGHUP)

    def stop_prometheus(self) -> bool:
        """Stop the cluster's Prometheus (its data stays until a purge); True if one was running."""
        rec = self._prom_rec()
        if rec is None:
            return False
        was = self._prom_launcher.process(rec) is not None
        if was:
            self._prom_launcher.stop(rec, timeout=10.0)
        self.st.prom = None
        return was


def _follow_file(path: Path) -> Iterator[str]:
    with open(path, errors="replace") as f:
        f.seek(0, 2)
        while True:
            line = f.readline()
            if line:
                yield line
            else:
                time.sleep(0.2)
