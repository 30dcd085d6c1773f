"""``raycluster nodes`` and ``raycluster market preempt``: the rented nodes of an elastic local
cluster (started with ``raycluster up --local --elastic FILE``), read from its provider's state.

Owns: the nodes table (market, kind, GPU type, USD/hour, state, age, cost so far); what it shows
and the preemption come from ``provision/market/registry.py``, as for the HTTP API.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from raycluster.cli.format import _fmt_age, print_json, text_table
from raycluster.errors import EXIT_OK


def cmd_nodes(args) -> int:
    from raycluster.provision.market.registry import rentals

    now = time.time()
    rows = rentals(Path(args.state_dir), args.all, now)
    if args.json:
        print_json(rows)
        return EXIT_OK
    cols = ("NODE", "RAY_NODE", "TYPE", "MARKET", "KIND", "GPU", "USD/H", "STATE", "AGE", "COST_USD", "REASON")
    table = [(r["id"], (r.get("ray_node_id") or "-")[:16], r["node_type"], r["market"],
              "-" if r["market"] == "head" else r["kind"], r["gpu_type"] or "-",
              f"{r['usd_per_hour']:.4f}", r["state"], _fmt_age(r["created_at"]), f"{r['cost_usd']:.4f}",
              r["reason"] or "") for r in rows]
    print(text_table(cols, table))
    held = sum(r["usd_per_hour"] for r in rows if r["state"] in ("requested", "running"))
    print(f"held now: {held:.4f} USD/hour")
    return EXIT_OK


def cmd_market_preempt(args) -> int:
    from raycluster.provision.market.registry import preempt

    notice = preempt(Path(args.state_dir), args.node, args.notice_s)
    if args.json:
        print_json(notice)
    else:
        print(f"{notice['node']}: preemption notice given; the market stops it in "
              f"{max(0.0, notice['deadline'] - time.time()):.0f}s")
    return EXIT_OK


def cmd_market_price(args) -> int:
    from raycluster.errors import InvalidSetting
    from raycluster.provision.market.registry import set_price

    if (args.usd_per_hour is None) == (not args.reset):
        raise InvalidSetting("usd_per_hour: give a price in USD/hour or --reset (not both)", field="usd_per_hour")
    out = set_price(Path(args.state_dir), args.gpu_type, args.kind, None if args.reset else args.usd_per_hour)
    if args.json:
        print_json(out)
    else:
        print(f"{out['kind']} {out['gpu_type']}: {out['usd_per_hour']:.4f} USD/hour from now on")
    return EXIT_OK


def cmd_cost(args) -> int:
    from raycluster.provision.spend import cost

    c = cost(Path(args.state_dir))
    if args.json:
        print_json(c)
        return EXIT_OK
    cap = c["max_hourly_budget_usd"]
    print(f"spend rate now   {c['committed_usd_per_hour']:.4f} USD/h"
          + (f" of a {cap:.2f} USD/h budget" if cap is not None else " (no budget cap)"))
    print(f"spent            {c['spend_usd']:.4f} USD over {c['rentals']} rental(s); today (UTC) {c['spend_today_usd']:.4f}")
    for kind, usd in c["by_kind_usd"].items():
        print(f"  {kind:<14} {usd:.4f} USD")
    for node_type, usd in c["by_node_type_usd"].items():
        print(f"  {node_type:<14} {usd:.4f} USD")
    print(f"held by jobs     {c['jobs_usd']:.4f} USD; idle or starting nodes {c['unattributed_usd']:.4f} USD")
    for tenant, usd in c["by_tenant_usd"].items():
        print(f"  tenant {tenant:<7} {usd:.4f} USD")
    print(f"saved by spot    {c['saved_vs_on_demand_usd']:.4f} USD against the same hours on-demand")
    return EXIT_OK


def cmd_events(args) -> int:
    from raycluster.provision.spend import events

    rows = events(Path(args.state_dir), args.limit)
    if args.json:
        print_json(rows)
        return EXIT_OK
    if not rows:
        print("no scaling events yet", file=sys.stderr)
    table = [(time.strftime("%m-%d %H:%M:%S", time.localtime(e["ts"])), e["source"], e["action"],
              str(e["count"]) if e.get("count") else "-", e.get("node_type") or "-", e["reason"]) for e in rows]
    if rows:
        print(text_table(("TIME", "SOURCE", "ACTION", "COUNT", "NODE_TYPE", "REASON"), table))
    return EXIT_OK


def cmd_budget(args) -> int:
    """Show the cap; ``--set``/``--clear`` change it through the cluster (``--address``: Ray or the HTTP
    API), which checks it (``policy.budget_types.check_cap``) and writes it (``provision.spend``)."""
    from raycluster.provision.spend import cost

    if args.clear or args.set is not None:
        from raycluster.cli.connect import client_for

        c = client_for(args).set_budget(None if args.clear else args.set)
    else:
        c = cost(Path(args.state_dir))
    if args.json:
        print_json({k: c[k] for k in ("max_hourly_budget_usd", "committed_usd_per_hour")})
    else:
        cap = c["max_hourly_budget_usd"]
        print(("no budget cap" if cap is None else f"budget {cap:.2f} USD/h")
              + f"; committed now {c['committed_usd_per_hour']:.4f} USD/h")
    return EXIT_OK
