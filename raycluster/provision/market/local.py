"""The embedded default market: "machines" are ``ray start --block`` processes on this host.

Owns: ``LocalMarket`` — a price table per GPU type (spot and on-demand USD/hour) and a capacity per
type from the config; renting starts a worker node with the one node launcher
(``provision/local/process.py``, the one ``LocalCluster`` uses) and the ``ray start`` arguments of
``provision/raystart.py``; releasing stops exactly the processes that rental started. The market's
own books (what it rents out to us, preemption notices) are a table in its SQLite file, so any
process (the ``ray up`` CLI, the autoscaler's monitor, ``raycluster market preempt``) sees the same
market. Spot nodes can be preempted — at a configurable random rate and on command — with a notice
and a deadline; the market kills the node at the deadline (enforced on every call, so within one
autoscaler tick).
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from raycluster import constants as C
from raycluster.labels import RENTAL_LABEL, rented_node_name
from raycluster.provision import raystart
from raycluster.provision.local.process import LocalNodeLauncher, wait_gone
from raycluster.provision.market.base import (KINDS, ON_DEMAND, SPOT, CapacityExhausted, MarketConfigError,
                                              NodeLaunch, Notice, Offer, UnknownRental)
from raycluster.store.db import connect

DEFAULT_GPU_TYPES = {
    # the embedded market's default catalogue (USD/hour, like the seeds' T4/A10G/A100 price points)
    "T4": {"gpus": 1, "cpus": 2, "spot_usd_per_hour": 0.16, "on_demand_usd_per_hour": 0.53, "capacity": 4},
}


def parse_gpu_types(raw: Any, where: str = "markets.local.gpu_types") -> dict[str, dict]:
    """Validate the price table; a bad entry raises MarketConfigError naming its key."""
    if raw is None:
        raw = DEFAULT_GPU_TYPES
    if not isinstance(raw, Mapping) or not raw:
        raise MarketConfigError(f"{where} must be a mapping of GPU type -> prices", field=where)
    out = {}
    for name, t in raw.items():
        key = f"{where}.{name}"
        if not isinstance(t, Mapping):
            raise MarketConfigError(f"{key} must be a mapping", field=key)
        unknown = set(t) - {"gpus", "cpus", "spot_usd_per_hour", "on_demand_usd_per_hour", "capacity"}
        if unknown:
            raise MarketConfigError(f"{key}: unknown key(s) {sorted(unknown)}", field=f"{key}.{sorted(unknown)[0]}")
        entry = {}
        for field_name, default, kind in (("gpus", 1, int), ("cpus", 2, int), ("capacity", 4, int),
                                          ("spot_usd_per_hour", None, float), ("on_demand_usd_per_hour", None, float)):
            value = t.get(field_name, default)
            if value is None:
                if field_name == "spot_usd_per_hour":  # no spot price: not sold as spot
                    entry[field_name] = None
                    continue
                raise MarketConfigError(f"{key}.{field_name} is required", field=f"{key}.{field_name}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise MarketConfigError(f"{key}.{field_name} must be a number >= 0, not {value!r}",
                                        field=f"{key}.{field_name}")
            entry[field_name] = kind(value)
        out[str(name)] = entry
    return out


def check_settings(settings: Mapping[str, Any], where: str = "markets.local") -> dict[str, dict]:
    """The local market's settings checked (errors name the key under ``where``): its price table."""
    table = parse_gpu_types(settings.get("gpu_types"), f"{where}.gpu_types")
    for key in ("preemption_rate_per_hour", "preemption_notice_s"):
        value = settings.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise MarketConfigError(f"{where}.{key} must be a number >= 0, not {value!r}", field=f"{where}.{key}")
    return table


class LocalMarket:
    name = "local"

    def __init__(self, db_path: Path | str, work_dir: Path | str, *, gpu_types: Any = None,
                 preemption_rate_per_hour: float = 0.0, preemption_notice_s: float = 30.0,
                 object_store_bytes: int | None = None, auth_mode: str = "disabled",
                 auth_token_path: str | None = None, seed: int | None = None, node_temp_dir: str | None = None):
        """``node_temp_dir``: where nodes keep Ray's session dirs (short: Ray's socket paths must fit
        in 107 bytes; default ``work_dir/nodes``)."""
        self.gpu_types = check_settings({"gpu_types": gpu_types, "preemption_rate_per_hour": preemption_rate_per_hour,
                                         "preemption_notice_s": preemption_notice_s})
        self.preemption_rate_per_hour = float(preemption_rate_per_hour)
        self.preemption_notice_s = float(preemption_notice_s)
        self.work_dir = Path(work_dir)
        self.node_temp_dir = Path(node_temp_dir) if node_temp_dir else self.work_dir / "nodes"
        self.object_store_bytes = C.LOCAL_OBJECT_STORE_BYTES if object_store_bytes is None else object_store_bytes
        self.auth_mode, self.auth_token_path = auth_mode, auth_token_path
        self._rng = random.Random(seed)
        self._conn = connect(Path(db_path))
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS local_market (rental_id TEXT PRIMARY KEY, gpu_type TEXT NOT NULL, "
                "kind TEXT NOT NULL, handle TEXT NOT NULL, started_at REAL NOT NULL, checked_at REAL NOT NULL, "
                "deadline REAL, reason TEXT)")
            # prices set at run time (``raycluster market price``): spot prices move
            self._conn.execute("CREATE TABLE IF NOT EXISTS local_market_prices (gpu_type TEXT NOT NULL, "
                               "kind TEXT NOT NULL, usd_per_hour REAL NOT NULL, PRIMARY KEY (gpu_type, kind))")

    # ---- the market's books ---------------------------------------------------------------------
    def _rows(self) -> list[tuple]:
        with self._lock:
            return self._conn.execute(
                "SELECT rental_id, gpu_type, kind, handle, started_at, checked_at, deadline, reason "
                "FROM local_market ORDER BY started_at").fetchall()

    def _launcher(self, rental_id: str, handle: Mapping[str, Any]) -> LocalNodeLauncher:
        return LocalNodeLauncher.attach(rental_id, handle["pid"], handle["pgid"], handle.get("create_time"),
                                        handle["log_path"], tag=handle.get("tag"))

    def _enforce(self) -> None:
        """The market's clock: kill nodes whose notice ran out; give random spot notices."""
        now = time.time()
        for rental_id, _gpu, kind, handle, _started, checked, deadline, _reason in self._rows():
            if deadline is not None and now >= deadline:
                self._stop(rental_id, json.loads(handle), grace_s=0.0)
                continue
            if kind == SPOT and deadline is None and self.preemption_rate_per_hour > 0:
                p = min(1.0, self.preemption_rate_per_hour * max(0.0, now - checked) / 3600.0)
                if self._rng.random() < p:
                    self.preempt(rental_id, reason="preemption (random)")
                    continue
            with self._lock:
                self._conn.execute("UPDATE local_market SET checked_at = ? WHERE rental_id = ?", (now, rental_id))

    # ---- Market -----------------------------------------------------------------------------------
    def offers(self) -> list[Offer]:
        self._enforce()
        used: dict[str, int] = {}
        for _rid, gpu_type, *_rest in self._rows():
            used[gpu_type] = used.get(gpu_type, 0) + 1
        out = []
        prices = self.prices()
        for name, t in self.gpu_types.items():
            left = max(0, t["capacity"] - used.get(name, 0))
            for kind in KINDS:
                price = prices.get((name, kind))
                if price is not None:
                    out.append(Offer(self.name, name, kind, price, t["gpus"], t["cpus"], left, f"{name}/{kind}"))
        return out

    def prices(self) -> dict[tuple[str, str], float]:
        """(GPU type, kind) -> what the market charges per hour now, for new and held nodes alike."""
        out = {}
        for name, t in self.gpu_types.items():
            for kind in KINDS:
                price = t["spot_usd_per_hour"] if kind == SPOT else t["on_demand_usd_per_hour"]
                if price is not None:
                    out[(name, kind)] = float(price)
        with self._lock:
            rows = self._conn.execute("SELECT gpu_type, kind, usd_per_hour FROM local_market_prices").fetchall()
        for name, kind, usd in rows:
            if (name, kind) in out:
                out[(name, kind)] = float(usd)
        return out

    def rent(self, offer: Offer, launch: NodeLaunch) -> dict[str, Any]:
        with self._lock:
            row = self._conn.execute("SELECT handle FROM local_market WHERE rental_id = ?",
                                     (launch.rental_id,)).fetchone()
        if row is not None:  # the same request again: the node it started
            return json.loads(row[0])
        t = self.gpu_types.get(offer.gpu_type)
        if t is None:
            raise MarketConfigError(f"the local market sells no GPU type {offer.gpu_type!r} "
                                    f"(it has {sorted(self.gpu_types)})", field="gpu_type")
        if offer.kind not in KINDS:
            raise MarketConfigError(f"kind must be one of {KINDS}, not {offer.kind!r}", field="kind")
        used = sum(1 for r in self._rows() if r[1] == offer.gpu_type)
        if used >= t["capacity"]:
            raise CapacityExhausted(f"the local market has no {offer.gpu_type} left ({used}/{t['capacity']} rented)")
        name = rented_node_name(launch.rental_id)
        temp_dir = self.node_temp_dir / ("m" + launch.rental_id[-8:])
        labels = {**launch.labels, RENTAL_LABEL: launch.rental_id}
        argv = (raystart.worker_start_argv()
                + raystart.worker_args(launch.head_address, t["cpus"], t["gpus"], launch.resources)
                + raystart.common_args(name, temp_dir, labels, self.object_store_bytes))
        env = raystart.node_env(self.auth_mode, self.auth_token_path, extra=launch.env)
        log_path = self.work_dir / "logs" / f"{name}.log"
        launcher = LocalNodeLauncher(name, argv, env, log_path, tag=f"market/{launch.rental_id}")
        now = time.time()
        launcher.start()
        handle = {"pid": launcher.pid, "pgid": launcher.pgid, "create_time": launcher.create_time,
                  "log_path": str(log_path), "tag": launcher.tag, "node_name": name}
        with self._lock:
            self._conn.execute(
                "INSERT INTO local_market (rental_id, gpu_type, kind, handle, started_at, checked_at) "
                "VALUES (?, ?, ?, ?, ?, ?)", (launch.rental_id, offer.gpu_type, offer.kind, json.dumps(handle), now, now))
        return handle

    def _stop(self, rental_id: str, handle: Mapping[str, Any], grace_s: float) -> None:
        launcher = self._launcher(rental_id, handle)
        if grace_s <= 0 or wait_gone(launcher.terminate(), [launcher], grace_s):  # (survivors: SIGKILL)
            wait_gone(launcher.kill(), [launcher], C.LOCAL_NODE_KILL_WAIT_S)
        launcher.reap()
        with self._lock:
            self._conn.execute("DELETE FROM local_market WHERE rental_id = ?", (rental_id,))

    def release(self, rental_id: str, handle: dict[str, Any]) -> None:
        with self._lock:
            row = self._conn.execute("SELECT handle FROM local_market WHERE rental_id = ?", (rental_id,)).fetchone()
        if row is None:
            return  # released before (or never rented)
        self._stop(rental_id, json.loads(row[0]), grace_s=C.LOCAL_NODE_STOP_GRACE_S)

    def held(self) -> dict[str, dict[str, Any]]:
        self._enforce()
        return {rid: json.loads(handle) for rid, _g, _k, handle, *_rest in self._rows()}

    def alive(self, rental_id: str, handle: dict[str, Any]) -> bool:
        with self._lock:
            row = self._conn.execute("SELECT handle FROM local_market WHERE rental_id = ?", (rental_id,)).fetchone()
        return row is not None and self._launcher(rental_id, json.loads(row[0])).is_alive()

    def notices(self) -> list[Notice]:
        self._enforce()
        return [Notice(rid, deadline, reason or "preemption")
                for rid, _g, _k, _h, _s, _c, deadline, reason in self._rows() if deadline is not None]

    # ---- what only the local market can do ---------------------------------------------------------
    def preempt(self, rental_id: str, notice_s: float | None = None, reason: str = "preemption") -> Notice:
        """Take a spot node back after ``notice_s`` (default: the configured notice)."""
        with self._lock:
            row = self._conn.execute("SELECT kind, deadline FROM local_market WHERE rental_id = ?",
                                     (rental_id,)).fetchone()
        if row is None:
            raise UnknownRental(f"the local market rents out no node {rental_id!r}", field="node")
        if row[0] != SPOT:
            raise MarketConfigError(f"{rental_id} is an on-demand node: only spot nodes are preempted", field="node")
        if row[1] is not None:
            return Notice(rental_id, row[1], reason)
        deadline = time.time() + (self.preemption_notice_s if notice_s is None else max(0.0, float(notice_s)))
        with self._lock:
            self._conn.execute("UPDATE local_market SET deadline = ?, reason = ? WHERE rental_id = ? "
                               "AND deadline IS NULL", (deadline, reason, rental_id))
        return Notice(rental_id, deadline, reason)

    def set_price(self, gpu_type: str, kind: str, usd_per_hour: float | None) -> dict[str, Any]:
        """Move a price (a spot market's price rising or falling): new rentals and the nodes held of
        that type and kind are charged ``usd_per_hour`` from now on (None: back to the configured
        price)."""
        t = self.gpu_types.get(gpu_type)
        if t is None:
            raise MarketConfigError(f"the local market sells no GPU type {gpu_type!r} (it has {sorted(self.gpu_types)})",
                                    field="gpu_type")
        if kind not in KINDS:
            raise MarketConfigError(f"kind must be one of {KINDS}, not {kind!r}", field="kind")
        if (t["spot_usd_per_hour"] if kind == SPOT else t["on_demand_usd_per_hour"]) is None:
            raise MarketConfigError(f"the local market sells no {kind} {gpu_type}", field="kind")
        if usd_per_hour is not None and (isinstance(usd_per_hour, bool) or not isinstance(usd_per_hour, (int, float))
                                         or not usd_per_hour >= 0 or usd_per_hour == float("inf")):
            raise MarketConfigError(f"usd_per_hour must be a number >= 0, not {usd_per_hour!r}", field="usd_per_hour")
        with self._lock:
            if usd_per_hour is None:
                self._conn.execute("DELETE FROM local_market_prices WHERE gpu_type = ? AND kind = ?", (gpu_type, kind))
            else:
                self._conn.execute("INSERT OR REPLACE INTO local_market_prices (gpu_type, kind, usd_per_hour) "
                                   "VALUES (?, ?, ?)", (gpu_type, kind, float(usd_per_hour)))
        return {"gpu_type": gpu_type, "kind": kind, "usd_per_hour": self.prices()[(gpu_type, kind)]}

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass


__all__ = ["LocalMarket", "parse_gpu_types", "DEFAULT_GPU_TYPES", "SPOT", "ON_DEMAND"]
