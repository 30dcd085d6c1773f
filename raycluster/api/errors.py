"""The API's one error shape, and how every failure is mapped onto it.

Owns: ``{"error": {"code", "message", "field"?, "retryable"}}`` for our own errors (their HTTP status
is an attribute of the error class, ``raycluster.errors``), FastAPI's request validation (422,
``field`` naming the parameter), unknown routes (404) and Ray's actor failures (503 +
``Retry-After``: safe to retry); JSON rendering that turns NaN/Infinity into null (a diverged loss
must not become a 500).
"""

from __future__ import annotations

import json
import math
from typing import Any

import ray
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from raycluster import constants as C
from raycluster.api import settings
from raycluster.errors import ClusterUnavailable, RayClusterError


class ApiError(Exception):
    """An HTTP error in the one JSON shape."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None,
                 retryable: bool = False, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.retryable, self.headers = retryable, headers or {}


def _safe_json(obj: Any) -> Any:
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


def error_response(status: int, code: str, message: str, field: str | None = None, retryable: bool = False,
                   headers: dict[str, str] | None = None) -> SafeJSONResponse:
    return SafeJSONResponse(error_body(code, message, field, retryable), status_code=status, headers=headers)


def retry_after() -> dict[str, str]:
    s = settings.current()
    return {"Retry-After": str(s.retry_after_s if s else C.API_RETRY_AFTER_S)}


def from_runtime_error(exc: RayClusterError) -> ApiError:
    status = exc.http_status
    return ApiError(status, exc.code, exc.message, field=exc.field, retryable=exc.retryable,
                    headers=retry_after() if status == ClusterUnavailable.http_status else None)


def unavailable(message: str) -> ApiError:
    return ApiError(503, ClusterUnavailable.code, message, retryable=True, headers=retry_after())


ACTOR_GONE = tuple(getattr(ray.exceptions, n) for n in (
    "RayActorError", "ActorDiedError", "ActorUnavailableError", "GetTimeoutError", "RaySystemError")
    if hasattr(ray.exceptions, n))


def _field_of_loc(loc: tuple) -> str | None:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or None


def install_handlers(app: FastAPI) -> None:
    """Make every error ``app`` raises answer in the one shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.field, exc.retryable, exc.headers)

    @app.exception_handler(RayClusterError)
    async def _runtime_error(request: Request, exc: RayClusterError):
        return await _api_error(request, from_runtime_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        field = _field_of_loc(tuple(first.get("loc", ())))
        msg = "; ".join(f"{_field_of_loc(tuple(e.get('loc', ()))) or 'request'}: {e.get('msg', 'invalid')}"
                        for e in errors[:10]) or "invalid request"
        return error_response(422, "invalid_request", msg, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))
