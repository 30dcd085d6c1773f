"""The markets a provider config names, in one place: their settings checked (without side effects,
for ``ray up``'s validation) or the markets built (for the provider), where the provider keeps its
state, and what the CLI and the API ask of an elastic cluster (its rentals, a preemption on command).

Owns: ``MARKET_KEYS`` (the settings each market takes), ``check_markets``, ``make_markets``,
``provider_state_dir``, ``recorded_provider``, ``rentals``, ``preempt``. No Ray imports.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from raycluster.errors import NotElastic
from raycluster.provision.market.base import Market, MarketConfigError

MARKET_KEYS = {
    "local": {"gpu_types", "preemption_rate_per_hour", "preemption_notice_s"},
    "ssh": {"hosts", "connect_timeout_s", "stop_grace_s"},
    "http": {"url", "api_key_env", "api_key_file", "gpu_names", "max_usd_per_hour", "image", "ray_bin", "retries",
             "backoff_s", "timeout_s", "node_ip", "work_dir"},
}


def _did_you_mean(name: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f", did you mean {close[0]!r}?" if close else ""


def _settings(cfg: dict) -> dict[str, dict]:
    """``provider.markets``, each market known and taking only its own keys (errors name the key)."""
    raw = cfg.get("markets") or {"local": {}}
    if not isinstance(raw, dict):
        raise MarketConfigError("provider.markets must be a mapping of market name -> settings",
                                field="provider.markets")
    out = {}
    for name, settings in raw.items():
        where = f"provider.markets.{name}"
        if name not in MARKET_KEYS:
            raise MarketConfigError(f"{where}: unknown market {name!r}{_did_you_mean(name, MARKET_KEYS)} (known: "
                                    f"{', '.join(MARKET_KEYS)})", field=where)
        settings = settings or {}
        if not isinstance(settings, dict):
            raise MarketConfigError(f"{where} must be a mapping", field=where)
        unknown = set(settings) - MARKET_KEYS[name]
        if unknown:
            first = sorted(unknown)[0]
            raise MarketConfigError(f"{where}: unknown key(s) {sorted(unknown)}{_did_you_mean(first, MARKET_KEYS[name])} "
                                    f"(known: {sorted(MARKET_KEYS[name])})", field=f"{where}.{first}")
        out[name] = settings
    return out


def check_markets(cfg: dict) -> dict[str, set[str] | None]:
    """Every market's settings checked, nothing made: market -> the GPU types it sells (None: any)."""
    from raycluster.provision.market.http import HttpMarket
    from raycluster.provision.market.local import check_settings
    from raycluster.provision.market.ssh import parse_hosts

    sold: dict[str, set[str] | None] = {}
    for name, settings in _settings(cfg).items():
        where = f"provider.markets.{name}"
        if name == "local":
            sold[name] = set(check_settings(settings, where))
        elif name == "ssh":
            sold[name] = {h["gpu_type"] for h in parse_hosts(settings.get("hosts"), f"{where}.hosts").values()}
        else:
            HttpMarket(**settings)  # checks url, the api key's source, the price cap (no call is made)
            sold[name] = None
    return sold


def make_markets(cfg: dict, state_dir: Path) -> dict[str, Market]:
    """The markets named under ``provider.markets``, built (their books under ``state_dir``)."""
    from raycluster.provision.market.local import LocalMarket

    auth = {"auth_mode": cfg.get("auth_mode", "disabled"), "auth_token_path": cfg.get("auth_token_path")}
    out: dict[str, Market] = {}
    for name, settings in _settings(cfg).items():
        if name == "local":
            out[name] = LocalMarket(state_dir / "market-local.db", state_dir / "market-local",
                                    node_temp_dir=cfg.get("node_temp_dir"), **auth, **settings)
        elif name == "ssh":
            from raycluster.provision.market.ssh import SshMarket

            out[name] = SshMarket(state_dir / "market-ssh.db", **auth, **settings)
        else:
            from raycluster.provision.market.http import HttpMarket

            out[name] = HttpMarket(**auth, **settings)
    return out


def provider_state_dir(cfg: dict[str, Any]) -> Path:
    """Where the provider keeps its rentals and markets' books: ``provider.state_dir``, else the
    elastic local cluster's own place under ``provider.raycluster_state_dir``."""
    if cfg.get("state_dir"):
        return Path(cfg["state_dir"]).expanduser()
    if cfg.get("raycluster_state_dir"):
        from raycluster.provision.local.record import cluster_dir

        return cluster_dir(Path(cfg["raycluster_state_dir"]).expanduser()) / "provider"
    raise MarketConfigError("provider.raycluster_state_dir (or provider.state_dir) is required",
                            field="provider.raycluster_state_dir")


def recorded_provider(state_dir: Path | str) -> dict[str, Any]:
    """The provider config of the elastic cluster under ``state_dir`` (NotElastic if there is none)."""
    from raycluster.provision.autoscaling import recorded_config

    config = recorded_config(state_dir)
    if not config:
        raise NotElastic(f"no elastic cluster under {state_dir}: it rents no nodes (start one with `ray up "
                         "ray-cluster.yaml` or `raycluster up --local --elastic configs/elastic.yaml`)")
    return config["provider"]


def rentals(state_dir: Path | str, include_released: bool = False, now: float | None = None) -> list[dict]:
    """The rented nodes (and the head) with market, kind, price, state and cost so far."""
    from raycluster.store.rentals import RentalStore

    store = RentalStore(provider_state_dir(recorded_provider(state_dir)) / "rentals.db")
    try:
        now = time.time() if now is None else now
        return [r.to_dict(now) for r in store.list(None) if include_released or r.state.value != "released"]
    finally:
        store.close()


def released_on_purpose(state_dir: Path | str, rental_ids: list[str]) -> dict[str, str]:
    """rental id -> why, for those of ``rental_ids`` given back on purpose (idle, shed, down,
    preempted by their market): not dead nodes. A node lost (its market stopped running it
    unasked, it never joined) is left out: that is a fault."""
    from raycluster.store.rentals import RentalStore

    store = RentalStore(provider_state_dir(recorded_provider(state_dir)) / "rentals.db")
    try:
        out = {}
        for rental_id in rental_ids:
            r = store.get(rental_id)
            if r is not None and r.state.value in ("releasing", "released") and not (r.reason or "").startswith(
                    ("lost", "never joined", "rolled back")):
                out[rental_id] = f"released: {r.reason or 'given back'}"
        return out
    finally:
        store.close()


def set_price(state_dir: Path | str, gpu_type: str, kind: str, usd_per_hour: float | None) -> dict:
    """The local market moves a price (None: back to the configured one)."""
    cfg = recorded_provider(state_dir)
    markets = make_markets(cfg, provider_state_dir(cfg))
    if "local" not in markets:
        raise NotElastic("only the local market moves prices on command; this cluster has none")
    return markets["local"].set_price(gpu_type, kind, usd_per_hour)


def preempt(state_dir: Path | str, node: str, notice_s: float | None = None) -> dict:
    """The local market takes a spot node back: a notice now, the node stopped at the deadline."""
    cfg = recorded_provider(state_dir)
    markets = make_markets(cfg, provider_state_dir(cfg))
    if "local" not in markets:
        raise NotElastic("only the local market preempts on command; this cluster has none")
    notice = markets["local"].preempt(node, notice_s=notice_s)
    return {"node": notice.rental_id, "deadline": notice.deadline, "reason": notice.reason}
