"""``raycluster health``, ``drain NODE`` and ``undrain NODE``: node health from the Coordinator's
registry (HealthMonitor samples, ``policy.health`` verdicts), through the Ray client or the HTTP API.

Owns: the health table (state, score, reasons, drain, CPU/memory/GPU of the newest sample; the seed
grid CLI's ``health``), a line per shared host whose memory, disk or load stand out (judged once for
the host, never a node's fault), and its exit status: non-zero when any node is unhealthy, or dead
without having been given back on purpose.
"""

from __future__ import annotations

from raycluster.cli.format import print_json, text_table
from raycluster.errors import EXIT_OK

EXIT_UNHEALTHY = 1


def _gpus(sample: dict | None) -> str:
    if not sample or not sample.get("gpus"):
        return "-"
    return " ".join(f"{g['util_pct']:.0f}%/{g['mem_pct']:.0f}%/{g['temp_c']:.0f}C" for g in sample["gpus"])


def cmd_health(args) -> int:
    from raycluster.cli.connect import client_for

    rows = client_for(args).health()
    # a page-worthy node: unhealthy, or dead without having been given back on purpose (a node the
    # cluster released — idle, shed, down, preempted — reads "released" and is not a fault)
    bad = [r for r in rows if r["state"] == "unhealthy" or (not r["alive"] and r["state"] != "released")]
    if args.json:
        print_json(rows)
        return EXIT_UNHEALTHY if bad else EXIT_OK
    cols = ("NODE", "ROLE", "STATE", "SCORE", "CPU%", "MEM%", "DISK_FREE%", "GPU util/mem/temp", "DRAIN", "REASONS")
    table = []
    for r in sorted(rows, key=lambda r: (not r["alive"], r["score"] if r["score"] is not None else 1e9)):
        s = r.get("sample") or {}
        role = "head" if r["is_head"] else "worker" if r["alive"] else "gone" if r["state"] == "released" else "dead"
        table.append((r["node_id"][:16], role, r["state"],
                      "-" if r["score"] is None else f"{r['score']:.0f}", f"{s.get('cpu_pct', 0):.0f}" if s else "-",
                      f"{s.get('mem_pct', 0):.0f}" if s else "-", f"{s.get('disk_free_pct', 0):.0f}" if s else "-",
                      _gpus(s), r["drain_reason"] or "-", "; ".join(r["reasons"])))
    print(text_table(cols, table))
    hosts: dict[str, tuple[int, list[str]]] = {}
    for r in rows:
        if r["alive"] and r.get("host_shared"):
            n, reasons = hosts.get(r["address"] or "?", (0, []))
            hosts[r["address"] or "?"] = (n + 1, reasons or list(r.get("host_reasons") or []))
    for address, (n, reasons) in sorted(hosts.items()):
        if reasons:
            print(f"host {address} ({n} nodes): {'; '.join(reasons)}")
    if bad:
        dead = sum(not r["alive"] for r in bad)
        print(f"{len(bad)} node(s) unhealthy" + (f" ({dead} dead)" if dead else ""))
    return EXIT_UNHEALTHY if bad else EXIT_OK


def cmd_drain(args) -> int:
    from raycluster.cli.connect import client_for

    client = client_for(args)
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
    from raycluster.cli.connect import client_for
    from raycluster.control.handles import get_handle

    client_for(args, ray_only=True)  # connects (the collector is an actor)
    out = ray.get(get_handle(C.METRICS_COLLECTOR_NAME).address.remote(), timeout=30)
    if args.json:
        print_json(out)
    else:
        print(f"metrics: {out['url']}")
        print(f"Prometheus file_sd: {out['file_sd']} (beside Ray's own prom_metrics_service_discovery.json)")
    return EXIT_OK


def cmd_notify(args) -> int:
    """Install a notification config (checked first) or show the outbox: what was sent, what waits."""
    from pathlib import Path

    import yaml

    from raycluster.control.observe.notify import notify_path, parse_config, safe_name
    from raycluster.store.outbox import Outbox
    from raycluster.util.files import atomic_write

    if args.set:
        from raycluster.cli.connect import BadArgument

        try:
            hooks = parse_config(yaml.safe_load(Path(args.set).read_text()), args.set)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise BadArgument(str(exc)) from None
        atomic_write(notify_path(args.state_dir), Path(args.set).read_text(), mode=0o600)  # URLs hold secrets
        out = [{"name": h["name"], "url": safe_name(h["url"]), "format": h["format"], "events": h["events"]}
               for h in hooks]
        if args.json:
            print_json(out)
        else:
            print(f"{len(hooks)} webhook(s) installed at {notify_path(args.state_dir)}: "
                  + ", ".join(f"{h['name']} ({h['format']})" for h in out))
        return EXIT_OK
    rows = Outbox(Path(args.state_dir) / "jobs.db").rows(args.limit)
    if args.json:
        print_json(rows)
        return EXIT_OK
    for r in rows:
        state = "delivered" if r["delivered_at"] else ("gave up" if r["dead"] else "pending")
        print(f"{r['id']:>6}  {r['kind']:<15} {r['sink']:<30} {state:<9} tries {r['attempts']}"
              + (f"  last error: {r['last_error']}" if r["last_error"] else ""))
    if not rows:
        print("(no notifications yet)")
    return EXIT_OK


def best_node(nodes: list[dict]) -> dict | None:
    """The alive, not excluded node with the lowest health score (workers before the head)."""
    ok = [n for n in nodes if n["alive"] and not n["excluded"] and n["state"] != "unhealthy"]
    return min(ok, key=lambda n: (n["is_head"], n["score"] if n["score"] is not None else 1e9), default=None)


def _shell(cmd: str):
    """(A Ray streaming task.) Run ``cmd`` in a shell; yield its output lines, then its exit code."""
    import subprocess

    proc = subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        yield ("out", line)
    yield ("rc", proc.wait())


def cmd_run(args) -> int:
    """Run a shell command on the best-scored node as a Ray task, stream its output, return its exit code."""
    import shlex
    import sys

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from raycluster.cli.connect import BadArgument, client_for

    argv = list(args.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise BadArgument("run needs a command: raycluster run -- CMD [ARGS...]")
    client = client_for(args, ray_only=True)
    node = best_node(client.health())
    if node is None:
        raise BadArgument("no healthy node to run on (raycluster health says why)")
    print(f"raycluster: running on node {node['node_id'][:16]} (score {node['score']})", file=sys.stderr, flush=True)
    task = ray.remote(num_returns="streaming", num_cpus=args.cpus, max_retries=0)(_shell)
    rc = 1
    for ref in task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["node_id"], soft=False)).remote(
            " ".join(shlex.quote(a) for a in argv) if len(argv) > 1 else argv[0]):
        kind, value = ray.get(ref)
        if kind == "out":
            sys.stdout.write(value)
            sys.stdout.flush()
        else:
            rc = int(value)
    return rc
