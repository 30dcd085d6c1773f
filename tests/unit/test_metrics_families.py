"""The MetricsCollector's families from a made-up snapshot, as Prometheus would read them: names,
labels, values; a dead node's and a finished job's series absent; the bearer token on /metrics."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families



def snapshot(**kw):
    node = {"node_id": "n1", "alive": True, "is_head": False, "state": "healthy", "score": 35.0, "excluded": False,
            "sample": {"cpu_pct": 5.0, "mem_pct": 30.0, "disk_free_pct": 60.0,
                       "gpus": [{"index": 0, "util_pct": 70.0, "mem_pct": 10.0, "temp_c": 50.0}]}}
    return {"at": 0, "jobs_by_state": {"RUNNING": 1, "PENDING": 2, "SUCCEEDED": 5},
            "queue_by_priority": {50: 2}, "queue_oldest_wait_s": 42.0,
            "jobs": [{"id": "job-1", "name": "cnn", "tenant": "team-a", "state": "RUNNING", "attempt": 2,
                      "system_restarts": 1, "preemptions": 0, "step": 120, "loss": 0.5, "accuracy": None,
                      "cost_usd": None}],
            "submit_to_running": {"buckets": [(0.5, 1), (1, 3), (float("inf"), 4)], "sum": 3.0, "count": 4},
            "nodes": [node, {**node, "node_id": "n2", "state": "unhealthy", "excluded": True},
                      {**node, "node_id": "n3", "alive": False, "state": "unhealthy"}],
            "utilization_pct": 50.0, "events_by_action": {"scale_up": 3}, **kw}


def scrape(snap, ckpt=None):
    from prometheus_client import CollectorRegistry, generate_latest

    from raycluster.control.observe.metrics import _Collector

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(lambda: (snap, ckpt)))
    text = generate_latest(reg).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, out


def test_families_and_values():
    _text, m = scrape(snapshot(), {"buckets": [(0.1, 2), (float("inf"), 3)], "sum": 0.4, "count": 3, "bytes": 1024})
    assert m[("raycluster_jobs", (("state", "RUNNING"),))] == 1
    assert m[("raycluster_queue_depth", (("priority", "50"),))] == 2
    job = (("job_id", "job-1"), ("name", "cnn"), ("state", "RUNNING"), ("tenant", "team-a"))
    assert m[("raycluster_job_step", job)] == 120 and m[("raycluster_job_loss", job)] == 0.5
    assert m[("raycluster_job_attempts", job)] == 2 and m[("raycluster_job_restarts", job)] == 1
    assert ("raycluster_job_accuracy", job) not in m  # not reported: no series rather than a made-up 0
    assert m[("raycluster_submit_to_running_seconds_bucket", (("le", "1.0"),))] == 3
    assert m[("raycluster_submit_to_running_seconds_count", ())] == 4
    assert m[("raycluster_checkpoint_save_seconds_count", ())] == 3
    assert m[("raycluster_checkpoint_bytes_total", ())] == 1024
    assert m[("raycluster_node_health", (("node", "n2"), ("state", "unhealthy")))] == 1
    assert m[("raycluster_node_health", (("node", "n1"), ("state", "unhealthy")))] == 0
    assert m[("raycluster_node_gpu_utilization_percent", (("gpu", "0"), ("node", "n1")))] == 70
    assert m[("raycluster_node_excluded", (("node", "n2"),))] == 1
    assert m[("raycluster_workers", (("health", "total"),))] == 2
    assert m[("raycluster_workers", (("health", "unhealthy"),))] == 2  # n2 unhealthy + n3 lost
    assert m[("raycluster_queue_oldest_wait_seconds", ())] == 42
    assert m[("raycluster_autoscaling_events_total", (("action", "scale_up"),))] == 3
    assert m[("raycluster_worker_utilization_percent", ())] == 50
    assert ("raycluster_loop_part_seconds_total", (("part", "health"),)) not in m  # none reported: no series


def test_loop_part_timings_are_exported():
    parts = {"health": {"calls": 3, "total_s": 0.25, "max_s": 0.2, "last_s": 0.01, "failures": 1},
             "admission": {"calls": 3, "total_s": 0.01, "max_s": 0.005, "last_s": 0.001, "failures": 0}}
    _text, m = scrape(snapshot(loop_parts=parts))
    assert m[("raycluster_loop_part_seconds_total", (("part", "health"),))] == 0.25
    assert m[("raycluster_loop_part_failures_total", (("part", "health"),))] == 1
    assert m[("raycluster_loop_part_failures_total", (("part", "admission"),))] == 0
    assert m[("raycluster_loop_part_max_seconds", (("part", "admission"),))] == 0.005


def test_dead_nodes_and_finished_jobs_leave_no_series():
    text, _m = scrape(snapshot())
    assert 'node="n3"' not in text  # dead: gone, not stale
    text, m = scrape(snapshot(jobs=[]))  # the job finished: not in the snapshot any more
    assert "job-1" not in text
    assert not any(k[0] == "raycluster_cluster_cost_usd_per_hour" for k in m)  # not elastic: no cost family


def test_cost_families_on_an_elastic_cluster():
    snap = snapshot(cost_usd_per_hour=0.8, budget_usd_per_hour=1.0)
    snap["jobs"][0].update(cost_usd=0.25, cost_usd_per_hour=0.4)
    _text, m = scrape(snap)
    job = (("job_id", "job-1"), ("name", "cnn"), ("state", "RUNNING"), ("tenant", "team-a"))
    assert m[("raycluster_job_cost_usd_per_hour", job)] == 0.4 and m[("raycluster_job_cost_usd", job)] == 0.25
    assert m[("raycluster_cluster_cost_usd_per_hour", ())] == 0.8
    assert m[("raycluster_budget_usd_per_hour", ())] == 1.0


def test_metrics_endpoint_token():
    import threading
    from wsgiref.simple_server import make_server

    import requests
    from prometheus_client import CollectorRegistry

    from raycluster.control.observe.metrics import _app, _Collector

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(lambda: (snapshot(), None)))
    from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

    srv = make_server("127.0.0.1", 0, _app(reg, "s3cret"), ThreadingWSGIServer, handler_class=_SilentHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_port}/metrics"
        assert requests.get(url, timeout=10).status_code == 401
        assert requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=10).status_code == 401
        r = requests.get(url, headers={"Authorization": "Bearer s3cret"}, timeout=10)
        assert r.status_code == 200 and "raycluster_jobs" in r.text
    finally:
        srv.shutdown()


def test_fast_exposition_says_what_prometheus_client_says():
    from prometheus_client import CollectorRegistry, generate_latest

    from raycluster.control.observe.metrics import _Collector, exposition

    reg = CollectorRegistry(auto_describe=False)
    weird = snapshot(jobs=[{"id": "job-2", "name": 'a"b\\c\nd', "tenant": None, "state": "RUNNING", "attempt": 1,
                            "system_restarts": 0, "preemptions": 0, "step": float("nan"), "loss": float("inf")}])
    reg.register(_Collector(lambda: (weird, {"buckets": [(0.1, 2), (float("inf"), 3)], "sum": 0.4, "count": 3,
                                             "bytes": 1024})))

    def parsed(text):
        return {(f.name, f.type, s.name, tuple(sorted(s.labels.items())), repr(s.value))
                for f in text_string_to_metric_families(text) for s in f.samples
                if s.name != "raycluster_snapshot_age_seconds"}  # (its value moves between the two scrapes)

    assert parsed(exposition(reg.collect()).decode()) == parsed(generate_latest(reg).decode())
