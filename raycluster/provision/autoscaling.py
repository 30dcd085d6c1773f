"""The Ray autoscaling config of an elastic cluster: Ray's autoscaler (v2) driving our
``MarketNodeProvider``.

Owns: ``ElasticConfig`` (node types onto markets, min/max workers, idle timeout, the markets'
settings), ``autoscaling_config`` (the full Ray cluster config dict, with every key Ray's config
reader needs — see ../shared/notes/ray-autoscaler-provider.md), ``head_env`` (what the head must be
started with so that v2 runs and matches the head to the provider's head node) and
``release_all`` (every rental given back, for ``down``). Used by ``LocalCluster(elastic=...)`` to
start a head with ``--autoscaling-config``.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raycluster.provision.local.record import read_json
from raycluster.provision.market.base import KINDS, MarketConfigError
from raycluster.util.files import atomic_write_json

log = logging.getLogger(__name__)

PROVIDER_MODULE = "raycluster.provision.node_provider.MarketNodeProvider"
HEAD_TYPE = "head"

# every key Ray's config reader expects of a cluster config (v1 crashed on a missing file_mounts)
_RAY_BOILERPLATE = {
    "file_mounts": {}, "cluster_synced_files": [], "rsync_exclude": [], "rsync_filter": [],
    "initialization_commands": [], "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
    "head_start_ray_commands": [], "worker_start_ray_commands": [], "docker": {}, "auth": {"ssh_user": "ray"},
    "upscaling_speed": 1.0,
}


@dataclass
class ElasticConfig:
    """``node_types``: name -> {market, kind, gpu_type, min_workers, max_workers, resources}."""
    node_types: dict[str, dict[str, Any]]
    markets: dict[str, Any] = field(default_factory=lambda: {"local": {}})
    max_workers: int = 8
    idle_timeout_s: float = 60.0
    update_interval_s: float = 5.0
    join_timeout_s: float = 300.0
    # set by `ray up` (provision/rayup.py): the provider's state dir and the head's provider id it chose
    provider_state_dir: str | None = None
    head_node_id: str | None = None

    def __post_init__(self):
        if not isinstance(self.node_types, dict) or not self.node_types:
            raise MarketConfigError("available_node_types must name at least one worker type",
                                    field="available_node_types")
        for name, t in self.node_types.items():
            where = f"available_node_types.{name}"
            if name == HEAD_TYPE:
                raise MarketConfigError(f"{where}: {HEAD_TYPE!r} is the head's type", field=where)
            if t.get("kind", "on_demand") not in KINDS:
                raise MarketConfigError(f"{where}.kind must be one of {KINDS}", field=f"{where}.kind")
            if t.get("market", "local") not in self.markets:
                raise MarketConfigError(f"{where}.market {t.get('market')!r} is not under provider.markets",
                                        field=f"{where}.market")
            for key in ("min_workers", "max_workers"):
                v = t.get(key, 0)
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise MarketConfigError(f"{where}.{key} must be an integer >= 0", field=f"{where}.{key}")
        for key in ("idle_timeout_s", "update_interval_s", "join_timeout_s"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise MarketConfigError(f"{key} must be a number > 0, not {v!r}", field=key)


def head_node_id(elastic: ElasticConfig, cluster_id: str) -> str:
    return elastic.head_node_id or f"head-{cluster_id}"


def autoscaling_config(elastic: ElasticConfig, *, cluster_id: str, state_dir: Path, head_address: str,
                       dashboard_url: str, auth_mode: str, auth_token_path: str | None,
                       head_cpus: int, node_temp_dir: str | None = None) -> dict[str, Any]:
    """The Ray cluster config dict for ``ray start --head --autoscaling-config``."""
    types: dict[str, Any] = {
        HEAD_TYPE: {"resources": {"CPU": head_cpus, "GPU": 0}, "node_config": {}, "min_workers": 0, "max_workers": 0},
    }
    for name, t in elastic.node_types.items():
        types[name] = {
            "resources": dict(t.get("resources") or {"CPU": 2, "GPU": 1}),
            "node_config": {"market": t.get("market", "local"), "kind": t.get("kind", "on_demand"),
                            **({"gpu_type": t["gpu_type"]} if t.get("gpu_type") else {})},
            "min_workers": int(t.get("min_workers", 0)), "max_workers": int(t.get("max_workers", 0)),
        }
    return {
        **copy.deepcopy(_RAY_BOILERPLATE),
        "cluster_name": f"rc-{cluster_id}",
        "max_workers": elastic.max_workers,
        "idle_timeout_minutes": elastic.idle_timeout_s / 60.0,
        "provider": {
            "type": "external", "module": PROVIDER_MODULE, "state_dir": str(state_dir),
            # the provider starts Ray on its nodes itself: no SSH updater, no launch-config check
            "disable_node_updaters": True, "disable_launch_config_check": True,
            "head_address": head_address, "dashboard_url": dashboard_url, "auth_mode": auth_mode,
            "auth_token_path": auth_token_path, "head_node_id": head_node_id(elastic, cluster_id),
            "head_node_type": HEAD_TYPE, "join_timeout_s": elastic.join_timeout_s, "node_temp_dir": node_temp_dir,
            "markets": copy.deepcopy(elastic.markets),
        },
        "available_node_types": types,
        "head_node_type": HEAD_TYPE,
    }


def head_env(elastic: ElasticConfig, cluster_id: str) -> dict[str, str]:
    """The head's environment: autoscaler v2, and the head known as the provider's head node."""
    return {"RAY_enable_autoscaler_v2": "1", "RAY_CLOUD_INSTANCE_ID": head_node_id(elastic, cluster_id),
            "RAY_NODE_TYPE_NAME": HEAD_TYPE, "AUTOSCALER_UPDATE_INTERVAL_S": f"{elastic.update_interval_s:g}"}


def write_config(elastic: ElasticConfig, record: dict[str, Any], cluster_dir: Path, head_cpus: int) -> Path:
    """Write the autoscaling config of a local cluster (its record: id, address, dashboard, auth)
    beside its record; its path (also kept in the record)."""
    config = autoscaling_config(
        elastic, cluster_id=record["cluster_id"],
        state_dir=Path(elastic.provider_state_dir) if elastic.provider_state_dir else cluster_dir / "provider",
        head_address=record["address"], dashboard_url=record["dashboard_url"], auth_mode=record["auth_mode"],
        auth_token_path=record["auth_token_path"], head_cpus=head_cpus, node_temp_dir=record["temp_dir"])
    path = cluster_dir / "autoscaling.json"  # (JSON is YAML)
    atomic_write_json(path, config)
    record["autoscaling_config_path"] = str(path)
    return path


def release_all(config: dict[str, Any], reason: str = "cluster down") -> list[str]:
    """Give back every rental of the cluster whose autoscaling config this is."""
    from raycluster.provision.node_provider import MarketNodeProvider

    provider = MarketNodeProvider(config["provider"], config["cluster_name"])
    return provider.release_all(reason)


def release_recorded(record: dict[str, Any]) -> list[str]:
    """``release_all`` for a local cluster's record (nothing if it is not elastic)."""
    path = record.get("autoscaling_config_path")
    config = read_json(Path(path)) if path else None
    if not config:
        return []
    released = release_all(config)
    if released:
        log.info("released %d rented node(s): %s", len(released), released)
    return released


def recorded_config(state_dir: Path | str) -> dict[str, Any] | None:
    """The autoscaling config of the elastic local cluster under ``state_dir`` (None: not elastic)."""
    from raycluster.provision.local.record import cluster_dir

    return read_json(cluster_dir(state_dir) / "autoscaling.json")


def elastic_nodes(config: dict[str, Any] | None) -> dict[str, dict[str, float]]:
    """The worker nodes the autoscaler may still add at most, as name -> resources (each type's
    max_workers, the cluster's max_workers in all): what a gang may be placed on later."""
    if not config:
        return {}
    out: dict[str, dict[str, float]] = {}
    room = int(config.get("max_workers", 0))
    for name, t in (config.get("available_node_types") or {}).items():
        if name == config.get("head_node_type"):
            continue
        for i in range(min(int(t.get("max_workers", 0)), room)):
            out[f"{name}#{i}"] = {k: float(v) for k, v in (t.get("resources") or {}).items()}
        room -= min(int(t.get("max_workers", 0)), room)
    return out
