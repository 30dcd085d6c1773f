"""The SSH market: a list of hosts we may use, each rented as one Ray worker node over SSH.

Owns: ``SshMarket`` and the validation of its host list (host, port, user, key_file, known_hosts,
GPUs, CPUs, GPU type, USD/hour). Renting a host runs ``ray start --address ... --block`` on it over
``asyncssh`` with key authentication and the host key checked against ``known_hosts`` (never
accepted blindly; a password in the config is refused). The node runs in a session of its own and
carries an environment tag, so releasing it stops exactly the processes that rental started (its
process group, then anything else carrying its tag). The market's books (which host serves which
rental, the remote pid) are a table in its SQLite file. On-demand only: hosts send no preemption
notices.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from raycluster import constants as C
from raycluster.labels import RENTAL_LABEL, SSH_HOST_LABEL, rented_node_name
from raycluster.provision import raystart
from raycluster.provision.market.base import (ON_DEMAND, CapacityExhausted, MarketConfigError, MarketError,
                                              MarketUnavailable, NodeLaunch, Notice, Offer)
from raycluster.store.db import connect

TAG_ENV = "RAYCLUSTER_LOCAL_NODE"  # the same tag the local launcher puts on its nodes
_HOST_KEYS = {"name", "host", "port", "user", "key_file", "known_hosts", "gpus", "cpus", "gpu_type",
              "usd_per_hour", "ray_bin", "work_dir", "node_ip"}


class HostKeyRefused(MarketError):
    """The host's key is not the one in known_hosts: not connected (retrying will not help)."""
    code = "ssh_host_key"


def parse_hosts(raw: Any, where: str = "markets.ssh.hosts") -> dict[str, dict]:
    if not isinstance(raw, list) or not raw:
        raise MarketConfigError(f"{where} must be a non-empty list of hosts", field=where)
    out: dict[str, dict] = {}
    for i, h in enumerate(raw):
        key = f"{where}[{i}]"
        if not isinstance(h, Mapping):
            raise MarketConfigError(f"{key} must be a mapping", field=key)
        if "password" in h or "passphrase" in h:
            raise MarketConfigError(f"{key}: passwords do not belong in config files; use key_file", field=f"{key}.password")
        unknown = set(h) - _HOST_KEYS
        if unknown:
            raise MarketConfigError(f"{key}: unknown key(s) {sorted(unknown)}", field=f"{key}.{sorted(unknown)[0]}")
        for req in ("host", "user", "key_file", "known_hosts"):
            if not h.get(req) or not isinstance(h[req], str):
                raise MarketConfigError(f"{key}.{req} is required (a string)", field=f"{key}.{req}")
        for f in ("key_file", "known_hosts"):
            if not Path(h[f]).expanduser().is_file():
                raise MarketConfigError(f"{key}.{f}: no such file {h[f]}", field=f"{key}.{f}")
        entry = {k: h[k] for k in ("host", "user") if k in h}
        entry.update(key_file=str(Path(h["key_file"]).expanduser()), known_hosts=str(Path(h["known_hosts"]).expanduser()))
        for f, default, kind in (("port", 22, int), ("gpus", 1, int), ("cpus", 2, int), ("usd_per_hour", None, float)):
            v = h.get(f, default)
            if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise MarketConfigError(f"{key}.{f} must be a number >= 0, not {v!r}", field=f"{key}.{f}")
            entry[f] = kind(v)
        entry["gpu_type"] = str(h.get("gpu_type", "GPU"))
        entry["ray_bin"] = str(h.get("ray_bin", "ray"))
        entry["work_dir"] = str(h.get("work_dir", "/tmp/raycluster-ssh"))
        entry["node_ip"] = str(h.get("node_ip", h["host"]))
        name = str(h.get("name", f"{h['user']}@{h['host']}:{entry['port']}"))
        if name in out:
            raise MarketConfigError(f"{key}: host {name!r} is listed twice", field=f"{key}.name")
        out[name] = entry
    return out


class SshMarket:
    name = "ssh"

    def __init__(self, db_path: Path | str, *, hosts: Any, auth_mode: str = "disabled",
                 auth_token_path: str | None = None, connect_timeout_s: float = 10.0,
                 object_store_bytes: int | None = None, stop_grace_s: float = 3.0):
        self.hosts = parse_hosts(hosts)
        self.auth_mode, self.auth_token_path = auth_mode, auth_token_path
        self.connect_timeout_s = connect_timeout_s
        self.object_store_bytes = C.LOCAL_OBJECT_STORE_BYTES if object_store_bytes is None else object_store_bytes
        self.stop_grace_s = stop_grace_s
        self._conn = connect(Path(db_path))
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("CREATE TABLE IF NOT EXISTS ssh_market (rental_id TEXT PRIMARY KEY, "
                               "host TEXT NOT NULL UNIQUE, handle TEXT NOT NULL, started_at REAL NOT NULL)")

    # ---- ssh ----------------------------------------------------------------------------------
    def _run(self, host: dict, command: str, stdin: str | None = None, timeout_s: float = 30.0) -> tuple[int, str]:
        """Run ``command`` on ``host``; (exit status, output). Host key checked against known_hosts."""
        import asyncssh

        async def go():
            async with asyncssh.connect(host["host"], port=host["port"], username=host["user"],
                                        client_keys=[host["key_file"]], known_hosts=host["known_hosts"],
                                        agent_path=None, password=None, connect_timeout=self.connect_timeout_s) as conn:
                res = await conn.run(command, input=stdin, check=False, timeout=timeout_s)
                return res.exit_status or 0, f"{res.stdout or ''}{res.stderr or ''}"

        try:
            return asyncio.run(go())
        except asyncssh.HostKeyNotVerifiable as exc:
            raise HostKeyRefused(f"host {host['host']}:{host['port']} presented a key that is not in "
                                 f"{host['known_hosts']} ({exc}); not connecting", field="known_hosts") from None
        except asyncssh.PermissionDenied as exc:
            raise MarketError(f"ssh to {host['user']}@{host['host']}:{host['port']} refused the key "
                              f"{host['key_file']}: {exc}", field="key_file") from None
        except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
            raise MarketUnavailable(f"ssh to {host['host']}:{host['port']} failed: {exc}") from None

    def _rows(self) -> list[tuple[str, str, dict]]:
        with self._lock:
            rows = self._conn.execute("SELECT rental_id, host, handle FROM ssh_market ORDER BY started_at").fetchall()
        return [(r, h, json.loads(handle)) for r, h, handle in rows]

    # ---- Market -------------------------------------------------------------------------------
    def offers(self) -> list[Offer]:
        used = {h for _r, h, _handle in self._rows()}
        by_type: dict[tuple, list[str]] = {}
        for name, h in self.hosts.items():
            by_type.setdefault((h["gpu_type"], h["usd_per_hour"], h["gpus"], h["cpus"]), []).append(name)
        return [Offer(self.name, gpu_type, ON_DEMAND, price, gpus, cpus, sum(n not in used for n in names),
                      f"{gpu_type}/{price:g}")
                for (gpu_type, price, gpus, cpus), names in by_type.items()]

    def rent(self, offer: Offer, launch: NodeLaunch) -> dict[str, Any]:
        rows = self._rows()
        for rid, _h, handle in rows:
            if rid == launch.rental_id:
                return handle
        used = {h for _r, h, _handle in rows}
        free = [n for n, h in self.hosts.items() if n not in used and h["gpu_type"] == offer.gpu_type
                and h["usd_per_hour"] == offer.usd_per_hour]
        if not free:
            raise CapacityExhausted(f"no free ssh host with {offer.gpu_type} at {offer.usd_per_hour:g} USD/h")
        name = free[0]
        host = self.hosts[name]
        work = f"{host['work_dir']}/{launch.rental_id}"
        tag = f"ssh/{launch.rental_id}"
        env = {**launch.env, TAG_ENV: tag, "RAY_AUTH_MODE": self.auth_mode, "RAY_USAGE_STATS_ENABLED": "0"}
        token = None
        if self.auth_mode == "token" and self.auth_token_path:
            token = Path(self.auth_token_path).read_text().strip()
            env["RAY_AUTH_TOKEN_PATH"] = f"{work}/auth_token"
        labels = {**launch.labels, RENTAL_LABEL: launch.rental_id, SSH_HOST_LABEL: name}
        args = (raystart.worker_args(launch.head_address, host["cpus"], host["gpus"], launch.resources)
                + raystart.common_args(rented_node_name(launch.rental_id), Path(f"{work}/r"), labels, self.object_store_bytes,
                                       node_ip=host["node_ip"], make_dir=False))
        inner = "echo $$ > node.pid; exec env " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()) + " " + \
            " ".join(shlex.quote(a) for a in [host["ray_bin"], "start", *args])
        command = (f"set -e; mkdir -p {shlex.quote(work)}/r; cd {shlex.quote(work)}; umask 077; "
                   + ("cat > auth_token; " if token else "")
                   + f"nohup setsid sh -c {shlex.quote(inner)} > node.log 2>&1 < /dev/null & "
                   "for i in $(seq 50); do [ -s node.pid ] && break; sleep 0.1; done; cat node.pid")
        handle = {"host": name, "work_dir": work, "tag": tag}
        with self._lock:  # booked before the start: a crash now still leaves it releasable
            self._conn.execute("INSERT INTO ssh_market (rental_id, host, handle, started_at) VALUES (?, ?, ?, ?)",
                               (launch.rental_id, name, json.dumps(handle), time.time()))
        try:
            status, out = self._run(host, command, stdin=token)
            pid = int(out.strip().splitlines()[-1]) if status == 0 and out.strip() else None
            if pid is None:
                raise MarketError(f"ray start on {name} did not start (exit {status}): {out[-500:]}")
        except Exception:
            self._forget(launch.rental_id, host, handle)
            raise
        handle["pid"] = pid
        with self._lock:
            self._conn.execute("UPDATE ssh_market SET handle = ? WHERE rental_id = ?", (json.dumps(handle), launch.rental_id))
        return handle

    def _stop_command(self, handle: Mapping[str, Any]) -> str:
        tag = shlex.quote(f"{TAG_ENV}={handle['tag']}")
        pgid = int(handle.get("pid") or 0)
        group = f"kill -TERM -- -{pgid} 2>/dev/null; sleep {self.stop_grace_s:g}; kill -KILL -- -{pgid} 2>/dev/null; " if pgid else ""
        return (group + "for f in /proc/[0-9]*/environ; do if tr '\\0' '\\n' < \"$f\" 2>/dev/null | grep -qxF "
                f"{tag}; then p=${{f#/proc/}}; kill -KILL ${{p%/environ}} 2>/dev/null; fi; done; true")

    def _forget(self, rental_id: str, host: dict, handle: Mapping[str, Any]) -> None:
        try:
            self._run(host, self._stop_command(handle), timeout_s=self.stop_grace_s + 30)
        finally:
            with self._lock:
                self._conn.execute("DELETE FROM ssh_market WHERE rental_id = ?", (rental_id,))

    def release(self, rental_id: str, handle: dict[str, Any]) -> None:
        for rid, name, booked in self._rows():
            if rid == rental_id:
                self._forget(rental_id, self.hosts[name], booked)

    def held(self) -> dict[str, dict[str, Any]]:
        return {rid: handle for rid, _h, handle in self._rows()}

    def alive(self, rental_id: str, handle: dict[str, Any]) -> bool:
        for rid, name, booked in self._rows():
            if rid == rental_id and booked.get("pid"):
                status, _out = self._run(self.hosts[name], f"kill -0 {int(booked['pid'])}", timeout_s=10)
                return status == 0
        return False

    def notices(self) -> list[Notice]:
        return []
