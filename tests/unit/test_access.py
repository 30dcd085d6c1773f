"""Who may do what (policy/access.py), the token store (store/access.py, real SQLite) and the API
replica's access part (api/access.py: identity cache, ownership checks, audit flush) with a fake
Coordinator."""

import asyncio
import sqlite3
from types import SimpleNamespace

import pytest

from raycluster.api.access import IDENTITY_CACHE_S, Access
from raycluster.errors import Forbidden, IllegalTransition, InvalidJobSpec, JobNotFound, Unauthorized
from raycluster.policy import access as A
from raycluster.policy.access import OPERATOR, Identity, Role
from raycluster.store.access import TokenStore, sha256_hex

ADMIN_A = Identity("tok-1", "root", Role.ADMIN, "team-a")
ALICE = Identity("tok-2", "alice", Role.MEMBER, "team-a")
BOB = Identity("tok-3", "bob", Role.MEMBER, "team-b")
VERA = Identity("tok-4", "vera", Role.VIEWER, "team-a")
DEF = Identity("tok-5", "dee", Role.MEMBER, "default")

ACTIONS = [A.READ_CLUSTER, A.READ_JOBS, A.SUBMIT, A.CANCEL, A.CHANGE_SCHEDULE, A.UPLOAD_PACKAGE, A.SET_BUDGET,
           A.DRAIN, A.MARKET, A.MANAGE_TOKENS, A.READ_AUDIT]


@pytest.mark.parametrize("who,action,tenant,allowed", [
    *[(OPERATOR, a, "team-b", True) for a in ACTIONS],
    *[(ADMIN_A, a, "team-b", True) for a in ACTIONS],  # an admin acts on every tenant
    (ALICE, A.READ_CLUSTER, None, True),
    (ALICE, A.READ_JOBS, "team-a", True), (ALICE, A.READ_JOBS, "team-b", False),
    (ALICE, A.SUBMIT, "team-a", True), (ALICE, A.SUBMIT, "team-b", False),
    (ALICE, A.CANCEL, "team-a", True), (ALICE, A.CANCEL, "team-b", False), (ALICE, A.CANCEL, None, False),
    (ALICE, A.CHANGE_SCHEDULE, "team-a", True), (ALICE, A.CHANGE_SCHEDULE, "team-b", False),
    (ALICE, A.UPLOAD_PACKAGE, None, True),
    (ALICE, A.SET_BUDGET, None, False), (ALICE, A.DRAIN, None, False), (ALICE, A.MARKET, None, False),
    (ALICE, A.MANAGE_TOKENS, None, False), (ALICE, A.READ_AUDIT, None, False),
    (VERA, A.READ_CLUSTER, None, True), (VERA, A.READ_JOBS, "team-a", True), (VERA, A.READ_JOBS, "team-b", False),
    (VERA, A.SUBMIT, "team-a", False), (VERA, A.CANCEL, "team-a", False), (VERA, A.UPLOAD_PACKAGE, None, False),
    (DEF, A.CANCEL, None, True),  # a job with no tenant is tenant "default"'s
])
def test_authorize(who, action, tenant, allowed):
    if allowed:
        A.authorize(who, action, tenant)
        return
    with pytest.raises(Forbidden) as ei:
        A.authorize(who, action, tenant, field="tenant")
    msg = ei.value.message
    assert action.name in msg and ei.value.http_status == 403 and ei.value.field == "tenant"
    assert (action.least.value in msg) if who.role.rank < action.least.rank else ("team-a" in msg or "default" in msg)


def test_forbidden_is_not_retryable_and_exits_unauthorized():
    exc = Forbidden("no")
    assert isinstance(exc, Unauthorized) and not exc.retryable and exc.exit_code == 6 and exc.code == "forbidden"


@pytest.mark.parametrize("who,asked,expect", [
    (ALICE, None, "team-a"), (ALICE, "team-a", "team-a"), (ALICE, "team-b", Forbidden),
    (ADMIN_A, "team-b", "team-b"), (ADMIN_A, None, "team-a"), (OPERATOR, None, None), (OPERATOR, "x", "x"),
])
def test_submit_tenant_comes_from_the_token(who, asked, expect):
    if expect is Forbidden:
        with pytest.raises(Forbidden) as ei:
            A.submit_tenant(who, asked, "jobs[2].spec.tenant")
        assert ei.value.field == "jobs[2].spec.tenant"
    else:
        assert A.submit_tenant(who, asked) == expect


@pytest.mark.parametrize("who,asked,expect", [
    (ALICE, None, "team-a"), (ALICE, "team-a", "team-a"), (ALICE, "team-b", Forbidden), (VERA, None, "team-a"),
    (OPERATOR, None, None), (ADMIN_A, "team-b", "team-b"), (ADMIN_A, None, None),
])
def test_listing_is_limited_to_the_callers_tenant(who, asked, expect):
    if expect is Forbidden:
        with pytest.raises(Forbidden):
            A.visible_tenant(who, asked)
    else:
        assert A.visible_tenant(who, asked) == expect


def test_identity_round_trips_and_names_itself():
    assert Identity.from_dict(ALICE.to_dict()) == ALICE and ALICE.who == "alice@team-a" and OPERATOR.who == "operator"


# ------------------------------------------------------------------ the token store (real SQLite)
def test_tokens_are_stored_hashed_rotated_and_revoked_at_once(tmp_path):
    db = tmp_path / "jobs.db"
    store = TokenStore(db)
    rec, token = store.create("alice", "team-a", "member", created_by="operator")
    assert token.startswith("rc_") and rec["role"] == "member" and "sha256" not in rec and "token" not in rec
    assert store.identity(sha256_hex(token)) == Identity(rec["id"], "alice", Role.MEMBER, "team-a")
    dump = "\n".join(sqlite3.connect(db).iterdump())
    assert token not in dump and sha256_hex(token) in dump  # only the hash is kept
    rec2, token2 = store.rotate(rec["id"])
    assert token2 != token and rec2["rotated_at"] is not None
    assert store.identity(sha256_hex(token)) is None and store.identity(sha256_hex(token2)) is not None
    assert store.revoke(rec["id"])["revoked"] and store.identity(sha256_hex(token2)) is None
    assert store.revoke(rec["id"])["revoked"]  # idempotent
    with pytest.raises(IllegalTransition):
        store.rotate(rec["id"])  # a revoked token is not brought back
    assert store.list() == [] and [t["id"] for t in store.list(include_revoked=True)] == [rec["id"]]
    with pytest.raises(JobNotFound):
        store.revoke("tok-nope")
    store.close()
    assert TokenStore(db).identity(sha256_hex(token2)) is None  # durable


@pytest.mark.parametrize("name,tenant,role,field", [
    ("", "team-a", "member", "name"), ("al ice", "team-a", "member", "name"), ("alice", "team-a", "owner", "role"),
    ("alice", None, "member", "tenant"), ("alice", None, "viewer", "tenant"), ("alice", "a/b", "viewer", "tenant"),
])
def test_a_bad_token_request_names_its_field_and_makes_nothing(tmp_path, name, tenant, role, field):
    store = TokenStore(tmp_path / "jobs.db")
    with pytest.raises(InvalidJobSpec) as ei:
        store.create(name, tenant, role)
    assert ei.value.field == field and store.list(include_revoked=True) == []


def test_the_audit_trail_keeps_who_did_what(tmp_path):
    store = TokenStore(tmp_path / "jobs.db")
    store.audit(ALICE, "DELETE /jobs/{job_id}", "job-1", 200, now=1.0)
    store.audit(OPERATOR, "PUT /budget", "max_hourly_budget_usd=3.0", 200, now=2.0)
    trail = store.audit_trail()
    assert [(e["who"], e["action"], e["target"]) for e in trail] == [
        ("alice@team-a", "DELETE /jobs/{job_id}", "job-1"), ("operator", "PUT /budget", "max_hourly_budget_usd=3.0")]
    assert [e["who"] for e in store.audit_trail(tenant="team-a")] == ["alice@team-a"]
    assert [e["who"] for e in store.audit_trail(limit=1)] == ["operator"]


# ------------------------------------------------------------------ the replica's part, with a fake Coordinator
class FakeCoordinator:
    def __init__(self, store: TokenStore):
        self.store, self.calls, self.down = store, [], False
        self.jobs = {"job-a": {"id": "job-a", "tenant": "team-a"}, "job-b": {"id": "job-b", "tenant": "team-b"}}

    async def __call__(self, method, *args, **_kw):
        self.calls.append(method)
        if self.down:
            from raycluster.api.errors import unavailable
            raise unavailable("away")
        if method == "token_identity":
            who = self.store.identity(args[0])
            return who.to_dict() if who else None
        if method == "get":
            if args[0] not in self.jobs:
                raise JobNotFound(f"job {args[0]} not found")
            return self.jobs[args[0]]
        if method == "audit_many":
            for who, action, target, status in args[0]:
                self.store.audit(Identity.from_dict(who), action, target, status)
            return len(args[0])
        raise AssertionError(method)


def request_of(who: Identity, method="DELETE", path="/jobs/{job_id}"):
    return SimpleNamespace(state=SimpleNamespace(identity=who), method=method,
                           scope={"route": SimpleNamespace(path=path)}, url=SimpleNamespace(path=path))


def test_identity_lookups_are_cached_at_most_a_second(tmp_path):
    store = TokenStore(tmp_path / "jobs.db")
    rec, token = store.create("alice", "team-a", "member")
    coord, now = FakeCoordinator(store), [100.0]
    access = Access(coord, clock=lambda: now[0])

    async def go():
        sha = sha256_hex(token)
        assert (await access.identity(sha)).name == "alice"
        assert (await access.identity(sha)).name == "alice" and coord.calls.count("token_identity") == 1
        store.revoke(rec["id"])
        now[0] += IDENTITY_CACHE_S  # a second later the revocation holds
        assert await access.identity(sha) is None
        assert await access.identity(sha256_hex("not-a-token")) is None

    asyncio.run(go())


def test_ownership_checks_fetch_the_job_only_for_non_admins_and_refuse_others(tmp_path):
    coord = FakeCoordinator(TokenStore(tmp_path / "jobs.db"))
    access = Access(coord)

    async def go():
        assert await access.job(request_of(OPERATOR), "job-b", A.CANCEL) is None and coord.calls == []
        assert (await access.job(request_of(ALICE), "job-a", A.CANCEL))["id"] == "job-a"
        with pytest.raises(Forbidden):
            await access.job(request_of(ALICE), "job-b", A.CANCEL)
        calls = len(coord.calls)
        with pytest.raises(Forbidden):  # a viewer's cancel: refused on its role, without a lookup
            await access.job(request_of(VERA), "job-a", A.CANCEL)
        assert len(coord.calls) == calls
        with pytest.raises(JobNotFound):
            await access.job(request_of(ALICE), "job-x", A.READ_JOBS)

    asyncio.run(go())


def test_audit_entries_survive_a_coordinator_away_and_are_written_in_one_call(tmp_path):
    store = TokenStore(tmp_path / "jobs.db")
    coord = FakeCoordinator(store)
    access = Access(coord)

    async def go():
        coord.down = True
        for i in range(3):
            access.audit(request_of(ALICE), f"job-{i}")
        await asyncio.sleep(0.01)
        assert store.audit_trail() == []
        coord.down = False
        assert await access.flush() == 3

    asyncio.run(go())
    assert [e["target"] for e in store.audit_trail()] == ["job-0", "job-1", "job-2"]
    assert coord.calls.count("audit_many") == 2  # the failed try, then one call for all three


# ------------------------------------------------------------------ the middleware: who the bearer token is
def _call_guard(headers: dict[str, str], path="/jobs"):
    """One request through api/middleware.Guard (raw ASGI): (status, the identity the route saw)."""
    from raycluster.api.middleware import Guard

    seen, sent = {}, []

    async def inner(scope, receive, send):
        seen["identity"] = scope["state"]["identity"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path,
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(Guard(inner)(scope, receive, send))
    return sent[0]["status"], seen.get("identity")


def test_the_middleware_knows_the_operator_a_user_and_refuses_the_rest(tmp_path):
    from raycluster.api import settings

    store = TokenStore(tmp_path / "jobs.db")
    rec, token = store.create("alice", "team-a", "member")
    before = (settings.current(), settings.access())
    try:
        settings.configure({"token_sha256": sha256_hex("op-token")})
        settings.set_access(Access(FakeCoordinator(store)))
        assert _call_guard({"Authorization": "Bearer op-token"}) == (200, OPERATOR)
        status, who = _call_guard({"Authorization": f"bearer {token}"})
        assert status == 200 and who == Identity(rec["id"], "alice", Role.MEMBER, "team-a")
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {token}"}):
            assert _call_guard(headers)[0] == 401
        store.revoke(rec["id"])
        settings.set_access(Access(FakeCoordinator(store)))  # (a fresh cache: a second has passed)
        assert _call_guard({"Authorization": f"Bearer {token}"})[0] == 401
        away = FakeCoordinator(store)
        away.down = True
        settings.set_access(Access(away))
        assert _call_guard({"Authorization": "Bearer someone"})[0] == 503  # the token store unreachable: retry
        assert _call_guard({"Authorization": "Bearer op-token"})[0] == 200  # (the operator needs no lookup)
    finally:
        settings._settings, settings._access = before
