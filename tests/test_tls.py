"""TLS on the client port (issue #11): etcd's flags, `orchestrate up --tls`, the real etcdctl."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from node.client import Client, ClientError, ClientTLS, Reason
from orchestrator.config import ConfigError, parse
from tests import procs

ETCDCTL = shutil.which("etcdctl")


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
    ],
)
def test_node_refuses_incomplete_tls_flags(tmp_path: Path, extra: list[str], message: str) -> None:
    cmd = [sys.executable, "-m", "node", "--name", "n1", "--data-dir", str(tmp_path / "d")]
    cmd += ["--initial-cluster", "n1=127.0.0.1:1", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr


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
    finally:
        down = orchestrate(root, "down", "--purge")
        assert down.returncode == 0, down.stdout + down.stderr
    assert not (root / "tls" / "tls").exists()
