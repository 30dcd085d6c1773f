"""HttpClient against a tiny local HTTP server with canned answers in the API's error shape (no Ray):
error mapping, retry on 503 with the same Idempotency-Key, token header, paging, CLI selection."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from raycluster import cli, errors
from raycluster.errors import (BodyTooLarge, ClusterUnavailable, EntrypointImportError, IllegalTransition, InfeasibleJob,
                               Forbidden, InvalidJobSpec, JobNotFound, RayClusterError, Unauthorized)
from raycluster.api.token import resolve_token
from raycluster.client.http_client import HttpClient

TOKEN = "s3cret-token"
SPEC = {"name": "j", "entrypoint": "jobs.toy:noop"}


def job(jid="job-1", state="PENDING", **kw):
    return {"id": jid, "name": "j", "state": state, "priority": 50, "attempt": 0, "spec": SPEC,
            "last_metrics": {}, "submitted_at": 0.0, **kw}


def err(code, message, field=None, retryable=False):
    e = {"code": code, "message": message, "retryable": retryable}
    if field:
        e["field"] = field
    return {"error": e}


class Server:
    """Answers (METHOD, path) from a script of (status, body, headers); the last answer repeats."""

    def __init__(self):
        self.script: dict[tuple[str, str], list] = {}
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _handle(self):
                url = urlsplit(self.path)
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                outer.requests.append({"method": self.command, "path": url.path, "query": parse_qs(url.query),
                                       "headers": dict(self.headers), "body": json.loads(body) if body else None})
                answers = outer.script.get((self.command, url.path))
                if not answers:
                    status, payload, headers = 404, err("not_found", "no such route"), {}
                else:
                    status, payload, headers = answers.pop(0) if len(answers) > 1 else answers[0]
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def on(self, method, path, *answers):
        self.script[(method, path)] = [a if len(a) == 3 else (*a, {}) for a in answers]

    def calls(self, method, path):
        return [r for r in self.requests if r["method"] == method and r["path"] == path]


@pytest.fixture
def server():
    s = Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def client(server):
    return HttpClient(server.url, TOKEN, retries=3, backoff_s=0.01, max_backoff_s=0.05)


def test_token_header_sent_and_answers_unwrapped(server, client):
    server.on("GET", "/jobs/job-1", (200, job()))
    server.on("GET", "/jobs/job-1/logs", (200, {"job_id": "job-1", "logs": [{"attempt": 1, "rank": 0, "lines": ["a"]}]}))
    server.on("GET", "/jobs/job-1/metrics", (200, {"job_id": "job-1", "metrics": [{"attempt": 1, "ts": 1.0, "step": 3}]}))
    server.on("GET", "/jobs/job-1/checkpoints", (200, {"job_id": "job-1", "checkpoints": [{"step": 5, "state": "COMPLETE"}]}))
    server.on("GET", "/cluster/status", (200, {"nodes": 3, "gpus": {"total": 3.0, "allocated": 1.0, "free": 2.0,
                                                                   "utilization": 0.33},
                                               "cpus": {"total": 6.0, "allocated": 0.0, "free": 6.0, "utilization": 0},
                                               "jobs_by_state": {"PENDING": 1}, "queue_depth_by_priority": {"50": 1},
                                               "runtime": {"coordinator": {"ok": True, "uptime_s": 9.0}}}))
    assert client.get("job-1")["state"] == "PENDING"
    assert client.logs("job-1", tail_lines=7) == [{"attempt": 1, "rank": 0, "lines": ["a"]}]
    assert client.metrics("job-1", limit=5)[0]["step"] == 3
    assert client.checkpoints("job-1")[0]["step"] == 5
    st = client.cluster_status()
    assert (st["gpus_total"], st["gpus_free"], st["cpus_total"], st["coordinator_uptime_s"]) == (3.0, 2.0, 6.0, 9.0)
    assert all(r["headers"]["Authorization"] == f"Bearer {TOKEN}" for r in server.requests)
    assert server.calls("GET", "/jobs/job-1/logs")[0]["query"] == {"tail": ["7"]}
    assert server.calls("GET", "/jobs/job-1/metrics")[0]["query"] == {"limit": ["5"]}
    assert TOKEN not in repr(client)


@pytest.mark.parametrize("status,body,exc_type,field", [
    (401, err("unauthorized", "missing or invalid bearer token"), Unauthorized, None),
    (403, "Forbidden", Forbidden, None),
    (403, err("forbidden", "member tokens may not change the cluster's budget", "body"), Forbidden, "body"),
    (404, err("not_found", "job job-x not found"), JobNotFound, None),
    (409, err("illegal_transition", "job job-x is already SUCCEEDED; nothing to cancel"), IllegalTransition, None),
    (413, err("payload_too_large", "request body is larger than 1048576 bytes"), BodyTooLarge, None),
    (422, err("invalid_request", "limit: must be <= 1000", "limit"), InvalidJobSpec, "limit"),
    (418, err("teapot", "short and stout"), RayClusterError, None),
    (422, err("invalid_spec", "invalid job spec: priority: too big", "priority"), InvalidJobSpec, "priority"),
    (422, err("entrypoint_not_importable", "cannot import", "entrypoint"), EntrypointImportError, "entrypoint"),
    (422, err("infeasible", "can never be placed", "num_workers"), InfeasibleJob, "num_workers"),
    (503, err("unavailable", "the coordinator is restarting", retryable=True), ClusterUnavailable, None),
    (500, err("internal", "internal server error"), RayClusterError, None),
    (502, "<html>bad gateway</html>", ClusterUnavailable, None),
])
def test_error_mapping(server, client, status, body, exc_type, field):
    server.on("GET", "/jobs/job-x", (status, body))
    with pytest.raises(exc_type) as ei:
        client.get("job-x")
    assert type(ei.value) is exc_type
    assert ei.value.field == field
    if isinstance(body, dict) and status != 401:
        assert body["error"]["message"] in ei.value.message


def test_retries_503_then_succeeds_honouring_retry_after(server, client):
    server.on("GET", "/jobs/job-1", (503, err("unavailable", "restarting", retryable=True), {"Retry-After": "0"}),
              (503, err("unavailable", "restarting", retryable=True)), (200, job(state="RUNNING")))
    assert client.get("job-1")["state"] == "RUNNING"
    assert len(server.calls("GET", "/jobs/job-1")) == 3


def test_persistent_503_gives_cluster_unavailable_after_the_retries(server, client):
    server.on("GET", "/jobs", (503, err("unavailable", "the Coordinator is not reachable", retryable=True)))
    with pytest.raises(ClusterUnavailable, match="not reachable"):
        client.list()
    assert len(server.calls("GET", "/jobs")) == 1 + client.retries


def test_submit_sends_one_idempotency_key_across_retries(server, client):
    server.on("POST", "/jobs", (503, err("unavailable", "x", retryable=True)), (503, err("unavailable", "x")),
              (201, job()))
    assert client.submit(SPEC)["id"] == "job-1"
    posts = server.calls("POST", "/jobs")
    keys = {p["headers"]["Idempotency-Key"] for p in posts}
    assert len(posts) == 3 and len(keys) == 1 and keys.pop().startswith("http-")
    assert all(p["body"] == SPEC for p in posts)
    client.submit(SPEC, idempotency_key="mine-1")
    assert server.calls("POST", "/jobs")[-1]["headers"]["Idempotency-Key"] == "mine-1"
    # two submits without a key get two different keys
    client.submit(SPEC)
    assert server.calls("POST", "/jobs")[-1]["headers"]["Idempotency-Key"] not in {p["headers"]["Idempotency-Key"]
                                                                                   for p in posts}


def test_submit_validates_locally_first(server, client):
    with pytest.raises(InvalidJobSpec) as ei:
        client.submit({"name": "j", "entrypoint": "jobs.toy:noop", "priority": 5000})
    assert ei.value.field == "priority" and not server.requests


def test_connection_refused_is_cluster_unavailable():
    from raycluster.util.ports import free_port

    port = free_port("127.0.0.1")  # a port nobody listens on
    c = HttpClient(f"http://127.0.0.1:{port}", TOKEN, retries=2, backoff_s=0.01, max_backoff_s=0.02)
    with pytest.raises(ClusterUnavailable, match="cannot reach"):
        c.get("job-1")


def test_list_pages_and_repeats_state(server, client):
    page1 = {"jobs": [job("job-1"), job("job-2")], "limit": 1000, "offset": 0, "next_offset": 2, "total": None}
    page2 = {"jobs": [job("job-3")], "limit": 1000, "offset": 2, "next_offset": None, "total": None}
    server.on("GET", "/jobs", (200, page1), (200, page2))
    out = client.list(states=["PENDING", "RUNNING"], tenant="t1")
    assert [j["id"] for j in out] == ["job-1", "job-2", "job-3"]
    q = server.calls("GET", "/jobs")
    assert q[0]["query"] == {"state": ["PENDING", "RUNNING"], "tenant": ["t1"], "limit": ["1000"], "offset": ["0"]}
    assert q[1]["query"]["offset"] == ["2"]
    server.on("GET", "/jobs", (200, {**page2, "limit": 1, "offset": 5}))
    client.list(limit=1, offset=5)
    assert server.calls("GET", "/jobs")[-1]["query"] == {"limit": ["1"], "offset": ["5"]}


def test_cancel_whose_answer_was_lost_returns_the_cancelled_job(server, client):
    server.on("DELETE", "/jobs/job-1", (503, err("unavailable", "timeout", retryable=True)),
              (409, err("illegal_transition", "job job-1 is already CANCELLED; nothing to cancel")))
    server.on("GET", "/jobs/job-1", (200, job(state="CANCELLED")))
    assert client.cancel("job-1")["state"] == "CANCELLED"
    # without a lost answer a 409 is the caller's error
    server.on("DELETE", "/jobs/job-2", (409, err("illegal_transition", "job job-2 is already SUCCEEDED")))
    with pytest.raises(IllegalTransition, match="already SUCCEEDED"):
        client.cancel("job-2")


def test_wait_polls_until_terminal(server, client):
    server.on("GET", "/jobs/job-1", (200, job(state="RUNNING")), (503, err("unavailable", "x")),
              (200, job(state="SUCCEEDED", result={"ok": 1})))
    seen = []
    final = client.wait(["job-1"], timeout_s=10, poll_s=0.01, on_poll=lambda js: seen.append(js[0]["state"]))
    assert final[0]["state"] == "SUCCEEDED" and seen[0] == "RUNNING" and seen[-1] == "SUCCEEDED"


def test_resolve_token_order(tmp_path, monkeypatch):
    (tmp_path / "api_token").write_text("from-state-dir\n")
    tf = tmp_path / "tok"
    tf.write_text("from-file\n")
    monkeypatch.setenv("RAYCLUSTER_API_TOKEN", "from-env")
    assert resolve_token(tf, tmp_path) == "from-file"
    assert resolve_token(None, tmp_path) == "from-env"
    monkeypatch.delenv("RAYCLUSTER_API_TOKEN")
    assert resolve_token(None, tmp_path) == "from-state-dir"
    assert resolve_token(None, tmp_path / "nowhere") is None
    with pytest.raises(OSError):
        resolve_token(tmp_path / "missing", tmp_path)


def test_cli_http_address_uses_the_api(server, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAYCLUSTER_API_TOKEN", raising=False)
    (tmp_path / "api_token").write_text(TOKEN + "\n")
    server.on("GET", "/jobs", (200, {"jobs": [job(state="RUNNING")], "limit": 1000, "offset": 0, "next_offset": None}))
    server.on("GET", "/jobs/job-1/logs", (200, {"job_id": "job-1", "logs": [{"attempt": 1, "rank": 1, "lines": ["hi"]}]}))
    base = ["--state-dir", str(tmp_path), "--address", server.url]
    assert cli.main([*base, "--json", "jobs"]) == errors.EXIT_OK
    assert json.loads(capsys.readouterr().out)[0]["id"] == "job-1"
    assert server.requests[-1]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert cli.main([*base, "logs", "job-1", "--tail", "3"]) == errors.EXIT_OK
    assert capsys.readouterr().out.splitlines() == ["==> attempt 1 rank 1 <==", "hi"]
    assert server.requests[-1]["query"] == {"tail": ["3"]}
    server.on("GET", "/jobs", (401, err("unauthorized", "missing or invalid bearer token")))
    assert cli.main([*base, "--token-file", str(tmp_path / "api_token"), "jobs"]) == errors.EXIT_UNAUTHORIZED
    assert "refused the token" in capsys.readouterr().err
    assert cli.main([*base, "--token-file", str(tmp_path / "missing"), "jobs"]) == errors.EXIT_INVALID


def test_cli_budget_set_goes_through_the_api_and_a_refusal_exits_2(server, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAYCLUSTER_API_TOKEN", raising=False)
    (tmp_path / "api_token").write_text(TOKEN + "\n")
    cost = {"max_hourly_budget_usd": 1.5, "committed_usd_per_hour": 0.16}
    server.on("PUT", "/budget", (200, cost))
    base = ["--state-dir", str(tmp_path), "--address", server.url]
    assert cli.main([*base, "budget", "--set", "1.5"]) == errors.EXIT_OK
    assert server.requests[-1]["body"] == {"max_hourly_budget_usd": 1.5}
    assert "budget 1.50 USD/h" in capsys.readouterr().out
    assert cli.main([*base, "budget", "--clear"]) == errors.EXIT_OK
    assert server.requests[-1]["body"] == {"max_hourly_budget_usd": None}
    server.on("PUT", "/budget", (422, err("invalid_request", "max_hourly_budget_usd must be a number >= 0",
                                         "max_hourly_budget_usd")))
    assert cli.main([*base, "budget", "--set", "-1"]) == errors.EXIT_INVALID
    assert "must be a number >= 0" in capsys.readouterr().err


def test_http_client_and_cli_never_import_ray():
    """An HTTP-only user (a laptop with no Ray cluster) must not pay for, or need, Ray."""
    import subprocess
    import sys

    code = ("import sys; import raycluster.client.http_client, raycluster.cli.main, raycluster.api.token; "
            "from raycluster.cli import format; "
            "sys.exit(1 if any(m == 'ray' or m.startswith('ray.') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_follow_jobs_rides_out_unavailability_then_gives_up():
    from raycluster.client.base import follow_jobs

    answers = iter([ClusterUnavailable("restarting"), {"id": "j", "state": "RUNNING"},
                    ClusterUnavailable("restarting"), {"id": "j", "state": "SUCCEEDED"}])

    def get(_jid):
        a = next(answers)
        if isinstance(a, Exception):
            raise a
        return a

    seen, down = [], []
    out = follow_jobs(get, ["j"], poll_s=0.01, on_poll=seen.append, on_unavailable=down.append)
    assert out[0]["state"] == "SUCCEEDED" and [j[0]["state"] for j in seen] == ["RUNNING", "SUCCEEDED"]
    assert len(down) == 2

    def never(_jid):
        raise ClusterUnavailable("gone")

    with pytest.raises(ClusterUnavailable):
        follow_jobs(never, ["j"], poll_s=0.01, unavailable_grace_s=0.05)


def test_status_of_a_waiting_job_says_why():
    from raycluster.cli.format import job_details

    j = job(state="PENDING")
    j.update(waiting="capacity reserved for job-big", cause="submitted",
             transitions=[{"from": None, "to": "PENDING", "ts": 0.0, "reason": "submitted", "cause": "submitted"}])
    text = job_details(j)
    assert "waiting: capacity reserved for job-big" in text and "[submitted]" in text


def test_status_of_a_job_being_moved_says_why_and_what_it_waits_for():
    from raycluster.cli.format import job_details

    j = job(state="RUNNING")
    j.update(moving={"cause": "node_drained", "reason": "moved off node n1 drained (maintenance)", "since": 0.0,
                     "before_step": 40}, transitions=[])
    text = job_details(j)
    assert "moving (node_drained): moved off node n1 drained (maintenance)" in text
    assert "newer than step 40" in text
    j.update(state="RECOVERING")  # a move ends with its transition: nothing shown as moving
    assert "moving" not in job_details(j)


def test_cli_talks_to_the_recorded_api_without_ray_and_falls_back_when_it_is_gone(server, tmp_path, monkeypatch,
                                                                                   capsys):
    """`raycluster up` records its API (api.json): later commands use it — no Ray driver — while it
    answers; a stale record (the API gone) costs one refused probe, then the Ray path as before."""
    import subprocess
    import sys

    from raycluster.api.record import read_record, remove_record, write_record
    from raycluster.cli.connect import recorded_api

    monkeypatch.delenv("RAYCLUSTER_API_TOKEN", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "api_token").write_text(TOKEN + "\n")
    server.on("GET", "/healthz", (200, {"status": "ok"}))
    server.on("GET", "/jobs", (200, {"jobs": [job(state="RUNNING")], "limit": 1000, "offset": 0, "next_offset": None}))
    server.on("GET", "/rentals", (409, err("not_elastic", "the cluster rents no nodes")))
    assert recorded_api(tmp_path) is None  # nothing recorded
    write_record(tmp_path, server.url, True)
    assert read_record(tmp_path)["url"] == server.url and recorded_api(tmp_path) == server.url
    assert cli.main(["--state-dir", str(tmp_path), "--json", "jobs"]) == errors.EXIT_OK
    assert json.loads(capsys.readouterr().out)[0]["id"] == "job-1"
    assert server.requests[-1]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    from raycluster.client.http_client import HttpClient

    assert HttpClient(server.url, TOKEN).rentals() == []  # a fixed cluster rents nothing (as over Ray)
    # a whole CLI process on the recorded API imports no Ray at all
    code = ("import sys; from raycluster import cli; rc = cli.main(['--state-dir', sys.argv[1], '--json', 'jobs']); "
            "sys.exit(rc if rc else (3 if any(m == 'ray' or m.startswith('ray.') for m in sys.modules) else 0))")
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True).returncode == 0
    # a command that needs Ray itself refuses an HTTP address clearly
    assert cli.main(["--state-dir", str(tmp_path), "--address", server.url, "metrics"]) == errors.EXIT_INVALID
    assert "needs a Ray connection" in capsys.readouterr().err
    # the API gone (its port closed), the record stale: not used
    write_record(tmp_path, "http://127.0.0.1:1", True)
    assert recorded_api(tmp_path) is None
    remove_record(tmp_path)
    assert read_record(tmp_path) is None


def test_cancel_takes_several_ids_or_all_of_a_state_and_reports_each(server, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAYCLUSTER_API_TOKEN", raising=False)
    (tmp_path / "api_token").write_text(TOKEN + "\n")
    base = ["--state-dir", str(tmp_path), "--address", server.url]
    server.on("DELETE", "/jobs/job-1", (200, job(id="job-1", state="CANCELLED")))
    server.on("DELETE", "/jobs/job-2", (409, err("illegal_transition", "job job-2 is already SUCCEEDED")))
    server.on("DELETE", "/jobs/job-3", (200, job(id="job-3", state="CANCELLED")))
    assert cli.main([*base, "cancel", "job-1", "job-2", "job-3", "job-1"]) == errors.EXIT_ILLEGAL
    out = capsys.readouterr()
    assert out.out.splitlines() == ["job-1 CANCELLED", "job-3 CANCELLED"]  # each once, the others go on
    assert "job-2: job job-2 is already SUCCEEDED" in out.err
    assert len(server.calls("DELETE", "/jobs/job-1")) == 1
    # --all of a state: what the list says, each cancelled
    server.on("GET", "/jobs", (200, {"jobs": [job(id="job-1", state="PENDING"), job(id="job-3", state="PENDING")],
                                     "limit": 1000, "offset": 0, "next_offset": None}))
    assert cli.main([*base, "--json", "cancel", "--all", "--state", "PENDING"]) == errors.EXIT_OK
    assert [j["id"] for j in json.loads(capsys.readouterr().out)] == ["job-1", "job-3"]
    assert server.calls("GET", "/jobs")[-1]["query"]["state"] == ["PENDING"]
    # refused before anything is cancelled: no ids, --all without a filter, ids and --all, a filter without --all
    n = len(server.requests)
    for argv in (["cancel"], ["cancel", "--all"], ["cancel", "job-1", "--all", "--state", "PENDING"],
                 ["cancel", "job-1", "--tenant", "team-a"]):
        assert cli.main([*base, *argv]) == errors.EXIT_INVALID, argv
    assert len(server.requests) == n


def test_progress_lines_only_when_something_changed(capsys, monkeypatch):
    from raycluster.cli import format as fmt

    clock = [0.0]
    monkeypatch.setattr(fmt.time, "monotonic", lambda: clock[0])
    show = fmt.progress_printer(every_s=5.0)
    running = job(state="RUNNING")
    for t in (0.0, 6.0, 12.0):  # nothing changes: one line
        clock[0] = t
        show([running])
    assert len(capsys.readouterr().out.splitlines()) == 1
    clock[0] = 3.0
    show([{**running, "last_metrics": {"step": 10}}])  # progress within every_s of the last line: not yet
    clock[0] = 6.0
    show([{**running, "last_metrics": {"step": 20}}])
    clock[0] = 6.5
    show([{**running, "state": "SUCCEEDED", "last_metrics": {"step": 20}}])  # a new state: at once
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "step=20" in lines[0] and "SUCCEEDED" in lines[1]


def test_jobs_lists_newest_first_unless_asked(server, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAYCLUSTER_API_TOKEN", raising=False)
    (tmp_path / "api_token").write_text(TOKEN + "\n")
    base = ["--state-dir", str(tmp_path), "--address", server.url]
    server.on("GET", "/jobs", (200, {"jobs": [job()], "limit": 101, "offset": 0, "next_offset": None}))
    assert cli.main([*base, "jobs"]) == errors.EXIT_OK
    assert server.calls("GET", "/jobs")[-1]["query"]["order"] == ["newest"]
    assert cli.main([*base, "jobs", "--oldest-first"]) == errors.EXIT_OK
    assert "order" not in server.calls("GET", "/jobs")[-1]["query"]  # the API's default: the queue's order
    capsys.readouterr()


def test_the_store_lists_newest_first_when_asked(tmp_path):
    from raycluster.store.jobs import JobStore

    store = JobStore(tmp_path / "jobs.db")
    ids = [store.insert(name=f"j{i}", spec={}, priority=0, tenant=None, now=float(i)).id for i in range(5)]
    assert [r.id for r in store.list()] == ids
    assert [r.id for r in store.list(newest_first=True)] == ids[::-1]
    assert [r.id for r in store.list(limit=2, offset=1, newest_first=True)] == [ids[3], ids[2]]


def test_history_outlives_the_cluster(tmp_path, monkeypatch, capsys):
    """No cluster up (never started, or `down`): jobs, status JOB, logs and checkpoints answer from
    the state on disk, saying so; what needs a live cluster still exits 3."""
    from pathlib import Path

    from raycluster.rank.logs import rank_log_path
    from raycluster.store.jobs import JobStore
    from raycluster.store.lifecycle import Cause, JobState

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAYCLUSTER_STORAGE_URI", raising=False)
    store = JobStore(tmp_path / "jobs.db")
    old = store.insert(name="old", spec={"entrypoint": "jobs.toy:noop"}, priority=0, tenant=None, now=1.0)
    new = store.insert(name="new", spec={"entrypoint": "jobs.toy:noop"}, priority=0, tenant=None, now=2.0)
    store.transition(new.id, JobState.PENDING, JobState.CANCELLED, cause=Cause.CANCELLED, reason="cancelled by user")
    log = Path(rank_log_path(str(tmp_path / "logs"), old.id, 1, 0))
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("epoch 1 loss 0.5\nepoch 2 loss 0.25\n")
    base = ["--state-dir", str(tmp_path)]
    assert cli.main([*base, "--json", "jobs"]) == errors.EXIT_OK
    out = capsys.readouterr()
    assert [j["id"] for j in json.loads(out.out)] == [new.id, old.id]  # newest first
    assert "answering from the state on disk" in out.err
    assert cli.main([*base, "status", new.id]) == errors.EXIT_OK
    assert "cancelled by user" in capsys.readouterr().out
    assert cli.main([*base, "logs", old.id, "--tail", "1"]) == errors.EXIT_OK
    assert capsys.readouterr().out.splitlines() == ["==> attempt 1 rank 0 <==", "epoch 2 loss 0.25"]
    assert cli.main([*base, "--json", "checkpoints", old.id]) == errors.EXIT_OK
    assert json.loads(capsys.readouterr().out) == []
    assert cli.main([*base, "status", "job-000000000000"]) == errors.EXIT_NOT_FOUND
    assert cli.main([*base, "status"]) == errors.EXIT_UNAVAILABLE  # the cluster's status needs a cluster
    assert cli.main([*base, "cancel", old.id]) == errors.EXIT_UNAVAILABLE  # nothing changes offline
    assert store.get(old.id).state == JobState.PENDING


def test_status_of_an_elastic_gang_says_its_size_this_attempt():
    from raycluster.cli.format import job_details

    j = job(state="RUNNING")
    j.update(spec={"num_workers": 4, "min_workers": 2}, world_size=3, transitions=[])
    assert "workers: 3 (elastic, 2..4)" in job_details(j)
    j.update(spec={"num_workers": 4}, world_size=4)  # a rigid gang: nothing more to say
    assert "elastic" not in job_details(j)
