"""The API's ASGI middleware: bearer-token auth, the request-body limit, the last-resort 500.

Owns: every route except the public ones (``/healthz``) — ``/openapi.json`` and ``/docs`` included —
needing ``Authorization: Bearer <token>`` (401 + ``WWW-Authenticate: Bearer`` otherwise; headers are
never logged) and who the token is, put in ``request.state.identity`` for the routes to authorize
(``policy.access``): the operator's token (the replica holds only its sha256 and compares
``hmac.compare_digest``) is ``OPERATOR``, an admin; any other is looked up by its sha256 through the
replica's access part (``api/settings.py: access``: the Coordinator's token store, cached at most a
second, so a rotation or revocation takes effect at once); unknown or revoked → 401; 413 for a body
over ``max_body_bytes`` (checked on Content-Length and
while streaming); a 500 in the one error shape, logged here with its traceback, never sent.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from raycluster import constants as C
from raycluster.api.errors import error_response, retry_after
from raycluster.api.errors import ApiError
from raycluster.api.settings import access, current
from raycluster.policy.access import OPERATOR
from raycluster.errors import BodyTooLarge

log = logging.getLogger("raycluster.api")

PUBLIC_PATHS = frozenset({"/healthz"})
PACKAGE_PATH = "/api/packages/"  # (code packages: a larger body limit, API_MAX_PACKAGE_BYTES)


class _BodyTooLarge(Exception):
    pass


class Guard:
    """Pure ASGI middleware: bearer auth, body-size limit, and the last-resort 500 handler."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        settings = current()
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
            return await reply(error_response(503, "unavailable", "the API is starting", retryable=True,
                                               headers=retry_after()))
        path = scope.get("path", "")
        content_length = None
        auth = None
        for k, v in scope.get("headers", ()):
            if k == b"authorization":
                auth = v
            elif k == b"content-length":
                content_length = v
        if path not in PUBLIC_PATHS:
            sha = _presented_sha256(auth)
            identity = None
            if sha is not None and hmac.compare_digest(sha, settings.token_sha256):
                identity = OPERATOR
            elif sha is not None and access() is not None:
                try:
                    identity = await access().identity(sha)
                except ApiError as exc:  # the token store unreachable: 503, retry
                    return await reply(error_response(exc.status, exc.code, exc.message, exc.field, exc.retryable,
                                                      exc.headers))
            if identity is None:
                return await reply(error_response(401, "unauthorized", "missing, invalid or revoked bearer token",
                                                   headers={"WWW-Authenticate": "Bearer"}))
            scope.setdefault("state", {})["identity"] = identity
        limit = C.API_MAX_PACKAGE_BYTES if path.startswith(PACKAGE_PATH) else settings.max_body_bytes
        if content_length is not None:
            try:
                too_big = int(content_length) > limit
            except ValueError:
                return await reply(error_response(400, "bad_request", "invalid Content-Length"))
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
            await reply(error_response(500, "internal", "internal server error"))


def _too_large(limit: int):
    return error_response(BodyTooLarge.http_status, BodyTooLarge.code, f"request body is larger than {limit} bytes")


def _presented_sha256(header: bytes | None) -> str | None:
    """The sha256 (hex) of a ``Bearer`` token, None when there is none."""
    if not header:
        return None
    scheme, _, token = header.partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        return None
    return hashlib.sha256(token.strip()).hexdigest()
