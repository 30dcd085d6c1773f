"""The BudgetAutoscaler: how many GPU nodes of which type an elastic cluster holds, within its
min/max workers and its hourly budget. A thin actor over ``BudgetLoop``; the decisions are the pure
``policy.budget.decide``; every outside call goes through ``control.elastic.scaling.ScalingOps``.

Owns: the loop's memory between passes (since when each node is idle, since when utilisation is
low, the last scale-up, the events and waiting reasons last written) and one pass, in three steps:

* observe — held nodes repriced at their markets' prices now (spot prices move: a rise past the
  cap is shed by the policy in this same pass), gangs on a node with a preemption notice asked to
  checkpoint now; the live autoscaling config, the provider's rentals and the hard cap, each node type's
  offers (price, slots), Ray's node table (free GPUs/CPUs of each rented node), the Coordinator's
  waiting gangs;
* decide — ``policy.budget.decide`` (the same function the what-if simulator replays);
* apply — give back the nodes it releases (drained first; a node jobs run on in a thread of its
  own, after its gangs were asked to checkpoint — ``ctx.should_checkpoint`` answers yes once —
  and have, or SHED_CHECKPOINT_WAIT_S passed), write each node type's min/max workers
  into the live autoscaling config (Ray's autoscaler v2 re-reads it every tick and launches only
  within them: Ray does the mechanics, this policy decides), Ray's own idle timeout as a backstop
  (idle timeout + cooldown), new scaling events, and the waiting reasons (``budget 0.48/0.60
  USD/h, needs 0.32 more``) to the Coordinator.

The provider refuses any rent past the cap whatever asks for it (``node_provider``): the last guard.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import ray

from raycluster import constants as C
from raycluster.policy.budget import (BudgetContext, BudgetDecision, Gang, HeldNode, NodeType, ReleaseCause,
                                     RunningGang, decide)
from raycluster.provision.autoscaling import budget_config, budget_view
from raycluster.labels import RENTAL_LABEL

log = logging.getLogger("raycluster.budget")


class BudgetLoop:
    def __init__(self, ops, clock=time.time):
        self.ops = ops
        self.clock = clock
        self.idle_since: dict[str, float] = {}
        self.low_util_since: float | None = None
        self.last_scale_up_at: float | None = None
        self._last_events: set[tuple[str, str]] = set()
        self._last_reasons: dict[str, str] | None = None
        self.last: dict[str, Any] = {}
        self.busy: set[str] = set()  # the held nodes something ran on at the last look
        # busy nodes being given back (their gangs checkpointing first): rental id -> node type
        self.going: dict[str, str] = {}
        self._noticed: set[str] = set()  # nodes with a preemption notice whose gangs were asked to checkpoint
        self.sick: dict[str, tuple[str, str]] = {}  # unhealthy rented nodes to give back: id -> (type, why)
        # a move for cost under way: the node being given back -> the held nodes whose
        # free room its gangs will take (not idle for the policy until that node is gone)
        self.reserved: dict[str, tuple[str, ...]] = {}
        self._threads: list[threading.Thread] = []

    # ---- observe -------------------------------------------------------------------------------------
    def context(self, now: float) -> tuple[BudgetContext, dict[str, str], dict[str, Any]]:
        """(the policy's context, rental id -> Ray node id, the config read)."""
        try:
            self.ops.reprice()  # spot prices moved: the held set is priced as billed now
        except Exception:
            log.exception("repricing held nodes failed; deciding on the prices as recorded")
        config = self.ops.config()
        provider = config.get("provider") or {}
        head = config.get("head_node_type")
        limits = self.ops.original_limits(config)
        cfg = budget_config(provider.get("budget"),
                            idle_timeout_s=float(provider.get("idle_timeout_s",
                                                              float(config.get("idle_timeout_minutes", 1)) * 60)),
                            max_workers=int(config.get("max_workers", 8)), max_hourly_budget_usd=self.ops.cap())
        _cap, priced = budget_view(config)
        configured = {t.name: t.usd_per_hour for t in priced}
        types = []
        for name, t in (config.get("available_node_types") or {}).items():
            if name == head:
                continue
            nc = t.get("node_config") or {}
            price, slots = self.ops.offers(nc)
            if price is None:
                price = configured.get(name, float("inf"))
            res = t.get("resources") or {}
            types.append(NodeType(name, nc.get("kind", "on_demand"), float(price), gpus=int(res.get("GPU", 0)),
                                  cpus=float(res.get("CPU", 0)), available=int(slots),
                                  max_workers=int(limits.get(name, {}).get("max_workers", t.get("max_workers", 0)))))
        by_type = {t.name: t for t in types}
        ray_nodes = {n["labels"].get(RENTAL_LABEL): n for n in self.ops.nodes()
                     if n.get("alive") and RENTAL_LABEL in (n.get("labels") or {})}
        held, ray_ids, gpus_total, gpus_used = [], {}, 0.0, 0.0
        live, busy = set(), set()
        rentals = self.ops.rentals()
        for r in rentals:
            if r.preempt_deadline is not None and r.id not in self._noticed:
                self._noticed.add(r.id)  # taken back soon: its gangs save what they can now
                try:
                    self.ops.checkpoint_now(r.id, "its spot node was taken back by the market (notice)",
                                            "spot_preempted")
                except Exception:
                    log.exception("asking the gangs on %s to checkpoint failed", r.id)
        self._noticed &= {r.id for r in rentals}
        try:
            sick = self.ops.unhealthy()
        except Exception:
            log.exception("reading node health failed; deciding without it")
            sick = {}
        self.sick = {}
        self.reserved = {od: ids for od, ids in self.reserved.items() if od in self.going}
        reserved = {x for ids in self.reserved.values() for x in ids}
        for r in rentals:
            if r.id in self.going or getattr(r.state, "value", r.state) == "releasing":
                continue  # on its way out: neither held nor counted by the policy
            if r.id in sick:  # released and replaced: not held, so the policy rents for its gangs again
                self.sick[r.id] = (r.node_type, f"unhealthy: {sick[r.id]}")
                if r.id in ray_nodes:
                    ray_ids[r.id] = ray_nodes[r.id]["id"]
                continue
            live.add(r.id)
            node = ray_nodes.get(r.id)
            t = by_type.get(r.node_type)
            if node is None:  # starting (or not joined yet): its whole room is coming
                self.idle_since.pop(r.id, None)
                held.append(HeldNode(r.id, r.node_type, r.kind, r.usd_per_hour, free_gpus=t.gpus if t else 0,
                                     free_cpus=t.cpus if t else 0, starting=True))
                continue
            ray_ids[r.id] = node["id"]
            total, free = node["resources_total"], node["resources_free"]
            g_total, g_free = float(total.get("GPU", 0)), float(free.get("GPU", 0))
            gpus_total += g_total
            gpus_used += g_total - g_free
            idle = all(abs(float(free.get(k, 0)) - float(v)) < 1e-9 for k, v in total.items() if k in ("GPU", "CPU"))
            if idle and r.id in reserved:
                idle = False  # gangs moved for cost will be placed on it
            if idle:
                self.idle_since.setdefault(r.id, now)
            else:
                self.idle_since.pop(r.id, None)
                busy.add(r.id)
            held.append(HeldNode(r.id, r.node_type, r.kind, r.usd_per_hour, free_gpus=g_free,
                                 free_cpus=float(free.get("CPU", 0)),
                                 idle_s=now - self.idle_since[r.id] if idle else 0.0))
        for gone in set(self.idle_since) - live:
            del self.idle_since[gone]
        self.busy = busy
        waiting = tuple(Gang(w["job_id"], int(w["bundles"]), float(w["gpus"]), float(w["cpus"]),
                             strict_spread=bool(w.get("strict_spread")), spot=w.get("spot", "auto"),
                             preemptions=int(w.get("preemptions", 0))) for w in self.ops.waiting())
        try:
            running = tuple(RunningGang(Gang(r["job_id"], int(r["bundles"]), float(r["gpus"]), float(r["cpus"]),
                                             strict_spread=bool(r.get("strict_spread")), spot=r.get("spot", "auto"),
                                             preemptions=int(r.get("preemptions", 0))),
                                        tuple(r["rentals"]), float(r["usd_per_hour"]), float(r["remaining_s"]),
                                        int(r.get("moves_last_hour", 0)), bool(r.get("preemptible", True)))
                            for r in self.ops.running())
        except Exception:  # spot return waits for the next pass; nothing else depends on it
            log.exception("reading the running gangs failed; no move for cost this pass")
            running = ()
        ctx = BudgetContext(cfg, tuple(types), tuple(held), waiting,
                            gpus_used / gpus_total if gpus_total else None, self.low_util_since, self.last_scale_up_at,
                            running=running)
        return ctx, ray_ids, config

    # ---- one pass -----------------------------------------------------------------------------------
    def step(self) -> BudgetDecision:
        now = self.clock()
        ctx, ray_ids, _config = self.context(now)
        d = decide(ctx, now)
        self.low_util_since, self.last_scale_up_at = d.low_util_since, d.last_scale_up_at
        self._apply(ctx, d, ray_ids)
        self.last = {"at": now, "launch": dict(d.launch), "release": [r.node_id for r in d.release],
                     "waiting": len(d.waiting), "committed_usd_per_hour": d.committed_usd_per_hour,
                     "cap_usd_per_hour": ctx.config.max_hourly_budget_usd, "gpu_util": ctx.gpu_util}
        return d

    def _apply(self, ctx: BudgetContext, d: BudgetDecision, ray_ids: dict[str, str]) -> None:
        released = set()
        for rental_id, (node_type, reason) in self.sick.items():  # checkpoint (if it can), drain, release
            self.going[rental_id] = node_type
            log.warning("giving back %s: %s", rental_id, reason)
            self.ops.event("release_unhealthy", f"{rental_id} {reason}", node_type, 1)
            t = threading.Thread(target=self._release_busy,
                                 args=(rental_id, reason, ray_ids.get(rental_id), "node_unhealthy"),
                                 name=f"release-{rental_id}", daemon=True)
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
            t.start()
        for rental_id, reason, cause in d.release:
            if rental_id in self.busy:  # jobs run there: checkpoint, then drain and release (not blocking the loop)
                self.going[rental_id] = next(n.node_type for n in ctx.held if n.id == rental_id)
                released.add(rental_id)  # (counted below as going until it is released)
                # (a move for cost keeps its own cause on the job; any other busy release is the budget's)
                move_cause = cause.value if cause in (ReleaseCause.SPOT_RETURN, ReleaseCause.CONSOLIDATE) else "budget"
                if rental_id in d.reserved:
                    self.reserved[rental_id] = d.reserved[rental_id]
                t = threading.Thread(target=self._release_busy,
                                     args=(rental_id, reason, ray_ids.get(rental_id), move_cause),
                                     name=f"release-{rental_id}", daemon=True)
                self._threads = [x for x in self._threads if x.is_alive()] + [t]
                t.start()
                continue
            try:
                self.ops.release(rental_id, reason, ray_ids.get(rental_id))
                released.add(rental_id)
            except Exception:
                log.exception("releasing %s failed", rental_id)
        counts: dict[str, int] = {}
        for n in ctx.held:
            if n.id not in released:
                counts[n.node_type] = counts.get(n.node_type, 0) + 1
        for node_type in list(self.going.values()):  # still there until released: Ray must not stop it first
            counts[node_type] = counts.get(node_type, 0) + 1
        limits, left_min = {}, ctx.config.min_workers
        for t in sorted(ctx.types, key=lambda t: (t.usd_per_hour, t.name)):
            hi = min(t.max_workers, counts.get(t.name, 0) + d.launch.get(t.name, 0))
            lo = min(hi, left_min)
            left_min -= lo
            if d.launch.get(t.name):
                # a launch is written as the type's min too: Ray's autoscaler packs the bundles it is
                # told without the gang's strategy (a STRICT_SPREAD gang's half-GPU bundles fit the free
                # half of one held node) and would launch nothing; once rented, the node counts as held
                lo = hi
            limits[t.name] = (lo, hi)
        backstop_min = (ctx.config.idle_timeout_s + ctx.config.cooldown_s) / 60.0
        if self.ops.write_limits(limits, idle_timeout_minutes=backstop_min):
            log.info("node type limits now %s (launch %s, release %s, committed %.2f USD/h)", limits, d.launch,
                     [r.node_id for r in d.release], d.committed_usd_per_hour)
        events = {(e.action, e.reason): e for e in d.events}
        for key in events.keys() - self._last_events:  # a situation that lasts is recorded once
            e = events[key]
            self.ops.event(e.action, e.reason, e.node_type, e.count)
        self._last_events = set(events)
        if d.waiting != self._last_reasons:
            self.ops.set_waiting(dict(d.waiting))
            self._last_reasons = dict(d.waiting)

    def _release_busy(self, rental_id: str, reason: str, ray_node_id: str | None, cause: str = "budget") -> None:
        try:
            self.ops.release_after_checkpoint(rental_id, reason, ray_node_id, cause=cause)
        except Exception:
            log.exception("releasing %s failed", rental_id)
        finally:
            self.going.pop(rental_id, None)

    def join(self, timeout_s: float = 60.0) -> None:
        """Wait for the busy nodes being given back (tests)."""
        for t in list(self._threads):
            t.join(timeout_s)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=8)
class BudgetAutoscaler:
    """Named, detached, restartable, on the head; runs ``BudgetLoop.step`` every BUDGET_INTERVAL_S."""

    def __init__(self, state_dir: str, settings: dict | None = None):
        from raycluster.settings import of

        of(settings).install()
        self.state_dir = state_dir
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from raycluster.control.handles import get_handle
        from raycluster.control.elastic.scaling import ScalingOps

        self.ops = ScalingOps(state_dir, coordinator=get_handle(C.COORDINATOR_NAME))
        self.loop = BudgetLoop(self.ops)
        self.passes = 0
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="budget", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(C.BUDGET_INTERVAL_S):
            try:
                self.loop.step()
                self.passes += 1
            except Exception:  # one pass failing never stops the loop
                log.exception("budget pass failed")

    def ping(self) -> dict:
        return {"ok": True, "passes": self.passes}

    def status(self) -> dict:
        return {"passes": self.passes, **self.loop.last}

