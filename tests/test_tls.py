"""TLS on the client and peer ports (issue #11): etcd's flags, `orchestrate up --tls`, the real
etcdctl and etcd, a node with another CA's certificate shut out, the orchestrator's client
certificate as the Admin credential."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from node.client import Client, ClientError, ClientTLS, Reason
from node.raft import Message, MsgType
from node.server.codec import F_HELLO
from orchestrator.config import ConfigError, parse
from orchestrator.pki import ClusterPKI
from tests import peer_attacks as attack
from tests import procs
from tests.procs import NodeProcs

ETCDCTL = shutil.which("etcdctl")
Make = Callable[..., NodeProcs]
SECRET = b"tls-test-secret-" + os.urandom(8).hex().encode()


def orchestrate(root: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "orchestrator", "--root", str(root), "--name", "tls", *args]
    return subprocess.run(
        cmd, cwd=root.parent, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def etcdctl(endpoint: str, *args: str, tls: dict[str, Path] | None = None) -> subprocess.CompletedProcess[str]:
    assert ETCDCTL is not None
    flags = [f"--{k}={v}" for k, v in (tls or {}).items()]
    cmd = [ETCDCTL, "--endpoints", endpoint, "--dial-timeout", "2s", "--command-timeout", "3s", *flags, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env={**os.environ, "ETCDCTL_API": "3"})


def test_cluster_yaml_tls_is_checked_like_the_flag() -> None:
    assert parse("tls: true\n").tls is True
    assert parse("name: x\n").tls is False
    with pytest.raises(ConfigError, match=r"cluster.yaml:2: tls: expected true or false, got 'yes please'"):
        parse("name: x\ntls: yes please\n")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--listen-client", "https://127.0.0.1:1"], "TLS key/cert (--cert-file, --key-file) must be provided"),
        (["--cert-file", "/nonexistent.crt"], "--cert-file and --key-file go together"),
        (["--client-cert-auth"], "--client-cert-auth needs --trusted-ca-file"),
        (
            ["--listen-peer", "https://127.0.0.1:1"],
            "cannot listen on TLS for 127.0.0.1:1: KeyFile and CertFile are not presented",
        ),
        (["--peer-key-file", "/nonexistent.key"], "--peer-cert-file and --peer-key-file go together"),
        (["--peer-client-cert-auth"], "--peer-client-cert-auth needs --peer-trusted-ca-file"),
        (["--admin-cert-cn", "x"], "--admin-cert-cn needs a TLS client port with --client-cert-auth"),
        (
            ["--listen-peer", "https://127.0.0.1:1", "--peer-cert-file", "/nonexistent", "--peer-key-file", "/x"],
            "cannot use the peer TLS files",
        ),
    ],
)
def test_node_refuses_incomplete_tls_flags(tmp_path: Path, extra: list[str], message: str) -> None:
    cmd = [sys.executable, "-m", "node", "--name", "n1", "--data-dir", str(tmp_path / "d")]
    cmd += ["--initial-cluster", "n1=127.0.0.1:1", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def _peer_flags(pki: ClusterPKI, name: str, trust: ClusterPKI, url: str) -> list[str]:
    """A node's peer TLS flags: its certificate from `pki` (for peer URL `url`), peers verified against `trust`'s CA."""
    cert, key = pki.ensure_server(name, ["127.0.0.1"], [url])
    return [
        *("--peer-cert-file", str(cert), "--peer-key-file", str(key)),
        *("--peer-trusted-ca-file", str(trust.ca_cert), "--peer-client-cert-auth"),
    ]


def _start_tls(c: NodeProcs, name: str, pki: ClusterPKI, trust: ClusterPKI) -> None:
    url = f"https://127.0.0.1:{c.peer[name]}"
    c.start(name, extra=["--listen-peer", url, *_peer_flags(pki, name, trust, url)])


def _tls_client_ctx(pki: ClusterPKI, name: str, trust: ClusterPKI) -> ssl.SSLContext:
    """A dialer's context: the certificate issued for `name` (made now if new), servers checked against `trust`."""
    cert, key = pki.ensure_server(name, ["127.0.0.1"])
    ctx = ssl.create_default_context(cafile=str(trust.ca_cert))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


async def test_peer_tls_cluster_shuts_out_another_ca(node_cluster: Make, tmp_path: Path) -> None:
    """Three members with peer TLS (and the secret, as the orchestrator starts them): n1 and n2 hold
    certificates of the cluster's CA, n3 one of another CA (it trusts the cluster's CA, as anyone
    may). n1 and n2 serve; n3 never exchanges a message with them: both directions are refused.
    The peer port refuses a plaintext dialer and a TLS dialer with another CA's certificate, each
    refusal one log line at most a second."""
    ours, theirs = ClusterPKI(tmp_path / "ca-ours"), ClusterPKI(tmp_path / "ca-theirs")
    c = node_cluster(3, secret=SECRET)
    c.initial = ",".join(f"{n}=https://127.0.0.1:{c.peer[n]}" for n in c.names)
    _start_tls(c, "n1", ours, ours)
    _start_tls(c, "n2", ours, ours)
    _start_tls(c, "n3", theirs, ours)
    await c.wait_leader(among=["n1", "n2"])
    async with c.client_for(["n1", "n2"]) as cl:
        for attempt in range(100):
            try:
                await cl.put("k", "over-peer-tls")
                break
            except ClientError:
                if attempt == 99:
                    raise
                await asyncio.sleep(0.1)
    await c.wait_applied(["n1", "n2"], (await c.statuses(["n1"]))["n1"]["commit"])
    # strangers at n1's peer port: plaintext, and TLS with the other CA's certificate
    port = c.peer["n1"]
    assert await attack.discover(port) == attack.CLOSED
    # a certificate of another CA does not even get the secret's challenge; one of ours does (a nonce)
    challenge = [attack.F_AUTH, os.urandom(32)]
    assert await attack.tls_discover(port, _tls_client_ctx(theirs, "x", ours), challenge) == attack.CLOSED
    nonce = await attack.tls_discover(port, _tls_client_ctx(ours, "n2", ours), challenge)
    assert isinstance(nonce, list) and nonce[0] == attack.F_AUTH, nonce
    for _ in range(20):
        assert await attack.discover(port) == attack.CLOSED
    await asyncio.sleep(3.0)  # n3 keeps trying meanwhile
    st = await c.statuses()
    # n3 applied only its own bootstrap entries: no leader, nothing from the others, not the put
    assert st["n3"]["leader"] == "" and st["n3"]["applied"] < st["n1"]["applied"], st["n3"]
    assert st["n3"]["revision"] < st["n1"]["revision"], st["n3"]
    leader = st["n1"]["leader"]
    assert st[leader]["peers"]["n3"]["match"] == 0 and not st[leader]["peers"]["n3"]["connected"], st[leader]
    assert c.alive("n1") and c.alive("n2")
    async with c.client_for(["n2"]) as cl:
        assert (await cl.get("k")).kvs[0].value == b"over-peer-tls"
    for n in ("n1", "n2"):
        refusals = [ln for ln in c.log(n).splitlines() if "refusing peer connection" in ln and "TLS" in ln]
        assert refusals, c.log(n)
        assert len(refusals) < 12, refusals  # rate-limited: n3's retries and the 20 dialers above
    assert "Traceback" not in "".join(c.log(n) for n in c.names)


@pytest.mark.skipif(ETCDCTL is None, reason="needs etcdctl (apt-get install etcd-client)")
@pytest.mark.parametrize("engine", ["builtin", "etcd"])
async def test_tls_cluster(tmp_path: Path, engine: str) -> None:
    if engine == "etcd" and shutil.which("etcd") is None:
        pytest.skip("needs etcd (apt-get install etcd-server)")
    root = tmp_path / "state"
    cport, pport = procs.free_port_block(3), procs.free_port_block(3)
    up = orchestrate(
        root,
        *("up", "--tls", "--engine", engine, "--nodes", "3"),
        *("--client-port", str(cport), "--peer-port", str(pport), "--heartbeat-ms", "50", "--election-ms", "500"),
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"https://127.0.0.1:{cport}" in up.stdout
        pki = root / "tls" / "tls"
        for key in pki.glob("*.key"):
            assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
        assert {p.name for p in pki.iterdir()} >= {"ca.crt", "ca.key", "client.crt", "client.key", "node.n1.crt"}
        creds = {"cacert": pki / "ca.crt", "cert": pki / "client.crt", "key": pki / "client.key"}
        ep = f"https://127.0.0.1:{cport}"

        put = etcdctl(ep, "put", "k", "over-tls", tls=creds)
        assert put.returncode == 0 and put.stdout.strip() == "OK", put.stdout + put.stderr
        got = etcdctl(f"https://127.0.0.1:{cport + 2}", "get", "k", "--print-value-only", tls=creds)
        assert got.returncode == 0 and got.stdout.strip() == "over-tls", got.stdout + got.stderr

        # without our CA the server is not trusted; without a client certificate the node refuses us;
        # plaintext gets nowhere
        no_ca = etcdctl(ep, "get", "k", tls={"cert": creds["cert"], "key": creds["key"]})
        no_cert = etcdctl(ep, "get", "k", tls={"cacert": creds["cacert"]})
        plain = etcdctl(f"127.0.0.1:{cport}", "get", "k")
        for r in (no_ca, no_cert, plain):
            assert r.returncode != 0 and "over-tls" not in r.stdout, r.stdout + r.stderr

        # our client: with the orchestrator's files it works, with only the CA it is refused
        eps = [f"127.0.0.1:{cport + i}" for i in range(3)]
        async with Client(eps, timeout=3.0, tls=ClientTLS.from_files(*creds.values())) as c:
            assert (await c.get("k")).kvs[0].value == b"over-tls"
        async with Client(eps[:1], timeout=2.0, tls=ClientTLS.from_files(creds["cacert"])) as c:
            with pytest.raises(ClientError) as e:
                await c.get("k")
            assert e.value.reason is Reason.UNREACHABLE

        st = orchestrate(root, "status", "-w", "json")
        assert st.returncode == 0, st.stdout + st.stderr
        status = json.loads(st.stdout)
        assert status["leader"], status
        assert all(n["client_url"].startswith("https://") for n in status["nodes"]), status
        kv = orchestrate(root, "kv", "get", "k")
        assert kv.returncode == 0 and "over-tls" in kv.stdout, kv.stdout + kv.stderr

        # the peer ports speak TLS too (real etcd's included): https peer URLs, a plaintext dialer refused
        members = etcdctl(ep, "member", "list", tls=creds)
        assert members.returncode == 0 and f"https://127.0.0.1:{pport}" in members.stdout, members.stdout
        assert await attack.discover(pport) == attack.CLOSED
        if engine == "builtin":
            await _admin_by_certificate(pki, eps[0], tmp_path)
    finally:
        down = orchestrate(root, "down", "--purge")
        assert down.returncode == 0, down.stdout + down.stderr
    assert not (root / "tls" / "tls").exists()


async def _admin_by_certificate(pki: Path, ep: str, tmp_path: Path) -> None:
    """The orchestrator's client certificate is the Admin credential, no token; a node's certificate
    is not; another CA's certificate (even with the orchestrator's name) does not get through TLS."""
    ca = pki / "ca.crt"
    orchestrator = ClientTLS.from_files(ca, pki / "client.crt", pki / "client.key")
    async with Client([ep], timeout=3.0, tls=orchestrator) as c:  # no secret: no token is sent
        st = await c.admin_status(ep)
        assert st["role"] in ("leader", "follower"), st
        assert await c.list_faults(ep) == []
    node = ClientTLS.from_files(ca, pki / "node.n2.crt", pki / "node.n2.key")
    async with Client([ep], timeout=3.0, tls=node) as c:
        await c.get("k")  # a fine etcd client ...
        with pytest.raises(ClientError) as e:
            await c.admin_status(ep)  # ... but not the orchestrator
        assert e.value.reason in (Reason.ADMIN_UNAUTHENTICATED, Reason.ADMIN_DENIED), e.value
    other = ClusterPKI(tmp_path / "other-ca")
    cert, key = other.ensure_client()  # CN quorumlab-orchestrator, but signed by another CA
    async with Client([ep], timeout=2.0, tls=ClientTLS.from_files(ca, cert, key)) as c:
        with pytest.raises(ClientError) as e:
            await c.admin_status(ep)
        assert e.value.reason is Reason.UNREACHABLE


async def test_a_member_certificate_speaks_only_for_its_member(node_cluster: Make, tmp_path: Path) -> None:
    """Member x's certificate (its peer URL as a URI SAN) and the secret: a hello in member y's name
    is refused with one line, one in x's own name is taken."""
    ours = ClusterPKI(tmp_path / "ca")
    c = node_cluster(3, secret=SECRET)
    urls = {n: f"https://127.0.0.1:{c.peer[n]}" for n in c.names}
    c.initial = ",".join(f"{n}={u}" for n, u in urls.items())
    for n in c.names:
        _start_tls(c, n, ours, ours)
    leader = await c.wait_leader()
    z = next(n for n in c.names if n != leader)  # a follower: it ignores the stray responses below
    x, y = (n for n in c.names if n != z)
    cid, mids = attack.ids(urls, c.token)
    as_x = _tls_client_ctx(ours, x, ours)  # the certificate issued at start, with x's URL
    port = c.peer[z]

    def resp(frm: str) -> Message:
        return Message(MsgType.APP_RESP, to=mids[z], frm=mids[frm], term=0)

    assert await attack.member_sends(port, SECRET, [F_HELLO, cid, mids[y], mids[z]], [resp(y)], as_x) == attack.CLOSED
    assert await attack.member_sends(port, SECRET, [F_HELLO, cid, mids[x], mids[z]], [resp(x)], as_x) is None
    lines = [ln for ln in c.log(z).splitlines() if f"not member {mids[y]:x}" in ln]
    assert len(lines) == 1 and urls[x] in lines[0], c.log(z)
    assert "Traceback" not in c.log(z)
