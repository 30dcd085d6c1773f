"""The HTTP control API (raycluster/api.py, a Ray Serve app) on a real local multi-node cluster.

Real HTTP with ``requests`` against the deployed app: job round trip, auth on every route,
the one error shape (422 with field, 404, 409, 413), idempotent submit, property-based fuzzing
of every operation with schemathesis (no 500s, responses match the OpenAPI schema), and the
API staying up while the Coordinator actor is killed and restarted.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from contextlib import suppress
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from raycluster.util.ports import free_port
from tests.conftest import coordinator_restarted, runtime_on_shared, settings_for_tests, wait_for

pytestmark = [pytest.mark.cluster]

ACTOR_TIMEOUT_S = 5.0  # the API's wait for an actor in these tests (503 after that)
HTTP_TIMEOUT_S = 90.0  # a submit may wait for an entrypoint import on a cold worker
DUMMY_JOB = "job-000000000000"


def counter_spec(name, steps=20, sleep=0.0, **extra):
    return {"name": name, "entrypoint": "jobs.toy:counter", "config": {"steps": steps, "sleep_per_step_s": sleep},
            "resources": {"cpus": 0.5, "gpus": 0}, "checkpoint": {"every_steps": 5, "keep_last": 3}, **extra}


@pytest.fixture(scope="module")
def api(shared_cluster, tmp_path_factory):
    """The shared cluster (head + 3 workers of 2 CPUs, 1 logical GPU), the runtime on it with
    TEST_SETTINGS, and the API deployed on a free port."""
    from raycluster.api.deploy import deploy_api

    state_dir = Path(tmp_path_factory.mktemp("rc-api"))
    (state_dir / "tenants.yaml").write_text(TENANTS)
    lc = shared_cluster
    with runtime_on_shared(lc, state_dir, settings_for_tests()) as coord:
        info = deploy_api(state_dir, port=free_port("127.0.0.1"), actor_timeout_s=ACTOR_TIMEOUT_S)
        token_path = Path(info["token_path"])
        assert token_path.stat().st_mode & 0o777 == 0o600
        token = token_path.read_text().strip()
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        yield SimpleNamespace(url=info["url"], token=token, s=session, coord=coord, state_dir=state_dir, lc=lc)


def _get(api, path, **kw):
    return api.s.get(api.url + path, timeout=HTTP_TIMEOUT_S, **kw)


def _post_job(api, spec, key=None, **kw):
    headers = {"Idempotency-Key": key} if key else {}
    return api.s.post(api.url + "/jobs", json=spec, headers=headers, timeout=HTTP_TIMEOUT_S, **kw)


def _assert_error(resp, status, code=None, field=None):
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err["code"], str) and isinstance(err["message"], str), body
    assert "Traceback" not in err["message"]
    if code:
        assert err["code"] == code, body
    if field:
        assert err.get("field") == field, body
    return err


def _state(api, jid):
    r = _get(api, f"/jobs/{jid}")
    assert r.status_code == 200, r.text
    return r.json()["state"]


# ============================================================================ round trip
@pytest.mark.timeout(150)
def test_job_round_trip_and_cancel(api):
    r = _post_job(api, counter_spec("api-roundtrip"))
    assert r.status_code == 201, r.text
    job = r.json()
    jid = job["id"]
    assert job["state"] == "PENDING" and job["name"] == "api-roundtrip"

    listed = _get(api, "/jobs").json()
    assert jid in [j["id"] for j in listed["jobs"]] and listed["limit"] == 100 and listed["offset"] == 0
    one = _get(api, f"/jobs/{jid}").json()
    assert one["id"] == jid and one["transitions"][0]["to"] == "PENDING"

    wait_for(lambda: _state(api, jid) in ("SUCCEEDED", "FAILED", "CANCELLED"), 90, "the job to finish")
    final = _get(api, f"/jobs/{jid}").json()
    assert final["state"] == "SUCCEEDED", final["error"]
    assert final["result"]["steps"] == 20
    assert [t["to"] for t in final["transitions"]][-1] == "SUCCEEDED"
    assert [t["cause"] for t in final["transitions"]] == ["submitted", "admitted", "placed", "finished"]
    assert final["cause"] == "finished" and final["waiting"] is None and final["placement_timeouts"] == 0

    metrics = _get(api, f"/jobs/{jid}/metrics").json()
    assert metrics["job_id"] == jid and max(m["step"] for m in metrics["metrics"]) == 20
    cps = _get(api, f"/jobs/{jid}/checkpoints").json()["checkpoints"]
    assert [c["step"] for c in cps if c["state"] == "COMPLETE"], cps
    logs = _get(api, f"/jobs/{jid}/logs", params={"tail": 5})
    if logs.status_code == 501:  # a Coordinator without logs() answers in the same error shape
        _assert_error(logs, 501, "not_implemented")
    else:
        assert logs.status_code == 200, logs.text
        for entry in logs.json()["logs"]:
            assert set(entry) == {"attempt", "rank", "lines", "error", "offset"} and len(entry["lines"]) <= 5
            assert entry["error"] is None  # (set when a listed log cannot be read from the storage)
        # following: from the offsets handed back, nothing new once the job ended; a bad since is named
        since = ",".join(f"a{e['attempt']}-r{e['rank']}:{e['offset']}" for e in logs.json()["logs"])
        after = _get(api, f"/jobs/{jid}/logs", params={"since": since}).json()["logs"]
        assert after and all(e["lines"] == [] for e in after)
        _assert_error(_get(api, f"/jobs/{jid}/logs", params={"since": "a1-r0:x"}), 422, "invalid_request")

    # filters and paging
    done = _get(api, "/jobs", params=[("state", "SUCCEEDED"), ("state", "FAILED")]).json()["jobs"]
    assert jid in [j["id"] for j in done] and all(j["state"] in ("SUCCEEDED", "FAILED") for j in done)
    assert jid not in [j["id"] for j in _get(api, "/jobs", params={"state": "RUNNING"}).json()["jobs"]]
    page = _get(api, "/jobs", params={"limit": 1}).json()
    assert len(page["jobs"]) == 1 and page["limit"] == 1

    # cancel a running job, then cancel it again
    long = _post_job(api, counter_spec("api-long", steps=2000, sleep=0.1)).json()["id"]
    wait_for(lambda: _state(api, long) == "RUNNING", 60, "the long job to run")
    r = api.s.delete(f"{api.url}/jobs/{long}", timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "CANCELLED" and r.json()["cause"] == "cancelled"
    _assert_error(api.s.delete(f"{api.url}/jobs/{long}", timeout=HTTP_TIMEOUT_S), 409, "illegal_transition")

    status = _get(api, "/cluster/status").json()
    assert status["nodes"] == 4 and status["gpus"]["total"] == 3 and status["cpus"]["total"] == 6
    assert status["runtime"]["coordinator"]["ok"] and status["runtime"]["checkpoint_manager"]["ok"]
    assert status["jobs_by_state"]["SUCCEEDED"] >= 1 and status["jobs_by_state"]["CANCELLED"] >= 1
    nodes = _get(api, "/nodes").json()["nodes"]
    assert len([n for n in nodes if n["alive"]]) == 4 and sum(n["is_head"] for n in nodes) == 1
    for n in nodes:
        assert not any("_group_" in k or k.startswith("node:") for k in n["resources_total"]), n
    worker = next(n for n in nodes if not n["is_head"])
    assert _get(api, f"/nodes/{worker['id']}").json()["resources_total"]["GPU"] == 1
    _assert_error(_get(api, "/nodes/ffff"), 404, "not_found")


# ============================================================================ auth
@pytest.mark.timeout(60)
def test_every_route_but_healthz_needs_the_token(api):
    r = requests.get(api.url + "/healthz", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok" and set(r.json()) == {"status", "version"}
    assert api.token not in r.text
    schema = _get(api, "/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    routes = []
    for path, ops in schema["paths"].items():
        concrete = path.replace("{job_id}", DUMMY_JOB).replace("{node_id}", "0" * 56)
        routes += [(method.upper(), concrete) for method in ops if method in ("get", "post", "put", "delete", "patch")]
    routes += [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/no-such-route")]
    assert len(routes) >= 12
    bad_headers = [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {api.token}"},
                   {"Authorization": "Bearer"}, {"Authorization": f"Bearer {api.token}x"}]
    checked = 0
    for method, path in routes:
        if path == "/healthz":
            continue
        for headers in bad_headers:
            r = requests.request(method, api.url + path, headers=headers, json=counter_spec("unauth"), timeout=10)
            _assert_error(r, 401, "unauthorized")
            assert r.headers.get("WWW-Authenticate") == "Bearer"
            assert api.token not in r.text
            checked += 1
    assert checked >= 11 * len(bad_headers)
    # the scheme is case-insensitive; the right token opens every read route
    r = requests.get(api.url + "/cluster/status", headers={"Authorization": f"bearer {api.token}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert _get(api, "/docs").status_code == 200
    # the token file is reused, never rotated behind a running deployment's back
    from raycluster.api.token import ensure_api_token, resolve_token

    assert ensure_api_token(api.state_dir)[0] == api.token == resolve_token(state_dir=api.state_dir)


# ============================================================================ errors
TENANTS = "tenants:\n  team-small:\n    max_jobs: 3\n    per_job: {max_workers: 1, max_gpus: 0.5}\n"

BAD_SPECS = [
    ("missing entrypoint", {"name": "x"}, "invalid_spec", "entrypoint"),
    ("priority too high", {**counter_spec("x"), "priority": 5000}, "invalid_spec", "priority"),
    ("negative workers", {**counter_spec("x"), "num_workers": -1}, "invalid_spec", "num_workers"),
    ("unknown field", {**counter_spec("x"), "colour": "blue"}, "invalid_spec", "colour"),
    ("nested field", {**counter_spec("x"), "resources": {"gpus": -1}}, "invalid_spec", "resources.gpus"),
    ("bad name", {**counter_spec("x"), "name": "has space"}, "invalid_spec", "name"),
    ("not importable", {**counter_spec("x"), "entrypoint": "jobs.toy:no_such_function"},
     "entrypoint_not_importable", "entrypoint"),
    ("gang larger than the cluster", {**counter_spec("x"), "num_workers": 5, "resources": {"cpus": 1, "gpus": 1}},
     "infeasible", "num_workers"),
    ("not an object", [1, 2, 3], "invalid_spec", None),
    ("a local working_dir", {**counter_spec("x"), "runtime_env": {"working_dir": "/tmp"}}, "invalid_spec",
     "runtime_env.working_dir"),
    ("a local py_module", {**counter_spec("x"), "runtime_env": {"py_modules": ["s3://b/m.zip", "./mine"]}},
     "invalid_spec", "runtime_env.py_modules"),
    ("env_vars not strings", {**counter_spec("x"), "runtime_env": {"env_vars": {"A": 1}}}, "invalid_spec",
     "runtime_env.env_vars"),
    ("pip of the wrong type", {**counter_spec("x"), "runtime_env": {"pip": 5}}, "invalid_spec", "runtime_env.pip"),
    ("an unknown runtime_env key", {**counter_spec("x"), "runtime_env": {"colour": "blue"}}, "invalid_spec",
     "runtime_env.colour"),
    ("over its tenant's per-job max_workers", {**counter_spec("x"), "tenant": "team-small", "num_workers": 2},
     "invalid_spec", "num_workers"),
    ("over its tenant's per-job max_gpus", {**counter_spec("x"), "tenant": "team-small",
                                            "resources": {"cpus": 1, "gpus": 1}}, "invalid_spec", "resources.gpus"),
    ("a schedule sent as a job", {**counter_spec("x"), "schedule": "0 2 * * *"}, "invalid_spec", "schedule"),
    ("a bad deadline", {**counter_spec("x"), "deadline": "soon"}, "invalid_spec", "deadline"),
    ("config nested 100 deep", {**counter_spec("x"), "config": json.loads('{"a":' * 100 + "1" + "}" * 100)},
     "invalid_json", "config.a.a"),
]


@pytest.mark.timeout(120)
def test_errors_have_one_shape(api):
    before = {j["id"] for j in _get(api, "/jobs", params={"limit": 1000}).json()["jobs"]}
    created: list[str] = []
    for what, spec, code, field in BAD_SPECS:
        err = _assert_error(_post_job(api, spec), 422, code, field)
        assert err["message"], what
    for body in (b"{not json", b"", b"\xff\xfe"):
        r = api.s.post(api.url + "/jobs", data=body, headers={"Content-Type": "application/json"}, timeout=30)
        _assert_error(r, 422, "invalid_json")
    # a config nested 50,000 levels (300 KB): refused, not a RecursionError
    deep = ('{"name": "deep", "entrypoint": "jobs.toy:counter", "config": ' + '{"a":' * 50_000 + "1"
            + "}" * 50_000 + "}").encode()
    r = api.s.post(api.url + "/jobs", data=deep, headers={"Content-Type": "application/json"}, timeout=30)
    _assert_error(r, 422, "invalid_json", "body")
    # a JSON body declared as something else: 415 on every route with a body
    spec_text = json.dumps(counter_spec("plain"))
    for method, path, body in (("POST", "/jobs", spec_text), ("POST", "/jobs/batch", json.dumps({"jobs": []})),
                               ("PUT", "/budget", '{"max_hourly_budget_usd": 1}'),
                               ("POST", "/rentals/rent-1/preempt", '{"notice_s": 1}')):
        for media in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            r = api.s.request(method, api.url + path, data=body.encode(), headers={"Content-Type": media}, timeout=30)
            _assert_error(r, 415, "unsupported_media_type", "Content-Type")
    r = api.s.post(api.url + "/jobs", data=spec_text.encode(),
                   headers={"Content-Type": "application/json; charset=utf-8"}, timeout=30)
    assert r.status_code == 201, r.text  # JSON with a charset is JSON
    created.append(r.json()["id"])
    _assert_error(_get(api, "/jobs", params={"limit": 0}), 422, "invalid_request", "limit")
    _assert_error(_get(api, "/jobs", params={"limit": 1001}), 422, "invalid_request", "limit")
    _assert_error(_get(api, "/jobs", params={"state": "SLEEPING"}), 422, "invalid_request", "state.0")
    _assert_error(_get(api, "/jobs/bad id!"), 422, "invalid_request", "job_id")
    _assert_error(_get(api, "/jobs/x/logs", params={"tail": -1}), 422, "invalid_request", "tail")
    # rentals: this cluster is not elastic; a bad notice is refused before anything is asked
    _assert_error(_get(api, "/rentals"), 409, "not_elastic")
    _assert_error(api.s.post(api.url + "/rentals/rent-1/preempt", timeout=30), 409, "not_elastic")
    for body in ({"notice_s": -1}, {"notice_s": "soon"}, {"notice_s": True}):
        _assert_error(api.s.post(api.url + "/rentals/rent-1/preempt", json=body, timeout=30), 422, "invalid_request",
                      "notice_s")
    _assert_error(api.s.post(api.url + "/rentals/rent-1/preempt", json={"when": 1}, timeout=30), 422,
                  "invalid_request", "body")
    # cost, events and the budget: not elastic either; a bad cap is refused before anything is asked
    _assert_error(_get(api, "/cost"), 409, "not_elastic")
    _assert_error(_get(api, "/events"), 409, "not_elastic")
    _assert_error(api.s.put(api.url + "/budget", json={"max_hourly_budget_usd": 1.5}, timeout=30), 409, "not_elastic")
    for body, field in (({"max_hourly_budget_usd": -1}, "max_hourly_budget_usd"),
                        ({"max_hourly_budget_usd": "ten"}, "max_hourly_budget_usd"),
                        ({"max_hourly_budget_usd": True}, "max_hourly_budget_usd"), ({"cap": 1}, "body"), ([1], "body")):
        _assert_error(api.s.put(api.url + "/budget", json=body, timeout=30), 422, "invalid_request", field)
    _assert_error(api.s.post(api.url + "/jobs", json=counter_spec("x"), headers={"Idempotency-Key": "k" * 300},
                             timeout=30), 422, "invalid_request", "Idempotency-Key")

    for method, suffix in (("GET", ""), ("DELETE", ""), ("GET", "/metrics"), ("GET", "/checkpoints"),
                           ("GET", "/logs")):
        r = api.s.request(method, f"{api.url}/jobs/{DUMMY_JOB}{suffix}", timeout=30)
        if r.status_code != 501:
            _assert_error(r, 404, "not_found")
    _assert_error(_get(api, "/no/such/route"), 404, "not_found")
    _assert_error(api.s.put(api.url + "/jobs", timeout=30), 405, "method_not_allowed")

    # 413: declared length, and a chunked body without Content-Length
    big = {**counter_spec("big"), "config": {"blob": "x" * (1024 * 1024 + 10)}}
    _assert_error(_post_job(api, big), 413, "payload_too_large")

    def chunks():
        for _ in range(40):
            yield b"x" * 65536

    r = api.s.post(api.url + "/jobs", data=chunks(), headers={"Content-Type": "application/json"}, timeout=30)
    _assert_error(r, 413, "payload_too_large")
    assert _get(api, "/healthz").status_code == 200  # still serving
    # schedules: a bad cron names schedule; nothing made
    for body, field in (({**counter_spec("s"), "schedule": "every night"}, "schedule"),
                        (counter_spec("s"), "schedule"), ({**counter_spec("s"), "schedule": "0 2 * * *",
                                                          "concurrency_policy": "Never"}, "concurrency_policy")):
        _assert_error(api.s.post(api.url + "/schedules", json=body, timeout=30), 422, "invalid_spec", field)
    _assert_error(api.s.post(api.url + "/schedules", data=b"{}", headers={"Content-Type": "text/plain"}, timeout=30),
                  415, "unsupported_media_type", "Content-Type")
    assert _get(api, "/schedules").json()["schedules"] == []
    _assert_error(_get(api, "/schedules/sched-nope"), 404, "not_found")
    small = next(t for t in _get(api, "/tenants").json()["tenants"] if t["tenant"] == "team-small")
    assert small["listed"] and small["quota"]["max_jobs"] == 3 and small["holding"]["jobs"] == 0
    after = {j["id"] for j in _get(api, "/jobs", params={"limit": 1000}).json()["jobs"]}
    assert after - before == set(created), "a refused request created a job"


@pytest.mark.timeout(90)
def test_submit_is_idempotent_under_idempotency_key(api):
    key = f"test-{uuid.uuid4().hex}"
    spec = counter_spec("idem", steps=3)
    first = _post_job(api, spec, key)
    second = _post_job(api, spec, key)
    assert first.status_code == 201 and second.status_code == 201, (first.text, second.text)
    assert first.json()["id"] == second.json()["id"]
    jobs = _get(api, "/jobs", params={"limit": 1000}).json()["jobs"]
    assert [j["id"] for j in jobs if j["idempotency_key"] == key] == [first.json()["id"]]
    # the same key with a different spec is a client bug: 409, nothing created
    _assert_error(_post_job(api, counter_spec("idem-other", steps=3), key), 409, "idempotency_key_reused",
                  "Idempotency-Key")
    # without a key every POST is a new job
    a, b = _post_job(api, spec), _post_job(api, spec)
    assert a.status_code == b.status_code == 201 and a.json()["id"] != b.json()["id"]


def test_batch_submit_is_all_or_none_and_idempotent_per_item(api):
    """POST /jobs/batch (and HttpClient.submit_many over it): an invalid item fails the batch with
    422 naming jobs[i].<field> and nothing created; a replay answers the same jobs; a key reused with
    another spec is 409 naming the item; the jobs run like any other."""
    from raycluster.client.http_client import HttpClient

    run = uuid.uuid4().hex[:8]
    items = [{"spec": counter_spec(f"batch-{run}-{i}", steps=2), "idempotency_key": f"batch-{run}-{i}"}
             for i in range(4)]
    bad = [*items[:1], {"spec": {**counter_spec("bad"), "num_workers": 0}}, *items[1:]]
    url = api.url + "/jobs/batch"
    _assert_error(api.s.post(url, json={"jobs": bad}, timeout=HTTP_TIMEOUT_S), 422, "invalid_spec",
                  "jobs[1].spec.num_workers")
    for body, field in (({"jobs": []}, "jobs"), ({"jobs": items, "more": 1}, "jobs"), ([1], "jobs")):
        _assert_error(api.s.post(url, json=body, timeout=HTTP_TIMEOUT_S), 422, None, field)
    names = {j["name"] for j in _get(api, "/jobs", params={"limit": 1000}).json()["jobs"]}
    assert not any(n.startswith(f"batch-{run}") for n in names)  # nothing created
    first = api.s.post(url, json={"jobs": items}, timeout=HTTP_TIMEOUT_S)
    assert first.status_code == 201, first.text
    ids = [j["id"] for j in first.json()["jobs"]]
    assert [j["name"] for j in first.json()["jobs"]] == [f"batch-{run}-{i}" for i in range(4)]
    client = HttpClient(api.url, api.token)
    again = client.submit_many([it["spec"] for it in items], [it["idempotency_key"] for it in items])
    assert [j["id"] for j in again] == ids
    other = [{"spec": counter_spec("other"), "idempotency_key": items[2]["idempotency_key"]}]
    _assert_error(api.s.post(url, json={"jobs": other}, timeout=HTTP_TIMEOUT_S), 409, "idempotency_key_reused",
                  "jobs[0].idempotency_key")
    fresh = client.submit_many([counter_spec(f"batch-{run}-x{i}", steps=2) for i in range(3)], batch_size=2)
    assert len({j["id"] for j in fresh}) == 3
    for jid in ids + [j["id"] for j in fresh]:
        wait_for(lambda: _state(api, jid) == "SUCCEEDED", 90, f"{jid} to finish")


@pytest.mark.timeout(150)
def test_concurrent_posts_share_coordinator_calls_and_each_gets_its_own_answer(api):
    """30 POST /jobs at once (the replica sends concurrent submits to the Coordinator together): every
    good one is a job of its own, listed once under its key; the bad one, the infeasible one and the
    reused key get their own errors, naming their own field, and spoil nobody else's submit."""
    from concurrent.futures import ThreadPoolExecutor

    run = uuid.uuid4().hex[:8]
    taken = f"taken-{run}"
    assert _post_job(api, counter_spec(f"c-{run}-taken", steps=1), taken).status_code == 201
    specs = [counter_spec(f"c-{run}-{i}", steps=1) for i in range(30)]
    specs[7]["num_workers"] = 0
    specs[11]["resources"] = {"cpus": 500, "gpus": 0}
    keys = [f"c-{run}-{i}" for i in range(30)]
    keys[19] = taken  # used before with another spec

    def post(i):
        return requests.post(api.url + "/jobs", json=specs[i], headers={
            "Idempotency-Key": keys[i], "Authorization": f"Bearer {api.token}"}, timeout=HTTP_TIMEOUT_S)

    with ThreadPoolExecutor(30) as pool:
        answers = list(pool.map(post, range(30)))
    _assert_error(answers[7], 422, "invalid_spec", "num_workers")
    _assert_error(answers[11], 422, "infeasible", "num_workers")
    _assert_error(answers[19], 409, "idempotency_key_reused", "Idempotency-Key")
    good = {i: r for i, r in enumerate(answers) if i not in (7, 11, 19)}
    assert all(r.status_code == 201 for r in good.values()), [(i, r.text) for i, r in good.items()]
    assert all(r.json()["name"] == f"c-{run}-{i}" for i, r in good.items())
    listed = [j for j in _get(api, "/jobs", params={"limit": 1000}).json()["jobs"] if j["name"].startswith(f"c-{run}-")]
    assert sorted(j["id"] for j in listed if j["name"] != f"c-{run}-taken") == sorted(r.json()["id"] for r in good.values())
    for i, r in good.items():
        wait_for(lambda: _state(api, r.json()["id"]) == "SUCCEEDED", 120, f"c-{run}-{i} to finish")


# ============================================================================ your code, through the API
@pytest.mark.timeout(150)
def test_a_local_working_dir_is_uploaded_through_the_api_once(api, tmp_path):
    """The HTTP client, the API its only way in: a spec whose entrypoint lives only in a local
    directory runs (the directory goes up as a content-addressed package, PUT /api/packages/gcs/...);
    submitted again unchanged, nothing is uploaded; bad packages are refused in the one shape."""
    from raycluster.client.http_client import HttpClient

    proj = tmp_path / "proj"
    proj.mkdir()
    mod = f"rc_only_here_{uuid.uuid4().hex[:8]}"
    (proj / f"{mod}.py").write_text("def train(ctx):\n    ctx.report(step=1, x=1.0)\n    return {'answer': 42}\n")
    (proj / "notes.tmp").write_text("scratch")
    client = HttpClient(api.url, api.token)
    spec = {"name": "local-code", "entrypoint": f"{mod}:train",
            "runtime_env": {"working_dir": str(proj), "excludes": ["*.tmp"]}}
    job = client.submit(spec)
    uri = job["spec"]["runtime_env"]["working_dir"]
    assert client.last_uploaded == [uri] and uri.startswith("gcs://_ray_pkg_"), job["spec"]
    final = client.wait([job["id"]], timeout_s=90)[0]
    assert final["state"] == "SUCCEEDED" and final["result"] == {"answer": 42}, final
    again = client.submit(spec)
    assert client.last_uploaded == [] and again["spec"]["runtime_env"]["working_dir"] == uri  # not sent again
    assert client.wait([again["id"]], timeout_s=90)[0]["state"] == "SUCCEEDED"
    name = uri.split("://", 1)[1]
    assert _get(api, f"/api/packages/gcs/{name}").json() == {"uri": uri}
    _assert_error(_get(api, "/api/packages/gcs/_ray_pkg_0123456789abcdef.zip"), 404, "not_found")
    _assert_error(_get(api, "/api/packages/s3/_ray_pkg_0123456789abcdef.zip"), 422, "invalid_request", "protocol")
    put = api.url + "/api/packages/gcs/_ray_pkg_0123456789abcdef.zip"
    _assert_error(api.s.put(put, data=b"not a zip", headers={"Content-Type": "application/zip"}, timeout=30), 422,
                  "invalid_package", "body")
    _assert_error(api.s.put(put, data=b"PK", headers={"Content-Type": "text/plain"}, timeout=30), 415,
                  "unsupported_media_type", "Content-Type")
    _assert_error(api.s.put(api.url + "/api/packages/gcs/evil.zip", data=b"", timeout=30), 422, "invalid_request",
                  "name")
    _assert_error(_get(api, "/api/packages/gcs/_ray_pkg_0123456789abcdef.zip"), 404, "not_found")  # nothing stored
    # a bad local path is named, nothing submitted
    with pytest.raises(Exception) as e:
        client.submit({**spec, "runtime_env": {"working_dir": str(tmp_path / "nope")}})
    assert getattr(e.value, "field", None) == "runtime_env.working_dir"


# ============================================================================ fuzzing
@pytest.fixture(scope="module")
def api_schema(api):
    import schemathesis

    raw = _get(api, "/openapi.json").json()
    schema = schemathesis.openapi.from_dict(raw)
    schema.config.update(base_url=api.url, headers={"Authorization": f"Bearer {api.token}"},
                         request_timeout=HTTP_TIMEOUT_S)
    return schema


FUZZ_EXAMPLES = 25  # per operation and generation mode (positive, negative): ~400 requests in all


@pytest.mark.timeout(150)
def test_fuzz_every_operation(api, api_schema):
    """Schemathesis-generated requests (valid and invalid) for every operation: no 500s, and every
    status code, content type and body is the documented one. Driven through hypothesis directly
    (schemathesis' pytest plugin does not support pytest 9's node ids)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                                   response_headers_conformance, response_schema_conformance,
                                                   status_code_conformance)

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
              response_schema_conformance, negative_data_rejection]
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 12
    by_label = {op.label: op for op in operations}

    # 1) real objects, so the success schemas (201 Job, transitions, metrics, checkpoints) are checked too
    auth = {"Authorization": f"Bearer {api.token}"}
    created = by_label["POST /jobs"].Case(body=counter_spec("fuzz-real", steps=10)).call_and_validate(
        headers=auth, checks=checks, timeout=HTTP_TIMEOUT_S)
    assert created.status_code == 201, created.text
    jid = created.json()["id"]
    wait_for(lambda: _state(api, jid) == "SUCCEEDED", 60, "the job to finish")
    node_id = _get(api, "/nodes").json()["nodes"][0]["id"]
    made = by_label["POST /schedules"].Case(body={**counter_spec("fuzz-sched"), "schedule": "0 2 1 1 *"}).call_and_validate(
        headers=auth, checks=checks, timeout=HTTP_TIMEOUT_S)
    assert made.status_code == 201, made.text
    sid = made.json()["id"]
    tok = by_label["POST /tokens"].Case(body={"name": "fuzz", "tenant": "team-f", "role": "viewer"}).call_and_validate(
        headers=auth, checks=checks, timeout=HTTP_TIMEOUT_S)
    assert tok.status_code == 201 and tok.json()["token"], tok.text
    for label, op in sorted(by_label.items(), key=lambda kv: kv[0].startswith("DELETE")):
        params = {k: v for k, v in (("job_id", jid), ("node_id", node_id), ("schedule_id", sid),
                                    ("token_id", tok.json()["id"])) if "{" + k + "}" in op.path}
        if op.method.upper() in ("POST", "PUT") or "/api/packages/" in op.path:  # (packages: generated below)
            continue
        query = {"state": ["SUCCEEDED", "RUNNING"], "limit": 2} if label == "GET /jobs" else None
        r = op.Case(path_parameters=params, query=query).call_and_validate(headers=auth, checks=checks,
                                                                           timeout=HTTP_TIMEOUT_S)
        elastic_only = ("GET /rentals", "GET /cost", "GET /events")
        want = 409 if label == "DELETE /jobs/{job_id}" or label in elastic_only else 200  # (not an elastic cluster)
        if label == "GET /jobs/{job_id}/trials":
            want = 422  # (the job is not a sweep: documented)
        assert r.status_code == want, (label, r.text)

    # 2) generated requests, valid and invalid by the schema
    calls: dict[str, int] = {}
    codes: dict[int, int] = {}
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case):
                if isinstance(case.body, dict):
                    case.body.pop("runtime_env", None)  # a random runtime_env makes Ray try to build it
                    batch = case.body.get("jobs")
                    for item in batch if isinstance(batch, list) else []:
                        if isinstance(item, dict) and isinstance(item.get("spec"), dict):
                            item["spec"].pop("runtime_env", None)
                response = case.call_and_validate(headers=auth, checks=checks, timeout=HTTP_TIMEOUT_S)
                calls[op.label] = calls.get(op.label, 0) + 1
                codes[response.status_code] = codes.get(response.status_code, 0) + 1

            try:
                run()
            except Unsatisfiable:  # no invalid input exists for an operation without parameters
                assert mode == GenerationMode.NEGATIVE, op.label
    assert len(calls) == len(operations), calls
    print(f"fuzzing: {sum(calls.values())} requests, status codes {sorted(codes.items())}")
    assert codes.get(200) and codes.get(422) and 500 not in codes, codes


# ============================================================================ coordinator restart
@pytest.mark.timeout(150)
def test_api_answers_while_the_coordinator_restarts(api):
    import ray

    jid = _post_job(api, counter_spec("before-kill", steps=3)).json()["id"]
    coord = ray.get_actor("coordinator", namespace="raycluster")
    pid_before = ray.get(coord.ping.remote(), timeout=30)["pid"]
    ray.kill(coord, no_restart=False)

    key = f"during-restart-{uuid.uuid4().hex}"
    seen: dict[int, int] = {}
    submitted = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        answers = [_get(api, "/cluster/status"), _get(api, f"/jobs/{jid}"), _get(api, "/jobs", params={"limit": 5})]
        if submitted is None:
            r = _post_job(api, counter_spec("during-restart", steps=3), key)
            answers.append(r)
            if r.status_code == 201:
                submitted = r.json()["id"]
        for r in answers:
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            assert r.status_code in (200, 201, 503), (r.status_code, r.text)
            if r.status_code == 503:
                _assert_error(r, 503, "unavailable")
                assert r.json()["error"]["retryable"] is True and int(r.headers["Retry-After"]) > 0
        if submitted and coordinator_restarted(coord, pid_before) and answers[0].status_code == 200:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"the API did not recover within 90 s (statuses seen: {seen})")
    print(f"statuses while the Coordinator restarted: {seen}")
    # recovered: fresh answers, and the retried submit created exactly one job
    wait_for(lambda: _get(api, "/cluster/status").status_code == 200, 30, "GET /cluster/status 200")
    assert _post_job(api, counter_spec("during-restart", steps=3), key).json()["id"] == submitted
    jobs = _get(api, "/jobs", params={"limit": 1000}).json()["jobs"]
    assert [j["id"] for j in jobs if j["idempotency_key"] == key] == [submitted]
    wait_for(lambda: _state(api, submitted) == "SUCCEEDED", 60, "the job submitted during the restart to finish")

    # killed for good: 503 + Retry-After (never 500, never a hang) until the runtime is started again
    from raycluster.control.actors import start_runtime

    ray.kill(coord, no_restart=True)
    (r,) = wait_for(lambda: (lambda r: (r,) if r.status_code == 503 else None)(_get(api, f"/jobs/{jid}")), 30,
                    "503 from a dead Coordinator")  # a tuple: a 503 Response itself is falsy
    err = _assert_error(r, 503, "unavailable")
    assert err["retryable"] is True and int(r.headers["Retry-After"]) > 0
    _assert_error(_post_job(api, counter_spec("while-dead", steps=3), f"dead-{uuid.uuid4().hex}"), 503, "unavailable")
    start_runtime(api.state_dir)
    wait_for(lambda: _get(api, f"/jobs/{jid}").status_code == 200, 60, "the API to find the new Coordinator")
    assert _get(api, "/cluster/status").json()["runtime"]["coordinator"]["ok"]


def _listener_pid(port: int) -> int | None:
    """PID of the process listening on 127.0.0.1/0.0.0.0:``port`` (among this user's processes)."""
    import psutil

    for proc in psutil.process_iter():
        with suppress(psutil.Error, OSError):
            for c in proc.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN and c.laddr.port == port:
                    return proc.pid
    return None


def _cmdline(pid: int) -> str:
    import psutil

    return " ".join(psutil.Process(pid).cmdline())


def test_api_port_is_served_by_the_replica_itself_and_redeploy_is_idempotent(api):
    """Direct ingress: the API replica (not Serve's proxy) owns the advertised port, so a request
    crosses one process; deploying again keeps the same URL and answers throughout."""
    from raycluster.api.deploy import deploy_api

    port = int(api.url.rsplit(":", 1)[1])
    pid = _listener_pid(port)
    assert pid is not None and _cmdline(pid).startswith("ray::ServeReplica:raycluster-api"), \
        (pid, pid and _cmdline(pid))
    again = deploy_api(api.state_dir, port=port, actor_timeout_s=ACTOR_TIMEOUT_S)
    assert again["url"] == api.url and again["direct_ingress"] is True
    assert _listener_pid(port) == pid  # same settings: the replica was not replaced
    assert _get(api, "/cluster/status").status_code == 200


def test_deploy_refuses_a_port_another_program_holds(api):
    """A taken port is a clear, non-retryable error naming the field — before anything is changed:
    the running API keeps answering on its own port."""
    from raycluster.api.deploy import deploy_api
    from raycluster.errors import ApiDeployError

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        with pytest.raises(ApiDeployError) as exc:
            deploy_api(api.state_dir, port=taken, actor_timeout_s=ACTOR_TIMEOUT_S)
    assert exc.value.field == "api_port" and not exc.value.retryable
    assert f":{taken}" in exc.value.message and "another program" in exc.value.message
    # a free port, but Serve's port is fixed while it runs: a clear error, not a minute-long hang
    with pytest.raises(ApiDeployError, match="already deployed on this cluster") as exc:
        deploy_api(api.state_dir, port=free_port("127.0.0.1"), actor_timeout_s=ACTOR_TIMEOUT_S)
    assert exc.value.field == "api_port"
    assert _get(api, "/cluster/status").status_code == 200


def test_api_comes_back_on_the_same_port_after_its_replica_dies(api):
    """SIGKILL the replica that owns the port: Serve starts a new one, which gets the same port
    (no port quarantine), and jobs submitted before are all still there."""
    import signal

    jid = _post_job(api, counter_spec("before-replica-kill", steps=2), f"rk-{uuid.uuid4().hex}").json()["id"]
    port = int(api.url.rsplit(":", 1)[1])
    old = _listener_pid(port)
    assert old is not None and _cmdline(old).startswith("ray::ServeReplica:raycluster-api")
    os.kill(old, signal.SIGKILL)  # a process of the cluster this module started, found by its socket

    def answering_from_a_new_replica():
        pid = _listener_pid(port)
        if pid is None or pid == old:
            return None
        with suppress(requests.RequestException):
            return _get(api, f"/jobs/{jid}").status_code == 200
        return None

    wait_for(answering_from_a_new_replica, 90, "a new API replica answering on the same port")
    assert _cmdline(_listener_pid(port)).startswith("ray::ServeReplica:raycluster-api")


@pytest.mark.timeout(60)
def test_schedule_round_trip_through_the_http_client(api):
    from raycluster.client.http_client import HttpClient

    c = HttpClient(api.url, api.token)
    s = c.create_schedule({**counter_spec("nightly"), "schedule": "0 2 * * *", "concurrency_policy": "Replace"})
    assert s["cron"] == "0 2 * * *" and s["concurrency_policy"] == "Replace" and s["next_run_at"] % 86400 == 7200
    assert "schedule" not in s["spec"] and s["runs"] == 0
    assert s["id"] in [x["id"] for x in c.list_schedules()]
    assert c.pause_schedule(s["id"])["paused"] is True
    assert c.resume_schedule(s["id"])["paused"] is False
    assert c.get_schedule(s["id"])["run_jobs"] == []
    assert c.delete_schedule(s["id"])["deleted"] is True
    assert s["id"] not in [x["id"] for x in c.list_schedules()]


# ============================================================================ who may do what (tokens, roles)
ZIP_NAME = "_ray_pkg_0123456789abcdef.zip"
ROOT = Path(__file__).resolve().parents[2]


def _as(api, token, method, path, **kw):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, api.url + path, headers=headers, timeout=HTTP_TIMEOUT_S, **kw)


@pytest.mark.timeout(150)
def test_who_may_do_what_on_every_route_and_nothing_changes_on_a_refusal(api, tmp_path):
    """Every route × {admin (the operator's token), member of the owning tenant, member of another,
    viewer, no token, a revoked token} → 2xx (or the route's own 4xx past auth) / 401 / 403; each
    refusal leaves the job, schedule, tokens and budget as they were."""
    import subprocess
    import sys

    def make(name, tenant, role):
        r = _as(api, api.token, "POST", "/tokens", json={"name": name, "tenant": tenant, "role": role})
        assert r.status_code == 201, r.text
        return r.json()

    alice, bob, vera, gone = (make("alice", "team-a", "member"), make("bob", "team-b", "member"),
                              make("vera", "team-a", "viewer"), make("gone", "team-a", "member"))
    assert _as(api, api.token, "DELETE", f"/tokens/{gone['id']}").json()["revoked"] is True
    _assert_error(_as(api, api.token, "POST", "/tokens", json={"name": "x", "role": "member"}), 422, field="tenant")
    listed = _as(api, api.token, "GET", "/tokens").json()["tokens"]
    assert {t["name"] for t in listed} >= {"alice", "bob", "vera"} and "gone" not in {t["name"] for t in listed}
    assert not any("token" in t and t["token"] for t in listed) and alice["token"] not in json.dumps(listed)

    # alice submits for her tenant (the body names none: the token's tenant is used); a schedule too
    r = _as(api, alice["token"], "POST", "/jobs", json=counter_spec("acl-a", steps=5000, sleep=0.05))
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["tenant"] == "team-a" and job["reason"] == "submitted by alice@team-a"
    assert _get(api, f"/jobs/{job['id']}").json()["transitions"][0]["reason"] == "submitted by alice@team-a"
    sched = _as(api, alice["token"], "POST", "/schedules",
                json={**counter_spec("acl-cron"), "schedule": "0 3 1 1 *"}).json()
    assert sched["tenant"] == "team-a", sched

    op, a, b, v, none, rev = api.token, alice["token"], bob["token"], vera["token"], None, gone["token"]
    J, S, N = f"/jobs/{job['id']}", f"/schedules/{sched['id']}", "/nodes/" + "0" * 56
    spec_a = {**counter_spec("acl-new"), "tenant": "team-a"}
    # (method, path, kwargs, {who: expected status}); 401 for no token and a revoked one everywhere
    table = [
        ("GET", J, {}, {op: 200, a: 200, b: 403, v: 200}),
        ("GET", J + "/logs", {}, {op: 200, a: 200, b: 403, v: 200}),
        ("GET", J + "/metrics", {}, {op: 200, a: 200, b: 403, v: 200}),
        ("GET", J + "/checkpoints", {}, {op: 200, a: 200, b: 403, v: 200}),
        ("GET", J + "/trials", {}, {op: 422, a: 422, b: 403, v: 422}),  # (422: not a sweep — past auth)
        ("DELETE", J, {}, {b: 403, v: 403}),
        ("GET", "/jobs?tenant=team-a", {}, {op: 200, a: 200, b: 403, v: 200}),
        ("POST", "/jobs", {"json": spec_a}, {b: 403, v: 403}),
        ("POST", "/jobs/batch", {"json": {"jobs": [{"spec": spec_a}]}}, {b: 403, v: 403}),
        ("POST", "/schedules", {"json": {**spec_a, "schedule": "0 3 1 1 *"}}, {b: 403, v: 403}),
        ("GET", S, {}, {op: 200, a: 200, b: 403, v: 200}),
        ("POST", S + "/pause", {}, {b: 403, v: 403}),
        ("DELETE", S, {}, {b: 403, v: 403}),
        ("PUT", "/budget", {"json": {"max_hourly_budget_usd": 1.0}}, {a: 403, b: 403, v: 403}),
        ("POST", N + "/drain", {}, {op: 404, a: 403, v: 403}),
        ("POST", N + "/undrain", {}, {op: 404, a: 403, v: 403}),
        ("POST", "/rentals/rent-x/preempt", {}, {a: 403, v: 403}),
        ("POST", "/tokens", {"json": {"name": "eve", "tenant": "team-a", "role": "admin"}}, {a: 403, v: 403}),
        ("GET", "/tokens", {}, {op: 200, a: 403, v: 403}),
        ("POST", f"/tokens/{alice['id']}/rotate", {}, {a: 403, b: 403, v: 403}),
        ("DELETE", f"/tokens/{alice['id']}", {}, {a: 403, b: 403, v: 403}),
        ("GET", "/audit", {}, {op: 200, a: 403, v: 403}),
        ("PUT", f"/api/packages/gcs/{ZIP_NAME}", {"data": b"not a zip"}, {op: 422, a: 422, v: 403}),
        ("GET", f"/api/packages/gcs/{ZIP_NAME}", {}, {op: 404, a: 404, v: 404}),
        *[("GET", p, {}, {op: 200, a: 200, b: 200, v: 200})
          for p in ("/cluster/status", "/nodes", "/health/nodes", "/tenants", "/schedules", "/jobs")],
        # the shared cluster's books: every role reads them, answered as the operator's (409: not elastic)
        *[("GET", p, {}, dict.fromkeys((op, a, b, v), _as(api, op, "GET", p).status_code))
          for p in ("/rentals", "/cost", "/events", N)],
    ]
    names = {op: "admin", a: "member", b: "other member", v: "viewer", none: "no token", rev: "revoked"}
    checked = 0
    for method, path, kw, want in table:
        for who, status in {**want, none: 401, rev: 401}.items():
            r = _as(api, who, method, path, **kw)
            assert r.status_code == status, (method, path, names[who], r.status_code, r.text)
            for t in (op, a, b, v, rev):
                assert t not in r.text  # a token is never in an answer (but the one that makes it)
            if status == 403:
                err = _assert_error(r, 403, "forbidden")
                assert "role" in err["message"] or "tenant" in err["message"], err
            checked += 1
    assert checked >= 6 * len(table) - len(table)
    # a member naming another tenant is refused naming the field; nothing was created or changed
    err = _assert_error(_as(api, b, "POST", "/jobs", json=spec_a), 403, "forbidden", field="tenant")
    assert "team-b" in err["message"] and "team-a" in err["message"]
    _assert_error(_as(api, b, "POST", "/jobs/batch", json={"jobs": [{"spec": spec_a}]}), 403, field="jobs[0].spec.tenant")
    mine = _get(api, "/jobs", params={"tenant": "team-a"}).json()["jobs"]
    assert [j["name"] for j in mine if j["name"] == "acl-new"] == [] and _state(api, job["id"]) != "CANCELLED"
    s_now = _get(api, S).json()
    assert s_now["paused"] is False and s_now.get("deleted") is not True
    assert alice["id"] in [t["id"] for t in _as(api, op, "GET", "/tokens").json()["tokens"]]
    assert _as(api, a, "GET", J).status_code == 200  # (rotate/revoke by others did nothing)
    # listings show the caller's tenant only
    seen_b = {j["id"] for j in _as(api, b, "GET", "/jobs").json()["jobs"]}
    assert job["id"] not in seen_b and all(j["tenant"] == "team-a" for j in _as(api, v, "GET", "/jobs").json()["jobs"])
    assert sched["id"] not in [s["id"] for s in _as(api, b, "GET", "/schedules").json()["schedules"]]
    # bob's own submit (no tenant named) runs as team-b
    rb = _as(api, b, "POST", "/jobs", json=counter_spec("acl-b", steps=3))
    assert rb.status_code == 201 and rb.json()["tenant"] == "team-b", rb.text

    # the CLI with a member token: its tenant's jobs only; another tenant's cancel → exit 6, untouched
    tok_file = tmp_path / "bob.token"
    tok_file.write_text(b + "\n")
    base = [sys.executable, "-m", "raycluster.cli", "--address", api.url, "--token-file", str(tok_file)]
    out = subprocess.run([*base, "--json", "jobs"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0 and job["id"] not in out.stdout and rb.json()["id"] in out.stdout, out.stderr
    out = subprocess.run([*base, "cancel", job["id"]], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 6 and "team-a" in out.stderr, (out.returncode, out.stdout, out.stderr)
    assert _state(api, job["id"]) != "CANCELLED"

    # the owner cancels; the audit trail and the job's transitions say who
    r = _as(api, a, "DELETE", J)
    assert r.status_code == 200 and r.json()["reason"] == "cancelled by alice@team-a", r.text
    trail = _as(api, op, "GET", "/audit", params={"limit": 1000}).json()["entries"]
    done = {(e["who"], e["action"], e["target"]) for e in trail}
    mine = sorted(x for x in done if x[0] == "alice@team-a")
    assert ("alice@team-a", "POST /jobs", job["id"]) in done, mine
    assert ("alice@team-a", "DELETE /jobs/{job_id}", job["id"]) in done, mine
    assert ("operator", "DELETE /tokens/{token_id}", gone["id"]) in done
    assert not any(e["status"] == 403 for e in trail)  # refusals changed nothing, so they are not state changes
    assert a not in json.dumps(trail) and a.encode() not in (api.state_dir / "jobs.db").read_bytes()

    # rotation takes effect at once (at most the replica's one-second cache)
    new = _as(api, op, "POST", f"/tokens/{alice['id']}/rotate").json()
    assert new["token"] != a
    wait_for(lambda: _as(api, a, "GET", "/jobs").status_code == 401, 2, "the old token refused after rotation",
             poll_s=0.1)
    assert _as(api, new["token"], "GET", "/jobs").status_code == 200
    # the admin's CLI: a token saved to a file (0600, not printed), listed without secrets, the audit
    op_file = tmp_path / "op.token"
    op_file.write_text(op + "\n")
    adm = [sys.executable, "-m", "raycluster.cli", "--address", api.url, "--token-file", str(op_file)]
    carol_file = tmp_path / "carol.token"
    out = subprocess.run([*adm, "tokens", "create", "carol", "--tenant", "team-a", "--role", "viewer",
                          "--save", str(carol_file)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    carol = carol_file.read_text().strip()
    assert out.returncode == 0 and str(carol_file) in out.stdout and carol not in out.stdout, out.stderr
    assert carol_file.stat().st_mode & 0o777 == 0o600
    assert _as(api, carol, "GET", J).status_code == 200 and _as(api, carol, "DELETE", J).status_code == 403
    out = subprocess.run([*adm, "--json", "tokens", "list"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0 and "carol" in out.stdout and carol not in out.stdout, out.stderr
    out = subprocess.run([*adm, "audit", "--tenant", "team-a"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0 and "alice@team-a" in out.stdout and "DELETE /jobs/{job_id}" in out.stdout, out.stderr
    out = subprocess.run([*base, "tokens", "list"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 6 and "admin" in out.stderr, (out.stdout, out.stderr)  # bob is no admin
    carol_id = next(t["id"] for t in _as(api, op, "GET", "/tokens").json()["tokens"] if t["name"] == "carol")
    for t in (alice["id"], bob["id"], vera["id"], carol_id):
        _as(api, op, "DELETE", f"/tokens/{t}")
    _as(api, op, "DELETE", S)
