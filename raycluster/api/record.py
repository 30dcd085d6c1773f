"""Where this state dir's HTTP control API serves: ``<state_dir>/api.json``.

Owns: the record written by the one bring-up path once the API answers (``cli/bringup.py``: its
URL and whether the replica serves it directly), read by the CLI to talk HTTP instead of joining
the Ray cluster as a driver (``cli/connect.py``), and removed by ``raycluster down``; ``answers`` —
one quick ``/healthz`` probe, so a stale record (the cluster was stopped some other way) costs
milliseconds, not a retry loop. Imports nothing from Ray.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from raycluster.util.files import atomic_write_json

RECORD_NAME = "api.json"


def record_path(state_dir: Path | str) -> Path:
    return Path(state_dir).expanduser() / RECORD_NAME


def write_record(state_dir: Path | str, url: str, direct_ingress: bool | None = None) -> None:
    atomic_write_json(record_path(state_dir), {"url": url, "direct_ingress": direct_ingress}, mode=0o644)


def read_record(state_dir: Path | str) -> dict[str, Any] | None:
    """The recorded API, None when there is none (or it cannot be read)."""
    try:
        rec = json.loads(record_path(state_dir).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("url"), str) else None


def remove_record(state_dir: Path | str) -> None:
    with contextlib.suppress(FileNotFoundError):
        record_path(state_dir).unlink()


def answers(url: str, timeout_s: float = 1.0) -> bool:
    """Whether an API answers ``/healthz`` at ``url`` now (no retry: loopback refuses at once)."""
    import requests

    try:
        return requests.get(url.rstrip("/") + "/healthz", timeout=timeout_s).status_code == 200
    except requests.RequestException:
        return False
