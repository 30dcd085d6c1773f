"""Submit a raycluster job from inside a Ray job: ``ray job submit`` as a first-class way in.

    ray job submit --working-dir . -- python -m raycluster.submit configs/jobs/cnn.yaml --follow

Owns: connecting from a Ray job's entrypoint (inside a Ray job the cluster address is known:
``RAY_ADDRESS`` is set by Ray's job manager, and so is the auth of token clusters), carrying the
submitting Ray job's ``runtime_env`` over to the training tasks, and the exit status of the Ray
job. The Ray job's ``runtime_env`` (``working_dir`` — a ``gcs://`` URI once ``ray job submit``
has uploaded it — ``py_modules``, ``pip``, ``env_vars``, …) is merged into the spec's
``runtime_env``; keys the spec sets itself win (``env_vars`` are merged key by key, the spec's
values winning). The Coordinator then checks the entrypoint with that runtime_env and launches
every rank with it, so an entrypoint that exists only in the uploaded working_dir imports; it
also keeps the uploaded packages pinned in the GCS while the job is not finished, so they
outlive the submitting Ray job.

Exit status: 0 the job was accepted (without ``--follow``) or SUCCEEDED (with it) · 1 it ended
FAILED or CANCELLED, or the follower was stopped (``ray job stop``: the raycluster job is then
cancelled) · 2 the spec is invalid (one line naming the field, no traceback) · 3 the cluster or
the raycluster runtime is unavailable.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from raycluster.client.base import follow_jobs
from raycluster.errors import (EXIT_JOB_FAILED, EXIT_OK, ClusterUnavailable, InvalidJobSpec, RayClusterError,
                               exit_code)
from raycluster.store.lifecycle import JobState

# runtime_env keys that only matter on the uploading side, or that Ray adds for itself
_DROP_KEYS = {"excludes"}


def merge_runtime_env(job_env: dict | None, spec_env: dict | None) -> dict | None:
    """The spec's runtime_env on top of the submitting Ray job's (spec keys win; env_vars merged)."""
    base = {k: v for k, v in (job_env or {}).items()
            if not k.startswith("_") and k not in _DROP_KEYS and v not in (None, {}, [], "")}
    spec_env = dict(spec_env or {})
    out = {**base, **spec_env}
    if isinstance(base.get("env_vars"), dict) and isinstance(spec_env.get("env_vars"), dict):
        out["env_vars"] = {**base["env_vars"], **spec_env["env_vars"]}
    return out or None


def current_job_runtime_env() -> dict:
    """The runtime_env of the Ray job this process is the driver of ({} outside a Ray job)."""
    import ray

    try:
        env = ray.get_runtime_context().runtime_env
    except Exception:
        return {}
    return json.loads(json.dumps(dict(env or {}), default=str))  # RuntimeEnv → plain JSON


def _say(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class _Stopped(Exception):
    pass


def _raise_stopped(signum, _frame):
    raise _Stopped(signal.Signals(signum).name)


def follow(client, job_id: str, poll_s: float = 0.5, unavailable_grace_s: float = 120.0) -> dict:
    """Print state changes (with reasons) and step/loss changes until the job is terminal."""
    seen = {"state": None, "progress": None}

    def on_poll(jobs: list[dict]) -> None:
        job = jobs[0]
        if job["state"] != seen["state"]:
            attempt = f" attempt {job['attempt']}" if job.get("attempt") else ""
            reason = f" ({job['reason']})" if job.get("reason") else ""
            _say(f"{job_id} {job['state']}{attempt}{reason}")
            seen["state"] = job["state"]
        m = job.get("last_metrics") or {}
        progress = (m.get("step"), m.get("loss"))
        if progress != (None, None) and progress != seen["progress"]:
            seen["progress"] = progress
            extra = " ".join(f"{k}={_fmt(v)}" for k, v in sorted(m.items())
                             if k not in ("step", "loss") and isinstance(v, (int, float)))
            _say(f"{job_id} step={_fmt(m.get('step'))} loss={_fmt(m.get('loss'))}" + (f" {extra}" if extra else ""))

    def on_unavailable(exc: ClusterUnavailable) -> None:  # the Coordinator is restarting: keep following
        if seen["state"] != "?":
            _say(f"{job_id} coordinator unreachable, retrying: {exc.message}")
            seen["state"] = "?"

    return follow_jobs(client.get, [job_id], poll_s=poll_s, on_poll=on_poll, on_unavailable=on_unavailable,
                       unavailable_grace_s=unavailable_grace_s)[0]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m raycluster.submit",
        description="Submit a raycluster job spec from inside a Ray job (ray job submit ... -- python -m "
                    "raycluster.submit SPEC --follow); the Ray job's runtime_env reaches the training tasks.")
    p.add_argument("file", help="job spec (YAML or JSON), relative to the Ray job's working_dir")
    p.add_argument("--follow", action="store_true",
                   help="stream progress until the job ends; exit 0 only if it SUCCEEDED")
    p.add_argument("--priority", type=int)
    p.add_argument("--name")
    p.add_argument("--address", default=None,
                   help="Ray address (default: the Ray job's own cluster, else RAY_ADDRESS or the local cluster)")
    p.add_argument("--state-dir", default=None, help="raycluster state dir (only to find a local cluster)")
    p.add_argument("--poll", type=float, default=0.5, help="seconds between progress polls")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from raycluster import constants as C
    from raycluster.spec import load_spec, parse_spec

    # 1. the spec, validated locally before touching the cluster
    try:
        spec = load_spec(args.file)
        data = spec.model_dump(mode="json", exclude_unset=True)
        if args.priority is not None:
            data["priority"] = args.priority
        if args.name:
            data["name"] = args.name
        spec = parse_spec(data)
    except InvalidJobSpec as exc:
        return _fail(exc)

    # 2. the cluster and the runtime
    from raycluster.client.ray_client import Client, connect

    try:
        connect(args.address, Path(args.state_dir) if args.state_dir else C.state_dir())
        client = Client()
    except ClusterUnavailable as exc:
        return _fail(exc)

    # 3. the Ray job's runtime_env, under the spec's own
    job_env = current_job_runtime_env()
    merged = merge_runtime_env(job_env, data.get("runtime_env"))
    if merged:
        data["runtime_env"] = merged
    try:
        job = client.submit(data)
    except RayClusterError as exc:
        return _fail(exc)
    jid = job["id"]
    print(jid, flush=True)
    if merged:
        _say(f"{jid} runtime_env: {_describe_env(merged)}")
    if not args.follow:
        return EXIT_OK

    # 4. follow; `ray job stop` (SIGTERM) or Ctrl-C cancels the job we are following
    old = {s: signal.signal(s, _raise_stopped) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        final = follow(client, jid, poll_s=args.poll)
    except _Stopped as why:
        _err(f"{jid} follower stopped ({why}); cancelling the job")
        for s, h in old.items():
            signal.signal(s, h)
        try:
            client.cancel(jid)
        except RayClusterError as exc:
            _err(f"{jid} cancel: {exc.message}")
        return EXIT_JOB_FAILED
    except ClusterUnavailable as exc:
        return _fail(exc)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if final["state"] == JobState.SUCCEEDED.value:
        _say(f"{jid} SUCCEEDED result={json.dumps(final.get('result'), sort_keys=True, default=str)}")
        return EXIT_OK
    _err(f"{jid} {final['state']}: {final.get('reason') or ''}")
    if final.get("error"):
        print(final["error"], file=sys.stderr, flush=True)
    return EXIT_JOB_FAILED


def _describe_env(env: dict) -> str:
    """working_dir / py_modules as they are; other keys by name only (env_vars may hold secrets)."""
    parts = []
    for k in sorted(env):
        if k in ("working_dir", "py_modules"):
            parts.append(f"{k}={env[k]}")
        elif k == "env_vars" and isinstance(env[k], dict):
            parts.append(f"env_vars=[{', '.join(sorted(env[k]))}]")
        else:
            parts.append(k)
    return " ".join(parts)


def _invalid(exc: InvalidJobSpec) -> str:
    msg = " ".join(exc.message.split())  # one line
    return f"error: {msg}" + (f" (field: {exc.field})" if exc.field and exc.field not in msg else "")


def _fail(exc: RayClusterError) -> int:
    """Say why on stderr (an invalid spec: one line naming its field) and return the exit code."""
    _err(_invalid(exc) if isinstance(exc, InvalidJobSpec) else f"error: {exc.message}")
    return exit_code(exc)
