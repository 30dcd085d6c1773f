"""``raycluster dashboard``: a live terminal view of the cluster (``rich.live``), or one frame
(``--once``) or one JSON document (``--json``) for scripts.

Owns: gathering one view through any client (nodes with health, score, GPU util/mem, market and
price where the node is rented; unfinished jobs with state, priority, a progress bar of step/total
with ETA, loss and cost; the queue with each job's waiting reason; recent scaling events), and
rendering it as rich tables. ``view`` is plain data (tested on its own); ``render`` makes the tables.
"""

from __future__ import annotations

import time
from typing import Any

from raycluster.cli.format import print_json
from raycluster.errors import EXIT_OK

ACTIVE = ["PENDING", "PLACING", "RUNNING", "RECOVERING"]


def _progress(job: dict, now: float) -> dict[str, Any]:
    step = (job.get("last_metrics") or {}).get("step")
    total = (job.get("spec") or {}).get("config", {}).get("steps")
    out: dict[str, Any] = {"step": step, "total": total, "fraction": None, "eta_s": None}
    if isinstance(step, (int, float)) and isinstance(total, (int, float)) and total > 0:
        out["fraction"] = max(0.0, min(1.0, step / total))
        started = job.get("attempt_started_at")
        if started and step > 0 and job.get("state") == "RUNNING":
            out["eta_s"] = round((now - started) / step * max(0.0, total - step), 1)
    return out


def view(client, limit: int = 200) -> dict[str, Any]:
    """One snapshot of the cluster for the dashboard (plain data)."""
    now = time.time()
    jobs = client.list(states=ACTIVE, limit=limit)
    status = client.cluster_status()
    try:
        health = {n["node_id"]: n for n in client.health()}
    except Exception:
        health = {}
    rentals: dict[str, dict] = {}
    try:
        for r in client.rentals() if hasattr(client, "rentals") else []:
            rentals[r["id"]] = r
    except Exception:
        pass
    nodes = []
    for nid, h in health.items():
        s = h.get("sample") or {}
        r = rentals.get(h.get("rental_id") or "", {})
        nodes.append({"node_id": nid, "alive": h["alive"], "is_head": h["is_head"], "state": h["state"],
                      "score": h["score"], "excluded": h["excluded"], "reasons": h["reasons"],
                      "cpu_pct": s.get("cpu_pct"), "mem_pct": s.get("mem_pct"),
                      "gpus": [{"util_pct": g["util_pct"], "mem_pct": g["mem_pct"]} for g in s.get("gpus", [])],
                      "market": r.get("market"), "usd_per_hour": r.get("usd_per_hour")})
    running, queue = [], []
    for j in jobs:
        row = {"id": j["id"], "name": j["name"], "state": j["state"], "priority": j["priority"],
               "tenant": j.get("tenant"), "loss": (j.get("last_metrics") or {}).get("loss"),
               "cost_usd": j.get("cost_usd"), **_progress(j, now)}
        if j["state"] == "PENDING":
            queue.append({**row, "waiting": j.get("waiting") or "waiting for the next admission pass"})
        else:
            running.append(row)
    events: list[dict] = []
    try:
        events = client.events(10) if hasattr(client, "events") else []
    except Exception:
        pass
    return {"at": now, "cluster": {k: status.get(k) for k in ("nodes", "gpus_total", "gpus_free", "cpus_total",
                                                            "cpus_free", "jobs_by_state")},
            "nodes": nodes, "jobs": running, "queue": queue, "events": events}


def _bar(fraction: float | None, width: int = 16) -> str:
    if fraction is None:
        return "-"
    n = int(round(fraction * width))
    return "█" * n + "░" * (width - n) + f" {fraction * 100:3.0f}%"


def _eta(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m" if s >= 3600 else f"{int(s // 60)}m{int(s % 60):02d}s"


def render(v: dict[str, Any]):
    from rich.console import Group
    from rich.table import Table

    c = v["cluster"]
    head = Table.grid()
    head.add_row(f"[b]raycluster[/b]  nodes {c['nodes']} · GPUs {c['gpus_free']:g}/{c['gpus_total']:g} free · "
                 f"CPUs {c['cpus_free']:g}/{c['cpus_total']:g} free · "
                 + " ".join(f"{k}={n}" for k, n in (c.get("jobs_by_state") or {}).items() if n)
                 + time.strftime("   %H:%M:%S", time.localtime(v["at"])))
    nodes = Table(title="nodes", expand=True)
    for col in ("node", "health", "score", "cpu%", "mem%", "GPU util/mem", "market", "USD/h", "reasons"):
        nodes.add_column(col)
    colour = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}
    for n in sorted(v["nodes"], key=lambda n: (not n["alive"], n["score"] if n["score"] is not None else 1e9)):
        st = n["state"] if n["alive"] else "dead"
        nodes.add_row(n["node_id"][:12] + (" (head)" if n["is_head"] else ""),
                      f"[{colour.get(st, 'white')}]{st}[/]" + (" ⛔" if n["excluded"] else ""),
                      "-" if n["score"] is None else f"{n['score']:.0f}",
                      "-" if n["cpu_pct"] is None else f"{n['cpu_pct']:.0f}",
                      "-" if n["mem_pct"] is None else f"{n['mem_pct']:.0f}",
                      " ".join(f"{g['util_pct']:.0f}/{g['mem_pct']:.0f}" for g in n["gpus"]) or "-",
                      n["market"] or "-", "-" if n["usd_per_hour"] is None else f"{n['usd_per_hour']:.2f}",
                      "; ".join(n["reasons"])[:60])
    jobs = Table(title="jobs", expand=True)
    jobs.add_column("job", no_wrap=True, min_width=16)  # a job id is what one copies from here: never cut
    for col in ("name", "state", "prio", "progress", "step", "ETA", "loss", "cost USD"):
        jobs.add_column(col)
    for j in v["jobs"]:
        jobs.add_row(j["id"], j["name"], j["state"], str(j["priority"]), _bar(j["fraction"]),
                     "-" if j["step"] is None else f"{j['step']}/{j['total'] or '?'}", _eta(j["eta_s"]),
                     "-" if j["loss"] is None else f"{j['loss']:.4f}",
                     "-" if j["cost_usd"] is None else f"{j['cost_usd']:.4f}")
    queue = Table(title=f"queue ({len(v['queue'])})", expand=True)
    queue.add_column("job", no_wrap=True, min_width=16)
    for col in ("name", "prio", "tenant", "why it waits"):
        queue.add_column(col)
    for q in v["queue"][:20]:
        queue.add_row(q["id"], q["name"], str(q["priority"]), q["tenant"] or "-", q["waiting"])
    parts = [head, nodes, jobs, queue]
    if v["events"]:
        ev = Table(title="recent scaling events", expand=True)
        for col in ("when", "action", "reason"):
            ev.add_column(col)
        for e in v["events"][-8:]:
            ev.add_row(time.strftime("%H:%M:%S", time.localtime(e["ts"])), e["action"], e["reason"][:90])
        parts.append(ev)
    return Group(*parts)


def terminal_width() -> int:
    """The terminal's width (COLUMNS when set); piped with neither, 120 columns — wide enough for
    job ids, narrow enough to read — never wider than the terminal."""
    import shutil

    return max(60, shutil.get_terminal_size(fallback=(120, 40)).columns)


def cmd_dashboard(args) -> int:
    from rich.console import Console
    from rich.live import Live

    from raycluster.cli.connect import client_for

    client = client_for(args)
    if args.json:
        print_json(view(client))
        return EXIT_OK
    console = Console(width=terminal_width())
    if args.once:
        console.print(render(view(client)))
        return EXIT_OK
    try:
        with Live(render(view(client)), console=console, refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(args.interval)
                live.update(render(view(client)))
    except KeyboardInterrupt:
        return EXIT_OK
