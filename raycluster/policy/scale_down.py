"""The budget policy's scale-down rules (``policy.budget``'s ``RULES`` 5a and 5b): which idle nodes
go. Pure, no Ray; each rule applies to one pass's state (``p``: the budget policy's working state,
as the other rules see it) through its ``launch`` / ``release``, each with its cause.

Owns:

* ``release_idle_on_demand`` — an on-demand node (the expensive fallback) idle past its idle
  timeout goes whatever the utilisation when no waiting gang needs on-demand — ``idle_timeout_s``
  scaled by the cheapest spot price over its price (``idle_timeout_by_price``, default on: it is
  held idle for what the cheapest node costs idle for ``idle_timeout_s``; ``on_demand_idle_timeout_s``); never
  below ``min_workers``, where it is swapped for a cheaper spot node when one is offered
  (``_cheaper_spot``: the floor is held with the cheapest nodes);
* ``scale_down_idle`` — nodes idle past ``idle_timeout_s`` go, most expensive first, never below
  ``min_workers``: all of them once utilisation stayed low for ``cooldown_s``; while the cluster is
  busy, all but the cheapest ``busy_idle_nodes_kept`` (the headroom the next arrival starts on).
"""

from __future__ import annotations

from raycluster.policy.budget_types import (ON_DEMAND, SPOT, Event, HeldNode, LaunchCause, NodeType, ReleaseCause,
                                            kinds_for)


def release_idle_on_demand(p) -> None:
    """5a. An on-demand node (the expensive fallback) idle past its idle timeout
    (``on_demand_idle_timeout_s``) goes whatever the utilisation, when no waiting gang needs
    on-demand: spot covers the rest. Never below ``min_workers``: there it is swapped for a cheaper
    spot node, when one is offered."""
    cfg, util = p.cfg, p.ctx.gpu_util if p.ctx.gpu_util is not None else 0.0
    if util < cfg.scale_down_util:  # (carried from decision to decision: the low-utilisation cooldown)
        p.d.low_util_since = p.ctx.low_util_since if p.ctx.low_util_since is not None else p.now
    else:
        p.d.low_util_since = None
    needs_od = any(kinds_for(g, cfg.spot_fallback_preemptions)[0] == ON_DEMAND for g in p.ctx.waiting)
    if needs_od or p.d.launches:
        return
    gone = p.released()
    count = sum(1 for n in p.held if n.id not in gone)
    od_down = 0
    for n in sorted(p.held, key=lambda n: (-n.usd_per_hour, n.id)):
        if n.kind != ON_DEMAND or n.starting or n.id in gone or n.idle_s < (t_s := on_demand_idle_timeout_s(p, n)):
            continue
        why = f"on-demand idle {n.idle_s:.0f}s (timeout {t_s:.0f}s), no waiting gang needs on-demand"
        if count <= cfg.min_workers:  # at the floor: swapped for a cheaper spot node, if one is offered
            t = _cheaper_spot(p, n)
            if t is None:
                continue
            p.release(n, f"{why}: {t.name} holds min_workers {cfg.min_workers} for less", ReleaseCause.IDLE_ON_DEMAND)
            p.launch(t, 1, LaunchCause.MINIMUM)
            od_down += 1
            continue
        p.release(n, why, ReleaseCause.IDLE_ON_DEMAND)
        count -= 1
        od_down += 1
    if od_down:
        p.d.events.append(Event("scale_down", f"{od_down} idle on-demand node(s): spot serves the rest", count=od_down))


def on_demand_idle_timeout_s(p, n: HeldNode) -> float:
    """How long an idle on-demand node is held: ``idle_timeout_s``, scaled by the cheapest spot price
    over its own with ``idle_timeout_by_price`` (held idle for what the cheapest node would cost idle
    for ``idle_timeout_s``: 300 s of a 0.16 USD/h spot T4 buys 91 s of a 0.53 one)."""
    cfg = p.cfg
    spot_usd = min((t.usd_per_hour for t in p.ctx.types if t.kind == SPOT), default=None)
    if not cfg.idle_timeout_by_price or spot_usd is None or n.usd_per_hour <= spot_usd:
        return cfg.idle_timeout_s
    return cfg.idle_timeout_s * spot_usd / n.usd_per_hour


def _cheaper_spot(p, n: HeldNode) -> NodeType | None:
    """The cheapest spot type offered (a market slot, under its max_workers, within the cap once
    ``n`` is given back) that costs less per hour than ``n``, or None."""
    for t in sorted(p.ctx.types, key=lambda t: (t.usd_per_hour, t.name)):
        if (t.kind == SPOT and t.usd_per_hour < n.usd_per_hour - 1e-9 and p.slots.get(t.name, 0) > 0
                and p.per_type.get(t.name, 0) < t.max_workers
                and (p.cap is None or p.committed - n.usd_per_hour + t.usd_per_hour <= p.cap + 1e-9)):
            return t
    return None


def scale_down_idle(p) -> None:
    """5b. Nothing waits, nothing launched: nodes idle for ``idle_timeout_s`` go, most expensive
    first, never below ``min_workers`` — all of them once utilisation has been below
    ``scale_down_util`` for ``cooldown_s``; while the cluster is busy, all but the cheapest
    ``busy_idle_nodes_kept`` (the headroom the next arrival starts on at once)."""
    cfg, d = p.cfg, p.d
    if p.ctx.waiting or d.launches:
        return
    quiet = d.low_util_since is not None and p.now - d.low_util_since >= cfg.cooldown_s
    util = p.ctx.gpu_util if p.ctx.gpu_util is not None else 0.0
    gone = p.released()
    count = sum(1 for n in p.held if n.id not in gone)
    reserved = p.reserved()
    idle = [n for n in p.held if not n.starting and n.idle_s >= cfg.idle_timeout_s and n.id not in gone
            and n.id not in reserved]
    keep = 0 if quiet else cfg.busy_idle_nodes_kept
    if len(idle) <= keep:
        return
    kept = {n.id for n in sorted(idle, key=lambda n: (n.usd_per_hour, n.idle_s, n.id))[:keep]}
    n_down = 0
    for n in sorted(idle, key=lambda n: (-n.usd_per_hour, -n.idle_s, n.id)):
        if count <= cfg.min_workers:
            break
        if n.id in kept:
            continue
        why = (f"idle {n.idle_s:.0f}s, util {util:.2f} < {cfg.scale_down_util:.2f}" if quiet else
               f"idle {n.idle_s:.0f}s; {keep} idle node(s) kept as headroom (util {util:.2f})")
        p.release(n, why, ReleaseCause.IDLE)
        count -= 1
        n_down += 1
    if n_down:
        d.events.append(Event("scale_down", f"{n_down} idle node(s), util {util:.2f} < {cfg.scale_down_util:.2f} "
                                            f"for {p.now - d.low_util_since:.0f}s" if quiet else
                              f"{n_down} idle node(s) past idle_timeout_s, {keep} kept as headroom", count=n_down))
