"""The MetricsCollector actor: raycluster's own Prometheus metrics on a ``/metrics`` endpoint.

Owns: the families (``raycluster_*``, units in the names), built at every scrape from one snapshot
of the Coordinator (``Coordinator.metrics_snapshot``: jobs by state, queue by priority, every
unfinished job's progress, the submit→running histogram, each node's health and sample, workers,
autoscaling events, cost) and the CheckpointManager (checkpoint save seconds and bytes) — so a
finished job's or a dead node's series are gone at the next scrape, never left stale; its own
``prometheus_client`` registry (not Ray's ``ray.util.metrics``: those are forced to a ``ray_``
prefix and expire ~20 s after the last set) served on 127.0.0.1:``METRICS_PORT`` (bearer token
optional: ``RAYCLUSTER_METRICS_TOKEN``); and a Prometheus ``file_sd`` JSON written beside Ray's own
service-discovery file in the head's session dir, so one Prometheus scrapes both.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterable

import ray

from raycluster import constants as C

log = logging.getLogger("raycluster.metrics")

SD_FILE = "raycluster_prom_service_discovery.json"
HEALTH_STATES = ("healthy", "degraded", "unhealthy", "unknown")


def families(snap: dict[str, Any], ckpt: dict[str, Any] | None) -> Iterable:
    """The metric families of one snapshot (pure: the unit tests call it with a made-up snapshot)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.utils import floatToGoString

    g = GaugeMetricFamily("raycluster_jobs", "Jobs by state", labels=["state"])
    for state, n in sorted(snap.get("jobs_by_state", {}).items()):
        g.add_metric([state], n)
    yield g
    g = GaugeMetricFamily("raycluster_queue_depth", "Queued (PENDING) jobs by priority", labels=["priority"])
    for prio, n in sorted(snap.get("queue_by_priority", {}).items()):
        g.add_metric([str(prio)], n)
    yield g
    per_job = {
        "step": ("raycluster_job_step", "Last reported training step of an unfinished job"),
        "loss": ("raycluster_job_loss", "Last reported loss"),
        "accuracy": ("raycluster_job_accuracy", "Last reported accuracy"),
        "attempt": ("raycluster_job_attempts", "Attempts so far"),
        "system_restarts": ("raycluster_job_restarts", "Restarts after system failures"),
        "preemptions": ("raycluster_job_preemptions", "Attempts ended by a spot preemption or a higher-priority job"),
        "cost_usd_per_hour": ("raycluster_job_cost_usd_per_hour", "What the job's share of rented nodes costs now"),
        "cost_usd": ("raycluster_job_cost_usd", "What the job has cost so far"),
    }
    labels = ["job_id", "name", "tenant", "state"]
    made = {k: GaugeMetricFamily(name, doc, labels=labels) for k, (name, doc) in per_job.items()}
    for j in snap.get("jobs", []):
        lv = [j["id"], j["name"], j.get("tenant") or "", j["state"]]
        for k, fam in made.items():
            v = j.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                fam.add_metric(lv, float(v))
    yield from made.values()
    h = snap.get("submit_to_running")
    if h:
        hist = HistogramMetricFamily("raycluster_submit_to_running_seconds", "Seconds from submit to first RUNNING")
        hist.add_metric([], buckets=[(floatToGoString(b), c) for b, c in h["buckets"]], sum_value=h["sum"])
        yield hist
    if ckpt:
        hist = HistogramMetricFamily("raycluster_checkpoint_save_seconds", "Seconds to write and register a shard")
        hist.add_metric([], buckets=[(floatToGoString(b), c) for b, c in ckpt["buckets"]], sum_value=ckpt["sum"])
        yield hist
        c = CounterMetricFamily("raycluster_checkpoint_bytes", "Bytes of checkpoint shards written")
        c.add_metric([], ckpt["bytes"])
        yield c
    node_fams = {
        "score": GaugeMetricFamily("raycluster_node_health_score", "Health score: CPU % x 1 + GPU memory % x 3 "
                                   "(lower is better)", labels=["node"]),
        "cpu_pct": GaugeMetricFamily("raycluster_node_cpu_percent", "CPU utilisation", labels=["node"]),
        "mem_pct": GaugeMetricFamily("raycluster_node_memory_percent", "Memory used", labels=["node"]),
        "disk_free_pct": GaugeMetricFamily("raycluster_node_disk_free_percent", "Free disk where checkpoints live",
                                           labels=["node"]),
    }
    state = GaugeMetricFamily("raycluster_node_health", "1 for the node's health state", labels=["node", "state"])
    excluded = GaugeMetricFamily("raycluster_node_excluded", "1 when the node takes no new gang (unhealthy or "
                                 "drained)", labels=["node"])
    gpu = {k: GaugeMetricFamily(f"raycluster_node_gpu_{k}", doc, labels=["node", "gpu"]) for k, doc in (
        ("utilization_percent", "GPU utilisation"), ("memory_percent", "GPU memory used"),
        ("temperature_celsius", "GPU temperature"))}
    for n in snap.get("nodes", []):
        if not n.get("alive"):
            continue  # a dead node's series go with it
        nid = n["node_id"]
        for s in HEALTH_STATES:
            state.add_metric([nid, s], 1.0 if n["state"] == s else 0.0)
        excluded.add_metric([nid], 1.0 if n.get("excluded") else 0.0)
        if n.get("score") is not None:
            node_fams["score"].add_metric([nid], n["score"])
        s = n.get("sample") or {}
        for k in ("cpu_pct", "mem_pct", "disk_free_pct"):
            if k in s:
                node_fams[k].add_metric([nid], s[k])
        for gs in s.get("gpus", []):
            gpu["utilization_percent"].add_metric([nid, str(gs["index"])], gs["util_pct"])
            gpu["memory_percent"].add_metric([nid, str(gs["index"])], gs["mem_pct"])
            gpu["temperature_celsius"].add_metric([nid, str(gs["index"])], gs["temp_c"])
    yield state
    yield excluded
    yield from node_fams.values()
    yield from gpu.values()
    w = GaugeMetricFamily("raycluster_workers", "Worker nodes: total (alive), healthy, unhealthy (alive and "
                          "judged unhealthy, or lost: dead while we watched it)", labels=["health"])
    workers = [n for n in snap.get("nodes", []) if n.get("alive") and not n.get("is_head")]
    lost = [n for n in snap.get("nodes", []) if not n.get("alive") and not n.get("is_head") and n["state"] == "unhealthy"]
    w.add_metric(["total"], len(workers))
    w.add_metric(["healthy"], sum(n["state"] in ("healthy", "degraded", "unknown") for n in workers))
    w.add_metric(["unhealthy"], sum(n["state"] == "unhealthy" for n in workers) + len(lost))
    yield w
    q = GaugeMetricFamily("raycluster_queue_oldest_wait_seconds", "How long the oldest queued job has waited")
    q.add_metric([], snap.get("queue_oldest_wait_s") or 0.0)
    yield q
    u = GaugeMetricFamily("raycluster_worker_utilization_percent", "Share of the cluster's GPUs (CPUs when it has "
                          "none) held by jobs")
    u.add_metric([], snap.get("utilization_pct", 0.0))
    yield u
    parts = snap.get("loop_parts") or {}
    if parts:
        lt = CounterMetricFamily("raycluster_loop_part_seconds", "Time the Coordinator's loop spent in each part",
                                 labels=["part"])
        lf = CounterMetricFamily("raycluster_loop_part_failures", "Passes in which a part of the Coordinator's "
                                 "loop raised (logged; the loop went on)", labels=["part"])
        lm = GaugeMetricFamily("raycluster_loop_part_max_seconds", "The slowest call of each loop part",
                               labels=["part"])
        for name, t in sorted(parts.items()):
            lt.add_metric([name], t["total_s"])
            lf.add_metric([name], t["failures"])
            lm.add_metric([name], t["max_s"])
        yield lt
        yield lf
        yield lm
    ev = CounterMetricFamily("raycluster_autoscaling_events", "Scaling decisions by action", labels=["action"])
    for action, n in sorted(snap.get("events_by_action", {}).items()):
        ev.add_metric([action], n)
    yield ev
    if snap.get("cost_usd_per_hour") is not None:
        c = GaugeMetricFamily("raycluster_cluster_cost_usd_per_hour", "Spend rate of every rented node now")
        c.add_metric([], snap["cost_usd_per_hour"])
        yield c
        if snap.get("budget_usd_per_hour") is not None:
            b = GaugeMetricFamily("raycluster_budget_usd_per_hour", "The hourly budget cap")
            b.add_metric([], snap["budget_usd_per_hour"])
            yield b
    up = GaugeMetricFamily("raycluster_snapshot_age_seconds", "Age of the runtime snapshot these metrics come from")
    up.add_metric([], max(0.0, time.time() - snap.get("at", time.time())))
    yield up


def _escape(v: str) -> str:
    if "\\" in v or '"' in v or "\n" in v:
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return v


def _num(v: float) -> str:
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def exposition(fams) -> bytes:
    """The Prometheus text format (0.0.4) of ``fams`` — what ``prometheus_client.generate_latest``
    writes, ~5x faster for our thousands of labelled series (tests/unit/test_metrics_families.py
    checks both agree)."""
    out: list[str] = []
    for m in fams:
        name = m.name + ("_total" if m.type == "counter" and not m.name.endswith("_total") else "")
        out.append(f"# HELP {m.name if m.type != 'counter' else name} {m.documentation}\n"
                   f"# TYPE {m.name if m.type != 'counter' else name} {m.type}\n")
        for smp in m.samples:
            if smp.labels:
                labels = ",".join(f'{k}="{_escape(str(v))}"' for k, v in smp.labels.items())
                out.append(f"{smp.name}{{{labels}}} {_num(smp.value)}\n")
            else:
                out.append(f"{smp.name} {_num(smp.value)}\n")
    return "".join(out).encode()


class _Collector:
    def __init__(self, fetch):
        self._fetch = fetch

    def collect(self):
        snap, ckpt = self._fetch()
        yield from families(snap, ckpt)


def _app(registry, token: str | None):
    """/metrics of the registry in the text format (our fast writer), behind an optional bearer token."""

    def app(environ, start_response):
        if token:
            got = environ.get("HTTP_AUTHORIZATION", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
                start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
                return [b"missing or wrong bearer token\n"]
        if environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"only /metrics here\n"]
        body = exposition(registry.collect())
        start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    return app


@ray.remote(num_cpus=0, max_restarts=-1)
class MetricsCollector:
    def __init__(self, state_dir: str, port: int, host: str, settings: dict | None = None):
        from raycluster.settings import of

        of(settings).install()
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler, make_server

        from raycluster.control.handles import get_handle

        self.state_dir = Path(state_dir)
        self._coord = get_handle(C.COORDINATOR_NAME)
        self._cm = get_handle(C.CHECKPOINT_MANAGER_NAME)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self._fetch))
        token = os.environ.get("RAYCLUSTER_METRICS_TOKEN") or None
        try:
            self._server = make_server(host, port, _app(self.registry, token), ThreadingWSGIServer,
                                       handler_class=_SilentHandler)
        except OSError as exc:  # the port is taken (another cluster's collector): a free one, said in the log
            log.warning("metrics port %d: %s; using a free port", port, exc)
            self._server = make_server(host, 0, _app(self.registry, token), ThreadingWSGIServer,
                                       handler_class=_SilentHandler)
        self.host, self.port = host, self._server.server_port
        threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True).start()
        self.sd_path = self._write_sd()
        log.info("metrics on http://%s:%d/metrics (file_sd %s)", self.host, self.port, self.sd_path)

    def _fetch(self):
        snap, ckpt = ray.get([self._coord.metrics_snapshot.remote(), self._cm.metrics_snapshot.remote()], timeout=30)
        return snap, ckpt

    def _write_sd(self) -> str | None:
        """Our target in Prometheus file_sd form, beside Ray's own (``prom_metrics_service_discovery.json``)."""
        try:
            session = ray._private.worker.global_worker.node.get_session_dir_path()
        except Exception:
            return None
        path = Path(session) / SD_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"labels": {"job": "raycluster"}, "targets": [f"{self.host}:{self.port}"]}]))
        os.replace(tmp, path)
        return str(path)

    def address(self) -> dict[str, Any]:
        return {"url": f"http://{self.host}:{self.port}/metrics", "file_sd": self.sd_path}

    def ping(self) -> dict:
        return {"ok": True}
