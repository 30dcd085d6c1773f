"""The ControlAPI deployment: every route of the HTTP control API.

Owns the routes (all JSON)::

    GET    /healthz                   liveness of the API itself (no auth, no actor call)
    GET    /cluster/status            nodes, GPUs/CPUs total/allocated/free, utilisation, queue, runtime health
    GET    /nodes, /nodes/{node_id}   Ray nodes: alive, address, resources total/free
    POST   /jobs                      submit (body = job spec); 201 + the job; Idempotency-Key header
    POST   /jobs/batch                submit up to SUBMIT_BATCH_MAX jobs at once, all or none (an
                                      idempotency_key per item); 201 + the jobs in order
    GET    /jobs                      ?state=..&state=..&tenant=..&limit=100&offset=0
    GET    /jobs/{job_id}             one job with its transitions (and why it waits, while PENDING)
    DELETE /jobs/{job_id}             cancel; 409 if it already finished
    GET    /jobs/{job_id}/checkpoints | /metrics | /logs?tail=N (or ?since=a0-r0:OFFSET,... to follow)
    (and ``api/access_routes.py``: /tokens and /audit, for admins; ``api/package_routes.py``:
    GET/PUT /api/packages/gcs/{name}, code packages; ``api/schedule_routes.py``: /schedules)

Who may call what: the caller's ``Identity`` (``api/access.py``, from the bearer token) and the pure
rules of ``policy/access.py``, applied by each route before it calls anything.

It holds no job state: every answer comes from the Coordinator / CheckpointManager actors (found by
name, awaited with a timeout: 503 + Retry-After when they restart or are slow) except ``/nodes``,
which reads Ray's node table through the one node-info cache. ``/cluster/status`` and ``/nodes``
are cached per replica for ``API_STATUS_CACHE_S``; concurrent requests share one refresh.
``POST /jobs`` is idempotent under ``Idempotency-Key`` (a replay answers 201 with the same job;
the same key with another spec is 409); without the header the API makes a key per request, so
the actor-level retry of a call interrupted by a Coordinator restart cannot duplicate it either.
"""

# No ``from __future__ import annotations`` here: Serve's class-based view rebuilds each route's
# endpoint in its own module, where string annotations (``Request``, ``Query``...) cannot be resolved;
# FastAPI then takes ``request`` for a required query parameter (tests/cluster/test_api.py catches it).
import asyncio
import logging
import time
import uuid
from typing import Any, Literal

import ray
from fastapi import Header, Path as PathParam, Query, Request
from ray import serve

from raycluster import constants as C
from raycluster.api._serve_compat import serve_listener_reuses_address
from raycluster.api import access_routes, package_routes, schedule_routes
from raycluster.api.access import Access, as_tenant
from raycluster.api.app import COMMON, E, ID_PATTERN as _JOB_ID, NOT_FOUND, app
from raycluster.api.batcher import SubmitBatcher
from raycluster.api.bodies import json_body as _json_body, json_body_doc as _json_body_doc
from raycluster.api.errors import ACTOR_GONE, ApiError, unavailable
from raycluster.api.models import (CheckpointList, ClusterStatus, Cost, EventList, Health, Job, JobBatch, JobList,
                                   LogList, MetricList, Node, NodeHealth, NodeHealthList, NodeList,
                                   PreemptNotice, RentalList, TenantList, TrialList)
from raycluster.api.settings import configure, set_access
from raycluster.control.handles import get_handle
from raycluster.control.nodes import NodeCache, read_nodes
from raycluster.errors import ClusterUnavailable, IdempotencyKeyReused, RayClusterError
from raycluster.policy import access as A
from raycluster.policy.budget_types import BudgetConfigError, check_cap
from raycluster.spec import parse_spec
from raycluster.store.lifecycle import JobState
from raycluster.util.ttlcache import TTLCache

log = logging.getLogger("raycluster.api")
assert access_routes.app is package_routes.app is schedule_routes.app is app  # (imported for their routes, on this app)
_NODE_ID = r"^[A-Za-z0-9_-]{1,128}$"


def _usage(total: float, free: float) -> dict:
    total, free = float(total), float(free)
    allocated = max(0.0, total - free)
    return {"total": total, "allocated": allocated, "free": free,
            "utilization": round(allocated / total, 6) if total > 0 else 0.0}


@serve.deployment(name="ControlAPI")
@serve.ingress(app)
class ControlAPI:
    """One API replica: finds the runtime actors by name and forwards requests to them."""

    def __init__(self, settings: dict):
        self.s = configure(settings)
        serve_listener_reuses_address()  # before Serve binds this replica's direct-ingress port
        self._handles: dict[str, Any] = {}
        self._cache = TTLCache()
        self._nodes_cache = NodeCache(read_nodes)
        self._submits = SubmitBatcher(
            lambda items, bys: self._coord("submit_many", items, bys, timeout_s=self.s.submit_timeout_s),
            lambda data, key, by: self._coord("submit", data, key, by, timeout_s=self.s.submit_timeout_s),
            C.API_SUBMIT_BATCH_MAX)
        self.access = Access(self._coord)  # who calls: per-user tokens, ownership, the audit trail
        set_access(self.access)

    # ------------------------------------------------------------------ actor calls
    async def _handle(self, name: str):
        h = self._handles.get(name)
        if h is None:
            try:
                h = await asyncio.to_thread(get_handle, name)
            except ClusterUnavailable as exc:
                raise unavailable(exc.message) from None
            self._handles[name] = h
        return h

    async def _call(self, name: str, method: str, *args, timeout_s: float | None = None) -> Any:
        h = await self._handle(name)
        try:
            fn = getattr(h, method)
        except AttributeError:
            raise ApiError(501, "not_implemented",
                           f"the running {name} has no {method}(); upgrade the runtime") from None
        timeout_s = self.s.actor_timeout_s if timeout_s is None else timeout_s
        try:
            return await asyncio.wait_for(fn.remote(*args), timeout_s)
        except asyncio.TimeoutError:
            raise unavailable(f"the {name} did not answer {method} within {timeout_s:.0f}s") from None
        except Exception as exc:
            # actor errors arrive as RayTaskError(<our error>): answer with the original (as client.ray_client.unwrap)
            cause = getattr(exc, "cause", None)
            if isinstance(cause, RayClusterError):
                raise cause from None
            if isinstance(exc, RayClusterError):
                raise
            if isinstance(exc, ACTOR_GONE):
                if isinstance(exc, getattr(ray.exceptions, "ActorDiedError", ())):
                    self._handles.pop(name, None)  # dead for good: look it up again next time
                raise unavailable(f"the {name} is not reachable right now ({type(exc).__name__})") from None
            raise

    async def _coord(self, method: str, *args, timeout_s: float | None = None) -> Any:
        return await self._call(C.COORDINATOR_NAME, method, *args, timeout_s=timeout_s)

    async def _health(self, name: str, method: str) -> dict:
        try:
            out = await self._call(name, method, timeout_s=min(2.0, self.s.actor_timeout_s))
        except Exception as exc:  # health is reported, not raised
            return {"ok": False, "error": getattr(exc, "message", None) or type(exc).__name__}
        return {"ok": True, "uptime_s": out.get("uptime_s") if isinstance(out, dict) else None}

    async def _status(self) -> dict:
        st, cm = await asyncio.gather(self._coord("cluster_status"),
                                      self._health(C.CHECKPOINT_MANAGER_NAME, "ping"))
        gpus = _usage(st["gpus_total"], st["gpus_free"])
        cpus = _usage(st["cpus_total"], st["cpus_free"])
        queue = {str(k): int(v) for k, v in st.get("queue_depth_by_priority", {}).items()}
        return {
            "nodes": st["nodes"], "gpus": gpus, "cpus": cpus,
            "utilization": gpus["utilization"] if gpus["total"] > 0 else cpus["utilization"],
            "queue_depth": sum(queue.values()), "queue_depth_by_priority": queue,
            "jobs_by_state": {str(k): int(v) for k, v in st.get("jobs_by_state", {}).items()},
            "runtime": {"coordinator": {"ok": True, "uptime_s": st.get("coordinator_uptime_s")},
                        "checkpoint_manager": cm},
            "as_of": time.time(),
        }

    async def _nodes(self) -> list[dict]:
        try:
            return await self._nodes_cache.anodes(self.s.status_cache_s)
        except Exception as exc:
            log.warning("cannot read Ray's node table: %s", exc)
            raise unavailable("cannot read the node table from Ray right now") from None

    # ------------------------------------------------------------------ routes
    @app.get("/healthz", response_model=Health, tags=["meta"], summary="liveness of the API (no auth)")
    async def healthz(self) -> dict:
        return {"status": "ok", "version": self.s.version}

    @app.get("/cluster/status", response_model=ClusterStatus, responses=COMMON, tags=["cluster"])
    async def cluster_status(self) -> dict:
        return await self._cache.aget("status", self.s.status_cache_s, self._status)

    @app.get("/nodes", response_model=NodeList, responses=COMMON, tags=["cluster"])
    async def list_nodes(self) -> dict:
        return {"nodes": await self._nodes()}

    @app.get("/nodes/{node_id}", response_model=Node, responses={**COMMON, 404: {**E, "description": "unknown node"}},
             tags=["cluster"])
    async def get_node(self, node_id: str = PathParam(..., pattern=_NODE_ID)) -> dict:
        for n in await self._nodes():
            if n["id"] == node_id:
                return n
        raise ApiError(404, "not_found", f"node {node_id!r} not found")

    @app.get("/health/nodes", response_model=NodeHealthList, responses=COMMON, tags=["cluster"],
             summary="every node's health verdict, score, reasons, drain state and newest sample")
    async def nodes_health(self) -> dict:
        return {"nodes": await self._coord("health")}

    @app.post("/nodes/{node_id}/drain", response_model=NodeHealth, tags=["cluster"],
              responses={**COMMON, 404: {**E, "description": "unknown node"}},
              summary="no new gangs there; its gangs checkpoint and move (kept until undrained)")
    async def drain_node(self, request: Request, node_id: str = PathParam(..., pattern=_NODE_ID),
                         reason: str | None = Query(None, max_length=200)) -> dict:
        A.authorize(self.access.who(request), A.DRAIN)
        out = await self._coord("drain", node_id, reason)
        self.access.audit(request, node_id)
        return out

    @app.post("/nodes/{node_id}/undrain", response_model=NodeHealth, tags=["cluster"],
              responses={**COMMON, 404: {**E, "description": "unknown node"}}, summary="use a drained node again")
    async def undrain_node(self, request: Request, node_id: str = PathParam(..., pattern=_NODE_ID)) -> dict:
        A.authorize(self.access.who(request), A.DRAIN)
        out = await self._coord("undrain", node_id)
        self.access.audit(request, node_id)
        return out

    @app.get("/rentals", response_model=RentalList, tags=["cluster"],
             responses={**COMMON, 409: {**E, "description": "the cluster rents no nodes (not elastic)"}},
             summary="rented nodes of an elastic cluster: market, kind, price, state, cost so far")
    async def list_rentals(self, all: bool = Query(False, description="released ones too")) -> dict:
        return {"rentals": await self._coord("rentals", all)}

    @app.get("/cost", response_model=Cost, tags=["cluster"],
             responses={**COMMON, 409: {**E, "description": "the cluster rents no nodes (not elastic)"}},
             summary="spend rate now, the budget, spend so far and today, by kind and node type, saved by spot")
    async def get_cost(self) -> dict:
        return await self._coord("cost")

    @app.get("/tenants", response_model=TenantList, tags=["cluster"], responses=COMMON,
             summary="each tenant's quota, what it holds, queued jobs, decayed usage and fair-share factor")
    async def list_tenants(self) -> dict:
        return await self._coord("tenants")

    @app.get("/events", response_model=EventList, tags=["cluster"],
             responses={**COMMON, 409: {**E, "description": "the cluster rents no nodes (not elastic)"}},
             summary="scaling decisions with their reasons, oldest first")
    async def list_events(self, limit: int = Query(100, ge=0, le=10000, description="the newest N")) -> dict:
        return {"events": await self._coord("events", limit)}

    @app.put("/budget", response_model=Cost, tags=["cluster"],
             responses={**COMMON, 409: {**E, "description": "the cluster rents no nodes (not elastic)"},
                        422: {**E, "description": "not a number >= 0 (or null)"}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": {"$ref": "#/components/schemas/BudgetRequest"}}}}},
             summary="change the hard cap on the spend rate (nodes held over it are shed within a pass)")
    async def put_budget(self, request: Request) -> dict:
        A.authorize(self.access.who(request), A.SET_BUDGET)
        data = await _json_body(request)
        if not isinstance(data, dict) or set(data) != {"max_hourly_budget_usd"}:
            raise ApiError(422, "invalid_request", 'the body must be {"max_hourly_budget_usd": <USD/h or null>}',
                           field="body")
        try:
            cap = check_cap(data["max_hourly_budget_usd"])
        except BudgetConfigError as exc:
            raise ApiError(422, "invalid_request", f"{exc} (or null)", field=exc.field) from None
        out = await self._coord("set_budget", cap)
        self.access.audit(request, f"max_hourly_budget_usd={cap}")
        return out

    @app.post("/rentals/{node_id}/preempt", response_model=PreemptNotice, tags=["cluster"],
              responses={**COMMON, 404: {**E, "description": "no such rented node"},
                         409: {**E, "description": "the cluster rents no nodes (not elastic)"},
                         422: {**E, "description": "an on-demand node, or a bad notice_s"}},
              openapi_extra={"requestBody": {"required": False, "content": {
                  "application/json": {"schema": {"$ref": "#/components/schemas/PreemptRequest"}}}}},
              summary="the local market takes a spot node back: a notice now, the node stopped at the deadline")
    async def preempt(self, request: Request, node_id: str = PathParam(..., pattern=_NODE_ID)) -> dict:
        A.authorize(self.access.who(request), A.MARKET)
        raw = await request.body()
        data = await _json_body(request) if raw.strip() else {}
        if not isinstance(data, dict) or set(data) - {"notice_s"}:
            raise ApiError(422, "invalid_request", 'the body must be {"notice_s": <seconds>} or empty', field="body")
        notice_s = data.get("notice_s")
        if notice_s is not None and (isinstance(notice_s, bool) or not isinstance(notice_s, (int, float))
                                     or not 0 <= notice_s <= 86400):
            raise ApiError(422, "invalid_request", "notice_s must be a number of seconds in [0, 86400]",
                           field="notice_s")
        out = await self._coord("preempt", node_id, notice_s)
        self.access.audit(request, node_id)
        return out

    @app.post("/jobs", status_code=201, response_model=Job, tags=["jobs"],
              responses={**COMMON, 409: {**E, "description": "Idempotency-Key reused with a different spec"},
                         413: {**E, "description": "body larger than API_MAX_BODY_BYTES"},
                         422: {**E, "description": "invalid spec, non-importable entrypoint, or a gang that can "
                                                   "never fit; field names the offending field"}},
              openapi_extra=_json_body_doc("JobSpec"),
              summary="submit a job (201; a replay with the same Idempotency-Key returns 201 and the same job)")
    async def submit(self, request: Request,
                     idempotency_key: str | None = Header(None, alias="Idempotency-Key", min_length=1,
                                                          max_length=255)) -> dict:
        who = self.access.who(request)
        A.require_role(who, A.SUBMIT)
        data = as_tenant(who, await _json_body(request), "tenant")
        parse_spec(data)  # InvalidJobSpec naming the field -> 422
        key = idempotency_key or f"api-{uuid.uuid4().hex}"
        try:
            job = await self._submits.submit(data, key, who.who)  # concurrent submits share a Coordinator call
        except IdempotencyKeyReused as exc:  # the same key with another spec: a client bug, nothing created
            raise IdempotencyKeyReused(exc.message.replace("idempotency key", "Idempotency-Key", 1),
                                       field="Idempotency-Key") from None
        self.access.audit(request, job["id"], 201)
        return job

    @app.post("/jobs/batch", status_code=201, response_model=JobBatch, tags=["jobs"],
              responses={**COMMON, 409: {**E, "description": "an idempotency_key reused with a different spec"},
                         413: {**E, "description": "body larger than API_MAX_BODY_BYTES"},
                         422: {**E, "description": "an invalid item (field names it: jobs[i].spec.<field>); "
                                                   "nothing created"}},
              openapi_extra=_json_body_doc("JobBatchRequest"),
              summary="submit many jobs in one request: all or none, each idempotent under its idempotency_key")
    async def submit_batch(self, request: Request) -> dict:
        who = self.access.who(request)
        A.require_role(who, A.SUBMIT)
        data = await _json_body(request)
        if not isinstance(data, dict) or set(data) != {"jobs"}:
            raise ApiError(422, "invalid_spec", 'the body must be {"jobs": [{"spec": ..., "idempotency_key": ...}]}',
                           field="jobs")
        items = data["jobs"]
        if isinstance(items, list):
            items = [{**it, "spec": as_tenant(who, it["spec"], f"jobs[{i}].spec.tenant")}
                     if isinstance(it, dict) and "spec" in it else it for i, it in enumerate(items)]
        # every item is validated by the Coordinator (errors name jobs[i].<field>), all or none
        jobs = await self._coord("submit_many", items, who.who, timeout_s=self.s.submit_timeout_s)
        for job in jobs:
            self.access.audit(request, job["id"], 201)
        return {"jobs": jobs}

    @app.get("/jobs", response_model=JobList, responses=COMMON, tags=["jobs"])
    async def list_jobs(self, request: Request,
                        state: list[JobState] | None = Query(None, description="filter; repeatable"),
                        tenant: str | None = Query(None, max_length=64),
                        limit: int = Query(100, ge=1, le=1000),
                        offset: int = Query(0, ge=0, le=1_000_000_000),
                        order: Literal["oldest", "newest"] = Query("oldest", description="by submission time: "
                                                                   "oldest first (the queue's order) or newest first")
                        ) -> dict:
        states = [s.value for s in state] if state else None
        tenant = A.visible_tenant(self.access.who(request), tenant)  # a member or viewer: its tenant's only
        jobs = await self._coord("list", states, tenant, limit + 1, offset, order == "newest")
        more = len(jobs) > limit
        return {"jobs": jobs[:limit], "limit": limit, "offset": offset,
                "next_offset": offset + limit if more else None, "total": None}

    @app.get("/jobs/{job_id}", response_model=Job, responses={**COMMON, **NOT_FOUND}, tags=["jobs"])
    async def get_job(self, request: Request, job_id: str = PathParam(..., pattern=_JOB_ID)) -> dict:
        return await self.access.job(request, job_id, A.READ_JOBS) or await self._coord("get", job_id)

    @app.delete("/jobs/{job_id}", response_model=Job, tags=["jobs"], summary="cancel a job",
                responses={**COMMON, **NOT_FOUND, 409: {**E, "description": "the job already finished"}})
    async def cancel_job(self, request: Request, job_id: str = PathParam(..., pattern=_JOB_ID)) -> dict:
        await self.access.job(request, job_id, A.CANCEL)
        out = await self._coord("cancel", job_id, self.access.who(request).who)
        self.access.audit(request, job_id)
        return out

    @app.get("/jobs/{job_id}/trials", response_model=TrialList, tags=["jobs"],
             responses={**COMMON, **NOT_FOUND, 422: {**E, "description": "the job is not a sweep"}},
             summary="a sweep's per-trial results (trial order) and its summary with the best trial")
    async def job_trials(self, request: Request, job_id: str = PathParam(..., pattern=_JOB_ID),
                         limit: int = Query(1000, ge=1, le=10000), offset: int = Query(0, ge=0, le=1_000_000_000),
                         failed: bool = Query(False, description="only the trials that raised")) -> dict:
        await self.access.job(request, job_id, A.READ_JOBS)
        return await self._coord("list_trials", job_id, limit, offset, failed)

    @app.get("/jobs/{job_id}/checkpoints", response_model=CheckpointList, responses={**COMMON, **NOT_FOUND},
             tags=["jobs"])
    async def job_checkpoints(self, request: Request, job_id: str = PathParam(..., pattern=_JOB_ID)) -> dict:
        await self.access.job(request, job_id, A.READ_JOBS)
        _job, cps = await asyncio.gather(self._coord("get", job_id),
                                         self._call(C.CHECKPOINT_MANAGER_NAME, "list", job_id))
        return {"job_id": job_id, "checkpoints": cps}

    @app.get("/jobs/{job_id}/metrics", response_model=MetricList, responses={**COMMON, **NOT_FOUND},
             tags=["jobs"])
    async def job_metrics(self, request: Request, job_id: str = PathParam(..., pattern=_JOB_ID),
                          limit: int = Query(1000, ge=1, le=100_000)) -> dict:
        await self.access.job(request, job_id, A.READ_JOBS)
        return {"job_id": job_id, "metrics": await self._coord("metrics", job_id, limit)}

    @app.get("/jobs/{job_id}/logs", response_model=LogList, tags=["jobs"],
             responses={**COMMON, **NOT_FOUND, 422: {**E, "description": "a bad since"}, 501: {**E, "description": "the running Coordinator has no logs()"}})
    async def job_logs(self, request: Request, job_id: str = PathParam(..., pattern=_JOB_ID),
                       tail: int = Query(200, ge=1, le=10_000, description="last N lines of each rank's log"),
                       since: str | None = Query(None, max_length=20_000, description=(
                           "follow: a<attempt>-r<rank>:<byte offset>,... (the offsets a previous answer "
                           "gave): only the whole lines written after them (a log not named: from its "
                           "start); tail is then ignored"))) -> dict:
        from raycluster.rank.logs import parse_since

        try:
            offsets = parse_since(since)
        except ValueError as exc:
            raise ApiError(422, "invalid_request", str(exc), field="since") from None
        await self.access.job(request, job_id, A.READ_JOBS)
        return {"job_id": job_id, "logs": await self._coord("logs", job_id, tail, offsets)}
