"""Tenants' state: the quotas file the Coordinator reads, and each tenant's decayed fair-share usage.

Owns: where the tenants config lives (``<state dir>/tenants.yaml``, or ``RAYCLUSTER_TENANTS_FILE``),
reading it (re-read when its modification time changes, so an operator's edit applies without a
restart; a file that does not parse keeps the last good config and says why), installing one
checked and atomically (``raycluster tenants set FILE``), the ``tenant_usage`` table in ``jobs.db``
(tenant, decayed usage, as of when) so fair share survives a Coordinator restart, and the
``tenant_budget_alerts`` table (tenant, period, level) so a budget alert fires once per period, a
restart neither losing nor repeating it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import yaml

from raycluster.policy.tenants import TenantsConfig, parse_tenants
from raycluster.store.db import connect
from raycluster.util.files import atomic_write
from raycluster.util.watched import WatchedFile

TENANTS_FILE = "tenants.yaml"


def tenants_path(state_dir: Path | str) -> Path:
    override = os.environ.get("RAYCLUSTER_TENANTS_FILE")
    return Path(override).expanduser() if override else Path(state_dir) / TENANTS_FILE


def read_tenants_file(path: Path | str) -> TenantsConfig:
    """A tenants file, checked (ValueError naming the file and the field)."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read tenants file {p}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"cannot parse tenants file {p}: {exc}") from None
    return parse_tenants(data, where=str(p))


def install_tenants_file(state_dir: Path | str, source: Path | str) -> TenantsConfig:
    """Check ``source`` and copy it to where the Coordinator reads it (atomically)."""
    config = read_tenants_file(source)
    atomic_write(tenants_path(state_dir), Path(source).read_text())
    return config


class TenantsFile(WatchedFile):
    """The tenants config as of the file's last modification (an empty config when there is none)."""

    def __init__(self, state_dir: Path | str):
        super().__init__(tenants_path(state_dir), read_tenants_file, TenantsConfig(), "tenants")

    @property
    def config(self) -> TenantsConfig:
        return self.value


class TenantUsageStore:
    """Decayed fair-share usage per tenant (``jobs.db``, table ``tenant_usage``)."""

    def __init__(self, path: Path | str):
        self._conn = connect(Path(path))
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("CREATE TABLE IF NOT EXISTS tenant_usage (tenant TEXT PRIMARY KEY, "
                               "usage REAL NOT NULL, updated_at REAL NOT NULL)")
            self._conn.execute("CREATE TABLE IF NOT EXISTS tenant_budget_alerts (tenant TEXT NOT NULL, "
                               "period TEXT NOT NULL, level REAL NOT NULL, at REAL NOT NULL, "
                               "PRIMARY KEY (tenant, period, level))")

    def alerts_fired(self) -> set[tuple[str, str, float]]:
        """(tenant, period, level) of every budget alert already fired."""
        with self._lock:
            return {(t, p, float(lv)) for t, p, lv in self._conn.execute(
                "SELECT tenant, period, level FROM tenant_budget_alerts")}

    def alert_fired(self, tenant: str, period: str, level: float, now: float) -> bool:
        """Record a budget alert; False when it was recorded before (another pass fired it)."""
        with self._lock:
            cur = self._conn.execute("INSERT OR IGNORE INTO tenant_budget_alerts(tenant, period, level, at) "
                                     "VALUES (?, ?, ?, ?)", (tenant, period, level, now))
            return cur.rowcount == 1

    def load(self) -> dict[str, tuple[float, float]]:
        """tenant -> (usage, as of)."""
        with self._lock:
            return {t: (u, at) for t, u, at in self._conn.execute("SELECT tenant, usage, updated_at FROM tenant_usage")}

    def save(self, usage: dict[str, float], now: float) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT INTO tenant_usage(tenant, usage, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT(tenant) DO UPDATE SET usage=excluded.usage, updated_at=excluded.updated_at",
                    [(t, u, now) for t, u in usage.items()])
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def describe(config: TenantsConfig) -> dict[str, Any]:
    return config.model_dump(mode="json", exclude_none=True)
