"""The budget policy: how many GPU nodes of which type to hold, within min/max workers and the
hourly budget. Pure: a ``BudgetContext`` at ``now`` -> a ``BudgetDecision``; no Ray, no I/O.

Used by the BudgetAutoscaler (live) and by the what-if simulator (the same function, never a copy).

Rules, in the order they are applied (each gives an ``Event`` with its reason):

1. **Shed** — when the committed spend rate (every held node's current USD/hour, starting ones
   included) exceeds ``max_hourly_budget_usd`` (spot prices rose), release nodes until it fits:
   idle ones first, then the most expensive per hour. The budget beats ``min_workers``.
2. **Place the waiting gangs**, in queue order: a gang that fits the free room of held nodes needs
   nothing; otherwise the cheapest node type it may use with market slots left is launched —
   spot first for ``spot: auto`` (on-demand once the job was preempted ``spot_fallback_preemptions``
   times, or when no spot is offered), only spot for ``only``, never spot for ``never``. A launch
   that would pass ``max_workers`` or the budget is not made: the gang waits with the reason
   (``budget 7.80/8.00 USD/h, needs 0.53``) and, to keep queue order (no starvation of big gangs),
   no later gang is launched for in that pass.
3. **Minimum** — below ``min_workers`` the cheapest nodes are launched (within the budget).
4. **Headroom** — with nothing waiting, GPU utilisation above ``scale_up_util`` adds one node
   (at most once per ``cooldown_s``).
5. **Scale down** — nodes idle for ``idle_timeout_s`` are released, most expensive first, never
   below ``min_workers``, once utilisation has stayed below ``scale_down_util`` for ``cooldown_s``
   (``low_util_since`` is carried from decision to decision by the caller). An on-demand node
   (the expensive fallback) idle for ``idle_timeout_s`` goes whatever the utilisation when no
   waiting gang needs on-demand. Idle nodes a waiting gang cannot use (a ``spot: never`` gang
   behind idle spot nodes) are released for it when the budget or ``max_workers`` holds it back.

Gangs with ``spot: only``/``never`` are placed only on nodes of that kind: held nodes' free room
is counted for them only when of their kind (live, a marker resource per kind, ``with_kind``).
"""

from __future__ import annotations

from dataclasses import replace

from raycluster.policy.budget_types import (KIND_BUNDLE_UNITS, KIND_RESOURCE, KIND_RESOURCE_UNITS, ON_DEMAND,
                                            SPOT, SPOT_CHOICES, BudgetConfig, BudgetConfigError, BudgetContext,
                                            BudgetDecision, Event, Gang, HeldNode, NodeType,
                                            cheapest_gang_usd_per_hour, fmt_usd, kinds_for, nodes_needed,
                                            with_kind)


class _Rooms(list):
    """The free room of held (and just launched) nodes as [gpus, cpus, kind] lists, with the largest free
    GPUs/CPUs of any one node kept, so that a gang whose bundle fits no node is answered without a
    scan (most waiting gangs, when thousands wait)."""

    def __init__(self, rooms):
        super().__init__(rooms)
        self._max: tuple[float, float] | None = None

    def append(self, room) -> None:
        super().append(room)
        self._max = None

    def largest(self) -> tuple[float, float]:
        if self._max is None:
            self._max = (max((r[0] for r in self), default=0.0), max((r[1] for r in self), default=0.0))
        return self._max

    def taken(self) -> None:
        self._max = None


def _fit_on_free(rooms: list[list], g: Gang, taken: list | None = None) -> int:
    """Place bundles of ``g`` on the free room ([gpus, cpus, kind]) of held nodes of a kind it may
    use (first fit, room taken); how many. ``taken`` gets (room, bundles) of each room used."""
    if isinstance(rooms, _Rooms):
        gmax, cmax = rooms.largest()
        if g.gpus > gmax or g.cpus > cmax:
            return 0
    placed = 0
    only = {"only": SPOT, "never": ON_DEMAND}.get(g.spot)
    for room in rooms:
        if only is not None and room[2] != only:
            continue
        before = placed
        while placed < g.bundles and room[0] >= g.gpus and room[1] >= g.cpus:
            room[0] -= g.gpus
            room[1] -= g.cpus
            placed += 1
            if g.strict_spread:
                break
        if taken is not None and placed > before:
            taken.append((room, placed - before))
        if placed == g.bundles:
            break
    if placed and isinstance(rooms, _Rooms):
        rooms.taken()
    return placed


def _undo(rooms: "_Rooms", g: Gang, taken: list) -> None:
    """Give back the room ``_fit_on_free`` took for ``g``."""
    for room, count in taken:
        room[0] += count * g.gpus
        room[1] += count * g.cpus
    taken.clear()
    rooms.taken()


def _make_room(held: list[HeldNode], rooms: list[list[float]], d: "BudgetDecision", over_usd: float,
               idle_timeout_s: float, over_nodes: int = 0) -> list[HeldNode]:
    """Idle nodes (past the idle timeout, untouched by the gangs placed so far in this pass, not
    already released) whose release brings the spend rate down by ``over_usd`` and the node count
    by ``over_nodes``, most expensive first; [] when even all of them would not. Without this, a
    gang blocked by the budget or max_workers behind idle nodes it cannot use (a ``spot: never``
    gang behind idle spot nodes) would wait forever: idle nodes are otherwise released only when
    nothing waits."""
    gone = {i for i, _ in d.release}
    idle = [n for i, n in enumerate(held)
            if n.idle_s >= idle_timeout_s and not n.starting and n.id not in gone
            and rooms[i][0] == n.free_gpus and rooms[i][1] == n.free_cpus]
    picked, freed = [], 0.0
    for n in sorted(idle, key=lambda n: (-n.usd_per_hour, n.id)):
        if freed >= over_usd - 1e-9 and len(picked) >= over_nodes:
            break
        picked.append(n)
        freed += n.usd_per_hour
    return picked if freed >= over_usd - 1e-9 and len(picked) >= over_nodes else []


# ------------------------------------------------------------------------------- the policy
def decide(ctx: BudgetContext, now: float) -> BudgetDecision:
    cfg = ctx.config
    cap = cfg.max_hourly_budget_usd
    d = BudgetDecision(low_util_since=ctx.low_util_since, last_scale_up_at=ctx.last_scale_up_at)
    held = list(ctx.held)
    committed = sum(n.usd_per_hour for n in held)
    per_type: dict[str, int] = {}
    for n in held:
        per_type[n.node_type] = per_type.get(n.node_type, 0) + 1
    slots = {t.name: t.available for t in ctx.types}

    def launch(t: NodeType, count: int) -> None:
        nonlocal committed
        d.launch[t.name] = d.launch.get(t.name, 0) + count
        per_type[t.name] = per_type.get(t.name, 0) + count
        slots[t.name] -= count
        committed += count * t.usd_per_hour

    made_room = 0

    def total() -> int:
        return len(held) - made_room + sum(d.launch.values())

    def give_back(room: list[HeldNode], reason: str) -> None:
        """Release idle nodes a waiting gang cannot use, for it (budget or max_workers)."""
        nonlocal committed, made_room
        index = {h.id: i for i, h in enumerate(held)}
        for h in room:
            d.release.append((h.id, reason))
            per_type[h.node_type] -= 1
            rooms[index[h.id]][:2] = [0.0, 0.0]  # gone: no later gang is placed there
            committed -= h.usd_per_hour
        made_room += len(room)
        rooms.taken()
        d.events.append(Event("scale_down", f"{reason}: released {len(room)} idle node(s)", count=len(room)))

    # 1. shed: the held set costs more than the cap (prices rose)
    if cap is not None and committed > cap + 1e-9:
        before = committed
        for n in sorted(held, key=lambda n: (n.idle_s <= 0, -n.usd_per_hour, n.id)):
            if committed <= cap + 1e-9:
                break
            d.release.append((n.id, f"shed: held set {fmt_usd(before)} > budget {fmt_usd(cap)} USD/h"))
            committed -= n.usd_per_hour
            per_type[n.node_type] -= 1
        gone = {i for i, _ in d.release}
        held = [n for n in held if n.id not in gone]
        d.events.append(Event("shed", f"prices rose: held set {fmt_usd(before)} > budget {fmt_usd(cap)} USD/h, "
                                      f"released {len(gone)} node(s), now {fmt_usd(committed)}", count=len(gone)))

    # 2. the waiting gangs, in queue order
    rooms = _Rooms([[n.free_gpus, n.free_cpus, n.kind] for n in held])
    blocked = False
    launched_for = 0
    def choose(g: Gang, placed: int):
        """(cost, type name, type, nodes) of the cheapest type of the first kind ``g`` may use that
        has nodes for its ``placed``..bundles, or None; why other types were not, the fallback event."""
        why_not: list[str] = []
        for kind in kinds_for(g, cfg.spot_fallback_preemptions):
            options = []
            for t in ctx.types:
                if t.kind != kind:
                    continue
                n = nodes_needed(t, g, placed)
                if n is None:
                    continue
                if slots[t.name] < n or per_type.get(t.name, 0) + n > t.max_workers:
                    why_not.append(f"no {t.name} left")
                    continue
                if cap is not None and n * t.usd_per_hour > cap + 1e-9:
                    why_not.append(f"{n} {t.name} cost more than the budget")
                    continue  # never affordable: the next kind may be
                options.append((n * t.usd_per_hour, t.name, t, n))
            if options:
                choice, fallback = min(options), None
                if kind == ON_DEMAND and g.spot == "auto":
                    reason = (f"preempted {g.preemptions}x" if g.preemptions >= cfg.spot_fallback_preemptions
                              else "no spot node offered")
                    fallback = Event("fallback", f"{g.job_id}: on-demand ({reason})", choice[1], choice[3])
                return choice, why_not, fallback
        return None, why_not, None

    for g in ctx.waiting:
        taken: list = []
        placed = _fit_on_free(rooms, g, taken)
        if placed >= g.bundles:
            continue
        if blocked:
            d.waiting[g.job_id] = "behind a gang waiting for budget or max_workers"
            continue
        first_refusal = None
        outcome = None
        for fresh in (False, True):
            if fresh:  # it fit partly on idle nodes whose release would make the room it lacks: start over
                if not placed:
                    break
                _undo(rooms, g, taken)
                placed = 0
            choice, why_not, fallback = choose(g, placed)
            if choice is None:
                why = ", ".join(sorted(set(why_not)))
                if cap is not None and "cost more than the budget" in why:  # what is left costs more than allowed
                    outcome = ("blocked", f"budget {fmt_usd(committed)}/{fmt_usd(cap)} USD/h: {why}",
                               Event("blocked", f"budget {fmt_usd(committed)}/{fmt_usd(cap)} USD/h: {g.job_id}: {why}"))
                else:
                    outcome = ("none", "no node type offered fits it" + (f" ({why})" if why else ""), None)
                first_refusal = first_refusal or outcome
                continue
            cost, _name, t, n = choice
            if total() + n > cfg.max_workers:
                room = _make_room(held, rooms, d, 0.0, cfg.idle_timeout_s, total() + n - cfg.max_workers)
                if room:
                    give_back(room, f"make room: {g.job_id} needs {n} {t.name} within max_workers {cfg.max_workers}")
            if total() + n > cfg.max_workers:
                first_refusal = first_refusal or ("blocked", f"max_workers {cfg.max_workers} reached",
                                                  Event("blocked", f"{g.job_id}: max_workers {cfg.max_workers}",
                                                        t.name, n))
                continue
            if cap is not None and committed + cost > cap + 1e-9:
                room = _make_room(held, rooms, d, committed + cost - cap, cfg.idle_timeout_s)
                if room:  # idle nodes it cannot use give their budget to it: released, then it is rented for
                    give_back(room, f"make room: {g.job_id} needs {fmt_usd(cost)} USD/h within budget {fmt_usd(cap)}")
            if cap is not None and committed + cost > cap + 1e-9:
                first_refusal = first_refusal or (
                    "blocked", f"budget {fmt_usd(committed)}/{fmt_usd(cap)} USD/h, needs {fmt_usd(cost)} more",
                    Event("blocked", f"budget {fmt_usd(committed)}/{fmt_usd(cap)} USD/h: {g.job_id} needs "
                                     f"{n} {t.name} at {fmt_usd(cost)}", t.name, n))
                continue
            outcome = ("ok", choice, fallback)
            break
        if outcome is None or outcome[0] != "ok":
            verdict, why, event = first_refusal
            d.waiting[g.job_id] = why
            if event is not None:
                d.events.append(event)
            blocked = blocked or verdict == "blocked"
            continue
        _ok, (cost, _name, t, n), fallback = outcome
        if fallback is not None:
            d.events.append(fallback)
        launch(t, n)
        launched_for += 1
        # the new nodes' leftover room serves later gangs
        for _ in range(n):
            rooms.append([t.gpus, t.cpus, t.kind])
        _fit_on_free(rooms[-n:], replace(g, bundles=g.bundles - placed))
        rooms.taken()
    if launched_for:
        d.events.append(Event("scale_up", f"{launched_for} gang(s) waiting"
                                          + (f", util {ctx.gpu_util:.2f}" if ctx.gpu_util is not None else ""),
                              count=sum(d.launch.values())))

    # 3. the minimum
    if total() < cfg.min_workers:
        want = cfg.min_workers - total()
        added = 0
        for t in sorted(ctx.types, key=lambda t: (t.usd_per_hour, t.name)):
            while added < want and slots[t.name] > 0 and per_type.get(t.name, 0) < t.max_workers and (
                    cap is None or committed + t.usd_per_hour <= cap + 1e-9):
                launch(t, 1)
                added += 1
        if added:
            d.events.append(Event("scale_up", f"min_workers {cfg.min_workers}", count=added))
        if added < want:
            d.events.append(Event("blocked", f"min_workers {cfg.min_workers}: {want - added} node(s) not affordable "
                                             f"or not offered", count=want - added))

    # 4. headroom when busy
    if (not ctx.waiting and not d.launch and ctx.gpu_util is not None and ctx.gpu_util > cfg.scale_up_util
            and total() < cfg.max_workers
            and (ctx.last_scale_up_at is None or now - ctx.last_scale_up_at >= cfg.cooldown_s)):
        for t in sorted(ctx.types, key=lambda t: (t.kind != SPOT, t.usd_per_hour, t.name)):
            if slots[t.name] > 0 and per_type.get(t.name, 0) < t.max_workers and (
                    cap is None or committed + t.usd_per_hour <= cap + 1e-9):
                launch(t, 1)
                d.events.append(Event("scale_up", f"util {ctx.gpu_util:.2f} > {cfg.scale_up_util:.2f}", t.name, 1))
                break
    if d.launch:
        d.last_scale_up_at = now

    # 5. scale down idle nodes once utilisation stayed low for the cooldown
    util = ctx.gpu_util if ctx.gpu_util is not None else 0.0
    if util < cfg.scale_down_util:
        d.low_util_since = ctx.low_util_since if ctx.low_util_since is not None else now
    else:
        d.low_util_since = None
    # an on-demand node (the expensive fallback) idle past the idle timeout goes whatever the
    # utilisation, when no waiting gang needs on-demand: spot covers the rest
    needs_od = any(kinds_for(g, cfg.spot_fallback_preemptions)[0] == ON_DEMAND for g in ctx.waiting)
    if not needs_od and not d.launch:
        gone = {i for i, _ in d.release}
        count = sum(1 for n in held if n.id not in gone)
        od_down = 0
        for n in sorted(held, key=lambda n: (-n.usd_per_hour, n.id)):
            if count <= cfg.min_workers:
                break
            if n.kind != ON_DEMAND or n.starting or n.idle_s < cfg.idle_timeout_s or n.id in gone:
                continue
            d.release.append((n.id, f"on-demand idle {n.idle_s:.0f}s, no waiting gang needs on-demand"))
            committed -= n.usd_per_hour
            count -= 1
            od_down += 1
        if od_down:
            d.events.append(Event("scale_down", f"{od_down} idle on-demand node(s): spot serves the rest",
                                  count=od_down))
    if not ctx.waiting and not d.launch and d.low_util_since is not None and now - d.low_util_since >= cfg.cooldown_s:
        keep = cfg.min_workers
        gone = {i for i, _ in d.release}
        count = sum(1 for n in held if n.id not in gone)
        for n in sorted(held, key=lambda n: (-n.usd_per_hour, -n.idle_s, n.id)):
            if count <= keep:
                break
            if n.starting or n.idle_s < cfg.idle_timeout_s or n.id in gone:
                continue
            d.release.append((n.id, f"idle {n.idle_s:.0f}s, util {util:.2f} < {cfg.scale_down_util:.2f}"))
            committed -= n.usd_per_hour
            count -= 1
        n_down = sum(1 for _, r in d.release if r.startswith("idle "))
        if n_down:
            d.events.append(Event("scale_down", f"{n_down} idle node(s), util {util:.2f} < {cfg.scale_down_util:.2f} "
                                                f"for {now - d.low_util_since:.0f}s", count=n_down))
    d.committed_usd_per_hour = round(max(0.0, committed), 6)
    return d


__all__ = ["KIND_RESOURCE", "KIND_RESOURCE_UNITS", "KIND_BUNDLE_UNITS", "with_kind", "BudgetConfig",
           "BudgetConfigError", "NodeType", "HeldNode", "Gang", "BudgetContext", "Event", "BudgetDecision", "decide",
           "nodes_needed", "kinds_for", "cheapest_gang_usd_per_hour", "fmt_usd", "SPOT", "ON_DEMAND", "SPOT_CHOICES"]
