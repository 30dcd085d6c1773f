"""Bringing a cluster up: the one path for `raycluster up --local` and `ray up ray-cluster.yaml`.

Owns: ``bring_up`` — find the local cluster recorded in the state dir running, else start the one
asked for; connect; start (or find) the runtime actors; deploy the HTTP API — and ``ray_head_up``,
the head start command of ``ray up`` (its cluster from the YAML's provider section). It sits above
``control/``, ``api/`` and ``provision/`` and wires them: none of those imports another to start up.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable


def bring_up(state_dir: Path, make_cluster: Callable[[], Any], *, storage_uri: str | None,
             api_port: int | None) -> dict[str, Any]:
    """What it found or started: address, dashboard URL, state dir, started (bool), up_s, and the
    API's URL and token path when ``api_port`` is given."""
    from raycluster.client.ray_client import connect
    from raycluster.control.actors import start_runtime
    from raycluster.provision.local.cluster import LocalCluster

    lc = LocalCluster.load(state_dir)
    started, t0 = False, time.monotonic()
    if lc is None or not lc.is_running():
        lc = make_cluster()
        lc.start()
        started = True
    ray_token = lc.auth_token_path if lc.auth_mode == "token" else None
    info: dict[str, Any] = {"address": lc.address, "dashboard_url": getattr(lc, "dashboard_url", None),
                            "ray_auth_token_path": str(ray_token) if ray_token else None,
                            "state_dir": str(state_dir), "started": started,
                            "up_s": round(time.monotonic() - t0, 1)}
    connect(lc.address, state_dir)
    start_runtime(state_dir, storage_uri=storage_uri)
    from raycluster.api.record import remove_record, write_record

    if api_port:
        from raycluster.api.deploy import deploy_api

        api = deploy_api(state_dir, port=api_port)
        info.update(api_url=api["url"], api_token_path=str(api["token_path"]) if api["token_path"] else None,
                    api_direct_ingress=api["direct_ingress"])
        write_record(state_dir, api["url"], api["direct_ingress"])  # the CLI talks HTTP from now on
    else:
        remove_record(state_dir)
    return info


def ray_head_up(config_path: str, api_port: int | None) -> dict[str, Any]:
    """The head start command of ``ray up``: the elastic local cluster of the YAML (found if already
    up: ``ray up`` twice changes nothing), the runtime actors and the HTTP API."""
    import yaml

    from raycluster.provision.local.cluster import LocalCluster
    from raycluster.provision.rayup import elastic_config

    config = yaml.safe_load(Path(config_path).expanduser().read_text())
    elastic, state_dir, head_cpus = elastic_config(config, os.environ.get("RAY_CLOUD_INSTANCE_ID"))
    return bring_up(state_dir, lambda: LocalCluster(state_dir, num_workers=0, head_cpus=head_cpus, elastic=elastic),
                    storage_uri=config["provider"].get("storage_uri"), api_port=api_port)
