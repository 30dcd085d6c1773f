"""``raycluster nodes`` and ``raycluster market preempt``: the rented nodes of an elastic local
cluster (started with ``raycluster up --local --elastic FILE``), read from its provider's state.

Owns: finding the elastic cluster's autoscaling config under ``--state-dir``, the nodes table
(market, kind, GPU type, USD/hour, state, age, cost so far) and preempting a spot node on the local
market (a notice now, the node killed at the deadline).
"""

from __future__ import annotations

import time
from pathlib import Path

from raycluster.cli.format import _fmt_age, print_json
from raycluster.errors import EXIT_OK, ClusterUnavailable


def _provider_config(state_dir: Path) -> dict:
    from raycluster.provision.local.record import cluster_dir, read_json

    config = read_json(cluster_dir(state_dir) / "autoscaling.json")
    if not config:
        raise ClusterUnavailable(f"no elastic cluster under {state_dir} (start one with "
                                "`raycluster up --local --elastic configs/elastic.yaml`)")
    return config


def cmd_nodes(args) -> int:
    from raycluster.store.rentals import RentalStore

    config = _provider_config(Path(args.state_dir))
    store = RentalStore(Path(config["provider"]["state_dir"]) / "rentals.db")
    rows = [r for r in store.list(None) if args.all or r.state.value != "released"]
    now = time.time()
    if args.json:
        print_json([r.to_dict(now) for r in rows])
        return EXIT_OK
    cols = ("NODE", "TYPE", "MARKET", "KIND", "GPU", "USD/H", "STATE", "AGE", "COST_USD", "REASON")
    table = [(r.id, r.node_type, r.market, "-" if r.market == "head" else r.kind, r.gpu_type or "-", f"{r.usd_per_hour:.4f}", r.state.value,
              _fmt_age(r.created_at), f"{r.cost_usd(now):.4f}", r.reason or "") for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) if table else len(c) for i, c in enumerate(cols)]
    for line in (cols, *table):
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())
    held = sum(r.usd_per_hour for r in rows if r.state.value in ("requested", "running"))
    print(f"held now: {held:.4f} USD/hour")
    return EXIT_OK


def cmd_market_preempt(args) -> int:
    from raycluster.provision.node_provider import make_markets

    config = _provider_config(Path(args.state_dir))
    markets = make_markets(config["provider"], Path(config["provider"]["state_dir"]))
    notice = markets["local"].preempt(args.node, notice_s=args.notice_s)
    if args.json:
        print_json({"node": notice.rental_id, "deadline": notice.deadline, "reason": notice.reason})
    else:
        print(f"{notice.rental_id}: preemption notice given; the market stops it in "
              f"{max(0.0, notice.deadline - time.time()):.0f}s")
    return EXIT_OK
