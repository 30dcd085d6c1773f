"""Deploying the control API on a cluster: ``deploy_api`` / ``undeploy_api``.

Owns: the Serve application ``raycluster-api`` on the head node, bound to 127.0.0.1:``API_PORT``.
With one replica (the default) the replica's own HTTP server owns that port (Serve's *direct
ingress*: a request crosses one process instead of proxy + replica — ~4x the requests per CPU second,
scripts/bench_api.py); Serve's proxy still runs (Serve only serves HTTP with one) on a free port.
Idempotent by a digest of the API package's code and settings (shown by ``/healthz``): an identical
API is left alone, a different one replaced (delete + deploy: a rolling update cannot start a
second replica on the one port). Clear ``ApiDeployError`` (field ``api_port``) when another program
holds the port or Serve already serves the API elsewhere — checked before anything changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import urllib.request
from pathlib import Path
from typing import Any

from ray import serve

from raycluster import constants as C
from raycluster.api._serve_compat import direct_ingress_env
from raycluster.api.routes import ControlAPI
from raycluster.api.settings import ApiSettings
from raycluster.api.token import ensure_api_token, resolve_token
from raycluster.errors import ApiDeployError
from raycluster.util.ports import free_port, port_is_free

log = logging.getLogger("raycluster.api")

API_APP_NAME = "raycluster-api"


def deploy_api(state_dir: Path | str, host: str = "127.0.0.1", port: int | None = None,
               token: str | None = None, *, num_replicas: int | None = None,
               actor_timeout_s: float | None = None, direct_ingress: bool | None = None) -> dict:
    """Deploy the API on the connected cluster (on the head node); idempotent.

    The token is ``token``, else ``RAYCLUSTER_API_TOKEN``, else ``<state_dir>/api_token`` (created,
    0600, when missing). Only its sha256 reaches the deployment. Needs a Ray connection (the
    runtime actors may start before or after). ``actor_timeout_s`` overrides API_ACTOR_TIMEOUT_S.

    With ``direct_ingress`` (default ``API_DIRECT_INGRESS``, and only with one replica) the
    replica itself listens on ``host:port`` (Ray Serve direct ingress: Serve's proxy is not on the
    request path; it still runs, on API_PROXY_PORT or a free port). Otherwise Serve's proxy listens
    on ``host:port``. Serve's cluster-wide options apply only when this call starts Serve; if
    Serve already runs with other options and the API does not answer at ``host:port``,
    ApiDeployError says so. Also ApiDeployError when another program holds the port.
    Returns ``{"url", "token_path", "direct_ingress"}`` once ``GET /healthz`` answers there
    (token_path is None when the token came from the argument or the environment), plus
    ``proxy_url`` (Serve's proxy, serving the same app one hop longer) when direct and just deployed.
    """
    token_path: Path | None = None
    token = token or resolve_token(state_dir=None)  # the argument, else RAYCLUSTER_API_TOKEN
    if token is None:
        token, token_path = ensure_api_token(state_dir)
    timeout_s = C.API_ACTOR_TIMEOUT_S if actor_timeout_s is None else float(actor_timeout_s)
    settings = ApiSettings(token_sha256=hashlib.sha256(token.encode()).hexdigest(), actor_timeout_s=timeout_s,
                           submit_timeout_s=max(timeout_s, C.ENTRYPOINT_CHECK_TIMEOUT_S + 10),
                           max_body_bytes=C.API_MAX_BODY_BYTES, retry_after_s=C.API_RETRY_AFTER_S,
                           status_cache_s=C.API_STATUS_CACHE_S)
    replicas = num_replicas or C.API_NUM_REPLICAS
    direct = (C.API_DIRECT_INGRESS if direct_ingress is None else direct_ingress) and replicas == 1
    port = int(C.API_PORT if port is None else port)
    serve_env = direct_ingress_env(port) if direct else {}
    settings.version = _version(settings, replicas, serve_env)
    url_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    url = f"http://{url_host}:{port}"
    running = _api_health(url)
    if running is None and not port_is_free(host, port):
        raise ApiDeployError(f"cannot serve the API on {host}:{port}: another program is listening there "
                             f"(choose another port: `raycluster up --api-port N` or RAYCLUSTER_API_PORT)",
                             field="api_port")
    if running is None and _app_deployed():
        raise ApiDeployError(f"the API is already deployed on this cluster but does not answer at {url}: it "
                             "listens on another port (Serve's port is fixed while Serve runs: `raycluster down` "
                             "and `up` with the new port) or is restarting (retry in a few seconds)",
                             field="api_port")
    result = {"url": url, "token_path": str(token_path) if token_path else None, "direct_ingress": direct}
    if running is not None and running.get("version") == settings.version:
        return result  # this code with these settings already answers there (Serve would restart it)
    if running is not None and direct:
        # One replica owning one port: Serve's rolling update would start the new replica while the
        # old one still holds the port. Replace it instead (the API is down for a few seconds).
        log.info("the API on %s runs other code/settings: replacing it", url)
        serve.delete(API_APP_NAME)
    proxy_port = (C.API_PROXY_PORT or free_port(url_host)) if direct else port
    quiet = {"log_level": "WARNING", "enable_access_log": False}  # per-request log lines cost ~15% CPU
    serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": proxy_port}, logging_config=quiet,
                controller_options={"runtime_env": {"env_vars": serve_env}} if serve_env else None)
    actor_options: dict[str, Any] = {"num_cpus": 0, "resources": dict(C.HEAD_NODE_RESOURCE)}
    if serve_env:
        actor_options["runtime_env"] = {"env_vars": serve_env}
    deployment = ControlAPI.options(num_replicas=replicas, max_ongoing_requests=C.API_MAX_ONGOING_REQUESTS,
                                    ray_actor_options=actor_options,
                                    graceful_shutdown_timeout_s=C.API_DRAIN_S + 5,
                                    health_check_period_s=C.API_HEALTH_CHECK_PERIOD_S,
                                    health_check_timeout_s=C.API_HEALTH_CHECK_TIMEOUT_S)
    serve.run(deployment.bind(settings.model_dump()), name=API_APP_NAME, route_prefix="/", logging_config=quiet)
    if direct:
        result["proxy_url"] = _proxy_url(url_host)
    deadline = time.monotonic() + C.API_READY_TIMEOUT_S
    while (_api_health(url) or {}).get("version") != settings.version:
        if time.monotonic() > deadline:
            raise ApiDeployError(
                f"the API was deployed but does not answer at {url} after {C.API_READY_TIMEOUT_S:.0f}s; "
                "a Ray Serve instance started earlier with other options (port, direct ingress) may be "
                "running on this cluster: `raycluster down` and `up` again, or `serve shutdown` first")
        time.sleep(0.2)
    return result


def _app_deployed() -> bool:
    """Whether this cluster's Serve (if it runs) has the API application (without starting Serve)."""
    try:
        return API_APP_NAME in serve.status().applications
    except Exception:  # Serve not reachable: then there is nothing deployed we could clash with
        return False


def _proxy_url(url_host: str) -> str | None:
    """Where Serve's own proxy listens (it serves the same app, one hop longer); None if unknown."""
    try:
        from ray.serve.context import _get_global_client

        return f"http://{url_host}:{int(_get_global_client().http_config.port)}"
    except Exception:  # a private Serve API: only informational (scripts/bench_api.py compares both)
        return None


def code_digest() -> str:
    """sha256 over every module of the API package (names and contents, in name order)."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _version(settings: ApiSettings, replicas: int, serve_env: dict) -> str:
    blob = json.dumps([settings.model_dump(exclude={"version"}), replicas, serve_env, code_digest()], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _api_health(url: str) -> dict | None:
    """Our API's ``GET /healthz`` answer at ``url``; None when nothing (or something else) answers."""
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as resp:
            body = json.loads(resp.read())
            return body if resp.status == 200 and isinstance(body, dict) and body.get("status") == "ok" else None
    except (OSError, ValueError):  # URLError is an OSError
        return None


def undeploy_api() -> None:
    """Delete the API application (Serve itself keeps running until ``serve.shutdown()``)."""
    with contextlib.suppress(Exception):
        serve.delete(API_APP_NAME)
