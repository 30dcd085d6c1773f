"""How the CLI shows things: job tables, progress lines, one job's details, JSON.

Owns: the human output of ``raycluster`` (``--json`` prints the same data as JSON).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from raycluster.errors import EXIT_JOB_FAILED, EXIT_OK
from raycluster.store.lifecycle import JobState


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _fmt_age(ts: float | None) -> str:
    if not ts:
        return "-"
    s = max(0, time.time() - ts)
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m"


def _fmt_num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else ("-" if v is None else str(v))


def jobs_table(jobs: list[dict]) -> str:
    costed = any(j.get("cost_usd") is not None for j in jobs)
    cols = ("ID", "NAME", "STATE", "PRIO", "ATTEMPT", "STEP", "LOSS", "ACC/MAE", "AGE") + (("COST_USD",) if costed else ())
    rows = []
    for j in jobs:
        m = j.get("last_metrics") or {}
        acc = m.get("accuracy", m.get("mae"))
        row = (j["id"], j["name"], j["state"], str(j["priority"]), str(j["attempt"]), _fmt_num(m.get("step")),
               _fmt_num(m.get("loss")), _fmt_num(acc), _fmt_age(j["submitted_at"]))
        if costed:
            row += ("-" if j.get("cost_usd") is None else f"{j['cost_usd']:.4f}",)
        rows.append(row)
    return text_table(cols, rows)


def text_table(cols, rows) -> str:
    """Columns left-aligned to their widest cell, two spaces apart: the CLI's one plain table."""
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]

    def line(r):
        return "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()

    return "\n".join([line(cols), *(line(r) for r in rows)])


def progress_printer(every_s: float = 5.0):
    """Print a job's line when its state changes, or its progress (attempt, step, loss) at most
    every ``every_s`` — never the same line twice."""
    last: dict[str, tuple[tuple, float]] = {}

    def show(jobs: list[dict]) -> None:
        now = time.monotonic()
        for j in jobs:
            m = j.get("last_metrics") or {}
            key = (j["state"], j["attempt"], m.get("step"), m.get("loss"), j.get("waiting"))
            prev = last.get(j["id"])
            if prev is not None and (prev[0] == key or (prev[0][0] == j["state"] and now - prev[1] < every_s)):
                continue
            last[j["id"]] = (key, now)
            if j["state"] == JobState.PENDING.value:
                what = f"waiting: {j.get('waiting') or 'queued'}"
            else:
                what = f"attempt={j['attempt']} step={_fmt_num(m.get('step'))} loss={_fmt_num(m.get('loss'))}"
            print(f"{time.strftime('%H:%M:%S')} {j['id']} {j['name']:<22} {j['state']:<10} {what}", flush=True)
    return show


def finish(final: list[dict], as_json: bool) -> int:
    if as_json:
        print_json(final)
    else:
        print(jobs_table(final))
        for j in final:
            if j["state"] == JobState.FAILED.value:
                print(f"\n{j['id']} failed: {j.get('reason')}\n{j.get('error') or ''}", file=sys.stderr)
    return EXIT_OK if all(j["state"] == JobState.SUCCEEDED.value for j in final) else EXIT_JOB_FAILED


def job_details(job: dict) -> str:
    """``raycluster status JOB``: the job's row, why it waits or ended, and its transitions."""
    out = [jobs_table([job])]
    if job.get("state") == JobState.PENDING.value and job.get("waiting"):
        out.append(f"waiting: {job['waiting']}")
    moving = job.get("moving")
    if moving and job.get("state") == JobState.RUNNING.value:  # a move off where it runs (checkpoint first)
        past = moving.get("before_step")
        out.append(f"moving ({moving.get('cause')}): {moving.get('reason')}; asked to checkpoint at "
                   f"{time.strftime('%H:%M:%S', time.localtime(moving.get('since') or 0))}, waits for a checkpoint "
                   f"{'newer than step ' + str(past) if past is not None else 'to complete'}")
    if job.get("cause"):
        out.append(f"cause: {job['cause']}")
    spec = job.get("spec") or {}
    if spec.get("min_workers") and job.get("world_size"):  # an elastic gang: its size this attempt
        out.append(f"workers: {job['world_size']} (elastic, {spec['min_workers']}..{spec.get('num_workers')})")
    if job.get("cost_usd") is not None:
        out.append(f"cost: {job['cost_usd']:.4f} USD over {job.get('attempt', 0)} attempt(s), "
                   f"{job.get('preemptions', 0)} preemption(s)")
    if job.get("ranks"):
        out.append("ranks: " + ", ".join(f"{r['rank']}@{r['node_id'][:16]}"
                                         + (f" ({r['rental']})" if r.get("rental") else "") for r in job["ranks"]))
    sweep = job.get("sweep")
    if sweep:
        out.append(f"sweep: {sweep['trials']} trials: {sweep['succeeded']} succeeded, {sweep['failed']} failed, "
                   f"{sweep['unfinished']} unfinished")
        best = sweep.get("best")
        if best:
            out.append(f"best trial: #{best['trial']} {best['metric']}={best['value']:g} config {json.dumps(best['config'])}")
    if job.get("preempted"):
        out.append(f"preempted for higher-priority jobs: {job['preempted']} time(s)")
    for k in ("reason", "error", "result"):
        if job.get(k):
            out.append(f"{k}: {job[k] if isinstance(job[k], str) else json.dumps(job[k])}")
    out.append("transitions:")
    for t in job.get("transitions") or []:
        cause = f" [{t['cause']}]" if t.get("cause") else ""
        out.append(f"  {time.strftime('%H:%M:%S', time.localtime(t['ts']))} {t['from'] or '-':>10} -> {t['to']:<10}"
                   f"{cause} {t['reason'] or ''}".rstrip())
    return "\n".join(out)


def bringup_summary(info: dict, stop: str = "raycluster down") -> str:
    """What ``raycluster up`` and ``ray up``'s head command end with: where the dashboard and the API
    are, the token files each needs, the state dir, and the next commands."""
    from raycluster import constants as C

    token = info.get("ray_auth_token_path")
    lines = [f"Ray dashboard  {info.get('dashboard_url')}"
             + (f"   (sign in with the token in {token}; Ray's CLI: eval \"$(raycluster env)\")" if token else "")]
    if info.get("api_url"):
        lines.append(f"HTTP API       {info['api_url']}   (bearer token in "
                     f"{info.get('api_token_path') or '$RAYCLUSTER_API_TOKEN'}; the raycluster CLI uses it)")
    lines.append(f"state dir      {info['state_dir']}")
    if Path(info["state_dir"]).resolve() != C.state_dir():
        lines.append(f"               (not this shell's default {C.state_dir()}: export "
                     f"RAYCLUSTER_STATE_DIR={info['state_dir']}, or pass --state-dir, to reach it)")
    lines += ["next           raycluster submit configs/jobs/cnn.yaml --wait   (then: raycluster jobs, "
              "raycluster dashboard, raycluster logs -f JOB)",
              f"stop           {stop}"]
    return "\n".join(lines)

