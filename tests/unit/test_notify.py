"""Webhook notifications: a real HTTP receiver on loopback and the real SQLite outbox — the
Alertmanager-shaped payload, 500 twice then 200 → delivered once, a restart with a pending
notification → still delivered, a dead receiver → given up after the attempts, no secret in the logs,
a bad config named; and the Coordinator emitting job_failed / node events."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from raycluster import constants as C
from raycluster.control.observe.notify import Notifier, parse_config
from tests.fakes import Clock


class Receiver:
    """Answers ``codes`` in turn (then 200), keeping every body it got."""

    def __init__(self, codes=()):
        self.codes, self.bodies = list(codes), []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                code = outer.codes.pop(0) if outer.codes else 200
                if code == 200:
                    outer.bodies.append((self.path, body))
                self.send_response(code)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.srv.server_port}/hooks/SECRET-TOKEN-123"

    def close(self):
        self.srv.shutdown()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def configure(state, *hooks):
    (state / "notify.yaml").write_text(json.dumps({"webhooks": list(hooks)}))


def test_alertmanager_payload_delivered_once_after_two_500s(tmp_path, receiver, caplog, monkeypatch):
    monkeypatch.setattr(C, "NOTIFY_RETRY_BASE_S", 1.0)
    receiver.codes = [500, 500]
    clock = Clock()
    configure(tmp_path, {"url": receiver.url, "format": "alertmanager"})
    n = Notifier(tmp_path, clock=clock)
    assert n.emit("job_failed", {"job_id": "job-1", "name": "cnn"}, "job cnn (job-1) FAILED", "user error") == 1
    with caplog.at_level(logging.WARNING, logger="raycluster.notify"):
        assert n.deliver_due() == 0  # 500
        assert n.deliver_due() == 0  # not due yet (backoff 1 s)
        clock.t += 1.0
        assert n.deliver_due() == 0  # 500 again
        clock.t += 2.0
        assert n.deliver_due() == 1  # 200
        clock.t += 100
        assert n.deliver_due() == 0  # never again
    assert len(receiver.bodies) == 1
    path, body = receiver.bodies[0]
    assert body["version"] == "4" and body["status"] == "firing" and body["receiver"] == "raycluster"
    alert = body["alerts"][0]
    assert alert["labels"] == {"alertname": "raycluster_job_failed", "severity": "critical", "job_id": "job-1",
                               "name": "cnn"}
    assert alert["annotations"]["summary"] == "job cnn (job-1) FAILED" and alert["startsAt"].endswith("Z")
    assert alert["fingerprint"] and body["groupKey"] and body["commonLabels"] == alert["labels"]
    assert "SECRET-TOKEN-123" not in caplog.text and "HTTP 500" in caplog.text  # the URL's secret never logged
    row = n.outbox.rows()[0]
    assert row["attempts"] == 3 and row["delivered_at"] is not None


def test_slack_form_and_event_filter(tmp_path, receiver):
    configure(tmp_path, {"url": receiver.url, "format": "slack", "events": ["node_unhealthy"]})
    n = Notifier(tmp_path)
    assert n.emit("job_failed", {}, "x", "y") == 0  # not wanted by this webhook
    assert n.emit("node_unhealthy", {"node": "n1"}, "node n1 is unhealthy", "XID error 79") == 1
    assert n.deliver_due() == 1
    assert receiver.bodies[0][1] == {"text": "*node n1 is unhealthy*\nXID error 79"}


def test_a_pending_notification_survives_a_restart(tmp_path, receiver):
    configure(tmp_path, {"url": receiver.url})

    def down(url, body):
        raise ConnectionError(f"cannot reach {url}")  # (the message would carry the URL's secret)

    n = Notifier(tmp_path, post=down)  # the receiver is down while this Coordinator runs
    n.emit("node_unhealthy", {"node": "n1"}, "node n1 is unhealthy", "no heartbeat")
    assert n.deliver_due() == 0 and n.outbox.rows()[0]["last_error"] == "ConnectionError"
    clock = Clock()
    clock.t = 10 ** 10  # a restarted Coordinator, later: a new Notifier over the same outbox
    again = Notifier(tmp_path, clock=clock)
    assert again.deliver_due() == 1
    assert receiver.bodies[0][1]["alerts"][0]["labels"]["node"] == "n1"
    assert again.deliver_due() == 0


def test_gives_up_after_max_attempts(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "NOTIFY_MAX_ATTEMPTS", 3)
    clock = Clock()
    configure(tmp_path, {"url": "http://127.0.0.1:9/hook"})
    n = Notifier(tmp_path, clock=clock, post=lambda url, body: 503)
    n.emit("job_failed", {"job_id": "j"}, "s", "d")
    for _ in range(5):
        n.deliver_due()
        clock.t += 1000
    row = n.outbox.rows()[0]
    assert row["dead"] and row["attempts"] == 3 and row["last_error"] == "HTTP 503"


@pytest.mark.parametrize("data,fragment", [
    ({"webhooks": [{"format": "slack"}]}, "webhooks[0]: needs url"),
    ({"webhooks": [{"url": "ftp://x"}]}, "webhooks[0].url"),
    ({"webhooks": [{"url": "http://x", "format": "teams"}]}, "webhooks[0].format"),
    ({"webhooks": [{"url": "http://x", "events": ["job_done"]}]}, "webhooks[0].events"),
    ({"hooks": []}, "only 'webhooks'"),
])
def test_bad_config_names_the_field(data, fragment):
    with pytest.raises(ValueError) as exc:
        parse_config(data, "notify.yaml")
    assert fragment in str(exc.value)


def test_the_coordinator_notifies_a_failed_job_and_an_unhealthy_node(tmp_path, monkeypatch):
    from raycluster.control.core import CoordinatorCore
    from raycluster.policy.recovery import RankStatus
    from tests.fakes import FakeOps

    clock, ops = Clock(), FakeOps()
    sent = []
    configure(tmp_path, {"url": "http://127.0.0.1:9/h"})
    core = CoordinatorCore(tmp_path, ops, clock=clock)
    core.notifier._post = lambda url, body: sent.append(body) or 200
    jid = core.submit({"name": "bad", "entrypoint": "jobs.toy:noop", "resources": {"cpus": 1}})["id"]
    for _ in range(2):
        clock.t += 0.1
        core.reconcile_once()
    ops.finish(core.attempts[jid].refs, RankStatus.USER_ERROR, "ValueError: boom")
    for _ in range(3):
        clock.t += C.FAILURE_SETTLE_S
        core.reconcile_once()
    assert core.get(jid)["state"] == "FAILED"
    core.health.enabled = True
    core.health.heartbeat({"node_id": "n0", "at": clock.t, "gpus": [{"index": 0, "xids": [48]}]})
    clock.t += 5
    core.reconcile_once()
    core.notifier.deliver_due()
    kinds = [b["alerts"][0]["labels"]["alertname"] for b in sent]
    assert "raycluster_job_failed" in kinds and "raycluster_node_unhealthy" in kinds
    failed = next(b for b in sent if b["alerts"][0]["labels"]["alertname"] == "raycluster_job_failed")
    assert failed["alerts"][0]["labels"]["job_id"] == jid


def test_cli_notify_set_and_outbox(tmp_path, capsys):
    from raycluster.cli.main import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("webhooks:\n  - url: ftp://nope\n")
    assert main(["--state-dir", str(tmp_path), "notify", "--set", str(bad)]) == 2
    assert "webhooks[0].url" in capsys.readouterr().err and not (tmp_path / "notify.yaml").exists()
    good = tmp_path / "good.yaml"
    good.write_text("webhooks:\n  - url: http://127.0.0.1:9/hooks/SECRET\n    format: slack\n")
    assert main(["--state-dir", str(tmp_path), "notify", "--set", str(good)]) == 0
    out = capsys.readouterr().out
    assert "1 webhook(s) installed" in out and "SECRET" not in out
    assert (tmp_path / "notify.yaml").stat().st_mode & 0o777 == 0o600
    Notifier(tmp_path, post=lambda u, b: 200).emit("job_failed", {"job_id": "j"}, "s", "d")
    assert main(["--state-dir", str(tmp_path), "notify"]) == 0
    assert "job_failed" in capsys.readouterr().out
