"""The HTTP control API: a Ray Serve application (FastAPI ingress) in front of the runtime actors.

Owns: the HTTP surface of raycluster — routes, request/response models (the OpenAPI schema at
``/openapi.json``, Swagger UI at ``/docs``), bearer-token auth, the single JSON error shape,
request-body limits, mapping of runtime errors to HTTP status codes — and ``deploy_api()``, which
creates the API token and deploys the application on the cluster. It holds no job state: every
answer comes from the Coordinator / CheckpointManager actors (found by name in the ``raycluster``
namespace) except ``/nodes``, which reads Ray's node table.

Routes (all JSON)::

    GET    /healthz                   liveness of the API itself (no auth, no actor call)
    GET    /cluster/status            nodes, GPUs/CPUs total/allocated/free, utilisation, queue, runtime health
    GET    /nodes, /nodes/{node_id}   Ray nodes: alive, address, resources total/free
    POST   /jobs                      submit (body = job spec); 201 + the job; Idempotency-Key header
    GET    /jobs                      ?state=..&state=..&tenant=..&limit=100&offset=0
    GET    /jobs/{job_id}             one job with its transitions
    DELETE /jobs/{job_id}             cancel; 409 if it already finished
    GET    /jobs/{job_id}/checkpoints | /metrics | /logs?tail=N

Decisions
---------
* Auth: every route except ``/healthz`` — ``/openapi.json`` and ``/docs`` included — needs
  ``Authorization: Bearer <token>``; otherwise 401 with ``WWW-Authenticate: Bearer``. The
  deployment is given only the token's sha256 (so the token never sits in Serve's config) and
  compares ``hmac.compare_digest(sha256(presented), expected)``. Headers are never logged. (A
  browser cannot add the header to Swagger UI's own fetch of ``/openapi.json``; use a header-adding
  extension or ``curl -H "Authorization: Bearer $(cat ~/.raycluster/api_token)" .../openapi.json``.)
* Errors: one shape everywhere, ``{"error": {"code", "message", "field"?, "retryable"}}`` — for
  our own errors, FastAPI's request validation, unknown routes, and unexpected exceptions (500,
  logged here with the traceback, never sent). 422 invalid spec/parameters (``field`` names the
  offending field), 404 unknown job/node/route, 409 illegal transition or an Idempotency-Key
  reused with a different spec, 413 body over ``API_MAX_BODY_BYTES``, 501 the runtime lacks the
  method (older Coordinator), 503 + ``Retry-After`` when the Coordinator/CheckpointManager is
  restarting, unreachable or too slow (``API_ACTOR_TIMEOUT_S``): safe to retry.
* ``POST /jobs`` is idempotent under ``Idempotency-Key``: a replay returns **201** with the same
  job (its current state), exactly like the first answer. Without the header the API makes a key
  per request, so the actor-level retry of a call interrupted by a Coordinator restart cannot
  create a duplicate either.
* Served by the replica itself (Ray Serve direct ingress, ``API_DIRECT_INGRESS``): its own HTTP
  server owns ``API_PORT``, so a request crosses one process, not Serve's proxy and then the
  replica (~4x the requests per CPU second, scripts/bench_api.py). See ``deploy_api``.
* ``/cluster/status`` and ``/nodes`` are cached per replica for ``API_STATUS_CACHE_S`` (default
  0.5 s); concurrent requests share one refresh. Job routes are never cached.
"""


import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import socket
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable

import ray
from fastapi import FastAPI, Header, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from raycluster import constants as C
from raycluster.errors import (ApiDeployError, ClusterUnavailable, IllegalTransition, InvalidJobSpec,
                               JobNotFound, RayClusterError)
from raycluster.ports import free_port, port_is_free
from raycluster.spec import _ENTRYPOINT_RE, _NAME_RE, JobSpec, parse_spec
from raycluster.state import JobState

log = logging.getLogger("raycluster.api")

API_APP_NAME = "raycluster-api"
TOKEN_FILE = "api_token"
TOKEN_ENV = "RAYCLUSTER_API_TOKEN"
PUBLIC_PATHS = frozenset({"/healthz"})
_JOB_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_NODE_ID = r"^[A-Za-z0-9_-]{1,128}$"


# ============================================================================= settings
class ApiSettings(BaseModel):
    """What a replica needs besides the code: passed as the deployment's init argument."""

    token_sha256: str
    actor_timeout_s: float = C.API_ACTOR_TIMEOUT_S
    submit_timeout_s: float = max(C.API_ACTOR_TIMEOUT_S, C.ENTRYPOINT_CHECK_TIMEOUT_S + 10)
    max_body_bytes: int = C.API_MAX_BODY_BYTES
    retry_after_s: int = C.API_RETRY_AFTER_S
    status_cache_s: float = C.API_STATUS_CACHE_S
    # A digest of everything above, the deployment options and this module's code (deploy_api sets
    # it), shown by /healthz so that deploying again can tell whether the running API is this one.
    version: str = ""


# The replica's settings, set through _configure() by ControlAPI.__init__ (one replica per process).
# A module-level function on purpose: the deployment class is shipped by value (cloudpickle), so a
# ``global`` statement inside it would write into a copy of this module's namespace.
_settings: ApiSettings | None = None


def _configure(settings: dict) -> ApiSettings:
    global _settings
    _settings = ApiSettings.model_validate(settings)
    return _settings


class _ReuseAddrSockets:
    """Stands in for the ``socket`` module inside ``ray.serve._private.http_util``: the same, except
    that the sockets it makes have SO_REUSEADDR (what servers normally set; it never lets two
    listeners share a port)."""

    rc_reuse_addr = True

    def __getattr__(self, name: str):
        return getattr(socket, name)

    @staticmethod
    def socket(*args, **kwargs):
        sock = socket.socket(*args, **kwargs)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return sock


def _serve_listener_reuses_address() -> bool:
    """Work around Ray Serve 2.60 binding the direct-ingress listener without SO_REUSEADDR.

    Without it, a replica replacing a crashed one cannot bind the API port while the crashed
    replica's connections sit in TIME_WAIT (60 s on Linux): the API stayed down ~60 s after a
    replica crash; with it, as long as Serve takes to start a replica (a few seconds). Only this
    replica process is affected. Returns False (and changes nothing) if Serve's module is not laid
    out as expected — then the only cost is the slower recovery.
    """
    try:
        from ray.serve._private import http_util
    except ImportError:
        return False
    current = getattr(http_util, "socket", None)
    if getattr(current, "rc_reuse_addr", False):
        return True
    if current is None or not hasattr(current, "socket") or not hasattr(http_util, "start_asgi_http_server"):
        log.warning("ray.serve._private.http_util changed: API replica restarts may wait for TIME_WAIT")
        return False
    http_util.socket = _ReuseAddrSockets()
    return True


# ============================================================================= models
JobStateName = JobState  # the one state enum (raycluster.state) is also the API's schema


class ErrorDetail(BaseModel):
    code: str = Field(..., description="stable machine-readable code, e.g. invalid_spec, not_found, unavailable")
    message: str
    field: str | None = Field(None, description="the offending input field, where there is one")
    retryable: bool = Field(False, description="whether the same request may succeed later")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: str
    version: str = Field("", description="digest of the deployed API's code and settings")


class Transition(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str | None = Field(None, alias="from")
    to: str
    ts: float
    reason: str | None = None


class Job(BaseModel):
    id: str
    name: str
    spec: dict[str, Any]
    priority: int
    tenant: str | None = None
    state: JobStateName
    attempt: int
    system_restarts: int
    user_retries: int
    submitted_at: float
    started_at: float | None = None
    attempt_started_at: float | None = None
    finished_at: float | None = None
    updated_at: float
    queued_at: float
    error: str | None = None
    reason: str | None = None
    result: Any = None
    last_metrics: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = None
    transitions: list[Transition] | None = Field(None, description="audit trail (GET /jobs/{id} only)")


class JobList(BaseModel):
    jobs: list[Job]
    limit: int
    offset: int
    next_offset: int | None = Field(None, description="offset of the next page; null on the last page")
    total: int | None = Field(None, description="not computed (always null); page with next_offset")


class ResourceUsage(BaseModel):
    total: float
    allocated: float
    free: float
    utilization: float = Field(..., description="allocated / total (0 when total is 0)")


class ActorHealth(BaseModel):
    ok: bool
    uptime_s: float | None = None
    error: str | None = None


class RuntimeHealth(BaseModel):
    coordinator: ActorHealth
    checkpoint_manager: ActorHealth


class ClusterStatus(BaseModel):
    nodes: int = Field(..., description="alive nodes")
    gpus: ResourceUsage
    cpus: ResourceUsage
    utilization: float = Field(..., description="GPU utilisation, or CPU utilisation on a cluster without GPUs")
    queue_depth: int = Field(..., description="PENDING jobs")
    queue_depth_by_priority: dict[str, int]
    jobs_by_state: dict[str, int]
    runtime: RuntimeHealth
    as_of: float = Field(..., description="unix time the figures were taken (cached up to API_STATUS_CACHE_S)")


class Node(BaseModel):
    id: str
    alive: bool
    is_head: bool
    address: str | None = None
    hostname: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    resources_total: dict[str, float]
    resources_free: dict[str, float]


class NodeList(BaseModel):
    nodes: list[Node]


class Checkpoint(BaseModel):
    step: int
    attempt: int | None = None
    world_size: int | None = None
    state: str
    created_at: float | None = None
    completed_at: float | None = None
    reason: str | None = None
    size_bytes: int = 0


class CheckpointList(BaseModel):
    job_id: str
    checkpoints: list[Checkpoint]


class MetricPoint(BaseModel):
    model_config = ConfigDict(extra="allow")

    attempt: int
    ts: float
    step: int | None = None


class MetricList(BaseModel):
    job_id: str
    metrics: list[MetricPoint] = Field(..., description="reports oldest first: attempt, ts, step + reported values")


class RankLog(BaseModel):
    attempt: int
    rank: int
    lines: list[str]


class LogList(BaseModel):
    job_id: str
    logs: list[RankLog]


# ============================================================================= errors
class ApiError(Exception):
    """An HTTP error in the one JSON shape."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None,
                 retryable: bool = False, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.retryable, self.headers = retryable, headers or {}


class _BodyTooLarge(Exception):
    pass


_STATUS_OF = ((InvalidJobSpec, 422), (JobNotFound, 404), (IllegalTransition, 409), (ClusterUnavailable, 503))


def _safe_json(obj: Any) -> Any:
    """NaN/Infinity are not JSON: send them as null (a diverged loss must not turn into a 500)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _safe_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_safe_json(v) for v in obj]
    return obj


class SafeJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        try:
            return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
        except ValueError:
            return json.dumps(_safe_json(content), ensure_ascii=False, separators=(",", ":")).encode()


def error_body(code: str, message: str, field: str | None = None, retryable: bool = False) -> dict:
    err: dict[str, Any] = {"code": code, "message": message, "retryable": retryable}
    if field:
        err["field"] = field
    return {"error": err}


def _error_response(status: int, code: str, message: str, field: str | None = None, retryable: bool = False,
                    headers: dict[str, str] | None = None) -> SafeJSONResponse:
    return SafeJSONResponse(error_body(code, message, field, retryable), status_code=status, headers=headers)


def _retry_after() -> dict[str, str]:
    return {"Retry-After": str(_settings.retry_after_s if _settings else C.API_RETRY_AFTER_S)}


def _from_runtime_error(exc: RayClusterError) -> ApiError:
    for cls, status in _STATUS_OF:
        if isinstance(exc, cls):
            return ApiError(status, exc.code, exc.message, field=exc.field, retryable=exc.retryable,
                            headers=_retry_after() if status == 503 else None)
    return ApiError(500, exc.code, exc.message, field=exc.field, retryable=exc.retryable)


def _unavailable(message: str) -> ApiError:
    return ApiError(503, ClusterUnavailable.code, message, retryable=True, headers=_retry_after())


_ACTOR_GONE = tuple(getattr(ray.exceptions, n) for n in (
    "RayActorError", "ActorDiedError", "ActorUnavailableError", "GetTimeoutError", "RaySystemError")
    if hasattr(ray.exceptions, n))


def _field_of_loc(loc: tuple) -> str | None:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or None


# ============================================================================= app
class _App(FastAPI):
    def openapi(self) -> dict:
        """FastAPI's schema + the JobSpec request body (parsed by hand, see submit) + bearer security."""
        if self.openapi_schema:
            return self.openapi_schema
        schema = get_openapi(title=self.title, version=self.version, description=self.description,
                             routes=self.routes, separate_input_output_schemas=False)
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        spec_schema = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
        for field, regex in (("name", _NAME_RE), ("entrypoint", _ENTRYPOINT_RE)):  # checked by validators
            spec_schema["properties"][field]["pattern"] = regex.pattern
        comps.update(spec_schema.pop("$defs", {}))
        comps["JobSpec"] = spec_schema
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
        for path, ops in schema.get("paths", {}).items():
            if path in PUBLIC_PATHS:
                for op in ops.values():
                    op["security"] = []
        self.openapi_schema = schema
        return schema


app = _App(
    title="raycluster control API",
    version="1",
    description="Submit, list, follow and cancel training jobs; cluster and node status. "
                "Every route except /healthz needs `Authorization: Bearer <token>` (the token is in "
                "`<state_dir>/api_token`). Errors: `{\"error\": {\"code\", \"message\", \"field\"?, \"retryable\"}}`.",
    docs_url="/docs",
    redoc_url=None,
    default_response_class=SafeJSONResponse,
    separate_input_output_schemas=False,
)

_E = {"model": ErrorResponse}
_AUTH = {401: {**_E, "description": "missing or wrong bearer token",
               "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}}}}
_UNAVAILABLE = {503: {**_E, "description": "the runtime is restarting or unreachable; retry after Retry-After",
                      "headers": {"Retry-After": {"schema": {"type": "string"}}}},
                500: {**_E, "description": "unexpected server error (no details are sent)"}}
_COMMON = {**_AUTH, **_UNAVAILABLE, 422: {**_E, "description": "invalid parameter (field names it)"}}
_NOT_FOUND = {404: {**_E, "description": "unknown job"}}


@app.exception_handler(ApiError)
async def _api_error(_request: Request, exc: ApiError):
    return _error_response(exc.status, exc.code, exc.message, exc.field, exc.retryable, exc.headers)


@app.exception_handler(RayClusterError)
async def _runtime_error(_request: Request, exc: RayClusterError):
    return await _api_error(_request, _from_runtime_error(exc))


@app.exception_handler(RequestValidationError)
async def _validation_error(_request: Request, exc: RequestValidationError):
    errors = exc.errors()
    first = errors[0] if errors else {}
    field = _field_of_loc(tuple(first.get("loc", ())))
    msg = "; ".join(f"{_field_of_loc(tuple(e.get('loc', ()))) or 'request'}: {e.get('msg', 'invalid')}"
                    for e in errors[:10]) or "invalid request"
    return _error_response(422, "invalid_request", msg, field)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_request: Request, exc: StarletteHTTPException):
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = "no such route" if exc.status_code == 404 else str(exc.detail)
    return _error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


class _Guard:
    """Pure ASGI middleware: bearer auth, body-size limit, and the last-resort 500 handler."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        settings = _settings
        started = False

        async def send_wrapper(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        async def reply(response):
            if not started:
                await response(scope, receive, send_wrapper)

        if settings is None:
            return await reply(_error_response(503, "unavailable", "the API is starting", retryable=True,
                                               headers=_retry_after()))
        path = scope.get("path", "")
        content_length = None
        auth = None
        for k, v in scope.get("headers", ()):
            if k == b"authorization":
                auth = v
            elif k == b"content-length":
                content_length = v
        if path not in PUBLIC_PATHS and not _token_ok(auth, settings.token_sha256):
            return await reply(_error_response(401, "unauthorized", "missing or invalid bearer token",
                                               headers={"WWW-Authenticate": "Bearer"}))
        limit = settings.max_body_bytes
        if content_length is not None:
            try:
                too_big = int(content_length) > limit
            except ValueError:
                return await reply(_error_response(400, "bad_request", "invalid Content-Length"))
            if too_big:
                return await reply(_too_large(limit))
        seen = 0

        async def receive_limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge()
            return message

        try:
            await self.inner(scope, receive_limited, send_wrapper)
        except _BodyTooLarge:
            await reply(_too_large(limit))
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), path)  # no headers logged
            await reply(_error_response(500, "internal", "internal server error"))


def _too_large(limit: int) -> SafeJSONResponse:
    return _error_response(413, "payload_too_large", f"request body is larger than {limit} bytes")


def _token_ok(header: bytes | None, expected_sha256: str) -> bool:
    if not header:
        return False
    scheme, _, token = header.partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        return False
    return hmac.compare_digest(hashlib.sha256(token.strip()).hexdigest(), expected_sha256)


app.add_middleware(_Guard)


# ============================================================================= helpers
class _TTLCache:
    """Per-key value cache with single-flight refresh (concurrent callers await one computation)."""

    def __init__(self):
        self._values: dict[str, tuple[float, Any]] = {}
        self._inflight: dict[str, asyncio.Future] = {}

    async def get(self, key: str, ttl_s: float, compute: Callable[[], Awaitable[Any]]) -> Any:
        hit = self._values.get(key)
        if hit is not None and time.monotonic() - hit[0] < ttl_s:
            return hit[1]
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.ensure_future(compute())
            self._inflight[key] = fut

            def done(f: asyncio.Future, key=key):
                self._inflight.pop(key, None)
                if not f.cancelled() and f.exception() is None:
                    self._values[key] = (time.monotonic(), f.result())

            fut.add_done_callback(done)
        return await asyncio.shield(fut)


def _node_snapshot() -> list[dict]:
    """Every node Ray knows (dead ones too) with base resources; blocking GCS calls (run in a thread)."""
    from raycluster.rayops import _base_resources

    avail = ray._private.state.state.available_resources_per_node()
    out = []
    for n in ray.nodes():
        nid, alive = n["NodeID"], bool(n.get("Alive"))
        res = n.get("Resources") or {}
        out.append({
            "id": nid, "alive": alive, "is_head": "node:__internal_head__" in res,
            "address": n.get("NodeManagerAddress"), "hostname": n.get("NodeManagerHostname"),
            "labels": {str(k): str(v) for k, v in (n.get("Labels") or {}).items()},
            "resources_total": _base_resources(res) if alive else {},
            "resources_free": _base_resources(avail.get(nid, {})) if alive else {},
        })
    out.sort(key=lambda d: (not d["alive"], not d["is_head"], d["address"] or "", d["id"]))
    return out


def _usage(total: float, free: float) -> dict:
    total, free = float(total), float(free)
    allocated = max(0.0, total - free)
    return {"total": total, "allocated": allocated, "free": free,
            "utilization": round(allocated / total, 6) if total > 0 else 0.0}


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


# ============================================================================= deployment
@serve.deployment(name="ControlAPI")
@serve.ingress(app)
class ControlAPI:
    """One API replica: finds the runtime actors by name and forwards requests to them."""

    def __init__(self, settings: dict):
        self.s = _configure(settings)
        _serve_listener_reuses_address()  # before Serve binds this replica's direct-ingress port
        self._handles: dict[str, Any] = {}
        self._cache = _TTLCache()

    # ------------------------------------------------------------------ actor calls
    async def _handle(self, name: str):
        h = self._handles.get(name)
        if h is None:
            try:
                h = await asyncio.to_thread(ray.get_actor, name, namespace=C.NAMESPACE)
            except ValueError:
                raise _unavailable(f"the raycluster runtime is not running (no {name} actor)") from None
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
            raise _unavailable(f"the {name} did not answer {method} within {timeout_s:.0f}s") from None
        except Exception as exc:
            # actor errors arrive as RayTaskError(<our error>): answer with the original (runtime._unwrap)
            cause = getattr(exc, "cause", None)
            if isinstance(cause, RayClusterError):
                raise cause from None
            if isinstance(exc, RayClusterError):
                raise
            if isinstance(exc, _ACTOR_GONE):
                if isinstance(exc, getattr(ray.exceptions, "ActorDiedError", ())):
                    self._handles.pop(name, None)  # dead for good: look it up again next time
                raise _unavailable(f"the {name} is not reachable right now ({type(exc).__name__})") from None
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
        async def compute():
            return await asyncio.to_thread(_node_snapshot)

        try:
            return await self._cache.get("nodes", self.s.status_cache_s, compute)
        except Exception as exc:
            log.warning("cannot read Ray's node table: %s", exc)
            raise _unavailable("cannot read the node table from Ray right now") from None

    # ------------------------------------------------------------------ routes
    @app.get("/healthz", response_model=Health, tags=["meta"], summary="liveness of the API (no auth)")
    async def healthz(self) -> dict:
        return {"status": "ok", "version": self.s.version}

    @app.get("/cluster/status", response_model=ClusterStatus, responses=_COMMON, tags=["cluster"])
    async def cluster_status(self) -> dict:
        return await self._cache.get("status", self.s.status_cache_s, self._status)

    @app.get("/nodes", response_model=NodeList, responses=_COMMON, tags=["cluster"])
    async def list_nodes(self) -> dict:
        return {"nodes": await self._nodes()}

    @app.get("/nodes/{node_id}", response_model=Node, responses={**_COMMON, 404: {**_E, "description": "unknown node"}},
             tags=["cluster"])
    async def get_node(self, node_id: str = PathParam(..., pattern=_NODE_ID)) -> dict:
        for n in await self._nodes():
            if n["id"] == node_id:
                return n
        raise ApiError(404, "not_found", f"node {node_id!r} not found")

    @app.post("/jobs", status_code=201, response_model=Job, tags=["jobs"],
              responses={**_COMMON, 409: {**_E, "description": "Idempotency-Key reused with a different spec"},
                         413: {**_E, "description": "body larger than API_MAX_BODY_BYTES"},
                         422: {**_E, "description": "invalid spec, non-importable entrypoint, or a gang that can "
                                                   "never fit; field names the offending field"}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}}}}},
              summary="submit a job (201; a replay with the same Idempotency-Key returns 201 and the same job)")
    async def submit(self, request: Request,
                     idempotency_key: str | None = Header(None, alias="Idempotency-Key", min_length=1,
                                                          max_length=255)) -> dict:
        raw = await request.body()
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(422, "invalid_json", f"request body is not valid JSON: {exc}") from None
        spec = parse_spec(data)  # InvalidJobSpec naming the field -> 422
        key = idempotency_key or f"api-{uuid.uuid4().hex}"
        job = await self._coord("submit", data, key, timeout_s=self.s.submit_timeout_s)
        if idempotency_key and _canonical(job.get("spec")) != _canonical(spec.model_dump(mode="json")):
            raise ApiError(409, "idempotency_key_reused",
                           f"Idempotency-Key was already used for job {job.get('id')} with a different spec",
                           field="Idempotency-Key")
        return job

    @app.get("/jobs", response_model=JobList, responses=_COMMON, tags=["jobs"])
    async def list_jobs(self,
                        state: list[JobStateName] | None = Query(None, description="filter; repeatable"),
                        tenant: str | None = Query(None, max_length=64),
                        limit: int = Query(100, ge=1, le=1000),
                        offset: int = Query(0, ge=0, le=1_000_000_000)) -> dict:
        states = [s.value for s in state] if state else None
        jobs = await self._coord("list", states, tenant, limit + 1, offset)
        more = len(jobs) > limit
        return {"jobs": jobs[:limit], "limit": limit, "offset": offset,
                "next_offset": offset + limit if more else None, "total": None}

    @app.get("/jobs/{job_id}", response_model=Job, responses={**_COMMON, **_NOT_FOUND}, tags=["jobs"])
    async def get_job(self, job_id: str = PathParam(..., pattern=_JOB_ID)) -> dict:
        return await self._coord("get", job_id)

    @app.delete("/jobs/{job_id}", response_model=Job, tags=["jobs"], summary="cancel a job",
                responses={**_COMMON, **_NOT_FOUND, 409: {**_E, "description": "the job already finished"}})
    async def cancel_job(self, job_id: str = PathParam(..., pattern=_JOB_ID)) -> dict:
        return await self._coord("cancel", job_id)

    @app.get("/jobs/{job_id}/checkpoints", response_model=CheckpointList, responses={**_COMMON, **_NOT_FOUND},
             tags=["jobs"])
    async def job_checkpoints(self, job_id: str = PathParam(..., pattern=_JOB_ID)) -> dict:
        _job, cps = await asyncio.gather(self._coord("get", job_id),
                                         self._call(C.CHECKPOINT_MANAGER_NAME, "list", job_id))
        return {"job_id": job_id, "checkpoints": cps}

    @app.get("/jobs/{job_id}/metrics", response_model=MetricList, responses={**_COMMON, **_NOT_FOUND},
             tags=["jobs"])
    async def job_metrics(self, job_id: str = PathParam(..., pattern=_JOB_ID),
                          limit: int = Query(1000, ge=1, le=100_000)) -> dict:
        return {"job_id": job_id, "metrics": await self._coord("metrics", job_id, limit)}

    @app.get("/jobs/{job_id}/logs", response_model=LogList, tags=["jobs"],
             responses={**_COMMON, **_NOT_FOUND, 501: {**_E, "description": "the running Coordinator has no logs()"}})
    async def job_logs(self, job_id: str = PathParam(..., pattern=_JOB_ID),
                       tail: int = Query(200, ge=1, le=10_000, description="last N lines of each rank's log")) -> dict:
        return {"job_id": job_id, "logs": await self._coord("logs", job_id, tail)}


# ============================================================================= deploy
def api_token_path(state_dir: Path | str) -> Path:
    return Path(state_dir) / TOKEN_FILE


def ensure_api_token(state_dir: Path | str) -> tuple[str, Path]:
    """The API token in ``<state_dir>/api_token`` (0600), created atomically if there is none."""
    path = api_token_path(state_dir)
    with contextlib.suppress(FileNotFoundError):
        token = path.read_text().strip()
        if token:
            return token, path
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd, tmp = tempfile.mkstemp(prefix=f".{TOKEN_FILE}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic and never overwrites a token another process just wrote
        except FileExistsError:
            existing = path.read_text().strip()
            if existing:
                return existing, path
            os.replace(tmp, path)  # an empty file (an interrupted writer): replace it
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return token, path


def read_api_token(state_dir: Path | str) -> str | None:
    """``RAYCLUSTER_API_TOKEN`` or the token file; None when neither exists."""
    env = os.environ.get(TOKEN_ENV)
    if env:
        return env
    try:
        return api_token_path(state_dir).read_text().strip() or None
    except OSError:
        return None


def deploy_api(state_dir: Path | str, host: str = "127.0.0.1", port: int = C.API_PORT,
               token: str | None = None, *, num_replicas: int | None = None,
               actor_timeout_s: float | None = None, direct_ingress: bool | None = None) -> dict:
    """Deploy the API on the connected cluster (on the head node); idempotent.

    The token is ``token``, else ``RAYCLUSTER_API_TOKEN``, else ``<state_dir>/api_token`` (created,
    0600, when missing). Only its sha256 reaches the deployment. Needs a Ray connection (the
    runtime actors may start before or after). ``actor_timeout_s`` overrides API_ACTOR_TIMEOUT_S.

    With ``direct_ingress`` (default ``API_DIRECT_INGRESS``, and only with one replica) the
    replica itself listens on ``host:port`` (Ray Serve direct ingress: Serve's proxy is not on the
    request path; it still runs, on API_PROXY_PORT or a free port). Otherwise Serve's proxy listens
    on ``host:port``. Serve's cluster-wide options apply only when this call starts Serve; if
    Serve already runs with other options and the API does not answer at ``host:port``,
    ApiDeployError says so. Also ApiDeployError when another program holds the port.
    Returns ``{"url", "token_path", "direct_ingress"}`` once ``GET /healthz`` answers there
    (token_path is None when the token came from the argument or the environment), plus
    ``proxy_url`` (Serve's proxy, serving the same app one hop longer) when direct and just deployed.
    """
    token_path: Path | None = None
    token = token or os.environ.get(TOKEN_ENV) or None
    if token is None:
        token, token_path = ensure_api_token(state_dir)
    timeout_s = C.API_ACTOR_TIMEOUT_S if actor_timeout_s is None else float(actor_timeout_s)
    settings = ApiSettings(token_sha256=hashlib.sha256(token.encode()).hexdigest(), actor_timeout_s=timeout_s,
                           submit_timeout_s=max(timeout_s, C.ENTRYPOINT_CHECK_TIMEOUT_S + 10),
                           max_body_bytes=C.API_MAX_BODY_BYTES, retry_after_s=C.API_RETRY_AFTER_S,
                           status_cache_s=C.API_STATUS_CACHE_S)
    replicas = num_replicas or C.API_NUM_REPLICAS
    direct = (C.API_DIRECT_INGRESS if direct_ingress is None else direct_ingress) and replicas == 1
    port = int(port)
    serve_env = _direct_ingress_env(port) if direct else {}
    settings.version = _version(settings, replicas, serve_env)
    url_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    url = f"http://{url_host}:{port}"
    running = _api_health(url)
    if running is None and not port_is_free(host, port):
        raise ApiDeployError(f"cannot serve the API on {host}:{port}: another program is listening there "
                             f"(choose another port: `raycluster up --api-port N` or RAYCLUSTER_API_PORT)",
                             field="api_port")
    if running is None and _app_deployed():
        raise ApiDeployError(f"the API is already deployed on this cluster but does not answer at {url}: it "
                             "listens on another port (Serve's port is fixed while Serve runs: `raycluster down` "
                             "and `up` with the new port) or is restarting (retry in a few seconds)",
                             field="api_port")
    result = {"url": url, "token_path": str(token_path) if token_path else None, "direct_ingress": direct}
    if running is not None and running.get("version") == settings.version:
        return result  # this code with these settings already answers there (Serve would restart it)
    if running is not None and direct:
        # One replica owning one port: Serve's rolling update would start the new replica while the
        # old one still holds the port. Replace it instead (the API is down for a few seconds).
        log.info("the API on %s runs other code/settings: replacing it", url)
        serve.delete(API_APP_NAME)
    proxy_port = (C.API_PROXY_PORT or free_port(url_host)) if direct else port
    quiet = {"log_level": "WARNING", "enable_access_log": False}  # per-request log lines cost ~15% CPU
    serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": proxy_port}, logging_config=quiet,
                controller_options={"runtime_env": {"env_vars": serve_env}} if serve_env else None)
    actor_options: dict[str, Any] = {"num_cpus": 0, "resources": dict(C.HEAD_NODE_RESOURCE)}
    if serve_env:
        actor_options["runtime_env"] = {"env_vars": serve_env}
    deployment = ControlAPI.options(num_replicas=replicas, max_ongoing_requests=C.API_MAX_ONGOING_REQUESTS,
                                    ray_actor_options=actor_options,
                                    graceful_shutdown_timeout_s=C.API_DRAIN_S + 5,
                                    health_check_period_s=C.API_HEALTH_CHECK_PERIOD_S,
                                    health_check_timeout_s=C.API_HEALTH_CHECK_TIMEOUT_S)
    serve.run(deployment.bind(settings.model_dump()), name=API_APP_NAME, route_prefix="/", logging_config=quiet)
    if direct:
        result["proxy_url"] = _proxy_url(url_host)
    deadline = time.monotonic() + C.API_READY_TIMEOUT_S
    while (_api_health(url) or {}).get("version") != settings.version:
        if time.monotonic() > deadline:
            raise ApiDeployError(
                f"the API was deployed but does not answer at {url} after {C.API_READY_TIMEOUT_S:.0f}s; "
                "a Ray Serve instance started earlier with other options (port, direct ingress) may be "
                "running on this cluster: `raycluster down` and `up` again, or `serve shutdown` first")
        time.sleep(0.2)
    return result


def _app_deployed() -> bool:
    """Whether this cluster's Serve (if it runs) has the API application (without starting Serve)."""
    try:
        return API_APP_NAME in serve.status().applications
    except Exception:  # Serve not reachable: then there is nothing deployed we could clash with
        return False


def _proxy_url(url_host: str) -> str | None:
    """Where Serve's own proxy listens (it serves the same app, one hop longer); None if unknown."""
    try:
        from ray.serve.context import _get_global_client

        return f"http://{url_host}:{int(_get_global_client().http_config.port)}"
    except Exception:  # a private Serve API: only informational (scripts/bench_api.py compares both)
        return None


def _direct_ingress_env(port: int) -> dict[str, str]:
    """Ray Serve settings (read from the environment of its controller and replica processes) that
    make the ingress replica listen on exactly ``port``: the port range is that one port, a released
    port is reusable at once (no quarantine: no load balancer holds a stale entry) and a stopping
    replica drains for API_DRAIN_S instead of 30 s."""
    return {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),  # exclusive
            "RAY_SERVE_PORT_QUARANTINE_S": "0",
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(C.API_DRAIN_S)}


def _version(settings: ApiSettings, replicas: int, serve_env: dict) -> str:
    blob = json.dumps([settings.model_dump(exclude={"version"}), replicas, serve_env,
                       hashlib.sha256(Path(__file__).read_bytes()).hexdigest()], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _api_health(url: str) -> dict | None:
    """Our API's ``GET /healthz`` answer at ``url``; None when nothing (or something else) answers."""
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as resp:
            body = json.loads(resp.read())
            return body if resp.status == 200 and isinstance(body, dict) and body.get("status") == "ok" else None
    except (OSError, ValueError):  # URLError is an OSError
        return None


def undeploy_api() -> None:
    """Delete the API application (Serve itself keeps running until ``serve.shutdown()``)."""
    with contextlib.suppress(Exception):
        serve.delete(API_APP_NAME)


__all__ = ["app", "ControlAPI", "deploy_api", "undeploy_api", "ensure_api_token", "read_api_token",
           "api_token_path", "API_APP_NAME"]
