"""Elastic gangs (``num_workers: {min, max}``): at which size a gang starts, and when it grows.
Pure functions, no Ray.

Owns the sizing rules:

* **start** — a gang is placed at the largest size from ``max`` down to ``min`` that fits the free
  room now (``size_that_fits``); admission does the same inside its pass (``policy.admission``). A
  gang placed again after a node was lost, preempted or shed therefore *shrinks* to what the
  survivors' room holds and goes on from its newest checkpoint — it does not wait for a
  replacement node.
* **grow** — a running gang below ``max`` grows (checkpoint, then placed again larger: the one move
  protocol, cause ``elastic_grow``) when ``decide_grow`` says so: room for at least one more worker
  on the free room plus its own, nothing queued that is waiting for room (queued jobs come first),
  not being moved already, and its attempt has run ``grow_interval_s`` — so a gang resizes at most
  once per interval and a flapping node cannot make it thrash.

The job keeps its data exactly-once across sizes with a global sample position
(``raycluster.rank.data.GlobalSampler``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from raycluster.policy.placement import Resources, place


def size_that_fits(bundle: Resources, sizes: Iterable[int], free_by_node: dict[str, Resources],
                   strategy: str) -> int | None:
    """The first size of ``sizes`` (largest first) whose gang of ``bundle`` fits ``free_by_node``
    now; None when none does."""
    for n in sizes:
        if place([dict(bundle) for _ in range(n)], free_by_node, strategy) is not None:
            return n
    return None


def with_gang_back(free_by_node: dict[str, Resources], bundle: Resources, nodes: Iterable[str]) -> dict[str, Resources]:
    """The free room as it would be with a running gang's own bundles (one per entry of ``nodes``,
    the node of each) given back: the room it may be placed again on."""
    out = {n: dict(r) for n, r in free_by_node.items()}
    for node in nodes:
        room = out.setdefault(node, {})
        for k, v in bundle.items():
            room[k] = room.get(k, 0.0) + v
    return out


@dataclass(frozen=True)
class GrowContext:
    """One running elastic gang, as the grow rule sees it."""

    job_id: str
    world_size: int
    max_workers: int
    running_for_s: float  # since its current attempt started running
    moving: bool  # a move of it is in progress (any cause)
    fits: int | None  # the largest size that fits its own room plus the free room now
    queue_waits: bool  # a queued job waits for room (it comes first)


@dataclass(frozen=True)
class GrowDecision:
    job_id: str
    to_size: int | None  # None: stays
    reason: str


def decide_grow(ctx: GrowContext, grow_interval_s: float) -> GrowDecision:
    """Whether a running elastic gang grows now, and to which size."""
    def stay(why: str) -> GrowDecision:
        return GrowDecision(ctx.job_id, None, why)

    if ctx.world_size >= ctx.max_workers:
        return stay("at its largest size")
    if ctx.moving:
        return stay("being moved")
    if ctx.queue_waits:
        return stay("a queued job waits for room")
    if ctx.running_for_s < grow_interval_s:
        return stay(f"resized {ctx.running_for_s:.0f} s ago (< {grow_interval_s:g} s)")
    if ctx.fits is None or ctx.fits <= ctx.world_size:
        return stay("no room for another worker")
    to = min(ctx.fits, ctx.max_workers)
    return GrowDecision(ctx.job_id, to, f"elastic: room for {to} of {ctx.max_workers} workers (running at "
                                        f"{ctx.world_size}); checkpointed and placed again larger")
