"""The API's schedule routes: plain FastAPI functions on the same ``app`` as ``routes.py``'s, served
by the same replica, calling the Coordinator through the replica's access part (as
``access_routes.py`` does).

Owns::

    POST   /schedules                       create: a job spec with ``schedule`` (cron, UTC); 201 +
                                            the schedule; Idempotency-Key header
    GET    /schedules                       the schedules the caller's tenant may see
    GET    /schedules/{schedule_id}         one schedule and its newest runs
    POST   /schedules/{schedule_id}/pause   submit no more runs until resumed
    POST   /schedules/{schedule_id}/resume  runs again from the first tick after now
    DELETE /schedules/{schedule_id}         delete (runs already submitted go on)

No ``from __future__ import annotations`` (FastAPI resolves these annotations at import).
"""

from fastapi import Header, Path as PathParam, Request

from raycluster.api.access import as_tenant
from raycluster.api.access_routes import replica_access
from raycluster.api.app import COMMON, E, ID_PATTERN, NOT_FOUND, app
from raycluster.api.bodies import json_body, json_body_doc
from raycluster.api.models import Schedule, ScheduleList
from raycluster.api.settings import current
from raycluster.errors import IdempotencyKeyReused
from raycluster.policy import access as A
from raycluster.spec import parse_spec

@app.post("/schedules", status_code=201, response_model=Schedule, tags=["schedules"],
          responses={**COMMON, 413: {**E, "description": "body larger than API_MAX_BODY_BYTES"},
                     409: {**E, "description": "Idempotency-Key reused with a different spec"},
                     422: {**E, "description": "invalid spec (a bad cron expression names schedule)"}},
          openapi_extra=json_body_doc("JobSpec"),
          summary="create a scheduled job: a spec with schedule (cron, UTC) submits a run at each tick")
async def create_schedule(request: Request,
                          idempotency_key: str | None = Header(None, alias="Idempotency-Key", min_length=1,
                                                               max_length=255)) -> dict:
    part = replica_access()
    who = part.who(request)
    A.require_role(who, A.CHANGE_SCHEDULE)
    data = as_tenant(who, await json_body(request), "tenant")
    parse_spec(data)
    try:
        out = await part.call("create_schedule", data, idempotency_key, timeout_s=current().submit_timeout_s)
    except IdempotencyKeyReused as exc:
        raise IdempotencyKeyReused(exc.message.replace("idempotency key", "Idempotency-Key", 1),
                                   field="Idempotency-Key") from None
    part.audit(request, out["id"], 201)
    return out


@app.get("/schedules", response_model=ScheduleList, responses=COMMON, tags=["schedules"])
async def list_schedules(request: Request) -> dict:
    part = replica_access()
    tenant = A.visible_tenant(part.who(request), None)
    return {"schedules": [s for s in await part.call("list_schedules")
                          if tenant is None or A.tenant_of(s.get("tenant")) == A.tenant_of(tenant)]}


@app.get("/schedules/{schedule_id}", response_model=Schedule, responses={**COMMON, **NOT_FOUND},
         tags=["schedules"], summary="a schedule and its newest runs")
async def get_schedule(request: Request, schedule_id: str = PathParam(..., pattern=ID_PATTERN)) -> dict:
    part = replica_access()
    await part.schedule(request, schedule_id, A.READ_JOBS)
    return await part.call("get_schedule", schedule_id)


@app.post("/schedules/{schedule_id}/pause", response_model=Schedule, responses={**COMMON, **NOT_FOUND},
          tags=["schedules"], summary="submit no more runs until resumed (runs going on are left alone)")
async def pause_schedule(request: Request, schedule_id: str = PathParam(..., pattern=ID_PATTERN)) -> dict:
    return await _change(request, "pause_schedule", schedule_id)


@app.post("/schedules/{schedule_id}/resume", response_model=Schedule, responses={**COMMON, **NOT_FOUND},
          tags=["schedules"], summary="runs again from the first tick after now (missed ticks are not made up)")
async def resume_schedule(request: Request, schedule_id: str = PathParam(..., pattern=ID_PATTERN)) -> dict:
    return await _change(request, "resume_schedule", schedule_id)


@app.delete("/schedules/{schedule_id}", response_model=Schedule, responses={**COMMON, **NOT_FOUND},
            tags=["schedules"], summary="delete a schedule (runs already submitted go on)")
async def delete_schedule(request: Request, schedule_id: str = PathParam(..., pattern=ID_PATTERN)) -> dict:
    return await _change(request, "delete_schedule", schedule_id)


async def _change(request: Request, method: str, schedule_id: str) -> dict:
    part = replica_access()
    await part.schedule(request, schedule_id, A.CHANGE_SCHEDULE)
    out = await part.call(method, schedule_id)
    part.audit(request, schedule_id)
    return out
