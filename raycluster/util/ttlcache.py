"""The one TTL cache: values per key, recomputed when older than a max age.

Owns: freshness bookkeeping for the node-info cache (Coordinator and API), the API's status cache
and the Coordinator's entrypoint-check cache. ``get`` computes in the caller's thread; ``aget``
is the asyncio form, where concurrent callers of a stale key await one computation (single flight).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable


class TTLCache:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._values: dict[Any, tuple[float, Any]] = {}
        self._inflight: dict[Any, asyncio.Future] = {}

    def fresh(self, key: Any, max_age_s: float) -> bool:
        hit = self._values.get(key)
        return hit is not None and self._clock() - hit[0] < max_age_s

    def put(self, key: Any, value: Any) -> Any:
        self._values[key] = (self._clock(), value)
        return value

    def get(self, key: Any, max_age_s: float, compute: Callable[[], Any]) -> Any:
        if self.fresh(key, max_age_s):
            return self._values[key][1]
        return self.put(key, compute())

    async def aget(self, key: Any, max_age_s: float, compute: Callable[[], Awaitable[Any]]) -> Any:
        if self.fresh(key, max_age_s):
            return self._values[key][1]
        fut = self._inflight.get(key)
        if fut is None:
            fut = self._inflight[key] = asyncio.ensure_future(compute())

            def done(f: asyncio.Future, key=key) -> None:
                self._inflight.pop(key, None)
                if not f.cancelled() and f.exception() is None:
                    self.put(key, f.result())

            fut.add_done_callback(done)
        return await asyncio.shield(fut)

    def drop(self, key: Any) -> None:
        self._values.pop(key, None)
