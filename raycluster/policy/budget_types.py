"""The budget policy's vocabulary: its configuration, what it is told (node types on offer, held
nodes, waiting gangs) and what it answers (a decision, events), the kind marker resources, and the
arithmetic of fitting a gang onto node types. Pure; ``policy.budget`` decides with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

from raycluster.labels import KIND_BUNDLE_UNITS, KIND_RESOURCE, KIND_RESOURCE_UNITS, ON_DEMAND, SPOT  # noqa: F401

SPOT_CHOICES = ("auto", "never", "only")
MAX_CAP_USD_PER_HOUR = 1e9  # (also the API schema's bound)


def with_kind(bundles: list[dict[str, float]], spot: str) -> list[dict[str, float]]:
    """``bundles`` as a gang with ``spot`` (auto | never | only) asks for them on an elastic cluster."""
    kind = {"only": SPOT, "never": ON_DEMAND}.get(spot)
    if kind is None:
        return bundles
    return [{**b, KIND_RESOURCE[kind]: KIND_BUNDLE_UNITS} for b in bundles]


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
    # spot return: what moving a gang costs in time (its checkpoint, a node's start, its restart),
    # paid at its price now; and how many times an hour a job may be moved for cost at most
    spot_return_move_s: float = 120.0
    max_moves_per_hour: int = 1
    # while the cluster is busy (utilisation not low for cooldown_s), nodes idle past idle_timeout_s
    # go but this many (the cheapest): the headroom the next arrival starts on without a launch
    busy_idle_nodes_kept: int = 1
    # an idle on-demand node goes after idle_timeout_s x (the cheapest spot price / its price): held idle
    # for what the cheapest node costs idle for idle_timeout_s (False: after idle_timeout_s, as spot)
    idle_timeout_by_price: bool = True

    def __post_init__(self):
        for name in ("min_workers", "max_workers", "spot_fallback_preemptions", "max_moves_per_hour",
                     "busy_idle_nodes_kept"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise BudgetConfigError(f"{name} must be an integer >= 0, not {v!r}", name)
        if self.min_workers > self.max_workers:
            raise BudgetConfigError(f"min_workers {self.min_workers} > max_workers {self.max_workers}", "min_workers")
        for name in ("cooldown_s", "idle_timeout_s", "spot_return_move_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise BudgetConfigError(f"{name} must be a number >= 0, not {v!r}", name)
        for name in ("scale_up_util", "scale_down_util"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise BudgetConfigError(f"{name} must be a number in [0, 1], not {v!r}", name)
        if self.scale_down_util > self.scale_up_util:
            raise BudgetConfigError("scale_down_util must be <= scale_up_util", "scale_down_util")
        if not isinstance(self.idle_timeout_by_price, bool):
            raise BudgetConfigError(f"idle_timeout_by_price must be true or false, not {self.idle_timeout_by_price!r}",
                                    "idle_timeout_by_price")
        check_cap(self.max_hourly_budget_usd)


def check_cap(value, field: str = "max_hourly_budget_usd") -> float | None:
    """The one check of an hourly cap, wherever it comes from (the config, ``budget --set``,
    ``PUT /budget``): None (no cap) or a number >= 0 below MAX_CAP_USD_PER_HOUR; else BudgetConfigError
    naming ``field``."""
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < MAX_CAP_USD_PER_HOUR):
        raise BudgetConfigError(f"max_hourly_budget_usd must be a number >= 0 (below {MAX_CAP_USD_PER_HOUR:g}), "
                                f"not {value!r}", field)
    return float(value)


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
class RunningGang:
    """A gang running on rented nodes (what the moves for cost weigh)."""
    gang: Gang  # its shape, spot choice and spot preemptions so far
    rentals: tuple[str, ...]  # the rented nodes it holds a share of
    usd_per_hour: float  # what its shares cost now
    remaining_s: float  # how long it is expected to run still
    moves_last_hour: int = 0  # moves for cost in the last hour
    preemptible: bool = True


@dataclass(frozen=True)
class BudgetContext:
    config: BudgetConfig
    types: tuple[NodeType, ...]
    held: tuple[HeldNode, ...] = ()
    waiting: tuple[Gang, ...] = ()  # queue order
    gpu_util: float | None = None  # mean over held GPU nodes, 0..1 (None: unknown)
    low_util_since: float | None = None
    last_scale_up_at: float | None = None
    running: tuple[RunningGang, ...] = ()  # gangs running on rented nodes (moves for cost)


@dataclass(frozen=True)
class Event:
    action: str  # scale_up | scale_down | shed | blocked | fallback
    reason: str
    node_type: str | None = None
    count: int = 0


class LaunchCause(str, Enum):
    """Why the budget policy launches nodes (the rule that did)."""
    WAITING_GANG = "waiting_gang"  # a waiting gang fits no held node's free room
    MINIMUM = "minimum"  # below min_workers
    HEADROOM = "headroom"  # nothing waits, GPU utilisation above scale_up_util


class ReleaseCause(str, Enum):
    """Why the budget policy releases a node (the rule that did)."""
    SHED = "shed"  # the held set costs more than the cap (a busy node's gangs move: cause budget)
    MAKE_ROOM = "make_room"  # idle, and a waiting gang it cannot serve needs its budget or slot
    IDLE_ON_DEMAND = "idle_on_demand"  # an idle on-demand node no waiting gang needs
    IDLE = "idle"  # idle past the timeout while utilisation stayed low
    SPOT_RETURN = "spot_return"  # an on-demand node whose gangs move back to spot (cause spot_return)
    CONSOLIDATE = "consolidate"  # a rented node whose gangs move onto the others' free room (cause consolidate)


class Launch(NamedTuple):
    node_type: str
    count: int
    cause: LaunchCause


class Release(NamedTuple):
    node_id: str
    reason: str
    cause: ReleaseCause


@dataclass
class BudgetDecision:
    launches: list[Launch] = field(default_factory=list)  # nodes to add now, each with its cause
    release: list[Release] = field(default_factory=list)  # (node id, reason, cause)
    waiting: dict[str, str] = field(default_factory=dict)  # job id -> why no node is launched for it
    events: list[Event] = field(default_factory=list)
    # a move for cost: the node given back -> the held nodes whose free room its gangs will take
    reserved: dict[str, tuple[str, ...]] = field(default_factory=dict)
    committed_usd_per_hour: float = 0.0  # after this decision is applied
    low_util_since: float | None = None
    last_scale_up_at: float | None = None

    @property
    def launch(self) -> dict[str, int]:
        """Node type -> nodes to add now (every cause together)."""
        out: dict[str, int] = {}
        for x in self.launches:
            out[x.node_type] = out.get(x.node_type, 0) + x.count
        return out


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
