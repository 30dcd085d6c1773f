"""The HTTP market: a client of a GPU marketplace's REST API (vast.ai's shape; the local simulator
``http_sim.py`` serves the same subset for the tests and the demo).

Owns: ``HttpMarket``. Offers come from ``POST /api/v0/bundles/`` (filtered by GPU name and
price; ``type: bid`` for interruptible = spot), a rent is ``PUT /api/v0/asks/{id}/`` whose
``onstart`` runs ``ray start --address ... --block`` with the node's environment, labelled with the
rental id. Every call retries with exponential backoff on 429 and 5xx (and connection errors); a rent
is never made twice for one request: before (re)trying a PUT, the instances are searched for one
already labelled with this rental. An offer gone (404/410) is ``CapacityExhausted`` (the autoscaler
asks again; another offer is picked). ``held`` is every instance labelled as one of our rentals (the
provider releases those that are no node of ours); an interruptible instance ``paused`` by an outbid
is a preemption notice with an immediate deadline. The API key comes from an environment variable
or a file, never from the config itself.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import Any

import requests

from raycluster.labels import RENTAL_LABEL, rented_node_name
from raycluster.provision import raystart
from raycluster.provision.market.base import (ON_DEMAND, SPOT, CapacityExhausted, MarketConfigError, MarketError,
                                              MarketUnavailable, NodeLaunch, Notice, Offer)

LABEL_PREFIX = "rent-"
_RETRY_STATUS = {429, 500, 502, 503, 504}
_PASS_S = 1.0  # how long one instance listing answers alive/notices (one provider reconcile pass)


class HttpMarket:
    name = "http"

    def __init__(self, *, url: str, api_key_env: str | None = None, api_key_file: str | None = None,
                 gpu_names: list[str] | None = None, max_usd_per_hour: float | None = None,
                 image: str = "rayproject/ray:2.60.0", ray_bin: str = "ray", retries: int = 5,
                 backoff_s: float = 0.2, timeout_s: float = 10.0, auth_mode: str = "disabled",
                 auth_token_path: str | None = None, node_ip: str = "127.0.0.1", work_dir: str = "/tmp/raycluster-http",
                 object_store_bytes: int | None = None):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise MarketConfigError(f"markets.http.url must be an http(s) URL, not {url!r}", field="markets.http.url")
        key = None
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise MarketConfigError(f"markets.http.api_key_env: ${api_key_env} is not set",
                                        field="markets.http.api_key_env")
        elif api_key_file:
            try:
                key = Path(api_key_file).expanduser().read_text().strip()
            except OSError as exc:
                raise MarketConfigError(f"markets.http.api_key_file: {exc}", field="markets.http.api_key_file") from None
        else:
            raise MarketConfigError("markets.http needs api_key_env or api_key_file (never the key itself)",
                                    field="markets.http.api_key_env")
        if max_usd_per_hour is not None and (isinstance(max_usd_per_hour, bool)
                                             or not isinstance(max_usd_per_hour, (int, float))):
            raise MarketConfigError(f"markets.http.max_usd_per_hour must be a number, not {max_usd_per_hour!r}",
                                    field="markets.http.max_usd_per_hour")
        self.url = url.rstrip("/")
        self.gpu_names = list(gpu_names or [])
        self.max_usd_per_hour = max_usd_per_hour
        self.image, self.ray_bin, self.node_ip, self.work_dir = image, ray_bin, node_ip, work_dir
        self.retries, self.backoff_s, self.timeout_s = int(retries), float(backoff_s), float(timeout_s)
        self.auth_mode, self.auth_token_path = auth_mode, auth_token_path
        self.object_store_bytes = object_store_bytes
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {key}"
        self.calls = 0
        self._listed: tuple[float, dict[str, dict]] = (float("-inf"), {})

    # ---- HTTP -------------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kw) -> requests.Response:
        """One API call, retried with backoff on 429/5xx and connection errors."""
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * (2 ** (attempt - 1)))
            try:
                self.calls += 1
                resp = self._session.request(method, self.url + path, timeout=self.timeout_s, **kw)
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if resp.status_code not in _RETRY_STATUS:
                return resp
            last = f"HTTP {resp.status_code}: {resp.text[:200]}"
        raise MarketUnavailable(f"{method} {path} failed after {self.retries + 1} tries ({last})")

    def _instances(self) -> list[dict]:
        resp = self._call("GET", "/api/v0/instances/")
        if resp.status_code != 200:
            raise MarketError(f"GET instances: HTTP {resp.status_code}: {resp.text[:200]}")
        return resp.json().get("instances") or []

    def _ours(self, max_age_s: float = 0.0) -> dict[str, dict]:
        """Our instances by label; one listing serves a reconcile pass (``held`` reads it fresh, then
        ``alive`` and ``notices`` within ``max_age_s`` reuse it instead of a request per node)."""
        at, ours = self._listed
        if max_age_s <= 0 or time.monotonic() - at > max_age_s:
            ours = {i["label"]: i for i in self._instances() if str(i.get("label") or "").startswith(LABEL_PREFIX)}
            self._listed = (time.monotonic(), ours)
        return ours

    # ---- Market -------------------------------------------------------------------------------
    def offers(self) -> list[Offer]:
        out = []
        for kind, api_type in ((ON_DEMAND, "ondemand"), (SPOT, "bid")):
            q: dict[str, Any] = {"rentable": {"eq": True}, "type": api_type}
            if self.gpu_names:
                q["gpu_name"] = {"in": self.gpu_names}
            if self.max_usd_per_hour is not None:
                q["dph_total"] = {"lte": self.max_usd_per_hour}
            resp = self._call("POST", "/api/v0/bundles/", json={"q": q})
            if resp.status_code != 200:
                raise MarketError(f"offer search: HTTP {resp.status_code}: {resp.text[:200]}")
            for o in sorted(resp.json().get("offers") or [], key=lambda o: (o["dph_total"], o["id"])):
                out.append(Offer(self.name, o["gpu_name"], kind, float(o["dph_total"]), int(o["num_gpus"]),
                                 int(o["cpu_cores"]), 1, str(o["id"])))
        return out

    def _onstart(self, offer: Offer, launch: NodeLaunch) -> str:
        work = f"{self.work_dir}/{launch.rental_id}"
        labels = {**launch.labels, RENTAL_LABEL: launch.rental_id}
        args = (raystart.worker_args(launch.head_address, offer.cpus, offer.gpus, launch.resources)
                + raystart.common_args(rented_node_name(launch.rental_id), Path(f"{work}/r"), labels,
                                       self.object_store_bytes or 150 * 1024 ** 2, node_ip=self.node_ip,
                                       make_dir=False))
        return f"mkdir -p {shlex.quote(work)}/r && exec " + " ".join(shlex.quote(a) for a in [self.ray_bin, "start", *args])

    def rent(self, offer: Offer, launch: NodeLaunch) -> dict[str, Any]:
        existing = self._ours().get(launch.rental_id)
        if existing is not None:  # this request was made before (a retry): the same instance
            return {"instance_id": existing["id"], "offer_id": offer.offer_id}
        env = {**launch.env, "RAY_AUTH_MODE": self.auth_mode, "RAY_USAGE_STATS_ENABLED": "0"}
        if self.auth_mode == "token" and self.auth_token_path:
            env["RAY_AUTH_TOKEN_PATH"] = self.auth_token_path  # (the simulator's instances share this host)
        body = {"client_id": "me", "image": self.image, "env": env, "onstart": self._onstart(offer, launch),
                "label": launch.rental_id, "runtype": "args"}
        if offer.kind == SPOT:
            body["price"] = offer.usd_per_hour
        try:
            resp = self._call("PUT", f"/api/v0/asks/{offer.offer_id}/", json=body)
        except MarketUnavailable:
            existing = self._ours().get(launch.rental_id)  # did the PUT land before the error?
            if existing is not None:
                return {"instance_id": existing["id"], "offer_id": offer.offer_id}
            raise
        if resp.status_code in (404, 410):
            raise CapacityExhausted(f"offer {offer.offer_id} is gone ({resp.status_code}: {resp.text[:200]})")
        if resp.status_code != 200 or not resp.json().get("success"):
            raise MarketError(f"rent offer {offer.offer_id}: HTTP {resp.status_code}: {resp.text[:200]}")
        return {"instance_id": resp.json()["new_contract"], "offer_id": offer.offer_id}

    def release(self, rental_id: str, handle: dict[str, Any]) -> None:
        iid = handle.get("instance_id")
        if iid is None:
            inst = self._ours().get(rental_id)
            iid = inst["id"] if inst else None
        if iid is None:
            return
        resp = self._call("DELETE", f"/api/v0/instances/{iid}/")
        if resp.status_code not in (200, 404):  # 404: gone already
            raise MarketError(f"release instance {iid}: HTTP {resp.status_code}: {resp.text[:200]}")

    def held(self) -> dict[str, dict[str, Any]]:
        return {label: {"instance_id": i["id"], "actual_status": i.get("actual_status")}
                for label, i in self._ours().items()}

    def alive(self, rental_id: str, handle: dict[str, Any]) -> bool:
        status = (self._ours(_PASS_S).get(rental_id) or {}).get("actual_status")
        return status in ("loading", "running", "paused")  # (paused: a notice, handled as such)

    def notices(self) -> list[Notice]:
        now = time.time()
        return [Notice(label, now, "outbid: the interruptible instance was paused")
                for label, i in self._ours(_PASS_S).items() if i.get("actual_status") == "paused"]
