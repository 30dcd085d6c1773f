"""The budget policy: how many GPU nodes of which type to hold, within min/max workers and the
hourly budget. Pure: a ``BudgetContext`` at ``now`` -> a ``BudgetDecision``; no Ray, no I/O.

Used by the BudgetAutoscaler (live) and by the what-if simulator (the same function, never a copy).

Rules, in the order they are applied (``RULES``: each a function of one pass's state; each launch
and release carries a typed cause, ``LaunchCause`` / ``ReleaseCause``, and each gives an ``Event``
with its reason):

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
2b. **Spot return** (``policy/cost_moves.py``) — at most one on-demand node a pass whose gangs may
   run on spot, fit on spot now (held spot nodes' free room, else fresh spot nodes within
   ``max_workers`` and the cap) and pay their move (saving over the expected remaining runtime >
   ``spot_return_move_s`` at the price now), each moved for cost fewer than ``max_moves_per_hour``
   times in the last hour, is given back: its gangs checkpoint, move (cause ``spot_return``) and are
   placed again on spot only. While gangs wait for budget or ``max_workers``, only a return that
   rents no more nodes than its gangs leave, at no more per hour (it takes nothing they wait for).
2c. **Consolidate** (``policy/cost_moves.py``) — when nothing waits for budget or ``max_workers``
   and no spot return was made this pass: at most one rented node whose gangs (each on it alone,
   each movable) fit on the free room of other held nodes in use is emptied when giving it back pays (its
   price over their longest expected remaining runtime > the move's time at that price): its
   gangs checkpoint, move (cause ``consolidate``) and are placed again; the node is released.
3. **Minimum** — below ``min_workers`` the cheapest nodes are launched (within the budget).
4. **Headroom** — with nothing waiting, GPU utilisation above ``scale_up_util`` adds one node
   (at most once per ``cooldown_s``).
5. **Scale down** (``policy/scale_down.py``) — nodes idle for ``idle_timeout_s`` are released,
   most expensive first, never below ``min_workers``, once utilisation has stayed below
   ``scale_down_util`` for ``cooldown_s`` (``low_util_since`` is carried from decision to decision
   by the caller). An on-demand node (the expensive fallback) goes whatever the utilisation when no
   waiting gang needs on-demand, once idle for ``idle_timeout_s`` scaled by the cheapest spot price
   over its own (``idle_timeout_by_price``: held idle for what the cheapest node costs idle for the
   timeout); at ``min_workers`` it is swapped for a cheaper spot node when one is offered (the
   floor is held with the cheapest nodes). Idle nodes a waiting gang cannot use (a ``spot: never``
   gang behind idle spot nodes) are released for it when the budget or ``max_workers`` holds it
   back.

Gangs with ``spot: only``/``never`` are placed only on nodes of that kind: held nodes' free room
is counted for them only when of their kind (live, a marker resource per kind, ``with_kind``).
"""

from __future__ import annotations

from dataclasses import replace

from raycluster.policy.cost_moves import consolidate, return_to_spot
from raycluster.policy.scale_down import release_idle_on_demand, scale_down_idle
from raycluster.policy.budget_types import (KIND_BUNDLE_UNITS, KIND_RESOURCE, KIND_RESOURCE_UNITS, ON_DEMAND,
                                            SPOT, SPOT_CHOICES, BudgetConfig, BudgetConfigError, BudgetContext,
                                            BudgetDecision, Event, Gang, HeldNode, Launch, LaunchCause, NodeType,
                                            Release, ReleaseCause, RunningGang, cheapest_gang_usd_per_hour, fmt_usd, kinds_for,
                                            nodes_needed, with_kind)


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
    gone = {r.node_id for r in d.release}
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
class _Pass:
    """One decision's working state, shared by the rules in turn: the nodes held (less those shed),
    the spend rate committed, nodes per type, market slots left, the free room of held and launched
    nodes, and the decision being made. Every launch and release goes through it, with its cause."""

    def __init__(self, ctx: BudgetContext, now: float):
        self.ctx, self.cfg, self.now = ctx, ctx.config, now
        self.cap = ctx.config.max_hourly_budget_usd
        self.d = BudgetDecision(low_util_since=ctx.low_util_since, last_scale_up_at=ctx.last_scale_up_at)
        self.held = list(ctx.held)
        self.committed = sum(n.usd_per_hour for n in self.held)
        self.per_type: dict[str, int] = {}
        for n in self.held:
            self.per_type[n.node_type] = self.per_type.get(n.node_type, 0) + 1
        self.slots = {t.name: t.available for t in ctx.types}
        self.rooms = _Rooms([])
        self.made_room = 0

    def launch(self, t: NodeType, count: int, cause: LaunchCause) -> None:
        last = self.d.launches[-1] if self.d.launches else None
        if last is not None and (last.node_type, last.cause) == (t.name, cause):  # one entry per run of them
            self.d.launches[-1] = last._replace(count=last.count + count)
        else:
            self.d.launches.append(Launch(t.name, count, cause))
        self.per_type[t.name] = self.per_type.get(t.name, 0) + count
        self.slots[t.name] -= count
        self.committed += count * t.usd_per_hour

    def release(self, n: HeldNode, reason: str, cause: ReleaseCause) -> None:
        self.d.release.append(Release(n.id, reason, cause))
        self.committed -= n.usd_per_hour
        self.per_type[n.node_type] -= 1

    def released(self) -> set[str]:
        return {r.node_id for r in self.d.release}

    def reserved(self) -> set[str]:
        """Held nodes whose free room gangs moved for cost will take (not idle for release)."""
        return {x for ids in self.d.reserved.values() for x in ids}

    def total(self) -> int:
        return len(self.held) - self.made_room + sum(self.d.launch.values())

    def affordable(self, usd_per_hour: float) -> bool:
        return self.cap is None or self.committed + usd_per_hour <= self.cap + 1e-9

    def give_back(self, room: list[HeldNode], reason: str) -> None:
        """Release idle nodes a waiting gang cannot use, for it (budget or max_workers)."""
        index = {h.id: i for i, h in enumerate(self.held)}
        for h in room:
            self.release(h, reason, ReleaseCause.MAKE_ROOM)
            self.rooms[index[h.id]][:2] = [0.0, 0.0]  # gone: no later gang is placed there
        self.made_room += len(room)
        self.rooms.taken()
        self.d.events.append(Event("scale_down", f"{reason}: released {len(room)} idle node(s)", count=len(room)))


def shed(p: _Pass) -> None:
    """1. The held set costs more than the cap (prices rose): release idle nodes first, then the
    most expensive per hour, until it fits. The budget beats ``min_workers``."""
    cap = p.cap
    if cap is None or p.committed <= cap + 1e-9:
        return
    before = p.committed
    for n in sorted(p.held, key=lambda n: (n.idle_s <= 0, -n.usd_per_hour, n.id)):
        if p.committed <= cap + 1e-9:
            break
        p.release(n, f"shed: held set {fmt_usd(before)} > budget {fmt_usd(cap)} USD/h", ReleaseCause.SHED)
    gone = p.released()
    p.held = [n for n in p.held if n.id not in gone]
    p.d.events.append(Event("shed", f"prices rose: held set {fmt_usd(before)} > budget {fmt_usd(cap)} USD/h, "
                                    f"released {len(gone)} node(s), now {fmt_usd(p.committed)}", count=len(gone)))


def _choose(p: _Pass, g: Gang, placed: int):
    """(cost, type name, type, nodes) of the cheapest type of the first kind ``g`` may use that has
    nodes for its ``placed``..bundles, or None; why other types were not ((text, over budget?)
    pairs), and the fallback event."""
    why_not: list[tuple[str, bool]] = []
    for kind in kinds_for(g, p.cfg.spot_fallback_preemptions):
        options = []
        for t in p.ctx.types:
            if t.kind != kind:
                continue
            n = nodes_needed(t, g, placed)
            if n is None:
                continue
            if p.slots[t.name] < n or p.per_type.get(t.name, 0) + n > t.max_workers:
                why_not.append((f"no {t.name} left", False))
                continue
            if p.cap is not None and n * t.usd_per_hour > p.cap + 1e-9:
                why_not.append((f"{n} {t.name} cost more than the budget", True))
                continue  # never affordable: the next kind may be
            options.append((n * t.usd_per_hour, t.name, t, n))
        if options:
            choice, fallback = min(options), None
            if kind == ON_DEMAND and g.spot == "auto":
                reason = (f"preempted {g.preemptions}x" if g.preemptions >= p.cfg.spot_fallback_preemptions
                          else "no spot node offered")
                fallback = Event("fallback", f"{g.job_id}: on-demand ({reason})", choice[1], choice[3])
            return choice, why_not, fallback
    return None, why_not, None


def _launch_for(p: _Pass, g: Gang, placed: int, taken: list):
    """("ok", choice, fallback) — the nodes to launch for ``g`` — or the first refusal
    (verdict "blocked" | "none", why, event); may release idle nodes it cannot use to make room."""
    cap, cfg = p.cap, p.cfg
    first_refusal = None
    for fresh in (False, True):
        if fresh:  # it fit partly on idle nodes whose release would make the room it lacks: start over
            if not placed:
                break
            _undo(p.rooms, g, taken)
            placed = 0
        choice, why_not, fallback = _choose(p, g, placed)
        if choice is None:
            why = ", ".join(sorted({text for text, _ in why_not}))
            if cap is not None and any(over for _, over in why_not):  # what is left costs more than allowed
                outcome = ("blocked", f"budget {fmt_usd(p.committed)}/{fmt_usd(cap)} USD/h: {why}",
                           Event("blocked", f"budget {fmt_usd(p.committed)}/{fmt_usd(cap)} USD/h: {g.job_id}: {why}"))
            else:
                outcome = ("none", "no node type offered fits it" + (f" ({why})" if why else ""), None)
            first_refusal = first_refusal or outcome
            continue
        cost, _name, t, n = choice
        if p.total() + n > cfg.max_workers:
            room = _make_room(p.held, p.rooms, p.d, 0.0, cfg.idle_timeout_s, p.total() + n - cfg.max_workers)
            if room:
                p.give_back(room, f"make room: {g.job_id} needs {n} {t.name} within max_workers {cfg.max_workers}")
        if p.total() + n > cfg.max_workers:
            first_refusal = first_refusal or ("blocked", f"max_workers {cfg.max_workers} reached",
                                              Event("blocked", f"{g.job_id}: max_workers {cfg.max_workers}", t.name, n))
            continue
        if not p.affordable(cost):
            room = _make_room(p.held, p.rooms, p.d, p.committed + cost - cap, cfg.idle_timeout_s)
            if room:  # idle nodes it cannot use give their budget to it: released, then it is rented for
                p.give_back(room, f"make room: {g.job_id} needs {fmt_usd(cost)} USD/h within budget {fmt_usd(cap)}")
        if not p.affordable(cost):
            first_refusal = first_refusal or (
                "blocked", f"budget {fmt_usd(p.committed)}/{fmt_usd(cap)} USD/h, needs {fmt_usd(cost)} more",
                Event("blocked", f"budget {fmt_usd(p.committed)}/{fmt_usd(cap)} USD/h: {g.job_id} needs "
                                 f"{n} {t.name} at {fmt_usd(cost)}", t.name, n))
            continue
        return ("ok", choice, fallback), placed
    return first_refusal, placed


def place_waiting(p: _Pass) -> None:
    """2. The waiting gangs, in queue order: a gang that fits the free room of held nodes needs
    nothing; else the cheapest node type it may use is launched (spot first for ``auto``); a
    launch past ``max_workers`` or the budget is not made — the gang waits with the reason, and no
    later gang is launched for in this pass (queue order: no starvation of big gangs)."""
    p.rooms = _Rooms([[n.free_gpus, n.free_cpus, n.kind] for n in p.held])
    blocked = False
    launched_for = 0
    for g in p.ctx.waiting:
        taken: list = []
        placed = _fit_on_free(p.rooms, g, taken)
        if placed >= g.bundles:
            continue
        if blocked:
            p.d.waiting[g.job_id] = "behind a gang waiting for budget or max_workers"
            continue
        outcome, placed = _launch_for(p, g, placed, taken)
        if outcome[0] != "ok":
            verdict, why, event = outcome
            p.d.waiting[g.job_id] = why
            if event is not None:
                p.d.events.append(event)
            blocked = blocked or verdict == "blocked"
            continue
        _ok, (_cost, _name, t, n), fallback = outcome
        if fallback is not None:
            p.d.events.append(fallback)
        p.launch(t, n, LaunchCause.WAITING_GANG)
        launched_for += 1
        for _ in range(n):  # the new nodes' leftover room serves later gangs
            p.rooms.append([t.gpus, t.cpus, t.kind])
        _fit_on_free(p.rooms[-n:], replace(g, bundles=g.bundles - placed))
        p.rooms.taken()
    if launched_for:
        p.d.events.append(Event("scale_up", f"{launched_for} gang(s) waiting"
                                            + (f", util {p.ctx.gpu_util:.2f}" if p.ctx.gpu_util is not None else ""),
                                count=sum(p.d.launch.values())))


def minimum(p: _Pass) -> None:
    """3. Below ``min_workers``: the cheapest nodes, within the budget."""
    cfg = p.cfg
    if p.total() >= cfg.min_workers:
        return
    want = cfg.min_workers - p.total()
    added = 0
    for t in sorted(p.ctx.types, key=lambda t: (t.usd_per_hour, t.name)):
        while (added < want and p.slots[t.name] > 0 and p.per_type.get(t.name, 0) < t.max_workers
               and p.affordable(t.usd_per_hour)):
            p.launch(t, 1, LaunchCause.MINIMUM)
            added += 1
    if added:
        p.d.events.append(Event("scale_up", f"min_workers {cfg.min_workers}", count=added))
    if added < want:
        p.d.events.append(Event("blocked", f"min_workers {cfg.min_workers}: {want - added} node(s) not affordable "
                                           f"or not offered", count=want - added))


def headroom(p: _Pass) -> None:
    """4. Nothing waits and GPU utilisation is above ``scale_up_util``: one node more (spot first),
    at most once per ``cooldown_s``."""
    ctx, cfg = p.ctx, p.cfg
    if (not ctx.waiting and not p.d.launches and ctx.gpu_util is not None and ctx.gpu_util > cfg.scale_up_util
            and p.total() < cfg.max_workers
            and (ctx.last_scale_up_at is None or p.now - ctx.last_scale_up_at >= cfg.cooldown_s)):
        for t in sorted(ctx.types, key=lambda t: (t.kind != SPOT, t.usd_per_hour, t.name)):
            if p.slots[t.name] > 0 and p.per_type.get(t.name, 0) < t.max_workers and p.affordable(t.usd_per_hour):
                p.launch(t, 1, LaunchCause.HEADROOM)
                p.d.events.append(Event("scale_up", f"util {ctx.gpu_util:.2f} > {cfg.scale_up_util:.2f}", t.name, 1))
                break
    if p.d.launches:
        p.d.last_scale_up_at = p.now


RULES = (shed, place_waiting, return_to_spot, consolidate, minimum, headroom, release_idle_on_demand, scale_down_idle)


def decide(ctx: BudgetContext, now: float) -> BudgetDecision:
    """The rules, in their order, over one pass's state (``RULES``)."""
    p = _Pass(ctx, now)
    for rule in RULES:
        rule(p)
    p.d.committed_usd_per_hour = round(max(0.0, p.committed), 6)
    return p.d


__all__ = ["KIND_RESOURCE", "KIND_RESOURCE_UNITS", "KIND_BUNDLE_UNITS", "with_kind", "BudgetConfig",
           "BudgetConfigError", "NodeType", "HeldNode", "Gang", "BudgetContext", "Event", "BudgetDecision", "decide",
           "RULES", "Launch", "LaunchCause", "Release", "ReleaseCause", "RunningGang",
           "nodes_needed", "kinds_for", "cheapest_gang_usd_per_hour", "fmt_usd", "SPOT", "ON_DEMAND", "SPOT_CHOICES"]
