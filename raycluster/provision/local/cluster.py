"""The embedded default "cluster": a Ray head plus N worker nodes on THIS machine.

Owns: ``LocalCluster`` — one head + workers, each a ``LocalNodeLauncher`` (``process.py``) running a
``ray start --block`` command built by ``provision/raystart.py``, recorded under
``<state_dir>/local-cluster/`` (``record.py: ClusterRecord``, a part of its own) so that any process
can stop or kill its nodes, and ``raycluster up --local`` / ``down`` / the tests' fixtures. It only
ever signals processes it started (see ``process.py``). A node whose start fails (its process
exits, or it does not register in LOCAL_NODE_START_TIMEOUT_S — seen when a worker's GCS registration
hit Ray's RPC deadline on a machine under heavy load) is started again LOCAL_NODE_START_RETRIES
times, with a log line.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from raycluster import constants as C
from raycluster.errors import LocalClusterError
from raycluster.labels import LOCAL_NODE_LABEL, ROLE_LABEL
from raycluster.provision import autoscaling, raystart
from raycluster.provision.autoscaling import ElasticConfig
from raycluster.provision.auth import apply_env, driver_env_of
from raycluster.provision.local.process import LocalNodeLauncher, stop_launchers, wait_gone
from raycluster.provision.local.record import (HEAD_ROLE, RECORD_NAME, RECORD_VERSION, TOKEN_NAME, WORKER_ROLE,
                                               ClusterRecord, LocalNode, cluster_dir, pick_temp_dir, read_json)
from raycluster.util.files import atomic_write
from raycluster.util.ports import free_ports

log = logging.getLogger(__name__)

# Custom resource every worker node gets (1 per node): tasks can target worker nodes with it.
WORKER_RESOURCE = "raycluster_worker"
# Ray node labels set on every node we start.
NODE_LABEL = LOCAL_NODE_LABEL  # (the name tests and older imports use)


def last_log_line(message: str) -> str | None:
    """The last non-empty line of a start failure's message (the tail of the node's log: its error)."""
    return next((ln.strip() for ln in reversed(message.splitlines()) if ln.strip()), None)


class LocalCluster:
    """A Ray head + worker nodes on this machine, persisted under ``<state_dir>/local-cluster``."""

    def __init__(self, state_dir: Path | str, num_workers: int = 2, cpus_per_worker: int = 2,
                 gpus_per_worker: int = 1, head_cpus: int = 0, object_store_bytes: int | None = None,
                 env: dict[str, str] | None = None, *, gpu_mode: str = "auto", gpu_ids: Sequence[str] | None = None,
                 auth_mode: str | None = None, elastic: ElasticConfig | None = None):
        """``gpu_mode``: "auto" (physical GPUs if NVML sees any, else logical), "physical" or
        "logical" (declared ``--num-gpus`` only, even on a GPU machine). ``gpu_ids``: the physical
        CUDA ids to hand out (default: all visible ones); giving them implies physical mode. Each
        worker gets a disjoint slice of ``gpus_per_worker`` of them via CUDA_VISIBLE_DEVICES (fewer,
        possibly 0, when they run out). ``auth_mode``: "token" | "disabled" (default LOCAL_AUTH_MODE).
        ``elastic``: start the head with Ray's autoscaler renting worker nodes from markets
        (``provision/autoscaling.py``); ``stop`` then also gives back every rental."""
        if num_workers < 0 or cpus_per_worker < 0 or gpus_per_worker < 0 or head_cpus < 0:
            raise LocalClusterError("node counts and resources must be >= 0")
        if gpu_mode not in ("auto", "physical", "logical"):
            raise LocalClusterError(f"gpu_mode must be auto|physical|logical, not {gpu_mode!r}", field="gpu_mode")
        if gpu_ids is not None and gpu_mode == "logical":
            raise LocalClusterError("gpu_ids make no sense with gpu_mode='logical'", field="gpu_ids")
        auth_mode = (auth_mode or C.LOCAL_AUTH_MODE).lower()
        if auth_mode not in ("token", "disabled"):
            raise LocalClusterError(f"auth mode must be token|disabled, not {auth_mode!r}", field="auth_mode")
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.num_workers = int(num_workers)
        self.cpus_per_worker = int(cpus_per_worker)
        self.gpus_per_worker = int(gpus_per_worker)
        self.head_cpus = int(head_cpus)
        self.object_store_bytes = int(C.LOCAL_OBJECT_STORE_BYTES if object_store_bytes is None else object_store_bytes)
        self.env = dict(env or {})
        self.gpu_mode = gpu_mode
        self.gpu_ids = [str(g) for g in gpu_ids] if gpu_ids is not None else None
        self.auth_mode = auth_mode
        self.elastic = elastic
        self._popens: dict[str, subprocess.Popen] = {}  # our own children, by node name
        self.cluster_dir = cluster_dir(self.state_dir)
        self.rec = ClusterRecord(self.cluster_dir)  # cluster.json, its lock, its nodes
        self.record_path = self.rec.path
        self.logs_dir = self.cluster_dir / "logs"
        self.token_path = self.cluster_dir / TOKEN_NAME

    @classmethod
    def load(cls, state_dir: Path | str) -> "LocalCluster | None":
        """The cluster recorded under ``state_dir`` (running or not), or None if no record."""
        if (record := read_json(cluster_dir(state_dir) / RECORD_NAME)) is None:
            return None
        cfg = record.get("config", {})
        lc = cls(state_dir, num_workers=cfg.get("num_workers", 0), cpus_per_worker=cfg.get("cpus_per_worker", 2),
                 gpus_per_worker=cfg.get("gpus_per_worker", 1), head_cpus=cfg.get("head_cpus", 0),
                 object_store_bytes=cfg.get("object_store_bytes", C.LOCAL_OBJECT_STORE_BYTES),
                 env=record.get("env") or {}, gpu_mode=cfg.get("gpu_mode", "auto"),
                 gpu_ids=record.get("gpu_ids") if record.get("gpu_kind") == "physical" else None,
                 auth_mode=record.get("auth_mode", "disabled"))
        lc.rec.data = record
        return lc

    def _launcher(self, node: LocalNode) -> LocalNodeLauncher:
        return LocalNodeLauncher.attach(node.name, node.pid, node.pgid, node.create_time, node.log_path,
                                        tag=node.tag, popen=self._popens.get(node.name))

    # ---- public properties ------------------------------------------------------------------
    @property
    def address(self) -> str:
        """GCS address ``127.0.0.1:<port>`` for ``ray.init(address=...)`` / ``ray start``."""
        return self.rec.require()["address"]

    @property
    def dashboard_url(self) -> str:
        return self.rec.require()["dashboard_url"]

    @property
    def auth_token_path(self) -> Path | None:
        p = self.rec.require().get("auth_token_path")
        return Path(p) if p else None

    def driver_env(self) -> dict[str, str]:
        """Environment variables a driver subprocess needs to connect (auth)."""
        return driver_env_of(self.rec.require())

    def apply_driver_auth(self) -> None:
        """Set up THIS process's Ray auth for ``ray.init(address=self.address)``."""
        apply_env(self.driver_env())

    def connect(self, **ray_init_kwargs: Any):
        """``apply_driver_auth()`` then ``ray.init(address=self.address, **ray_init_kwargs)``."""
        import ray

        self.apply_driver_auth()
        return ray.init(address=self.address, **ray_init_kwargs)

    # ---- status -----------------------------------------------------------------------------
    def nodes(self) -> list[LocalNode]:
        """Every recorded node (killed ones too) with ``alive`` computed by PID now."""
        with self.rec.locked():
            self.rec.refresh()
        out = []
        for node in self.rec.nodes():
            node.alive = self._launcher(node).is_alive()
            out.append(node)
        return out

    def node(self, name_or_node_id: str) -> LocalNode:
        for node in self.nodes():
            if name_or_node_id in (node.name, node.ray_node_id):
                return node
        raise LocalClusterError(f"no node {name_or_node_id!r} in the local cluster", field="node")

    def is_running(self) -> bool:
        """Whether a recorded head node process is alive."""
        with self.rec.locked():
            record = self.rec.refresh()
        return bool(record) and not record.get("removed") and any(
            n.role == HEAD_ROLE and self._launcher(n).is_alive() for n in self.rec.nodes())

    # ---- starting nodes ---------------------------------------------------------------------
    def _new_node(self, name: str, role: str, argv: list[str], env: dict[str, str], resources: dict[str, float],
                  labels: dict[str, str], gpu_ids: list[str] | None) -> LocalNodeLauncher:
        log_path = self.logs_dir / f"{name}.log"
        tag = f"{self.rec.data['cluster_id']}/{name}"
        launcher = LocalNodeLauncher(name, argv, env, log_path, tag=tag)
        launcher.start()
        if launcher._popen is not None:
            self._popens[name] = launcher._popen
        self.rec.put_node(LocalNode(name=name, role=role, pid=launcher.pid, pgid=launcher.pgid,
                                    create_time=launcher.create_time, log_path=str(log_path), tag=tag,
                                    resources=resources, labels=labels, gpu_ids=gpu_ids, started_at_s=time.time()))
        self.rec.save()  # record every pid as soon as it exists: a crash now still leaves it stoppable
        return launcher

    def _node_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        r = self.rec.data
        return raystart.node_env(r["auth_mode"], r["auth_token_path"], base=r.get("env") or {}, extra=extra)

    def _register(self, launchers: Mapping[str, LocalNodeLauncher]) -> None:
        """Wait until the nodes are registered with the GCS and record their Ray node ids."""
        r = self.rec.data
        entries = raystart.wait_registered(
            r["dashboard_url"], r["auth_token_path"] if r["auth_mode"] == "token" else None, launchers,
            C.LOCAL_NODE_START_TIMEOUT_S, is_alive=LocalNodeLauncher.is_alive,
            describe=lambda lch: f"--- {lch.log_path}:\n{lch.log_tail()}")
        for node in self.rec.nodes():
            if node.name in entries:
                node.ray_node_id = entries[node.name].get("node_id")
                self.rec.put_node(node)
        self.rec.save()

    def start(self) -> "LocalCluster":
        """Start head + ``num_workers`` workers and wait until all are registered with the GCS.

        Raises LocalClusterError (after stopping what it started) if a node does not come up (after
        LOCAL_NODE_START_RETRIES more tries; the head: one more, and none after the same error twice),
        or if a live cluster is already recorded here.
        """
        with self.rec.locked():
            existing = LocalCluster.load(self.state_dir)
            if existing is not None:
                existing._popens = dict(self._popens)
                if any(n.role == HEAD_ROLE and existing._launcher(n).is_alive()
                       for n in existing.rec.nodes()):
                    raise LocalClusterError(f"a local cluster is already running at {existing.rec.data.get('address')} "
                                            f"(record {self.record_path}); stop it first")
                existing._stop_locked()  # leftovers of a crashed/killed cluster: stop exactly them
            self.rec.data = None
            self._popens = {}
            self._start_locked()
        return self

    def _start_locked(self) -> None:
        t0 = time.monotonic()
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        old_temp, prev_temp = self.cluster_dir / "r", self.cluster_dir / "r.prev"
        if old_temp.is_dir():  # Ray dirs of the previous (stopped) cluster: keep one generation
            shutil.rmtree(prev_temp, ignore_errors=True)
            with contextlib.suppress(OSError):
                old_temp.rename(prev_temp)
        temp_dir, temp_dir_is_fallback = pick_temp_dir(self.cluster_dir)
        gpu_kind, gpu_ids = raystart.gpu_plan(self.gpu_mode, self.gpu_ids)
        token_path = None
        if self.auth_mode == "token":
            token_path = str(self.token_path)
            atomic_write(token_path, secrets.token_hex(32), mode=0o600)
        self.rec.data = {
            "version": RECORD_VERSION, "cluster_id": secrets.token_hex(3), "address": None, "dashboard_url": None,
            "auth_mode": self.auth_mode, "auth_token_path": token_path, "temp_dir": temp_dir,
            "temp_dir_is_fallback": temp_dir_is_fallback, "gpu_kind": gpu_kind, "gpu_ids": gpu_ids,
            "env": self.env,
            "config": {"num_workers": self.num_workers, "cpus_per_worker": self.cpus_per_worker,
                       "gpus_per_worker": self.gpus_per_worker, "head_cpus": self.head_cpus,
                       "object_store_bytes": self.object_store_bytes, "gpu_mode": self.gpu_mode},
            "next_worker_index": 1, "created_at_s": time.time(), "creator_pid": os.getpid(), "nodes": [],
        }
        try:
            self._start_head()
            self.rec.data["head_ready_s"] = round(time.monotonic() - t0, 3)
            self.rec.save()
            self._start_workers([{} for _ in range(self.num_workers)])
            self.rec.data["ready_s"] = round(time.monotonic() - t0, 3)
            self.rec.save()
        except BaseException:
            with contextlib.suppress(Exception):
                self._stop_locked()
            raise

    def _start_head(self) -> None:
        record = self.rec.data
        head_env = self._node_env({"CUDA_VISIBLE_DEVICES": ""} if record["gpu_kind"] == "physical" else None)
        has_client = importlib.util.find_spec("grpc") is not None
        name = f"rc-{record['cluster_id']}-head"
        labels = {NODE_LABEL: name, ROLE_LABEL: HEAD_ROLE}
        tries = 2 + C.LOCAL_NODE_START_RETRIES  # a freshly picked port can be taken before Ray binds it
        last_error = None
        for attempt in range(tries):
            gcs_port, dashboard_port, client_port = free_ports(3)
            record.update(gcs_port=gcs_port, dashboard_port=dashboard_port,
                          address=f"{C.LOCAL_NODE_IP}:{gcs_port}", dashboard_url=f"http://127.0.0.1:{dashboard_port}",
                          client_server_port=client_port if has_client else None)
            argv = (raystart.ray_start_argv()
                    + raystart.head_args(gcs_port, dashboard_port, client_port if has_client else None, self.head_cpus)
                    + raystart.common_args(name, Path(record["temp_dir"]) / "h", labels, self.object_store_bytes)
                    + self._autoscaling_args())
            launcher = self._new_node(name, HEAD_ROLE, argv, {**head_env, **self._autoscaling_env()},
                                      {"CPU": float(self.head_cpus), "GPU": 0.0}, labels,
                                      [] if record["gpu_kind"] == "physical" else None)
            try:
                self._register({name: launcher})
                return
            except raystart.NodeStartFailed as exc:
                stop_launchers([launcher], 0.0)
                self.rec.drop_node(name)
                error = last_log_line(exc.message)
                if attempt + 1 == tries or (error is not None and error == last_error):
                    raise  # (the same error twice — a bad setting, not a taken port or a slow start)
                last_error = error
                log.warning("local head node did not start (try %d/%d), starting it again: %s",
                            attempt + 1, tries, exc.message.splitlines()[0])

    def _autoscaling_args(self) -> list[str]:
        """Ray's autoscaler on the head, renting from markets (an elastic cluster), as configured."""
        if self.elastic is None:
            return []
        path = autoscaling.write_config(self.elastic, self.rec.data, self.cluster_dir, self.head_cpus)
        return [f"--autoscaling-config={path}"]

    def _autoscaling_env(self) -> dict[str, str]:
        return {} if self.elastic is None else autoscaling.head_env(self.elastic, self.rec.data["cluster_id"])

    def _start_workers(self, shapes: list[dict]) -> list[str]:
        """Start one worker per shape (keyword arguments of ``_launch_worker``) and wait for all; each
        worker that fails is replaced up to LOCAL_NODE_START_RETRIES times (counted per worker: on a
        busy box one slow start must not use up another's retry). Returns the new nodes' names."""
        launchers = {}  # name -> (launcher, shape, tries so far)
        for shape in shapes:
            launcher = self._launch_worker(**shape)
            launchers[launcher.name] = (launcher, shape, 1)
        while True:
            try:
                self._register({n: lch for n, (lch, _s, _t) in launchers.items()})
                return list(launchers)
            except raystart.NodeStartFailed as exc:
                spent = [n for n in exc.names if launchers[n][2] > C.LOCAL_NODE_START_RETRIES]
                if spent or not exc.names:
                    for name in exc.names:  # leave nothing of a failed start behind
                        stop_launchers([launchers[name][0]], 0.0)
                        self.rec.drop_node(name)
                    raise
                log.warning("local node(s) %s did not start (try %d/%d), starting them again: %s", exc.names,
                            max(launchers[n][2] for n in exc.names), C.LOCAL_NODE_START_RETRIES + 1,
                            exc.message.splitlines()[0])
                for name in exc.names:
                    launcher, shape, tries = launchers.pop(name)
                    stop_launchers([launcher], 0.0)
                    self.rec.drop_node(name)
                    replacement = self._launch_worker(**shape)
                    launchers[replacement.name] = (replacement, shape, tries + 1)

    def _free_gpu_ids(self) -> list[str]:
        used = set()
        for node in self.rec.nodes():
            if node.gpu_ids and self._launcher(node).is_alive():
                used.update(node.gpu_ids)
        return [g for g in self.rec.data.get("gpu_ids", []) if g not in used]

    def _launch_worker(self, *, num_cpus: int | None = None, num_gpus: int | None = None,
                       resources: Mapping[str, float] | None = None, labels: Mapping[str, str] | None = None,
                       env: Mapping[str, str] | None = None) -> LocalNodeLauncher:
        record = self.rec.data
        index = int(record.get("next_worker_index", 1))
        record["next_worker_index"] = index + 1
        name = f"rc-{record['cluster_id']}-w{index}"
        cpus = self.cpus_per_worker if num_cpus is None else int(num_cpus)
        want_gpus = self.gpus_per_worker if num_gpus is None else int(num_gpus)
        extra_env: dict[str, str] = {}
        gpu_ids: list[str] | None = None
        if record["gpu_kind"] == "physical":
            gpu_ids = self._free_gpu_ids()[:want_gpus]
            gpus = len(gpu_ids)
            extra_env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
        else:
            gpus = want_gpus
        extra_env.update(env or {})
        node_labels = {NODE_LABEL: name, ROLE_LABEL: WORKER_ROLE, **(labels or {})}
        custom = {WORKER_RESOURCE: 1.0, **{k: float(v) for k, v in (resources or {}).items()}}
        argv = (raystart.worker_start_argv() + raystart.worker_args(record["address"], cpus, gpus, custom)
                + raystart.common_args(name, Path(record["temp_dir"]) / f"w{index}", node_labels,
                                       self.object_store_bytes))
        return self._new_node(name, WORKER_ROLE, argv, self._node_env(extra_env),
                              {"CPU": float(cpus), "GPU": float(gpus), **custom}, node_labels, gpu_ids)

    def add_worker(self, num_cpus: int | None = None, num_gpus: int | None = None,
                   resources: Mapping[str, float] | None = None, labels: Mapping[str, str] | None = None,
                   env: Mapping[str, str] | None = None) -> LocalNode:
        """Start one more worker node (defaults: cpus_per_worker / gpus_per_worker; physical GPUs
        are taken from those no live worker holds) and wait until it is registered."""
        with self.rec.locked():
            self.rec.require()
            shape = dict(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources, labels=labels, env=env)
            (name,) = self._start_workers([shape])
        return self.node(name)

    def kill_node(self, name_or_node_id: str) -> LocalNode:
        """SIGKILL one node's whole process group and process tree now (simulates node loss).
        The node stays in the record, marked ``killed``."""
        with self.rec.locked():
            self.rec.require()
            for node in self.rec.nodes():
                if name_or_node_id in (node.name, node.ray_node_id):
                    break
            else:
                raise LocalClusterError(f"no node {name_or_node_id!r} in the local cluster", field="node")
            launcher = self._launcher(node)
            survivors = wait_gone(launcher.kill(), [launcher], C.LOCAL_NODE_KILL_WAIT_S)
            node.killed = True
            self.rec.put_node(node)
            self.rec.save()
        if survivors:
            raise LocalClusterError(f"node {node.name}: processes {[p.pid for p in survivors]} survived SIGKILL")
        node.alive = False
        return node

    # ---- stop -------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop exactly the processes of this cluster and remove its record. Idempotent; works
        from any process (via the record)."""
        with self.rec.locked():
            self._stop_locked()

    def _stop_locked(self) -> None:
        record = self.rec.refresh()
        if record is None:
            return
        try:  # first the rented nodes (the autoscaler would otherwise replace them)
            from raycluster.provision.node_provider import release_recorded

            release_recorded(record)
        except Exception as exc:  # the nodes below are stopped anyway; say what is left
            log.error("local cluster %s: giving back rented nodes failed: %s", record.get("cluster_id"), exc)
        nodes = sorted(self.rec.nodes(), key=lambda n: n.role == HEAD_ROLE)  # workers' SIGTERM first
        launchers = [self._launcher(n) for n in nodes]
        survivors = stop_launchers(launchers, C.LOCAL_NODE_STOP_GRACE_S) if launchers else []
        for launcher in launchers:
            launcher.reap()
        if survivors:
            raise LocalClusterError(f"local cluster {record.get('cluster_id')}: processes {[p.pid for p in survivors]} "
                                    f"survived SIGKILL; record kept at {self.record_path}")
        if record.get("temp_dir_is_fallback") and record.get("temp_dir"):
            temp_dir = Path(record["temp_dir"])
            if temp_dir.name.startswith("rc-"):
                shutil.rmtree(temp_dir, ignore_errors=True)
        disk = read_json(self.record_path)
        if disk is not None and disk.get("cluster_id") == record.get("cluster_id"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.record_path)
            if record.get("auth_token_path"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(record["auth_token_path"])
        self._popens.clear()
        record["removed"] = True

    def __enter__(self) -> "LocalCluster":
        if self.rec.data is None or self.rec.data.get("removed"):
            self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalCluster(state_dir={str(self.state_dir)!r}, address={(self.rec.data or {}).get('address')!r})"
