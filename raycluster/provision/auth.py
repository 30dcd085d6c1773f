"""Ray token authentication for drivers of the clusters we start.

Measured (Ray 2.60): ``ray start --head`` with ``RAY_AUTH_MODE`` unset enables token auth only if
a token already exists (``~/.ray/auth_token``, which any plain ``ray.init()`` creates as a side
effect), so whether a cluster gets auth would depend on what ran before; and a driver connecting
with an explicit address never auto-enables token auth and fails with "Failed to connect to Ray
cluster" against a token cluster. Ray also rewrites ``--node-ip-address=127.0.0.1`` to the host's
routable IP and the GCS/raylets listen on all interfaces, so the cluster is reachable from the
network.

Decision: the auth mode is explicit, never inherited. By default (``LOCAL_AUTH_MODE="token"``)
every cluster gets a fresh random token (0600); every node is started with ``RAY_AUTH_MODE=token``
and ``RAY_AUTH_TOKEN_PATH=<that file>``, and the user's ``~/.ray/auth_token`` is neither read nor
written. Drivers opt in before connecting: ``apply_driver_auth(state_dir)`` sets those variables in
``os.environ`` and refreshes Ray's cached config (``ray.init`` alone does not re-read them once
``ray`` is imported); ``driver_env(state_dir)`` gives them for subprocesses. The dashboard HTTP API
needs ``Authorization: Bearer <token>`` in token mode.

Owns: the driver side of that (the nodes' side is ``raystart.node_env``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

from raycluster.provision.local.record import read_record


def local_cluster_address(state_dir: Path | str) -> str | None:
    """The GCS address of the local cluster recorded under ``state_dir`` (None if none)."""
    try:
        return (read_record(state_dir) or {}).get("address")
    except Exception:  # an unreadable record: no address
        return None


def driver_env_of(record: Mapping[str, Any]) -> dict[str, str]:
    mode = record.get("auth_mode") or "disabled"
    env = {"RAY_AUTH_MODE": mode}
    if mode == "token" and record.get("auth_token_path"):
        env["RAY_AUTH_TOKEN_PATH"] = str(record["auth_token_path"])
    return env


def driver_env(state_dir: Path | str) -> dict[str, str]:
    """Environment a driver subprocess needs to connect to the recorded local cluster ({} if none)."""
    record = read_record(state_dir)
    return driver_env_of(record) if record else {}


def apply_driver_auth(state_dir: Path | str) -> bool:
    """Make THIS process able to ``ray.init(address=...)`` the recorded local cluster; call it
    before ``ray.init`` (a process already connected is left alone). False when there is no record."""
    record = read_record(state_dir)
    if not record:
        return False
    apply_env(driver_env_of(record))
    return True


def apply_env(env: Mapping[str, str]) -> None:
    import os

    os.environ.update(env)
    if env.get("RAY_AUTH_MODE") == "token":
        os.environ.pop("RAY_AUTH_TOKEN", None)
    else:
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    if "ray" not in sys.modules:
        return  # ray reads the environment when it is imported
    import ray

    if ray.is_initialized():
        return
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except Exception:  # private API moved: ray.init in a fresh process still works
        pass
