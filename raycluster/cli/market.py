"""``raycluster nodes`` and ``raycluster market preempt``: the rented nodes of an elastic local
cluster (started with ``raycluster up --local --elastic FILE``), read from its provider's state.

Owns: the nodes table (market, kind, GPU type, USD/hour, state, age, cost so far); what it shows
and the preemption come from ``provision/market/registry.py``, as for the HTTP API.
"""

from __future__ import annotations

import time
from pathlib import Path

from raycluster.cli.format import _fmt_age, print_json
from raycluster.errors import EXIT_OK


def cmd_nodes(args) -> int:
    from raycluster.provision.market.registry import rentals

    now = time.time()
    rows = rentals(Path(args.state_dir), args.all, now)
    if args.json:
        print_json(rows)
        return EXIT_OK
    cols = ("NODE", "TYPE", "MARKET", "KIND", "GPU", "USD/H", "STATE", "AGE", "COST_USD", "REASON")
    table = [(r["id"], r["node_type"], r["market"], "-" if r["market"] == "head" else r["kind"], r["gpu_type"] or "-",
              f"{r['usd_per_hour']:.4f}", r["state"], _fmt_age(r["created_at"]), f"{r['cost_usd']:.4f}",
              r["reason"] or "") for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) if table else len(c) for i, c in enumerate(cols)]
    for line in (cols, *table):
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())
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
