"""A small HTTP/1.1 server on the loop for /metrics, /health and /version.

Written on asyncio streams rather than a threaded server so a scrape reads the node's state on the
loop that owns it; requests are tiny and bounded (8 KiB of headers, 5 s to send them), and every
response closes the connection, which Prometheus handles."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable

from .collector import NodeMetrics

log = logging.getLogger("quorumlab.metrics")

MAX_HEADER = 8192
MAX_CONNS = 64
HEALTH_CACHE_S = 1.0  # /health costs a ReadIndex round: answered from the last result within this
HEADER_TIMEOUT_S = 5.0
CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"

# (healthy, body): etcd answers {"health":"true"} with 200, {"health":"false"} with 503
HealthCheck = Callable[[], Awaitable[tuple[bool, str]]]


class MetricsServer:
    def __init__(self, metrics: NodeMetrics, health: HealthCheck, version: dict[str, str]) -> None:
        self.metrics = metrics
        self.health = health
        self.version = version
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._health: tuple[float, tuple[bool, str]] | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0 picks a free port); returns the port."""
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEADER)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._conns):
                t.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        if len(self._conns) > MAX_CONNS:  # a flood of scrapers cannot pile up work on the node's loop
            writer.close()
            if task is not None:
                self._conns.discard(task)
            return
        try:
            try:
                status, ctype, body = await self._respond(reader)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                raise
            except Exception:  # a bug while answering: logged, and the scraper gets a 500, not a dropped socket
                log.exception("metrics: error while answering")
                status, ctype, body = "500 Internal Server Error", "text/plain; charset=utf-8", b"internal error\n"
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            if task is not None:
                self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEADER_TIMEOUT_S)
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return "400 Bad Request", "text/plain; charset=utf-8", b"bad request\n"
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain; charset=utf-8", b"method not allowed\n"
        if target == "/metrics":
            return "200 OK", CONTENT_TYPE_METRICS, self.metrics.exposition()
        if target == "/health":
            now = time.monotonic()
            if self._health is None or now - self._health[0] > HEALTH_CACHE_S:
                self._health = (now, await self.health())
            ok, body = self._health[1]
            return ("200 OK" if ok else "503 Service Unavailable"), "text/plain; charset=utf-8", body.encode()
        if target == "/version":
            return "200 OK", "application/json", json.dumps(self.version, separators=(",", ":")).encode()
        return "404 Not Found", "text/plain; charset=utf-8", b"404 page not found\n"
