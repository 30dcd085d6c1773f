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
   (``low_util_since`` is carried from decision to decision by the caller).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

SPOT, ON_DEMAND = "spot", "on_demand"
SPOT_CHOICES = ("auto", "never", "only")


class BudgetConfigError(ValueError):
    """A budget setting is invalid; ``field`` names it. Retrying will not help."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class BudgetConfig:
    min_workers: int = 0
    max_workers: int = 32
    max_hourly_budget_usd: float | None = None  # None: no cap
    scale_up_util: float = 0.8
    scale_down_util: float = 0.3
    cooldown_s: float = 600.0
    idle_timeout_s: float = 300.0
    spot_fallback_preemptions: int = 2

    def __post_init__(self):
        for name in ("min_workers", "max_workers", "spot_fallback_preemptions"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise BudgetConfigError(f"{name} must be an integer >= 0, not {v!r}", name)
        if self.min_workers > self.max_workers:
            raise BudgetConfigError(f"min_workers {self.min_workers} > max_workers {self.max_workers}", "min_workers")
        for name in ("cooldown_s", "idle_timeout_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise BudgetConfigError(f"{name} must be a number >= 0, not {v!r}", name)
        for name in ("scale_up_util", "scale_down_util"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise BudgetConfigError(f"{name} must be a number in [0, 1], not {v!r}", name)
        if self.scale_down_util > self.scale_up_util:
            raise BudgetConfigError("scale_down_util must be <= scale_up_util", "scale_down_util")
        cap = self.max_hourly_budget_usd
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or cap < 0
                                or not math.isfinite(cap)):
            raise BudgetConfigError(f"max_hourly_budget_usd must be a number >= 0, not {cap!r}", "max_hourly_budget_usd")


@dataclass(frozen=True)
class NodeType:
    """A worker node type and what its market offers now."""
    name: str
    kind: str  # spot | on_demand
    usd_per_hour: float
    gpus: int
    cpus: float
    available: int  # slots the market has now (0: none offered)
    max_workers: int = 1 << 30


@dataclass(frozen=True)
class HeldNode:
    id: str
    node_type: str
    kind: str
    usd_per_hour: float  # its current price (spot prices move)
    free_gpus: float = 0.0
    free_cpus: float = 0.0
    idle_s: float = 0.0  # how long nothing has run on it (0: busy)
    starting: bool = False


@dataclass(frozen=True)
class Gang:
    """A waiting gang: ``bundles`` bundles of ``gpus``/``cpus`` each."""
    job_id: str
    bundles: int
    gpus: float
    cpus: float
    strict_spread: bool = False
    spot: str = "auto"
    preemptions: int = 0


@dataclass(frozen=True)
class BudgetContext:
    config: BudgetConfig
    types: tuple[NodeType, ...]
    held: tuple[HeldNode, ...] = ()
    waiting: tuple[Gang, ...] = ()  # queue order
    gpu_util: float | None = None  # mean over held GPU nodes, 0..1 (None: unknown)
    low_util_since: float | None = None
    last_scale_up_at: float | None = None


@dataclass(frozen=True)
class Event:
    action: str  # scale_up | scale_down | shed | blocked | fallback
    reason: str
    node_type: str | None = None
    count: int = 0


@dataclass
class BudgetDecision:
    launch: dict[str, int] = field(default_factory=dict)  # node type -> nodes to add now
    release: list[tuple[str, str]] = field(default_factory=list)  # (node id, reason)
    waiting: dict[str, str] = field(default_factory=dict)  # job id -> why no node is launched for it
    events: list[Event] = field(default_factory=list)
    committed_usd_per_hour: float = 0.0  # after this decision is applied
    low_util_since: float | None = None
    last_scale_up_at: float | None = None


def fmt_usd(x: float) -> str:
    return f"{x:.2f}"


# ------------------------------------------------------------------------------- helpers
def _per_node(t: NodeType, g: Gang) -> int:
    """Bundles of ``g`` one fresh node of type ``t`` holds."""
    fits = []
    if g.gpus > 0:
        fits.append(int(t.gpus // g.gpus) if t.gpus >= g.gpus else 0)
    if g.cpus > 0:
        fits.append(int(t.cpus // g.cpus) if t.cpus >= g.cpus else 0)
    n = min(fits) if fits else g.bundles
    return min(n, 1) if g.strict_spread else n


def nodes_needed(t: NodeType, g: Gang, placed: int = 0) -> int | None:
    """Fresh nodes of type ``t`` for the ``g.bundles - placed`` bundles left (None: never fits)."""
    per = _per_node(t, g)
    if per <= 0:
        return None
    return math.ceil(max(0, g.bundles - placed) / per)


def kinds_for(g: Gang, fallback_after: int) -> tuple[str, ...]:
    """Node kinds a gang may use, preferred first."""
    if g.spot == "only":
        return (SPOT,)
    if g.spot == "never":
        return (ON_DEMAND,)
    if g.preemptions >= fallback_after:
        return (ON_DEMAND, SPOT)
    return (SPOT, ON_DEMAND)


class _Rooms(list):
    """The free room of held (and just launched) nodes as [gpus, cpus] lists, with the largest free
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


def _fit_on_free(rooms: list[list[float]], g: Gang) -> int:
    """Place bundles of ``g`` on the free room of held nodes (first fit, room taken); how many."""
    if isinstance(rooms, _Rooms):
        gmax, cmax = rooms.largest()
        if g.gpus > gmax or g.cpus > cmax:
            return 0
    placed = 0
    for room in rooms:
        while placed < g.bundles and room[0] >= g.gpus and room[1] >= g.cpus:
            room[0] -= g.gpus
            room[1] -= g.cpus
            placed += 1
            if g.strict_spread:
                break
        if placed == g.bundles:
            break
    if placed and isinstance(rooms, _Rooms):
        rooms.taken()
    return placed


def _make_room(held: list[HeldNode], rooms: list[list[float]], d: "BudgetDecision", over_usd: float,
               idle_timeout_s: float) -> list[HeldNode]:
    """Idle nodes (past the idle timeout, untouched by the gangs placed so far in this pass, not
    already released) whose release brings the spend rate down by ``over_usd``, most expensive
    first; [] when even all of them would not. Without this, a gang blocked by the budget behind
    idle nodes it cannot use would wait forever: idle nodes are otherwise released only when
    nothing waits."""
    gone = {i for i, _ in d.release}
    idle = [n for i, n in enumerate(held)
            if n.idle_s >= idle_timeout_s and not n.starting and n.id not in gone
            and rooms[i][0] == n.free_gpus and rooms[i][1] == n.free_cpus]
    picked, freed = [], 0.0
    for n in sorted(idle, key=lambda n: (-n.usd_per_hour, n.id)):
        if freed >= over_usd - 1e-9:
            break
        picked.append(n)
        freed += n.usd_per_hour
    return picked if freed >= over_usd - 1e-9 else []


def cheapest_gang_usd_per_hour(types: tuple[NodeType, ...] | list[NodeType], g: Gang,
                               fallback_after: int = 2) -> float | None:
    """The lowest spend rate at which ``g`` could ever run on fresh nodes (ignoring what is
    offered now): what submit-time checks compare with the budget. None: no type fits it."""
    best = None
    kinds = set(kinds_for(g, fallback_after))
    for t in types:
        if t.kind not in kinds:
            continue
        n = nodes_needed(t, g)
        if n is None or n > t.max_workers:
            continue
        cost = n * t.usd_per_hour
        best = cost if best is None else min(best, cost)
    return best


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

    def total() -> int:
        return len(held) + sum(d.launch.values())

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
    rooms = _Rooms([[n.free_gpus, n.free_cpus] for n in held])
    blocked = False
    launched_for = 0
    for g in ctx.waiting:
        placed = _fit_on_free(rooms, g)
        if placed >= g.bundles:
            continue
        if blocked:
            d.waiting[g.job_id] = "behind a gang waiting for budget or max_workers"
            continue
        choice, why_not = None, []
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
                choice = min(options)
                if kind == ON_DEMAND and g.spot == "auto":
                    reason = (f"preempted {g.preemptions}x" if g.preemptions >= cfg.spot_fallback_preemptions
                              else "no spot node offered")
                    d.events.append(Event("fallback", f"{g.job_id}: on-demand ({reason})", choice[1], choice[3]))
                break
        if choice is None:
            why = ", ".join(sorted(set(why_not)))
            if cap is not None and "cost more than the budget" in why:  # what is left costs more than allowed
                d.waiting[g.job_id] = f"budget {fmt_usd(committed)}/{fmt_usd(cap)} USD/h: {why}"
                d.events.append(Event("blocked", f"budget {fmt_usd(committed)}/{fmt_usd(cap)} USD/h: {g.job_id}: {why}"))
                blocked = True
                continue
            d.waiting[g.job_id] = "no node type offered fits it" + (f" ({why})" if why else "")
            continue
        cost, _name, t, n = choice
        if total() + n > cfg.max_workers:
            d.waiting[g.job_id] = f"max_workers {cfg.max_workers} reached"
            d.events.append(Event("blocked", f"{g.job_id}: max_workers {cfg.max_workers}", t.name, n))
            blocked = True
            continue
        if cap is not None and committed + cost > cap + 1e-9:
            room = _make_room(held, rooms, d, committed + cost - cap, cfg.idle_timeout_s)
            if room:  # idle nodes it cannot use give their budget to it: released, then it is rented for
                freed = sum(h.usd_per_hour for h in room)
                reason = f"make room: {g.job_id} needs {fmt_usd(cost)} USD/h within budget {fmt_usd(cap)}"
                index = {h.id: i for i, h in enumerate(held)}
                for h in room:
                    d.release.append((h.id, reason))
                    per_type[h.node_type] -= 1
                    rooms[index[h.id]][:] = [0.0, 0.0]  # gone: no later gang is placed there
                rooms.taken()
                committed -= freed
                d.events.append(Event("scale_down", f"{reason}: released {len(room)} idle node(s)", count=len(room)))
        if cap is not None and committed + cost > cap + 1e-9:
            d.waiting[g.job_id] = f"budget {fmt_usd(committed)}/{fmt_usd(cap)} USD/h, needs {fmt_usd(cost)} more"
            d.events.append(Event("blocked", f"budget {fmt_usd(committed)}/{fmt_usd(cap)} USD/h: {g.job_id} needs "
                                             f"{n} {t.name} at {fmt_usd(cost)}", t.name, n))
            blocked = True
            continue
        launch(t, n)
        launched_for += 1
        # the new nodes' leftover room serves later gangs
        for _ in range(n):
            rooms.append([t.gpus, t.cpus])
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
    if not ctx.waiting and not d.launch and d.low_util_since is not None and now - d.low_util_since >= cfg.cooldown_s:
        keep = cfg.min_workers
        count = len(held)
        for n in sorted(held, key=lambda n: (-n.usd_per_hour, -n.idle_s, n.id)):
            if count <= keep:
                break
            if n.starting or n.idle_s < cfg.idle_timeout_s:
                continue
            d.release.append((n.id, f"idle {n.idle_s:.0f}s, util {util:.2f} < {cfg.scale_down_util:.2f}"))
            committed -= n.usd_per_hour
            count -= 1
        n_down = sum(1 for _, r in d.release if r.startswith("idle"))
        if n_down:
            d.events.append(Event("scale_down", f"{n_down} idle node(s), util {util:.2f} < {cfg.scale_down_util:.2f} "
                                                f"for {now - d.low_util_since:.0f}s", count=n_down))
    d.committed_usd_per_hour = round(max(0.0, committed), 6)
    return d


__all__ = ["BudgetConfig", "BudgetConfigError", "NodeType", "HeldNode", "Gang", "BudgetContext", "Event",
           "BudgetDecision", "decide", "nodes_needed", "kinds_for", "cheapest_gang_usd_per_hour", "SPOT", "ON_DEMAND"]
