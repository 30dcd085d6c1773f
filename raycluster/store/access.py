"""API tokens and the audit trail (``jobs.db``, tables ``api_tokens`` and ``audit``).

Owns: ``TokenStore`` — tokens issued per user, each bound to one tenant and a role
(``policy.access.Role``). Only a token's sha256 is stored, never the token: it is shown once, when
created or rotated. A token is ``rc_<id>_<secret>``; ``identity(sha256)`` answers who it is (None for
an unknown or revoked one). Rotation replaces the secret (the old one stops working at once);
revocation is kept (a revoked token's row stays, listed as revoked). ``AuditLog`` — every
state-changing API call: when, who (token id, name, tenant, role), what, on what, the outcome.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from raycluster.errors import IllegalTransition, InvalidJobSpec, JobNotFound
from raycluster.policy.access import Identity, Role
from raycluster.store.db import Table, connect

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$")
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class TokenRecord(BaseModel):
    id: str = Field(..., json_schema_extra={"sql": "PRIMARY KEY"})
    name: str = Field(..., description="who holds it (a user or a service)")
    tenant: str | None = Field(None, description="the tenant it acts as (None: an admin of every tenant)")
    role: Role
    sha256: str = Field(..., json_schema_extra={"sql": "UNIQUE"})
    created_at: float = 0.0
    rotated_at: float | None = None
    revoked_at: float | None = None
    created_by: str | None = None

    def public(self) -> dict[str, Any]:
        """What listing shows: everything but the hash."""
        d = {k: v for k, v in self.__dict__.items() if k != "sha256"}
        d["role"] = self.role.value
        d["revoked"] = self.revoked_at is not None
        return d


TOKENS = Table("api_tokens", TokenRecord)


class AuditRecord(BaseModel):
    seq: int | None = Field(None, json_schema_extra={"sql": "PRIMARY KEY AUTOINCREMENT"})
    ts: float
    token_id: str
    who: str
    tenant: str | None = None
    role: str
    action: str = Field(..., description="the route: 'DELETE /jobs/{job_id}'")
    target: str | None = Field(None, description="what it acted on (a job, schedule, node or token id)")
    status: int = Field(..., description="the HTTP status answered")


AUDIT = Table("audit", AuditRecord)


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _check(name: str, tenant: str | None, role: str) -> Role:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidJobSpec("name: 1-64 characters, letters, digits and _ . @ + -", field="name")
    try:
        r = Role(role)
    except ValueError:
        raise InvalidJobSpec(f"role: one of {', '.join(x.value for x in Role)}, not {role!r}", field="role") from None
    if tenant is None and r is not Role.ADMIN:
        raise InvalidJobSpec(f"tenant: a {r.value} token acts for one tenant: name it", field="tenant")
    if tenant is not None and (not isinstance(tenant, str) or not TENANT_RE.match(tenant)):
        raise InvalidJobSpec("tenant: 1-64 characters, letters, digits and _ . -", field="tenant")
    return r


class TokenStore:
    def __init__(self, path: Path | str):
        self._conn = connect(Path(path))
        self._lock = threading.RLock()
        with self._lock:
            TOKENS.create(self._conn)
            AUDIT.create(self._conn)

    # ---------------------------------------------------------------- tokens
    def create(self, name: str, tenant: str | None, role: str, created_by: str | None = None,
               now: float | None = None) -> tuple[dict[str, Any], str]:
        """A new token for ``name`` in ``tenant`` with ``role``: (its public record, the token — shown
        this once). InvalidJobSpec (422) naming the bad field."""
        r = _check(name, tenant, role)
        token_id = "tok-" + uuid.uuid4().hex[:12]
        token = f"rc_{token_id[4:]}_{secrets.token_urlsafe(32)}"
        rec = TokenRecord(id=token_id, name=name, tenant=tenant, role=r, sha256=sha256_hex(token),
                          created_at=time.time() if now is None else now, created_by=created_by)
        row = TOKENS.encode(rec.__dict__)
        with self._lock:
            self._conn.execute(f"INSERT INTO api_tokens ({', '.join(row)}) VALUES ({','.join('?' * len(row))})",
                               tuple(row.values()))
        return rec.public(), token

    def get(self, token_id: str) -> TokenRecord:
        with self._lock:
            row = self._conn.execute(f"SELECT {TOKENS.select_list} FROM api_tokens WHERE id=?", (token_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"token {token_id!r} not found")
        return TOKENS.row(row)

    def list(self, include_revoked: bool = False) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(f"SELECT {TOKENS.select_list} FROM api_tokens"
                                      + ("" if include_revoked else " WHERE revoked_at IS NULL")
                                      + " ORDER BY created_at, id").fetchall()
        return [TOKENS.row(r).public() for r in rows]

    def rotate(self, token_id: str, now: float | None = None) -> tuple[dict[str, Any], str]:
        """A new secret for a live token (the old one stops working at once): (record, new token)."""
        token = f"rc_{token_id[4:]}_{secrets.token_urlsafe(32)}"
        now = time.time() if now is None else now
        with self._lock:
            cur = self._conn.execute("UPDATE api_tokens SET sha256=?, rotated_at=? WHERE id=? AND revoked_at IS NULL",
                                     (sha256_hex(token), now, token_id))
            if cur.rowcount != 1:
                rec = self.get(token_id)  # JobNotFound
                raise IllegalTransition(f"token {token_id} was revoked at {rec.revoked_at:.0f}; create a new one")
        return self.get(token_id).public(), token

    def revoke(self, token_id: str, now: float | None = None) -> dict[str, Any]:
        """Revoke a token (idempotent: revoking a revoked one answers it as it is)."""
        with self._lock:
            self._conn.execute("UPDATE api_tokens SET revoked_at=? WHERE id=? AND revoked_at IS NULL",
                               (time.time() if now is None else now, token_id))
        return self.get(token_id).public()

    def identity(self, sha256: str) -> Identity | None:
        """Who a presented token is (by its sha256); None when unknown or revoked."""
        with self._lock:
            row = self._conn.execute(f"SELECT {TOKENS.select_list} FROM api_tokens WHERE sha256=? AND "
                                     "revoked_at IS NULL", (sha256,)).fetchone()
        if row is None:
            return None
        rec = TOKENS.row(row)
        return Identity(token_id=rec.id, name=rec.name, role=rec.role, tenant=rec.tenant)

    # ---------------------------------------------------------------- audit
    def audit(self, who: Identity, action: str, target: str | None, status: int, now: float | None = None) -> None:
        self.audit_many([(who, action, target, status)], now)

    def audit_many(self, entries: list[tuple[Identity, str, str | None, int]], now: float | None = None) -> None:
        """Record calls, each (who, action, target, HTTP status), in one transaction."""
        ts = time.time() if now is None else now
        rows = [{k: v for k, v in AUDIT.encode(AuditRecord(
                    ts=ts, token_id=who.token_id, who=who.who, tenant=who.tenant, role=who.role.value,
                    action=action, target=target, status=status).__dict__).items() if k != "seq"}
                for who, action, target, status in entries]
        if not rows:
            return
        with self._lock:  # one transaction for the lot
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(f"INSERT INTO audit ({', '.join(rows[0])}) VALUES "
                                       f"({','.join('?' * len(rows[0]))})", [tuple(r.values()) for r in rows])
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def audit_trail(self, limit: int = 100, tenant: str | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` entries, oldest first."""
        where, args = ("WHERE tenant=?", [tenant]) if tenant is not None else ("", [])
        with self._lock:
            rows = self._conn.execute(f"SELECT {AUDIT.select_list} FROM audit {where} ORDER BY seq DESC LIMIT ?",
                                      (*args, int(limit))).fetchall()
        return [dict(AUDIT.row(r).__dict__) for r in reversed(rows)]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
