"""A client of the HTTP control API (``raycluster/api/``) with the same methods as the Ray ``Client``.

Owns: talking to ``http(s)://host:port`` with ``Authorization: Bearer <token>`` over ``requests``,
turning the API's JSON errors (``{"error": {"code", "message", "field"?, "retryable"}}``) back into
raycluster's typed exceptions, and retrying what is safe to retry:

* An error answer becomes the error class with that code and HTTP status (``errors.error_for_status``,
  the one table): 401 → :class:`Unauthorized`, 403 → :class:`Forbidden` (a valid token whose role or
  tenant does not allow it), 404 → :class:`JobNotFound`, 409 →
  :class:`IllegalTransition`, 422 → :class:`InvalidJobSpec` (``EntrypointImportError`` /
  ``InfeasibleJob`` by code) with ``field``, 413 → ``BodyTooLarge``; 502/503/504 and connection
  errors → :class:`ClusterUnavailable` once the retries are spent; anything else →
  :class:`RayClusterError`. Never imports Ray.
* Every call is retried on 502/503/504 and on connection errors, with exponential backoff (and at
  least the server's ``Retry-After``, capped): GET and DELETE are idempotent, and ``submit`` always
  sends an ``Idempotency-Key`` — the same on every retry — so a retried POST cannot create a second
  job. A ``cancel`` whose retry answers 409 because an earlier, unanswered try already cancelled
  the job returns the cancelled job.

The token comes from ``api.token.resolve_token`` (``--token-file``, then ``RAYCLUSTER_API_TOKEN``,
then ``<state_dir>/api_token``).
"""

from __future__ import annotations

import json
import random
import time
from typing import Any
from urllib.parse import quote

import requests

from raycluster.client.base import ClientBase
from raycluster.errors import (ClusterUnavailable, IllegalTransition, NotElastic, RayClusterError, Unauthorized,
                               error_for_status)
from raycluster.store.lifecycle import JobState

_RETRY_STATUSES = (502, 503, 504)
_API_MAX_PAGE = 1000
_API_MAX_TAIL = 10_000


def is_http_address(address: str | None) -> bool:
    return bool(address) and address.lower().startswith(("http://", "https://"))


def error_from_response(status: int, body: Any, text: str = "") -> RayClusterError:
    """The typed exception for an API error answer."""
    err = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), dict) else {}
    message = err.get("message") or (text or "").strip()[:500] or f"HTTP {status}"
    if status == Unauthorized.http_status:
        message = f"the raycluster API refused the token ({message}); pass --token-file or set RAYCLUSTER_API_TOKEN"
    return error_for_status(status, err.get("code"), message, err.get("field"))


class HttpClient(ClientBase):
    """Synchronous client over the raycluster HTTP API; the same methods as the Ray ``Client``."""

    key_prefix = "http"

    def __init__(self, base_url: str, token: str | None = None, *, timeout_s: float = 120.0,
                 connect_timeout_s: float = 5.0, retries: int = 4, backoff_s: float = 0.5,
                 max_backoff_s: float = 8.0, session: requests.Session | None = None):
        if not is_http_address(base_url):
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = (connect_timeout_s, timeout_s)
        self.retries = max(0, int(retries))
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._session = session or requests.Session()

    def __repr__(self) -> str:  # never shows the token
        return f"HttpClient({self.base_url!r})"

    # ------------------------------------------------------------------ transport
    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = self.backoff_s * (2 ** attempt) * (1 + 0.25 * random.random())
        try:
            delay = max(delay, float(retry_after)) if retry_after else delay
        except ValueError:
            pass
        return min(delay, self.max_backoff_s)

    def _send(self, method: str, path: str, *, params: dict | None = None, body: Any = None,
              headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[Any, bool]:
        """(decoded JSON answer, whether an earlier try failed) — or the typed exception. ``raw``:
        bytes sent as they are (a package), instead of ``body`` as JSON."""
        url = self.base_url + path
        hdrs = {"Accept": "application/json", **(headers or {})}
        if self._token:
            hdrs["Authorization"] = f"Bearer {self._token}"
        data = None
        if raw is not None:
            data = raw
            hdrs.setdefault("Content-Type", "application/zip")
        elif body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        retried = False
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                resp = self._session.request(method, url, params=params, data=data, headers=hdrs,
                                             timeout=self._timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if last:
                    raise ClusterUnavailable(f"cannot reach the raycluster API at {self.base_url}: "
                                             f"{type(exc).__name__}") from None
                retried = True
                time.sleep(self._delay(attempt, None))
                continue
            if resp.status_code in _RETRY_STATUSES and not last:
                retried = True
                time.sleep(self._delay(attempt, resp.headers.get("Retry-After")))
                continue
            try:
                decoded = resp.json() if resp.content else None
            except ValueError:
                decoded = None
            if resp.status_code >= 400:
                exc = error_from_response(resp.status_code, decoded, resp.text)
                exc.retried = retried  # type: ignore[attr-defined]
                raise exc
            return decoded, retried
        raise AssertionError("unreachable")

    def _get(self, path: str, **params) -> Any:
        return self._send("GET", path, params={k: v for k, v in params.items() if v is not None})[0]

    @staticmethod
    def _job_path(job_id: str, suffix: str = "") -> str:
        return f"/jobs/{quote(str(job_id), safe='')}{suffix}"

    # ------------------------------------------------------------------ API (as runtime.Client)
    def _submit(self, spec: dict, idempotency_key: str) -> dict:
        return self._send("POST", "/jobs", body=spec, headers={"Idempotency-Key": idempotency_key})[0]

    def _submit_many(self, items: list[dict]) -> list[dict]:
        return self._send("POST", "/jobs/batch", body={"jobs": items})[0]["jobs"]

    def package_store(self):
        return _HttpPackages(self)

    def get(self, job_id: str) -> dict:
        return self._get(self._job_path(job_id))

    def list(self, states: list[str] | None = None, tenant: str | None = None, limit: int | None = None,
             offset: int = 0, newest_first: bool = False) -> list[dict]:
        out: list[dict] = []
        while limit is None or len(out) < limit:
            page = _API_MAX_PAGE if limit is None else min(_API_MAX_PAGE, limit - len(out))
            ans = self._get("/jobs", state=list(states) if states else None, tenant=tenant, limit=page,
                            offset=offset, order="newest" if newest_first else None)
            out.extend(ans["jobs"])
            if ans.get("next_offset") is None or not ans["jobs"]:
                break
            offset = ans["next_offset"]
        return out

    def cancel(self, job_id: str) -> dict:
        try:
            return self._send("DELETE", self._job_path(job_id))[0]
        except IllegalTransition as exc:
            # a try whose answer was lost (503, connection reset) may have cancelled it: that is success
            if getattr(exc, "retried", False):
                job = self.get(job_id)
                if job.get("state") == JobState.CANCELLED.value:
                    return job
            raise

    def metrics(self, job_id: str, limit: int = 1000) -> list[dict]:
        return self._get(self._job_path(job_id, "/metrics"), limit=limit)["metrics"]

    def checkpoints(self, job_id: str) -> list[dict]:
        return self._get(self._job_path(job_id, "/checkpoints"))["checkpoints"]

    def logs(self, job_id: str, tail_lines: int = 200, since: dict[str, int] | None = None) -> list[dict]:
        from raycluster.rank.logs import format_since

        n = int(tail_lines)
        params = {"tail": min(max(n, 1), _API_MAX_TAIL)}
        if since is not None:
            params["since"] = format_since(since)
        logs = self._get(self._job_path(job_id, "/logs"), **params)["logs"]
        return [{**e, "lines": []} for e in logs] if n <= 0 and since is None else logs

    def cluster_status(self) -> dict:
        """The API's status, plus the flat keys of ``Coordinator.cluster_status`` (gpus_total, ...)."""
        st = dict(self._get("/cluster/status"))
        for kind in ("gpus", "cpus"):
            usage = st.get(kind)
            if isinstance(usage, dict):
                st.setdefault(f"{kind}_total", usage.get("total", 0.0))
                st.setdefault(f"{kind}_free", usage.get("free", 0.0))
        coord = ((st.get("runtime") or {}).get("coordinator") or {})
        st.setdefault("coordinator_uptime_s", coord.get("uptime_s"))
        return st

    def nodes(self) -> list[dict]:
        return self._get("/nodes")["nodes"]

    def tenants(self) -> dict:
        return self._get("/tenants")

    def rentals(self, include_released: bool = False) -> list[dict]:
        """The rented nodes of an elastic cluster ([] for a fixed one, as over Ray)."""
        try:
            return self._get("/rentals", all="true" if include_released else None)["rentals"]
        except NotElastic:
            return []

    def events(self, limit: int = 100) -> list[dict]:
        """The newest scaling decisions ([] for a fixed cluster)."""
        try:
            return self._get("/events", limit=limit)["events"]
        except NotElastic:
            return []

    def trials(self, job_id: str, limit: int = 1000, offset: int = 0, failed_only: bool = False) -> dict:
        return self._get(self._job_path(job_id, "/trials"), limit=limit, offset=offset,
                         failed="true" if failed_only else None)

    def health(self) -> list[dict]:
        return self._get("/health/nodes")["nodes"]

    def set_budget(self, usd_per_hour: float | None) -> dict:
        """Change the hourly cap at run time (None: back to the config's); the cluster's cost after."""
        return self._send("PUT", "/budget", body={"max_hourly_budget_usd": usd_per_hour})[0]

    def drain(self, node_id: str, reason: str | None = None) -> dict:
        return self._send("POST", f"/nodes/{quote(node_id, safe='')}/drain",
                          params={"reason": reason} if reason else None)[0]

    def undrain(self, node_id: str) -> dict:
        return self._send("POST", f"/nodes/{quote(node_id, safe='')}/undrain")[0]

    # ---------------------------------------------------------------- tokens and audit (admin tokens)
    def tokens_create(self, name: str, tenant: str | None, role: str) -> dict:
        """A new token (in the answer's ``token``, this once)."""
        return self._send("POST", "/tokens", body={"name": name, "tenant": tenant, "role": role})[0]

    def tokens_list(self, include_revoked: bool = False) -> list[dict]:
        return self._get("/tokens", all="true" if include_revoked else None)["tokens"]

    def tokens_rotate(self, token_id: str) -> dict:
        return self._send("POST", f"/tokens/{quote(token_id, safe='')}/rotate")[0]

    def tokens_revoke(self, token_id: str) -> dict:
        return self._send("DELETE", f"/tokens/{quote(token_id, safe='')}")[0]

    def audit_trail(self, limit: int = 100, tenant: str | None = None) -> list[dict]:
        return self._get("/audit", limit=limit, tenant=tenant)["entries"]

    def _call_schedules(self, method: str, *args):
        if method == "create_schedule":
            return self._send("POST", "/schedules", body=args[0], headers={"Idempotency-Key": args[1]})[0]
        if method == "list_schedules":
            return self._get("/schedules")["schedules"]
        path = f"/schedules/{quote(str(args[0]), safe='')}"
        if method == "get_schedule":
            return self._get(path)
        if method == "delete_schedule":
            return self._send("DELETE", path)[0]
        return self._send("POST", path + "/" + method.split("_")[0])[0]  # pause / resume


__all__ = ["HttpClient", "error_from_response", "is_http_address"]


class _HttpPackages:
    """A spec's local code uploaded through the API (``GET``/``PUT /api/packages/gcs/{name}``, the
    shape of Ray's job server), when the API is the only way in."""

    def __init__(self, client: "HttpClient"):
        self.client = client

    @staticmethod
    def _path(uri: str) -> str:
        protocol, _, name = uri.partition("://")
        return f"/api/packages/{quote(protocol, safe='')}/{quote(name, safe='')}"

    def exists(self, uri: str) -> bool:
        try:
            self.client._send("GET", self._path(uri))
        except RayClusterError as exc:
            if getattr(exc, "http_status", None) == 404:
                return False
            raise
        return True

    def put(self, uri: str, data: bytes) -> None:
        self.client._send("PUT", self._path(uri), raw=data)
