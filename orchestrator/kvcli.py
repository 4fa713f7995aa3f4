"""`orchestrate kv ...` and `orchestrate lease ...`: etcdctl-like commands against the running cluster."""

from __future__ import annotations

import argparse
import base64
import json
import re
import shlex
import sys
from typing import Any

from node.client import Client, prefix_end
from node.pb import rpc_pb2

from .context import Ctx

SORT_TARGETS = {"KEY": 0, "VERSION": 1, "CREATE": 2, "MODIFY": 3, "VALUE": 4}
SORT_ORDERS = {"ASCEND": 1, "DESCEND": 2}


def lease_id(raw: str) -> int:
    """A lease id as etcdctl prints it (hex); argparse turns the error into one line."""
    try:
        v = int(raw, 16)
    except ValueError:
        v = -1
    if not 0 <= v < 1 << 63 or not raw.strip():
        raise argparse.ArgumentTypeError(f"bad lease id {raw!r}: expected a hexadecimal id like 694d77aa5e8a8c0d")
    return v


def _client(ctx: Ctx) -> Client:
    return ctx.cluster().client(timeout=5.0)


def _kv_json(kv: Any) -> dict[str, Any]:
    return {
        "key": base64.b64encode(kv.key).decode(),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "value": base64.b64encode(kv.value).decode(),
        **({"lease": kv.lease} if kv.lease else {}),
    }


async def kv_put(ctx: Ctx, a: argparse.Namespace) -> int:
    async with _client(ctx) as c:
        r = await c.put(a.key, a.value, lease=a.lease or 0, prev_kv=a.prev_kv)
    print("OK")
    if a.prev_kv and r.HasField("prev_kv"):
        print(r.prev_kv.key.decode(errors="replace"))
        print(r.prev_kv.value.decode(errors="replace"))
    return 0


async def kv_get(ctx: Ctx, a: argparse.Namespace) -> int:
    async with _client(ctx) as c:
        r = await c.get(
            a.key,
            prefix=a.prefix,
            range_end=(a.range_end.encode() if a.range_end else (b"\x00" if a.from_key else b"")),
            revision=a.rev,
            limit=a.limit,
            serializable=a.consistency == "s",
            keys_only=a.keys_only,
            count_only=a.count_only,
            sort_order=SORT_ORDERS.get(a.order or "", 0),
            sort_target=SORT_TARGETS.get(a.sort_by or "KEY", 0),
        )
    if a.write_out == "json":
        out = {"header": {"revision": r.header.revision}, "kvs": [_kv_json(kv) for kv in r.kvs], "count": r.count}
        if r.more:
            out["more"] = True
        print(json.dumps(out))
        return 0
    if a.count_only:
        print(r.count)
        return 0
    for kv in r.kvs:
        print(kv.key.decode(errors="replace"))
        if not a.keys_only:
            print(kv.value.decode(errors="replace"))
    return 0


async def kv_del(ctx: Ctx, a: argparse.Namespace) -> int:
    async with _client(ctx) as c:
        r = await c.delete(a.key, prefix=a.prefix, prev_kv=a.prev_kv)
    print(r.deleted)
    for kv in r.prev_kvs:
        print(kv.key.decode(errors="replace"))
        print(kv.value.decode(errors="replace"))
    return 0


async def kv_watch(ctx: Ctx, a: argparse.Namespace) -> int:
    async with _client(ctx) as c:
        count = 0
        async for ev in c.watch(a.key, prefix=a.prefix, start_revision=a.rev, prev_kv=a.prev_kv):
            print("DELETE" if ev.type == 1 else "PUT")
            if a.prev_kv and ev.HasField("prev_kv"):
                print(ev.prev_kv.key.decode(errors="replace"))
                print(ev.prev_kv.value.decode(errors="replace"))
            print(ev.kv.key.decode(errors="replace"))
            if ev.type == 0:
                print(ev.kv.value.decode(errors="replace"))
            sys.stdout.flush()
            count += 1
            if a.max_events and count >= a.max_events:
                break
    return 0


_CMP = re.compile(r'^\s*(value|version|create|mod|lease)\("([^"]*)"\)\s*(=|!=|<|>)\s*"([^"]*)"\s*$')


def parse_txn(text: str) -> rpc_pb2.TxnRequest:
    """etcdctl's interactive txn format: compares, a blank line, success ops, a blank line, failure ops."""
    parts = [[ln for ln in block.splitlines() if ln.strip()] for block in re.split(r"\n\s*\n", text.strip("\n"))]
    while len(parts) < 3:
        parts.append([])
    req = rpc_pb2.TxnRequest()
    for line in parts[0]:
        m = _CMP.match(line)
        if not m:
            raise ValueError(f'bad compare {line!r}; expected e.g. value("k") = "v" or mod("k") > "0"')
        target, key, op, val = m.groups()
        res = {"=": 0, ">": 1, "<": 2, "!=": 3}[op]
        c = rpc_pb2.Compare(key=key.encode(), result=res)  # type: ignore[arg-type]
        if target == "value":
            c.target, c.value = rpc_pb2.Compare.VALUE, val.encode()
        elif target == "version":
            c.target, c.version = rpc_pb2.Compare.VERSION, int(val)
        elif target == "create":
            c.target, c.create_revision = rpc_pb2.Compare.CREATE, int(val)
        elif target == "mod":
            c.target, c.mod_revision = rpc_pb2.Compare.MOD, int(val)
        else:
            c.target, c.lease = rpc_pb2.Compare.LEASE, int(val, 16) if val else 0
        req.compare.append(c)
    for dest, lines in ((req.success, parts[1]), (req.failure, parts[2])):
        for line in lines:
            dest.append(_op(line))
    return req


def _op(line: str) -> rpc_pb2.RequestOp:
    w = shlex.split(line)
    if not w:
        raise ValueError("empty operation")
    verb, args = w[0], w[1:]
    prefix = "--prefix" in args
    args = [x for x in args if not x.startswith("--")]
    if verb == "put" and len(args) == 2:
        return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=args[0].encode(), value=args[1].encode()))
    if verb == "get" and len(args) == 1:
        k = args[0].encode()
        return rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=k, range_end=prefix_end(k) if prefix else b""))
    if verb in ("del", "delete") and len(args) == 1:
        k = args[0].encode()
        return rpc_pb2.RequestOp(
            request_delete_range=rpc_pb2.DeleteRangeRequest(key=k, range_end=prefix_end(k) if prefix else b"")
        )
    raise ValueError(f"bad operation {line!r}; expected put K V, get K [--prefix] or del K [--prefix]")


async def kv_txn(ctx: Ctx, a: argparse.Namespace) -> int:
    try:
        req = parse_txn(sys.stdin.read())
    except ValueError as e:
        print(f"orchestrate: {e}", file=sys.stderr)
        return 2
    async with _client(ctx) as c:
        r = await c.txn(req)
    print("SUCCESS" if r.succeeded else "FAILURE")
    for op in r.responses:
        which = op.WhichOneof("response")
        print()
        if which == "response_put":
            print("OK")
        elif which == "response_delete_range":
            print(op.response_delete_range.deleted)
        elif which == "response_range":
            for kv in op.response_range.kvs:
                print(kv.key.decode(errors="replace"))
                print(kv.value.decode(errors="replace"))
    return 0


async def lease_cmd(ctx: Ctx, a: argparse.Namespace) -> int:
    async with _client(ctx) as c:
        if a.lease_cmd == "grant":
            r = await c.lease_grant(a.ttl)
            print(f"lease {r.ID:016x} granted with TTL({r.TTL}s)")
        elif a.lease_cmd == "revoke":
            await c.lease_revoke(a.id)
            print(f"lease {a.id:016x} revoked")
        elif a.lease_cmd == "ttl":
            t = await c.lease_ttl(a.id, keys=a.keys)
            if t.TTL == -1:
                print(f"lease {a.id:016x} already expired")
            else:
                keys = ", ".join(k.decode(errors="replace") for k in t.keys)
                print(
                    f"lease {a.id:016x} granted with TTL({t.grantedTTL}s), remaining({t.TTL}s)"
                    + (f", attached keys([{keys}])" if a.keys else "")
                )
        elif a.lease_cmd == "keepalive":
            ttl = await c.lease_keepalive_once(a.id)
            lid = f"{a.id:016x}"
            print(f"lease {lid} keepalived with TTL({ttl})" if ttl > 0 else f"lease {lid} expired or revoked.")
        elif a.lease_cmd == "list":
            ids = await c.leases()
            print(f"found {len(ids)} leases")
            for i in ids:
                print(f"{i:016x}")
    return 0


def _ttl(raw: str) -> int:
    if not raw.strip().isdigit() or int(raw) <= 0:
        raise argparse.ArgumentTypeError(f"expected a TTL in whole seconds > 0, got {raw!r}")
    return int(raw)


def add_parsers(sub: Any) -> None:
    kv = sub.add_parser("kv", help="etcdctl-like key-value commands against the running cluster")
    ks = kv.add_subparsers(dest="kv_cmd", required=True, metavar="KVCOMMAND")
    put = ks.add_parser("put", help="put KEY VALUE")
    put.add_argument("key")
    put.add_argument("value")
    put.add_argument("--lease", type=lease_id, help="lease id (hex)")
    put.add_argument("--prev-kv", action="store_true")
    put.set_defaults(fn=kv_put)
    get = ks.add_parser("get", help="get KEY [RANGE_END]")
    get.add_argument("key")
    get.add_argument("range_end", nargs="?")
    get.add_argument("--prefix", action="store_true")
    get.add_argument("--from-key", action="store_true")
    get.add_argument("--rev", type=int, default=0)
    get.add_argument("--limit", type=int, default=0)
    get.add_argument("--keys-only", action="store_true")
    get.add_argument("--count-only", action="store_true")
    get.add_argument("--sort-by", choices=list(SORT_TARGETS))
    get.add_argument("--order", choices=list(SORT_ORDERS))
    get.add_argument("--consistency", choices=["l", "s"], default="l")
    get.add_argument("-w", "--write-out", choices=["simple", "json"], default="simple")
    get.set_defaults(fn=kv_get)
    d = ks.add_parser("del", help="delete KEY")
    d.add_argument("key")
    d.add_argument("--prefix", action="store_true")
    d.add_argument("--prev-kv", action="store_true")
    d.set_defaults(fn=kv_del)
    w = ks.add_parser("watch", help="watch KEY and print events")
    w.add_argument("key")
    w.add_argument("--prefix", action="store_true")
    w.add_argument("--rev", type=int, default=0)
    w.add_argument("--prev-kv", action="store_true")
    w.add_argument("--max-events", type=int, default=0, help="exit after this many events")
    w.set_defaults(fn=kv_watch)
    t = ks.add_parser("txn", help="a transaction read from stdin in etcdctl's format")
    t.set_defaults(fn=kv_txn)

    lease = sub.add_parser("lease", help="lease grant / revoke / ttl / keepalive / list")
    ls = lease.add_subparsers(dest="lease_cmd", required=True, metavar="LEASECOMMAND")
    g = ls.add_parser("grant")
    g.add_argument("ttl", type=_ttl, help="seconds")
    for name in ("revoke", "ttl", "keepalive"):
        sp = ls.add_parser(name)
        sp.add_argument("id", type=lease_id, help="lease id (hex)")
        if name == "ttl":
            sp.add_argument("--keys", action="store_true")
    ls.add_parser("list")
    lease.set_defaults(fn=lease_cmd)
