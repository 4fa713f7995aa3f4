"""cluster.yaml `hosts:` for remote hosts: what is accepted, and errors naming the file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import ConfigError, parse
from orchestrator.remote import _probe_script
from orchestrator.remote_fw import chain_name
from orchestrator.state import ClusterState

KEY = Path(__file__)  # any existing file stands in for a key


def remote_yaml(extra_h1: str = "", nodes: str = "nodes: 3", top: str = "") -> str:
    return (
        f"name: r\n{nodes}\n{top}"
        "hosts:\n"
        "  - name: h1\n"
        "    address: 10.0.0.1\n"
        f"    key: {KEY}\n"
        f"{extra_h1}"
        "  - name: h2\n"
        "    address: 10.0.0.2\n"
        "    user: lab\n"
        "    port: 2222\n"
        "    sudo: true\n"
        "    python: /opt/py/bin/python3\n"
        "    work_dir: /srv/ql\n"
        "    deploy: false\n"
    )


def test_remote_hosts_parse_with_placement_and_tls_on() -> None:
    cfg = parse(remote_yaml(nodes="nodes:\n  - {name: a, host: h2}\n  - b\n  - c\n"), "c.yaml")
    assert cfg.remote and cfg.tls  # a non-loopback address turns TLS (and peer auth) on by itself
    assert [cfg.host_of(n).name for n in cfg.nodes] == ["h2", "h2", "h1"]  # a placed, the rest round-robin
    h2 = cfg.hosts[1]
    assert (h2.user, h2.port, h2.sudo, h2.python, h2.work_dir, h2.deploy) == (
        "lab",
        2222,
        True,
        "/opt/py/bin/python3",
        "/srv/ql",
        False,
    )
    assert cfg.hosts[0].key == str(KEY.resolve()) and cfg.hosts[0].user == "root"


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        (remote_yaml(nodes="nodes:\n  - {name: a, host: h9}\n"), "c.yaml:3: nodes[].host", "no host named 'h9'"),
        (remote_yaml("    sudo: maybe\n"), "c.yaml:7: hosts[].sudo", "expected true or false"),
        (remote_yaml("    port: 0\n"), "c.yaml:7: hosts[].port", "1..65535"),
        (remote_yaml().replace(str(KEY), "/nonexistent/key"), "c.yaml:6: hosts[].key", "does not exist"),
        (remote_yaml("    usr: x\n"), "c.yaml:7: hosts[].usr", "did you mean 'user'"),
        # a value that reaches a shell on the host must not be able to run anything there
        (remote_yaml("    work_dir: /tmp/x;touch${IFS}/tmp/PWNED;#\n"), "c.yaml:7: hosts[].work_dir", "directory path"),
        (remote_yaml("    work_dir: ~/ql\n"), "c.yaml:7: hosts[].work_dir", "relative = in the home"),
        (remote_yaml(top="tls: false\n"), "c.yaml:3: tls", "TLS stays on"),
        (remote_yaml(top="network: netns\n"), "c.yaml:3: network", "iptables over SSH"),
        ("hosts:\n  - name: h1\n    user: root\n", "c.yaml:2: hosts[].address", "needs an address"),
        ("hosts:\n  - localhost\n  - {name: h1, address: 10.0.0.1}\n", "c.yaml:2: hosts", "mixing localhost"),
        ("hosts:\n  - {name: h1, address: 10.0.0.1}\n  - {name: h1, address: 10.0.0.2}\n", "c.yaml:3", "twice"),
        ("hosts:\n  - far.example\n", "c.yaml:2: hosts", "a remote host is a mapping"),
    ],
)
def test_bad_hosts_name_file_line_and_field(text: str, where: str, what: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(text, "c.yaml")
    msg = str(e.value)
    assert msg.startswith(where) and what in msg, msg


def test_local_hosts_unchanged() -> None:
    cfg = parse("hosts: [localhost]\n", "c.yaml")
    assert not cfg.remote and not cfg.tls


def test_state_round_trips_hosts() -> None:
    cfg = parse(remote_yaml(), "c.yaml")
    st = ClusterState("r", "builtin", "local", "tok", 100, 1000, 10, "info", hosts={h.name: h for h in cfg.hosts})
    back = ClusterState.from_json(st.to_json())
    assert back.hosts == st.hosts and back.remote
    assert chain_name(back).startswith("QL-") and len(chain_name(back)) <= 28  # iptables' chain name limit


def test_probe_script_reads_start_time_after_the_comm_field() -> None:
    """The start time is field 22 of /proc/<pid>/stat, counted after the ')' that ends a comm with spaces."""
    import subprocess

    r = subprocess.run(["sh", "-c", _probe_script([1])], capture_output=True, text=True)
    pid, start, state, *_ = r.stdout.split("\n")[0].split()
    stat = Path("/proc/1/stat").read_text()
    assert pid == "1" and start == stat.rsplit(")", 1)[1].split()[19] and state.isalpha()
