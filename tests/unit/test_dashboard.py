"""`raycluster dashboard`'s view (plain data from any client) and its rendering, with a stand-in
client; the live view in a real terminal (tmux) is tested against a cluster in tests/cluster/test_health.py."""

from __future__ import annotations

import io
import time

import pytest

from raycluster.cli.dashboard import render, view


class StandIn:
    def list(self, states=None, limit=None):
        now = time.time()
        return [{"id": "job-run", "name": "cnn", "state": "RUNNING", "priority": 80, "tenant": "team-a",
                 "attempt_started_at": now - 60, "last_metrics": {"step": 30, "loss": 0.25}, "cost_usd": 0.5,
                 "spec": {"config": {"steps": 120}}},
                {"id": "job-wait", "name": "lstm", "state": "PENDING", "priority": 10, "tenant": None,
                 "waiting": "tenant quota team-b 2/2 GPU", "last_metrics": {}, "spec": {"config": {}}}]

    def cluster_status(self):
        return {"nodes": 2, "gpus_total": 2.0, "gpus_free": 1.0, "cpus_total": 4.0, "cpus_free": 3.0,
                "jobs_by_state": {"RUNNING": 1, "PENDING": 1}}

    def health(self):
        return [{"node_id": "a" * 56, "alive": True, "is_head": False, "state": "unhealthy", "score": 310.0,
                 "excluded": True, "reasons": ["GPU 0: XID error 79"], "rental_id": "rent-1",
                 "sample": {"cpu_pct": 10.0, "mem_pct": 20.0, "gpus": [{"util_pct": 90.0, "mem_pct": 100.0}]}}]

    def rentals(self):
        return [{"id": "rent-1", "market": "local", "usd_per_hour": 0.4}]

    def events(self, limit):
        return [{"ts": time.time(), "action": "scale_up", "reason": "1 gang waits"}]


def test_view_has_progress_eta_reasons_and_market():
    v = view(StandIn())
    run = v["jobs"][0]
    assert run["fraction"] == 0.25 and 170 <= run["eta_s"] <= 190  # 30 of 120 steps in 60 s: 180 s left
    assert v["queue"][0]["waiting"] == "tenant quota team-b 2/2 GPU"
    node = v["nodes"][0]
    assert node["market"] == "local" and node["usd_per_hour"] == 0.4 and node["excluded"]
    assert v["events"][0]["action"] == "scale_up"


def test_render_shows_everything():
    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=220, force_terminal=False).print(render(view(StandIn())))
    text = out.getvalue()
    for fragment in ("job-run", "25%", "30/120", "0.2500", "job-wait", "tenant quota team-b 2/2 GPU", "unhealthy",
                     "XID error 79", "local", "0.40", "scale_up", "GPUs 1/2 free"):
        assert fragment in text, fragment


def test_run_picks_the_best_scored_healthy_worker():
    from raycluster.cli.health import best_node

    nodes = [{"node_id": "head", "alive": True, "is_head": True, "excluded": False, "state": "healthy", "score": 1},
             {"node_id": "busy", "alive": True, "is_head": False, "excluded": False, "state": "healthy", "score": 300},
             {"node_id": "idle", "alive": True, "is_head": False, "excluded": False, "state": "degraded", "score": 5},
             {"node_id": "sick", "alive": True, "is_head": False, "excluded": True, "state": "unhealthy", "score": 0},
             {"node_id": "dead", "alive": False, "is_head": False, "excluded": False, "state": "healthy", "score": 0}]
    assert best_node(nodes)["node_id"] == "idle"
    assert best_node(nodes[:1])["node_id"] == "head"
    assert best_node(nodes[3:]) is None


@pytest.mark.parametrize("columns", ["80", "100", "160"])
def test_the_dashboard_fits_the_terminal_and_keeps_job_ids_whole(columns, monkeypatch):
    from rich.console import Console

    from raycluster.cli.dashboard import terminal_width

    monkeypatch.setenv("COLUMNS", columns)
    assert terminal_width() == int(columns)
    out = io.StringIO()
    Console(file=out, width=terminal_width(), force_terminal=False).print(render(view(StandIn())))
    lines = out.getvalue().splitlines()
    assert max(len(ln) for ln in lines) <= int(columns)
    assert "job-run" in out.getvalue() and "job-wait" in out.getvalue()
