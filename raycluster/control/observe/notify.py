"""Webhook notifications for job and node events, straight from the runtime.

Owns: the notification config (``<state dir>/notify.yaml`` or ``RAYCLUSTER_NOTIFY_FILE``; see
``configs/notify.yaml``: webhooks by URL, each ``alertmanager`` or ``slack`` shaped, and which events),
the payloads — Alertmanager's webhook format (``"version": "4"``: status, labels, annotations,
startsAt/endsAt, fingerprint, groupKey) or Slack's ``{"text": ...}`` — and ``Notifier``: ``emit``
puts one row per webhook into the SQLite outbox (``store/outbox.py``; the control loop never waits
on a network call) and ``deliver_due`` (a thread of the Coordinator actor) POSTs the due rows,
marking a row delivered only on a 2xx answer, retrying others with exponential backoff
(``NOTIFY_RETRY_BASE_S`` doubling up to ``NOTIFY_RETRY_MAX_S``, at most ``NOTIFY_MAX_ATTEMPTS``).
Webhook URLs carry secrets: logs and errors name a webhook by its host only.

Events: ``job_failed`` (a job FAILED), ``job_preempted`` (stopped for a higher-priority job or by a spot
preemption), ``node_unhealthy`` and ``node_recovered`` (its verdict back to healthy), ``tenant_budget``
(a tenant's spend reached 80 % or 100 % of its day's or month's budget).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import yaml

from raycluster import constants as C
from raycluster.store.outbox import Outbox
from raycluster.util.watched import WatchedFile

log = logging.getLogger("raycluster.notify")

EVENTS = ("job_failed", "job_preempted", "node_unhealthy", "node_recovered", "tenant_budget")
FORMATS = ("alertmanager", "slack")


def notify_path(state_dir: Path | str) -> Path:
    override = os.environ.get("RAYCLUSTER_NOTIFY_FILE")
    return Path(override).expanduser() if override else Path(state_dir) / "notify.yaml"


def parse_config(data: Any, where: str = "notify config") -> list[dict[str, Any]]:
    """The webhooks ([{name, url, format, events}]) of a config mapping; ValueError naming the field."""
    if data is None:
        return []
    if not isinstance(data, dict) or set(data) - {"webhooks"}:
        raise ValueError(f"{where}: must be a mapping with only 'webhooks'")
    hooks = []
    for i, h in enumerate(data.get("webhooks") or []):
        at = f"{where}: webhooks[{i}]"
        if not isinstance(h, dict) or set(h) - {"url", "format", "events", "name"} or "url" not in h:
            raise ValueError(f"{at}: needs url, and may have format, events, name")
        parts = urlsplit(str(h["url"]))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{at}.url: must be an http(s) URL")
        fmt = h.get("format", "alertmanager")
        if fmt not in FORMATS:
            raise ValueError(f"{at}.format: one of {FORMATS}")
        events = h.get("events", list(EVENTS))
        bad = [e for e in events if e not in EVENTS] if isinstance(events, list) else [events]
        if bad:
            raise ValueError(f"{at}.events: unknown {bad} (known: {list(EVENTS)})")
        hooks.append({"name": str(h.get("name") or f"{fmt}@{parts.hostname}"), "url": str(h["url"]), "format": fmt,
                      "events": list(events)})
    return hooks


def safe_name(url: str) -> str:
    """A webhook as logs may show it: scheme and host, never its path or query (they hold secrets)."""
    p = urlsplit(url)
    return f"{p.scheme}://{p.hostname}{':' + str(p.port) if p.port else ''}/..."


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def alertmanager_payload(kind: str, labels: dict[str, str], summary: str, description: str, at: float,
                         resolved: bool = False, external_url: str = "") -> dict[str, Any]:
    """One alert in the shape Alertmanager's webhook receivers get (version 4)."""
    lab = {"alertname": f"raycluster_{kind}", "severity": "critical" if kind in ("job_failed", "node_unhealthy")
           else "warning", **{k: str(v) for k, v in labels.items()}}
    fp = hashlib.sha256("|".join(f"{k}={lab[k]}" for k in sorted(lab)).encode()).hexdigest()[:16]
    alert = {"status": "resolved" if resolved else "firing", "labels": lab,
             "annotations": {"summary": summary, "description": description}, "startsAt": _iso(at),
             "endsAt": _iso(at) if resolved else "0001-01-01T00:00:00Z", "generatorURL": external_url,
             "fingerprint": fp}
    return {"version": "4", "groupKey": f'{{}}:{{alertname="{lab["alertname"]}"}}', "truncatedAlerts": 0,
            "status": alert["status"], "receiver": "raycluster", "groupLabels": {"alertname": lab["alertname"]},
            "commonLabels": lab, "commonAnnotations": alert["annotations"], "externalURL": external_url,
            "alerts": [alert]}


def slack_payload(summary: str, description: str) -> dict[str, str]:
    return {"text": f"*{summary}*\n{description}"}


def job_notification(rec, step) -> tuple[str, dict[str, str], str, str]:
    """(kind, labels, summary, description) of a job's FAILED or preempted transition."""
    kind = "job_failed" if rec.state.value == "FAILED" else "job_preempted"
    labels = {"job_id": rec.id, "name": rec.name, "tenant": rec.tenant or "", "cause": step.cause.value}
    summary = f"job {rec.name} ({rec.id}) {'FAILED' if kind == 'job_failed' else 'preempted'}"
    return kind, labels, summary, step.reason or ""


class Notifier:
    """The outbox's two ends: ``emit`` (the control loop) and ``deliver_due`` (a sender thread)."""

    def __init__(self, state_dir: Path | str, clock=time.time, post: Callable | None = None):
        self.path = notify_path(state_dir)
        self.outbox = Outbox(Path(state_dir) / "jobs.db")
        self.clock = clock
        self._post = post or self._http_post
        self._file = WatchedFile(self.path, lambda p: parse_config(yaml.safe_load(p.read_text()), str(p)), [],
                                 "notify")
        self._stop = threading.Event()
        self._wake = threading.Event()

    def _config(self) -> list[dict[str, Any]]:
        return self._file.current()

    @property
    def error(self) -> str | None:
        return self._file.error

    def emit(self, kind: str, labels: dict[str, str], summary: str, description: str,
             resolved: bool = False) -> int:
        """Queue a notification for every webhook that wants ``kind``; never blocks on the network."""
        now = self.clock()
        rows = []
        for h in self._config():
            if kind not in h["events"]:
                continue
            payload = (alertmanager_payload(kind, labels, summary, description, now, resolved)
                       if h["format"] == "alertmanager" else slack_payload(summary, description))
            rows.append((h["name"], kind, {"url": h["url"], "body": payload}))
        if rows:
            self.outbox.add(rows, now)
            self._wake.set()
        return len(rows)

    @staticmethod
    def _http_post(url: str, body: dict) -> int:
        import requests

        return requests.post(url, json=body, timeout=C.NOTIFY_TIMEOUT_S).status_code

    def deliver_due(self) -> int:
        """POST every due notification once; returns how many were delivered."""
        done = 0
        for row in self.outbox.due(self.clock()):
            url, body = row["payload"]["url"], row["payload"]["body"]
            try:
                status = self._post(url, body)
                error = None if 200 <= status < 300 else f"HTTP {status}"
            except Exception as exc:  # the message may hold the URL: keep the type only
                error = type(exc).__name__
            now = self.clock()
            if error is None:
                self.outbox.delivered(row["id"], now)
                done += 1
                continue
            attempt = row["attempts"] + 1
            if attempt >= C.NOTIFY_MAX_ATTEMPTS:
                log.error("notify %s to %s: giving up after %d tries (%s)", row["kind"], safe_name(url), attempt, error)
                self.outbox.failed(row["id"], error, None)
            else:
                delay = min(C.NOTIFY_RETRY_MAX_S, C.NOTIFY_RETRY_BASE_S * 2 ** (attempt - 1))
                log.warning("notify %s to %s: %s; retrying in %.1f s", row["kind"], safe_name(url), error, delay)
                self.outbox.failed(row["id"], error, now + delay)
        return done

    def run(self) -> None:
        """The sender thread's loop (the Coordinator actor starts it)."""
        while not self._stop.is_set():
            try:
                self.deliver_due()
            except Exception:
                log.exception("notify: delivery pass failed")
            self._wake.wait(C.NOTIFY_POLL_S)
            self._wake.clear()

    def start(self) -> None:
        threading.Thread(target=self.run, name="notify", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
