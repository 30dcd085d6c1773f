"""The Coordinator's side of node health, a part of its loop (``Health``): heartbeats in, verdicts
out, drain state, and auto-heal.

Owns:
* the registry — each node's newest sample and heartbeat time (``heartbeat``, called by its
  HealthMonitor), the consecutive failed checks, the verdict (``policy.health.verdict``) and its
  changes in SQLite (``store/nodes.py``); a HealthMonitor started for every alive node that has none
  (at start-up and for nodes that join later; it dies with its node);
* the excluded nodes — unhealthy ones (until healthy again for ``HEALTH_RECOVER_S``) and those an
  operator drained (``drain``/``undrain``, kept in SQLite): admission leaves them out of its free view
  and every placement group is created with a label selector that keeps its bundles off them
  (``ray.io/node-id: !in(...)``), so neither we nor Ray place a gang there;
* which gangs to evacuate — a running gang on an excluded (but alive) node is moved through the one
  move mechanism (``control/evacuation.py``: asked to checkpoint now, then RUNNING → RECOVERING,
  cause ``node_unhealthy`` / ``node_drained``, no restart spent, once its newer checkpoint is
  complete or after ``HEALTH_EVACUATE_WAIT_S``); it is placed again off the excluded nodes and
  resumes. Only where there is somewhere to go: a gang that would not fit on the healthy nodes'
  free room stays (a silent node's gangs move at once: it is presumed dead). A gang whose node is
  healthy again (or undrained) before it moved is no longer moved.
* hosts — nodes with one address share a machine: its memory, disk and load are the host's
  (``policy.health``), shown once per host and never a reason to move work.
* the node-died signal — a rank that failed with NodeDiedError marks its node (``node_died``) until a
  heartbeat says otherwise: the verdict comes at the next pass, before Ray's node table says so.
A dead node's gangs fail over by the usual path (their ranks die with it).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from pathlib import Path
from typing import Any, Callable

from raycluster import constants as C
from raycluster.errors import InvalidJobSpec
from raycluster.policy.health import (GpuSample, HealthContext, HealthState, HealthThresholds, HealthVerdict,
                                      NodeSample, failed_checks, heartbeat_timeout_s, verdict)
from raycluster.policy.evacuation import MoveKind
from raycluster.labels import rental_of
from raycluster.control.evacuation import Evacuations
from raycluster.store.jobs import JobRecord
from raycluster.store.lifecycle import Cause
from raycluster.store.nodes import NodeHealthStore

log = logging.getLogger("raycluster.health")


def thresholds() -> HealthThresholds:
    return HealthThresholds(
        heartbeat_timeout_s=C.HEALTH_HEARTBEAT_TIMEOUT_FACTOR * C.HEALTH_INTERVAL_S,
        heartbeat_lag_cap_s=C.HEALTH_HEARTBEAT_LAG_CAP_S,
        failure_threshold=C.HEALTH_FAILURE_THRESHOLD, mem_pct_max=C.HEALTH_MEM_PCT_MAX,
        load_per_cpu_max=C.HEALTH_LOAD_PER_CPU_MAX, gpu_temp_c_max=C.HEALTH_GPU_TEMP_C_MAX,
        disk_low_pct=C.HEALTH_DISK_LOW_PCT, disk_full_pct=C.HEALTH_DISK_FULL_PCT,
        cpu_weight=C.HEALTH_CPU_WEIGHT, gpu_weight=C.HEALTH_GPU_WEIGHT)


def to_sample(d: dict[str, Any]) -> NodeSample:
    gpus = tuple(GpuSample(index=int(g.get("index", i)), util_pct=float(g.get("util_pct") or 0),
                           mem_used_mb=float(g.get("mem_used_mb") or 0), mem_total_mb=float(g.get("mem_total_mb") or 0),
                           temp_c=float(g.get("temp_c") or 0), ecc_uncorrected=int(g.get("ecc_uncorrected") or 0),
                           remap_failed=bool(g.get("remap_failed")), throttle=tuple(g.get("throttle") or ()),
                           xids=tuple(int(x) for x in g.get("xids") or ()))
                 for i, g in enumerate(d.get("gpus") or []))
    return NodeSample(node_id=d["node_id"], at=float(d.get("at") or 0), cpu_pct=float(d.get("cpu_pct") or 0),
                      load1=float(d.get("load1") or 0), cpus=int(d.get("cpus") or 1), mem_pct=float(d.get("mem_pct") or 0),
                      disk_free_pct=float(d.get("disk_free_pct", 100.0)), disk_free_gb=float(d.get("disk_free_gb") or 0),
                      gpus=gpus, nvml_error=d.get("nvml_error"))


_NONE = HealthVerdict("", HealthState.HEALTHY, 0.0, (), 0)


class Health:
    """Node health, a part of the Coordinator's loop (see the module docstring). Handed: the node
    cache, the ops that start monitors, the move mechanism, the placed gangs with their nodes and
    a room check — not the loop."""

    def __init__(self, state_dir: Path, *, nodes, ops, handle, clock: Callable[[], float], notifier,
                 evacuations: Evacuations, placed_gangs: Callable[[], list[tuple[JobRecord, list[str]]]],
                 room_elsewhere: Callable[[str, set[str]], bool], excluded_changed: Callable[[], None],
                 wake: Callable[[], None], lock, guard: Callable[..., bool]):
        self.state_dir = Path(state_dir)
        self.nodes, self.ops, self.handle, self.clock, self.notifier = nodes, ops, handle, clock, notifier
        self.evacuations = evacuations
        self._placed_gangs = placed_gangs
        self._room_elsewhere = room_elsewhere
        self._excluded_changed_cb = excluded_changed
        self.wake, self._lock, self._guard = wake, lock, guard
        self.node_health = NodeHealthStore(self.state_dir / "jobs.db")
        self._drained = {n: r["drain_reason"] or "drained" for n, r in self.node_health.all().items() if r["drained"]}
        self._samples: dict[str, NodeSample] = {}
        self._hb_at: dict[str, float] = {}
        self._late: dict[str, deque] = {}  # node -> how late its last heartbeats came (s beyond the interval)
        self._peers: dict[str, list[str]] = {}  # alive node -> the alive nodes of its host (itself too)
        self._failures: dict[str, int] = {}
        self._watch_since: dict[str, float] = {}
        self._verdicts: dict[str, HealthVerdict] = {}
        self._unhealthy: dict[str, float] = {}  # node -> since when it is excluded for its health
        self._healthy_since: dict[str, float] = {}
        self._monitors: dict[str, Any] = {}
        self._stays: dict[str, str] = {}  # job -> why it is not moved (nowhere to go), logged once
        self._shared: set[str] = set()  # alive nodes on a host with other alive nodes
        self._died_at: dict[str, float] = {}  # node -> when a rank of ours died with it (NodeDiedError)
        self._last_pass = 0.0
        self._health_lock = threading.Lock()  # heartbeats arrive on the actor's threads
        # judged only where monitors run (the Coordinator actor); a unit test turns it on itself
        self.enabled = handle is not None
        self.excluded_key: frozenset = frozenset(self._drained)

    # ------------------------------------------------------------------ calls
    def heartbeat(self, sample: dict[str, Any]) -> None:
        """(From a node's HealthMonitor.) Its newest sample; a failed check counts once per sample."""
        s = to_sample(sample)
        now = self.clock()
        with self._health_lock:
            failed = failed_checks(s, thresholds(), s.node_id in self._shared)
            self._failures[s.node_id] = self._failures.get(s.node_id, 0) + 1 if failed else 0
            self._samples[s.node_id] = s
            prev = self._hb_at.get(s.node_id)
            if prev is not None:
                self._late.setdefault(s.node_id, deque(maxlen=C.HEALTH_LAG_SAMPLES)).append(
                    max(0.0, now - prev - C.HEALTH_INTERVAL_S))
            self._hb_at[s.node_id] = now

    def node_died(self, node_id: str, now: float) -> None:
        """A rank of ours died with ``node_id`` (Ray's NodeDiedError): judge it at the next pass."""
        if node_id not in self._died_at:
            log.warning("node %s: a rank died with it (NodeDiedError)", node_id)
            self._died_at[node_id] = now
            self._last_pass = 0.0  # the health pass runs in this same reconcile pass
            self.nodes.forget()

    def excluded(self) -> set[str]:
        return set(self._unhealthy) | set(self._drained)

    def drain(self, node_id: str, reason: str | None = None) -> dict:
        """Take a node out by hand: no new gangs; its gangs checkpoint and move. Kept until ``undrain``.
        ``node_id``: a Ray node id or a unique prefix of one (``raycluster health`` shows 16 characters)."""
        node_id = self._known_node(node_id)
        why = reason or "drained by hand"
        self.node_health.set_drained(node_id, True, why, self.clock())
        with self._lock:
            self._drained[node_id] = why
            self._excluded_changed()
        log.info("node %s drained: %s", node_id, why)
        self.wake()
        return self.node_view(node_id)

    def undrain(self, node_id: str) -> dict:
        node_id = self._known_node(node_id)
        self.node_health.set_drained(node_id, False, None, self.clock())
        with self._lock:
            self._drained.pop(node_id, None)
            self._excluded_changed()
        log.info("node %s undrained", node_id)
        self.wake()
        return self.node_view(node_id)

    def _known_node(self, node_id: str) -> str:
        """The full id of a node Ray knows, given its id or a unique prefix (JobNotFound otherwise)."""
        from raycluster.errors import JobNotFound

        if not node_id or len(node_id) > 128:
            raise InvalidJobSpec("node id must be 1-128 characters", field="node_id")
        ids = [n["id"] for n in self.nodes.nodes(0.0)]
        found = [i for i in ids if i == node_id] or [i for i in ids if i.startswith(node_id)]
        if len(found) != 1:
            raise JobNotFound(f"node {node_id!r} not found" if not found else
                              f"node {node_id!r} is ambiguous: {len(found)} nodes start with it")
        return found[0]

    def health_view(self) -> list[dict]:
        """Every node Ray knows: its verdict, score, reasons, host, drain state and newest sample. A
        dead node the cluster gave back on purpose (idle, shed, down, preempted) reads ``released``."""
        nodes = self.nodes.nodes(C.NODE_TOTALS_TTL_S)
        released = self._released_rentals(nodes)
        return [self.node_view(n["id"], n, released) for n in nodes]

    def _released_rentals(self, nodes: list[dict]) -> dict[str, str]:
        """rental id -> why it was given back, for the dead rented nodes (the provider's books)."""
        dead = [rental_of(n) for n in nodes if not n["alive"]]
        dead = [r for r in dead if r]
        if not dead:
            return {}
        try:
            from raycluster.provision.market.registry import released_on_purpose

            return released_on_purpose(self.state_dir, dead)
        except Exception:
            log.exception("cannot read the provider's books")
            return {}

    def node_view(self, node_id: str, node: dict | None = None, released: dict[str, str] | None = None) -> dict:
        node = node or next((n for n in self.nodes.nodes(C.NODE_TOTALS_TTL_S) if n["id"] == node_id), {})
        v = self._verdicts.get(node_id)
        s = self._samples.get(node_id)
        hb = self._hb_at.get(node_id)
        rental = rental_of(node)
        state, reasons = (v.state.value, list(v.reasons)) if v else ("unknown", [])
        if not node.get("alive") and rental and rental in (released or {}):
            state, reasons = "released", [released[rental]]
        return {"node_id": node_id, "alive": bool(node.get("alive")), "is_head": bool(node.get("is_head")),
                "address": node.get("address"), "rental_id": rental,
                "state": state, "score": v.score if v else None, "reasons": reasons,
                "host_shared": node_id in self._shared, "host_reasons": list(v.host_reasons) if v else [],
                "excluded": node_id in self.excluded(), "drained": node_id in self._drained,
                "drain_reason": self._drained.get(node_id),
                "last_heartbeat_s_ago": round(self.clock() - hb, 1) if hb else None,
                "heartbeat_timeout_s": self._timeout_of(node_id),
                "sample": None if s is None else {
                    "cpu_pct": s.cpu_pct, "load1": s.load1, "mem_pct": s.mem_pct, "disk_free_pct": s.disk_free_pct,
                    "gpus": [{"index": g.index, "util_pct": g.util_pct, "mem_pct": round(g.mem_pct, 1),
                              "temp_c": g.temp_c} for g in s.gpus]}}

    def _timeout_of(self, node_id: str) -> float:
        """The heartbeat timeout in force for the node (``policy.health.heartbeat_timeout_s``)."""
        with self._health_lock:
            lag = self._lag(node_id)
        return heartbeat_timeout_s(thresholds(), lag)

    # ------------------------------------------------------------------ loop
    def tick(self, now: float) -> None:
        """Every ``HEALTH_PASS_INTERVAL_S`` (at once after a rank died with its node): judge every
        node, start missing monitors, move the gangs off excluded nodes."""
        if not self.enabled or now - self._last_pass < C.HEALTH_PASS_INTERVAL_S:
            return
        self._last_pass = now
        th = thresholds()
        nodes = self.nodes.nodes(C.HEALTH_NODES_TTL_S)
        by_host: dict[str, list[str]] = {}
        for n in nodes:
            if n["alive"]:
                by_host.setdefault(n.get("address") or n["id"], []).append(n["id"])
        self._shared = {nid for ids in by_host.values() if len(ids) > 1 for nid in ids}
        self._peers = {nid: ids for ids in by_host.values() for nid in ids}
        for n in nodes:
            nid = n["id"]
            if n["alive"] and nid not in self._monitors:
                self._guard(f"monitor {nid}", self._start_monitor, nid)
            if not n["alive"] and nid not in self._watch_since:
                continue  # dead before we watched it: nothing of ours ran there
            self._watch_since.setdefault(nid, now)
            with self._health_lock:
                hb = self._hb_at.get(nid)
                died = self._died_at.get(nid)
                if died is not None and hb is not None and hb > died + C.HEALTH_INTERVAL_S:
                    self._died_at.pop(nid, None)  # it heartbeats after all: the signal was wrong
                    died = None
                ctx = HealthContext(nid, bool(n["alive"]), hb, self._watch_since[nid],
                                    self._samples.get(nid), max(0, self._failures.get(nid, 0) - 1), th,
                                    host_shared=nid in self._shared, node_died=died is not None,
                                    heartbeat_lag_s=self._lag(nid))
            v = verdict(ctx, now)
            self._judge(nid, v, now)
        for nid in [m for m in self._monitors if not any(n["id"] == m and n["alive"] for n in nodes)]:
            self._monitors.pop(nid, None)  # it died with its node
        self._excluded_changed()
        self._evacuate(now)

    def _lag(self, node_id: str) -> float:
        """How late the node's last heartbeats came — on a host of several nodes, any of the host's:
        the host, not the node, is what makes them late. (Called under ``_health_lock``.)"""
        return max((x for n in self._peers.get(node_id, (node_id,)) for x in self._late.get(n, ())), default=0.0)

    def _start_monitor(self, node_id: str) -> None:
        self._monitors[node_id] = self.ops.ensure_monitor(node_id, self.handle, str(self.state_dir))

    def _judge(self, nid: str, v: HealthVerdict, now: float) -> None:
        old = self._verdicts.get(nid)
        self._verdicts[nid] = v
        if old is None or old.state != v.state or (v.state != HealthState.HEALTHY and old.reasons != v.reasons):
            level = logging.WARNING if v.state == HealthState.UNHEALTHY else logging.INFO
            log.log(level, "node %s: %s (score %.0f) %s", nid, v.state.value, v.score, "; ".join(v.reasons))
            self._guard(f"health of {nid}", self.node_health.set_state, nid, v.state.value, v.score,
                        list(v.reasons), now, now)
        if v.state == HealthState.UNHEALTHY and (old is None or old.state != HealthState.UNHEALTHY):
            self._guard(f"notify {nid}", self.notifier.emit, "node_unhealthy", {"node": nid},
                        f"node {nid[:16]} is unhealthy", "; ".join(v.reasons))
        elif v.state == HealthState.HEALTHY and old is not None and old.state == HealthState.UNHEALTHY:
            self._guard(f"notify {nid}", self.notifier.emit, "node_recovered", {"node": nid},
                        f"node {nid[:16]} is healthy again", "its checks pass again", True)
        if v.state == HealthState.UNHEALTHY:
            self._unhealthy.setdefault(nid, now)
            self._healthy_since.pop(nid, None)
        elif nid in self._unhealthy:
            since = self._healthy_since.setdefault(nid, now) if v.state == HealthState.HEALTHY else None
            if since is None:
                self._healthy_since.pop(nid, None)
            elif now - since >= C.HEALTH_RECOVER_S:
                log.info("node %s healthy for %.0f s: used again", nid, now - since)
                self._unhealthy.pop(nid, None)
                self._healthy_since.pop(nid, None)

    def _excluded_changed(self) -> None:
        key = frozenset(self.excluded())
        if key != self.excluded_key:
            self.excluded_key = key
            self._excluded_changed_cb()  # the free view changed

    def _evacuate(self, now: float) -> None:
        """Move the gangs running on excluded alive nodes, checkpoint first (``control/evacuation.py``);
        stop moving those no longer on one (healthy again, undrained)."""
        excluded = self.excluded()
        alive = {n["id"] for n in self.nodes.nodes(C.NODE_TOTALS_TTL_S) if n["alive"]} if excluded else set()
        gangs = self._placed_gangs()
        here = {rec.id for rec, _nodes in gangs}
        self._stays = {j: w for j, w in self._stays.items() if j in here}
        for rec, nodes in gangs:
            jid = rec.id
            bad = [n for n in nodes if n in excluded and n in alive]
            if not bad:
                self.evacuations.cancel(jid, _HEALTH_CAUSES)
                continue
            drained = [n for n in bad if n in self._drained]
            cause = Cause.NODE_DRAINED if drained else Cause.NODE_UNHEALTHY
            why = (f"moved off node {bad[0]} drained ({self._drained[drained[0]]})" if drained else
                   f"moved off node {bad[0]} unhealthy: "
                   f"{'; '.join(self._verdicts[bad[0]].reasons) if bad[0] in self._verdicts else ''}")
            moving = self.evacuations.moves.get(jid)
            silent = [n for n in bad if any(r.startswith("no heartbeat") for r in self._verdicts.get(n, _NONE).reasons)]
            if not silent and moving is None and not self._room_elsewhere(jid, excluded):
                why_stay = f"stays on {bad[0][:16]}: no healthy node has room for it now"
                if self._stays.get(jid) != why_stay:
                    self._stays[jid] = why_stay
                    log.warning("%s: %s; %s", jid, why, why_stay)
                continue
            self._stays.pop(jid, None)
            if silent:  # presumed dead: no checkpoint will come, move it now
                self.evacuations.move_now(rec, Cause.NODE_UNHEALTHY, f"moved off node {silent[0]}: no heartbeat",
                                          now, "presumed dead")
            elif moving is None:
                self.evacuations.ask(rec, cause, why, C.HEALTH_EVACUATE_WAIT_S, MoveKind.RECOVER, now)


_HEALTH_CAUSES = frozenset({Cause.NODE_UNHEALTHY, Cause.NODE_DRAINED})
