"""The node's Prometheus metrics under etcd's names, read from the node at scrape time.

Gauges and totals the node already keeps (commit and apply indexes, leader changes, db size) are
read when Prometheus scrapes, so the hot path pays nothing for them; durations that only exist as
events (WAL fsyncs, apply batches, peer round trips) arrive through the node's hook lists and go
into histograms with etcd's buckets."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from node.kv import KVStateMachine
from node.server.raftnode import RaftNode

# etcd's buckets: fsync and backend commit 1 ms .. ~4 s doubling; peer RTT 0.1 ms .. ~1.6 s doubling
DISK_BUCKETS = tuple(0.001 * 2**i for i in range(13))
RTT_BUCKETS = tuple(0.0001 * 2**i for i in range(15))
SLOW_APPLY_S = 0.1  # etcd warns and counts an apply slower than 100 ms


class _NodeCollector(Collector):
    """Everything the node can answer from its own state when asked."""

    def __init__(self, node: RaftNode, sm: KVStateMachine, version: str, quota: Callable[[], int]) -> None:
        self.node = node
        self.sm = sm
        self.version = version
        self.quota = quota

    def collect(self) -> Iterator[Metric]:
        n = self.node
        has_leader = n.lead != 0 and not n.removed
        yield _gauge("etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not.", has_leader)
        yield _gauge(
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            has_leader and n.lead == n.member_id,
        )
        yield _counter("etcd_server_leader_changes_seen_total", "The number of leader changes seen.", n.leader_changes)
        yield _gauge(
            "etcd_server_proposals_committed_total", "The total number of consensus proposals committed.", n.committed
        )
        yield _gauge(
            "etcd_server_proposals_applied_total", "The total number of consensus proposals applied.", n.applied
        )
        yield _gauge(
            "etcd_server_proposals_pending", "The current number of pending proposals to commit.", n.pending_proposals()
        )
        yield _counter(
            "etcd_server_proposals_failed_total", "The total number of failed proposals seen.", n.proposals_failed
        )
        yield _gauge("etcd_server_term", "The current term of this member.", n.term)
        g = GaugeMetricFamily(
            "etcd_server_id",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
            labels=["server_id"],
        )
        g.add_metric([f"{n.member_id:x}"], 1)
        yield g
        g = GaugeMetricFamily(
            "etcd_server_version",
            "Which version is running. 1 for 'server_version' label with current version.",
            labels=["server_version"],
        )
        g.add_metric([self.version], 1)
        yield g
        yield _gauge(
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            self.sm.db_size(),
        )
        yield _gauge("etcd_debugging_mvcc_current_revision", "The current revision of store.", self.sm.store.revision)
        yield _gauge("etcd_debugging_mvcc_keys_total", "Total number of keys.", len(self.sm.store.keys))
        yield _gauge("etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes.", self.quota())
        alarms = GaugeMetricFamily(
            "etcd_server_alarms", "Active alarms on this member (ours: 1 per alarm type).", labels=["alarm"]
        )
        for name in sorted(_alarm_names(self.sm)):
            alarms.add_metric([name], 1)
        yield alarms
        st = n.loopmon.stats()
        yield _gauge(
            "quorumlab_loop_stall_max_seconds",
            "Longest event-loop stall over the last 60 s.",
            st["loop_stall_max_ms"] / 1000,
        )
        yield _gauge(
            "quorumlab_loop_stall_p99_seconds",
            "99th percentile event-loop stall over the last 60 s.",
            st["loop_stall_p99_ms"] / 1000,
        )
        yield _gauge(
            "quorumlab_loop_stall_max_total_seconds",
            "Longest event-loop stall since start.",
            st["loop_stall_max_total_ms"] / 1000,
        )


def _alarm_names(sm: KVStateMachine) -> set[str]:
    from node.pb import rpc_pb2

    return {rpc_pb2.AlarmType.Name(a) for _, a in sm.alarms}  # type: ignore[arg-type]


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=float(value))


class NodeMetrics:
    """One registry per node (never the process-global one: tests run several nodes' code in one process)."""

    def __init__(self, node: RaftNode, sm: KVStateMachine, version: str, quota: Callable[[], int]) -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_NodeCollector(node, sm, version, quota))
        self.wal_fsync = Histogram(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
            buckets=DISK_BUCKETS,
            registry=self.registry,
        )
        self.backend_commit = Histogram(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend (ours: one batch of committed entries "
            "applied to the MVCC store).",
            buckets=DISK_BUCKETS,
            registry=self.registry,
        )
        self.slow_apply = Counter(
            "etcd_server_slow_apply",
            "The total number of slow apply requests (likely overloaded from slow disk).",
            registry=self.registry,
        )
        self.peer_rtt = Histogram(
            "etcd_network_peer_round_trip_time_seconds",
            "Round-Trip-Time histogram between peers (ours: a heartbeat and its response).",
            labelnames=["To"],
            buckets=RTT_BUCKETS,
            registry=self.registry,
        )
        node.on_fsync.append(self.wal_fsync.observe)
        node.on_apply_batch.append(self._applied)
        node.on_peer_rtt.append(self._rtt)

    def _applied(self, seconds: float) -> None:
        self.backend_commit.observe(seconds)
        if seconds > SLOW_APPLY_S:
            self.slow_apply.inc()

    def _rtt(self, peer: int, seconds: float) -> None:
        self.peer_rtt.labels(f"{peer:x}").observe(seconds)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        # every peer gets its (possibly empty) RTT series, as etcd's prober gives every member one:
        # only a leader times heartbeats here, and a follower's scrape should still name its peers
        for pid in self.node.members:
            if pid != self.node.member_id:
                self.peer_rtt.labels(f"{pid:x}")
        return generate_latest(self.registry)
