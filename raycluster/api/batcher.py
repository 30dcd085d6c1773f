"""Group commit for single submits: concurrent ``POST /jobs`` requests of one API replica share one
Coordinator call (``submit_many``) and one SQLite transaction.

Owns: ``SubmitBatcher``. The first request goes out at once, alone; requests that arrive while a
call is in flight wait for it and go out together in the next one (at most ``max_batch``), so a lone
request waits for nothing and a burst costs one actor call per batch instead of one per job. A
batch is all or none at the Coordinator; when it is refused, each of its requests is sent again on
its own, so every request gets the answer (or the error naming its own field) it would have got
alone — every request carries an idempotency key, so sending one again never makes a second job. A
retryable failure (the Coordinator unreachable or late) is every request's answer at once.
Pure asyncio: no Ray here (the replica passes the two calls in).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

Item = tuple[Any, str, str | None]  # (spec data, idempotency key, who submits it)


class SubmitBatcher:
    def __init__(self, submit_many: Callable[[list[dict], list[str | None]], Awaitable[list[Any]]],
                 submit_one: Callable[[Any, str, str | None], Awaitable[Any]], max_batch: int):
        self._many, self._one = submit_many, submit_one
        self.max_batch = max(1, max_batch)
        self._waiting: list[tuple[Item, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self.calls = self.batched = 0  # Coordinator calls made; requests that shared one

    async def submit(self, data: Any, key: str, by: str | None = None) -> Any:
        fut = asyncio.get_running_loop().create_future()
        self._waiting.append(((data, key, by), fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:self.max_batch], self._waiting[self.max_batch:]
            batch = [(item, fut) for item, fut in batch if not fut.done()]  # (a request given up on)
            if batch:
                await self._send(batch)

    async def _send(self, batch: list[tuple[Item, asyncio.Future]]) -> None:
        self.calls += 1
        if len(batch) == 1:
            (data, key, by), fut = batch[0]
            await _settle(fut, self._one(data, key, by))
            return
        self.batched += len(batch)
        keys = [key for (_d, key, _b), _f in batch]
        if len(set(keys)) == len(keys):  # (a key twice in one batch is refused: send those alone)
            try:
                results = await self._many([{"spec": d, "idempotency_key": k} for (d, k, _b), _f in batch],
                                           [b for (_d, _k, b), _f in batch])
            except Exception as exc:
                if getattr(exc, "retryable", False):  # the Coordinator is away: so it is for each of them
                    for _item, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    return
                # one of them was refused (all or none: nothing was made): each is sent on its own
            else:
                for (_item, fut), result in zip(batch, results):
                    if not fut.done():
                        fut.set_result(result)
                return
        for (data, key, by), fut in batch:
            self.calls += 1
            await _settle(fut, self._one(data, key, by))


async def _settle(fut: asyncio.Future, call: Awaitable[Any]) -> None:
    try:
        result = await call
    except Exception as exc:
        if not fut.done():
            fut.set_exception(exc)
    else:
        if not fut.done():
            fut.set_result(result)
