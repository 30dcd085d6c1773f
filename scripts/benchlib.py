"""What the benchmark scripts share: stderr progress lines, percentiles, the JSON result file."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(values, q):
    """The ``q``-th percentile (nearest rank) of ``values``; None when there are none."""
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))] if values else None


def write_result(result: dict, out: str | Path) -> None:
    """Write ``result`` as JSON to ``out`` (creating its folder) and print it on stdout."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2)
    out.write_text(text)
    print(text)


def start_runtime_and_api(lc, state_dir) -> tuple[dict, str, dict]:
    """Connect to a started local cluster, start the runtime actors and deploy the HTTP API on a free
    port: (deploy info, API URL, auth headers)."""
    from raycluster.api.deploy import deploy_api
    from raycluster.control.actors import start_runtime
    from raycluster.util.ports import free_port

    lc.connect(namespace="raycluster", log_to_driver=False)
    start_runtime(state_dir)
    info = deploy_api(state_dir, port=free_port("127.0.0.1"))
    headers = {"Authorization": "Bearer " + Path(info["token_path"]).read_text().strip()}
    return info, info["url"], headers


def settle(max_s: float = 30.0, busy_pct: float = 40.0) -> float:
    """Wait until this machine's CPUs are quiet (two 0.5 s samples below ``busy_pct`` %, at most
    ``max_s``): a measurement that starts while the runtime's own actors are still starting shares
    the cores with them. Returns the seconds waited."""
    import time

    import psutil

    t0, quiet = time.monotonic(), 0
    while quiet < 2 and time.monotonic() - t0 < max_s:
        quiet = quiet + 1 if psutil.cpu_percent(interval=0.5) < busy_pct else 0
    return round(time.monotonic() - t0, 1)


def stop_cluster(lc) -> None:
    """Stop Serve (if started), disconnect, and stop the local cluster a benchmark started."""
    import ray
    from ray import serve

    try:
        serve.shutdown()
    except Exception as exc:  # the cluster is going away anyway
        log(f"serve.shutdown: {exc}")
    ray.shutdown()
    lc.stop()
