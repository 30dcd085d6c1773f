"""A tiny cumulative histogram (Prometheus semantics) kept in memory by an actor and handed out as
a snapshot: ``[(upper bound, cumulative count), ..., (inf, count)]``, sum and count."""

from __future__ import annotations

import bisect
import threading


class Histogram:
    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = tuple(sorted(bounds))
        self._counts = [0] * (len(self.bounds) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.bounds, value)] += 1
            self._sum += value

    def snapshot(self) -> dict:
        with self._lock:
            out, acc = [], 0
            for b, c in zip((*self.bounds, float("inf")), self._counts):
                acc += c
                out.append((b, acc))
            return {"buckets": out, "sum": self._sum, "count": acc}
