"""The transaction stream: arrival times and sizes, as prefix sums.

Transactions are not events in the kernel: a proposer takes "the oldest transactions in
the pool" as an index range of this stream, so a block's size and its transactions'
latency sum are O(log n) look-ups. That keeps the model fast at 1,000 TPS.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class TxStream:
    """Sorted arrival times with cumulative bytes and cumulative times."""

    __slots__ = ("times", "cumbytes", "cumtimes")

    def __init__(self, times: np.ndarray, sizes: np.ndarray) -> None:
        order = np.argsort(times, kind="stable")
        self.times = np.asarray(times, dtype=np.float64)[order]
        sizes = np.asarray(sizes, dtype=np.int64)[order]
        self.cumbytes = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        self.cumtimes = np.concatenate(([0.0], np.cumsum(self.times)))

    def __len__(self) -> int:
        return len(self.times)

    def __deepcopy__(self, memo: dict[int, Any]) -> TxStream:
        # Immutable once built: clones of the model share it.
        return self

    def arrived_by(self, t: float) -> int:
        """Number of transactions that arrived at or before t."""
        return int(np.searchsorted(self.times, t, side="right"))

    def take(self, start: int, now: float, max_bytes: int) -> int:
        """End index of the oldest arrived transactions from `start` fitting in max_bytes."""
        avail = self.arrived_by(now)
        if avail <= start:
            return start
        limit = self.cumbytes[start] + max_bytes
        fit = int(np.searchsorted(self.cumbytes, limit, side="right")) - 1
        return max(start, min(avail, fit))

    def bytes_between(self, a: int, b: int) -> int:
        return int(self.cumbytes[b] - self.cumbytes[a])

    def latency_sum(self, a: int, b: int, at: float) -> float:
        """Sum over transactions [a, b) of (at - arrival time)."""
        return (b - a) * at - float(self.cumtimes[b] - self.cumtimes[a])

    def first_time(self, a: int, b: int) -> float | None:
        return float(self.times[a]) if b > a else None

    def splice(self, at: float, times: np.ndarray, sizes: np.ndarray) -> TxStream:
        """This stream up to `at`, followed by the given (future) arrivals.

        What-if analysis keeps what has already arrived (the real mempool) and replaces
        the unknown future with a generated one.
        """
        k = self.arrived_by(at)
        old_sizes = np.diff(self.cumbytes[: k + 1])
        keep = times > at
        return TxStream(
            np.concatenate((self.times[:k], np.asarray(times)[keep])),
            np.concatenate((old_sizes, np.asarray(sizes)[keep])),
        )


def poisson_arrivals(
    rng: np.random.Generator, start: float, end: float, tps: float, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """A Poisson process of rate tps on [start, end) with constant transaction size."""
    n = int(rng.poisson(max(tps, 0.0) * max(end - start, 0.0)))
    times = np.sort(rng.uniform(start, end, n))
    return times, np.full(n, int(size), dtype=np.int64)
