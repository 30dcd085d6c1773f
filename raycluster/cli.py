"""The ``raycluster`` command line: up/down a local cluster, submit/list/inspect/cancel jobs, demo.

Owns: argument parsing, human tables, ``--json`` output and exit codes:
0 ok · 1 a job ended FAILED/CANCELLED (submit --wait, demo) or an unexpected error ·
2 invalid input (bad spec, bad arguments) · 3 cluster/runtime unavailable · 4 job not found ·
5 illegal transition (e.g. cancel a finished job) · 6 unauthorised (HTTP API token missing or wrong).

``--address`` is a Ray address (the Ray client, ``runtime.Client``), or ``http(s)://host:port`` of
the HTTP control API (``httpclient.HttpClient``; token from ``--token-file``, ``RAYCLUSTER_API_TOKEN``
or ``<state_dir>/api_token``, in that order).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from raycluster import constants as C
from raycluster.errors import (EXIT_INVALID, EXIT_JOB_FAILED, EXIT_OK, ClusterUnavailable, RayClusterError,
                               exit_code)

DEMO_SPECS = ("configs/jobs/cnn.yaml", "configs/jobs/transformer.yaml", "configs/jobs/lstm.yaml")


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _fmt_age(ts: float | None) -> str:
    if not ts:
        return "-"
    s = max(0, time.time() - ts)
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m"


def _fmt_num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else ("-" if v is None else str(v))


def jobs_table(jobs: list[dict]) -> str:
    cols = ("ID", "NAME", "STATE", "PRIO", "ATTEMPT", "STEP", "LOSS", "ACC/MAE", "AGE")
    rows = []
    for j in jobs:
        m = j.get("last_metrics") or {}
        acc = m.get("accuracy", m.get("mae"))
        rows.append((j["id"], j["name"], j["state"], str(j["priority"]), str(j["attempt"]), _fmt_num(m.get("step")),
                     _fmt_num(m.get("loss")), _fmt_num(acc), _fmt_age(j["submitted_at"])))
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(cols), *(line(r) for r in rows)])


class _BadArgument(Exception):
    pass


def _client(args):
    from raycluster.httpclient import HttpClient, is_http_address, resolve_token

    if is_http_address(args.address):
        try:
            token = resolve_token(args.token_file, args.state_dir)
        except OSError as exc:
            raise _BadArgument(f"cannot read the API token: {exc}") from None
        return HttpClient(args.address, token)
    from raycluster.runtime import Client, connect

    connect(args.address, Path(args.state_dir))
    return Client()


# ------------------------------------------------------------------------------------ commands
def cmd_up(args) -> int:
    from raycluster.localcluster import LocalCluster
    from raycluster.runtime import connect, start_runtime

    state_dir = Path(args.state_dir)
    if not args.local:
        print("only the embedded local cluster is supported by `up` so far: use `raycluster up --local`",
              file=sys.stderr)
        return EXIT_INVALID
    existing = LocalCluster.load(state_dir)
    if existing is not None and existing.is_running():
        lc = existing
        print(f"local cluster already running at {lc.address}")
    else:
        t0 = time.monotonic()
        lc = LocalCluster(state_dir, num_workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                          gpus_per_worker=args.gpus_per_worker)
        lc.start()
        print(f"local cluster up in {time.monotonic() - t0:.1f}s: head + {args.workers} workers at {lc.address}")
    connect(lc.address, state_dir)
    start_runtime(state_dir)
    info = {"address": lc.address, "dashboard_url": getattr(lc, "dashboard_url", None),
            "state_dir": str(state_dir)}
    if args.api_port:
        from raycluster.api import deploy_api

        api = deploy_api(state_dir, port=args.api_port)
        info.update(api_url=api["url"], api_token_path=str(api["token_path"]) if api["token_path"] else None,
                    api_direct_ingress=api["direct_ingress"])
    if args.json:
        _print_json(info)
    else:
        print(f"runtime actors up · dashboard {info['dashboard_url']} · state in {state_dir}")
        if info.get("api_url"):
            print(f"HTTP API {info['api_url']} · token in {info['api_token_path'] or '$RAYCLUSTER_API_TOKEN'}")
        print("submit a job:  raycluster submit configs/jobs/cnn.yaml")
    return EXIT_OK


def cmd_down(args) -> int:
    from raycluster.localcluster import LocalCluster

    lc = LocalCluster.load(Path(args.state_dir))
    if lc is None:
        print("no local cluster recorded; nothing to stop")
        return EXIT_OK
    lc.stop()
    print("local cluster stopped")
    return EXIT_OK


def cmd_submit(args) -> int:
    from raycluster.spec import load_spec

    spec = load_spec(args.file)
    overrides = {}
    if args.priority is not None:
        overrides["priority"] = args.priority
    if args.name:
        overrides["name"] = args.name
    spec_dict = {**spec.model_dump(mode="json", exclude_unset=True), **overrides}
    client = _client(args)
    job = client.submit(spec_dict)
    if not args.wait:
        _print_json(job) if args.json else print(job["id"])
        return EXIT_OK
    if not args.json:
        print(f"submitted {job['id']}; waiting")
    final = client.wait([job["id"]], timeout_s=args.timeout, on_poll=None if args.json else _progress_printer())
    return _finish(final, args.json)


def _progress_printer(every_s: float = 5.0):
    """Print a job's line when its state changes, or its progress at most every ``every_s``."""
    last: dict[str, tuple[str, float]] = {}

    def show(jobs: list[dict]) -> None:
        now = time.monotonic()
        for j in jobs:
            prev = last.get(j["id"])
            if prev is not None and prev[0] == j["state"] and now - prev[1] < every_s:
                continue
            last[j["id"]] = (j["state"], now)
            m = j.get("last_metrics") or {}
            print(f"{time.strftime('%H:%M:%S')} {j['id']} {j['name']:<22} {j['state']:<10} attempt={j['attempt']} "
                  f"step={_fmt_num(m.get('step'))} loss={_fmt_num(m.get('loss'))}", flush=True)
    return show


def _finish(final: list[dict], as_json: bool) -> int:
    if as_json:
        _print_json(final)
    else:
        print(jobs_table(final))
        for j in final:
            if j["state"] == "FAILED":
                print(f"\n{j['id']} failed: {j.get('reason')}\n{j.get('error') or ''}", file=sys.stderr)
    return EXIT_OK if all(j["state"] == "SUCCEEDED" for j in final) else EXIT_JOB_FAILED


def cmd_jobs(args) -> int:
    jobs = _client(args).list(states=args.state or None, tenant=args.tenant)
    _print_json(jobs) if args.json else print(jobs_table(jobs))
    return EXIT_OK


def cmd_status(args) -> int:
    client = _client(args)
    if args.job_id:
        job = client.get(args.job_id)
        if args.json:
            _print_json(job)
            return EXIT_OK
        print(jobs_table([job]))
        for k in ("reason", "error", "result"):
            if job.get(k):
                print(f"{k}: {job[k] if isinstance(job[k], str) else json.dumps(job[k])}")
        print("transitions:")
        for t in job["transitions"]:
            print(f"  {time.strftime('%H:%M:%S', time.localtime(t['ts']))} {t['from'] or '-':>10} -> {t['to']:<10}"
                  f" {t['reason'] or ''}")
        return EXIT_OK
    st = client.cluster_status()
    if args.json:
        _print_json(st)
    else:
        print(f"nodes {st['nodes']} · GPUs {st['gpus_free']:g}/{st['gpus_total']:g} free · "
              f"CPUs {st['cpus_free']:g}/{st['cpus_total']:g} free")
        print("jobs: " + " ".join(f"{k}={v}" for k, v in st["jobs_by_state"].items()))
        if st["queue_depth_by_priority"]:
            print("queue by priority: " + ", ".join(f"p{k}:{v}" for k, v in st["queue_depth_by_priority"].items()))
    return EXIT_OK


def cmd_logs(args) -> int:
    logs = _client(args).logs(args.job_id, args.tail)
    if args.json:
        _print_json(logs)
        return EXIT_OK
    if not logs:
        print(f"no logs for {args.job_id} yet", file=sys.stderr)
    for entry in logs:
        print(f"==> attempt {entry['attempt']} rank {entry['rank']} <==")
        for line in entry["lines"]:
            print(line)
    return EXIT_OK


def cmd_env(args) -> int:
    """Shell exports for Ray's own tools (``ray job submit``, ``ray status``) against the local cluster:
    the dashboard address and, on a token cluster, the auth token's path."""
    import shlex

    from raycluster.localcluster import driver_env, read_record

    record = read_record(Path(args.state_dir))
    if not record or record.get("removed"):
        raise ClusterUnavailable(f"no local cluster recorded under {args.state_dir}; start one with "
                                 f"`raycluster up --local`")
    env = {"RAY_API_SERVER_ADDRESS": record["dashboard_url"], **driver_env(Path(args.state_dir))}
    if args.json:
        _print_json(env)
    else:
        for k, v in env.items():
            print(f"export {k}={shlex.quote(str(v))}")
    return EXIT_OK


def cmd_cancel(args) -> int:
    job = _client(args).cancel(args.job_id)
    _print_json(job) if args.json else print(f"{job['id']} {job['state']}")
    return EXIT_OK


def cmd_demo(args) -> int:
    """Start a local cluster, run the three example jobs at once, show them finish, stop."""
    from raycluster.localcluster import LocalCluster
    from raycluster.runtime import Client, connect, start_runtime
    from raycluster.spec import load_spec

    state_dir = Path(args.state_dir)
    root = Path(__file__).resolve().parent.parent
    lc = LocalCluster.load(state_dir)
    started_here = not (lc is not None and lc.is_running())
    if started_here:
        print(f"starting a local cluster: head + {args.workers} worker nodes with "
              f"{args.gpus_per_worker} GPU(s) each (logical GPUs when none are present)")
        lc = LocalCluster(state_dir, num_workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                          gpus_per_worker=args.gpus_per_worker)
        lc.start()
    try:
        connect(lc.address, state_dir)
        client = Client(start_runtime(state_dir))
        print(f"cluster at {lc.address}; dashboard {getattr(lc, 'dashboard_url', None)}")
        ids = []
        for rel in DEMO_SPECS:
            spec = load_spec(root / rel)
            job = client.submit(spec)
            ids.append(job["id"])
            print(f"submitted {job['id']} {spec.name} (priority {spec.priority}, {spec.num_workers} worker(s), "
                  f"{spec.resources.gpus:g} GPU each)")
        final = client.wait(ids, timeout_s=args.timeout, on_poll=_progress_printer())
        code = _finish(final, args.json)
        for j in final:
            cps = client.checkpoints(j["id"])
            kept = [c["step"] for c in cps if c["state"] == "COMPLETE"]
            print(f"{j['id']} {j['name']}: result {json.dumps(j.get('result'))} · checkpoints kept at steps {kept}")
        return code
    finally:
        if started_here and not args.keep:
            import ray

            ray.shutdown()
            lc.stop()
            print("local cluster stopped")


# ------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raycluster", description="Run many ML training jobs on a Ray cluster.")
    p.add_argument("--state-dir", default=str(C.state_dir()), help="state directory (default %(default)s)")
    p.add_argument("--address", default=None,
                   help="Ray address (default: RAY_ADDRESS or the local cluster), or http(s)://host:port of the "
                        "raycluster HTTP API")
    p.add_argument("--token-file", default=None,
                   help="HTTP API token file (default: RAYCLUSTER_API_TOKEN, else <state-dir>/api_token)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="cmd", required=True)

    def cluster_shape(sp):
        sp.add_argument("--workers", type=int, default=3, help="worker nodes (default %(default)s)")
        sp.add_argument("--cpus-per-worker", type=float, default=2)
        sp.add_argument("--gpus-per-worker", type=int, default=1)

    sp = sub.add_parser("up", help="start a cluster and the runtime actors")
    sp.add_argument("--local", action="store_true", help="embedded local cluster on this machine")
    sp.add_argument("--api-port", type=int, default=C.API_PORT,
                    help="port of the HTTP control API on 127.0.0.1 (default %(default)s; 0 = no API)")
    cluster_shape(sp)
    sp.set_defaults(fn=cmd_up)
    sp = sub.add_parser("down", help="stop the local cluster started by `up`")
    sp.set_defaults(fn=cmd_down)
    sp = sub.add_parser("submit", help="submit a job spec (YAML or JSON)")
    sp.add_argument("file")
    sp.add_argument("--priority", type=int)
    sp.add_argument("--name")
    sp.add_argument("--wait", action="store_true", help="wait for the job; exit 0 only if it SUCCEEDED")
    sp.add_argument("--timeout", type=float, default=3600)
    sp.set_defaults(fn=cmd_submit)
    sp = sub.add_parser("jobs", help="list jobs")
    sp.add_argument("--state", action="append", choices=[s for s in ("PENDING", "PLACING", "RUNNING", "RECOVERING",
                                                                      "SUCCEEDED", "FAILED", "CANCELLED")])
    sp.add_argument("--tenant")
    sp.set_defaults(fn=cmd_jobs)
    sp = sub.add_parser("status", help="cluster status, or one job's details")
    sp.add_argument("job_id", nargs="?")
    sp.set_defaults(fn=cmd_status)
    sp = sub.add_parser("cancel", help="cancel a job")
    sp.add_argument("job_id")
    sp.set_defaults(fn=cmd_cancel)
    sp = sub.add_parser("logs", help="last lines of each rank's log of a job (per attempt)")
    sp.add_argument("job_id")
    sp.add_argument("--tail", type=int, default=200, help="lines per rank log (default %(default)s)")
    sp.set_defaults(fn=cmd_logs)
    sp = sub.add_parser("env", help="shell exports for `ray job submit` & co. against the local cluster "
                                    "(eval \"$(raycluster env)\")")
    sp.set_defaults(fn=cmd_env)
    sp = sub.add_parser("demo", help="local cluster + three example jobs at once, then stop")
    cluster_shape(sp)
    sp.add_argument("--keep", action="store_true", help="leave the cluster running afterwards")
    sp.add_argument("--timeout", type=float, default=900)
    sp.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (RayClusterError, _BadArgument) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return EXIT_INVALID if isinstance(exc, _BadArgument) else exit_code(exc)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
