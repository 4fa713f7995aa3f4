"""Event-loop lag monitor: how late the loop runs a timer is how long something blocked it.

Heartbeats, votes and client replies all share one asyncio loop, so any
callback that holds it (packing a big state, building a huge reply) delays
them all; a stall longer than the election timeout costs the leadership. A
timer callback re-arms itself every `period` and records how late it ran.
A 60 s window gives the recent max and p99, and the lifetime max is kept too.

Stalls above `threshold` are logged (rate-limited). To name the culprit, a
small watchdog thread notices when the loop has not run the timer for
`threshold` and records the loop thread's current stack, which the warning
then shows. Cost, measured on the 2-core box while others ran: the timer's
40 wake-ups/s take ~0.2% of a core, the watchdog's 10/s ~0.06%.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import sys
import threading
import time
import traceback
from collections import deque

log = logging.getLogger("quorumlab.loop")

PERIOD_S = 0.025  # a stall of X ms reads as at least X - 25 ms; 40 wake-ups/s (~0.2% of a loaded core)
WATCH_S = 0.1  # the watchdog thread's poll: names stalls longer than threshold + 100 ms
WINDOW_S = 60.0
WARN_EVERY_S = 10.0
STATS_CACHE_S = 0.5


class LoopMonitor:
    """Measures event-loop stalls; start() on the loop to watch, stop() when done."""

    def __init__(
        self,
        threshold_s: float,
        *,
        period_s: float = PERIOD_S,
        watch_s: float = WATCH_S,
        window_s: float = WINDOW_S,
        warn_every_s: float = WARN_EVERY_S,
        name: str = "",
        watchdog: bool = True,
    ) -> None:
        self.threshold_s = threshold_s
        self.period_s = min(period_s, threshold_s / 2)
        self.watch_s = watch_s
        self.window_s = window_s
        self.warn_every_s = warn_every_s
        self.name = name
        self.max_total_s = 0.0
        self._times: deque[float] = deque()
        self._lags: deque[float] = deque()
        self._busy: deque[float] = deque()  # how much of each lag the loop thread spent running
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._cpu = 0.0  # the loop thread's CPU time at the last fire
        self.busy_max_total_s = 0.0
        self._last_warn = -1e9
        self._suppressed = 0
        self._suppressed_max = 0.0
        self._cache: tuple[float, dict[str, float]] | None = None
        self._watchdog = watchdog
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._loop_thread = 0
        self._culprit: tuple[float, str] | None = None  # (due time it was seen for, stack)

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._cpu = time.thread_time()
        self._arm(time.monotonic())
        if self._watchdog:
            self._stop.clear()
            self._thread = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._loop = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None

    def _arm(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self.period_s
        # call_later runs on the loop's own clock; we measure with time.monotonic (the same
        # clock on Linux for both asyncio and uvloop) so the comparison is exact
        self._handle = self._loop.call_later(self.period_s, self._fire)

    def _fire(self) -> None:
        now = time.monotonic()
        lag = max(0.0, now - self._due)
        cpu = time.thread_time()
        self.record(lag, now, cpu - self._cpu)
        self._cpu = cpu
        if self._loop is not None:
            self._arm(now)

    # -- measurements --------------------------------------------------------------
    def record(self, lag: float, now: float | None = None, cpu: float | None = None) -> None:
        """One observation: the timer ran `lag` seconds late; the loop thread used `cpu` s of CPU meanwhile.

        The CPU time tells a loop held by our own code from one that waited for a CPU on an
        overloaded machine (or for the GIL, held by another thread).
        """
        now = time.monotonic() if now is None else now
        busy = lag if cpu is None else min(lag, cpu)
        self._times.append(now)
        self._lags.append(lag)
        self._busy.append(busy)
        cutoff = now - self.window_s
        while self._times and self._times[0] < cutoff:
            self._times.popleft()
            self._lags.popleft()
            self._busy.popleft()
        self.max_total_s = max(self.max_total_s, lag)
        self.busy_max_total_s = max(self.busy_max_total_s, busy)
        if lag > self.threshold_s:
            self._cache = None
            self._stalled(lag, now, busy)

    def _stalled(self, lag: float, now: float, busy: float) -> None:
        culprit = ""
        c = self._culprit
        if c is not None and c[0] == self._due:
            culprit = c[1]
        if now - self._last_warn < self.warn_every_s:
            self._suppressed += 1
            self._suppressed_max = max(self._suppressed_max, lag)
            return
        more = ""
        if self._suppressed:
            more = f"; {self._suppressed} more since the last warning (worst {self._suppressed_max * 1000:.0f} ms)"
        log.warning(
            "%sevent loop stalled %.0f ms, %.0f ms of it running on the loop thread (the rest it waited for a "
            "CPU or the GIL); over %.0f ms, half a heartbeat: heartbeats and votes were late%s%s",
            f"{self.name}: " if self.name else "",
            lag * 1000,
            busy * 1000,
            self.threshold_s * 1000,
            more,
            f"; the loop was busy in:\n{culprit}" if culprit else "",
        )
        self._last_warn = now
        self._suppressed = 0
        self._suppressed_max = 0.0

    def stats(self) -> dict[str, float]:
        """loop_stall_max_ms / loop_stall_p99_ms over the window, loop_stall_max_total_ms since start.

        loop_stall_busy_max_ms (window) and loop_stall_busy_max_total_ms count only the part of
        each stall the loop thread was running: what our own code on the loop is to blame for."""
        now = time.monotonic()
        c = self._cache
        if c is not None and now - c[0] < STATS_CACHE_S:
            out = dict(c[1])
        else:
            lags = self._lags
            if lags:
                mx, busy = max(lags), max(self._busy)
                k = len(lags) // 100 + 1  # the p99 is the k-th largest sample
                p99 = heapq.nlargest(k, lags)[-1]
            else:
                mx = p99 = busy = 0.0
            out = {
                "loop_stall_max_ms": round(mx * 1000, 1),
                "loop_stall_p99_ms": round(p99 * 1000, 1),
                "loop_stall_busy_max_ms": round(busy * 1000, 1),
            }
            self._cache = (now, dict(out))
        out["loop_stall_max_total_ms"] = round(self.max_total_s * 1000, 1)
        out["loop_stall_busy_max_total_ms"] = round(self.busy_max_total_s * 1000, 1)
        return out

    # -- the watchdog thread ---------------------------------------------------------
    def _watch(self) -> None:
        """Snapshot the loop thread's stack while it is stuck, so the warning can say where."""
        while not self._stop.wait(self.watch_s):
            due = self._due
            if time.monotonic() - due < self.threshold_s:
                continue
            c = self._culprit
            if c is not None and c[0] == due:
                continue  # already captured this stall
            frame = sys._current_frames().get(self._loop_thread)
            if frame is None:
                continue
            stack = traceback.format_list(traceback.extract_stack(frame, limit=None)[-8:])
            self._culprit = (due, "".join(stack).rstrip())
