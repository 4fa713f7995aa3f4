"""The replicated state machine: etcd requests applied to the MVCC store and lease table.

Every node applies every entry in log order, so this code must be
deterministic: no clocks, no randomness. Lease *expiry* is decided by the
leader elsewhere (node/api/lessor.py) and arrives here as a LeaseRevoke entry.
Requests are validated (validate_*) before they are proposed, so an entry
either applies fully or fails as a whole with an etcd error. While a NOSPACE
alarm is active, puts, txns with puts and lease grants fail at apply (etcd's
capped applier), so every member refuses the same entries. With auth enabled (node/kv/auth.py)
an entry carries its sender's user and auth revision and is checked here, as etcd's authApplierV3
does: permissions are replicated state, so every member decides the same; with auth disabled the
only cost is one flag test.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import msgpack

from node.errors import EtcdError, Reason
from node.pb import kv_pb2, rpc_pb2

from .auth import AuthInfo, AuthStore
from .mvcc import KV, MVCCStore, WriteTxn, in_range
from .quota import cost_txn

MAX_TXN_OPS = 128
STEP_BUDGET_S = 0.002  # the most a snapshot walk or compaction step holds the event loop
MAX_LEASE_TTL = 9_000_000_000

OP_PUT, OP_DELETE, OP_TXN, OP_COMPACT, OP_LEASE_GRANT, OP_LEASE_REVOKE, OP_ALARM, OP_AUTH = range(1, 9)


@dataclass
class LeaseState:
    id: int
    ttl: int
    keys: set[bytes] = field(default_factory=set)


def to_pb(kv: KV, keys_only: bool = False) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(
        key=kv.key,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        value=b"" if keys_only else kv.value,
        lease=kv.lease,
    )


_SORT_KEYS: dict[int, Callable[[KV], Any]] = {
    rpc_pb2.RangeRequest.KEY: lambda kv: kv.key,
    rpc_pb2.RangeRequest.VERSION: lambda kv: kv.version,
    rpc_pb2.RangeRequest.CREATE: lambda kv: kv.create_revision,
    rpc_pb2.RangeRequest.MOD: lambda kv: kv.mod_revision,
    rpc_pb2.RangeRequest.VALUE: lambda kv: kv.value,
}


def sort_key(target: int) -> Callable[[KV], Any]:
    """The key function for a RangeRequest's sort_target (shared by every read path).

    validate_range refuses unknown targets before proposing; an entry already in a log from
    before that check sorts by key instead of raising (apply must never raise on client input:
    every member would apply the same entry and stop)."""
    return _SORT_KEYS.get(target, _SORT_KEYS[rpc_pb2.RangeRequest.KEY])


# -- validation before proposing --------------------------------------------------------
def validate_put(r: rpc_pb2.PutRequest) -> None:
    if not r.key:
        raise EtcdError(Reason.KEY_NOT_PROVIDED)


def validate_range(r: rpc_pb2.RangeRequest) -> None:
    """etcd's checkRangeRequest: proto3 enums are open, so unknown sort values must be refused here."""
    if not r.key:
        raise EtcdError(Reason.KEY_NOT_PROVIDED)
    if r.sort_order not in rpc_pb2.RangeRequest.SortOrder.values() or r.sort_target not in _SORT_KEYS:
        raise EtcdError(Reason.INVALID_SORT_OPTION)


def validate_delete(r: rpc_pb2.DeleteRangeRequest) -> None:
    if not r.key:
        raise EtcdError(Reason.KEY_NOT_PROVIDED)


def validate_txn(t: rpc_pb2.TxnRequest) -> None:
    if max(len(t.compare), len(t.success), len(t.failure)) > MAX_TXN_OPS:
        raise EtcdError(Reason.TOO_MANY_OPS)
    for c in t.compare:
        if not c.key:
            raise EtcdError(Reason.KEY_NOT_PROVIDED)
    for ops in (t.success, t.failure):
        for op in ops:
            which = op.WhichOneof("request")
            if which == "request_range":
                validate_range(op.request_range)
            elif which == "request_put":
                validate_put(op.request_put)
            elif which == "request_delete_range":
                validate_delete(op.request_delete_range)
            elif which == "request_txn":
                validate_txn(op.request_txn)
        _check_duplicates(ops)


def _collect_writes(ops: Any, puts: set[bytes], dels: list[tuple[bytes, bytes]]) -> None:
    for op in ops:
        which = op.WhichOneof("request")
        if which == "request_put":
            if op.request_put.key in puts:
                raise EtcdError(Reason.DUPLICATE_KEY)
            puts.add(op.request_put.key)
        elif which == "request_delete_range":
            dels.append((op.request_delete_range.key, op.request_delete_range.range_end))
        elif which == "request_txn":
            # either branch of a nested txn may run: check each against the outer writes
            for branch in (op.request_txn.success, op.request_txn.failure):
                p2, d2 = set(puts), list(dels)
                _collect_writes(branch, p2, d2)
            sp, sd = set(), []  # type: ignore[var-annotated]
            _collect_writes(op.request_txn.success, sp, sd)
            fp, fd = set(), []  # type: ignore[var-annotated]
            _collect_writes(op.request_txn.failure, fp, fd)
            puts |= sp | fp
            dels += sd + fd


def _check_duplicates(ops: Any) -> None:
    puts: set[bytes] = set()
    dels: list[tuple[bytes, bytes]] = []
    _collect_writes(ops, puts, dels)
    for k in puts:
        for start, end in dels:
            if in_range(k, start, end):
                raise EtcdError(Reason.DUPLICATE_KEY)


def encode(op: int, msg: Any, ai: AuthInfo | None = None) -> bytes:
    """An entry: [op, request] or, from an authenticated client, [op, request, user, auth revision]."""
    return encode_body(op, msg.SerializeToString(), ai)


def encode_body(op: int, body: bytes, ai: AuthInfo | None = None) -> bytes:
    """encode() of a request already serialized (the API encodes it once for its size check)."""
    if ai is None:
        return msgpack.packb([op, body])
    return msgpack.packb([op, body, ai.user, ai.revision])


def encode_auth(method: str, msg: Any, ai: AuthInfo | None, extra: str = "") -> bytes:
    """An Auth service entry: passwords in msg are already hashed (or blank) by the proposer."""
    user, rev = (ai.user, ai.revision) if ai is not None else ("", 0)
    return msgpack.packb([OP_AUTH, msg.SerializeToString(), user, rev, method, extra])


class KVStateMachine:
    """node.server's StateMachine: decode an entry, apply it, return the etcd response."""

    def __init__(self, auth_token_ttl: float | None = None) -> None:
        """auth_token_ttl: etcd's --auth-token-ttl in seconds (None: $QUORUMLAB_AUTH_TOKEN_TTL, else 300)."""
        self.store = MVCCStore()
        self.leases: dict[int, LeaseState] = {}
        self.alarms: dict[tuple[int, int], None] = {}
        self.auth = AuthStore(ttl=auth_token_ttl)
        self._ai: AuthInfo | None = None  # the sender of the entry being applied (auth enabled only)
        self.consistent_index = 0
        self.on_lease_granted: list[Any] = []
        self.on_lease_revoked: list[Any] = []
        self.on_alarm: list[Any] = []  # called with the AlarmRequest after an alarm change is applied
        self._trimmer: asyncio.Task[None] | None = None

    # -- StateMachine protocol ------------------------------------------------------
    def apply(self, index: int, payload: bytes) -> Any:
        self.consistent_index = index
        op, body, *hdr = msgpack.unpackb(payload)
        self._ai = AuthInfo(hdr[0], hdr[1]) if hdr and hdr[1] else None
        try:
            if op == OP_AUTH:
                return self.auth.apply(hdr[2], body, self._ai, index, hdr[3])
            if op == OP_PUT:
                self._check_space()
                return self._put(rpc_pb2.PutRequest.FromString(body))
            if op == OP_DELETE:
                return self._delete(rpc_pb2.DeleteRangeRequest.FromString(body))
            if op == OP_TXN:
                t = rpc_pb2.TxnRequest.FromString(body)
                if cost_txn(t) > 0:
                    self._check_space()
                return self._txn(t)
            if op == OP_COMPACT:
                return self._compact(rpc_pb2.CompactionRequest.FromString(body))
            if op == OP_LEASE_GRANT:
                self._check_space()
                return self._lease_grant(rpc_pb2.LeaseGrantRequest.FromString(body))
            if op == OP_LEASE_REVOKE:
                return self._lease_revoke(rpc_pb2.LeaseRevokeRequest.FromString(body))
            if op == OP_ALARM:
                return self._alarm(rpc_pb2.AlarmRequest.FromString(body))
        except EtcdError as e:
            return e  # the proposer raises it; other nodes applied nothing
        raise ValueError(f"unknown operation {op}")

    def nospace(self) -> bool:
        """A NOSPACE alarm is active (for any member): the cluster takes no more puts."""
        return any(a == rpc_pb2.NOSPACE for _, a in self.alarms)

    def _check_space(self) -> None:
        if self.nospace():
            raise EtcdError(Reason.NO_SPACE)

    # -- snapshots -------------------------------------------------------------------
    @staticmethod
    def _parts(
        store: list[bytes],
        leases: list[tuple[int, int]],
        alarms: list[tuple[int, int]],
        ci: int,
        auth: dict[str, Any] | None = None,
    ) -> list[bytes]:
        """The snapshot format: a map {v: 2, store, leases, alarms, ci[, auth]}, as pieces to join.

        "auth" is written only once the auth store holds something, so a cluster that never used
        auth writes exactly the old format (and older snapshots, without it, still load)."""
        p = msgpack.Packer()
        head = p.pack_map_header(5 if auth is None else 6) + p.pack("v") + p.pack(2) + p.pack("store")
        tail = p.pack("leases") + p.pack(leases) + p.pack("alarms") + p.pack(alarms) + p.pack("ci") + p.pack(ci)
        if auth is not None:
            tail += p.pack("auth") + p.pack(auth)
        return [head, *store, tail]

    def snapshot_async(self) -> Coroutine[Any, Any, bytes]:
        """The state as of the call, although apply() keeps running while the result is awaited.

        Everything is fixed when this is called (not when the coroutine first runs): the store
        is then walked in steps of a couple of milliseconds at the revision of the call (see
        StoreWalk), yielding to the loop between them; leases, alarms and the consistent index
        are copied at the call. Raises StoreReplaced if a snapshot is restored meanwhile.
        """
        walk = self.store.walk()
        leases = [(lease.id, lease.ttl) for lease in self.leases.values()]
        alarms = list(self.alarms)
        ci = self.consistent_index
        a = self.auth
        auth = a.dump() if a.enabled or a.users or a.roles or a.revision != 1 else None

        async def finish() -> bytes:
            try:
                while not walk.step(STEP_BUDGET_S):
                    await asyncio.sleep(0)
            finally:
                walk.close()
            parts = self._parts(walk.parts(), leases, alarms, ci, auth)
            return await asyncio.to_thread(b"".join, parts)  # only bytes cross to the thread

        return finish()

    def restore(self, data: bytes) -> None:
        """Read snapshot_async() output, or the older list format."""
        blob = msgpack.unpackb(data)
        auth = None
        if isinstance(blob, dict):
            store, leases, alarms, ci = blob["store"], blob["leases"], blob["alarms"], blob["ci"]
            auth = blob.get("auth")
        else:
            store, leases, alarms, ci = blob
        self.auth.load(auth)
        self.store.load(store)  # in place: watchers stay attached to the same store
        self.leases = {int(i): LeaseState(int(i), int(t)) for i, t in leases}
        for k, v in self.store.keys.items():
            kv = v.latest()
            if kv is not None and kv.lease in self.leases:
                self.leases[kv.lease].keys.add(k)
        self.alarms = {(int(m), int(a)): None for m, a in alarms}
        self.consistent_index = int(ci)
        for cb in self.on_lease_granted:
            cb(None)

    # -- a Range inside a Txn being applied (plain reads: node/kv/reads.py) ------------------
    def _range_in(self, txn: WriteTxn, r: rpc_pb2.RangeRequest) -> rpc_pb2.RangeResponse:
        rev = r.revision
        kvs = txn.range(r.key, r.range_end, rev)
        if rev > 0:
            self.store.check_rev(rev)
        if r.min_mod_revision:
            kvs = [kv for kv in kvs if kv.mod_revision >= r.min_mod_revision]
        if r.max_mod_revision:
            kvs = [kv for kv in kvs if kv.mod_revision <= r.max_mod_revision]
        if r.min_create_revision:
            kvs = [kv for kv in kvs if kv.create_revision >= r.min_create_revision]
        if r.max_create_revision:
            kvs = [kv for kv in kvs if kv.create_revision <= r.max_create_revision]
        resp = rpc_pb2.RangeResponse(count=len(kvs))
        order, target = r.sort_order, r.sort_target
        if order == rpc_pb2.RangeRequest.NONE and target != rpc_pb2.RangeRequest.KEY:
            order = rpc_pb2.RangeRequest.ASCEND
        if order != rpc_pb2.RangeRequest.NONE:
            kvs = sorted(kvs, key=sort_key(target), reverse=order == rpc_pb2.RangeRequest.DESCEND)
        if r.limit > 0 and len(kvs) > r.limit:
            kvs = kvs[: r.limit]
            resp.more = True
        if not r.count_only:
            resp.kvs.extend(to_pb(kv, r.keys_only) for kv in kvs)
        resp.header.revision = self.store.revision
        return resp

    # -- writes ----------------------------------------------------------------------
    def _put(self, r: rpc_pb2.PutRequest) -> rpc_pb2.PutResponse:
        if self.auth.enabled:  # etcd's authApplierV3.Put
            self.auth.check(self._ai, r.key, b"", True)
            self._check_lease_puts(r.lease)
            if r.prev_kv:
                self.auth.check(self._ai, r.key, b"", False)
        txn = self.store.begin()
        resp = self._put_in(txn, r)
        resp.header.revision = txn.end()
        return resp

    def _put_in(self, txn: WriteTxn, r: rpc_pb2.PutRequest) -> rpc_pb2.PutResponse:
        prev = txn.get(r.key)
        value, lease = r.value, r.lease
        if r.ignore_value or r.ignore_lease:
            if prev is None:
                raise EtcdError(Reason.KEY_NOT_FOUND)
            if r.ignore_value:
                value = prev.value
            if r.ignore_lease:
                lease = prev.lease
        if lease and lease not in self.leases:
            raise EtcdError(Reason.LEASE_NOT_FOUND)
        txn.put(r.key, value, lease)
        if prev is not None and prev.lease and prev.lease != lease and prev.lease in self.leases:
            self.leases[prev.lease].keys.discard(r.key)
        if lease:
            self.leases[lease].keys.add(r.key)
        resp = rpc_pb2.PutResponse()
        if r.prev_kv and prev is not None:
            resp.prev_kv.CopyFrom(to_pb(prev))
        return resp

    def _delete(self, r: rpc_pb2.DeleteRangeRequest) -> rpc_pb2.DeleteRangeResponse:
        if self.auth.enabled:
            self.auth.check(self._ai, r.key, r.range_end, True)
            if r.prev_kv:
                self.auth.check(self._ai, r.key, r.range_end, False)
        txn = self.store.begin()
        resp = self._delete_in(txn, r)
        resp.header.revision = txn.end()
        return resp

    def _delete_in(self, txn: WriteTxn, r: rpc_pb2.DeleteRangeRequest) -> rpc_pb2.DeleteRangeResponse:
        gone = txn.delete(r.key, r.range_end)
        for kv in gone:
            if kv.lease in self.leases:
                self.leases[kv.lease].keys.discard(kv.key)
        resp = rpc_pb2.DeleteRangeResponse(deleted=len(gone))
        if r.prev_kv:
            resp.prev_kvs.extend(to_pb(kv) for kv in gone)
        return resp

    def _compare(self, txn: WriteTxn, c: rpc_pb2.Compare) -> bool:
        kvs = txn.range(c.key, c.range_end) if c.range_end else [kv for kv in [txn.get(c.key)] if kv is not None]
        if not kvs:
            if c.target == rpc_pb2.Compare.VALUE:
                return False
            kvs = [KV(c.key, 0, 0, 0, b"", 0)]
        for kv in kvs:
            t = c.target
            a: Any
            b: Any
            if t == rpc_pb2.Compare.VALUE:
                a, b = kv.value, c.value
            elif t == rpc_pb2.Compare.VERSION:
                a, b = kv.version, c.version
            elif t == rpc_pb2.Compare.CREATE:
                a, b = kv.create_revision, c.create_revision
            elif t == rpc_pb2.Compare.MOD:
                a, b = kv.mod_revision, c.mod_revision
            else:
                a, b = kv.lease, c.lease
            res = c.result
            ok = (
                (res == rpc_pb2.Compare.EQUAL and a == b)
                or (res == rpc_pb2.Compare.NOT_EQUAL and a != b)
                or (res == rpc_pb2.Compare.GREATER and a > b)
                or (res == rpc_pb2.Compare.LESS and a < b)
            )
            if not ok:
                return False
        return True

    def _txn(self, t: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
        if self.auth.enabled:
            self.auth.check_txn(self._ai, t, self.lease_keys)
        txn = self.store.begin()
        # dry-run semantics: if any op fails (e.g. a lease is missing) nothing is applied
        saved_leases = {i: set(s.keys) for i, s in self.leases.items()}
        try:
            resp = self._txn_in(txn, t)
        except EtcdError:
            for i, keys in saved_leases.items():
                self.leases[i].keys = keys
            raise
        resp.header.revision = txn.end()
        return resp

    def _txn_in(self, txn: WriteTxn, t: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
        ok = all(self._compare(txn, c) for c in t.compare)
        resp = rpc_pb2.TxnResponse(succeeded=ok)
        for op in t.success if ok else t.failure:
            which = op.WhichOneof("request")
            out = rpc_pb2.ResponseOp()
            if which == "request_range":
                rr = self._range_in(txn, op.request_range)
                out.response_range.CopyFrom(rr)
            elif which == "request_put":
                out.response_put.CopyFrom(self._put_in(txn, op.request_put))
            elif which == "request_delete_range":
                out.response_delete_range.CopyFrom(self._delete_in(txn, op.request_delete_range))
            elif which == "request_txn":
                out.response_txn.CopyFrom(self._txn_in(txn, op.request_txn))
            resp.responses.append(out)
        return resp

    def txn_is_read_only(self, t: rpc_pb2.TxnRequest) -> bool:
        for ops in (t.success, t.failure):
            for op in ops:
                which = op.WhichOneof("request")
                if which in ("request_put", "request_delete_range"):
                    return False
                if which == "request_txn" and not self.txn_is_read_only(op.request_txn):
                    return False
        return True

    def _compact(self, r: rpc_pb2.CompactionRequest) -> rpc_pb2.CompactionResponse:
        self.store.compact(r.revision)
        self._schedule_trim()
        resp = rpc_pb2.CompactionResponse()
        resp.header.revision = self.store.revision
        return resp

    def _schedule_trim(self) -> None:
        """Drop compacted versions: in small steps on a running loop, at once without one."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.store.trim_all()
            return
        if self._trimmer is None or self._trimmer.done():
            self._trimmer = loop.create_task(self._trim_loop(), name="kv-compactor")

    async def _trim_loop(self) -> None:
        s = self.store
        while s.trim_step(STEP_BUDGET_S):
            # a walk in progress holds older versions: wait for it rather than spin
            await asyncio.sleep(0 if s.trimming() else 0.05)

    # -- leases ------------------------------------------------------------------------
    def lease_keys(self, lease_id: int) -> set[bytes]:
        """The keys attached to a lease (none for an unknown lease)."""
        lease = self.leases.get(lease_id)
        return lease.keys if lease is not None else set()

    def _check_lease_puts(self, lease_id: int) -> None:
        """etcd's checkLeasePuts: using or revoking a lease needs write on every key it holds."""
        lease = self.leases.get(lease_id)
        for k in sorted(lease.keys) if lease is not None else ():
            self.auth.check(self._ai, k, b"", True)

    def _lease_grant(self, r: rpc_pb2.LeaseGrantRequest) -> rpc_pb2.LeaseGrantResponse:
        if r.ID in self.leases:
            raise EtcdError(Reason.LEASE_EXISTS)
        ttl = r.TTL  # the proposer already raised it to the minimum (see lease_service)
        self.leases[r.ID] = LeaseState(r.ID, ttl)
        for cb in self.on_lease_granted:
            cb(r.ID)
        resp = rpc_pb2.LeaseGrantResponse(ID=r.ID, TTL=ttl)
        resp.header.revision = self.store.revision
        return resp

    def _lease_revoke(self, r: rpc_pb2.LeaseRevokeRequest) -> rpc_pb2.LeaseRevokeResponse:
        if self.auth.enabled:
            self._check_lease_puts(r.ID)
        lease = self.leases.get(r.ID)
        if lease is None:
            raise EtcdError(Reason.LEASE_NOT_FOUND)
        txn = self.store.begin()
        for k in sorted(lease.keys):
            txn.delete(k, b"")
        del self.leases[r.ID]
        for cb in self.on_lease_revoked:
            cb(r.ID)
        resp = rpc_pb2.LeaseRevokeResponse()
        resp.header.revision = txn.end()
        return resp

    # -- alarms ------------------------------------------------------------------------
    def _alarm(self, r: rpc_pb2.AlarmRequest) -> rpc_pb2.AlarmResponse:
        """etcd's semantics: the reply lists the alarm activated (or already active) or the one
        deactivated; deactivating with alarm NONE (ours, not etcd's) clears every alarm of
        memberID (0: of every member)."""
        key = (r.memberID, int(r.alarm))
        resp = rpc_pb2.AlarmResponse()
        changed: list[tuple[int, int]] = []
        if r.action == rpc_pb2.AlarmRequest.ACTIVATE and r.alarm != rpc_pb2.NONE:
            if key not in self.alarms:
                self.alarms[key] = None
            changed = [key]
        elif r.action == rpc_pb2.AlarmRequest.DEACTIVATE:
            if r.alarm == rpc_pb2.NONE:
                changed = [k for k in self.alarms if k[0] == r.memberID or r.memberID == 0]
            elif key in self.alarms:
                changed = [key]
            for k in changed:
                del self.alarms[k]
        for m, a in changed:
            resp.alarms.add(memberID=m, alarm=a)  # type: ignore[arg-type]
        resp.header.revision = self.store.revision
        for cb in self.on_alarm:
            cb(r)
        return resp

    def alarm_list(self) -> rpc_pb2.AlarmResponse:
        resp = rpc_pb2.AlarmResponse()
        for m, a in self.alarms:
            resp.alarms.add(memberID=m, alarm=a)  # type: ignore[arg-type]
        resp.header.revision = self.store.revision
        return resp

    def hash_kv(self, rev: int) -> tuple[int, int, int]:
        """etcd's HashKV idea: a checksum of every key version up to rev (compaction-aware)."""
        rev = rev or self.store.revision
        if 0 < rev < self.store.compact_revision:
            raise EtcdError(Reason.COMPACTED)
        self.store.check_rev(rev)
        h = 0
        crev = self.store.compact_revision
        for k, v in self.store.keys.items():
            # versions compacted but not trimmed yet do not count (trimming is local timing)
            j = v.keep_from(crev)
            for m, kv in zip(v.mods[j:], v.vals[j:], strict=True):
                if m > rev:
                    break
                h = zlib.crc32(k + m.to_bytes(8, "big") + (kv.value if kv is not None else b"\xff"), h)
        return h & 0xFFFFFFFF, crev, rev

    def db_size(self) -> int:
        """An estimate of the bytes held, standing in for bbolt's file size; O(1), kept up to
        date by every write and compaction step."""
        return self.store.size
