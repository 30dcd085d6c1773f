"""The notification outbox (``jobs.db``, table ``outbox``): every notification to every webhook,
kept until delivered — so one survives a Coordinator restart — with its attempts, next try and last
error. Delivery is marked only after the receiver answered 2xx (at least once; a receiver dedupes on
the payload's ``groupKey``/fingerprint if it must)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from raycluster.store.db import connect

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    sink TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try_at REAL NOT NULL,
    delivered_at REAL,
    dead INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(delivered_at, dead, next_try_at);
"""


class Outbox:
    def __init__(self, path: Path | str):
        self._conn = connect(Path(path))
        self._lock = threading.Lock()
        with self._lock:
            self._conn.executescript(_SCHEMA)

    def add(self, rows: list[tuple[str, str, dict]], now: float) -> None:
        """(sink, kind, payload) rows, due now."""
        with self._lock:
            self._conn.executemany("INSERT INTO outbox (created_at, sink, kind, payload, next_try_at) VALUES (?,?,?,?,?)",
                                   [(now, sink, kind, json.dumps(payload), now) for sink, kind, payload in rows])

    def due(self, now: float, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, sink, kind, payload, attempts FROM outbox WHERE delivered_at IS NULL AND dead=0 "
                "AND next_try_at<=? ORDER BY id LIMIT ?", (now, limit)).fetchall()
        return [{"id": i, "sink": s, "kind": k, "payload": json.loads(p), "attempts": a} for i, s, k, p, a in rows]

    def delivered(self, row_id: int, now: float) -> None:
        with self._lock:
            self._conn.execute("UPDATE outbox SET delivered_at=?, attempts=attempts+1, last_error=NULL WHERE id=?",
                               (now, row_id))

    def failed(self, row_id: int, error: str, next_try_at: float | None) -> None:
        """A failed try: retried at ``next_try_at``, or given up (dead) when None."""
        with self._lock:
            self._conn.execute("UPDATE outbox SET attempts=attempts+1, last_error=?, next_try_at=COALESCE(?, next_try_at), "
                               "dead=? WHERE id=?", (error[:500], next_try_at, 0 if next_try_at else 1, row_id))

    def rows(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute("SELECT id, created_at, sink, kind, attempts, delivered_at, dead, last_error "
                                      "FROM outbox ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [{"id": i, "created_at": c, "sink": s, "kind": k, "attempts": a, "delivered_at": d, "dead": bool(x),
                 "last_error": e} for i, c, s, k, a, d, x, e in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
