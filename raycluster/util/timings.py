"""How long each part of a control loop takes: count, total, slowest and last pass, failures.
Read by ``cluster_status`` and exported by the MetricsCollector."""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class PartTiming:
    calls: int = 0
    total_s: float = 0.0
    max_s: float = 0.0
    last_s: float = 0.0
    failures: int = 0


class PartTimings:
    def __init__(self) -> None:
        self._parts: dict[str, PartTiming] = {}
        self._lock = threading.Lock()

    def add(self, part: str, seconds: float, ok: bool) -> None:
        with self._lock:
            t = self._parts.setdefault(part, PartTiming())
            t.calls += 1
            t.total_s += seconds
            t.max_s = max(t.max_s, seconds)
            t.last_s = seconds
            t.failures += 0 if ok else 1

    def view(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {name: {"calls": t.calls, "total_s": round(t.total_s, 6), "max_s": round(t.max_s, 6),
                           "last_s": round(t.last_s, 6), "failures": t.failures}
                    for name, t in self._parts.items()}
