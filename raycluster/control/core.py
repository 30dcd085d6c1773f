"""The Coordinator's logic: the durable priority queue and every call users make on it.

Owns: ``CoordinatorCore`` — submit (validation, entrypoint check, feasibility against the
cluster's node totals, idempotency), get/list/cancel, metric reports (buffered, flushed by the
loop), rank-log tails and cluster status — on top of ``Reconciler`` (the control loop, see
``control/reconcile.py``). A plain class, driven by any ``GangOps``: the unit tests run it with a
fake, the ``Coordinator`` actor (``control/coordinator.py``) with the real RayOps.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from typing import Any

from raycluster import constants as C
from raycluster.control.gangs import spot_of, world_of
from raycluster.control.rayops import pg_name
from raycluster.control.reconcile import Reconciler
from raycluster.errors import IdempotencyKeyReused, IllegalTransition, InvalidJobSpec
from raycluster.labels import rental_of
from raycluster.policy.evacuation import MoveKind
from raycluster.policy.cost_moves import expected_remaining_s
from raycluster.policy.tenants import held_by_quota
from raycluster.provision import spend
from raycluster.provision.market import registry
from raycluster.rank.logs import read_rank_logs
from raycluster.spec import JobSpec, gcs_uris, parse_spec
from raycluster.store.lifecycle import Cause, JobState

log = logging.getLogger("raycluster.coordinator")


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


@contextlib.contextmanager
def _located(prefix: str):
    """Re-raise a spec error with the batch item it belongs to (``jobs[3].num_workers``)."""
    try:
        yield
    except InvalidJobSpec as exc:
        if not prefix:
            raise
        raise type(exc)(f"{prefix.rstrip('.')}: {exc.message}",
                        field=prefix + (f"spec.{exc.field}" if exc.field and exc.field != "spec" else "spec")) from None


class CoordinatorCore(Reconciler):
    # ------------------------------------------------------------------ submit
    def submit(self, spec_data: dict | str, idempotency_key: str | None = None, by: str | None = None) -> dict:
        return self._submit_all([(spec_data, idempotency_key)], lambda i: "", [by])[0]

    def submit_many(self, items: list[dict], by: str | list[str | None] | None = None) -> list[dict]:
        """Submit up to SUBMIT_BATCH_MAX jobs, each ``{"spec": ..., "idempotency_key": ...}``, all or
        none: an invalid one fails the batch naming ``jobs[i].<field>`` and nothing is created. An item
        whose key was used before answers the job made then (as a single submit would)."""
        if not isinstance(items, list) or not items:
            raise InvalidJobSpec("jobs must be a non-empty list of {spec, idempotency_key}", field="jobs")
        if len(items) > C.SUBMIT_BATCH_MAX:
            raise InvalidJobSpec(f"at most {C.SUBMIT_BATCH_MAX} jobs per batch, got {len(items)}", field="jobs")
        pairs, seen = [], set()
        for i, it in enumerate(items):
            if not isinstance(it, dict) or "spec" not in it or set(it) - {"spec", "idempotency_key"}:
                raise InvalidJobSpec(f"jobs[{i}] must be an object with a spec and an optional idempotency_key",
                                     field=f"jobs[{i}]")
            key = it.get("idempotency_key")
            if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 255 or key in seen):
                raise InvalidJobSpec(f"jobs[{i}].idempotency_key must be a string of 1-255 characters used once "
                                     "in the batch", field=f"jobs[{i}].idempotency_key")
            seen.add(key)
            pairs.append((it["spec"], key))
        bys = by if isinstance(by, list) else [by] * len(pairs)
        if len(bys) != len(pairs):
            raise InvalidJobSpec("by: one submitter per job", field="by")
        return self._submit_all(pairs, lambda i: f"jobs[{i}].", bys)

    def _submit_all(self, pairs: list[tuple[Any, str | None]], where, bys: list[str | None]) -> list[dict]:
        """Validate every spec (entrypoint importable, gang feasible), then insert the new ones in one
        transaction; ``where(i)`` prefixes the field an error names; ``bys[i]``: who submitted it (the
        API's caller, for the audit trail in its transitions)."""
        specs = []
        for i, (data, _key) in enumerate(pairs):
            with _located(where(i)):
                spec = parse_spec(data)
                if spec.schedule is not None:
                    raise InvalidJobSpec("schedule: a spec with a schedule makes a scheduled job: create it with "
                                         "POST /schedules (`raycluster submit` does it for you)", field="schedule")
                specs.append(spec)
        keys = [k for _d, k in pairs if k]
        existing = self.store.find_by_idempotency_keys(keys) if keys else {}
        for i, (spec, (_d, key)) in enumerate(zip(specs, pairs)):
            if key in existing and _canonical(existing[key].spec) != _canonical(spec.model_dump(mode="json")):
                raise IdempotencyKeyReused(f"{where(i)}idempotency key {key!r} was already used for job "
                                           f"{existing[key].id} with a different spec",
                                           field=f"{where(i)}idempotency_key")
        new = [(i, spec, key) for i, (spec, (_d, key)) in enumerate(zip(specs, pairs)) if key not in existing]
        for i, spec, _key in new:
            with _located(where(i)):
                self.gate.check(spec)
        rows = [dict(name=spec.name, spec=spec.model_dump(mode="json"), priority=spec.priority, tenant=spec.tenant,
                     idempotency_key=key, by=bys[i]) for i, spec, key in new]
        try:
            made = self.store.insert_many(rows, now=self.clock())
        except sqlite3.IntegrityError:  # a concurrent retry with one of the keys won the race: one by one
            made = []
            for row in rows:
                try:
                    made.append(self.store.insert(**row, now=self.clock()))
                except sqlite3.IntegrityError:
                    other = self.store.find_by_idempotency_key(row["idempotency_key"] or "")
                    if other is None:
                        raise
                    made.append(other)
        by_index = dict(zip((i for i, _s, _k in new), made))
        out = [by_index[i] if i in by_index else existing[key] for i, (_d, key) in enumerate(pairs)]
        if made:
            if len(made) == 1:
                spec = new[0][1]
                log.info("submitted %s (%s, priority %d, %d workers)", made[0].id, spec.name, spec.priority,
                         spec.num_workers)
            else:
                log.info("submitted %d jobs (%s ... %s)", len(made), made[0].id, made[-1].id)
            uris = sorted({u for _i, spec, _k in new for u in gcs_uris(spec.runtime_env)})
            if uris:  # keep uploaded packages alive after the submitting Ray job ends
                self._guard("pin packages", self.ops.pin_uris, uris, C.PACKAGE_PIN_S)
            self.wake()
        return [r.to_dict() for r in out]

    # ------------------------------------------------------------------ reads
    def get(self, job_id: str) -> dict:
        rec = self.store.get(job_id)
        out = rec.to_dict()
        out["transitions"] = self.store.transitions(job_id)
        out["cost_usd"] = self._costs([job_id])[job_id]
        att = self.attempts.get(job_id)
        if att is not None and att.nodes and att.attempt == rec.attempt:  # where each rank of this attempt runs
            try:
                rentals = {n["id"]: rental_of(n) for n in self.nodes.nodes(5.0)}
            except Exception:  # (the node table unreadable for a moment: the ranks without their rentals)
                log.warning("reading Ray's nodes for %s's ranks failed", job_id, exc_info=True)
                rentals = {}
            out["ranks"] = [{"rank": i, "node_id": n, "rental": rentals.get(n)} for i, n in enumerate(att.nodes)]
        if rec.spec.get("trials"):  # a sweep: its counts and best trial so far
            out["sweep"] = self.sweeps.summary(job_id, self._specs.get(job_id) or JobSpec.model_validate(rec.spec))
        return out

    def list_trials(self, job_id: str, limit: int = 1000, offset: int = 0, failed_only: bool = False) -> dict:
        """A sweep's per-trial results, page by page, and its summary."""
        rec = self.store.get(job_id)  # JobNotFound
        if not rec.spec.get("trials"):
            raise InvalidJobSpec(f"job {job_id} is not a sweep (its spec has no trials)", field="job_id")
        spec = self._specs.get(job_id) or JobSpec.model_validate(rec.spec)
        return self.sweeps.page(job_id, spec, limit, offset, failed_only)

    def list(self, states: list[str] | None = None, tenant: str | None = None, limit: int | None = None,
             offset: int = 0, newest_first: bool = False) -> list[dict]:
        st = [JobState(s) for s in states] if states else None
        out = [r.to_dict() for r in self.store.list(st, tenant, limit, offset, newest_first)]
        if self.ledger.elastic and out:
            costs = self._costs([j["id"] for j in out])
            for j in out:
                j["cost_usd"] = costs[j["id"]]
        return out

    def _costs(self, job_ids: list[str]) -> dict[str, float | None]:
        """What each job has cost so far (None when its cost cannot be read now; 0 on a fixed cluster)."""
        try:
            return self.ledger.costs(job_ids)
        except Exception:
            log.exception("cannot read the cost ledger")
            return dict.fromkeys(job_ids)

    def metrics(self, job_id: str, limit: int = 1000) -> list[dict]:
        self.store.get(job_id)
        self.reports.flush()
        return self.store.metrics_history(job_id, limit)

    def logs(self, job_id: str, tail_lines: int = 200, since: dict[str, int] | None = None) -> list[dict]:
        """The last ``tail_lines`` lines of every rank log of the job (attempts, then ranks), or with
        ``since`` the lines written after those byte offsets (``rank.logs.read_rank_logs``)."""
        self.store.get(job_id)  # JobNotFound
        return read_rank_logs(self.log_dir, job_id, tail_lines, since)

    # ------------------------------------------------------------------ the BudgetAutoscaler's view
    def budget_queue(self) -> list[dict]:
        """The gangs waiting for room (queued and already told why), in queue order: what the
        BudgetAutoscaler rents for. (Those it rents nothing for are left out of the demand told to
        Ray's autoscaler, ``_tell_demand``.)"""
        def gang(rec) -> dict:
            spec = self._spec(rec)
            b = spec.resources.bundle()
            # a gang being placed: its attempt's size; a queued elastic gang: rented for its smallest
            workers = (spec.min_workers or spec.num_workers) if rec.state == JobState.PENDING else world_of(rec, spec)
            return {"job_id": rec.id, "bundles": workers, "gpus": float(b.get("GPU", 0)),
                    "cpus": float(b.get("CPU", 0)), "spot": spot_of(rec, spec), "preemptions": rec.preemptions,
                    "strict_spread": spec.placement_strategy.value == "STRICT_SPREAD"}

        with self._lock:
            # gangs being placed (a recovered gang whose node was lost, say) wait for nodes first
            placing = [self._active[j] for j, att in self.attempts.items() if not att.placed and j in self._active]
            placing.sort(key=lambda r: (-r.priority, r.queued_at, r.id))
            out = [gang(r) for r in placing]
            for q in self.queue.ordered():
                rec = self._pending.get(q.job_id)
                # a job held by its tenant's quota would not start on a rented node either
                if rec is not None and rec.waiting is not None and q.bundles and not held_by_quota(rec.waiting):
                    out.append(gang(rec))
        return out

    def budget_running(self) -> list[dict]:
        """The gangs running on rented nodes, for spot return: shape and spot choice, the rentals
        they hold shares of (the ledger's open rows), what they cost per hour now, how long each is
        expected to run still (``policy.cost_moves.expected_remaining_s``), its moves for cost in
        the last hour and whether it may be moved."""
        if not self.ledger.elastic:
            return []
        now = self.clock()
        with self._lock:
            recs = [rec for jid, att in self.attempts.items()
                    if att.placed and (rec := self._active.get(jid)) is not None and rec.state == JobState.RUNNING]
            specs = {rec.id: self._spec(rec) for rec in recs}
        if not recs:
            return []
        ids = [rec.id for rec in recs]
        shares = self.ledger.open_shares(ids)  # job -> (its rentals, USD/h now)
        moves: dict[str, int] = {}
        for cause in (Cause.SPOT_RETURN, Cause.CONSOLIDATE):  # moves for cost
            for jid, k in self.store.count_transitions(ids, cause, now - 3600.0).items():
                moves[jid] = moves.get(jid, 0) + k
        out = []
        for rec in recs:
            if rec.id not in shares:
                continue
            spec = specs[rec.id]
            b = spec.resources.bundle()
            elapsed = now - (rec.started_at if rec.started_at is not None else now)
            out.append({"job_id": rec.id, "bundles": world_of(rec, spec), "gpus": float(b.get("GPU", 0)),
                        "cpus": float(b.get("CPU", 0)), "spot": spec.spot, "preemptions": rec.preemptions,
                        "strict_spread": spec.placement_strategy.value == "STRICT_SPREAD",
                        "rentals": shares[rec.id][0], "usd_per_hour": round(shares[rec.id][1], 6),
                        "remaining_s": expected_remaining_s(elapsed, spec.max_runtime_s),
                        "moves_last_hour": moves.get(rec.id, 0), "preemptible": spec.preemptible})
        return out

    def set_budget_reasons(self, reasons: dict[str, str]) -> None:
        """Why no node is rented for these waiting jobs (budget, max_workers); shown as their reason."""
        with self._lock:
            self.admission.set_budget_reasons(reasons, {j for j, att in self.attempts.items() if not att.placed})
        self.wake()

    def tenants_view(self) -> dict:
        """Each tenant's quota, what it holds now, its decayed usage and fair-share factor."""
        with self._lock:
            gangs = self._gangs_holding()
            queued = [j.tenant for j in self.queue.ordered()]
        return self.tenancy.view(gangs, queued)

    # ------------------------------------------------------------------ moves asked by the BudgetAutoscaler
    def _gangs_on(self, rental_id: str, ray_node_id: str | None) -> list[tuple[str, int]]:
        """(job, attempt) of every gang on a rented node: by the usage ledger's attribution, and by
        the Ray node id its placement group sits on (a gang placed just as the node joined may not be
        attributed to its rental yet)."""
        found = list(self.ledger.usage.open_on(rental_id)) if self.ledger.elastic else []
        if ray_node_id:
            found += [(jid, att.attempt) for jid, att in self.attempts.items()
                      if att.placed and ray_node_id in (att.nodes or ())]
        return list(dict.fromkeys(found))

    def checkpoint_now(self, rental_id: str, reason: str, cause: str = "budget",
                       ray_node_id: str | None = None) -> dict[str, list]:
        """Start moving every gang running on the rented node ``rental_id`` (``control/evacuation.py``,
        a move its asker ends with ``move_off`` once the node is drained): each is asked to
        checkpoint at its next chance. {job id: [attempt, its newest complete checkpoint step
        before, or None]}, for ``checkpoint_pending``."""
        cause_ = Cause(cause)
        out: dict[str, list] = {}
        with self._lock:
            found = self._gangs_on(rental_id, ray_node_id)
            for job_id, attempt in found:
                rec, att = self._active.get(job_id), self.attempts.get(job_id)
                if rec is None or att is None or att.attempt != attempt or rec.state != JobState.RUNNING:
                    continue
                move = self.evacuations.ask(rec, cause_, reason, C.SHED_CHECKPOINT_WAIT_S, MoveKind.HOLD,
                                            self.clock())
                if move is not None:
                    out[job_id] = [move.attempt, move.before_step]
        return out

    def move_off(self, rental_id: str, cause: str, reason: str, ray_node_id: str | None = None) -> list[str]:
        """(The BudgetAutoscaler, giving a busy rented node back: after its gangs checkpointed and
        Ray stopped placing there.) End the move of every gang running on ``rental_id`` now — RUNNING →
        RECOVERING with ``cause`` (``budget``, ``node_unhealthy``), no restart spent — so that
        releasing the node costs none of them a restart. The jobs moved."""
        cause_ = Cause(cause)
        moved = []
        with self._lock:
            found = self._gangs_on(rental_id, ray_node_id)
            for job_id, attempt in found:
                rec = self._active.get(job_id)
                att = self.attempts.get(job_id)
                if rec is None or att is None or att.attempt != attempt or rec.state != JobState.RUNNING:
                    continue
                if self._guard(f"move {job_id}", self.evacuations.move_now, rec, cause_,
                               f"{reason}; its node {rental_id} is given back", self.clock()):
                    moved.append(job_id)
        if moved:
            log.info("moved off %s (%s): %s", rental_id, cause, ", ".join(moved))
            self.wake()
        return moved

    def checkpoint_pending(self, asked: dict[str, list]) -> list[str]:
        """The jobs of ``asked`` (as ``checkpoint_now`` answered) still running that attempt without
        a newer complete checkpoint."""
        with self._lock:
            return self.evacuations.pending(asked)

    # ------------------------------------------------------------------ rentals (elastic clusters)
    def rentals(self, include_released: bool = False) -> list[dict]:
        """The rented nodes (and the head) with market, kind, price, state and cost so far."""
        return registry.rentals(self.state_dir, include_released, self.clock())

    def preempt(self, node: str, notice_s: float | None = None) -> dict:
        """The local market takes a spot node back: a notice now, the node stopped at the deadline."""
        return registry.preempt(self.state_dir, node, notice_s)

    def cost(self) -> dict:
        """Spend rate now, the cap, spend so far and today, by kind and node type, saved by spot."""
        return spend.cost(self.state_dir, self.clock())

    def events(self, limit: int = 100) -> list[dict]:
        """The newest scaling decisions with their reasons (BudgetAutoscaler, provider refusals)."""
        return spend.events(self.state_dir, limit)

    def set_budget(self, usd_per_hour: float | None) -> dict:
        """Change the hard cap at run time (None: back to the config's)."""
        return spend.set_budget(self.state_dir, usd_per_hour)

    def metrics_snapshot(self) -> dict:
        """What the MetricsCollector turns into Prometheus families at a scrape: unfinished jobs only
        (a finished job's series are gone), every node's health, counts, the submit→running histogram."""
        recs = self.store.active_progress()
        costs, rates = {}, {}
        if self.ledger.elastic and recs:
            ids = [r["id"] for r in recs]
            costs = self._costs(ids)
            try:
                rates = self.ledger.rates(ids)
            except Exception:
                log.exception("metrics: cannot read the jobs' cost rates")
        jobs = []
        for r in recs:
            m = r.pop("last_metrics")
            jobs.append({**r, "step": m.get("step"), "loss": m.get("loss"), "accuracy": m.get("accuracy", m.get("acc")),
                         "cost_usd": costs.get(r["id"]), "cost_usd_per_hour": rates.get(r["id"])})
        total, free = self.nodes.totals_and_free(C.NODE_TOTALS_TTL_S)
        key = "GPU" if sum(t.get("GPU", 0) for t in total.values()) else "CPU"
        tot = sum(t.get(key, 0) for t in total.values())
        used = tot - sum(f.get(key, 0) for f in free.values())
        out = {"at": self.clock(), "jobs_by_state": self.store.count_by_state(),
               "queue_by_priority": self.store.queue_depth_by_priority(), "jobs": jobs,
               "submit_to_running": self.submit_to_running.snapshot(), "nodes": self.health.health_view(),
               "utilization_pct": round(100.0 * used / tot, 2) if tot else 0.0, "events_by_action": {},
               "queue_oldest_wait_s": max((self.clock() - r.queued_at for r in self._pending.values()), default=0.0),
               "loop_parts": self.timings.view()}
        if self.ledger.elastic:
            try:
                c = self.cost()
                out["cost_usd_per_hour"] = c["committed_usd_per_hour"]
                out["budget_usd_per_hour"] = c["max_hourly_budget_usd"]
                for e in self.events(10_000):
                    out["events_by_action"][e["action"]] = out["events_by_action"].get(e["action"], 0) + 1
            except Exception:
                log.exception("metrics: cannot read the cost books")
        return out

    def cluster_status(self) -> dict:
        total, free = self.nodes.totals_and_free(0.0)

        def _sum(d: dict[str, dict[str, float]], key: str) -> float:
            return sum(r.get(key, 0.0) for r in d.values())

        queue = self.store.queue_depth_by_priority()
        return {
            "nodes": len(total),
            "gpus_total": _sum(total, "GPU"), "gpus_free": _sum(free, "GPU"),
            "cpus_total": _sum(total, "CPU"), "cpus_free": _sum(free, "CPU"),
            "jobs_by_state": self.store.count_by_state(),
            "queue_depth_by_priority": {str(k): v for k, v in sorted(queue.items(), reverse=True)},
            "coordinator_uptime_s": self.clock() - self.started_at,
        }

    # ------------------------------------------------------------------ writes
    def cancel(self, job_id: str, by: str | None = None) -> dict:
        with self._lock:
            rec = self.store.get(job_id)
            if rec.state.terminal:
                raise IllegalTransition(f"job {job_id} is already {rec.state.value}; nothing to cancel")
            rec = self.store.transition(job_id, rec.state, JobState.CANCELLED, cause=Cause.CANCELLED,
                                        reason=f"cancelled by {by or 'user'}", finished_at=self.clock())
            self._note(rec)
            if self.gangs.end(job_id) is None:
                self.ops.remove_pg_by_name(pg_name(job_id, rec.attempt))
        log.info("cancelled %s", job_id)
        return rec.to_dict()

    def report(self, job_id: str, attempt: int, step: int | None, metrics: dict[str, Any]) -> None:
        self.reports.report(job_id, attempt, step, metrics)
