"""quorumlab.v1.Admin: our own status and fault rules, invisible to etcd clients.

On a node started with --peer-auth-file every call, Status included (it names member and cluster
ids, peers and fault rules), needs the cluster's credential: gRPC metadata `quorumlab-admin-token`
holding a token derived from the secret (node/secret.py). A derived token rather than the secret,
so a token seen on an unencrypted wire lets nobody speak Raft. etcd's Maintenance.Status stays
the public liveness check. Without a secret the service is open, as before.

On a TLS client port that verifies client certificates (--client-cert-auth), a certificate whose
common name is --admin-cert-cn (the orchestrator's, orchestrator/pki.py) is accepted in place of
the token: the TLS handshake proved it was signed by the trusted CA and that the caller holds its
key. A member's certificate (its CN is its name) or any other client's is not.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from node.errors import EtcdError, Reason
from node.faults import FaultRuleError, Rule, make_rule
from node.pb import admin_pb2, admin_pb2_grpc, rpc_pb2
from node.secret import ADMIN_METADATA_KEY, admin_token, same
from node.server.raftnode import RaftNode

from .context import Ctx, grpc_errors

T = TypeVar("T")


def _rules_pb(rules: list[Rule]) -> admin_pb2.FaultRules:
    return admin_pb2.FaultRules(
        rules=[
            admin_pb2.FaultRule(
                src=r.src,
                dst=r.dst,
                action=r.action,
                probability=r.probability,
                delay_ms=r.delay_ms,
                jitter_ms=r.jitter_ms,
            )
            for r in rules
        ]
    )


LOG_TAIL = 64  # entries whose terms the dashboard's log view draws


def raft_detail(node: RaftNode) -> dict[str, Any]:
    """The log tail, the election timer and per-peer message counts (orchestrator/views.py RaftDetail).

    O(LOG_TAIL + peers): the dashboard asks every member twice a second."""
    r = node.raft
    t = node.transport
    if r is None or t is None:
        return {}
    name_of = node.membership.name_of
    hb = float(node.cfg.heartbeat_ms)
    first, terms = r.tail_terms(LOG_TAIL)
    elapsed, due = r.election_timer()
    return {
        "log_first": first,
        "log_terms": terms,
        "election_elapsed_ms": elapsed * hb,
        "election_timeout_ms": due * hb,
        "msgs_sent": {name_of(p): n for p, n in t.msgs_sent.items()},
        "msgs_recv": {name_of(p): n for p, n in t.msgs_recv.items()},
    }


def node_status(node: RaftNode) -> dict[str, Any]:
    """The member's status as the orchestrator, chaos and the dashboard read it (Admin.Status).

    Rendered from the node's public fields and Raft's Status snapshot, both cheap: the
    dashboard polls every member several times a second."""
    st = node.status()
    name_of = node.membership.name_of
    hb = node.cfg.heartbeat_ms
    peers = {}
    for pid, ps in st.peers.items():
        if pid == node.member_id:
            continue
        peers[name_of(pid)] = {
            "id": f"{pid:x}",
            "match": ps.match,
            "next": ps.next,
            "state": ps.state,
            "active": ps.recent_active,
            "last_contact_ms": (st.tick - ps.last_contact_tick) * hb,
            "learner": ps.learner,
            "connected": node.connected(pid),
        }
    return {
        "name": node.cfg.name,
        "id": f"{node.member_id:x}",
        "cluster_id": f"{node.cluster_id:x}",
        "role": st.role.name.lower().replace("_", "-"),
        "term": st.term,
        "vote": name_of(st.vote) if st.vote else "",
        "leader": name_of(st.lead) if st.lead else "",
        "leader_id": f"{st.lead:x}" if st.lead else "",
        "commit": st.commit,
        "applied": node.applied,
        "last_index": st.last_index,
        "snapshot_index": st.snapshot_index,
        "voters": [name_of(v) for v in st.voters],
        "learners": [name_of(v) for v in st.learners],
        "peers": peers,
        "leader_changes": node.leader_changes,
        "transferring_to": name_of(st.lead_transferee) if st.lead_transferee else "",
        "fault_rules": [r.to_dict() for r in node.faults.rules()] if node.faults else None,
        "pid": os.getpid(),
        "uptime_s": round(node.uptime_s(), 3),
        "disk_full": node.disk_full,
        "metrics_url": node.cfg.metrics_url,
        "raft": raft_detail(node),
        **node.loopmon.stats(),
    }


def _admin_only(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Refuse the call unless it carries this cluster's Admin token (when the node has a secret)."""

    @functools.wraps(fn)
    async def wrapper(self: AdminService, request: Any, context: grpc.aio.ServicerContext) -> T:
        self.check_credential(context)
        return await fn(self, request, context)

    return wrapper


def _cert_common_names(context: grpc.aio.ServicerContext) -> list[bytes]:
    """The CN of the caller's client certificate, as the TLS layer verified it ([] without one)."""
    try:
        names = context.auth_context().get("x509_common_name", [])
    except Exception:  # noqa: BLE001 - no auth context (plaintext): no certificate
        return []
    return [n for n in names if isinstance(n, bytes)]


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, ctx: Ctx, admin_cert_cn: str | None = None) -> None:
        """admin_cert_cn: also accept a verified client certificate with this common name (node/__main__.py
        passes it only for a client port that verifies certificates: grpc passes an unverified one's CN too)."""
        self.ctx = ctx
        secret = ctx.node.cfg.peer_secret
        self._token = admin_token(secret) if secret is not None else None
        self._cert_cn = admin_cert_cn.encode() if admin_cert_cn else None

    def check_credential(self, context: grpc.aio.ServicerContext) -> None:
        if self._cert_cn is not None:
            if self._cert_cn in _cert_common_names(context):
                return
            if self._token is None:  # a certificate is the only credential this node knows
                raise EtcdError(Reason.ADMIN_DENIED)
        if self._token is None:
            return
        sent = dict(context.invocation_metadata() or ()).get(ADMIN_METADATA_KEY)
        if not isinstance(sent, str) or not sent:
            raise EtcdError(Reason.ADMIN_UNAUTHENTICATED)
        if not same(sent, self._token):
            raise EtcdError(Reason.ADMIN_DENIED)

    @grpc_errors
    @_admin_only
    async def Status(
        self, request: admin_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.StatusReply:
        st = node_status(self.ctx.node)
        st["revision"] = self.ctx.sm.store.revision
        st["compact_revision"] = self.ctx.sm.store.compact_revision
        st["keys"] = len(self.ctx.sm.store.keys)  # O(1): a SortedDict knows its length
        st["leases"] = len(self.ctx.sm.leases)
        st["alarms"] = sorted({rpc_pb2.AlarmType.Name(a) for _, a in self.ctx.sm.alarms})  # type: ignore[arg-type]
        st["db_size"] = self.ctx.sm.db_size()
        st["quota_backend_bytes"] = self.ctx.space.quota
        st["client_url"] = self.ctx.node.cfg.client_url()
        st["peer_url"] = self.ctx.node.cfg.peer_url()
        return admin_pb2.StatusReply(json=json.dumps(st))

    def _table(self):  # type: ignore[no-untyped-def]
        if self.ctx.node.faults is None:
            raise EtcdError(Reason.NO_FAULT_INJECTION)
        return self.ctx.node.faults

    @staticmethod
    def _parse(req: admin_pb2.FaultRules) -> list[Rule]:
        try:
            return [
                make_rule(r.src, r.dst, r.action, r.probability if r.action == "loss" else 1.0, r.delay_ms, r.jitter_ms)
                for r in req.rules
            ]
        except FaultRuleError as e:
            raise EtcdError(Reason.INVALID_FAULT_RULE, str(e)) from e

    @grpc_errors
    @_admin_only
    async def SetFaults(self, request: admin_pb2.FaultRules, context: grpc.aio.ServicerContext) -> admin_pb2.FaultRules:
        t = self._table()
        t.set(self._parse(request))
        return _rules_pb(t.rules())

    @grpc_errors
    @_admin_only
    async def AddFaults(self, request: admin_pb2.FaultRules, context: grpc.aio.ServicerContext) -> admin_pb2.FaultRules:
        t = self._table()
        t.add(self._parse(request))
        return _rules_pb(t.rules())

    @grpc_errors
    @_admin_only
    async def ListFaults(
        self, request: admin_pb2.FaultRulesRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.FaultRules:
        return _rules_pb(self._table().rules())

    @grpc_errors
    @_admin_only
    async def ClearFaults(
        self, request: admin_pb2.FaultRulesRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.FaultRules:
        t = self._table()
        t.clear()
        return _rules_pb(t.rules())

    @grpc_errors
    @_admin_only
    async def Campaign(
        self, request: admin_pb2.CampaignRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.StatusReply:
        self.ctx.node.campaign()
        return admin_pb2.StatusReply(json=json.dumps({"ok": True}))
