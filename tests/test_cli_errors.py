"""Bad command-line input: one clear line on stderr, exit 2, no traceback, nothing left on disk.

Every case runs the real `orchestrate` in a subprocess from a scratch directory (never the repo), so
a traceback, a stray state directory or a lock file would show. None of them needs a cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from orchestrator.config import ConfigError, parse
from orchestrator.state import ClusterState, NodeRecord, StateDir
from tests.procs import free_port_block


def orchestrate(cwd: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def tree(p: Path) -> list[str]:
    return sorted(str(x.relative_to(p)) for x in p.rglob("*"))


def assert_one_clear_line(r: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "Exception" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for e in expected:
        assert e in lines[0], (e, lines[0])


# (argv, what the single line must say); run from an empty directory, with --root inside it
CASES = [
    (["up", "--nodes", ","], ["--nodes", "expected at least one node"]),
    (["up", "--nodes", "n1,n1"], ["--nodes", "node 'n1' listed twice"]),
    (["up", "--nodes", "0"], ["--nodes", "expected a node count 1..99"]),
    (["up", "--nodes", "N1"], ["--nodes", "expected node names like n1"]),
    (["up", "--client-port", "-5"], ["--client-port", "expected an integer in 1024..65000, got -5"]),
    (["up", "--client-port", "lots"], ["--client-port", "expected an integer in 1024..65000, got 'lots'"]),
    (["up", "--peer-port", "100"], ["--peer-port", "expected an integer in 1024..65000, got 100"]),
    (["up", "--heartbeat-ms", "0"], ["--heartbeat-ms", "expected an integer in 10..10000, got 0"]),
    (["up", "--election-ms", "1"], ["--election-ms", "expected an integer in 20..100000, got 1"]),
    (["up", "--heartbeat-ms", "100", "--election-ms", "150"], ["election_ms (150) must be at least twice"]),
    (["up", "--client-port", "30000", "--peer-port", "30001"], ["overlap peer ports"]),
    (["up", "--engine", "etdc"], ["--engine", "expected one of builtin, etcd, got 'etdc' (did you mean 'etcd'?)"]),
    (["up", "--auto-compaction-mode", "weekly"], ["--auto-compaction-mode", "expected one of periodic, revision"]),
    (["up", "--auto-compaction-retention", "1h"], ["with compaction mode revision the retention is a revision"]),
    (["up", "--quota-backend-bytes", "lots"], ["--quota-backend-bytes", "expected a size in bytes"]),
    (["up", "--timeout", "-1"], ["--timeout", "expected a positive float"]),
    (["up", "--name", "../escape"], ["--name", "expected a lowercase name"]),
    (["--name", "A B", "status"], ["--name", "expected a lowercase name"]),
    (["up", "--no-such-flag"], ["unrecognized arguments: --no-such-flag"]),
    (["kv", "put", "k", "v", "--lease", "zz"], ["--lease", "bad lease id 'zz'"]),
    (["lease", "revoke", "zz"], ["bad lease id 'zz'"]),
    (["lease", "grant", "0"], ["expected a TTL in whole seconds > 0"]),
    (["status", "--watch", "0"], ["--watch", "expected a positive float"]),
    (["quorum", "--max", "0"], ["--max", "expected a positive int"]),
    (["logs", "n1", "-n", "-3"], ["expected a positive int"]),
    (["chaos", "loss", "1.5"], ["expected a probability in (0, 1]"]),
    (["experiment", "run", "leader-kill", "--heartbeat-ms", "0"], ["expected an integer in 10..10000, got 0"]),
    (["status"], ["no cluster named 'quorumlab'"]),
    (["down", "--purge"], ["no cluster named 'quorumlab'"]),
    (["kill", "n1"], ["no cluster named 'quorumlab'"]),
]


@pytest.fixture(scope="module")
def case_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, subprocess.CompletedProcess[str]]]:
    """Run every case at once (a few in parallel: each is a fresh interpreter), each in its own empty dir."""

    def one(job: tuple[Path, list[str]]) -> tuple[Path, subprocess.CompletedProcess[str]]:
        work, argv = job
        if argv[0] == "up":  # should the refusal ever break, the cluster must not land on etcd's default ports
            base = free_port_block(10)
            argv = [argv[0], "--timeout", "5", "--client-port", str(base), "--peer-port", str(base + 5), *argv[1:]]
        return work, orchestrate(work, "--root", str(work / "state"), *argv)

    with ThreadPoolExecutor(4) as pool:
        # tmp_path_factory is not thread-safe: make every case's dir before the threads start
        results = list(pool.map(one, [(tmp_path_factory.mktemp("case"), argv) for argv, _ in CASES]))
    return {" ".join(argv): res for (argv, _), res in zip(CASES, results, strict=True)}


@pytest.mark.parametrize("argv,expected", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(
    case_results: dict[str, tuple[Path, subprocess.CompletedProcess[str]]], argv: list[str], expected: list[str]
) -> None:
    work, r = case_results[" ".join(argv)]
    assert_one_clear_line(r, *expected)
    assert tree(work) == [], "a refused command left files behind"


def test_flags_and_yaml_share_one_validator_per_field(tmp_path: Path) -> None:
    """The same bad value gives the same message from cluster.yaml and from the flag."""
    pairs = [
        ("ports:\n  client: -5\n", ["--client-port", "-5"]),
        ("ports:\n  peer: 100\n", ["--peer-port", "100"]),
        ("timeouts:\n  heartbeat_ms: 0\n", ["--heartbeat-ms", "0"]),
        ("timeouts:\n  election_ms: 1\n", ["--election-ms", "1"]),
        ("nodes: [n1, n1]\n", ["--nodes", "n1,n1"]),
        ("engine: etdc\n", ["--engine", "etdc"]),
        ("compaction:\n  mode: weekly\n", ["--auto-compaction-mode", "weekly"]),
        ("compaction:\n  retention: soon\n", ["--auto-compaction-retention", "soon"]),
        ("quota_backend_bytes: 9GiB\n", ["--quota-backend-bytes", "9GiB"]),
        ("snapshot_count: 1\n", ["--snapshot-count", "1"]),
        ("log_level: loud\n", ["--log-level", "loud"]),
    ]
    for yaml_text, flag in pairs:
        with pytest.raises(ConfigError) as e:
            parse(yaml_text, "c.yaml")
        yaml_msg = str(e.value).split(": ", 2)[2]  # "c.yaml:N: field: <message>"
        base = free_port_block(10)
        safe = ["--timeout", "5", "--client-port", str(base), "--peer-port", str(base + 5)]
        r = orchestrate(tmp_path, "--root", str(tmp_path / "state"), "up", *safe, *flag)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().endswith(yaml_msg) or f"{yaml_msg} (see" in r.stderr, (yaml_text, yaml_msg, r.stderr)
    assert tree(tmp_path) == []


def test_new_yaml_keys_parse_and_default() -> None:
    cfg = parse("compaction:\n  mode: periodic\nquota_backend_bytes: 64MiB\n", "c.yaml")
    assert (cfg.compaction_mode, cfg.retention, cfg.quota_backend_bytes) == ("periodic", "1h", 64 << 20)
    cfg = parse("", "c.yaml")
    assert (cfg.compaction_mode, cfg.retention, cfg.quota_backend_bytes) == ("revision", "10000", 256 << 20)
    cfg = parse("compaction: {mode: revision, retention: 500}\nquota_backend_bytes: 0\n", "c.yaml")
    assert (cfg.retention, cfg.quota_backend_bytes) == ("500", 0)


@pytest.mark.parametrize("where", ["default", "--config"])
def test_non_utf8_cluster_yaml_names_the_file(tmp_path: Path, where: str) -> None:
    work = tmp_path / "w"
    work.mkdir()
    (work / "cluster.yaml").write_bytes(b"name: caf\xe9\nnodes: 3\n")
    args = ["--config", str(work / "cluster.yaml")] if where == "--config" else []
    r = orchestrate(work, *args, "up")
    assert_one_clear_line(r, "cluster.yaml: not UTF-8 text (byte 0xe9 at offset 9)")
    assert tree(work) == ["cluster.yaml"]


def test_chaos_undo_of_an_unknown_fault_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "state"
    st = ClusterState("t", "builtin", "local", "tok", 50, 500, 100, "info")
    st.nodes["n1"] = NodeRecord("n1", 30001, 30002, desired="stopped")
    StateDir(root, "t").save(st)
    before = tree(tmp_path)
    r = orchestrate(tmp_path, "--root", str(root), "--name", "t", "chaos", "undo", "nope")
    assert_one_clear_line(r, "no active fault 'nope'")
    assert tree(tmp_path) == before


def test_broken_pipe_is_quiet(tmp_path: Path) -> None:
    """`orchestrate check history | head -1`: the reader leaves early; no traceback, SIGPIPE's status."""
    hist = tmp_path / "history.jsonl"
    ops = [
        {
            "id": i,
            "client": i % 4,
            "kind": "put",
            "key": f"k{i % 50}",
            "value": str(i),
            "outcome": "ok",
            "invoke": i * 0.01,
            "complete": i * 0.01 + 0.005,
        }
        for i in range(2000)
    ]
    hist.write_text("".join(json.dumps(o) + "\n" for o in ops))
    p = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "check", str(hist), "-w", "json"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # like `head -1` exiting before the command writes
    err = p.stderr.read()
    rc = p.wait(timeout=60)
    assert "Traceback" not in err and "Exception ignored" not in err and "BrokenPipe" not in err, err
    assert rc == 141, (rc, err)


def test_a_failing_flag_after_a_good_up_config_leaves_no_lock(tmp_path: Path) -> None:
    """`up` refused for ports already in use (a listener on one client port): nothing is left behind."""
    import socket

    port = free_port_block(2)  # client port, then the peer port
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        t0 = time.monotonic()
        r = orchestrate(
            tmp_path,
            "--root",
            str(tmp_path / "state"),
            "up",
            "--nodes",
            "1",
            "--client-port",
            str(port),
            "--peer-port",
            str(port + 1),
        )
    assert_one_clear_line(r, f"n1 client port 127.0.0.1:{port}")
    assert time.monotonic() - t0 < 20
    assert tree(tmp_path) == [], "the refused up left a state dir or a .lock"
    assert not any(os.scandir(tmp_path))


def test_down_purge_refuses_a_directory_that_is_not_a_cluster(tmp_path: Path) -> None:
    """`orchestrate --root ~ --name documents down --purge`: no state file and nothing a cluster writes
    there, so nothing is deleted and the one line says why."""
    docs = tmp_path / "home" / "documents"
    for rel in ("letter.txt", "data/x/report.txt", "logs/app.log", "wal/notes.txt"):
        (docs / rel).parent.mkdir(parents=True, exist_ok=True)
        (docs / rel).write_text(rel)
    before = tree(tmp_path)
    r = orchestrate(tmp_path, "--root", str(tmp_path / "home"), "--name", "documents", "down", "--purge")
    assert_one_clear_line(r, f"{docs} is not a cluster's directory", "nothing removed")
    assert tree(tmp_path) == before
    assert all((docs / rel).read_text() == rel for rel in ("letter.txt", "data/x/report.txt", "logs/app.log"))
