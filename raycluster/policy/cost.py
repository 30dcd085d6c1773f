"""The cost ledger's arithmetic: what each job owes for the rented nodes it ran on. Pure.

A rental costs its price from its request to its release (``created_at`` → ``released_at``, or
now); a spot node's price moves with the market: ``prices`` holds every (since, USD/hour) it has had,
and each stretch is billed at its own price. A job owes, for every attempt and every rented node the attempt's gang was placed on, its
share of that node (its bundles' GPUs over the node's GPUs) × the node's price × the time it held it
— within the rental's own interval — including attempts cut short by a preemption (that time was
paid for and lost). What no job held (idle nodes, nodes starting, bundles unused) is
``unattributed``; jobs + unattributed = the rentals' total, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping


@dataclass(frozen=True)
class Rental:
    id: str
    usd_per_hour: float  # its price now
    start: float
    end: float | None  # None: still held
    prices: tuple[tuple[float, float], ...] = ()  # (since, USD/hour), oldest first; () = always usd_per_hour


def usd_between(usd_per_hour: float, prices, a0: float, a1: float) -> float:
    """USD for [a0, a1] of a node priced ``usd_per_hour`` now, whose price history is ``prices``
    ((since, USD/hour) oldest first; empty: one price all along)."""
    if not prices:
        return max(0.0, a1 - a0) / 3600.0 * usd_per_hour
    out = 0.0
    for i, (since, usd) in enumerate(prices):
        until = prices[i + 1][0] if i + 1 < len(prices) else float("inf")
        lo = since if i else -float("inf")  # (the first price holds from the start)
        out += overlap_h(a0, a1, lo, until) * usd
    return out


@dataclass
class Attribution:
    by_job_usd: dict[str, float] = field(default_factory=dict)
    total_usd: float = 0.0
    unattributed_usd: float = 0.0


def node_share(gpus: float, cpus: float, node_gpus: float, node_cpus: float) -> float:
    """The share of a node ``gpus``/``cpus`` take: its GPUs over the node's, or (no GPU asked or
    none on the node) its CPUs over the node's; 0 for a node with neither."""
    if gpus > 0 and node_gpus > 0:
        return gpus / node_gpus
    return cpus / node_cpus if node_cpus > 0 else 0.0


def overlap_h(a0: float, a1: float, b0: float, b1: float) -> float:
    """Hours the intervals [a0, a1] and [b0, b1] share."""
    return max(0.0, min(a1, b1) - max(a0, b0)) / 3600.0


def attribute(usage: Iterable[Mapping], rentals: Iterable[Rental], now: float,
              since: float = -float("inf")) -> Attribution:
    """``usage``: rows of ``store.usage`` (job_id, rental_id, share, start, end); only the time from
    ``since`` on is billed (a day's or a month's spend)."""
    by_id = {r.id: r for r in rentals}
    out = Attribution()
    for r in by_id.values():
        out.total_usd += usd_between(r.usd_per_hour, r.prices, max(r.start, since),
                                     min(r.end if r.end is not None else now, now))
    for u in usage:
        r = by_id.get(u["rental_id"])
        if r is None:
            continue
        r_end = r.end if r.end is not None else now
        u_end = u["end"] if u["end"] is not None else now
        share = max(0.0, min(1.0, float(u["share"])))
        usd = share * usd_between(r.usd_per_hour, r.prices, max(u["start"], r.start, since), min(u_end, r_end))
        out.by_job_usd[u["job_id"]] = out.by_job_usd.get(u["job_id"], 0.0) + usd
    out.unattributed_usd = out.total_usd - sum(out.by_job_usd.values())
    return out
