"""Per-worker instruments for finding the latency tail (issue #13 item 2): event-loop lag
and garbage-collection pauses, exported as `metrics.EVENT_LOOP_LAG` and `metrics.GC_PAUSE`.

`Monitor` is started in the app's lifespan and stopped at shutdown. It runs one task, a
ticker that sleeps `interval` (1 ms) and records how late it woke: time the event loop
spent on something else (a long callback, a collection, a blocking call) shows up as
lag. A stall of N ms is one sample of about N ms, however many requests it delayed.

GC pauses are timed by a `gc.callbacks` hook (start/stop of each collection). The hook
never touches a Prometheus metric: in multiprocess mode prometheus_client guards its
files with one non-reentrant lock, and a collection can start while this very thread
holds it. The hook appends (generation, seconds) to a bounded queue instead, and the
ticker moves them into the histogram. The hook is this monitor's own (two apps in one
process each count the process's collections).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from oauth2_server import metrics

# Ticker period (seconds): fine enough to see 1 ms of lag.
INTERVAL = 0.001
# Pauses waiting for the ticker (thousands of collections a second would be needed to
# fill it between two ticks; the oldest are dropped if it ever does).
MAX_PENDING_PAUSES = 1024


class GcPauses:
    """Times every collection of this process via `gc.callbacks`; `drain(observe)` hands
    the pauses recorded since the last drain to `observe(generation, seconds)`."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._started = 0.0
        # deque.append / popleft are atomic: collections may run in any thread.
        self._pending: deque[tuple[int, float]] = deque(maxlen=MAX_PENDING_PAUSES)
        self._installed = False

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        # Collections never overlap (the interpreter runs one at a time).
        if phase == "start":
            self._started = self._clock()
        elif phase == "stop":
            self._pending.append((info["generation"], self._clock() - self._started))

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._callback)
            self._installed = False

    def drain(self, observe: Callable[[int, float], None]) -> None:
        pending = self._pending
        while pending:
            generation, seconds = pending.popleft()
            observe(generation, seconds)


def _observe_gc_pause(generation: int, seconds: float) -> None:
    metrics.GC_PAUSE.labels(str(generation)).observe(seconds)


class Monitor:
    """The event-loop lag ticker and the GC pause hook of one worker.

    `observe_lag(seconds)` receives every tick's lateness (never negative: asyncio may fire
    a timer up to its clock resolution early); `observe_gc(generation, seconds)` every
    collection's pause. Defaults: the Prometheus histograms.
    """

    def __init__(
        self,
        interval: float = INTERVAL,
        observe_lag: Callable[[float], None] | None = None,
        observe_gc: Callable[[int, float], None] = _observe_gc_pause,
    ) -> None:
        self.interval = interval
        self._observe_lag = observe_lag or metrics.EVENT_LOOP_LAG.observe
        self._observe_gc = observe_gc
        self.gc_pauses = GcPauses()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Install the GC hook and start the ticker on the running loop (neither when
        `interval` is 0: the GC pauses are recorded by the ticker)."""
        if self.interval <= 0:
            return
        self.gc_pauses.install()
        self._task = asyncio.create_task(self._tick(), name="oauth2-loop-lag")

    async def stop(self) -> None:
        """Cancel the ticker, remove the GC hook, record the pauses still pending."""
        self.gc_pauses.uninstall()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.gc_pauses.drain(self._observe_gc)

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        interval, observe, drain = self.interval, self._observe_lag, self.gc_pauses.drain
        while True:
            due = loop.time() + interval
            await asyncio.sleep(interval)
            observe(max(loop.time() - due, 0.0))
            drain(self._observe_gc)
