"""Starting a Ray node: the ``ray start`` command line, its environment, and waiting for it to register.

Owns what every way of making a node shares (the local cluster today; the markets and the node
provider later): the ``ray start ... --block`` argv for a head or a worker (random ports, so several
nodes share a host; node name and labels; its own ``--temp-dir``), the node environment (faster
node-death detection, explicit auth mode — never inherited — and no leaked identity from the
caller), the visible physical GPUs, and ``wait_registered``: readiness read from the head's
dashboard state API (``/api/v0/nodes``, by ``--node-name``), which also gives each node's Ray id.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

from raycluster import constants as C
from raycluster.errors import LocalClusterError

_POLL_INTERVAL_S = 0.25
_HTTP_TIMEOUT_S = 5.0
# Environment that must not leak from the caller into our nodes unless the caller asks for it
# explicitly (they would make nodes share identities or talk to another cluster).
SCRUBBED_ENV = ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_OVERRIDE_NODE_ID_FOR_TESTING", "RAY_CLOUD_INSTANCE_ID",
                "RAY_NODE_TYPE_NAME", "RAYCLUSTER_LOCAL_NODE",
                # set by `ray up` for the head (and inherited by its autoscaler): never another node's
                "RAY_OVERRIDE_RESOURCES", "RAY_OVERRIDE_LABELS")


class NodeStartFailed(LocalClusterError):
    """Some nodes did not come up (their process exited, or they never registered)."""

    def __init__(self, message: str, names: list[str] | None = None, *, field: str | None = None):
        super().__init__(message, field=field)
        self.names = list(names or [])


def detect_gpu_ids() -> list[str]:
    """Visible physical GPUs as CUDA ids (honours an existing CUDA_VISIBLE_DEVICES); [] if none."""
    try:
        with warnings.catch_warnings():  # the deprecated pynvml shim warns on import
            warnings.simplefilter("ignore")
            import pynvml

        pynvml.nvmlInit()
        try:
            count = int(pynvml.nvmlDeviceGetCount())
        finally:
            with contextlib.suppress(Exception):
                pynvml.nvmlShutdown()
    except Exception:
        return []
    if count <= 0:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    return [str(i) for i in range(count)]


def gpu_plan(gpu_mode: str, gpu_ids: list[str] | None) -> tuple[str, list[str]]:
    """("physical" | "logical", the physical CUDA ids to hand out) for a cluster's ``gpu_mode``."""
    if gpu_mode == "logical":
        return "logical", []
    if gpu_ids is not None:
        return "physical", list(gpu_ids)
    ids = detect_gpu_ids()
    if gpu_mode == "physical" and not ids:
        raise LocalClusterError("gpu_mode='physical' but no GPU is visible", field="gpu_mode")
    return ("physical", ids) if ids else ("logical", [])


def ray_start_argv() -> list[str]:
    ray_bin = Path(sys.executable).parent / "ray"
    if ray_bin.exists():
        return [str(ray_bin), "start"]
    return [sys.executable, "-m", "ray.scripts.scripts", "start"]


def worker_start_argv() -> list[str]:
    """The command that starts a worker node on this host: ``raycluster.provision.nodeproc`` (what
    ``ray start --address … --block`` does, without importing Ray's whole CLI first)."""
    return [sys.executable, "-m", "raycluster.provision.nodeproc"]


def common_args(name: str, temp_dir: Path, labels: Mapping[str, str], object_store_bytes: int, *,
                node_ip: str | None = None, make_dir: bool = True) -> list[str]:
    """Arguments of every node we start (head or worker); ``make_dir``: create ``temp_dir`` here
    (not for a node on another host)."""
    if make_dir:
        temp_dir.mkdir(parents=True, exist_ok=True)
    return [
        "--block",
        f"--node-ip-address={C.LOCAL_NODE_IP if node_ip is None else node_ip}",
        f"--node-name={name}",
        f"--labels={','.join(f'{k}={v}' for k, v in labels.items())}",
        # Several nodes share this host. Ports whose default is a fixed number (worker ports
        # 10002-19999, dashboard agent http 52365) are made random; node manager, object
        # manager, agent grpc, runtime env agent and metrics ports are random by default.
        "--min-worker-port=0",
        "--max-worker-port=0",
        "--dashboard-agent-listen-port=0",
        f"--object-store-memory={object_store_bytes}",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]


def head_args(gcs_port: int, dashboard_port: int, client_port: int | None, num_cpus: int) -> list[str]:
    return ["--head", f"--port={gcs_port}", f"--num-cpus={num_cpus}", "--num-gpus=0", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}"] + (
        [f"--ray-client-server-port={client_port}"] if client_port else [])


def worker_args(address: str, num_cpus: int, num_gpus: int, resources: Mapping[str, float]) -> list[str]:
    return [f"--address={address}", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}",
            f"--resources={json.dumps(dict(resources))}"]


def node_env(auth_mode: str, auth_token_path: str | None, *, base: Mapping[str, str] | None = None,
             extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a node process: ours without leaked identities, Ray's fast node-death
    detection, a log monitor that globs less often, the cluster's explicit auth mode, then ``base``
    (cluster-wide) and ``extra``."""
    env = dict(os.environ)
    for key in SCRUBBED_ENV:
        env.pop(key, None)
    env.update({
        "RAY_health_check_period_ms": str(C.LOCAL_HEALTH_CHECK_PERIOD_MS),
        "RAY_health_check_failure_threshold": str(C.LOCAL_HEALTH_CHECK_FAILURE_THRESHOLD),
        "RAY_USAGE_STATS_ENABLED": "0",
    })
    # Ray's log monitor (one per node) globs the node's log directory every 0.1 s while it holds under
    # 1000 files; with several nodes on one host that was a measurable share of an idle local cluster's
    # CPU (4 nodes: 6.4 % of a core; 3.8 % with this). New log files are then found within 0.5 s;
    # lines of known ones still every 0.1 s. (A value set by the user is kept.)
    env.setdefault("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", "0")
    env.update(base or {})
    env.pop("RAY_AUTH_TOKEN", None)
    env["RAY_AUTH_MODE"] = auth_mode
    if auth_mode == "token" and auth_token_path:
        env["RAY_AUTH_TOKEN_PATH"] = auth_token_path
    else:
        env.pop("RAY_AUTH_TOKEN_PATH", None)
    env.update(extra or {})
    return env


def state_api_nodes(dashboard_url: str, auth_token_path: str | None) -> list[dict] | None:
    """Nodes known to the GCS, via the head's dashboard; None while it does not answer."""
    req = urllib.request.Request(f"{dashboard_url}/api/v0/nodes?detail=1&limit=10000")
    if auth_token_path:
        try:
            req.add_header("Authorization", f"Bearer {Path(auth_token_path).read_text().strip()}")
        except OSError:
            return None
    try:
        with urllib.request.urlopen(req, timeout=_HTTP_TIMEOUT_S) as resp:
            body = json.loads(resp.read().decode())
        return list(body["data"]["result"]["result"])
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError):
        return None


def wait_registered(dashboard_url: str, auth_token_path: str | None, pending: Mapping[str, Any],
                    timeout_s: float, *, is_alive: Callable[[Any], bool],
                    describe: Callable[[Any], str]) -> dict[str, dict]:
    """Wait until every node in ``pending`` (name -> launcher) is ALIVE in the GCS; return name ->
    its state-API entry. Raises NodeStartFailed naming the nodes that exited or never registered
    (``describe(launcher)`` adds e.g. the tail of the node's log)."""
    deadline = time.monotonic() + timeout_s
    found: dict[str, dict] = {}
    while True:
        dead = [n for n, launcher in pending.items() if n not in found and not is_alive(launcher)]
        if dead:
            details = "\n".join(describe(pending[n]) for n in dead)
            raise NodeStartFailed(f"local node(s) {dead} exited during startup:\n{details}", dead)
        entries = state_api_nodes(dashboard_url, auth_token_path)
        for entry in entries or []:
            name = entry.get("node_name")
            if name in pending and entry.get("state") == "ALIVE":
                found[name] = entry
        if len(found) == len(pending):
            return found
        if time.monotonic() >= deadline:
            missing = [n for n in pending if n not in found]
            why = "dashboard state API never answered" if entries is None else "not registered"
            details = "\n".join(describe(pending[n]) for n in missing)
            raise NodeStartFailed(f"local node(s) {missing} not up after {timeout_s:.0f}s ({why} at "
                                  f"{dashboard_url}):\n{details}", missing)
        time.sleep(_POLL_INTERVAL_S)
