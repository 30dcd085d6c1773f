"""Node health and drain state (``jobs.db``, table ``node_health``): what the Coordinator last judged
each node (state, score, reasons, since when) and whether an operator drained it (with the reason).
Ray still shows a drained node ALIVE: this table is where "drained" lives, and it survives restarts.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from raycluster.store.db import connect

_SCHEMA = """
CREATE TABLE IF NOT EXISTS node_health (
    node_id TEXT PRIMARY KEY,
    state TEXT NOT NULL DEFAULT 'healthy',
    score REAL NOT NULL DEFAULT 0,
    reasons TEXT NOT NULL DEFAULT '[]',
    since REAL NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL DEFAULT 0,
    drained INTEGER NOT NULL DEFAULT 0,
    drain_reason TEXT,
    drained_at REAL
);
"""


class NodeHealthStore:
    def __init__(self, path: Path | str):
        self._conn = connect(Path(path))
        self._lock = threading.Lock()
        with self._lock:
            self._conn.executescript(_SCHEMA)

    def all(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute("SELECT node_id, state, score, reasons, since, updated_at, drained, drain_reason, "
                                      "drained_at FROM node_health").fetchall()
        return {r[0]: {"state": r[1], "score": r[2], "reasons": json.loads(r[3]), "since": r[4], "updated_at": r[5],
                       "drained": bool(r[6]), "drain_reason": r[7], "drained_at": r[8]} for r in rows}

    def set_state(self, node_id: str, state: str, score: float, reasons: list[str], since: float, now: float) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO node_health (node_id, state, score, reasons, since, updated_at) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT(node_id) DO UPDATE SET state=excluded.state, score=excluded.score, "
                "reasons=excluded.reasons, since=excluded.since, updated_at=excluded.updated_at",
                (node_id, state, score, json.dumps(reasons), since, now))

    def set_drained(self, node_id: str, drained: bool, reason: str | None, now: float) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO node_health (node_id, drained, drain_reason, drained_at, updated_at) VALUES (?,?,?,?,?) "
                "ON CONFLICT(node_id) DO UPDATE SET drained=excluded.drained, drain_reason=excluded.drain_reason, "
                "drained_at=excluded.drained_at, updated_at=excluded.updated_at",
                (node_id, 1 if drained else 0, reason if drained else None, now if drained else None, now))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
