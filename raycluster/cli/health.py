"""``raycluster health``, ``drain NODE`` and ``undrain NODE``: node health from the Coordinator's
registry (HealthMonitor samples, ``policy.health`` verdicts), through the Ray client or the HTTP API.

Owns: the health table (state, score, reasons, drain, CPU/memory/GPU of the newest sample; the seed
grid CLI's ``health``) and its exit status: non-zero when any alive node is unhealthy.
"""

from __future__ import annotations

from raycluster.cli.format import print_json
from raycluster.errors import EXIT_OK

EXIT_UNHEALTHY = 1


def _gpus(sample: dict | None) -> str:
    if not sample or not sample.get("gpus"):
        return "-"
    return " ".join(f"{g['util_pct']:.0f}%/{g['mem_pct']:.0f}%/{g['temp_c']:.0f}C" for g in sample["gpus"])


def cmd_health(args) -> int:
    from raycluster.cli.commands import _client

    rows = _client(args).health()
    bad = [r for r in rows if r["alive"] and r["state"] == "unhealthy"]
    if args.json:
        print_json(rows)
        return EXIT_UNHEALTHY if bad else EXIT_OK
    cols = ("NODE", "ROLE", "STATE", "SCORE", "CPU%", "MEM%", "DISK_FREE%", "GPU util/mem/temp", "DRAIN", "REASONS")
    table = []
    for r in sorted(rows, key=lambda r: (not r["alive"], r["score"] if r["score"] is not None else 1e9)):
        s = r.get("sample") or {}
        table.append((r["node_id"][:16], "head" if r["is_head"] else ("worker" if r["alive"] else "dead"), r["state"],
                      "-" if r["score"] is None else f"{r['score']:.0f}", f"{s.get('cpu_pct', 0):.0f}" if s else "-",
                      f"{s.get('mem_pct', 0):.0f}" if s else "-", f"{s.get('disk_free_pct', 0):.0f}" if s else "-",
                      _gpus(s), r["drain_reason"] or "-", "; ".join(r["reasons"])))
    widths = [max(len(c), *(len(t[i]) for t in table)) if table else len(c) for i, c in enumerate(cols)]
    for line in (cols, *table):
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())
    if bad:
        print(f"{len(bad)} node(s) unhealthy")
    return EXIT_UNHEALTHY if bad else EXIT_OK


def cmd_drain(args) -> int:
    from raycluster.cli.commands import _client

    client = _client(args)
    out = client.drain(args.node, args.reason) if args.cmd == "drain" else client.undrain(args.node)
    if args.json:
        print_json(out)
    elif args.cmd == "drain":
        print(f"{out['node_id']} drained ({out['drain_reason']}): no new gangs; its gangs checkpoint and move")
    else:
        print(f"{out['node_id']} undrained: it takes gangs again")
    return EXIT_OK


def cmd_metrics(args) -> int:
    """Where the MetricsCollector serves /metrics, and its Prometheus file_sd file."""
    import ray

    from raycluster import constants as C
    from raycluster.cli.commands import _client
    from raycluster.control.actors import get_handle

    _client(args)  # connects (Ray client only: the collector is an actor)
    out = ray.get(get_handle(C.METRICS_COLLECTOR_NAME).address.remote(), timeout=30)
    if args.json:
        print_json(out)
    else:
        print(f"metrics: {out['url']}")
        print(f"Prometheus file_sd: {out['file_sd']} (beside Ray's own prom_metrics_service_discovery.json)")
    return EXIT_OK
