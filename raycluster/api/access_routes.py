"""The API's routes for tokens and the audit trail (admins only): plain FastAPI functions on the
same ``app`` as ``routes.py``'s, served by the same replica, calling through its access part.

Owns::

    POST   /tokens                    issue a token: {name, tenant, role}; 201 + the token (this once)
    GET    /tokens?all=false          the tokens issued (never a secret)
    POST   /tokens/{token_id}/rotate  a new secret (the old one stops at once); 409 if revoked
    DELETE /tokens/{token_id}         revoke (idempotent)
    GET    /audit?limit=&tenant=      who did what: every state-changing call, oldest first

They need nothing of the replica but its ``api/access.py: Access`` part (``settings.access()``),
which reaches the Coordinator's token store. No ``from __future__ import annotations`` (FastAPI
resolves these annotations at import).
"""

from fastapi import Path as PathParam, Query, Request
from pydantic import ValidationError

from raycluster.api.app import COMMON, E, NOT_FOUND, app
from raycluster.api.bodies import json_body
from raycluster.api.errors import ApiError, unavailable
from raycluster.api.models import AuditList, Token, TokenList, TokenRequest
from raycluster.api.settings import access as current_access
from raycluster.policy import access as A

_TOKEN_ID = r"^tok-[0-9a-f]{1,64}$"


def replica_access():
    """This replica's access part (503 while the replica is starting)."""
    part = current_access()
    if part is None:
        raise unavailable("the API is starting")
    return part


@app.post("/tokens", status_code=201, response_model=Token, tags=["access"], responses=COMMON,
          openapi_extra={"requestBody": {"required": True, "content": {
              "application/json": {"schema": TokenRequest.model_json_schema()}}}},
          summary="issue a token for a user: bound to one tenant and a role (the token is in this answer only)")
async def create_token(request: Request) -> dict:
    part = replica_access()
    who = part.who(request)
    A.authorize(who, A.MANAGE_TOKENS)
    data = await json_body(request)  # (parsed by hand: every error in the one shape, 422 naming the field)
    try:
        body = TokenRequest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err.get("loc", ())) or "body"
        raise ApiError(422, "invalid_request", f"{field}: {err.get('msg')}", field=field) from None
    out = await part.call("tokens_create", body.name, body.tenant, body.role, who.who)
    part.audit(request, out["id"], 201)
    return out


@app.get("/tokens", response_model=TokenList, tags=["access"], responses=COMMON,
         summary="the tokens issued (never the tokens themselves)")
async def list_tokens(request: Request, all: bool = Query(False, description="revoked ones too")) -> dict:
    part = replica_access()
    A.authorize(part.who(request), A.MANAGE_TOKENS)
    return {"tokens": await part.call("tokens_list", all)}


@app.post("/tokens/{token_id}/rotate", response_model=Token, tags=["access"],
          responses={**COMMON, **NOT_FOUND, 409: {**E, "description": "the token was revoked"}},
          summary="a new secret for a token (the old one stops working at once)")
async def rotate_token(request: Request, token_id: str = PathParam(..., pattern=_TOKEN_ID)) -> dict:
    return await _change(request, "tokens_rotate", token_id)


@app.delete("/tokens/{token_id}", response_model=Token, tags=["access"], responses={**COMMON, **NOT_FOUND},
            summary="revoke a token (at once; idempotent)")
async def revoke_token(request: Request, token_id: str = PathParam(..., pattern=_TOKEN_ID)) -> dict:
    return await _change(request, "tokens_revoke", token_id)


async def _change(request: Request, method: str, token_id: str) -> dict:
    part = replica_access()
    A.authorize(part.who(request), A.MANAGE_TOKENS)
    out = await part.call(method, token_id)
    part.audit(request, token_id)
    return out


@app.get("/audit", response_model=AuditList, tags=["access"], responses=COMMON,
         summary="who did what: every state-changing call, oldest first")
async def audit_trail(request: Request, limit: int = Query(100, ge=1, le=10000, description="the newest N"),
                      tenant: str | None = Query(None, max_length=64, description="calls made by this tenant's tokens")
                      ) -> dict:
    part = replica_access()
    A.authorize(part.who(request), A.READ_AUDIT)
    await part.settle()  # (what was just done is in the answer)
    return {"entries": await part.call("audit_trail", limit, tenant)}
