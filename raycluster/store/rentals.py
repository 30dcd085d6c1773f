"""Rentals: every node we pay a market for, from the request to its release (SQLite, WAL).

Owns: ``RentalRecord`` (one row per rented node: market, node type, kind, price, the market's own
handle, Ray node tags, times), its states and their legal moves (``RENTAL_TRANSITIONS``, like a
job's), and ``RentalStore``. The store is shared by every process that makes or ends rentals — the
``ray up`` process and the autoscaler's monitor build separate node providers over the same file —
so every change is one conditional statement (``WHERE state IN ...``: a state changes only through
``transition``, from the states that may legally go there) and a
rent is idempotent under its ``request_id`` (a retried create never pays twice). A rental is billed
from ``created_at`` (the request) to ``released_at``.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from raycluster.store.db import Table, connect


class RentalState(str, Enum):
    REQUESTED = "requested"  # asked of the market; not known to run yet
    RUNNING = "running"      # the market says it runs (it may not have joined Ray yet)
    RELEASING = "releasing"  # we asked the market to stop it
    RELEASED = "released"    # the market no longer bills it (terminal)


LIVE_STATES = (RentalState.REQUESTED, RentalState.RUNNING, RentalState.RELEASING)

# the legal moves of a rental; every change of state is one conditional update over them
RENTAL_TRANSITIONS: dict[RentalState, frozenset[RentalState]] = {
    # REQUESTED -> RELEASED: the market refused the rent (nothing ran)
    RentalState.REQUESTED: frozenset({RentalState.RUNNING, RentalState.RELEASING, RentalState.RELEASED}),
    # RUNNING -> RELEASED: the market no longer runs it (preempted, lost); we did not ask
    RentalState.RUNNING: frozenset({RentalState.RELEASING, RentalState.RELEASED}),
    RentalState.RELEASING: frozenset({RentalState.RELEASED}),
    RentalState.RELEASED: frozenset(),
}


def rental_sources(dst: RentalState, only: tuple = ()) -> list[RentalState]:
    """The states a rental may move to ``dst`` from (those of ``only`` among them, if given)."""
    src = [s for s, dsts in RENTAL_TRANSITIONS.items() if RentalState(dst) in dsts]
    return [s for s in src if not only or s in [RentalState(o) for o in only]]


class RentalRecord(BaseModel):
    id: str = Field(json_schema_extra={"sql": "PRIMARY KEY"})
    request_id: str = Field(json_schema_extra={"sql": "UNIQUE"})
    market: str
    node_type: str
    kind: str  # "spot" | "on_demand"
    gpu_type: str
    usd_per_hour: float
    state: RentalState = RentalState.REQUESTED
    resources: dict[str, float] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    handle: dict[str, Any] = Field(default_factory=dict)  # the market's own: pid, instance id, host...
    created_at: float
    running_at: float | None = None
    released_at: float | None = None
    preempt_deadline: float | None = None  # a preemption notice: the market stops it then
    reason: str | None = None  # why it was released (idle, preempted, never joined, lost, leaked...)
    # every price it has had, [since, USD/hour] oldest first, once its price moved ([]: usd_per_hour all along)
    prices: list[tuple[float, float]] = Field(default_factory=list)
    ray_node_id: str | None = None  # the Ray node it is, once it joined (the provider notes it)

    def cost_usd(self, now: float, since: float | None = None) -> float:
        """USD from its request (or ``since``) to its release (or ``now``), each price for its stretch."""
        from raycluster.policy.cost import usd_between

        end = self.released_at if self.released_at is not None else now
        start = self.created_at if since is None else max(self.created_at, since)
        return usd_between(self.usd_per_hour, self.prices, start, end)

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        out = self.model_dump(mode="json")
        if now is not None:
            out["cost_usd"] = round(self.cost_usd(now), 6)
        return out


RENTALS = Table("rentals", RentalRecord, "CREATE INDEX IF NOT EXISTS rentals_state ON rentals(state);")


def new_rental_id() -> str:
    return "rent-" + secrets.token_hex(6)


_EXTRA_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, source TEXT NOT NULL, action TEXT NOT NULL,
    reason TEXT NOT NULL, node_type TEXT, count INTEGER NOT NULL DEFAULT 0);
"""
# the settings key of the hard cap set at run time (raycluster budget --set / PUT /budget)
BUDGET_SETTING = "max_hourly_budget_usd"
# rentals that are billed: asked for, running, or being given back
BILLED_STATES = ("requested", "running", "releasing")


class RentalStore:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._conn = connect(self.path)
        self._lock = threading.Lock()
        with self._lock:
            RENTALS.create(self._conn)
            self._conn.executescript(_EXTRA_SCHEMA)

    # ---- spend rate, settings, scaling events ------------------------------------------------------
    def committed_usd_per_hour(self) -> float:
        """The spend rate of everything billed now (the head is never billed)."""
        with self._lock:
            return self._committed(self._conn)

    @staticmethod
    def _committed(conn) -> float:
        marks = ", ".join("?" for _ in BILLED_STATES)
        row = conn.execute(f"SELECT COALESCE(SUM(usd_per_hour), 0) FROM rentals WHERE state IN ({marks})",
                           BILLED_STATES).fetchone()
        return float(row[0])

    def insert_within(self, rec: RentalRecord, cap_usd_per_hour: float | None
                      ) -> tuple[RentalRecord | None, bool, float]:
        """``insert``, but only while the committed rate plus this rental's stays within the cap —
        checked and inserted in one transaction, so provider instances in other processes cannot
        pass it together: (the rental, new?, the committed rate before). (None, False, committed):
        refused, nothing inserted."""
        if cap_usd_per_hour is None:
            return (*self.insert(rec), 0.0)
        fields = RENTALS.encode(rec.model_dump())
        cols, marks = ", ".join(fields), ", ".join("?" for _ in fields)
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                old = self._conn.execute("SELECT 1 FROM rentals WHERE request_id = ?", (rec.request_id,)).fetchone()
                committed = self._committed(self._conn)
                over = old is None and committed + rec.usd_per_hour > cap_usd_per_hour + 1e-9
                if old is None and not over:
                    self._conn.execute(f"INSERT INTO rentals ({cols}) VALUES ({marks})", tuple(fields.values()))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        if over:
            return None, False, committed
        if old is not None:
            return self.by_request(rec.request_id), False, committed
        return rec, True, committed

    def reprice(self, rental_id: str, usd_per_hour: float, at: float) -> RentalRecord | None:
        """The market's price of a held node moved (spot): bill it at ``usd_per_hour`` from ``at`` on,
        in one transaction (the history keeps every earlier price). The rental as it is after, or
        None when it is not billed or its price is already that."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                marks = ", ".join("?" for _ in BILLED_STATES)
                row = self._conn.execute(
                    f"SELECT usd_per_hour, prices, created_at FROM rentals WHERE id = ? AND state IN ({marks})",
                    (rental_id, *BILLED_STATES)).fetchone()
                changed = row is not None and abs(float(row[0]) - usd_per_hour) > 1e-9
                if changed:
                    history = RENTALS.by_name["prices"].decode(row[1]) or [[row[2], float(row[0])]]
                    history.append([max(at, history[-1][0]), float(usd_per_hour)])
                    self._conn.execute("UPDATE rentals SET usd_per_hour = ?, prices = ? WHERE id = ?",
                                       (float(usd_per_hour), RENTALS.by_name["prices"].encode(history), rental_id))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return self.get(rental_id) if changed else None

    def cap_usd_per_hour(self, config_cap: float | None) -> float | None:
        """The hourly cap in force: the one set at run time (``budget --set``, ``PUT /budget``) if
        any, else the config's (None: no cap). The one reader of the cap: provider, BudgetAutoscaler,
        submit check and cost views all ask this."""
        v = self.setting(BUDGET_SETTING)
        return float(v) if v is not None else config_cap

    def setting(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_setting(self, key: str, value: str | None) -> None:
        with self._lock:
            if value is None:
                self._conn.execute("DELETE FROM settings WHERE key = ?", (key,))
            else:
                self._conn.execute("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
                                   "SET value = excluded.value", (key, value))

    def add_event(self, source: str, action: str, reason: str, node_type: str | None = None, count: int = 0,
                  ts: float | None = None) -> None:
        with self._lock:
            self._conn.execute("INSERT INTO events (ts, source, action, reason, node_type, count) VALUES (?,?,?,?,?,?)",
                               (time.time() if ts is None else ts, source, action, reason, node_type, count))

    def events(self, limit: int = 100, since_id: int = 0) -> list[dict[str, Any]]:
        """The newest ``limit`` scaling events after ``since_id``, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, ts, source, action, reason, node_type, count FROM events WHERE id > ? "
                "ORDER BY id DESC LIMIT ?", (since_id, max(0, int(limit)))).fetchall()
        keys = ("id", "ts", "source", "action", "reason", "node_type", "count")
        return [dict(zip(keys, r)) for r in reversed(rows)]

    def close(self) -> None:
        self._conn.close()

    def _rows(self, where: str = "", args: tuple = ()) -> list[RentalRecord]:
        sql = f"SELECT {RENTALS.select_list} FROM rentals {where} ORDER BY created_at, id"
        with self._lock:
            return [RENTALS.row(r) for r in self._conn.execute(sql, args).fetchall()]

    def insert(self, rec: RentalRecord) -> tuple[RentalRecord, bool]:
        """Store a new rental; (the stored one, True) — or (the one made before under the same
        ``request_id``, False): a request retried never makes a second rental."""
        fields = RENTALS.encode(rec.model_dump())
        cols = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        try:
            with self._lock:
                self._conn.execute(f"INSERT INTO rentals ({cols}) VALUES ({marks})", tuple(fields.values()))
        except sqlite3.IntegrityError:
            old = self.by_request(rec.request_id)
            if old is None:
                raise
            return old, False
        return rec, True

    def get(self, rental_id: str) -> RentalRecord | None:
        rows = self._rows("WHERE id = ?", (rental_id,))
        return rows[0] if rows else None

    def by_request(self, request_id: str) -> RentalRecord | None:
        rows = self._rows("WHERE request_id = ?", (request_id,))
        return rows[0] if rows else None

    def list(self, states=LIVE_STATES) -> list[RentalRecord]:
        if states is None:
            return self._rows()
        states = [RentalState(s).value for s in states]
        return self._rows(f"WHERE state IN ({', '.join('?' for _ in states)})", tuple(states))

    def transition(self, rental_id: str, dst: RentalState, *, only_from=(), **fields: Any) -> RentalRecord | None:
        """Move a rental to ``dst`` (with ``fields``) from any state it may legally come from
        (``RENTAL_TRANSITIONS``; narrowed to ``only_from`` if given), in one conditional update; the
        rental as it is after, or None if it was in no such state (released already, or another
        process moved it)."""
        sources = rental_sources(dst, only_from)
        if not sources:
            raise ValueError(f"no rental may move to {RentalState(dst).value} from {list(only_from)}")
        return self._update(rental_id, sources, state=RentalState(dst), **fields)

    def update(self, rental_id: str, *, from_states=None, **fields: Any) -> RentalRecord | None:
        """Set ``fields`` (never its state: ``transition``) on a rental if it is in one of
        ``from_states`` (any state if None); the rental as it is after, or None if the condition did
        not hold (another process moved it)."""
        if "state" in fields:
            raise ValueError("a rental's state changes only through RentalStore.transition")
        return self._update(rental_id, from_states, **fields)

    def _update(self, rental_id: str, from_states, **fields: Any) -> RentalRecord | None:
        enc = RENTALS.encode(fields)
        sets = ", ".join(f"{k} = ?" for k in enc)
        where, args = "id = ?", [rental_id]
        if from_states is not None:
            states = [RentalState(s).value for s in from_states]
            where += f" AND state IN ({', '.join('?' for _ in states)})"
            args += states
        with self._lock:
            cur = self._conn.execute(f"UPDATE rentals SET {sets} WHERE {where}", (*enc.values(), *args))
        return self.get(rental_id) if cur.rowcount else None

    def set_tags(self, rental_id: str, tags: dict[str, str]) -> None:
        """Merge ``tags`` into a rental's tags (one transaction: concurrent writers do not lose tags)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                row = self._conn.execute("SELECT tags FROM rentals WHERE id = ?", (rental_id,)).fetchone()
                if row is not None:
                    merged = {**RENTALS.by_name["tags"].decode(row[0]), **tags}
                    self._conn.execute("UPDATE rentals SET tags = ? WHERE id = ?",
                                       (RENTALS.by_name["tags"].encode(merged), rental_id))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
