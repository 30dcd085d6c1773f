"""The Ray autoscaling config of an elastic cluster: Ray's autoscaler (v2) driving our
``MarketNodeProvider``.

Owns: ``ElasticConfig`` (node types onto markets, min/max workers, idle timeout, the markets'
settings), ``autoscaling_config`` (the full Ray cluster config dict, with every key Ray's config
reader needs — see ../shared/notes/ray-autoscaler-provider.md), ``head_env`` (what the head must be
started with so that v2 runs and matches the head to the provider's head node) and
``recorded_config`` (the config an elastic local cluster was started with). Used by
``LocalCluster(elastic=...)`` to start a head with ``--autoscaling-config``. Giving every rental
back for ``down`` is the provider's (``node_provider.release_recorded``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raycluster.provision.local.record import read_json
from raycluster.policy.budget import KIND_RESOURCE, KIND_RESOURCE_UNITS
from raycluster.provision.market.base import KINDS, MarketConfigError
from raycluster.util.files import atomic_write_json


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
    # the hard cap on the committed spend rate, enforced by the provider on every rent (None: none)
    max_hourly_budget_usd: float | None = None
    # the BudgetAutoscaler's knobs (policy.budget.BudgetConfig: min_workers, max_workers,
    # scale_up_util, scale_down_util, cooldown_s, spot_fallback_preemptions); idle timeout and cap above
    budget: dict[str, Any] = field(default_factory=dict)
    # set by `ray up` (provision/rayup.py): the provider's state dir and the head's provider id it chose
    provider_state_dir: str | None = None
    head_node_id: str | None = None

    def budget_config(self):
        return budget_config(self.budget, idle_timeout_s=self.idle_timeout_s, max_workers=self.max_workers,
                             max_hourly_budget_usd=self.max_hourly_budget_usd)

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
        cap = self.max_hourly_budget_usd
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or cap < 0):
            raise MarketConfigError(f"max_hourly_budget_usd must be a number >= 0 (USD per hour), not {cap!r}",
                                    field="max_hourly_budget_usd")
        self.budget_config()  # errors name the key
        for key in ("idle_timeout_s", "update_interval_s", "join_timeout_s"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise MarketConfigError(f"{key} must be a number > 0, not {v!r}", field=key)


BUDGET_KEYS = ("min_workers", "max_workers", "scale_up_util", "scale_down_util", "cooldown_s", "spot_fallback_preemptions",
               "spot_return_move_s", "max_moves_per_hour", "busy_idle_nodes_kept", "idle_timeout_by_price")


def budget_config(settings: dict[str, Any] | None, *, idle_timeout_s: float, max_workers: int,
                  max_hourly_budget_usd: float | None, where: str = "budget"):
    """``policy.budget.BudgetConfig`` from a config's ``budget`` mapping; MarketConfigError naming the key."""
    from raycluster.policy.budget import BudgetConfig, BudgetConfigError

    settings = dict(settings or {})
    if not isinstance(settings, dict):
        raise MarketConfigError(f"{where} must be a mapping", field=where)
    unknown = sorted(set(settings) - set(BUDGET_KEYS))
    if unknown:
        raise MarketConfigError(f"{where}: unknown key(s) {unknown} (known: {', '.join(BUDGET_KEYS)})",
                                field=f"{where}.{unknown[0]}")
    settings.setdefault("max_workers", max_workers)
    try:
        return BudgetConfig(**settings, idle_timeout_s=idle_timeout_s, max_hourly_budget_usd=max_hourly_budget_usd)
    except BudgetConfigError as exc:
        raise MarketConfigError(f"{where}.{exc.field}: {exc}", field=f"{where}.{exc.field}") from None


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
        kind = t.get("kind", "on_demand")
        types[name] = {  # (each with its kind's marker: where spot: only/never gangs may go)
            "resources": {**(t.get("resources") or {"CPU": 2, "GPU": 1}), KIND_RESOURCE[kind]: KIND_RESOURCE_UNITS},
            "node_config": {"market": t.get("market", "local"), "kind": kind,
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
            **({"max_hourly_budget_usd": float(elastic.max_hourly_budget_usd)}
               if elastic.max_hourly_budget_usd is not None else {}),
            "budget": dict(elastic.budget), "idle_timeout_s": elastic.idle_timeout_s,
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


def recorded_config(state_dir: Path | str) -> dict[str, Any] | None:
    """The autoscaling config of the elastic local cluster under ``state_dir`` (None: not elastic)."""
    from raycluster.provision.local.record import cluster_dir

    return read_json(cluster_dir(state_dir) / "autoscaling.json")


def elastic_nodes(config: dict[str, Any] | None, spot: str = "auto") -> dict[str, dict[str, float]]:
    """The worker nodes the autoscaler may still add at most for a gang with this ``spot`` choice
    (``never``: on-demand types only, ``only``: spot types only), as name -> resources (each type's
    max_workers, the cluster's max_workers in all): what a gang may be placed on later."""
    if not config:
        return {}
    out: dict[str, dict[str, float]] = {}
    room = int(config.get("max_workers", 0))
    kinds = {"never": ("on_demand",), "only": ("spot",)}.get(spot)
    for name, t in (config.get("available_node_types") or {}).items():
        if name == config.get("head_node_type"):
            continue
        if kinds is not None and (t.get("node_config") or {}).get("kind", "on_demand") not in kinds:
            continue
        for i in range(min(int(t.get("max_workers", 0)), room)):
            out[f"{name}#{i}"] = {k: float(v) for k, v in (t.get("resources") or {}).items()}
        room -= min(int(t.get("max_workers", 0)), room)
    return out


def budget_view(config: dict[str, Any] | None) -> tuple[float | None, list]:
    """(the hard cap in USD/hour or None, the worker node types as ``policy.budget.NodeType`` with
    their configured prices) of an elastic cluster's autoscaling config. The types are [] when a
    type's price is not known before renting (SSH/HTTP markets price per offer): a budget check
    against them could only guess."""
    from raycluster.policy.budget import NodeType
    from raycluster.provision.market.local import DEFAULT_GPU_TYPES, parse_gpu_types

    if not config:
        return None, []
    provider = config.get("provider") or {}
    cap = provider.get("max_hourly_budget_usd")
    cap = None if cap is None else float(cap)
    markets = provider.get("markets") or {}
    out = []
    for name, t in (config.get("available_node_types") or {}).items():
        if name == config.get("head_node_type"):
            continue
        nc = t.get("node_config") or {}
        if nc.get("market", "local") != "local":
            return cap, []
        local = markets.get("local") or {}
        gpu_types = parse_gpu_types(local["gpu_types"]) if local.get("gpu_types") else DEFAULT_GPU_TYPES
        g = gpu_types.get(nc.get("gpu_type") or next(iter(gpu_types)))
        kind = nc.get("kind", "on_demand")
        price = None if g is None else g.get("spot_usd_per_hour" if kind == "spot" else "on_demand_usd_per_hour")
        if price is None:
            return cap, []
        res = t.get("resources") or {}
        out.append(NodeType(name, kind, float(price), gpus=int(res.get("GPU", g.get("gpus", 1))),
                            cpus=float(res.get("CPU", g.get("cpus", 2))), available=int(t.get("max_workers", 0)),
                            max_workers=int(t.get("max_workers", 0))))
    return cap, out
