"""Who may do what through the HTTP API: roles, the action each route is, and the one verdict.

Owns: ``Role`` (``viewer`` < ``member`` < ``admin``), ``Identity`` (who a bearer token is: token id,
name, tenant, role — never the token), ``Action`` (each route's kind of act, with the least role it
needs and whether it acts on one tenant's things) and ``authorize`` — the pure verdict the API
applies before it calls anything: allowed, or ``Forbidden`` naming what was refused and the role (or
tenant) that would allow it. No Ray, no I/O.

The rules: ``admin`` may do everything, on every tenant's jobs (the cluster's operator token is an
admin with no tenant). ``member`` submits as its own tenant and acts on (cancels, pauses, reads)
its tenant's jobs and schedules. ``viewer`` reads its tenant's. Every role reads the shared cluster's
status (nodes, node health, rentals, cost, tenants' quotas, scaling events): those describe the
cluster everyone shares, not another tenant's work.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from raycluster.errors import Forbidden
from raycluster.policy.tenants import tenant_of


class Role(str, Enum):
    VIEWER = "viewer"
    MEMBER = "member"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Role.VIEWER: 0, Role.MEMBER: 1, Role.ADMIN: 2}


@dataclass(frozen=True)
class Identity:
    token_id: str
    name: str
    role: Role
    tenant: str | None = None  # None: every tenant (admins only; the operator token)

    @property
    def who(self) -> str:
        """How the audit trail names it: ``alice@team-a`` (``operator`` for the cluster's own token)."""
        return f"{self.name}@{self.tenant}" if self.tenant else self.name

    def to_dict(self) -> dict:
        return {"token_id": self.token_id, "name": self.name, "role": self.role.value, "tenant": self.tenant}

    @classmethod
    def from_dict(cls, d: dict) -> Identity:
        return cls(token_id=d["token_id"], name=d["name"], role=Role(d["role"]), tenant=d.get("tenant"))


OPERATOR = Identity(token_id="operator", name="operator", role=Role.ADMIN, tenant=None)


@dataclass(frozen=True)
class Action:
    name: str          # in words, for the refusal: "cancel a job"
    least: Role        # the least role that may
    tenant_scoped: bool = False  # it acts on one tenant's things: a non-admin only on its own tenant's


READ_CLUSTER = Action("read the cluster's status", Role.VIEWER)
READ_JOBS = Action("read jobs", Role.VIEWER, tenant_scoped=True)
SUBMIT = Action("submit jobs", Role.MEMBER, tenant_scoped=True)
CANCEL = Action("cancel a job", Role.MEMBER, tenant_scoped=True)
CHANGE_SCHEDULE = Action("create, pause, resume or delete a schedule", Role.MEMBER, tenant_scoped=True)
UPLOAD_PACKAGE = Action("upload a code package", Role.MEMBER)
SET_BUDGET = Action("change the cluster's budget", Role.ADMIN)
DRAIN = Action("drain or undrain a node", Role.ADMIN)
MARKET = Action("preempt a rented node", Role.ADMIN)
MANAGE_TOKENS = Action("manage API tokens", Role.ADMIN)
READ_AUDIT = Action("read the audit trail", Role.ADMIN)


def require_role(who: Identity, action: Action, field: str | None = None) -> None:
    """The role half of ``authorize`` (before the tenant is known): ``Forbidden`` naming the role needed."""
    if who.role.rank < action.least.rank:
        raise Forbidden(f"{who.role.value} tokens may not {action.name}: it needs the {action.least.value} role "
                        f"or higher", field=field)


def authorize(who: Identity, action: Action, tenant: str | None = None, *, field: str | None = None) -> None:
    """Allow ``who`` to do ``action`` (on ``tenant``'s things, for a tenant-scoped action — None is
    tenant ``default``), or raise ``Forbidden`` saying what was refused and what would allow it.
    ``field``: the request field that named the tenant (a body's ``tenant``), for the error."""
    require_role(who, action, field)
    if action.tenant_scoped and who.role is not Role.ADMIN and who.tenant is not None:
        if tenant_of(tenant) != tenant_of(who.tenant):
            raise Forbidden(f"this token may {action.name} of tenant {tenant_of(who.tenant)!r} only, not "
                            f"{tenant_of(tenant)!r} (an admin token may act on every tenant)", field=field)


def visible_tenant(who: Identity, asked: str | None) -> str | None:
    """The tenant a listing is limited to: an admin's choice (None: all); a member's or viewer's own
    (asking for another tenant is refused)."""
    if who.role is Role.ADMIN or who.tenant is None:
        return asked
    authorize(who, READ_JOBS, asked if asked is not None else who.tenant, field="tenant")
    return tenant_of(who.tenant)


def submit_tenant(who: Identity, asked: str | None, field: str = "tenant") -> str | None:
    """The tenant a submit runs as: a member's own (a body naming another is refused, naming
    ``field``); an admin's choice, else the admin token's own tenant."""
    if who.role is Role.ADMIN:
        return asked if asked is not None else who.tenant
    authorize(who, SUBMIT, asked if asked is not None else who.tenant, field=field)
    return who.tenant
