"""A faithful local server of the GPU-marketplace API subset the HTTP market speaks (vast.ai's REST
shape), whose rented "instances" are real local processes — our Ray nodes joining the cluster.

Owns: ``make_app`` (FastAPI) and ``python -m raycluster.provision.market.http_sim --port P --api-key-file F
--state-dir D``. The subset: ``POST /api/v0/bundles/`` (offer search with ``{"q": {field: {op: value}}}``
filters, ``type`` ondemand|bid), ``PUT /api/v0/asks/{id}/`` (rent: ``client_id``, ``image``, ``env``,
``onstart``, ``label``, ``price`` for a bid) → ``{"success": true, "new_contract": id}``,
``GET /api/v0/instances/`` and ``/api/v0/instances/{id}/`` (``actual_status``: loading → running;
``paused`` when an interruptible instance is outbid), ``DELETE /api/v0/instances/{id}/``; Bearer auth.
An instance runs its ``onstart`` with ``env`` in a session of its own (the one node launcher).
Failures to inject (``POST /_sim/faults``): the next N requests answered 429 or 500, offers gone
(410), instances stuck in ``loading``, an instance outbid (→ paused, its process stopped).
(No ``from __future__ import annotations`` here: FastAPI reads the route signatures.)
"""

import argparse
import hmac
import itertools
import threading
import time
from pathlib import Path
from typing import Any

DEFAULT_OFFERS = [
    {"id": 1001, "gpu_name": "RTX_4090", "num_gpus": 1, "cpu_cores": 2, "dph_total": 0.42, "min_bid": 0.18},
    {"id": 1002, "gpu_name": "RTX_4090", "num_gpus": 1, "cpu_cores": 2, "dph_total": 0.45, "min_bid": 0.20},
    {"id": 1003, "gpu_name": "A100_SXM4", "num_gpus": 1, "cpu_cores": 2, "dph_total": 1.10, "min_bid": 0.55},
]


def _match(value: Any, cond: Any) -> bool:
    if not isinstance(cond, dict):
        return value == cond
    ops = {"eq": lambda a, b: a == b, "neq": lambda a, b: a != b, "gt": lambda a, b: a > b,
           "gte": lambda a, b: a >= b, "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b,
           "in": lambda a, b: a in b, "notin": lambda a, b: a not in b}
    try:
        return all(ops[op](value, want) for op, want in cond.items())
    except (KeyError, TypeError):
        return False


class Sim:
    """The marketplace's state: offers, instances (each a local process group), injected faults."""

    def __init__(self, state_dir: Path, offers=None, loading_s: float = 1.0):
        self.state_dir = Path(state_dir)
        self.offers = {o["id"]: {**o, "rentable": True} for o in (offers or DEFAULT_OFFERS)}
        self.instances: dict[int, dict] = {}
        self.launchers: dict[int, Any] = {}
        self.loading_s = loading_s
        self.faults = {"http_429": 0, "http_500": 0, "stuck_loading": 0}
        self.requests = 0
        self._ids = itertools.count(5001)
        self.lock = threading.Lock()

    def status(self, inst: dict) -> dict:
        launcher = self.launchers.get(inst["id"])
        if inst["actual_status"] == "loading" and not inst["stuck"] and time.time() - inst["start_date"] >= self.loading_s:
            inst["actual_status"] = inst["cur_state"] = "running"
        if inst["actual_status"] == "running" and launcher is not None and not launcher.is_alive():
            inst["actual_status"], inst["status_msg"] = "exited", "the instance's process exited"
        return {k: v for k, v in inst.items() if k != "stuck"}

    def rent(self, ask_id: int, body: dict) -> dict:
        from raycluster.provision.local.process import LocalNodeLauncher

        offer = self.offers.get(ask_id)
        if offer is None or not offer["rentable"]:
            return None
        is_bid = body.get("price") is not None
        iid = next(self._ids)
        stuck = self.faults["stuck_loading"] > 0
        if stuck:
            self.faults["stuck_loading"] -= 1
        inst = {"id": iid, "label": body.get("label"), "actual_status": "loading", "intended_status": "running",
                "cur_state": "loading", "is_bid": is_bid, "dph_total": float(body["price"]) if is_bid else offer["dph_total"],
                "gpu_name": offer["gpu_name"], "num_gpus": offer["num_gpus"], "cpu_cores": offer["cpu_cores"],
                "image_uuid": body.get("image"), "start_date": time.time(), "status_msg": None, "ask_id": ask_id,
                "stuck": stuck}
        offer["rentable"] = False  # one instance per ask
        if body.get("onstart") and not stuck:
            env = {k: str(v) for k, v in (body.get("env") or {}).items()}
            import os

            launcher = LocalNodeLauncher(f"vast-{iid}", ["/bin/sh", "-c", body["onstart"]], {**os.environ, **env},
                                         self.state_dir / "logs" / f"instance-{iid}.log", tag=f"http/{iid}")
            launcher.start()
            self.launchers[iid] = launcher
        self.instances[iid] = inst
        return inst

    def stop(self, iid: int) -> None:
        from raycluster.provision.local.process import wait_gone

        launcher = self.launchers.pop(iid, None)
        if launcher is not None:
            wait_gone(launcher.kill(), [launcher], 10.0)
            launcher.reap()

    def delete(self, iid: int) -> bool:
        inst = self.instances.pop(iid, None)
        if inst is None:
            return False
        self.stop(iid)
        if inst["ask_id"] in self.offers:
            self.offers[inst["ask_id"]]["rentable"] = True
        return True

    def outbid(self, iid: int) -> None:
        inst = self.instances[iid]
        inst["actual_status"] = inst["cur_state"] = "paused"
        inst["status_msg"] = "outbid: a higher bid took this machine"
        self.stop(iid)

    def stop_all(self) -> None:
        for iid in list(self.launchers):
            self.stop(iid)


def make_app(sim: Sim, api_key: str):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        sim.stop_all()  # the server going away takes its instances with it

    app = FastAPI(title="GPU marketplace (local simulator of the vast.ai REST subset)", lifespan=lifespan)

    def err(status: int, error: str, msg: str):
        return JSONResponse({"success": False, "error": error, "msg": msg}, status_code=status)

    @app.middleware("http")
    async def gate(request: Request, call_next):
        if request.url.path.startswith("/_sim"):
            return await call_next(request)
        presented = (request.headers.get("authorization") or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(presented.encode(), api_key.encode()):
            return err(401, "auth_error", "invalid api key")
        with sim.lock:
            sim.requests += 1
            for code, key in ((429, "http_429"), (500, "http_500")):
                if sim.faults[key] > 0:
                    sim.faults[key] -= 1
                    return err(code, "rate_limited" if code == 429 else "server_error", f"injected {code}")
        return await call_next(request)

    @app.post("/api/v0/bundles/")
    async def bundles(request: Request):
        body = await request.json() if await request.body() else {}
        q = dict(body.get("q", body))
        kind = q.pop("type", "ondemand")
        with sim.lock:
            out = [o for o in sim.offers.values() if all(_match(o.get(k), c) for k, c in q.items())]
        if kind == "bid":
            out = [{**o, "dph_total": o["min_bid"]} for o in out]
        return {"offers": out}

    @app.put("/api/v0/asks/{ask_id}/")
    async def rent(ask_id: int, request: Request):
        body = await request.json()
        with sim.lock:
            if ask_id not in sim.offers:
                return err(404, "no_such_ask", f"ask {ask_id} does not exist")
            inst = sim.rent(ask_id, body)
        if inst is None:
            return err(410, "ask_gone", f"ask {ask_id} is no longer available")
        return {"success": True, "new_contract": inst["id"]}

    @app.get("/api/v0/instances/")
    async def instances():
        with sim.lock:
            return {"instances": [sim.status(i) for i in sim.instances.values()]}

    @app.get("/api/v0/instances/{iid}/")
    async def instance(iid: int):
        with sim.lock:
            inst = sim.instances.get(iid)
            if inst is None:
                return err(404, "no_such_instance", f"instance {iid} does not exist")
            return {"instances": sim.status(inst)}

    @app.delete("/api/v0/instances/{iid}/")
    async def destroy(iid: int):
        with sim.lock:
            if not sim.delete(iid):
                return err(404, "no_such_instance", f"instance {iid} does not exist")
        return {"success": True}

    @app.post("/_sim/faults")
    async def faults(request: Request):
        body = await request.json()
        with sim.lock:
            for key in ("http_429", "http_500", "stuck_loading"):
                sim.faults[key] += int(body.get(key, 0))
            for ask in body.get("gone_offers", []):
                if ask in sim.offers:
                    sim.offers[ask]["rentable"] = False
            if body.get("outbid") is not None:
                sim.outbid(int(body["outbid"]))
            return {"faults": dict(sim.faults), "requests": sim.requests}

    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--api-key-file", required=True)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--loading-s", type=float, default=1.0)
    args = ap.parse_args()
    import uvicorn

    sim = Sim(Path(args.state_dir), loading_s=args.loading_s)
    app = make_app(sim, Path(args.api_key_file).read_text().strip())
    try:
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    finally:
        sim.stop_all()


if __name__ == "__main__":
    main()
