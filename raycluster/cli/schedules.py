"""``raycluster schedules``: list, show, pause, resume and delete scheduled jobs (made by
``raycluster submit`` of a spec with ``schedule:``), through the Ray client or the HTTP API.

Owns: the schedules table and a schedule's details (its newest runs).
"""

from __future__ import annotations

import time

from raycluster.cli.format import print_json, text_table
from raycluster.errors import EXIT_OK


def _utc(ts: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts else "-"


def describe(s: dict) -> str:
    state = "paused" if s["paused"] else ("deleted" if s.get("deleted") else "active")
    return (f"{s['id']} {s['name']} '{s['cron']}' {s['concurrency_policy']} {state}; next run {_utc(s['next_run_at'])}; "
            f"runs {s['runs']}, skipped {s['skipped']}" + (f"; last error: {s['last_error']}" if s.get("last_error") else ""))


def cmd_schedules(args) -> int:
    from raycluster.cli.connect import client_for

    client = client_for(args)
    action = args.action or "list"
    if action == "list":
        rows = client.list_schedules()
        if args.json:
            print_json(rows)
            return EXIT_OK
        cols = ("SCHEDULE", "NAME", "CRON", "POLICY", "STATE", "NEXT_RUN", "RUNS", "SKIPPED", "LAST_RUN")
        table = [(s["id"], s["name"], s["cron"], s["concurrency_policy"], "paused" if s["paused"] else "active",
                  _utc(s["next_run_at"]), str(s["runs"]), str(s["skipped"]), s["last_job_id"] or "-") for s in rows]
        print(text_table(cols, table))
        return EXIT_OK
    if not args.schedule_id:
        from raycluster.cli.connect import BadArgument

        raise BadArgument(f"schedules {action} needs a SCHEDULE id")
    out = {"show": client.get_schedule, "pause": client.pause_schedule, "resume": client.resume_schedule,
           "delete": client.delete_schedule}[action](args.schedule_id)
    if args.json:
        print_json(out)
        return EXIT_OK
    print(describe(out))
    for run in out.get("run_jobs") or []:
        print(f"  {run['id']}  {run['state']:<10} submitted {_utc(run['submitted_at'])}  {run.get('reason') or ''}")
    return EXIT_OK
