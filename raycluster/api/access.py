"""The API replica's part that knows who is calling: token lookup, ownership checks, the audit trail.

Owns, per replica: who a per-user token is (asked of the Coordinator's token store, kept at most
``IDENTITY_CACHE_S`` — one second — so rotating or revoking a token takes effect at once; the
operator's token is recognised by the middleware without a call), the checks a route makes before
it acts (``policy.access.authorize`` on the job's or schedule's tenant — fetched only for a caller
that is not an admin, so the operator's requests cost what they did before), and the audit trail:
each state-changing call is queued here and written by one background flush (one Coordinator call
for many entries; an entry that cannot be written is kept for the next flush, up to a bound, and
the loss of older ones is logged). Tokens themselves never reach this part: only their sha256.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from raycluster.policy.access import Action, Identity, Role, authorize, require_role, submit_tenant

log = logging.getLogger("raycluster.api")

IDENTITY_CACHE_S = 1.0
AUDIT_BUFFER_MAX = 10_000


def as_tenant(who: Identity, data: Any, field: str) -> Any:
    """A spec as ``who`` may submit it: its tenant the token's (a member naming another tenant is
    refused, 403 naming ``field``); an admin's as written. Anything but a mapping is left to the
    spec's own validation."""
    if not isinstance(data, dict):
        return data
    tenant = submit_tenant(who, data.get("tenant"), field)
    return data if tenant == data.get("tenant") else {**data, "tenant": tenant}


class Access:
    def __init__(self, coord: Callable[..., Awaitable[Any]], clock: Callable[[], float] = time.monotonic):
        self._coord = coord
        self._clock = clock
        self._known: dict[str, tuple[float, Identity | None]] = {}
        self._queue: list[tuple[dict, str, str | None, int]] = []
        self._flusher: asyncio.Task | None = None

    # ---------------------------------------------------------------- who
    async def identity(self, sha256: str) -> Identity | None:
        """Who the token with this sha256 is (None: unknown or revoked), at most a second old."""
        now = self._clock()
        hit = self._known.get(sha256)
        if hit is not None and now - hit[0] < IDENTITY_CACHE_S:
            return hit[1]
        found = await self._coord("token_identity", sha256)
        who = Identity.from_dict(found) if found else None
        if len(self._known) > 1000:  # (random bad tokens must not grow it without bound)
            self._known = {k: v for k, v in self._known.items() if now - v[0] < IDENTITY_CACHE_S}
        self._known[sha256] = (now, who)
        return who

    async def call(self, method: str, *args, timeout_s: float | None = None) -> Any:
        """A Coordinator call (the routes of ``api/access_routes.py`` and ``api/schedule_routes.py``);
        ``timeout_s`` None: the replica's actor timeout."""
        return await self._coord(method, *args, timeout_s=timeout_s)

    @staticmethod
    def who(request) -> Identity:
        return request.state.identity

    # ---------------------------------------------------------------- ownership
    async def job(self, request, job_id: str, action: Action) -> dict | None:
        """Refuse ``action`` on ``job_id`` unless the caller may (its job, its tenant's, or an admin):
        the job as read for the check, None for an admin (not read)."""
        who = self.who(request)
        require_role(who, action)  # the role first: a viewer's cancel is refused without a lookup
        if who.role is Role.ADMIN:
            return None
        job = await self._coord("get", job_id)
        authorize(who, action, job.get("tenant"))
        return job

    async def schedule(self, request, schedule_id: str, action: Action) -> None:
        who = self.who(request)
        require_role(who, action)
        if who.role is not Role.ADMIN:
            authorize(who, action, (await self._coord("get_schedule", schedule_id)).get("tenant"))

    # ---------------------------------------------------------------- audit
    def audit(self, request, target: str | None, status: int = 200) -> None:
        """Record a state-changing call (written by the next flush, in the background)."""
        route = request.scope.get("route")
        action = f"{request.method} {getattr(route, 'path', None) or request.url.path}"
        self._queue.append((self.who(request).to_dict(), action, target, status))
        if len(self._queue) > AUDIT_BUFFER_MAX:
            dropped = len(self._queue) - AUDIT_BUFFER_MAX
            del self._queue[:dropped]
            log.error("audit trail: %d entries dropped (the Coordinator has not taken them)", dropped)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self.flush())

    async def settle(self) -> None:
        """Every call recorded so far is written (or kept for later, if the Coordinator is away)."""
        flusher = self._flusher
        if flusher is not None and not flusher.done() and flusher is not asyncio.current_task():
            await asyncio.shield(flusher)
        await self.flush()

    async def flush(self) -> int:
        """Write what is queued; returns how many entries were written."""
        written = 0
        while self._queue:
            batch, self._queue = self._queue[:500], self._queue[500:]
            try:
                await self._coord("audit_many", batch)
            except Exception as exc:
                self._queue[:0] = batch  # kept for the next flush
                log.warning("audit trail: %d entries not written yet (%s)", len(batch), exc)
                return written
            written += len(batch)
        return written
