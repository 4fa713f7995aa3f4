"""The `floor` engine of `orchestrate bench`: what any Python grpc.aio node could at most serve here.

Each "node" is its own process: a bare grpc.aio server (uvloop, node/api/server.py's SERVER_OPTIONS,
the node's GC tuning) on a free 127.0.0.1 port, serving etcd's KV service (Put, Range, Txn,
DeleteRange). Handlers parse the request, as a real node must, and answer a constant response
with a header: no Raft, no storage, no forwarding. Its CPU per operation is the cost of gRPC and
protobuf in Python alone, the floor under the builtin engine's cpu/op, measured in the same run
with the same load generator and the same psutil accounting.

A floor process exits when it is signalled or when its stdin closes, so a parent that dies
(even by SIGKILL) leaves nothing behind.

Run one by hand: `python -m bench.floor --value-size 256` prints `port <n>` once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
TAG = "qlbench-floor"  # in every floor process's command line (as TAG-<parent pid>): tests and `ps` find them
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0


@dataclass
class FloorCluster:
    """N independent floor processes; `endpoints` and `procs()` are what a bench cell needs."""

    popens: list[subprocess.Popen[bytes]] = field(default_factory=list)
    endpoints: list[str] = field(default_factory=list)

    def procs(self) -> dict[str, psutil.Process]:
        out = {}
        for i, p in enumerate(self.popens):
            with contextlib.suppress(psutil.Error):
                out[f"n{i + 1}"] = psutil.Process(p.pid)
        return out

    def stop(self) -> None:
        """Synchronous on purpose: it must finish even while the calling task is being cancelled (Ctrl-C)."""
        for p in self.popens:
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    p.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for p in self.popens:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            for stream in (p.stdin, p.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()


def _give_up(p: subprocess.Popen[bytes]) -> None:
    """Kill a child that did not come up, reap it and close our ends of its pipes."""
    p.kill()  # also unblocks a thread still reading its stdout (EOF)
    p.wait()
    for stream in (p.stdin, p.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


async def _start_one(value_size: int) -> tuple[subprocess.Popen[bytes], str]:
    # stderr to a file, not a pipe nobody drains: read only when the child fails to start
    with tempfile.TemporaryFile() as errf:
        p = subprocess.Popen(
            [sys.executable, "-m", "bench.floor", "--value-size", str(value_size), "--tag", f"{TAG}-{os.getpid()}"],
            cwd=REPO,
            stdin=subprocess.PIPE,  # our end closing (we exit, however) tells the child to go
            stdout=subprocess.PIPE,
            stderr=errf,
        )
        assert p.stdout is not None
        try:
            line = await asyncio.wait_for(asyncio.to_thread(p.stdout.readline), READY_TIMEOUT)
        except TimeoutError:
            _give_up(p)
            raise RuntimeError(f"floor server did not start within {READY_TIMEOUT:.0f} s") from None
        except BaseException:
            _give_up(p)
            raise
        parts = line.decode(errors="replace").split()
        if len(parts) != 2 or parts[0] != "port" or not parts[1].isdigit():
            _give_up(p)
            errf.seek(0)
            why = errf.read().decode(errors="replace").strip().splitlines()[-1:] or [repr(line)]
            raise RuntimeError(f"floor server failed to start (exit {p.returncode}): {why[0]}")
    return p, f"127.0.0.1:{parts[1]}"


@contextlib.asynccontextmanager
async def floor_cluster(n: int, value_size: int = 256) -> AsyncIterator[FloorCluster]:
    """N floor processes, serving when entered; always stopped on exit (exceptions, Ctrl-C)."""
    fc = FloorCluster()
    try:
        for _ in range(n):
            p, ep = await _start_one(value_size)
            fc.popens.append(p)
            fc.endpoints.append(ep)
        yield fc
    finally:
        fc.stop()


# ---- the server process ----


def _responses(value_size: int) -> dict[str, Any]:
    """Constant answers, built once: a header as a real member fills it, a Range with one key of the bench's size."""
    from node.pb import kv_pb2, rpc_pb2

    def header() -> Any:
        return rpc_pb2.ResponseHeader(cluster_id=0x1CE1A5, member_id=0xF100, revision=1000, raft_term=2)

    kv = kv_pb2.KeyValue(key=b"bench/k000000", value=b"v" * value_size, create_revision=1, mod_revision=1000, version=1)
    put = rpc_pb2.PutResponse(header=header())
    return {
        "Put": put,
        "Range": rpc_pb2.RangeResponse(header=header(), kvs=[kv], count=1),
        "DeleteRange": rpc_pb2.DeleteRangeResponse(header=header(), deleted=1),
        "Txn": rpc_pb2.TxnResponse(header=header(), succeeded=True, responses=[rpc_pb2.ResponseOp(response_put=put)]),
    }


def _as_is(b: bytes) -> bytes:
    return b


async def _serve(value_size: int) -> None:
    import grpc

    from node.api.server import SERVER_OPTIONS
    from node.pb import rpc_pb2
    from node.server.raftnode import tune_gc

    # wire bytes, serialized once: the node answers hot reads with bytes too (kv_service._passthrough),
    # and a floor must not pay what a real node has already learned to skip
    resp = {name: msg.SerializeToString() for name, msg in _responses(value_size).items()}

    def constant(name: str) -> Any:
        answer = resp[name]

        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            # the request arrives parsed (request_deserializer), as in a real node; nothing else is done
            return answer

        return handler

    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            constant(name),
            request_deserializer=req.FromString,
            response_serializer=_as_is,
        )
        for name, req in (
            ("Put", rpc_pb2.PutRequest),
            ("Range", rpc_pb2.RangeRequest),
            ("DeleteRange", rpc_pb2.DeleteRangeRequest),
            ("Txn", rpc_pb2.TxnRequest),
        )
    }
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("etcdserverpb.KV", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")  # the kernel's free port: no race with other benches
    if not port:
        raise SystemExit("floor: could not bind 127.0.0.1")
    tune_gc()  # as our node does: the floor must not pay costs a real node has already cut
    await server.start()
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    # stdin at EOF: the parent is gone (or closed it), so go too
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    eof = asyncio.ensure_future(reader.read())
    sys.stdout.write(f"port {port}\n")
    sys.stdout.flush()
    stop = asyncio.ensure_future(done.wait())
    await asyncio.wait([eof, stop], return_when=asyncio.FIRST_COMPLETED)
    eof.cancel()
    stop.cancel()
    await server.stop(0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="a bare grpc.aio etcd KV server answering constants (the bench floor)")
    ap.add_argument("--value-size", type=int, default=256, help="value size of the constant Range answer")
    ap.add_argument("--tag", default=TAG, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")  # as node/__main__.py, before grpc is imported
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(a.value_size))
        return
    uvloop.run(_serve(a.value_size))


if __name__ == "__main__":
    main()
