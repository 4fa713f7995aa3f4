"""quorumlab.v1.Admin: our own status and fault rules, invisible to etcd clients."""

from __future__ import annotations

import json

import grpc

from node.api.pb import admin_pb2, admin_pb2_grpc, rpc_pb2
from node.faults import FaultRuleError, Rule, make_rule
from node.kv import KVError

from .context import Ctx, grpc_errors

ERR_NO_FAULTS = "quorumlab: fault injection is not enabled on this node (start it with --enable-fault-injection)"


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


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx

    @grpc_errors
    async def Status(
        self, request: admin_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.StatusReply:
        st = self.ctx.node.status_dict()
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
            raise KVError(ERR_NO_FAULTS, "FAILED_PRECONDITION")
        return self.ctx.node.faults

    @staticmethod
    def _parse(req: admin_pb2.FaultRules) -> list[Rule]:
        try:
            return [
                make_rule(r.src, r.dst, r.action, r.probability if r.action == "loss" else 1.0, r.delay_ms, r.jitter_ms)
                for r in req.rules
            ]
        except FaultRuleError as e:
            raise KVError(str(e), "INVALID_ARGUMENT") from e

    @grpc_errors
    async def SetFaults(self, request: admin_pb2.FaultRules, context: grpc.aio.ServicerContext) -> admin_pb2.FaultRules:
        t = self._table()
        t.set(self._parse(request))
        return _rules_pb(t.rules())

    @grpc_errors
    async def AddFaults(self, request: admin_pb2.FaultRules, context: grpc.aio.ServicerContext) -> admin_pb2.FaultRules:
        t = self._table()
        t.add(self._parse(request))
        return _rules_pb(t.rules())

    @grpc_errors
    async def ListFaults(
        self, request: admin_pb2.FaultRulesRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.FaultRules:
        return _rules_pb(self._table().rules())

    @grpc_errors
    async def ClearFaults(
        self, request: admin_pb2.FaultRulesRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.FaultRules:
        t = self._table()
        t.clear()
        return _rules_pb(t.rules())

    @grpc_errors
    async def Campaign(
        self, request: admin_pb2.CampaignRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.StatusReply:
        self.ctx.node.campaign()
        return admin_pb2.StatusReply(json=json.dumps({"ok": True}))
