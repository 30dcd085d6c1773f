"""A Ray node provider that rents worker nodes from GPU markets (``provider: {type: external,
module: raycluster.provision.node_provider.MarketNodeProvider}``).

Owns: ``MarketNodeProvider`` — maps the node types of a Ray cluster config onto markets
(``node_config: {market, gpu_type, kind}``) and keeps every rental in SQLite
(``store/rentals.py``), shared by every provider instance (the ``ray up`` process and the
autoscaler's monitor build their own). Ray's autoscaler (v1 or v2 through its adapter) does the
mechanics; this class only rents, lists, tags and releases. Each node is started with
``RAY_CLOUD_INSTANCE_ID=<rental id>`` and ``RAY_NODE_TYPE_NAME=<node type>`` (how v2 matches Ray
nodes to provider nodes) and carries its market, kind and price as tags and Ray node labels
(``RAY_NODE_MARKET_TYPE`` becomes Ray's ``ray.io/market-type``). The head is listed with its tags
(v2 ignores a provider that does not list it).

``create_node`` raises on refusal (capacity, market error) rather than make fewer nodes silently.
Every call is a rent of its own: Ray's autoscaler v2 launches every node type of a pass, and every
batch of one type, under one launch request id (``NodeProviderAdapter._do_launch``) and matches the
nodes back by type, so a call keyed on that id alone would hand a second type (or batch) the first
one's nodes and leave Ray's instance REQUESTED for ever. Each rental row is keyed
``<launch request>:<node type>:<call>:<i>`` and carries the launch request as a tag (what Ray reads). Every listing call (once per autoscaler tick) also
reconciles with the markets: a node the market no longer runs is marked released (so a replacement
is launched), a rented node that never joined Ray within ``join_timeout_s`` is released, a
preemption notice drains the node in Ray (reason PREEMPTION, the market's deadline), and anything
a market bills us for that is not a rental we know is released (no leaked rental).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ray.autoscaler.node_provider import NodeProvider
from ray.autoscaler.tags import (NODE_KIND_HEAD, NODE_KIND_WORKER, STATUS_UP_TO_DATE, TAG_RAY_LAUNCH_REQUEST,
                                 TAG_RAY_NODE_KIND, TAG_RAY_NODE_NAME, TAG_RAY_NODE_STATUS, TAG_RAY_USER_NODE_TYPE)

from raycluster.labels import KIND_LABEL, MARKET_LABEL, PRICE_LABEL, rented_node_name
from raycluster.provision import raystart
from raycluster.provision.market.base import (KINDS, BudgetExceeded, CapacityExhausted, Market, MarketConfigError,
                                              NodeLaunch, Offer)
from raycluster.provision.market.registry import make_markets, provider_state_dir
from raycluster.store.rentals import LIVE_STATES, RentalRecord, RentalState, RentalStore, new_rental_id

log = logging.getLogger("raycluster.provider")

TAG_MARKET, TAG_KIND, TAG_PRICE = "raycluster-market", "raycluster-kind", "raycluster-usd-per-hour"
HEAD_MARKET = "head"


def _price_tag(usd_per_hour: float) -> str:
    return f"{usd_per_hour:.4f}"


class MarketNodeProvider(NodeProvider):
    def __init__(self, provider_config: dict[str, Any], cluster_name: str,
                 markets: dict[str, Market] | None = None) -> None:
        """``markets``: given by tests (a fake at the boundary); Ray builds them from the config."""
        super().__init__(provider_config, cluster_name)
        cfg = provider_config
        self.state_dir = provider_state_dir(cfg)
        self.raycluster_state_dir = cfg.get("raycluster_state_dir")
        self.head_address = str(cfg["head_address"]) if cfg.get("head_address") else None
        self.dashboard_url = cfg.get("dashboard_url")
        self.auth_token_path = cfg.get("auth_token_path") if cfg.get("auth_mode") == "token" else None
        self.join_timeout_s = float(cfg.get("join_timeout_s", 300.0))
        cap = cfg.get("max_hourly_budget_usd")
        self.max_hourly_budget_usd = None if cap is None else float(cap)
        self.store = RentalStore(self.state_dir / "rentals.db")
        self.markets = markets if markets is not None else make_markets(cfg, self.state_dir)
        self._lock = threading.RLock()
        self._drained: set[str] = set()
        self._seen: dict[str, RentalRecord] = {}
        self._changes = 0  # rentals this instance changed (so a listing knows to read them again)
        head_id = cfg.get("head_node_id")
        if head_id:  # the head: listed with its tags, never billed
            head_type = cfg.get("head_node_type", "head")
            self._insert_head(head_id, {TAG_RAY_NODE_KIND: NODE_KIND_HEAD, TAG_RAY_USER_NODE_TYPE: head_type,
                                        TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE,
                                        TAG_RAY_NODE_NAME: f"ray-{cluster_name}-head"})

    def _insert_head(self, head_id: str, tags: dict[str, str]) -> RentalRecord:
        """The head as a row: listed with its tags (Ray, not a market, runs it), never billed."""
        now = time.time()
        rec, _new = self.store.insert(RentalRecord(
            id=head_id, request_id=f"head:{head_id}", market=HEAD_MARKET,
            node_type=tags.get(TAG_RAY_USER_NODE_TYPE, "head"), kind="on_demand", gpu_type="", usd_per_hour=0.0,
            state=RentalState.RUNNING, created_at=now, running_at=now, tags=dict(tags)))
        return rec

    # ---- listing --------------------------------------------------------------------------------
    def non_terminated_nodes(self, tag_filters: dict[str, str]) -> list[str]:
        with self._lock:
            rows, changed = self._sync()
            if changed:
                rows = self.store.list(LIVE_STATES)
            rows = [r for r in rows if r.state in (RentalState.REQUESTED, RentalState.RUNNING)]
            # the autoscaler asks each node's tags and state right after: answered from this read
            self._seen = {r.id: r for r in rows}
            return [r.id for r in rows if all(r.tags.get(k) == v for k, v in tag_filters.items())]

    def _get(self, node_id: str) -> RentalRecord | None:
        r = self._seen.get(node_id)
        return r if r is not None else self.store.get(node_id)

    def is_running(self, node_id: str) -> bool:
        r = self._get(node_id)
        return r is not None and r.state == RentalState.RUNNING

    def is_terminated(self, node_id: str) -> bool:
        r = self._get(node_id)
        return r is None or r.state in (RentalState.RELEASING, RentalState.RELEASED)

    def node_tags(self, node_id: str) -> dict[str, str]:
        r = self._get(node_id)
        return dict(r.tags) if r else {}

    def set_node_tags(self, node_id: str, tags: dict[str, str]) -> None:
        self.store.set_tags(node_id, tags)
        self._seen.pop(node_id, None)  # (another instance may have merged tags too: read it again)

    def internal_ip(self, node_id: str) -> str:
        return "127.0.0.1"

    def external_ip(self, node_id: str) -> str:
        return "127.0.0.1"

    # ---- the budget: the last guard -------------------------------------------------------------
    def budget_usd_per_hour(self) -> float | None:
        """The hard cap on the committed spend rate: the BudgetAutoscaler's setting when it set
        one (SQLite, shared by every provider instance), else the config's; None: no cap."""
        return self.store.cap_usd_per_hour(self.max_hourly_budget_usd)

    def reprice(self, now: float | None = None) -> list[tuple[str, float, float]]:
        """Bill every held node at what its market charges now (spot prices move): (rental, old,
        new USD/h) of each that changed, each recorded as a ``price`` event. A market that cannot
        be asked is skipped (its nodes keep their prices) and logged."""
        from raycluster.provision.market.base import current_prices

        now = time.time() if now is None else now
        changed = []
        live = [r for r in self.store.list(LIVE_STATES) if r.market != HEAD_MARKET]
        for name in sorted({r.market for r in live}):
            market = self.markets.get(name)
            if market is None:
                continue
            try:
                prices = current_prices(market)
            except Exception as exc:
                log.warning("market %s: current prices unknown (%s); its nodes keep theirs", name, exc)
                continue
            for r in live:
                price = prices.get((r.gpu_type, r.kind)) if r.market == name else None
                if price is None or abs(price - r.usd_per_hour) <= 1e-9:
                    continue
                if self.store.reprice(r.id, price, now) is not None:
                    changed.append((r.id, r.usd_per_hour, price))
                    self.store.add_event("provider", "price", f"{r.id}: {r.kind} {r.gpu_type} "
                                         f"{r.usd_per_hour:.2f} -> {price:.2f} USD/h", r.node_type, 1)
        if changed:
            log.warning("prices moved: %s", ", ".join(f"{i} {a:.2f}->{b:.2f}" for i, a, b in changed))
        return changed

    def _refuse_over_budget(self, what: str, rate: float, committed: float, cap: float, node_type: str) -> None:
        reason = (f"budget {committed:.2f}/{cap:.2f} USD/h: renting {what} at {rate:.2f} USD/h would commit "
                  f"{committed + rate:.2f}")
        self.store.add_event("provider", "blocked", reason, node_type, 1)
        log.warning("refused: %s", reason)
        raise BudgetExceeded(f"refused: {reason}", field="max_hourly_budget_usd")

    # ---- renting --------------------------------------------------------------------------------
    def _offers(self, node_config: dict[str, Any]) -> tuple[Market, list[Offer]]:
        """The market of a node type and one offer per node it can rent now, cheapest first."""
        market_name = node_config.get("market", "local")
        market = self.markets.get(market_name)
        if market is None:
            raise MarketConfigError(f"node_config.market {market_name!r} is not configured under provider.markets "
                                    f"(have {sorted(self.markets)})", field="node_config.market")
        kind = node_config.get("kind", "on_demand")
        if kind not in KINDS:
            raise MarketConfigError(f"node_config.kind must be one of {KINDS}, not {kind!r}", field="node_config.kind")
        gpu_type = node_config.get("gpu_type")
        matching = sorted((o for o in market.offers() if o.kind == kind and (gpu_type is None or o.gpu_type == gpu_type)),
                          key=lambda o: o.usd_per_hour)
        slots = [o for o in matching for _ in range(max(0, o.available))]
        if not matching:
            raise CapacityExhausted(f"market {market_name} offers no {kind} {gpu_type or 'node'}")
        return market, slots

    def create_node(self, node_config: dict[str, Any], tags: dict[str, str], count: int) -> dict[str, Any]:
        return self.create_node_with_resources_and_labels(node_config, tags, count, {}, {})

    def create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels) -> dict[str, Any]:
        if tags.get(TAG_RAY_NODE_KIND) == NODE_KIND_HEAD:
            return self._create_head(tags)
        if not self.head_address:
            raise MarketConfigError("provider.head_address is required to rent worker nodes",
                                    field="provider.head_address")
        with self._lock:
            market, slots = self._offers(node_config)
            node_type = tags.get(TAG_RAY_USER_NODE_TYPE, "worker")
            # this call's own key: unique per launch request, node type and call (see the module doc)
            request = f"{tags.get(TAG_RAY_LAUNCH_REQUEST) or '-'}:{node_type}:{new_rental_id()[5:]}"
            what = f"{node_config.get('kind', 'on_demand')} {node_config.get('gpu_type') or 'node'}"
            if count > len(slots):
                raise CapacityExhausted(f"market {market.name} has {len(slots)} {what} left, {count} asked")
            cap = self.budget_usd_per_hour()
            if cap is not None and count:  # the whole request first: never rent part of it
                rate = sum(o.usd_per_hour for o in slots[:count])
                committed = self.store.committed_usd_per_hour()
                if committed + rate > cap + 1e-9:
                    self._refuse_over_budget(f"{count} {what}", rate, committed, cap, node_type)
            out: dict[str, Any] = {}
            try:
                for i, offer in enumerate(slots[:count]):
                    out.update(self._rent_one(market, offer, f"{request}:{i}", node_type, what, tags, labels,
                                              resources, cap))
            except Exception as exc:  # Ray fails the whole call's instances: none of it stays rented
                for rental_id in out:
                    self._release(rental_id, f"rolled back: the rest of its launch failed ({exc})")
                raise
            return out

    def _rent_one(self, market: Market, offer: Offer, request_id: str, node_type: str, what: str,
                  tags: dict[str, str], labels: dict | None, resources: dict | None, cap: float | None
                  ) -> dict[str, Any]:
        rec, _new, committed = self.store.insert_within(RentalRecord(
            id=new_rental_id(), request_id=request_id, market=market.name, node_type=node_type,
            kind=offer.kind, gpu_type=offer.gpu_type, usd_per_hour=offer.usd_per_hour,
            created_at=time.time(), resources={"CPU": float(offer.cpus), "GPU": float(offer.gpus)},
            tags={**tags, TAG_RAY_NODE_KIND: tags.get(TAG_RAY_NODE_KIND, NODE_KIND_WORKER),
                  TAG_MARKET: market.name, TAG_KIND: offer.kind, TAG_PRICE: _price_tag(offer.usd_per_hour)}),
            cap)
        if rec is None:  # another process committed meanwhile: checked again in the same transaction
            self._refuse_over_budget(f"a {what}", offer.usd_per_hour, committed, cap, node_type)
        node_labels = {**{k: str(v) for k, v in (labels or {}).items()}, MARKET_LABEL: market.name,
                       KIND_LABEL: offer.kind, PRICE_LABEL: _price_tag(offer.usd_per_hour)}
        launch = NodeLaunch(rec.id, node_type, self.head_address,
                            env={"RAY_CLOUD_INSTANCE_ID": rec.id, "RAY_NODE_TYPE_NAME": node_type,
                                 "RAY_NODE_MARKET_TYPE": "spot" if offer.kind == "spot" else "on-demand"},
                            labels=node_labels,
                            resources={k: float(v) for k, v in (resources or {}).items()
                                       if k not in ("CPU", "GPU", "memory", "object_store_memory")})
        try:
            handle = market.rent(offer, launch)
        except Exception as exc:
            self.store.transition(rec.id, RentalState.RELEASED, released_at=time.time(), reason=f"refused: {exc}")
            raise
        rec = self.store.transition(rec.id, RentalState.RUNNING, handle=handle, running_at=time.time()) or rec
        log.info("rented %s: %s %s %s at %.4f USD/h", rec.id, market.name, offer.kind, offer.gpu_type,
                 offer.usd_per_hour)
        return {rec.id: rec.to_dict()}

    def _create_head(self, tags: dict[str, str]) -> dict[str, Any]:
        """``ray up``: the head is this machine (the head start command starts Ray on it)."""
        rec = self._insert_head("head-" + new_rental_id()[5:], tags)
        return {rec.id: rec.to_dict()}

    def get_command_runner(self, log_prefix, node_id, auth_config, cluster_name, process_runner, use_internal_ip,
                           docker_config=None):
        """``ray up``/``ray down`` run their commands on the head — this machine — through this."""
        from raycluster.provision.raycmd import LocalCommandRunner

        if not self.raycluster_state_dir:
            raise MarketConfigError("provider.raycluster_state_dir is required for ray up / ray down",
                                    field="provider.raycluster_state_dir")
        return LocalCommandRunner(log_prefix, node_id, str(Path(self.raycluster_state_dir).expanduser()),
                                  self.state_dir / "logs")

    @staticmethod
    def bootstrap_config(cluster_config: dict[str, Any]) -> dict[str, Any]:
        """``ray up``/``ray down`` read the config: our keys are checked before anything is made, a
        bad one refused in one line naming its path (exit 2: Ray's CLI would print the exception as
        a traceback), and the state dir used written in (``rayup.resolve``)."""
        from raycluster.provision.rayup import resolve

        try:
            config, note = resolve(cluster_config)
        except MarketConfigError as exc:
            msg, field = getattr(exc, "message", str(exc)), getattr(exc, "field", None)
            print(f"raycluster: invalid cluster config: {msg if not field or field in msg else f'{field}: {msg}'}",
                  file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        if note:
            print(note, file=sys.stderr, flush=True)
        return config

    def terminate_node(self, node_id: str) -> dict[str, Any] | None:
        with self._lock:
            self._release(node_id, "terminated by the autoscaler")
        return None

    def release(self, node_id: str, reason: str) -> None:
        """Give a node back for our own reason (the BudgetAutoscaler: shed, idle), recorded with it."""
        with self._lock:
            self._release(node_id, reason)

    def terminate_nodes(self, node_ids: list[str]) -> dict[str, Any] | None:
        for node_id in node_ids:
            self.terminate_node(node_id)
        return None

    def _release(self, node_id: str, reason: str) -> None:
        self._changes += 1
        self._seen.pop(node_id, None)
        rec = self.store.get(node_id)
        if rec is None or rec.state == RentalState.RELEASED:
            return
        if rec.market == HEAD_MARKET:  # (ray down: its processes are stopped by the head's own command)
            self.store.transition(node_id, RentalState.RELEASED, released_at=time.time(), reason=reason)
            return
        self.store.transition(node_id, RentalState.RELEASING, reason=reason)
        market = self.markets.get(rec.market)
        if market is not None:
            market.release(rec.id, rec.handle)
        self.store.transition(node_id, RentalState.RELEASED, released_at=time.time())
        log.info("released %s (%s)", node_id, reason)

    def release_all(self, reason: str = "cluster down") -> list[str]:
        """Release every rental (``ray down`` / the cluster going away) and anything a market bills."""
        with self._lock:
            ids = [r.id for r in self.store.list(LIVE_STATES) if r.market != HEAD_MARKET]
            for node_id in ids:
                self._release(node_id, reason)
            for market in self.markets.values():
                for rental_id, handle in market.held().items():
                    market.release(rental_id, handle)
            return ids

    # ---- reconcile with the markets ----------------------------------------------------------------
    def _sync(self) -> tuple[list[RentalRecord], bool]:
        """What the markets say against what we hold (see the module doc): (the live rentals as read,
        whether anything was changed since). Each part's error is logged; listing goes on."""
        now = time.time()
        rows = self.store.list(LIVE_STATES)
        version = self._changes
        live = [r for r in rows if r.market != HEAD_MARKET]
        for name, market in self.markets.items():
            mine = [r for r in live if r.market == name]
            running = [r for r in mine if r.state == RentalState.RUNNING]
            try:
                held = market.held()
                known = {r.id for r in mine}
                for rental_id, handle in held.items():
                    if rental_id not in known:
                        log.warning("market %s bills %s, which is no node of ours: releasing it", name, rental_id)
                        market.release(rental_id, handle)
                for r in running:
                    # a node taken back after a preemption notice was preempted, not lost
                    noticed = r.preempt_deadline is not None
                    if r.id not in held:
                        self._changes += 1
                        self.store.transition(r.id, RentalState.RELEASED, only_from=(RentalState.RUNNING,),
                                              released_at=now,
                                              reason="preempted" if noticed else "lost: the market no longer runs it")
                        log.warning("rental %s is gone from market %s%s", r.id, name, " (preempted)" if noticed else "")
                    elif not market.alive(r.id, r.handle):
                        self._release(r.id, "preempted" if noticed else "lost: its node stopped")
                for notice in market.notices():
                    self._on_notice(notice)
                for r in running:  # a noticed node past its deadline: stop paying for it
                    if r.preempt_deadline is not None and now > r.preempt_deadline:
                        self._release(r.id, "preempted")
            except Exception:
                log.exception("provider: reconciling with market %s failed; going on", name)
        if self.dashboard_url:
            nodes = self._note_ray_node_ids(live)
            if self.join_timeout_s > 0:
                self._release_never_joined(now, live, nodes)
        return rows, self._changes != version

    def _note_ray_node_ids(self, live: list[RentalRecord]) -> dict[str, dict] | None:
        """Record on each running rental the Ray node it is, once it joined: one identity for the CLI,
        the API and the dashboard. Ray's node table (by node name) when it was read, else None."""
        if not any(r.state == RentalState.RUNNING and not r.ray_node_id for r in live):
            return None
        nodes = self._ray_nodes()
        for r in live:
            node = nodes.get(rented_node_name(r.id)) if r.state == RentalState.RUNNING and not r.ray_node_id else None
            if node and node.get("node_id"):
                self.store.update(r.id, ray_node_id=str(node["node_id"]))
        return nodes

    def _ray_nodes(self) -> dict[str, dict]:
        entries = raystart.state_api_nodes(self.dashboard_url, self.auth_token_path) if self.dashboard_url else None
        return {e.get("node_name"): e for e in entries or []}

    def _release_never_joined(self, now: float, live: list[RentalRecord], nodes: dict[str, dict] | None) -> None:
        late = [r for r in live if r.state == RentalState.RUNNING and now - r.created_at > self.join_timeout_s]
        if not late:
            return
        nodes = self._ray_nodes() if nodes is None else nodes
        if not nodes:  # the dashboard does not answer: decide nothing
            return
        for r in late:
            if rented_node_name(r.id) not in nodes:
                self._release(r.id, f"never joined Ray within {self.join_timeout_s:.0f}s")

    def _on_notice(self, notice) -> None:
        if notice.rental_id in self._drained:
            return
        rec = self.store.update(notice.rental_id, preempt_deadline=notice.deadline)
        self._changes += 1
        if rec is None:
            return
        node = self._ray_nodes().get(rented_node_name(notice.rental_id))
        if node is None or not node.get("node_id"):
            return
        from raycluster.provision.drain import drain_node

        accepted, why = drain_node(self.head_address, node["node_id"], "PREEMPTION",
                                   f"{rec.market} preempts this {rec.kind} node ({notice.reason})", notice.deadline)
        log.warning("preemption notice for %s (deadline in %.0fs): drain %s%s", notice.rental_id,
                    notice.deadline - time.time(), "accepted" if accepted else "refused", f": {why}" if why else "")
        self._drained.add(notice.rental_id)


def release_all(config: dict[str, Any], reason: str = "cluster down") -> list[str]:
    """Give back every rental of the cluster whose autoscaling config this is."""
    provider = MarketNodeProvider(config["provider"], config["cluster_name"])
    return provider.release_all(reason)


def release_recorded(record: dict[str, Any]) -> list[str]:
    """``release_all`` for a local cluster's record (nothing if it is not elastic)."""
    from raycluster.provision.local.record import read_json

    path = record.get("autoscaling_config_path")
    config = read_json(Path(path)) if path else None
    if not config:
        return []
    released = release_all(config)
    if released:
        log.info("released %d rented node(s): %s", len(released), released)
    return released
