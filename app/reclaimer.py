"""Gives memory back to the operating system once the server goes quiet after a drop in
connections.

What a flood of connections leaves behind once it has closed is not leaked: the process keeps
it and reuses it. Measured with `python -m bench.flood` (docs/performance.md, "Memory after a
connection flood"): 2,000 connections opened and closed left VmRSS 45% above its baseline
(78 -> 113 MiB), of which

- 29 MiB were pymalloc arenas (1 MiB each) emptied but for 1,996 blocks: 1,107 name strings
  kept by CPython's attribute lookup cache (copies made per call by C code, such as the
  `_json` scanner jose builds for every token it verifies), objects in CPython's free lists,
  and uvloop's and asyncio's free lists;
- 6 MiB were free chunks below the top of glibc's heap, which free() never returns.

A reclaim runs a full collection (which also empties CPython's free lists), clears the
attribute cache and calls glibc's `malloc_trim(0)`: 113 -> 98 MiB after that flood (+26% of
the baseline instead of +45%). Neither of the first two gives anything back alone; together
they free 11 arenas, the trim 6 MiB more. What stays is arenas held by blocks no call can
release: uvloop's handle free lists (Cython, 250 each) and asyncio's future iterators (255).
Each flood leaves those in arenas of its own: over six floods the level after the reclaim
rose to +38%. With PYTHONMALLOC=malloc, where small objects come from glibc too and the trim
returns pages rather than whole arenas, it stays at +5%.

The collection stops the event loop: 50-85 ms with no connection open, 0.35 s with 5,000
(on the benchmark's machine). So a reclaim runs only after the number of connections has
fallen by MIN_DROP from its highest since the last one and has stopped falling, never twice
within `min_interval`, and not while the instance drains for a shutdown. The highest count
is the admission's own (ConnectionLimiter), not a sample: a flood that comes and goes
between two checks still counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Protocol

logger = logging.getLogger("texflow.reclaimer")

# A check reads two integers; every 2 s, a reclaim follows a drop within 2-4 s.
CHECK_EVERY = 2.0
# About 8.5 MiB of connection memory at the 17 KiB each connection takes (scenario A): fewer
# closed connections than this are not worth a full collection's pause.
MIN_DROP = 500


class Census(Protocol):
    """What counts the open connections (the per-address ConnectionLimiter)."""

    @property
    def total(self) -> int:
        """Connections open now."""

    def take_peak(self) -> int:
        """The most open at once since the last call."""


class Gate(Protocol):
    """What admits connections (the room registry): while it does not (draining before a
    shutdown), the drop is the end, not a reason to reclaim."""

    @property
    def accepting(self) -> bool: ...


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, where the C library has one (not musl, not macOS)."""
    try:
        function = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    trim: Callable[[int], int] = function
    return trim


def _rss_kib() -> int | None:
    """Resident memory, for the log line (Linux only)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class Reclaimer:
    """Watches the number of open connections and reclaims memory after a drop.

    `start` begins the watch in a task of its own, `stop` cancels it and waits for it.
    A `min_interval` of zero turns reclaiming off.
    """

    def __init__(
        self,
        census: Census,
        gate: Gate,
        min_interval: float,
        *,
        check_every: float = CHECK_EVERY,
        min_drop: int = MIN_DROP,
    ) -> None:
        self._census = census
        self._gate = gate
        self._min_interval = min_interval
        self._check_every = check_every
        self._min_drop = min_drop
        # Still falling: a tenth of a drop that counts, within one check.
        self._still_falling = max(1, min_drop // 10)
        self._trim = _malloc_trim()
        self._task: asyncio.Task[None] | None = None
        self._peak = 0
        self._previous = 0
        self._last = -math.inf
        self.reclaims = 0

    @property
    def enabled(self) -> bool:
        return self._min_interval > 0

    async def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._watch(), name="memory reclaimer")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def due(self, count: int, peak: int, now: float) -> bool:
        """Whether a reclaim is due, given the count now and the most open at once since the
        last check: the count fell by at least `min_drop` from its highest since the last
        reclaim, it has stopped falling, and the last reclaim is at least `min_interval` ago."""
        previous, self._previous = self._previous, count
        self._peak = max(self._peak, peak, count)
        return (
            previous - count < self._still_falling
            and self._peak - count >= self._min_drop
            and now - self._last >= self._min_interval
        )

    def reclaim(self, count: int, now: float) -> None:
        """Collect, clear the attribute cache, trim; the peak starts again from `count`."""
        self._peak = count
        self._last = now
        self.reclaims += 1
        before = _rss_kib()
        started = time.perf_counter()
        unreachable = gc.collect()
        # CPython's attribute lookup cache holds a reference to the name of each entry.
        clear_type_cache: Callable[[], None] | None = getattr(sys, "_clear_type_cache", None)
        if clear_type_cache is not None:
            clear_type_cache()
        if self._trim is not None:
            self._trim(0)
        after = _rss_kib()
        logger.info(
            "memory reclaimed",
            extra={
                "event": "memory_reclaimed",
                "connections": count,
                "unreachable": unreachable,
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                "rss_before_kib": before,
                "rss_after_kib": after,
            },
        )

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._check_every)
            census = self._census
            count, peak = census.total, census.take_peak()
            now = loop.time()
            if self.due(count, peak, now) and self._gate.accepting:
                try:
                    self.reclaim(count, now)
                except Exception:
                    logger.exception("memory reclaim failed", extra={"event": "reclaim_failed"})
