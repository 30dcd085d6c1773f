"""The what-if simulator: a job trace replayed in simulated time against a market model, through
the live system's own policies — ``policy.admission.AdmissionQueue`` (which queued gangs start),
with its ``policy.placement`` first fit (where) and ``policy.budget.decide`` (which nodes to hold) —
never a copy. Gangs that must run on spot (or never) ask for the kind's marker resource that every
held node carries, as live (``policy.budget.with_kind``).
Pure (no Ray, no I/O), deterministic for a seed.

Model: a node is rented ``launch_delay_s`` before it can be used and billed from its request to its
release; spot nodes are preempted at ``preemption_rate_per_hour`` (exponential), and a job on a
preempted node loses the work since its last checkpoint (every ``checkpoint_every_s``) and is queued
again (counted); a job runs ``duration_s`` of work once placed. Moves for cost (spot return,
consolidation: ``policy.cost_moves``, told the running gangs as live — their nodes, their shares'
prices, their expected remaining runtime from how long they have run, their moves in the last hour)
keep the work done (checkpointed first) and add ``move_overhead_s`` of work to the moved job (its
checkpoint and restart); a gang moved back to spot is placed again on spot only and ahead of the
queue (as live: its next attempt's placement group asks for spot, made at once). An elastic gang (``min_workers``) is admitted at the largest size that
fits (``policy.admission``, as live), rented for at its smallest (as live), works at the rate of its
size (``duration_s`` is its work at ``workers``), and grows into free room by ``policy.elastic``'s
rule (a move: work kept, ``move_overhead_s`` added). With ``tenants`` (a tenants config), admission
is handed the live ``QuotaView``: each tenant's holding gangs, its spend rate now and so far this
UTC day and month (simulated time is UTC epoch seconds: t=0 is a day's start), so a tenant over a
quota or budget waits (and is not rented for) as live. The budget policy decides every
``tick_s``; admission runs whenever something changed. The same trace on a fixed pool of on-demand
nodes sized for the peak (held all day, admission only) is the comparison.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field
from typing import Any, Iterable

from raycluster.policy.admission import AdmissionQueue, QueuedJob
from raycluster.policy.budget import (KIND_RESOURCE, KIND_RESOURCE_UNITS, BudgetConfig, BudgetContext, Gang, HeldNode,
                                      NodeType, ReleaseCause, RunningGang, decide, with_kind)
from raycluster.policy.cost import node_share
from raycluster.policy.cost_moves import expected_remaining_s
from raycluster.policy.elastic import GrowContext, decide_grow, size_that_fits, with_gang_back
from raycluster.policy.sim_bounds import why_never
from raycluster.policy.sim_types import MarketModel, TraceJob
from raycluster.policy.tenants import Demand, QuotaView, TenantsConfig, TenantSpend, held_by_quota, period_starts, tenant_of


@dataclass
class SimReport:
    jobs: int = 0
    rejected: int = 0  # gangs that could never run (too big for the node types / the pool, or the budget)
    finished: int = 0
    cost_usd: float = 0.0
    wait_p50_s: float = 0.0
    wait_p99_s: float = 0.0
    utilisation: float = 0.0  # GPU-seconds used / GPU-seconds held
    preemptions: int = 0
    moves: dict = field(default_factory=dict)  # moves for cost by cause (spot_return, consolidate)
    peak_nodes: int = 0
    peak_usd_per_hour: float = 0.0  # the highest committed spend rate (starting nodes included)
    makespan_s: float = 0.0
    node_hours: float = 0.0
    # where the money went: by node kind; node-hours starting (rented, not usable yet) and idle (usable, no job)
    cost_by_kind_usd: dict = field(default_factory=dict)
    cost_by_tenant_usd: dict = field(default_factory=dict)  # the jobs' shares of their nodes, by tenant
    starting_node_hours: float = 0.0
    idle_node_hours: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        def r(v):
            return round(v, 4) if isinstance(v, float) else ({k: r(x) for k, x in v.items()} if isinstance(v, dict) else v)

        return {k: r(v) for k, v in self.__dict__.items()}


@dataclass
class _Node:
    id: str
    type: NodeType
    start: float
    ready_at: float
    free_gpus: float
    free_cpus: float
    idle_since: float
    end: float | None = None
    jobs: set = field(default_factory=set)
    idle_total_s: float = 0.0  # usable with no job on it, summed (the bill's idle share)

    def idle_until(self, t: float) -> None:
        """Count the idle stretch that ends at ``t`` (a job placed, the node released)."""
        if not self.jobs:
            self.idle_total_s += max(0.0, t - max(self.idle_since, self.ready_at))


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def simulate(trace: Iterable[TraceJob], market: MarketModel, config: BudgetConfig, *, tick_s: float = 60.0,
             seed: int = 0, fixed_pool: dict[str, int] | None = None, horizon_s: float | None = None,
             grow_interval_s: float = 30.0, tenants: TenantsConfig | None = None) -> SimReport:
    """Replay ``trace``. With ``fixed_pool`` (type name -> nodes), hold exactly that pool from t=0 to
    the end and never call the budget policy. ``grow_interval_s``: an elastic gang's least running
    time before it grows (the live ``ELASTIC_GROW_INTERVAL_S``)."""
    rng = random.Random(seed)
    jobs = sorted(trace, key=lambda j: (j.arrival_s, j.job_id))
    total = len(jobs)
    jobs = [j for j in jobs if why_never(j, market, config, fixed_pool) is None]  # refused at submit, as live
    by_id = {j.job_id: j for j in jobs}
    types = {t.name: t for t in market.types}
    queue = AdmissionQueue(starvation_threshold_s=1800.0, aging_s=3600.0)
    nodes: dict[str, _Node] = {}
    running: dict[str, tuple[float, float, dict[str, int]]] = {}  # job -> (started, ends, node -> bundles)
    left = {j.job_id: j.duration_s for j in jobs}  # work left, in seconds at the gang's largest size
    size: dict[str, int] = {}  # a running job's gang size
    below_max: set[str] = set()  # running elastic gangs below their largest size
    queued_at: dict[str, float] = {}
    first_start: dict[str, float] = {}
    preempted: dict[str, int] = {}
    moved_at: dict[str, list[float]] = {}  # job -> when it was moved for cost
    events: list[tuple[float, int, str, str]] = []  # (t, order, kind, id)
    seq = 0
    report = SimReport(jobs=total, rejected=total - len(jobs))
    used_gpu_s = 0.0
    low_since: float | None = None
    last_up: float | None = None

    gangs: dict[str, Gang] = {}
    to_spot: set[str] = set()  # moved back to spot: placed again on spot only, ahead of the queue

    def gang_of(jid: str) -> Gang:
        """The gang as the BudgetAutoscaler is told it: running, at its size; waiting, an elastic
        one at its smallest (as live, ``Coordinator.budget_queue``)."""
        g = gangs.get(jid)
        j = by_id[jid]
        n = size.get(jid) or j.min_workers or j.workers
        spot = "only" if jid in to_spot and jid not in running else j.spot
        if g is None or g.preemptions != preempted.get(jid, 0) or g.bundles != n or g.spot != spot:
            g = gangs[jid] = Gang(jid, n, j.gpus, j.cpus, strict_spread=j.strategy == "STRICT_SPREAD",
                                  spot=spot, preemptions=preempted.get(jid, 0))
        return g

    def done_s(jid: str, now: float) -> float:
        """The work its current run did, in seconds at its largest size."""
        return (now - running[jid][0]) * size[jid] / by_id[jid].workers

    def push(t: float, kind: str, ident: str) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, ident))

    alive: dict[str, _Node] = {}  # the nodes held now (``nodes`` keeps every one, for the bill)
    # the free room of the ready nodes that could take some bundle of the trace, kept as nodes
    # change (what admission sees; a node that can take no bundle at all is never chosen, so
    # leaving it out changes no decision, and spares building every node's room at every event)
    min_gpus = min((j.gpus for j in jobs), default=0.0)
    min_cpus = min((j.cpus for j in jobs), default=0.0)
    open_free: dict[str, dict[str, float]] = {}
    held_cache: dict[str, tuple[tuple, HeldNode]] = {}  # node -> (its state, the HeldNode built for it)

    def sync(n: _Node) -> None:
        if (n.end is None and n.ready_at <= now and n.free_gpus + 1e-9 >= min_gpus
                and n.free_cpus + 1e-9 >= min_cpus):
            open_free[n.id] = {"GPU": n.free_gpus, "CPU": n.free_cpus, KIND_RESOURCE[n.type.kind]: KIND_RESOURCE_UNITS}
        else:
            open_free.pop(n.id, None)

    def rent(t: NodeType, now: float, ready: float) -> None:
        nid = f"n{len(nodes)}"
        nodes[nid] = alive[nid] = _Node(nid, t, now, ready, t.gpus, t.cpus, ready)
        push(ready, "ready", nid)
        if t.kind == "spot" and market.preemption_rate_per_hour > 0:
            push(ready + rng.expovariate(market.preemption_rate_per_hour / 3600.0), "preempt", nid)

    def release(nid: str, now: float) -> None:
        n = nodes[nid]
        if n.end is None:
            n.idle_until(now)
            n.end = now
            alive.pop(nid, None)
            open_free.pop(nid, None)

    def queue_job(jid: str, now: float) -> None:
        j = by_id[jid]
        queued_at.setdefault(jid, now)
        returning = jid in to_spot
        bundles = with_kind([{"GPU": j.gpus, "CPU": j.cpus} for _ in range(j.workers)], "only" if returning else j.spot)
        queue.put(QueuedJob(jid, j.priority, queued_at[jid], tuple(bundles), j.strategy, tenant=j.tenant,
                            boost_s=1e12 if returning else 0.0, min_bundles=j.min_workers))

    def usd_per_hour(jid: str) -> float:
        """A running job's shares of its nodes at their prices (``policy.cost.node_share``, as live)."""
        started, _ends, where = running[jid]
        p = priced.get(jid)
        if p is None or p[2] != started:
            j = by_id[jid]
            usd = 0.0
            for nid, k in where.items():
                t = nodes[nid].type
                usd += k * node_share(j.gpus, j.cpus, t.gpus, t.cpus) * t.usd_per_hour
            p = priced[jid] = (tuple(where), usd, started)
        return p[1]

    spent: dict[str, list[tuple[float, float, float]]] = {}  # tenant -> (start, end, USD/h) of each ended run

    def stop_job(jid: str, now: float) -> None:
        nonlocal used_gpu_s
        j = by_id[jid]
        rate, started = usd_per_hour(jid), running[jid][0]
        t = tenant_of(j.tenant)
        report.cost_by_tenant_usd[t] = report.cost_by_tenant_usd.get(t, 0.0) + rate * (now - started) / 3600.0
        if tenants is not None:
            spent.setdefault(t, []).append((started, now, rate))
        started, _ends, where = running.pop(jid)
        used_gpu_s += (now - started) * j.gpus * size.pop(jid)
        below_max.discard(jid)
        for nid, k in where.items():
            n = nodes[nid]
            n.free_gpus += k * j.gpus
            n.free_cpus += k * j.cpus
            n.jobs.discard(jid)
            if not n.jobs:
                n.idle_since = now
            sync(n)

    def place_admitted(jid: str, decision, now: float) -> None:
        """Start an admitted job where (and at the size) admission placed it."""
        queue.discard(jid)
        to_spot.discard(jid)
        where: dict[str, int] = {}
        for nid in decision.placements[jid]:
            where[nid] = where.get(nid, 0) + 1
        j = by_id[jid]
        for nid, k in where.items():
            n = nodes[nid]
            n.idle_until(now)
            n.free_gpus -= k * j.gpus
            n.free_cpus -= k * j.cpus
            n.jobs.add(jid)
            sync(n)
        first_start.setdefault(jid, now)
        k = size[jid] = decision.sizes.get(jid, j.workers)
        if k < j.workers:
            below_max.add(jid)
        ends = now + left[jid] * j.workers / k
        running[jid] = (now, ends, where)
        push(ends, "finish", jid)

    priced: dict[str, tuple[tuple[str, ...], float, float]] = {}  # job -> (its nodes, USD/h, since) while it runs
    prices = tuple((t.usd_per_hour, t.gpus, t.cpus) for t in market.types)
    quota_held: set[str] = set()  # queued jobs their tenant's quota or budget holds (not rented for, as live)

    def quota_view(now: float) -> QuotaView | None:
        """What the live ``Tenancy.quota_view`` hands admission: each tenant's holding gangs and its
        spend — rate now, so far this UTC day and month (ended runs and the running ones' stretch)."""
        if tenants is None or not tenants.has_quotas:
            return None
        day, month = period_starts(now)
        used: dict[str, Demand] = {}
        rate: dict[str, float] = {}
        today: dict[str, float] = {}
        this_month: dict[str, float] = {}
        for jid, (started, _ends, _where) in running.items():
            j = by_id[jid]
            t = tenant_of(j.tenant)
            used[t] = used.get(t, Demand(jobs=0)) + Demand.of_bundles([{"GPU": j.gpus, "CPU": j.cpus}] * size[jid])
            r = usd_per_hour(jid)
            rate[t] = rate.get(t, 0.0) + r
            today[t] = today.get(t, 0.0) + r * (now - max(started, day)) / 3600.0
            this_month[t] = this_month.get(t, 0.0) + r * (now - max(started, month)) / 3600.0
        for t, runs in spent.items():
            for start, end, r in runs:
                if end > day:
                    today[t] = today.get(t, 0.0) + r * (end - max(start, day)) / 3600.0
                if end > month:
                    this_month[t] = this_month.get(t, 0.0) + r * (end - max(start, month)) / 3600.0
        spend = {t: TenantSpend(rate.get(t, 0.0), today.get(t, 0.0), this_month.get(t, 0.0))
                 for t in set(rate) | set(today) | set(this_month)}
        return QuotaView(tenants, used, spend, prices)

    def admit(now: float) -> None:
        """Admission, as the Coordinator does it, over the nodes ready now (and the tenants' quotas)."""
        quota = quota_view(now)
        if quota is not None:
            queue.forget()  # (spend moves with time: decide again)
        decision = queue.decide(open_free, now, quota)
        if decision is None:
            return
        if quota is not None:
            quota_held.clear()
            quota_held.update(j for why, ids in decision.groups if held_by_quota(why) for j in ids)
        for jid in decision.admit:
            place_admitted(jid, decision, now)

    def running_gangs(now: float) -> tuple[RunningGang, ...]:
        """The running jobs as the Coordinator tells them to the BudgetAutoscaler (``budget_running``)."""
        if config.max_moves_per_hour <= 0:
            return ()  # (no move for cost can be made: nothing to tell)
        out = []
        for jid in running:
            usd_per_hour(jid)
            p = priced[jid]
            moves = moved_at.get(jid)
            recent = sum(1 for t in moves if t >= now - 3600.0) if moves else 0
            out.append(RunningGang(gang_of(jid), p[0], p[1],
                                   expected_remaining_s(now - first_start[jid], by_id[jid].max_runtime_s), recent))
        return tuple(out)

    if horizon_s is None:  # a gang no policy can ever place must not keep the replay going forever
        horizon_s = (jobs[-1].arrival_s if jobs else 0.0) + 14 * 86400.0
    if fixed_pool:
        for name, count in fixed_pool.items():
            for _ in range(count):
                rent(types[name], 0.0, 0.0)
    for j in jobs:
        push(j.arrival_s, "arrive", j.job_id)
    next_tick = 0.0
    now = 0.0
    while events or (not fixed_pool and len(queue) and now < horizon_s):
        t_event = events[0][0] if events else math.inf
        if not fixed_pool and next_tick <= t_event:
            now = next_tick
            next_tick += tick_s
            # the budget policy, fed the simulated cluster
            held = []
            total_g = used_g = 0.0
            counts: dict[str, int] = {}
            for n in alive.values():
                t = n.type
                counts[t.name] = counts.get(t.name, 0) + 1
                starting = n.ready_at > now
                idle = not (n.jobs or starting)
                key = (n.free_gpus, n.free_cpus, starting)
                cached = held_cache.get(n.id)
                if idle or cached is None or cached[0] != key:  # (a busy node's entry changes only with it)
                    h = HeldNode(n.id, t.name, t.kind, t.usd_per_hour,
                                 free_gpus=t.gpus if starting else n.free_gpus,
                                 free_cpus=t.cpus if starting else n.free_cpus,
                                 idle_s=now - n.idle_since if idle else 0.0, starting=starting)
                    held_cache[n.id] = (key, h)
                else:
                    h = cached[1]
                held.append(h)
                if not starting:
                    total_g += t.gpus
                    used_g += t.gpus - n.free_gpus
            offered = tuple(NodeType(t.name, t.kind, t.usd_per_hour, t.gpus, t.cpus,
                                     max(0, t.available - counts.get(t.name, 0)), t.max_workers) for t in market.types)
            waiting = tuple(gang_of(q.job_id) for q in queue.ordered() if q.job_id not in quota_held)
            if to_spot:  # (gangs being placed again come first, as live: ``Coordinator.budget_queue``)
                waiting = tuple(sorted(waiting, key=lambda g: g.job_id not in to_spot))
            d = decide(BudgetContext(config, offered, tuple(held), waiting, used_g / total_g if total_g else None,
                                     low_since, last_up, running=running_gangs(now)), now)
            low_since, last_up = d.low_util_since, d.last_scale_up_at
            for nid, _why, cause in d.release:
                for jid in list(nodes[nid].jobs):  # a busy node: its jobs go back to the queue
                    done = done_s(jid, now)
                    stop_job(jid, now)
                    if cause in (ReleaseCause.SPOT_RETURN, ReleaseCause.CONSOLIDATE):  # checkpointed first
                        left[jid] = max(0.0, left[jid] - done) + market.move_overhead_s
                        moved_at.setdefault(jid, []).append(now)
                        if cause == ReleaseCause.SPOT_RETURN:
                            to_spot.add(jid)
                        report.moves[cause.value] = report.moves.get(cause.value, 0) + 1
                    else:  # shed: conservatively from scratch
                        left[jid] = by_id[jid].duration_s
                    queue_job(jid, now)
                release(nid, now)
            for name, count in d.launch.items():
                for _ in range(count):
                    rent(types[name], now, now + market.launch_delay_s)
            if d.launch or len(alive) > report.peak_nodes:
                report.peak_nodes = max(report.peak_nodes, len(alive))
                report.peak_usd_per_hour = max(report.peak_usd_per_hour,
                                               sum(n.type.usd_per_hour for n in alive.values()))
        else:
            now = events[0][0]
            while events and events[0][0] == now:  # everything at this instant, then one admission
                _t, _s, kind, ident = heapq.heappop(events)
                if kind == "arrive":
                    queue_job(ident, now)
                elif kind == "finish":
                    if ident in running and abs(running[ident][1] - now) < 1e-6:
                        stop_job(ident, now)
                        report.finished += 1
                        report.makespan_s = max(report.makespan_s, now)
                elif kind == "preempt":
                    n = nodes[ident]
                    if n.end is None:
                        for jid in list(n.jobs):
                            ran_s = now - running[jid][0]
                            kept = (math.floor(ran_s / market.checkpoint_every_s) * market.checkpoint_every_s
                                    * size[jid] / by_id[jid].workers)
                            stop_job(jid, now)
                            left[jid] = max(0.0, left[jid] - kept)
                            preempted[jid] = preempted.get(jid, 0) + 1
                            report.preemptions += 1
                            queue_job(jid, now)
                        release(ident, now)
                elif kind == "ready":
                    sync(nodes[ident])
        # admission, as the Coordinator does it, over the nodes ready now
        if len(queue):
            admit(now)
        if below_max and not len(queue):  # elastic gangs grow into free room nobody waits for
            for jid in sorted(below_max):
                started, _ends, where = running[jid]
                j = by_id[jid]
                bundle = with_kind([{"GPU": j.gpus, "CPU": j.cpus}], j.spot)[0]
                fits = None
                if now - started >= grow_interval_s:
                    own = [nid for nid, k in where.items() for _ in range(k)]
                    fits = size_that_fits(bundle, range(j.workers, size[jid], -1),
                                          with_gang_back(open_free, bundle, own), j.strategy)
                d = decide_grow(GrowContext(jid, size[jid], j.workers, now - started, False, fits, False),
                                grow_interval_s)
                if d.to_size is None:
                    continue
                left[jid] = max(0.0, left[jid] - done_s(jid, now)) + market.move_overhead_s  # checkpointed first
                stop_job(jid, now)
                report.moves["elastic_grow"] = report.moves.get("elastic_grow", 0) + 1
                queue_job(jid, now)
                admit(now)  # placed again at once, larger
                if len(queue):
                    break
        if report.finished == len(jobs) or (not events and not running and not len(queue)):
            break  # (preemption events of nodes long gone may remain: they change nothing)
        if now > horizon_s:
            break
    end = now  # every node still held is billed until the last job ends
    for n in nodes.values():
        stop = n.end if n.end is not None else end
        if n.end is None:
            n.idle_until(end)
        hours = max(0.0, stop - n.start) / 3600.0
        report.cost_usd += hours * n.type.usd_per_hour
        report.node_hours += hours
        kind = n.type.kind
        report.cost_by_kind_usd[kind] = report.cost_by_kind_usd.get(kind, 0.0) + hours * n.type.usd_per_hour
        report.starting_node_hours += max(0.0, min(stop, n.ready_at) - n.start) / 3600.0
        report.idle_node_hours += n.idle_total_s / 3600.0
    held_gpu_s = sum(max(0.0, (n.end if n.end is not None else end) - n.ready_at) * n.type.gpus
                     for n in nodes.values())
    report.utilisation = used_gpu_s / held_gpu_s if held_gpu_s else 0.0
    waits = [first_start[j] - by_id[j].arrival_s for j in first_start]
    report.wait_p50_s, report.wait_p99_s = _pct(waits, 0.5), _pct(waits, 0.99)
    if fixed_pool:
        report.peak_nodes = sum(fixed_pool.values())
    return report
