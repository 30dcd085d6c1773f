"""Spot return: moving gangs that run on on-demand nodes back to spot when spot is there again, if
the move pays. Pure, no Ray; ``policy.budget``'s rule ``return_to_spot`` applies it in a pass.

Owns:

* ``expected_remaining_s`` — how long a running job is expected to run still: up to its
  ``max_runtime_s`` when it has one, else as long as it has run so far (a job that has run ``T`` is
  as likely as not to run ``T`` more: the median of a scale-free runtime);
* ``move_pays`` — the break-even of a move for cost: the saving ``(old - new) × remaining`` against
  the move's cost, its time (checkpoint, a node's start, the restart: ``spot_return_move_s``) paid at
  the price it runs at now — an upper bound of what the move can cost;
* ``plan`` — the on-demand node to give back this pass (at most one: moves are bounded, no
  thrash), or None: a held on-demand node every gang of which (a) may run on spot (``spot: auto``,
  ``preemptible``, spot-preempted fewer than ``spot_fallback_preemptions`` times — a gang that fell
  back for preemptions stays on on-demand), (b) was moved for cost fewer than ``max_moves_per_hour``
  times in the last hour, (c) fits on spot now — the free spot room of held nodes, else fresh spot
  nodes the market offers within ``max_workers`` and the cap (with the node given back), and (d)
  pays its move. Its gangs are then moved through the one evacuation protocol (checkpoint, drain,
  move, cause ``spot_return``) and placed again, spot first; the node is released once empty.
"""

from __future__ import annotations

from dataclasses import dataclass

from raycluster.policy.budget_types import (ON_DEMAND, SPOT, BudgetConfig, Gang, HeldNode, NodeType, RunningGang,
                                            fmt_usd, nodes_needed)


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
    node: HeldNode
    reason: str
    rooms_taken: tuple[tuple[int, float, float], ...]  # (room index, gpus, cpus) of held spot room used
    launches: tuple[tuple[str, int], ...]  # (spot node type, nodes) the gangs will need rented


def _fit(rooms: list[list], g: Gang) -> list[tuple[int, float, float]] | None:
    """The spot rooms (index, gpus, cpus) all of ``g``'s bundles take, first fit; None: they do not fit."""
    left = [list(r) for r in rooms]
    taken: list[tuple[int, float, float]] = []
    placed = 0
    for i, room in enumerate(left):
        if room[2] != SPOT:
            continue
        while placed < g.bundles and room[0] >= g.gpus - 1e-9 and room[1] >= g.cpus - 1e-9:
            room[0] -= g.gpus
            room[1] -= g.cpus
            taken.append((i, g.gpus, g.cpus))
            placed += 1
            if g.strict_spread:
                break
    return taken if placed >= g.bundles else None


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
        share = g.bundles * (g.gpus / t.gpus if g.gpus > 0 and t.gpus > 0 else g.cpus / t.cpus if t.cpus > 0 else 1.0)
        best = share * t.usd_per_hour if best is None else min(best, share * t.usd_per_hour)
    return best


def plan(cfg: BudgetConfig, held: list[HeldNode], gone: set[str], rooms: list[list], running: tuple[RunningGang, ...],
         types: list[NodeType], slots: dict[str, int], per_type: dict[str, int], committed_usd_per_hour: float,
         cap_usd_per_hour: float | None, nodes_total: int) -> Plan | None:
    """The on-demand node whose gangs go back to spot this pass (see the module's docstring), or None."""
    if not running:
        return None
    for n in sorted(held, key=lambda n: (-n.usd_per_hour, n.id)):
        if n.kind != ON_DEMAND or n.starting or n.id in gone:
            continue
        gangs = [r for r in running if n.id in r.rentals]
        if not gangs:
            continue
        left_rooms = [list(r) for r in rooms]
        left_slots, left_types = dict(slots), dict(per_type)
        taken_all: list[tuple[int, float, float]] = []
        launches: list[tuple[str, int]] = []
        saving = cost = 0.0
        extra_usd = 0.0
        ok = True
        for r in gangs:
            g = r.gang
            if (g.spot != "auto" or not r.preemptible or g.preemptions >= cfg.spot_fallback_preemptions
                    or r.moves_last_hour >= cfg.max_moves_per_hour):
                ok = False
                break
            new_rate = _spot_rate(types, g)
            if new_rate is None:
                ok = False
                break
            pays, s, c = move_pays(r.usd_per_hour, new_rate, r.remaining_s, cfg.spot_return_move_s)
            if not pays:
                ok = False
                break
            saving, cost = saving + s, cost + c
            taken = _fit(left_rooms, g)
            if taken is not None:
                for i, gpus, cpus in taken:
                    left_rooms[i][0] -= gpus
                    left_rooms[i][1] -= cpus
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
        if cap_usd_per_hour is not None and committed_usd_per_hour - n.usd_per_hour + extra_usd > cap_usd_per_hour + 1e-9:
            continue
        where = "free spot room" if not launches else ", ".join(f"{k} {t}" for t, k in launches)
        reason = (f"spot return: {', '.join(r.gang.job_id for r in gangs)} off on-demand {n.id} onto {where}; saves "
                  f"{fmt_usd(saving)} USD over the expected remaining runtime, the move costs {fmt_usd(cost)}")
        return Plan(n, reason, tuple(taken_all), tuple(launches))
    return None
