"""Nodes on remote hosts over SSH: three network namespaces with their own sshd stand in for machines.

One cold deploy per module (wheel + wheelhouse into a venv on each host), then warm ups. Every verb
goes through the real `orchestrate` CLI; writes and reads go through the client API with the
cluster's TLS, as a user's would. Needs root (namespaces, sshd, iptables): conftest turns a skip
into a failure there.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from node.client import ClientError
from orchestrator import remote_fw
from orchestrator.cluster import Cluster
from orchestrator.ports import port_block
from orchestrator.remote import RemoteLauncher
from orchestrator.remote_deploy import CACHE_ENV, source_hash
from orchestrator.state import NodeRecord
from orchestrator.views import ClusterView
from tests.sshhosts import SshHosts, sshd_missing

why = sshd_missing()
pytestmark = pytest.mark.skipif(why is not None, reason=why or "")

TRANSCRIPT: list[str] = []


@dataclass
class Lab:
    hosts: SshHosts
    dir: Path
    cold_s: float = 0.0
    warm_s: float = 0.0

    def yaml(self, name: str, engine: str = "builtin") -> Path:
        c, p = port_block(8), port_block(8)
        text = (
            f"name: {name}\nnodes: 3\nengine: {engine}\nports:\n  client: {c}\n  peer: {p}\n"
            "timeouts:\n  heartbeat_ms: 50\n  election_ms: 500\n" + self.hosts.yaml_hosts()
        )
        path = self.dir / f"{name}.yaml"
        path.write_text(text)
        return path

    def orch(self, cfg: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "orchestrator", "--root", str(self.dir / "root"), "--config", str(cfg), *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.dir)
        TRANSCRIPT.append(f"$ orchestrate {' '.join(args)}   (exit {r.returncode})\n{r.stdout}{r.stderr}")
        return r

    def cluster(self, name: str) -> Cluster:
        return Cluster(self.dir / "root", name)


def view(c: Cluster) -> ClusterView:
    c.reload()
    return asyncio.run(c.view(usage=False))


def wait_leader(c: Cluster, among: list[str], timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = view(c)
        if v.leader in among:
            return v.leader
        time.sleep(0.3)
    raise AssertionError(f"no leader among {among} within {timeout}s: {view(c)}")


def put(c: Cluster, names: list[str], key: str, timeout: float = 2.0) -> None:
    async def go() -> None:
        async with c.client(names, timeout=timeout) as cl:
            await cl.put(key, "v")

    asyncio.run(go())


def put_soon(c: Cluster, names: list[str], key: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            put(c, names, key)
            return
        except ClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def chain_rules(lab: Lab, c: Cluster, host_index: int) -> list[str]:
    ns = lab.hosts.hosts[host_index].ns
    chain = remote_fw.chain_name(c.st)
    r = subprocess.run(["ip", "netns", "exec", ns, "iptables", "-S", chain], capture_output=True, text=True)
    return [ln for ln in r.stdout.splitlines() if ln.startswith("-A")] if r.returncode == 0 else ["(no chain)"]


def node_procs(lab: Lab) -> dict[str, list[str]]:
    """Command lines of everything but sshd running in each host's namespace."""
    out = {}
    for h in lab.hosts.hosts:
        cmds = []
        for pid in lab.hosts.pids_in(h):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "sshd" not in cmd:
                cmds.append(cmd)
        out[h.name] = cmds
    return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    d = tmp_path_factory.mktemp("ssh")
    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(d / "deploy-cache")  # this run's wheels and wheelhouse, never the user's cache
    hosts = SshHosts(3).start()
    try:
        yield Lab(hosts, d)
    finally:
        hosts.close()
        if old is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = old
        assert not hosts.leftovers()


@pytest.fixture(scope="module")
def rc(lab: Lab) -> Iterator[tuple[Path, Cluster]]:
    """A builtin cluster on the three hosts: first up deploys cold; down --purge and up again is warm."""
    cfg = lab.yaml("rc")
    digest = source_hash()
    t0 = time.monotonic()
    r = lab.orch(cfg, "up", "-q")
    lab.cold_s = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    r = lab.orch(cfg, "down", "--purge")
    assert r.returncode == 0, r.stderr
    t0 = time.monotonic()
    r = lab.orch(cfg, "up")
    lab.warm_s = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    if source_hash() == digest:  # (a checkout edited meanwhile is new code: then it is reinstalled)
        assert r.stderr.count("quorumlab already there") == 3, r.stderr  # warm: the same code is not reinstalled
    print(f"\nup to writable, 3 remote nodes: cold deploy {lab.cold_s:.1f}s, warm {lab.warm_s:.1f}s")
    try:
        yield cfg, lab.cluster("rc")
    finally:
        lab.orch(cfg, "down", "--purge")


def test_up_status_shows_leader_and_quorum(lab: Lab, rc: tuple[Path, Cluster]) -> None:
    cfg, c = rc
    r = lab.orch(cfg, "status")
    assert r.returncode == 0, r.stderr
    assert "quorum 2" in r.stdout and "QUORUM OK" in r.stdout
    assert "leader" in r.stdout
    for h in lab.hosts.hosts:
        assert f"https://{h.address}:" in r.stdout  # each node listens on its host's address, over TLS
    assert c.st.tls and c.st.remote


def test_isolate_host_with_iptables_over_ssh(lab: Lab, rc: tuple[Path, Cluster]) -> None:
    cfg, c = rc
    TRANSCRIPT.append("--- isolation test ---")
    names = c.st.live_names()
    leader = wait_leader(c, names)
    victim = next(n for n in names if n != leader)
    rest = [n for n in names if n != victim]
    r = lab.orch(cfg, "chaos", "isolate", victim)
    assert r.returncode == 0, r.stderr
    vi = names.index(victim)
    rules = chain_rules(lab, c, vi)
    assert len(rules) == 4, rules  # 2 peers x in/out, on the victim's host
    TRANSCRIPT.append(f"iptables -S on {c.st.nodes[victim].host}:\n  " + "\n  ".join(rules))
    put_soon(c, rest, "ssh/majority")
    TRANSCRIPT.append(f"write through {', '.join(rest)}: ok")
    time.sleep(1.0)  # past an election timeout: the isolated node has no leader
    with pytest.raises(ClientError) as e:
        put(c, [victim], "ssh/minority", timeout=2.0)
    TRANSCRIPT.append(f"write through {victim}: refused ({e.value})")
    lab.orch(cfg, "status")
    r = lab.orch(cfg, "chaos", "heal")
    assert r.returncode == 0, r.stderr
    assert all(chain_rules(lab, c, i) == [] for i in range(3))
    put_soon(c, [victim], "ssh/healed", within=15.0)
    TRANSCRIPT.append(f"after heal, write through {victim}: ok")


def test_kill_leader_by_remote_pid(lab: Lab, rc: tuple[Path, Cluster]) -> None:
    cfg, c = rc
    names = c.st.live_names()
    leader = wait_leader(c, names)
    c.reload()
    old_pid = c.st.nodes[leader].pid
    r = lab.orch(cfg, "kill", "leader")
    assert r.returncode == 0, r.stderr
    host_cmds = node_procs(lab)[c.st.nodes[leader].host]
    assert not any(f"--name {leader} " in cmd for cmd in host_cmds), host_cmds
    new = wait_leader(c, [n for n in names if n != leader])
    assert new != leader
    r = lab.orch(cfg, "start", leader)
    assert r.returncode == 0, r.stderr
    c.reload()
    assert c.st.nodes[leader].pid != old_pid or c.launcher.state(c.st.nodes[leader]) == "running"
    put_soon(c, [leader], "ssh/restarted", within=15.0)


def test_recycled_pid_is_never_signalled(lab: Lab, rc: tuple[Path, Cluster]) -> None:
    """A record whose start time does not match the process at that pid: no signal, state stopped."""
    _, c = rc
    c.reload()
    live = c.st.nodes[c.st.live_names()[0]]
    launcher = c.launcher
    assert isinstance(launcher, RemoteLauncher)
    impostor = NodeRecord(live.name, live.client_port, live.peer_port, live.host, live.address)
    impostor.pid, impostor.create_time = live.pid, live.create_time + 1  # same pid, another process's start
    assert launcher.state(impostor) == "stopped"
    assert launcher.signal(impostor, signal.SIGSTOP) is False
    assert launcher.state(live) == "running"  # SIGSTOP did not reach the real node


def test_logs_over_ssh(lab: Lab, rc: tuple[Path, Cluster]) -> None:
    _, c = rc
    c.reload()
    name = c.st.live_names()[0]
    lines = c.log_tail(name, 50)
    assert any("starting:" in ln for ln in lines), lines


def test_experiment_reaches_valid_verdict(lab: Lab, rc: tuple[Path, Cluster]) -> None:
    """leader-kill on the remote hosts (the runner's fresh cluster gets the hosts of cluster.yaml)."""
    from chaos import experiment
    from orchestrator import config

    cfg, _ = rc
    spec = experiment.load("leader-kill")
    runner = experiment.Runner(spec, lab.dir / "root", lab.dir / "reports", hosts=config.load(cfg).hosts)
    res = asyncio.run(runner.run())
    assert res.verdict == experiment.VALID, res


def test_etcd_engine_on_remote_hosts(lab: Lab, rc: tuple[Path, Cluster]) -> None:
    cfg_b, _ = rc
    assert lab.orch(cfg_b, "down").returncode == 0  # one cluster at a time on these small hosts
    cfg = lab.yaml("re", engine="etcd")
    try:
        r = lab.orch(cfg, "up", "-q")
        assert r.returncode == 0, r.stderr
        c = lab.cluster("re")
        names = c.st.live_names()
        leader = wait_leader(c, names)
        victim = next(n for n in names if n != leader)
        assert lab.orch(cfg, "chaos", "isolate", victim).returncode == 0
        put_soon(c, [n for n in names if n != victim], "etcd/majority")
        assert lab.orch(cfg, "chaos", "heal").returncode == 0
        leader = wait_leader(c, names)  # etcd 3.4 has no pre-vote: the healed node may force an election
        assert lab.orch(cfg, "kill", leader).returncode == 0
        wait_leader(c, [n for n in names if n != leader])
        assert lab.orch(cfg, "chaos", "isolate", victim).returncode == 0  # left active: down removes it
    finally:
        r = lab.orch(cfg, "down", "--purge")
    assert r.returncode == 0, r.stderr
    assert "iptables chain" in r.stdout
    assert all(chain_rules(lab, c, i) == ["(no chain)"] for i in range(3))
    assert node_procs(lab) == {h.name: [] for h in lab.hosts.hosts}
    assert lab.orch(cfg_b, "start", "all").returncode == 0  # the module's cluster again, for what follows


def _one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("orchestrate:")]
    assert lines, r.stderr
    return lines[0]


def test_unreachable_host_and_wrong_key_are_clear(lab: Lab) -> None:
    good = lab.yaml("bad")
    text = good.read_text()
    dead = lab.hosts.hosts[2].address.rsplit(".", 1)[0] + ".200"  # on the bridge, nobody there
    unreachable = lab.dir / "unreachable.yaml"
    unreachable.write_text(text.replace(lab.hosts.hosts[2].address, dead))
    line = _one_line_error(lab.orch(unreachable, "up", "-q", timeout=60))
    assert "host h3" in line and "cannot reach" in line and dead in line, line

    other = lab.dir / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = lab.dir / "wrong.yaml"
    wrong.write_text(text.replace(str(lab.hosts.key), str(other), 1))
    line = _one_line_error(lab.orch(wrong, "up", "-q", timeout=60))
    assert "host h1" in line and "login refused" in line and str(other) in line, line
    nopy = lab.dir / "nopython.yaml"
    nopy.write_text(text.replace("    work_dir:", "    python: /nonexistent/python3\n    work_dir:", 1))
    line = _one_line_error(lab.orch(nopy, "up", "-q", timeout=60))
    assert "host h1" in line and "/nonexistent/python3" in line and "hosts[].python" in line, line
    # nothing half-started: no state, no node of it anywhere
    assert not (lab.dir / "root" / "bad" / "state.json").exists()
    assert not [cmd for cmds in node_procs(lab).values() for cmd in cmds if "bad-" in cmd]


def test_transcript(lab: Lab) -> None:
    """Not a check: the CLI transcript of this module, for the closing note (pytest -s shows it)."""
    out = lab.dir / "transcript.txt"
    out.write_text("\n".join(TRANSCRIPT))
    print(f"\ntranscript in {out}\n" + "\n".join(t for t in TRANSCRIPT if t))
