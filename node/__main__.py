"""`python -m node`: run one quorumlab member (flags named like etcd's)."""

from __future__ import annotations

import os

# gRPC's fork support installs pthread_atfork handlers and polls with them in mind; a node never
# forks without exec, and a bare grpc.aio server measured 3-8% less CPU per call without it. It is
# read once, when grpc is first imported, which is below (node.api): so it is set here, first.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import argparse
import asyncio
import ctypes
import errno
import logging
import signal
import sys
from pathlib import Path

from node.api.context import VERSION
from node.api.server import ApiServer, PortInUse, ServerTLS
from node.kv import KVStateMachine
from node.kv.auth import TOKEN_TTL_ENV
from node.kv.retention import MODES, Retention, RetentionError, parse_retention
from node.metrics import MetricsServer, NodeMetrics, health
from node.secret import SecretError, load_secret
from node.server.members import parse_initial_cluster
from node.server.peer_tls import PeerTLS, PeerTLSError
from node.server.raftnode import ConfigError, NodeConfig, RaftNode
from node.server.transport import parse_hostport
from node.storage.disk import StorageError
from node.storage.snapshot import SnapshotCorruption
from node.storage.wal import WalCorruption

log = logging.getLogger("quorumlab")

M_ARENA_MAX = -8  # glibc's mallopt() parameter number (malloc.h)
MALLOC_ARENAS = 2


def limit_malloc_arenas(n: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas at n; True when set. Must run before any second thread allocates.

    glibc gives each thread that contends for the heap its own arena (up to 8 per core), and each
    keeps the memory it once held: a node had 12 of them after a 70k-put load (gRPC's, the loop's
    and the fsync threads). Capped, RSS a few seconds after that load fell 128 -> 109 MB per node
    (median, bench/rss.py), CPU per put unchanged. MALLOC_ARENA_MAX in the environment wins; no-op
    off glibc."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, n))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m node", description="Run one quorumlab Raft key-value member.")
    p.add_argument("--name", required=True, help="human-readable member name (n1, n2, ...)")
    p.add_argument("--data-dir", required=True, type=Path, help="where the WAL and snapshots live")
    p.add_argument("--listen-client", "--listen-client-urls", dest="listen_client", default="127.0.0.1:2379")
    p.add_argument("--listen-peer", "--listen-peer-urls", dest="listen_peer", default="127.0.0.1:2380")
    p.add_argument("--advertise-client", "--advertise-client-urls", dest="advertise_client", default="")
    p.add_argument("--advertise-peer", "--initial-advertise-peer-urls", dest="advertise_peer", default="")
    p.add_argument("--initial-cluster", required=True, help="n1=127.0.0.1:12380,n2=... (every initial member)")
    p.add_argument("--initial-cluster-state", choices=["new", "existing"], default="new")
    p.add_argument("--initial-cluster-token", default="quorumlab")
    p.add_argument("--heartbeat-interval", type=int, default=100, help="ms between heartbeats (a Raft tick)")
    p.add_argument("--election-timeout", type=int, default=1000, help="ms; randomized in [T, 2T)")
    p.add_argument("--snapshot-count", type=int, default=10_000, help="entries applied between snapshots")
    p.add_argument("--snapshot-catchup-entries", type=int, default=5_000, help="entries kept after a snapshot")
    p.add_argument("--enable-fault-injection", action="store_true", help="serve the fault-rule API (chaos)")
    p.add_argument(
        "--peer-auth-file",
        type=Path,
        default=None,
        help="file (mode 0600) holding the cluster secret: peers must prove they know it before any Raft "
        "frame, and Admin calls must carry a token derived from it; without it peers and Admin are open",
    )
    p.add_argument(
        "--no-fast-failover",
        dest="fast_failover",
        action="store_false",
        help="do not start an early pre-vote when the leader's connection drops",
    )
    p.add_argument(
        "--auto-compaction-mode",
        default="periodic",
        help="etcd's: periodic (retention is a duration, or a number of hours) or revision (a count)",
    )
    p.add_argument(
        "--auto-compaction-retention",
        default="0",
        help="how much history auto-compaction keeps: 1h, 30m, 90s, 5 (hours) or a revision count; 0 = off",
    )
    p.add_argument(
        "--quota-backend-bytes",
        default="0",
        help="db size at which the NOSPACE alarm goes off (0 = etcd's default 2 GiB, negative = no quota)",
    )
    p.add_argument("--cert-file", type=Path, default=None, help="etcd's: the client port's TLS certificate (PEM)")
    p.add_argument("--key-file", type=Path, default=None, help="etcd's: its private key (PEM)")
    p.add_argument(
        "--trusted-ca-file", type=Path, default=None, help="etcd's: the CA that signs client certificates (PEM)"
    )
    p.add_argument(
        "--client-cert-auth",
        action="store_true",
        help="etcd's: refuse clients without a certificate signed by --trusted-ca-file",
    )
    p.add_argument("--peer-cert-file", type=Path, default=None, help="etcd's: the peer port's TLS certificate (PEM)")
    p.add_argument("--peer-key-file", type=Path, default=None, help="etcd's: its private key (PEM)")
    p.add_argument(
        "--peer-trusted-ca-file", type=Path, default=None, help="etcd's: the CA that signs peers' certificates (PEM)"
    )
    p.add_argument(
        "--peer-client-cert-auth",
        action="store_true",
        help="etcd's: refuse peers without a certificate signed by --peer-trusted-ca-file",
    )
    p.add_argument(
        "--admin-cert-cn",
        default=None,
        help="ours: Admin calls are also accepted from a client certificate with this common name (signed by "
        "--trusted-ca-file; needs --client-cert-auth), instead of the token",
    )
    p.add_argument(
        "--listen-metrics-urls",
        dest="listen_metrics",
        default="",
        help="etcd's: one http://HOST:PORT serving /metrics (Prometheus), /health and /version; empty = none",
    )
    p.add_argument(
        "--auth-token-ttl",
        type=int,
        default=None,
        help=f"etcd's: seconds a simple auth token lives unused (default 300, or ${TOKEN_TTL_ENV})",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def check_flags(args: argparse.Namespace) -> str | None:
    """Turn the string flags into values (on args); returns one line saying what is wrong, if anything."""
    if args.auto_compaction_mode not in MODES:
        return f"--auto-compaction-mode must be periodic or revision, not {args.auto_compaction_mode!r}"
    try:
        args.compaction = parse_retention(args.auto_compaction_mode, args.auto_compaction_retention)
    except RetentionError as e:
        return str(e)
    try:
        args.quota = int(args.quota_backend_bytes)
    except ValueError:
        return f"--quota-backend-bytes must be a whole number of bytes, not {args.quota_backend_bytes!r}"
    bad = _check_tls(args) or _check_peer_tls(args) or _check_metrics(args)
    if bad is not None:
        return bad
    if args.admin_cert_cn is not None and not (args.tls is not None and args.tls.client_cert_auth):
        return "--admin-cert-cn needs a TLS client port with --client-cert-auth (only verified certificates count)"
    if args.auth_token_ttl is not None and args.auth_token_ttl <= 0:
        return f"--auth-token-ttl must be a positive number of seconds, not {args.auth_token_ttl}"
    args.peer_secret = None
    if args.peer_auth_file is not None:
        try:
            args.peer_secret = load_secret(args.peer_auth_file.absolute())
        except SecretError as e:
            return str(e)
    return None


def _check_tls(args: argparse.Namespace) -> str | None:
    """Read the client TLS files into args.tls (None: plaintext), with etcd's rules.

    https:// in --listen-client needs --cert-file and --key-file; an http:// URL ignores them (etcd
    warns and serves plaintext); a bare host:port (our own form) serves TLS when they are given."""
    args.tls = None
    scheme = args.listen_client.split("://", 1)[0].lower() if "://" in args.listen_client else ""
    if scheme not in ("", "http", "https"):
        return f"--listen-client: unsupported scheme {scheme!r} in {args.listen_client!r} (http or https)"
    have = args.cert_file is not None or args.key_file is not None
    if (args.cert_file is None) != (args.key_file is None):
        return "--cert-file and --key-file go together"
    if scheme == "https" and not have:
        return f"TLS key/cert (--cert-file, --key-file) must be provided for client url {args.listen_client}"
    if args.client_cert_auth and args.trusted_ca_file is None:
        return "--client-cert-auth needs --trusted-ca-file (the CA client certificates must be signed by)"
    if not have:
        return None
    if scheme == "http":
        log.warning("scheme is http in %s while key and cert files are present; ignoring them", args.listen_client)
        return None
    try:
        args.tls = ServerTLS(
            cert=args.cert_file.read_bytes(),
            key=args.key_file.read_bytes(),
            trusted_ca=args.trusted_ca_file.read_bytes() if args.trusted_ca_file is not None else None,
            client_cert_auth=args.client_cert_auth,
        )
    except OSError as e:
        return f"cannot read a TLS file: {e.strerror or e}: {e.filename}"
    if not args.advertise_client and scheme == "":
        args.advertise_client = f"https://{args.listen_client}"
    return None


def _check_peer_tls(args: argparse.Namespace) -> str | None:
    """Read the peer TLS files into args.peer_tls (None: plaintext peers only), with etcd's rules.

    An https:// --listen-peer needs --peer-cert-file and --peer-key-file; an http:// (or bare) one
    ignores them with etcd's warning. The dialing side is set up whenever peer TLS flags are given:
    https:// peer URLs are dialed over TLS, verified against --peer-trusted-ca-file."""
    args.peer_tls = None
    listen = args.listen_peer.strip()
    scheme = listen.split("://", 1)[0].lower() if "://" in listen else ""
    if scheme not in ("", "http", "https"):
        return f"--listen-peer: unsupported scheme {scheme!r} in {listen!r} (http or https)"
    if (args.peer_cert_file is None) != (args.peer_key_file is None):
        return "--peer-cert-file and --peer-key-file go together"
    have = args.peer_cert_file is not None
    if scheme == "https" and not have:
        host, port = _hostport(listen)
        return f"cannot listen on TLS for {host}:{port}: KeyFile and CertFile are not presented"
    if args.peer_client_cert_auth and args.peer_trusted_ca_file is None:
        return "--peer-client-cert-auth needs --peer-trusted-ca-file (the CA peer certificates must be signed by)"
    if have and scheme != "https":
        log.warning("scheme is HTTP while key and cert files are present; ignoring key and cert files (%s)", listen)
    if not have and args.peer_trusted_ca_file is None:
        return None
    try:
        args.peer_tls = PeerTLS.from_files(
            args.peer_cert_file,
            args.peer_key_file,
            args.peer_trusted_ca_file,
            args.peer_client_cert_auth,
            serve_tls=scheme == "https",
        )
    except PeerTLSError as e:
        return str(e)
    return None


def _check_metrics(args: argparse.Namespace) -> str | None:
    """--listen-metrics-urls into args.metrics_addr ((host, port) or None): one plain-HTTP URL.

    etcd takes a list and https; ours serves one plain-HTTP listener (Prometheus on the same host or
    network), so anything else is refused with one line rather than half-honoured."""
    args.metrics_addr = None
    raw = args.listen_metrics.strip()
    if not raw:
        return None
    if "," in raw:
        return f"--listen-metrics-urls: one URL only, got {raw!r}"
    scheme = raw.split("://", 1)[0].lower() if "://" in raw else "http"
    if scheme == "https":
        return f"--listen-metrics-urls: https is not supported for the metrics listener ({raw}); use http://"
    if scheme != "http":
        return f"--listen-metrics-urls: unsupported scheme {scheme!r} in {raw!r} (http)"
    try:
        args.metrics_addr = parse_hostport(raw)
    except ValueError as e:
        return f"--listen-metrics-urls: {e}"
    return None


def _hostport(url: str) -> tuple[str, str]:
    host, _, port = url.split("://", 1)[-1].rstrip("/").rpartition(":")
    return host, port


async def serve(args: argparse.Namespace) -> int:
    try:
        cluster = parse_initial_cluster(args.initial_cluster)
    except ValueError as e:
        log.error("%s", e)
        return 2
    if args.election_timeout <= args.heartbeat_interval:
        log.error(
            "--election-timeout (%d) must be greater than --heartbeat-interval (%d)",
            args.election_timeout,
            args.heartbeat_interval,
        )
        return 2
    cfg = NodeConfig(
        name=args.name,
        data_dir=args.data_dir,
        listen_peer=args.listen_peer,
        listen_client=args.listen_client,
        advertise_peer=args.advertise_peer,
        advertise_client=args.advertise_client,
        initial_cluster=cluster,
        initial_cluster_state=args.initial_cluster_state,
        initial_cluster_token=args.initial_cluster_token,
        heartbeat_ms=args.heartbeat_interval,
        election_ms=args.election_timeout,
        snapshot_count=args.snapshot_count,
        snapshot_catchup_entries=args.snapshot_catchup_entries,
        enable_fault_injection=args.enable_fault_injection,
        peer_secret=args.peer_secret,
        fast_failover=args.fast_failover,
        peer_tls=args.peer_tls,
    )
    sm = KVStateMachine(auth_token_ttl=args.auth_token_ttl)
    node = RaftNode(cfg, sm)
    compaction: Retention = args.compaction
    api = ApiServer(
        node,
        sm,
        args.initial_cluster_token,
        quota_backend_bytes=args.quota,
        compaction=compaction,
        admin_cert_cn=args.admin_cert_cn,
    )
    metrics: MetricsServer | None = None
    try:
        await node.start()
        await api.start(args.listen_client, args.tls)
        if args.metrics_addr is not None:
            metrics = await start_metrics(node, sm, api, args.metrics_addr)
    except (WalCorruption, SnapshotCorruption, StorageError, ConfigError, PortInUse) as e:
        log.error("cannot start: %s", e)
        await node.stop(transfer=False)
        return 1
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            log.error("cannot start: peer address %s is already in use", args.listen_peer)
        else:
            log.error("cannot start: %s", e)
        await node.stop(transfer=False)
        return 1
    log.info("%s serving clients on %s", args.name, cfg.client_url())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiter = loop.create_task(node.stopped.wait())
    stopper = loop.create_task(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    log.info("%s shutting down", args.name)
    await node.stop(transfer=True)
    if metrics is not None:
        await metrics.stop()
    await api.stop()
    for t in (waiter, stopper):
        t.cancel()
    return 0


def version_json() -> dict[str, str]:
    """/version as etcd 3.4 answers it: the server's version and the cluster's (major.minor.0)."""
    major, minor = VERSION.split(".")[:2]
    return {"etcdserver": VERSION, "etcdcluster": f"{major}.{minor}.0"}


async def start_metrics(node: RaftNode, sm: KVStateMachine, api: ApiServer, addr: tuple[str, int]) -> MetricsServer:
    """Serve /metrics, /health, /version on addr (after the client port, so /health never answers for a
    member that cannot serve); raises PortInUse with one line when the address is taken."""
    collector = NodeMetrics(node, sm, VERSION, lambda: api.ctx.space.quota)
    server = MetricsServer(collector, lambda: health.check(node, sm), version_json())
    host, port = addr
    try:
        bound = await server.start(host, port)
    except OSError as e:
        why = "address already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        raise PortInUse(f"cannot listen for metrics on {host}:{port}: {why}") from None
    node.cfg.metrics_url = f"http://{f'[{host}]' if ':' in host else host}:{bound}"
    log.info("%s serving /metrics, /health and /version on %s", node.cfg.name, node.cfg.metrics_url)
    return server


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    bad = check_flags(args)
    if bad is not None:
        log.error("%s", bad)
        return 2
    limit_malloc_arenas()  # before the loop: its executor, gRPC and the peers start threads
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(args))
    return uvloop.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
