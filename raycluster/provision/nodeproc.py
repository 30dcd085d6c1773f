"""A worker node's process on this host, started without the ``ray start`` command line.

Owns: ``python -m raycluster.provision.nodeproc <ray start worker flags>`` — what ``ray start
--address … --block`` does for a worker node (``ray/scripts/scripts.py: start``): the same
``RayParams``, ``ray._private.node.Node(head=False)``, then block, and when one of the node's
processes dies unexpectedly kill the rest and exit 1. It imports ``ray._private.node`` (0.6 s on
the 2-core CI VM) instead of Ray's whole CLI (1.9 s), which every rented local node paid before it
started anything (scripts/bench_scale.py measures both). Only the flags ``raystart.worker_args`` and
``raystart.common_args`` produce are accepted; anything else is refused (exit 2) so a flag we start
passing is never silently dropped. The head is still started by ``ray start --head``; nodes on other
hosts (SSH market) by ``ray start`` there.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raycluster.provision.nodeproc", allow_abbrev=False)
    p.add_argument("--address", required=True)
    p.add_argument("--num-cpus", type=float, required=True)
    p.add_argument("--num-gpus", type=float, required=True)
    p.add_argument("--resources", default="{}")
    p.add_argument("--block", action="store_true")
    p.add_argument("--node-ip-address", required=True)
    p.add_argument("--node-name", required=True)
    p.add_argument("--labels", default="")
    p.add_argument("--min-worker-port", type=int, default=0)
    p.add_argument("--max-worker-port", type=int, default=0)
    p.add_argument("--dashboard-agent-listen-port", type=int, default=0)
    p.add_argument("--object-store-memory", type=int, default=None)
    p.add_argument("--disable-usage-stats", action="store_true")
    p.add_argument("--temp-dir", required=True)
    return p


def _labels(text: str) -> dict[str, str]:
    out = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise SystemExit(f"--labels: {part!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import ray._private.node
    import ray._private.parameter
    from ray._private import services, utils
    from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled

    cpus = int(args.num_cpus) if float(args.num_cpus).is_integer() else args.num_cpus
    gpus = int(args.num_gpus) if float(args.num_gpus).is_integer() else args.num_gpus
    params = ray._private.parameter.RayParams(
        node_ip_address=args.node_ip_address, node_name=args.node_name,
        min_worker_port=args.min_worker_port, max_worker_port=args.max_worker_port,
        object_store_memory=args.object_store_memory, num_cpus=cpus, num_gpus=gpus,
        resources=json.loads(args.resources), labels=_labels(args.labels), temp_dir=args.temp_dir,
        dashboard_agent_listen_port=args.dashboard_agent_listen_port, huge_pages=False)
    params.gcs_address = services.canonicalize_bootstrap_address(args.address, temp_dir=args.temp_dir)
    ensure_token_if_auth_enabled(None, create_token_if_missing=False)  # RAY_AUTH_MODE=token: load it
    node = ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True, connect_only=False)
    utils.write_ray_address(params.gcs_address, node.get_temp_dir_path())
    print(f"raycluster node {args.node_name} started (Ray {ray.__version__})", flush=True)

    def _stop(signum, _frame):  # what `ray start --block` gets on SIGTERM: stop the node's processes
        node.kill_all_processes(check_alive=False, allow_graceful=True)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, _stop)
    expected = {0, signal.SIGTERM, -signal.SIGTERM, 128 + signal.SIGTERM}
    while True:
        time.sleep(1)
        dead = [(kind, p) for kind, p in node.dead_processes() if p.returncode not in expected]
        if dead:
            print("some Ray processes of this node exited unexpectedly: "
                  + ", ".join(f"{kind} (exit {p.returncode})" for kind, p in dead) + "; stopping the rest",
                  file=sys.stderr, flush=True)
            node.kill_all_processes(check_alive=False, allow_graceful=False)
            return 1


if __name__ == "__main__":
    sys.exit(main())
