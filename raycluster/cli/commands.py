"""The ``raycluster`` subcommands: up/down a local cluster, submit/list/inspect/cancel jobs, demo.

Owns what each subcommand does (parsing is ``main.py``, output ``format.py``, reaching the cluster
through ``--address`` ``connect.py``, bringing one up ``bringup.py``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from raycluster.cli.connect import BadArgument, client_for
from raycluster.cli.format import bringup_summary, finish, job_details, jobs_table, print_json, progress_printer, text_table
from raycluster.errors import EXIT_INVALID, EXIT_OK, ClusterUnavailable
from raycluster.store import storage

DEMO_SPECS = ("configs/jobs/cnn.yaml", "configs/jobs/transformer.yaml", "configs/jobs/lstm.yaml")


def _elastic(path: str | None):
    """The elastic-cluster config of ``up --elastic FILE`` (None without it); errors name the key."""
    if not path:
        return None
    import yaml

    from raycluster.provision.autoscaling import ElasticConfig

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise BadArgument(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise BadArgument(f"{path}: expected a mapping with node_types, markets, ...")
    known = set(ElasticConfig.__dataclass_fields__) - {"provider_state_dir", "head_node_id"}  # (ray up sets those)
    if set(data) - known:
        raise BadArgument(f"{path}: unknown key(s) {sorted(set(data) - known)} (known: {sorted(known)})")
    return ElasticConfig(**data)


# ------------------------------------------------------------------------------------ commands
def cmd_up(args) -> int:
    from raycluster.cli.bringup import bring_up
    from raycluster.provision.local.cluster import LocalCluster

    state_dir = Path(args.state_dir)
    if not args.local:
        print("only the embedded local cluster is supported by `up` so far: use `raycluster up --local`",
              file=sys.stderr)
        return EXIT_INVALID
    if args.storage:  # refused before anything starts
        args.storage = storage.check_uri(args.storage, "--storage")
    elastic = _elastic(args.elastic)
    info = bring_up(state_dir, lambda: LocalCluster(
        state_dir, num_workers=args.workers, cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker, elastic=elastic), storage_uri=args.storage, api_port=args.api_port)
    if args.json:
        print_json(info)
        return EXIT_OK
    if info["started"]:
        print(f"local cluster up in {info['up_s']:.1f}s: head + {args.workers} workers at {info['address']}")
    else:
        print(f"local cluster already running at {info['address']}")
    print(bringup_summary(info))
    return EXIT_OK


def cmd_ray_head(args) -> int:
    from raycluster.cli.bringup import ray_head_up

    info = ray_head_up(args.config, args.api_port)
    if args.json:
        print_json(info)
    else:
        print(("started" if info["started"] else "already running") + f": elastic cluster at {info['address']}"
              " (Ray's autoscaler rents worker nodes through raycluster's node provider as jobs need them)")
        print(bringup_summary(info, stop="ray down ray-cluster.yaml -y"))
    return EXIT_OK


def cmd_down(args) -> int:
    from raycluster.provision.local.cluster import LocalCluster

    from raycluster.api.record import remove_record

    lc = LocalCluster.load(Path(args.state_dir))
    remove_record(args.state_dir)
    if lc is None:
        print("no local cluster recorded; nothing to stop")
        return EXIT_OK
    lc.stop()
    print("local cluster stopped")
    return EXIT_OK


def cmd_submit(args) -> int:
    from raycluster.spec import apply_overrides, parse_spec, read_spec_file

    raw = read_spec_file(args.file)
    if args.overrides:
        if not isinstance(raw, dict):
            parse_spec(raw)  # (the error naming what it is)
        raw = apply_overrides(raw, args.overrides)
    overrides = {}
    if args.priority is not None:
        overrides["priority"] = args.priority
    if args.name:
        overrides["name"] = args.name
    spec_dict = {**raw, **overrides} if isinstance(raw, dict) else raw
    if not isinstance(spec_dict, dict):
        parse_spec(spec_dict)  # (the error naming what it is)
    client = client_for(args)
    if spec_dict.get("schedule") is not None:  # a scheduled job: runs are submitted at its ticks
        if args.wait:
            raise BadArgument("--wait: a spec with a schedule makes a scheduled job; follow its runs with "
                              "`raycluster schedules show ID`")
        from raycluster.cli.schedules import describe

        sched = client.create_schedule(spec_dict)
        for uri in client.last_uploaded:
            print(f"uploaded {uri}", file=sys.stderr)
        print_json(sched) if args.json else print(describe(sched))
        return EXIT_OK
    job = client.submit(spec_dict)  # local runtime_env directories (relative to here) uploaded first
    for uri in client.last_uploaded:
        print(f"uploaded {uri}", file=sys.stderr)
    if not args.wait:
        print_json(job) if args.json else print(job["id"])
        return EXIT_OK
    if args.json:
        return finish(client.wait([job["id"]], timeout_s=args.timeout), True)
    print(f"submitted {job['id']}; waiting (rank 0's output follows)", flush=True)
    from raycluster.cli.follow import LogFollower

    follower, progress = LogFollower(client, job["id"], ranks={0}), progress_printer()

    def on_poll(jobs: list[dict]) -> None:
        progress(jobs)
        follower.poll()

    return finish(client.wait([job["id"]], timeout_s=args.timeout, poll_s=1.0, on_poll=on_poll), False)


def cmd_jobs(args) -> int:
    """One page of jobs (``--limit``/``--offset``), or ``--all``; says how to get the next page."""
    if args.limit < 1 or args.offset < 0:
        raise BadArgument("--limit must be >= 1 and --offset >= 0")
    client = client_for(args, offline_ok=True)
    newest = not args.oldest_first
    if args.all:
        jobs, more = client.list(states=args.state or None, tenant=args.tenant, newest_first=newest), False
    else:
        jobs = client.list(states=args.state or None, tenant=args.tenant, limit=args.limit + 1, offset=args.offset,
                           newest_first=newest)
        more, jobs = len(jobs) > args.limit, jobs[:args.limit]
    if args.json:
        print_json(jobs)
    else:
        print(jobs_table(jobs))
        if more:
            print(f"(jobs {args.offset + 1}-{args.offset + len(jobs)}, more: --offset {args.offset + len(jobs)}"
                  " for the next page, --all for every job)", file=sys.stderr)
    return EXIT_OK


def cmd_checkpoints(args) -> int:
    client = client_for(args, offline_ok=True)
    client.get(args.job_id)  # JobNotFound (exit 4) rather than an empty list
    rows = client.checkpoints(args.job_id)
    if args.json:
        print_json(rows)
        return EXIT_OK
    cols = ("STEP", "ATTEMPT", "STATE", "SIZE_MB", "CREATED", "REASON")
    table = [(str(c["step"]), str(c.get("attempt") or "-"), c["state"], f"{(c.get('size_bytes') or 0) / 2**20:.2f}",
              time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c["created_at"])) if c.get("created_at") else "-",
              c.get("reason") or "") for c in rows]
    print(text_table(cols, table))
    if not rows:
        print("(no checkpoints)")
    return EXIT_OK


def cmd_tenants(args) -> int:
    if args.set:
        from raycluster.store.tenants import describe, install_tenants_file, tenants_path

        try:
            config = install_tenants_file(args.state_dir, args.set)
        except ValueError as exc:
            raise BadArgument(str(exc)) from None
        if args.json:
            print_json(describe(config))
        else:
            print(f"tenants config installed at {tenants_path(args.state_dir)} ({len(config.tenants)} tenant(s)); "
                  "the Coordinator applies it at its next pass")
        return EXIT_OK
    view = client_for(args).tenants()
    if args.json:
        print_json(view)
        return EXIT_OK
    if view.get("error"):
        print(f"warning: {view['error']} (the previous config holds)", file=sys.stderr)
    cols = ("TENANT", "GPUS", "CPUS", "JOBS", "QUEUED", "USD/H", "USD_TODAY", "USD_MONTH", "SHARES", "USAGE",
            "FAIR_SHARE")

    def lim(held, q, key):
        return f"{held:g}/{q[key]:g}" if key in q else f"{held:g}"

    def usd(spent, limit):
        return f"{spent:.2f}" + ("" if limit is None else f"/{limit:.2f}")

    rows = [(t["tenant"] + ("" if t["listed"] else "*"), lim(t["holding"]["gpus"], t["quota"], "max_gpus"),
             lim(t["holding"]["cpus"], t["quota"], "max_cpus"), lim(t["holding"]["jobs"], t["quota"], "max_jobs"),
             str(t["queued"]), usd(t["spend"]["usd_per_hour"], t["quota"].get("max_usd_per_hour")),
             usd(t["spend"]["today_usd"], t["quota"].get("budget_usd", {}).get("day")),
             usd(t["spend"]["month_usd"], t["quota"].get("budget_usd", {}).get("month")),
             f"{t['quota'].get('shares', 1):g}", f"{t['usage']:.1f}", f"{t['fair_share']:.3f}")
            for t in view["tenants"]]
    print(text_table(cols, rows))
    print(f"(* not listed in {view['file']}: the default quota)")
    for t in view["tenants"]:
        if t.get("budget_waiting"):
            print(f"{t['tenant']}: its jobs wait — {t['budget_waiting']}")
    return EXIT_OK


def cmd_status(args) -> int:
    client = client_for(args, offline_ok=bool(args.job_id))  # (one job's history outlives the cluster)
    if args.job_id:
        job = client.get(args.job_id)
        if args.json:
            print_json(job)
            return EXIT_OK
        print(job_details(job))
        return EXIT_OK
    st = client.cluster_status()
    if args.json:
        print_json(st)
    else:
        print(f"nodes {st['nodes']} · GPUs {st['gpus_free']:g}/{st['gpus_total']:g} free · "
              f"CPUs {st['cpus_free']:g}/{st['cpus_total']:g} free")
        print("jobs: " + " ".join(f"{k}={v}" for k, v in st["jobs_by_state"].items()))
        if st["queue_depth_by_priority"]:
            print("queue by priority: " + ", ".join(f"p{k}:{v}" for k, v in st["queue_depth_by_priority"].items()))
    return EXIT_OK


def cmd_logs(args) -> int:
    client = client_for(args, offline_ok=True)
    if args.follow:
        if args.json:
            raise BadArgument("--follow prints lines as they come; --json takes a snapshot (drop one of them)")
        from raycluster.cli.follow import LogFollower, follow_until_done
        from raycluster.client.offline import OfflineClient

        follower = LogFollower(client, args.job_id, tail=args.tail)
        if isinstance(client, OfflineClient):  # nothing will write to the logs: what is there, then stop
            follower.poll()
            print("(no cluster is up: not following)", file=sys.stderr)
            return EXIT_OK
        job = follow_until_done(client, args.job_id, follower)
        print(f"({job['id']} {job['state']}" + (f": {job['reason']})" if job.get("reason") else ")"),
              file=sys.stderr)
        return EXIT_OK
    logs = client.logs(args.job_id, args.tail)
    if args.json:
        print_json(logs)
        return EXIT_OK
    if not logs:
        print(f"no logs for {args.job_id} yet", file=sys.stderr)
    for entry in logs:
        print(f"==> attempt {entry['attempt']} rank {entry['rank']} <==")
        if entry.get("error"):
            print(f"(unreadable: {entry['error']})", file=sys.stderr)
        for line in entry["lines"]:
            print(line)
    return EXIT_OK


def cmd_env(args) -> int:
    """Shell exports for Ray's own tools (``ray job submit``, ``ray status``) against the local cluster:
    the dashboard address and, on a token cluster, the auth token's path."""
    import shlex

    from raycluster.provision.auth import driver_env
    from raycluster.provision.local.record import read_record

    record = read_record(Path(args.state_dir))
    if not record or record.get("removed"):
        raise ClusterUnavailable(f"no local cluster recorded under {args.state_dir}; start one with "
                                 f"`raycluster up --local`")
    env = {"RAY_API_SERVER_ADDRESS": record["dashboard_url"], **driver_env(Path(args.state_dir))}
    if args.json:
        print_json(env)
    else:
        for k, v in env.items():
            print(f"export {k}={shlex.quote(str(v))}")
    return EXIT_OK


def cmd_cancel(args) -> int:
    """Cancel each job named (or, with --all, each unfinished one matching the filters); one line per
    job, a refusal (not found, already finished) on stderr; the exit code of the first refusal."""
    from raycluster.errors import RayClusterError, exit_code
    from raycluster.store.lifecycle import ACTIVE_STATES, JobState

    if args.all == bool(args.job_ids):
        raise BadArgument("cancel takes job ids, or --all with --state/--tenant (not both)")
    if (args.state or args.tenant) and not args.all:
        raise BadArgument("--state/--tenant select jobs for --all")
    if args.all and not (args.state or args.tenant):
        raise BadArgument("cancel --all needs --state or --tenant (say which jobs: e.g. --state PENDING)")
    client = client_for(args)
    ids = list(dict.fromkeys(args.job_ids))
    if args.all:
        states = args.state or [s.value for s in (JobState.PENDING, *ACTIVE_STATES)]
        ids = [j["id"] for j in client.list(states=states, tenant=args.tenant)]
    done, code = [], EXIT_OK
    for jid in ids:
        try:
            job = client.cancel(jid)
        except RayClusterError as exc:
            print(f"{jid}: {exc}", file=sys.stderr)
            code = code or exit_code(exc)
            continue
        done.append(job)
        if not args.json:
            print(f"{job['id']} {job['state']}")
    if args.json:
        print_json(done)
    elif args.all and not ids:
        print("no unfinished job matches", file=sys.stderr)
    return code


def cmd_demo(args) -> int:
    """Start a local cluster too small for the three example jobs at once, submit them together, show
    the queue run them by priority (the CNN first, the others waiting), show them finish, stop."""
    from raycluster.client.ray_client import Client, connect
    from raycluster.control.actors import start_runtime
    from raycluster.provision.local.cluster import LocalCluster
    from raycluster.spec import load_spec

    state_dir = Path(args.state_dir)
    root = Path(__file__).resolve().parents[2]
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
        specs = sorted((load_spec(root / rel) for rel in DEMO_SPECS), key=lambda s: s.priority)
        gpus = args.workers * args.gpus_per_worker
        need = sum(s.num_workers * s.resources.gpus for s in specs)
        print(f"submitting {len(specs)} jobs together, lowest priority first: they need {need:g} GPUs, the cluster "
              f"has {gpus}" + (" — the queue runs the higher priorities first, the rest wait" if need > gpus else ""))
        jobs = client.submit_many(specs)  # one batch: the queue, not the order of submission, decides
        ids = [j["id"] for j in jobs]
        for spec, job in zip(specs, jobs):
            print(f"  {job['id']} {spec.name}: priority {spec.priority}, {spec.num_workers} worker(s) x "
                  f"{spec.resources.gpus:g} GPU")
        final = client.wait(ids, timeout_s=args.timeout, on_poll=progress_printer())
        code = finish(final, args.json)
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


