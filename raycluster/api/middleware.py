"""The API's ASGI middleware: bearer-token auth, the request-body limit, the last-resort 500.

Owns: every route except the public ones (``/healthz``) — ``/openapi.json`` and ``/docs`` included —
needing ``Authorization: Bearer <token>`` (401 + ``WWW-Authenticate: Bearer`` otherwise; the replica
holds only the token's sha256 and compares ``hmac.compare_digest(sha256(presented), expected)``;
headers are never logged); 413 for a body over ``max_body_bytes`` (checked on Content-Length and
while streaming); a 500 in the one error shape, logged here with its traceback, never sent.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from raycluster import constants as C
from raycluster.api.errors import error_response, retry_after
from raycluster.api.settings import current
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
        if path not in PUBLIC_PATHS and not _token_ok(auth, settings.token_sha256):
            return await reply(error_response(401, "unauthorized", "missing or invalid bearer token",
                                               headers={"WWW-Authenticate": "Bearer"}))
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


def _token_ok(header: bytes | None, expected_sha256: str) -> bool:
    if not header:
        return False
    scheme, _, token = header.partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        return False
    return hmac.compare_digest(hashlib.sha256(token.strip()).hexdigest(), expected_sha256)
