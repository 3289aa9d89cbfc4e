"""A small discrete-event kernel: a heap of events keyed by (time, priority, seq).

Why not SimPy: the twin clones its model for what-if analysis thousands of times, so the
kernel must be a plain object that `copy.deepcopy` can copy, and cheap per event. The
sequence number makes ties break in scheduling order, so a run is deterministic.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

# Priorities at equal times: state changes of the world first, then message deliveries,
# then timers (a message arriving exactly when a timer fires still counts).
PRIO_WORLD = 0
PRIO_MSG = 1
PRIO_TIMER = 2


class EventKernel:
    """Runs callbacks in (time, priority, seq) order."""

    __slots__ = ("now", "_heap", "_seq", "events_run")

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._heap: list[tuple[float, int, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = 0
        self.events_run = 0

    def schedule(self, at: float, priority: int, fn: Callable[..., Any], *args: Any) -> None:
        """Call fn(*args) at simulated time `at` (never in the past)."""
        if at < self.now:
            raise ValueError(f"event scheduled in the past: {at} < now {self.now}")
        self._seq += 1
        heapq.heappush(self._heap, (at, priority, self._seq, fn, args))

    def run_until(self, t_end: float) -> None:
        """Run every event with time <= t_end, then set the clock to t_end."""
        heap = self._heap
        pop = heapq.heappop
        n = 0
        while heap and heap[0][0] <= t_end:
            at, _, _, fn, args = pop(heap)
            self.now = at
            fn(*args)
            n += 1
        self.events_run += n
        if t_end > self.now:
            self.now = t_end

    def pending(self) -> int:
        return len(self._heap)

    def next_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None
