"""The ``raycluster`` command line: argument parsing and exit codes.

Exit codes (the one table in ``raycluster.errors``): 0 ok · 1 a job ended FAILED/CANCELLED (submit
--wait, demo) or an unexpected error · 2 invalid input (bad spec, bad arguments) · 3 cluster/runtime
unavailable · 4 job not found · 5 illegal transition (e.g. cancel a finished job) · 6 unauthorised
(HTTP API token missing or wrong).
"""

from __future__ import annotations

import argparse
import sys

from raycluster import constants as C
from raycluster.cli import commands, dashboard, health, market, schedules, simulate, tokens
from raycluster.cli.connect import BadArgument
from raycluster.errors import EXIT_INVALID, RayClusterError, exit_code
from raycluster.store.lifecycle import JobState


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
    # the global options are taken after the subcommand too (`raycluster status JOB --json`); given
    # there, they override those given before it (SUPPRESS: absent ones leave the global value alone)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--address", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--token-file", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    add_parser = sub.add_parser
    sub.add_parser = lambda *a, **k: add_parser(*a, parents=[common], **k)  # type: ignore[method-assign]

    def cluster_shape(sp, workers=3):
        sp.add_argument("--workers", type=int, default=workers, help="worker nodes (default %(default)s)")
        sp.add_argument("--cpus-per-worker", type=float, default=2, help="CPUs of each (default %(default)s)")
        sp.add_argument("--gpus-per-worker", type=int, default=1,
                        help="GPUs of each (default %(default)s; logical ones when the machine has none)")

    sp = sub.add_parser("up", help="start a cluster and the runtime actors")
    sp.add_argument("--local", action="store_true", help="embedded local cluster on this machine")
    sp.add_argument("--elastic", metavar="FILE", default=None,
                    help="rent worker nodes from markets as jobs need them (Ray's autoscaler + our provider), "
                         "configured by FILE (e.g. configs/elastic.yaml); --workers are then fixed extra nodes")
    sp.add_argument("--api-port", type=int, default=C.API_PORT,
                    help="port of the HTTP control API on 127.0.0.1 (default %(default)s; 0 = no API)")
    sp.add_argument("--storage", metavar="URI", default=C.STORAGE_URI or None,
                    help="where checkpoints and rank logs go, reachable from every node: a path (default: the "
                         "state dir) or e.g. s3://bucket/prefix (AWS_* environment for credentials/endpoint)")
    cluster_shape(sp)
    sp.set_defaults(fn=commands.cmd_up)
    sp = sub.add_parser("down", help="stop the local cluster started by `up`")
    sp.set_defaults(fn=commands.cmd_down)
    sp = sub.add_parser("submit", help="submit a job spec (YAML or JSON); prints the job id",
                        description="Submit a job spec (YAML or JSON; its fields: docs/jobs.md). The whole spec is "
                                    "checked before any local code is packaged or uploaded.")
    sp.add_argument("file", help="the spec file, e.g. configs/jobs/cnn.yaml")
    sp.add_argument("--priority", type=int, help="the spec's priority instead (higher runs first)")
    sp.add_argument("--name", help="the spec's name instead")
    sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override one spec field, dotted for nested ones, the value read as YAML "
                         "(repeatable): --set config.lr=0.01 --set num_workers=4")
    sp.add_argument("--wait", action="store_true",
                    help="wait for the job, printing its progress and rank 0's output; exit 0 only if it SUCCEEDED")
    sp.add_argument("--timeout", type=float, default=3600, metavar="SECONDS",
                    help="with --wait: stop waiting after this many seconds (the job goes on; default %(default)s)")
    sp.set_defaults(fn=commands.cmd_submit)
    sp = sub.add_parser("jobs", help="list jobs")
    sp.add_argument("--state", action="append", choices=[s.value for s in JobState])
    sp.add_argument("--tenant")
    sp.add_argument("--limit", type=int, default=100, help="jobs per page (default 100, newest first)")
    sp.add_argument("--oldest-first", action="store_true", help="oldest first (the queue's order)")
    sp.add_argument("--offset", type=int, default=0, help="skip this many jobs (the next page: --offset 100)")
    sp.add_argument("--all", action="store_true", help="every job, however many (fetched page by page)")
    sp.set_defaults(fn=commands.cmd_jobs)
    sp = sub.add_parser("status", help="cluster status, or one job's details")
    sp.add_argument("job_id", nargs="?")
    sp.set_defaults(fn=commands.cmd_status)
    sp = sub.add_parser("tenants", help="tenants' quotas, what they hold, queued jobs and fair share; --set installs "
                                        "a tenants file (e.g. configs/tenants.yaml), applied without a restart")
    sp.add_argument("--set", metavar="FILE", default=None, help="check FILE and make it the cluster's tenants config")
    sp.set_defaults(fn=commands.cmd_tenants)
    sp = sub.add_parser("tokens", help="per-user API tokens (admin): list, create NAME --tenant T --role R, rotate ID, "
                                       "revoke ID; a token is shown once")
    sp.add_argument("action", nargs="?", choices=["list", "create", "rotate", "revoke"])
    sp.add_argument("name_or_id", nargs="?", metavar="NAME|ID", help="create: who will hold it; rotate/revoke: its id")
    sp.add_argument("--tenant", default=None, help="the tenant the token acts as (required but for admins)")
    sp.add_argument("--role", default="member", choices=["admin", "member", "viewer"],
                    help="admin: everything; member: submit and act on its tenant's jobs; viewer: read them "
                         "(default: member)")
    sp.add_argument("--save", metavar="FILE", default=None, help="write the new token to FILE (mode 0600) "
                                                                 "instead of printing it")
    sp.add_argument("--all", action="store_true", help="list: revoked tokens too")
    sp.set_defaults(fn=tokens.cmd_tokens)
    sp = sub.add_parser("audit", help="who did what (admin): every state-changing API call, oldest first")
    sp.add_argument("--limit", type=int, default=100, help="the newest N entries (default 100)")
    sp.add_argument("--tenant", default=None, help="only calls made by this tenant's tokens")
    sp.set_defaults(fn=tokens.cmd_audit)
    sp = sub.add_parser("schedules", help="scheduled jobs (`raycluster submit` of a spec with schedule: makes one): "
                                          "list, show ID (its runs), pause ID, resume ID, delete ID")
    sp.add_argument("action", nargs="?", choices=["list", "show", "pause", "resume", "delete"])
    sp.add_argument("schedule_id", nargs="?")
    sp.set_defaults(fn=schedules.cmd_schedules)
    sp = sub.add_parser("health", help="every node's health: state, score, reasons, CPU/memory/GPU, drain "
                                       "(exit 1 when a node is unhealthy)")
    sp.set_defaults(fn=health.cmd_health)
    sp = sub.add_parser("dashboard", help="live terminal view: nodes (health, score, GPU), jobs (progress, ETA, loss, "
                                          "cost), the queue with why each job waits, scaling events")
    sp.add_argument("--once", action="store_true", help="print one frame and exit")
    sp.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default %(default)s)")
    sp.set_defaults(fn=dashboard.cmd_dashboard)
    sp = sub.add_parser("run", help="run a shell command on the best-scored healthy node as a Ray task, stream its "
                                    "output, exit with its exit code: raycluster run -- CMD [ARGS...]")
    sp.add_argument("--cpus", type=float, default=0.0, help="CPUs the task reserves (default %(default)s)")
    sp.add_argument("command", nargs=argparse.REMAINDER)
    sp.set_defaults(fn=health.cmd_run)
    sp = sub.add_parser("metrics", help="where the MetricsCollector serves Prometheus /metrics, and its file_sd file")
    sp.set_defaults(fn=health.cmd_metrics)
    sp = sub.add_parser("notify", help="webhook notifications: --set FILE installs them (configs/notify.yaml); "
                                       "without it, the outbox (sent, pending, given up)")
    sp.add_argument("--set", metavar="FILE", default=None)
    sp.add_argument("--limit", type=int, default=50)
    sp.set_defaults(fn=health.cmd_notify)
    sp = sub.add_parser("drain", help="take a node out: no new gangs, its gangs checkpoint and move (until undrain)")
    sp.add_argument("node", help="Ray node id (raycluster health lists them)")
    sp.add_argument("--reason", default=None)
    sp.set_defaults(fn=health.cmd_drain)
    sp = sub.add_parser("undrain", help="use a drained node again")
    sp.add_argument("node")
    sp.set_defaults(fn=health.cmd_drain)
    sp = sub.add_parser("checkpoints", help="a job's checkpoints: step, attempt, state, size, when")
    sp.add_argument("job_id")
    sp.set_defaults(fn=commands.cmd_checkpoints)
    sp = sub.add_parser("cancel", help="cancel jobs: their ids, or --all of a --state/--tenant")
    sp.add_argument("job_ids", nargs="*", metavar="JOB", help="job ids")
    sp.add_argument("--all", action="store_true",
                    help="every unfinished job that matches --state/--tenant (one of them is required)")
    sp.add_argument("--state", action="append", choices=[s.value for s in JobState if not s.terminal],
                    help="with --all: only jobs in this state (repeatable)")
    sp.add_argument("--tenant", help="with --all: only this tenant's jobs")
    sp.set_defaults(fn=commands.cmd_cancel)
    sp = sub.add_parser("logs", help="last lines of each rank's log of a job (per attempt); -f follows them")
    sp.add_argument("job_id")
    sp.add_argument("--tail", type=int, default=200, help="lines per rank log (default %(default)s)")
    sp.add_argument("-f", "--follow", action="store_true",
                    help="then print new lines as the ranks write them, until the job ends (Ctrl-C stops)")
    sp.set_defaults(fn=commands.cmd_logs)
    sp = sub.add_parser("env", help="shell exports for `ray job submit` & co. against the local cluster "
                                    "(eval \"$(raycluster env)\")")
    sp.set_defaults(fn=commands.cmd_env)
    sp = sub.add_parser("nodes", help="rented nodes of an elastic local cluster: market, kind, price, state, cost")
    sp.add_argument("--all", action="store_true", help="released ones too")
    sp.set_defaults(fn=market.cmd_nodes)
    sp = sub.add_parser("cost", help="an elastic cluster's spend: rate now, the budget, spent so far and today, "
                                     "by kind and node type, saved by spot")
    sp.set_defaults(fn=market.cmd_cost)
    sp = sub.add_parser("events", help="scaling decisions with their reasons (scale_up, blocked: budget, shed, ...)")
    sp.add_argument("--limit", type=int, default=50, help="the newest N (default %(default)s)")
    sp.set_defaults(fn=market.cmd_events)
    sp = sub.add_parser("budget", help="show or change the hard cap on the spend rate of rented nodes")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--set", type=float, metavar="USD_PER_HOUR", help="the new cap (nodes over it are shed)")
    g.add_argument("--clear", action="store_true", help="back to the config's max_hourly_budget_usd")
    sp.set_defaults(fn=market.cmd_budget)
    sp = sub.add_parser("simulate", help="replay a job trace (JSONL/CSV) through the live policies in simulated "
                                         "time: cost, waits, utilisation, preemptions vs a fixed pool")
    sp.add_argument("trace", help="e.g. configs/traces/day.jsonl")
    sp.add_argument("--config", default="configs/sim-day.yaml", help="market, node types and budget: an elastic "
                    "cluster config or ray-cluster.yaml (default %(default)s)")
    sp.add_argument("--budget", type=float, default=None, help="max_hourly_budget_usd instead of the config's")
    sp.add_argument("--tick-s", type=float, default=60.0, help="the budget policy's interval (default %(default)s)")
    sp.add_argument("--launch-delay-s", type=float, default=60.0, help="rent -> usable (default %(default)s)")
    sp.add_argument("--preemption-rate", type=float, default=None, help="spot preemptions per node-hour "
                                                                         "(default: the config's)")
    sp.add_argument("--checkpoint-every-s", type=float, default=300.0, help="work lost to a preemption is at most this")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--tenants", default=None, metavar="FILE", help="a tenants file (as `raycluster tenants --set`): "
                    "the trace's `tenant` jobs under its quotas and budgets")
    sp.set_defaults(fn=simulate.cmd_simulate)
    sp = sub.add_parser("market", help="act as the market (the local market only)")
    msub = sp.add_subparsers(dest="market_cmd", required=True)
    mp = msub.add_parser("preempt", help="preempt a spot node: a notice now, the node stopped at the deadline")
    mp.add_argument("node", help="the rented node's id (see `raycluster nodes`)")
    mp.add_argument("--notice-s", type=float, default=None, help="seconds of notice (default: the market's)")
    mp.set_defaults(fn=market.cmd_market_preempt)
    mp = msub.add_parser("price", help="move a price (a spot price rising): new and held nodes of that GPU type "
                                       "and kind are charged it from now on; the budget sheds nodes within one "
                                       "pass if the held set then costs more than the cap")
    mp.add_argument("gpu_type", help="a GPU type of the local market (e.g. T4)")
    mp.add_argument("usd_per_hour", nargs="?", type=float, default=None, help="the new price (USD/hour)")
    mp.add_argument("--kind", choices=("spot", "on_demand"), default="spot")
    mp.add_argument("--reset", action="store_true", help="back to the configured price")
    mp.set_defaults(fn=market.cmd_market_price)
    sp = sub.add_parser("ray-head", help="(run by `ray up ray-cluster.yaml` on the head) start the elastic cluster, "
                                         "the runtime actors and the HTTP API; nothing if already up")
    sp.add_argument("--config", required=True, help="the cluster config (ray up copies it to ~/ray_bootstrap_config.yaml)")
    sp.add_argument("--api-port", type=int, default=C.API_PORT, help="HTTP API port (0 = no API)")
    sp.set_defaults(fn=commands.cmd_ray_head)
    sp = sub.add_parser("demo", help="a local cluster too small for three example jobs at once: the queue runs "
                                     "them by priority; then stop")
    cluster_shape(sp, workers=2)
    sp.add_argument("--keep", action="store_true", help="leave the cluster running afterwards")
    sp.add_argument("--timeout", type=float, default=900, metavar="SECONDS", help="give up waiting after this long")
    sp.set_defaults(fn=commands.cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (RayClusterError, BadArgument) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return EXIT_INVALID if isinstance(exc, BadArgument) else exit_code(exc)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
