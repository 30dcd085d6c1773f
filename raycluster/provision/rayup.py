"""``ray up ray-cluster.yaml`` / ``ray down ray-cluster.yaml`` with our node provider.

Owns: ``validate`` (our keys of a Ray cluster config, checked by the provider's ``bootstrap_config``
before ``ray up``/``ray down`` make anything: an unknown market, a missing key file, a price that is
not a number → the error names the key), ``elastic_config`` (the Ray config → the elastic local
cluster it describes). What the config's head start command (``python -m raycluster.cli ray-head
--config ~/ray_bootstrap_config.yaml``) does on the head — start (or find) that cluster with Ray's
autoscaler over our provider, the runtime actors and the HTTP API — is ``cli/bringup.py``'s (the one
bring-up path, shared with ``raycluster up``). The state dir: ``provider.raycluster_state_dir`` when the YAML sets it,
else RAYCLUSTER_STATE_DIR / ~/.raycluster as for every raycluster command (``resolve`` writes it into
the config Ray caches and copies to the head). The head is the machine ``ray up`` runs on; ``ray down``'s ``ray stop`` becomes
``raycluster down`` (``provision/raycmd.py``), which gives back every rental and stops exactly our
processes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from raycluster.provision.autoscaling import ElasticConfig
from raycluster.provision.market.base import KINDS, MarketConfigError
from raycluster.errors import InvalidStorage
from raycluster.provision.market.registry import check_markets, provider_state_dir
from raycluster.store import storage


def state_dir_of(provider: dict[str, Any]) -> Path:
    """The raycluster state dir of a cluster config: ``provider.raycluster_state_dir`` when the YAML
    sets it, else the one every raycluster command uses (RAYCLUSTER_STATE_DIR, else ~/.raycluster)."""
    from raycluster import constants as C

    given = provider.get("raycluster_state_dir")
    return Path(given).expanduser().resolve() if given else C.state_dir()


def resolve(config: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """``ray up``/``ray down``'s config (the provider's ``bootstrap_config``): checked, with the state
    dir it uses written in (so the head, the autoscaler and ``ray down`` agree on it); and a line to
    show when the YAML's state dir is not RAYCLUSTER_STATE_DIR's (else None)."""
    provider = dict(config.get("provider") or {})
    env = os.environ.get("RAYCLUSTER_STATE_DIR")
    note = None
    if provider.get("raycluster_state_dir") and env and state_dir_of(provider) != state_dir_of(
            {"raycluster_state_dir": env}):
        note = (f"raycluster: using the config's provider.raycluster_state_dir {state_dir_of(provider)}, not "
                f"RAYCLUSTER_STATE_DIR={env} (remove the key from the YAML to follow the environment)")
    provider["raycluster_state_dir"] = str(state_dir_of(provider))
    config = {**config, "provider": provider}
    validate(config)
    return config, note


def validate(config: dict[str, Any]) -> None:
    provider = config.get("provider") or {}
    sold = check_markets(provider)
    cap = provider.get("max_hourly_budget_usd")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or cap < 0):
        raise MarketConfigError(f"provider.max_hourly_budget_usd must be a number >= 0 (USD per hour), not {cap!r}",
                                field="provider.max_hourly_budget_usd")
    from raycluster.provision.autoscaling import budget_config

    budget_config(provider.get("budget"), idle_timeout_s=float(config.get("idle_timeout_minutes", 1)) * 60,
                  max_workers=int(config.get("max_workers", 8)), max_hourly_budget_usd=cap, where="provider.budget")
    if provider.get("storage_uri") is not None:
        try:
            storage.check_uri(provider["storage_uri"], "provider.storage_uri")
        except InvalidStorage as exc:
            raise MarketConfigError(exc.message, field="provider.storage_uri") from None
    head = config.get("head_node_type")
    types = config.get("available_node_types") or {}
    if head not in types:
        raise MarketConfigError(f"head_node_type {head!r} is not under available_node_types", field="head_node_type")
    for name, t in types.items():
        if name == head:
            continue
        where = f"available_node_types.{name}"
        nc = t.get("node_config") or {}
        market = nc.get("market", "local")
        if market not in sold:
            raise MarketConfigError(f"{where}.node_config.market {market!r} is not under provider.markets "
                                    f"(have {sorted(sold)})", field=f"{where}.node_config.market")
        if nc.get("kind", "on_demand") not in KINDS:
            raise MarketConfigError(f"{where}.node_config.kind must be one of {KINDS}", field=f"{where}.node_config.kind")
        gpu = nc.get("gpu_type")
        if gpu is not None and sold[market] is not None and gpu not in sold[market]:
            raise MarketConfigError(f"{where}.node_config.gpu_type {gpu!r}: market {market} sells "
                                    f"{sorted(sold[market])}", field=f"{where}.node_config.gpu_type")
        for key, v in (t.get("resources") or {}).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise MarketConfigError(f"{where}.resources.{key} must be a number >= 0, not {v!r}",
                                        field=f"{where}.resources.{key}")


def elastic_config(config: dict[str, Any], head_node_id: str | None) -> tuple[ElasticConfig, Path, int]:
    """The elastic local cluster a Ray cluster config describes: (its config, raycluster state dir,
    head CPUs)."""
    validate(config)
    provider = config["provider"]
    head = config["head_node_type"]
    node_types = {}
    for name, t in config["available_node_types"].items():
        if name == head:
            continue
        nc = t.get("node_config") or {}
        node_types[name] = {"market": nc.get("market", "local"), "kind": nc.get("kind", "on_demand"),
                            **({"gpu_type": nc["gpu_type"]} if nc.get("gpu_type") else {}),
                            "min_workers": int(t.get("min_workers", 0)), "max_workers": int(t.get("max_workers", 0)),
                            "resources": dict(t.get("resources") or {})}
    elastic = ElasticConfig(
        node_types=node_types, markets=provider.get("markets") or {"local": {}},
        max_workers=int(config.get("max_workers", 8)), idle_timeout_s=float(config.get("idle_timeout_minutes", 1)) * 60,
        update_interval_s=float(provider.get("update_interval_s", 5)), join_timeout_s=float(provider.get("join_timeout_s", 300)),
        provider_state_dir=str(provider_state_dir(provider)), head_node_id=head_node_id,
        max_hourly_budget_usd=provider.get("max_hourly_budget_usd"), budget=dict(provider.get("budget") or {}))
    state_dir = state_dir_of(provider)
    head_cpus = int((config["available_node_types"][head].get("resources") or {}).get("CPU", 1))
    return elastic, state_dir, head_cpus
