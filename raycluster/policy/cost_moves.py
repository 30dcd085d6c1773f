"""Moves for cost: a running gang moved where it costs less, when the move pays. Pure, no Ray;
its two rules of ``policy.budget``'s ``RULES``, ``return_to_spot`` and ``consolidate``, apply it to
a pass (``p``: the budget policy's working state, as the other rules see it), and the
moved gangs go through the one evacuation protocol (checkpoint, drain, move, release the node).

Owns:

* ``expected_remaining_s`` — how long a running job is expected to run still: up to its
  ``max_runtime_s`` when it has one, else as long as it has run so far (a job that has run ``T`` is
  as likely as not to run ``T`` more: the median of a scale-free runtime);
* ``move_pays`` — the break-even of a move for cost: the saving ``(old - new) × remaining`` against
  the move's cost, its time (checkpoint, a node's start, the restart: ``spot_return_move_s``) paid at
  the price it runs at now — an upper bound of what the move can cost;
* ``plan_spot_return`` — the on-demand node to give back this pass (at most one: moves are
  bounded, no thrash), or None: a held on-demand node every gang of which (a) may run on spot
  (``spot: auto``, spot-preempted fewer than ``spot_fallback_preemptions`` times — a gang that fell
  back for preemptions stays on on-demand), (b) may be moved for cost (``movable``), (c) fits on spot
  now — the free spot room of held nodes, else fresh spot nodes the market offers within
  ``max_workers`` and the cap (with the node given back) — and (d) pays its move (old: what it
  costs now, new: its share of spot). While gangs wait for the budget or ``max_workers`` a spot
  return still goes when it takes nothing they wait for: no more fresh spot nodes than the rented
  nodes its gangs leave, at no more per hour than they cost now (``queue_blocked``) — at a busy
  peak that is when on-demand nodes held for ``spot: never`` jobs end up running ``auto`` gangs
  (the free room first goes to whatever waits). The moved gangs are placed again on
  spot only (their next attempt: ``JobRecord.attempt_spot``), not on the next free on-demand room;
* ``plan_consolidation`` — the rented node to empty this pass, or None: a held node whose gangs
  all lie on it alone, may be moved for cost and fit on the free room of the other held nodes in
  use (of the kinds their ``spot`` choice allows; an idle node is no target: it goes by itself),
  when giving it back pays: the node's price over the
  longest expected remaining runtime of its gangs against the move's time at that price (the room
  they move to is paid already). Cheapest to empty first: the fewest GPUs to move, then the dearest.

``movable``: ``preemptible`` (a ``preemptible: false`` job is never moved for cost) and moved for
cost fewer than ``max_moves_per_hour`` times in the last hour.
"""

from __future__ import annotations

from dataclasses import dataclass

from raycluster.policy.cost import node_share
from raycluster.policy.budget_types import (ON_DEMAND, SPOT, BudgetConfig, Event, Gang, HeldNode, NodeType,
                                            ReleaseCause, RunningGang, fmt_usd, nodes_needed)


def expected_remaining_s(elapsed_s: float, max_runtime_s: float | None) -> float:
    """How long a job that has run ``elapsed_s`` is expected to run still."""
    elapsed_s = max(0.0, elapsed_s)
    if max_runtime_s is not None:
        return max(0.0, max_runtime_s - elapsed_s)
    return elapsed_s


def move_pays(old_usd_per_hour: float, new_usd_per_hour: float, remaining_s: float,
              move_s: float) -> tuple[bool, float, float]:
    """(whether moving pays, the saving in USD, the move's cost in USD)."""
    saving = (old_usd_per_hour - new_usd_per_hour) * remaining_s / 3600.0
    cost = old_usd_per_hour * move_s / 3600.0
    return saving > cost + 1e-12, saving, cost


@dataclass(frozen=True)
class Plan:
    node: HeldNode  # the node given back
    reason: str
    rooms_taken: tuple[tuple[int, float, float], ...]  # (room index, gpus, cpus) of held spot room used
    launches: tuple[tuple[str, int], ...]  # (spot node type, nodes) the gangs will need rented


def _free(rooms: list[list], kinds: tuple[str, ...], usable=lambda i: True) -> dict[int, list]:
    """The rooms of ``kinds`` with some free room left, by index (most rooms of a busy cluster have none)."""
    return {i: list(r) for i, r in enumerate(rooms)
            if r[2] in kinds and (r[0] > 1e-9 or r[1] > 1e-9) and usable(i)}


def _fit(rooms: dict[int, list], g: Gang, kinds: tuple[str, ...] = (SPOT,), skip: int | None = None,
         used: dict[int, list] | None = None) -> list[tuple[int, float, float]] | None:
    """The rooms (index, gpus, cpus) of ``kinds`` (but room ``skip``) all of ``g``'s bundles take,
    first fit, less what ``used`` holds taken already (``rooms`` unchanged: a plan tries many nodes'
    gangs against the same rooms, so it keeps what it took aside rather than copy them); None: they
    do not fit."""
    taken: list[tuple[int, float, float]] = []
    placed = 0
    for i, room in rooms.items():
        if room[2] not in kinds or i == skip:
            continue
        u = used.get(i) if used else None
        gpus, cpus = (room[0] - u[0], room[1] - u[1]) if u else (room[0], room[1])
        while placed < g.bundles and gpus >= g.gpus - 1e-9 and cpus >= g.cpus - 1e-9:
            gpus -= g.gpus
            cpus -= g.cpus
            taken.append((i, g.gpus, g.cpus))
            placed += 1
            if g.strict_spread:
                break
        if placed >= g.bundles:
            return taken
    return None


def _take(used: dict[int, list], taken: list[tuple[int, float, float]]) -> None:
    """Keep aside (in ``used``: room index -> [gpus, cpus]) the room ``taken``."""
    for i, gpus, cpus in taken:
        u = used.setdefault(i, [0.0, 0.0])
        u[0] += gpus
        u[1] += cpus


def _fresh(types: list[NodeType], g: Gang, slots: dict[str, int], per_type: dict[str, int]):
    """(USD/hour, type, nodes) of the cheapest spot type with market slots for all of ``g``, or None."""
    best = None
    for t in types:
        if t.kind != SPOT:
            continue
        n = nodes_needed(t, g)
        if n is None or n > slots.get(t.name, 0) or per_type.get(t.name, 0) + n > t.max_workers:
            continue
        if best is None or n * t.usd_per_hour < best[0]:
            best = (n * t.usd_per_hour, t, n)
    return best


def _spot_rate(types: list[NodeType], g: Gang) -> float | None:
    """What ``g`` costs per hour on spot nodes (its share of the cheapest spot type it fits)."""
    best = None
    for t in types:
        if t.kind != SPOT or nodes_needed(t, g) is None:
            continue
        share = g.bundles * node_share(g.gpus, g.cpus, t.gpus, t.cpus)
        best = share * t.usd_per_hour if best is None else min(best, share * t.usd_per_hour)
    return best


def movable(cfg: BudgetConfig, r: RunningGang) -> bool:
    return r.preemptible and r.moves_last_hour < cfg.max_moves_per_hour


def _by_node(running: tuple[RunningGang, ...]) -> dict[str, list[RunningGang]]:
    out: dict[str, list[RunningGang]] = {}
    for r in running:
        for rid in r.rentals:
            out.setdefault(rid, []).append(r)
    return out


def plan_spot_return(cfg: BudgetConfig, held: list[HeldNode], gone: set[str], rooms: list[list],
                     running: tuple[RunningGang, ...], types: list[NodeType], slots: dict[str, int],
                     per_type: dict[str, int], committed_usd_per_hour: float, cap_usd_per_hour: float | None,
                     nodes_total: int, queue_blocked: bool = False) -> Plan | None:
    """The on-demand node whose gangs go back to spot this pass (see the module's docstring), or None."""
    if not running or cfg.max_moves_per_hour <= 0:
        return None
    by_node = _by_node(running)
    on_demand = [n for n in held if n.kind == ON_DEMAND and not n.starting and n.id not in gone and n.id in by_node]
    if not on_demand:
        return None
    spot_rooms = _free(rooms, (SPOT,))
    if not spot_rooms and not any(t.kind == SPOT and slots.get(t.name, 0) > 0
                                  and per_type.get(t.name, 0) < t.max_workers for t in types):
        return None  # no spot room and none offered: nothing to go back to
    for n in sorted(on_demand, key=lambda n: (-n.usd_per_hour, n.id)):
        gangs = by_node[n.id]
        if not all(r.gang.spot == "auto" and r.gang.preemptions < cfg.spot_fallback_preemptions and movable(cfg, r)
                   for r in gangs):
            continue
        used: dict[int, list] = {}  # the spot room this node's gangs take, so far
        left_slots, left_types = dict(slots), dict(per_type)
        taken_all: list[tuple[int, float, float]] = []
        launches: list[tuple[str, int]] = []
        saving = cost = 0.0
        extra_usd = 0.0
        ok = True
        for r in gangs:
            g = r.gang
            new_rate = _spot_rate(types, g)
            if new_rate is None:
                ok = False
                break
            pays, s, c = move_pays(r.usd_per_hour, new_rate, r.remaining_s, cfg.spot_return_move_s)
            if not pays:
                ok = False
                break
            saving, cost = saving + s, cost + c
            taken = _fit(spot_rooms, g, used=used)
            if taken is not None:
                _take(used, taken)
                taken_all += taken
                continue
            fresh = _fresh(types, g, left_slots, left_types)
            if fresh is None:
                ok = False
                break
            usd, t, k = fresh
            left_slots[t.name] -= k
            left_types[t.name] = left_types.get(t.name, 0) + k
            extra_usd += usd
            launches.append((t.name, k))
        if not ok:
            continue
        launched = sum(k for _t, k in launches)
        if nodes_total - 1 + launched > cfg.max_workers:
            continue
        if queue_blocked and (launched > len({rid for r in gangs for rid in r.rentals})
                              or extra_usd > sum(r.usd_per_hour for r in gangs) + 1e-9):
            continue  # (gangs wait for a node or the budget: no more nodes nor USD/h than the gangs leave)
        if cap_usd_per_hour is not None and committed_usd_per_hour - n.usd_per_hour + extra_usd > cap_usd_per_hour + 1e-9:
            continue
        where = "free spot room" if not launches else ", ".join(f"{k} {t}" for t, k in launches)
        reason = (f"spot return: {', '.join(r.gang.job_id for r in gangs)} off on-demand {n.id} onto {where}; saves "
                  f"{fmt_usd(saving)} USD over the expected remaining runtime, the move costs {fmt_usd(cost)}")
        return Plan(n, reason, tuple(taken_all), tuple(launches))
    return None


def plan_consolidation(cfg: BudgetConfig, held: list[HeldNode], gone: set[str], rooms: list[list],
                       running: tuple[RunningGang, ...]) -> Plan | None:
    """The rented node whose gangs move onto the others' free room this pass (see the module's
    docstring), or None. ``rooms[i]`` is ``held[i]``'s free room ([gpus, cpus, kind])."""
    if not running or cfg.max_moves_per_hour <= 0:
        return None
    by_node = _by_node(running)
    # the free room of held nodes in use, up and staying (not of idle nodes — they go by themselves —
    # nor of nodes being launched this pass); at least two such nodes, or no node can empty onto another
    free = _free(rooms, (SPOT, ON_DEMAND), lambda j: j < len(held) and not held[j].starting
                 and held[j].id not in gone and held[j].idle_s <= 0 and held[j].id in by_node)
    if not free:
        return None
    largest = max(r[0] for r in free.values()), max(r[1] for r in free.values())
    candidates = []
    for i, n in enumerate(held):
        gangs = by_node.get(n.id)
        if n.starting or n.id in gone or not gangs or i >= len(rooms):
            continue
        if any(r.rentals != (n.id,) or not movable(cfg, r) or r.gang.gpus > largest[0] + 1e-9
               or r.gang.cpus > largest[1] + 1e-9 for r in gangs):
            continue
        candidates.append((sum(r.gang.bundles * r.gang.gpus for r in gangs), -n.usd_per_hour, n.id, i, gangs))
    for _gpus, _neg_usd, _nid, i, gangs in sorted(candidates):
        n = held[i]
        remaining = max(r.remaining_s for r in gangs)
        pays, saving, cost = move_pays(n.usd_per_hour, 0.0, remaining, cfg.spot_return_move_s)
        if not pays:
            continue
        used: dict[int, list] = {}  # the room its gangs take, so far
        taken_all: list[tuple[int, float, float]] = []
        ok = True
        for r in gangs:
            kinds = {"only": (SPOT,), "never": (ON_DEMAND,)}.get(r.gang.spot, (SPOT, ON_DEMAND))
            taken = _fit(free, r.gang, kinds, skip=i, used=used)
            if taken is None:
                ok = False
                break
            _take(used, taken)
            taken_all += taken
        if not ok:
            continue
        reason = (f"consolidate: {', '.join(r.gang.job_id for r in gangs)} off {n.id} onto the free room of "
                  f"{', '.join(dict.fromkeys(held[j].id for j, _g, _c in taken_all))}; saves {fmt_usd(saving)} USD "
                  f"over the expected remaining runtime, the move costs {fmt_usd(cost)}")
        return Plan(n, reason, tuple(taken_all), ())
    return None


# ---------------------------------------------------------------------------------------------- the rules
def return_to_spot(p) -> None:
    """2b. Gangs on an on-demand node go back to spot when it is there again and the move pays (while
    gangs wait for the budget or ``max_workers``, only a move that takes neither from them)."""
    if not p.ctx.running:
        return
    gone = p.released()
    plan = plan_spot_return(p.cfg, p.held, gone, list(p.rooms), p.ctx.running, list(p.ctx.types), p.slots,
                            p.per_type, p.committed, p.cap, sum(1 for n in p.held if n.id not in gone)
                            + sum(p.d.launch.values()), queue_blocked=bool(p.d.waiting))
    if plan is not None:
        _move_off(p, plan, ReleaseCause.SPOT_RETURN, "spot_return")


def _move_off(p, plan, cause: ReleaseCause, action: str) -> None:
    """Give back ``plan.node`` (its gangs move), the room they will take kept from later rules."""
    p.release(plan.node, plan.reason, cause)
    for i, gpus, cpus in plan.rooms_taken:
        p.rooms[i][0] -= gpus
        p.rooms[i][1] -= cpus
    p.rooms.taken()
    p.d.reserved[plan.node.id] = tuple(dict.fromkeys(p.held[i].id for i, _g, _c in plan.rooms_taken
                                                     if i < len(p.held)))
    p.d.events.append(Event(action, plan.reason, plan.node.node_type, 1))


def consolidate(p) -> None:
    """2c. A rented node whose gangs fit on the others' free room is emptied when that pays."""
    if p.d.waiting or not p.ctx.running or any(r.cause == ReleaseCause.SPOT_RETURN for r in p.d.release):
        return
    plan = plan_consolidation(p.cfg, p.held, p.released(), list(p.rooms), p.ctx.running)
    if plan is not None:
        _move_off(p, plan, ReleaseCause.CONSOLIDATE, "consolidate")
