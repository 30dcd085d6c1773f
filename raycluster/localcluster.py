"""The embedded default "cluster": a Ray head plus N worker nodes on THIS machine.

What this module owns
---------------------
* ``LocalNodeLauncher`` starts, stops, kills and watches ONE local Ray node: a
  ``ray start ... --block`` process started in its own session (``start_new_session=True``), so
  its process group *is* the node. It knows nothing about clusters; a later Ray autoscaler node
  provider can reuse it as is.
* ``LocalCluster`` owns one head + workers built from such launchers under
  ``<state_dir>/local-cluster/``:

  - ``cluster.json``  the record (written atomically: temp file + fsync + rename, mode 0600):
    address, dashboard URL, auth settings, and for every node its pid/pgid/create time, role,
    Ray node id, log path and resources. ``LocalCluster.load(state_dir)`` reads it back, so
    ``stop()`` / ``kill_node()`` / ``add_worker()`` work from another process (``raycluster
    down`` in a new shell).
  - ``logs/<node>.log`` stdout+stderr of each ``ray start`` process (files, never pipes: Ray's
    daemons inherit them and would keep pipes open).
  - ``auth_token``      the cluster's Ray auth token (0600), see "Auth" below.
  - ``r/<node>/``       each node's own Ray ``--temp-dir`` (session dir, sockets, Ray's logs),
    when the path is short enough for Unix socket names (``_MAX_TEMP_DIR_CHARS``); otherwise
    under a short ``/tmp/rc-XXXX`` directory that is recorded and removed by ``stop()``. One
    temp dir per node, not one shared: Ray picks socket/log names in a shared session dir by
    "first name that does not exist yet" (``Node._make_inc_temp``), so two workers started at
    the same time can pick the same ``raylet.1`` socket and one never registers (seen here).
    ``start()`` keeps the previous cluster's dir as ``r.prev/`` for post-mortems.
  - ``.lock``           flock taken by every read-modify-write of the record.

  It only ever signals processes it started: a node's process group, the descendants of the node's
  root process, and processes that carry the node's ``RAYCLUSTER_LOCAL_NODE=<cluster>/<node>``
  environment tag (Ray workers inherit the raylet's environment but run in their own process
  groups, and are re-parented when a raylet dies). Never a cluster-wide stop command and never a kill by process name.

Auth (Ray 2.60 token authentication)
------------------------------------
Measured on this machine: ``ray start --head`` with ``RAY_AUTH_MODE`` unset enables token auth only
if a token already exists (``~/.ray/auth_token``, which any plain ``ray.init()`` creates as a side
effect), so whether a cluster gets auth depends on what ran before; a driver connecting with an
explicit address never auto-enables token auth and fails with "Failed to connect to Ray cluster"
against a token cluster. Ray also rewrites ``--node-ip-address=127.0.0.1`` to the host's routable
IP and the GCS/raylets listen on all interfaces, so the cluster is reachable from the network.

Decision: auth mode is explicit, never inherited. By default (``constants.LOCAL_AUTH_MODE =
"token"``) every cluster gets a fresh random token in ``local-cluster/auth_token`` (0600); every
node is started with ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH=<that file>`` (and without
``RAY_AUTH_TOKEN``), and the user's ``~/.ray/auth_token`` is neither read nor written. Drivers
must opt in before connecting: ``apply_driver_auth(state_dir)`` (or ``LocalCluster.connect()`` /
``.apply_driver_auth()``) sets those variables in ``os.environ`` and refreshes Ray's cached config
(``ray.init`` alone does not re-read them once ``ray`` has been imported);
``driver_env(state_dir)`` gives the variables for subprocesses. ``RAYCLUSTER_LOCAL_AUTH_MODE=
disabled`` starts nodes with ``RAY_AUTH_MODE=disabled`` instead. The dashboard HTTP API needs
``Authorization: Bearer <token>`` in token mode.

Node readiness is checked without a Ray driver: the head's dashboard state API
(``/api/v0/nodes``) lists registered nodes by ``--node-name``, which gives each node's Ray node id.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import psutil

from raycluster import constants as C
from raycluster.errors import LocalClusterError
from raycluster.ports import free_ports

__all__ = [
    "HEAD_ROLE",
    "WORKER_ROLE",
    "WORKER_RESOURCE",
    "NODE_LABEL",
    "ROLE_LABEL",
    "LocalNode",
    "LocalNodeLauncher",
    "LocalCluster",
    "apply_driver_auth",
    "driver_env",
    "detect_gpu_ids",
]

HEAD_ROLE = "head"
WORKER_ROLE = "worker"
# Custom resource every worker node gets (1 per node): tasks can target worker nodes with it.
WORKER_RESOURCE = "raycluster_worker"
# Ray node labels set on every node we start.
NODE_LABEL = "raycluster.io/local-node"
ROLE_LABEL = "raycluster.io/role"
# Environment tag on every node process (inherited by its Ray workers): "<cluster_id>/<node>".
TAG_ENV = "RAYCLUSTER_LOCAL_NODE"

RECORD_VERSION = 1
_CLUSTER_DIRNAME = "local-cluster"
_RECORD_NAME = "cluster.json"
_TOKEN_NAME = "auth_token"
# Ray puts Unix sockets at <temp_dir>/session_<date>_<time>_<us>_<pid>/sockets/<name>, the longest
# name being dash_MetricsHead / plasma_store.<n>; sun_path holds 107 bytes and that suffix takes up
# to 69 chars (7-digit pid), which leaves this much for a node's temp dir (<base>/w<index>).
_MAX_TEMP_DIR_CHARS = 38
_NODE_TEMP_SUFFIX_CHARS = 5  # "/w123"
_POLL_INTERVAL_S = 0.25
_HTTP_TIMEOUT_S = 5.0
_LOG_TAIL_BYTES = 4000
_CREATE_TIME_TOLERANCE_S = 0.05
# Environment that must not leak from the caller into our nodes unless the caller asks for it
# explicitly through ``env=`` (they would make nodes share identities or talk to another cluster).
_SCRUBBED_ENV = (
    "RAY_ADDRESS",
    "RAY_AUTH_TOKEN",
    "RAY_OVERRIDE_NODE_ID_FOR_TESTING",
    "RAY_CLOUD_INSTANCE_ID",
    "RAY_NODE_TYPE_NAME",
    TAG_ENV,
)


# ================================================================================== helpers
def _now_s() -> float:
    return time.time()


def detect_gpu_ids() -> list[str]:
    """Visible physical GPUs as CUDA ids (honours an existing CUDA_VISIBLE_DEVICES); [] if none."""
    try:
        with warnings.catch_warnings():  # "pynvml is deprecated, use nvidia-ml-py" FutureWarning
            warnings.simplefilter("ignore")
            import pynvml

        pynvml.nvmlInit()
        try:
            count = int(pynvml.nvmlDeviceGetCount())
        finally:
            with contextlib.suppress(Exception):
                pynvml.nvmlShutdown()
    except Exception:
        return []
    if count <= 0:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    return [str(i) for i in range(count)]


def _atomic_write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_json(path: Path) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LocalClusterError(f"unreadable local cluster record {path}: {exc}") from None


def _tail(path: Path | str | None, max_bytes: int = _LOG_TAIL_BYTES) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            return f.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


def _protected_pids() -> set[int]:
    """This process and its ancestors: never signalled, whatever tags they carry."""
    pids = {os.getpid()}
    with contextlib.suppress(psutil.Error):
        pids.update(p.pid for p in psutil.Process().parents())
    return pids


def _is_live(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _tagged_processes(tag: str) -> list[psutil.Process]:
    """Processes (of any parent) whose environment carries ``TAG_ENV=tag``."""
    out = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(TAG_ENV) == tag:
                out.append(proc)
        except (psutil.Error, OSError):
            continue
    return out


# ================================================================================== one node
class LocalNodeLauncher:
    """Starts / stops / kills ONE local node process and says whether it is alive.

    The node is ``argv`` run in its own session, so ``pgid == pid``; its output goes to
    ``log_path``. Liveness is by PID: ``waitpid(WNOHANG)`` when it is our child (which also
    reaps it), psutil (with the recorded create time, so a reused PID is not mistaken for the
    node, and zombies count as dead) otherwise. ``tag``, if given, is put in the node's
    environment as ``TAG_ENV`` so that its descendants can be found after re-parenting.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str] | None,
        env: Mapping[str, str] | None,
        log_path: Path | str,
        *,
        tag: str | None = None,
    ):
        self.name = name
        self.argv = list(argv) if argv is not None else None
        self.env = dict(env) if env is not None else None
        self.log_path = Path(log_path)
        self.tag = tag
        self.pid: int | None = None
        self.pgid: int | None = None
        self.create_time: float | None = None
        self._popen: subprocess.Popen | None = None
        self._exited = False

    # ---- construction from a record -------------------------------------------------------
    @classmethod
    def attach(
        cls,
        name: str,
        pid: int,
        pgid: int,
        create_time: float | None,
        log_path: Path | str,
        *,
        tag: str | None = None,
        popen: subprocess.Popen | None = None,
    ) -> "LocalNodeLauncher":
        """A launcher for a node started earlier (possibly by another process)."""
        launcher = cls(name, None, None, log_path, tag=tag)
        launcher.pid, launcher.pgid, launcher.create_time = pid, pgid, create_time
        launcher._popen = popen
        return launcher

    # ---- start ------------------------------------------------------------------------------
    def start(self) -> int:
        """Start the node process; return its pid. Does not wait for it to be ready."""
        if self.pid is not None:
            raise LocalClusterError(f"node {self.name} was already started (pid {self.pid})")
        if not self.argv:
            raise LocalClusterError(f"node {self.name} has no command to start")
        env = dict(self.env if self.env is not None else os.environ)
        if self.tag:
            env[TAG_ENV] = self.tag
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name}: "
                      f"{' '.join(self.argv)}\n".encode())
            log.flush()
            try:
                self._popen = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise LocalClusterError(f"cannot start node {self.name}: {exc}") from None
        self.pid = self._popen.pid
        self.pgid = self._popen.pid  # new session => new process group led by the child
        try:
            self.create_time = psutil.Process(self.pid).create_time()
        except psutil.Error:
            self.create_time = None
        return self.pid

    # ---- liveness ---------------------------------------------------------------------------
    def _root(self) -> psutil.Process | None:
        """The node's root process if it still exists and is the one we started."""
        if self.pid is None:
            return None
        try:
            proc = psutil.Process(self.pid)
            if self.create_time is not None and abs(proc.create_time() - self.create_time) > _CREATE_TIME_TOLERANCE_S:
                return None  # PID reused by something else
            return proc
        except psutil.Error:
            return None

    def is_alive(self) -> bool:
        if self.pid is None or self._exited:
            return False
        if self._popen is not None:
            alive = self._popen.poll() is None  # waitpid(WNOHANG); reaps our child
            self._exited = not alive
            return alive
        try:
            pid, _status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:  # our child (started by this process before a reload): reaped now
                self._exited = True
                return False
            # (0, 0): our child, still running; fall through to the create-time check.
        except ChildProcessError:
            pass  # not our child: ask psutil
        except OSError:
            pass
        root = self._root()
        return root is not None and _is_live(root)

    def reap(self) -> None:
        """Collect our child's exit status if it has exited (no-op for non-children)."""
        self.is_alive()

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the root process to exit; True if it did."""
        deadline = time.monotonic() + timeout_s
        while self.is_alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    # ---- what we own ------------------------------------------------------------------------
    def _group_is_ours(self) -> bool:
        """Whether signalling process group ``pgid`` can only hit our processes.

        Linux never reuses a PID that is still some process's PGID, so the group is ours as long
        as its leader (pid == pgid) is our root process or is gone.
        """
        if self.pgid is None:
            return False
        try:
            leader = psutil.Process(self.pgid)
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:
            return False
        if self.pgid != self.pid or self.create_time is None:
            return True
        try:
            return abs(leader.create_time() - self.create_time) <= _CREATE_TIME_TOLERANCE_S
        except psutil.Error:
            return True

    def processes(self) -> list[psutil.Process]:
        """Every live process of this node: root, its descendants, its process group members,
        and processes carrying its environment tag (this process and its ancestors excluded)."""
        found: dict[int, psutil.Process] = {}
        root = self._root()
        if root is not None:
            found[root.pid] = root
            with contextlib.suppress(psutil.Error):
                for child in root.children(recursive=True):
                    found[child.pid] = child
        if self.pgid is not None and self._group_is_ours():
            for proc in psutil.process_iter():
                try:
                    if os.getpgid(proc.pid) == self.pgid:
                        found.setdefault(proc.pid, proc)
                except (OSError, psutil.Error):
                    continue
        if self.tag:
            for proc in _tagged_processes(self.tag):
                found.setdefault(proc.pid, proc)
        protected = _protected_pids()
        return [p for pid, p in found.items() if pid not in protected and _is_live(p)]

    # ---- signals ----------------------------------------------------------------------------
    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the node's process group (ignored if it is gone or not provably ours)."""
        if self.pgid is None or not self._group_is_ours():
            return
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as exc:
            raise LocalClusterError(f"no permission to signal node {self.name} (pgid {self.pgid}): {exc}") from None

    def terminate(self) -> list[psutil.Process]:
        """SIGTERM the process group without waiting; return a snapshot of the node's processes
        taken before the signal (pass it to ``kill`` to catch re-parented descendants)."""
        snapshot = self.processes()
        self.signal_group(signal.SIGTERM)
        return snapshot

    def kill(self, snapshot: Iterable[psutil.Process] = ()) -> list[psutil.Process]:
        """SIGKILL the node now: its process group, every process of ``processes()`` (taken
        before signalling, so descendants are caught before they are re-parented) and
        ``snapshot``. Returns the processes that were signalled."""
        procs = {p.pid: p for p in snapshot}
        for p in self.processes():
            procs.setdefault(p.pid, p)
        self.signal_group(signal.SIGKILL)
        protected = _protected_pids()
        signalled = []
        for pid, proc in procs.items():
            if pid in protected:
                continue
            try:
                proc.send_signal(signal.SIGKILL)  # psutil refuses if the PID was reused
                signalled.append(proc)
            except psutil.Error:
                continue
        # A late tagged/reparented straggler (forked while we were signalling): one more sweep.
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
                signalled.append(proc)
        return signalled

    def stop(self, grace_s: float = C.LOCAL_NODE_STOP_GRACE_S) -> None:
        """SIGTERM, wait up to ``grace_s`` for the root to exit, then SIGKILL whatever is left."""
        stop_launchers([self], grace_s)

    def log_tail(self, max_bytes: int = _LOG_TAIL_BYTES) -> str:
        return _tail(self.log_path, max_bytes)


def _wait_gone(procs: Iterable[psutil.Process], launchers: Iterable[LocalNodeLauncher], timeout_s: float) -> list[psutil.Process]:
    """Wait until ``procs`` are gone (zombies count as gone) and reap our children; return survivors."""
    deadline = time.monotonic() + timeout_s
    pending = list(procs)
    launchers = list(launchers)
    while True:
        for launcher in launchers:
            launcher.reap()
        pending = [p for p in pending if _is_live(p)]
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(0.05)


def stop_launchers(launchers: Sequence[LocalNodeLauncher], grace_s: float) -> list[psutil.Process]:
    """Stop several nodes at once: SIGTERM all groups, wait up to ``grace_s`` for the roots, then
    SIGKILL every remaining process of every node. Returns processes still alive afterwards."""
    snapshots = {id(l): l.terminate() for l in launchers}
    deadline = time.monotonic() + max(0.0, grace_s)
    while time.monotonic() < deadline and any(l.is_alive() for l in launchers):
        time.sleep(0.05)
    signalled: list[psutil.Process] = []
    for launcher in launchers:
        signalled.extend(launcher.kill(snapshots[id(launcher)]))
        signalled.extend(p for p in snapshots[id(launcher)] if p not in signalled)
    return _wait_gone(signalled, launchers, C.LOCAL_NODE_KILL_WAIT_S)


# ================================================================================== records
@dataclass
class LocalNode:
    """One node of a local cluster, as recorded in cluster.json."""

    name: str
    role: str  # HEAD_ROLE | WORKER_ROLE
    pid: int
    pgid: int
    create_time: float | None
    log_path: str
    tag: str
    resources: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    gpu_ids: list[str] | None = None  # physical CUDA ids given to the node; None: logical GPUs
    ray_node_id: str | None = None
    started_at_s: float = 0.0
    killed: bool = False  # kill_node() was used on it
    alive: bool = False  # computed when read (by PID), not meaningful in the file

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LocalNode":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def _cluster_dir(state_dir: Path) -> Path:
    return Path(state_dir).expanduser().resolve() / _CLUSTER_DIRNAME


def _record_path(state_dir: Path) -> Path:
    return _cluster_dir(state_dir) / _RECORD_NAME


def read_record(state_dir: Path | str) -> dict | None:
    """The local cluster record under ``state_dir``, or None if there is none."""
    return _read_json(_record_path(Path(state_dir)))


# ================================================================================== driver auth
def driver_env(state_dir: Path | str) -> dict[str, str]:
    """Environment a driver subprocess needs to connect to the recorded local cluster ({} if none)."""
    record = read_record(state_dir)
    return _driver_env_from_record(record) if record else {}


def _driver_env_from_record(record: Mapping[str, Any]) -> dict[str, str]:
    mode = record.get("auth_mode") or "disabled"
    env = {"RAY_AUTH_MODE": mode}
    if mode == "token" and record.get("auth_token_path"):
        env["RAY_AUTH_TOKEN_PATH"] = str(record["auth_token_path"])
    return env


def apply_driver_auth(state_dir: Path | str) -> bool:
    """Make THIS process able to ``ray.init(address=...)`` the recorded local cluster.

    Sets RAY_AUTH_MODE (and RAY_AUTH_TOKEN_PATH, removing RAY_AUTH_TOKEN) in ``os.environ`` and
    refreshes Ray's cached config, which ``ray.init`` does not re-read by itself once ``ray`` has
    been imported. Call it before ``ray.init``; it does not touch a process already connected.
    Returns False when there is no record.
    """
    record = read_record(state_dir)
    if not record:
        return False
    _apply_env(_driver_env_from_record(record))
    return True


def _apply_env(env: Mapping[str, str]) -> None:
    os.environ.update(env)
    if env.get("RAY_AUTH_MODE") == "token":
        os.environ.pop("RAY_AUTH_TOKEN", None)
    else:
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    if "ray" not in sys.modules:
        return  # ray reads the environment when it is imported
    import ray

    if ray.is_initialized():
        return
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except Exception:  # private API moved: ray.init in a fresh process still works
        pass


# ================================================================================== cluster
class LocalCluster:
    """A Ray head + worker nodes on this machine, persisted under ``<state_dir>/local-cluster``."""

    def __init__(
        self,
        state_dir: Path | str,
        num_workers: int = 2,
        cpus_per_worker: int = 2,
        gpus_per_worker: int = 1,
        head_cpus: int = 0,
        object_store_bytes: int = C.LOCAL_OBJECT_STORE_BYTES,
        env: dict[str, str] | None = None,
        *,
        gpu_mode: str = "auto",
        gpu_ids: Sequence[str] | None = None,
        auth_mode: str | None = None,
    ):
        """``gpu_mode``: "auto" (physical GPUs if pynvml sees any, else logical), "physical"
        or "logical" (declared ``--num-gpus`` only, even on a GPU machine). ``gpu_ids``: the
        physical CUDA device ids to hand out (default: all visible ones); giving them implies
        physical mode. Each worker gets a disjoint slice of ``gpus_per_worker`` of them via
        CUDA_VISIBLE_DEVICES (fewer, possibly 0, when they run out). ``auth_mode``: "token" |
        "disabled" (default constants.LOCAL_AUTH_MODE)."""
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
        self.object_store_bytes = int(object_store_bytes)
        self.env = dict(env or {})
        self.gpu_mode = gpu_mode
        self.gpu_ids = [str(g) for g in gpu_ids] if gpu_ids is not None else None
        self.auth_mode = auth_mode
        self._record: dict | None = None
        self._popens: dict[str, subprocess.Popen] = {}  # our own children, by node name

    # ---- paths ------------------------------------------------------------------------------
    @property
    def cluster_dir(self) -> Path:
        return _cluster_dir(self.state_dir)

    @property
    def record_path(self) -> Path:
        return self.cluster_dir / _RECORD_NAME

    @property
    def logs_dir(self) -> Path:
        return self.cluster_dir / "logs"

    @property
    def token_path(self) -> Path:
        return self.cluster_dir / _TOKEN_NAME

    # ---- record -----------------------------------------------------------------------------
    @classmethod
    def load(cls, state_dir: Path | str) -> "LocalCluster | None":
        """The cluster recorded under ``state_dir`` (running or not), or None if no record."""
        record = read_record(state_dir)
        if record is None:
            return None
        cfg = record.get("config", {})
        lc = cls(
            state_dir,
            num_workers=cfg.get("num_workers", 0),
            cpus_per_worker=cfg.get("cpus_per_worker", 2),
            gpus_per_worker=cfg.get("gpus_per_worker", 1),
            head_cpus=cfg.get("head_cpus", 0),
            object_store_bytes=cfg.get("object_store_bytes", C.LOCAL_OBJECT_STORE_BYTES),
            env=record.get("env") or {},
            gpu_mode=cfg.get("gpu_mode", "auto"),
            gpu_ids=record.get("gpu_ids") if record.get("gpu_kind") == "physical" else None,
            auth_mode=record.get("auth_mode", "disabled"),
        )
        lc._record = record
        return lc

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.cluster_dir.mkdir(parents=True, exist_ok=True)
        with open(self.cluster_dir / ".lock", "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _refresh(self) -> dict | None:
        """Re-read the record (another process may have changed it) if it is ours."""
        disk = _read_json(self.record_path)
        if disk is None:
            if self._record is not None:
                self._record["removed"] = True
            return self._record
        if self._record is None or disk.get("cluster_id") == self._record.get("cluster_id"):
            self._record = disk
        return self._record

    def _save(self) -> None:
        assert self._record is not None
        _atomic_write_json(self.record_path, self._record)

    def _require_record(self) -> dict:
        record = self._refresh()
        if record is None or record.get("removed"):
            raise LocalClusterError(f"no local cluster is recorded under {self.cluster_dir}")
        return record

    def _launcher(self, node: LocalNode) -> LocalNodeLauncher:
        return LocalNodeLauncher.attach(
            node.name, node.pid, node.pgid, node.create_time, node.log_path,
            tag=node.tag, popen=self._popens.get(node.name),
        )

    def _nodes_from_record(self) -> list[LocalNode]:
        return [LocalNode.from_dict(d) for d in (self._record or {}).get("nodes", [])]

    def _put_node(self, node: LocalNode) -> None:
        nodes = [d for d in self._record["nodes"] if d["name"] != node.name]
        d = node.to_dict()
        d.pop("alive", None)
        nodes.append(d)
        self._record["nodes"] = nodes

    # ---- public properties ------------------------------------------------------------------
    @property
    def address(self) -> str:
        """GCS address ``127.0.0.1:<port>`` for ``ray.init(address=...)`` / ``ray start``."""
        return self._require_record()["address"]

    @property
    def dashboard_url(self) -> str:
        return self._require_record()["dashboard_url"]

    @property
    def auth_token_path(self) -> Path | None:
        p = self._require_record().get("auth_token_path")
        return Path(p) if p else None

    def driver_env(self) -> dict[str, str]:
        """Environment variables a driver subprocess needs to connect (auth)."""
        return _driver_env_from_record(self._require_record())

    def apply_driver_auth(self) -> None:
        """Set up THIS process's Ray auth for ``ray.init(address=self.address)``."""
        _apply_env(self.driver_env())

    def connect(self, **ray_init_kwargs: Any):
        """``apply_driver_auth()`` then ``ray.init(address=self.address, **ray_init_kwargs)``."""
        import ray

        self.apply_driver_auth()
        return ray.init(address=self.address, **ray_init_kwargs)

    # ---- status -----------------------------------------------------------------------------
    def nodes(self) -> list[LocalNode]:
        """Every recorded node (killed ones too) with ``alive`` computed by PID now."""
        with self._locked():
            self._refresh()
        if self._record is None:
            return []
        out = []
        for node in self._nodes_from_record():
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
        with self._locked():
            record = self._refresh()
        if record is None or record.get("removed"):
            return False
        return any(n.role == HEAD_ROLE and self._launcher(n).is_alive() for n in self._nodes_from_record())

    # ---- node commands ----------------------------------------------------------------------
    def _ray_start_argv(self) -> list[str]:
        ray_bin = Path(sys.executable).parent / "ray"
        if ray_bin.exists():
            return [str(ray_bin), "start"]
        return [sys.executable, "-m", "ray.scripts.scripts", "start"]

    def _common_args(self, record: Mapping[str, Any], name: str, temp_key: str,
                     labels: Mapping[str, str]) -> list[str]:
        temp_dir = Path(record["temp_dir"]) / temp_key
        temp_dir.mkdir(parents=True, exist_ok=True)
        return [
            "--block",
            f"--node-ip-address={C.LOCAL_NODE_IP}",
            f"--node-name={name}",
            f"--labels={','.join(f'{k}={v}' for k, v in labels.items())}",
            # Several nodes share this host. Ports whose default is a fixed number (worker ports
            # 10002-19999, dashboard agent http 52365) are made random; node manager, object
            # manager, agent grpc, runtime env agent and metrics ports are random by default.
            "--min-worker-port=0",
            "--max-worker-port=0",
            "--dashboard-agent-listen-port=0",
            f"--object-store-memory={self.object_store_bytes}",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
        ]

    def _node_env(self, record: Mapping[str, Any], extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        for key in _SCRUBBED_ENV:
            env.pop(key, None)
        env.update({
            "RAY_health_check_period_ms": str(C.LOCAL_HEALTH_CHECK_PERIOD_MS),
            "RAY_health_check_failure_threshold": str(C.LOCAL_HEALTH_CHECK_FAILURE_THRESHOLD),
            "RAY_USAGE_STATS_ENABLED": "0",
        })
        env.update(record.get("env") or {})
        env.pop("RAY_AUTH_TOKEN", None)
        env["RAY_AUTH_MODE"] = record["auth_mode"]
        if record["auth_mode"] == "token":
            env["RAY_AUTH_TOKEN_PATH"] = record["auth_token_path"]
        else:
            env.pop("RAY_AUTH_TOKEN_PATH", None)
        env.update(extra or {})
        return env

    def _new_node(self, record: dict, name: str, role: str, argv: list[str], env: dict[str, str],
                  resources: dict[str, float], labels: dict[str, str], gpu_ids: list[str] | None) -> tuple[LocalNode, LocalNodeLauncher]:
        log_path = self.logs_dir / f"{name}.log"
        tag = f"{record['cluster_id']}/{name}"
        launcher = LocalNodeLauncher(name, argv, env, log_path, tag=tag)
        launcher.start()
        if launcher._popen is not None:
            self._popens[name] = launcher._popen
        node = LocalNode(
            name=name, role=role, pid=launcher.pid, pgid=launcher.pgid, create_time=launcher.create_time,
            log_path=str(log_path), tag=tag, resources=resources, labels=labels, gpu_ids=gpu_ids,
            started_at_s=_now_s(),
        )
        self._put_node(node)
        self._save()  # record every pid as soon as it exists: a crash now still leaves it stoppable
        return node, launcher

    # ---- readiness --------------------------------------------------------------------------
    def _state_api_nodes(self, record: Mapping[str, Any]) -> list[dict] | None:
        """Nodes known to the GCS, via the head's dashboard; None while it does not answer."""
        url = f"{record['dashboard_url']}/api/v0/nodes?detail=1&limit=10000"
        req = urllib.request.Request(url)
        if record.get("auth_mode") == "token":
            try:
                token = Path(record["auth_token_path"]).read_text().strip()
            except OSError:
                return None
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=_HTTP_TIMEOUT_S) as resp:
                body = json.loads(resp.read().decode())
            return list(body["data"]["result"]["result"])
        except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError):
            return None

    def _wait_registered(self, record: Mapping[str, Any], pending: Mapping[str, LocalNodeLauncher],
                         timeout_s: float) -> dict[str, dict]:
        """Wait until every node in ``pending`` is ALIVE in the GCS; return name -> state entry."""
        deadline = time.monotonic() + timeout_s
        found: dict[str, dict] = {}
        while True:
            for name, launcher in pending.items():
                if name not in found and not launcher.is_alive():
                    raise LocalClusterError(
                        f"local node {name} exited during startup; tail of {launcher.log_path}:\n"
                        f"{launcher.log_tail()}")
            entries = self._state_api_nodes(record)
            for entry in entries or []:
                name = entry.get("node_name")
                if name in pending and entry.get("state") == "ALIVE":
                    found[name] = entry
            if len(found) == len(pending):
                return found
            if time.monotonic() >= deadline:
                missing = [n for n in pending if n not in found]
                tails = "\n".join(f"--- {pending[n].log_path}:\n{pending[n].log_tail()}" for n in missing)
                why = "dashboard state API never answered" if entries is None else "not registered"
                raise LocalClusterError(
                    f"local node(s) {missing} not up after {timeout_s:.0f}s ({why} at "
                    f"{record['dashboard_url']}):\n{tails}")
            time.sleep(_POLL_INTERVAL_S)

    # ---- start ------------------------------------------------------------------------------
    def _pick_temp_dir(self) -> tuple[str, bool]:
        preferred = self.cluster_dir / "r"
        if len(str(preferred)) + _NODE_TEMP_SUFFIX_CHARS <= _MAX_TEMP_DIR_CHARS:
            preferred.mkdir(parents=True, exist_ok=True)
            return str(preferred), False
        base = "/tmp" if os.access("/tmp", os.W_OK) else tempfile.gettempdir()
        return tempfile.mkdtemp(prefix="rc-", dir=base), True

    def _gpu_plan(self) -> tuple[str, list[str]]:
        if self.gpu_mode == "logical":
            return "logical", []
        if self.gpu_ids is not None:
            return "physical", list(self.gpu_ids)
        ids = detect_gpu_ids()
        if self.gpu_mode == "physical" and not ids:
            raise LocalClusterError("gpu_mode='physical' but no GPU is visible", field="gpu_mode")
        return ("physical", ids) if ids else ("logical", [])

    def start(self) -> "LocalCluster":
        """Start head + ``num_workers`` workers and wait until all are registered with the GCS.

        Raises LocalClusterError (after stopping what it started) if a node does not come up in
        constants.LOCAL_NODE_START_TIMEOUT_S, or if a live cluster is already recorded here.
        """
        with self._locked():
            existing = LocalCluster.load(self.state_dir)
            if existing is not None:
                existing._popens = dict(self._popens)
                if any(n.role == HEAD_ROLE and existing._launcher(n).is_alive()
                       for n in existing._nodes_from_record()):
                    raise LocalClusterError(
                        f"a local cluster is already running at {existing._record.get('address')} "
                        f"(record {self.record_path}); stop it first")
                # Leftovers of a crashed/killed cluster: stop exactly them, by their record.
                existing._stop_locked()
            self._record = None
            self._popens = {}
            self._start_locked()
        return self

    def _start_locked(self) -> None:
        t0 = time.monotonic()
        self.cluster_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        old_temp, prev_temp = self.cluster_dir / "r", self.cluster_dir / "r.prev"
        if old_temp.is_dir():  # Ray dirs of the previous (stopped) cluster: keep one generation
            shutil.rmtree(prev_temp, ignore_errors=True)
            with contextlib.suppress(OSError):
                old_temp.rename(prev_temp)
        cluster_id = secrets.token_hex(3)
        temp_dir, temp_dir_is_fallback = self._pick_temp_dir()
        gpu_kind, gpu_ids = self._gpu_plan()
        token_path = None
        if self.auth_mode == "token":
            token_path = str(self.token_path)
            fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            os.chmod(token_path, 0o600)
        self._record = {
            "version": RECORD_VERSION,
            "cluster_id": cluster_id,
            "address": None,
            "dashboard_url": None,
            "auth_mode": self.auth_mode,
            "auth_token_path": token_path,
            "temp_dir": temp_dir,
            "temp_dir_is_fallback": temp_dir_is_fallback,
            "gpu_kind": gpu_kind,  # "physical" | "logical"
            "gpu_ids": gpu_ids,
            "env": self.env,
            "config": {
                "num_workers": self.num_workers,
                "cpus_per_worker": self.cpus_per_worker,
                "gpus_per_worker": self.gpus_per_worker,
                "head_cpus": self.head_cpus,
                "object_store_bytes": self.object_store_bytes,
                "gpu_mode": self.gpu_mode,
            },
            "next_worker_index": 1,
            "created_at_s": _now_s(),
            "creator_pid": os.getpid(),
            "nodes": [],
        }
        try:
            self._start_head(self._record)
            self._record["head_ready_s"] = round(time.monotonic() - t0, 3)
            self._save()
            launchers = {}
            for _ in range(self.num_workers):
                node, launcher = self._launch_worker(self._record)
                launchers[node.name] = launcher
            self._register(self._record, launchers)
            self._record["ready_s"] = round(time.monotonic() - t0, 3)
            self._save()
        except BaseException:
            with contextlib.suppress(Exception):
                self._stop_locked()
            raise

    def _start_head(self, record: dict) -> None:
        head_env_extra = {"CUDA_VISIBLE_DEVICES": ""} if record["gpu_kind"] == "physical" else {}
        has_client = importlib.util.find_spec("grpc") is not None
        name = f"rc-{record['cluster_id']}-head"
        last_error: LocalClusterError | None = None
        for attempt in range(3):  # a freshly picked port can be taken before Ray binds it
            gcs_port, dashboard_port, client_port = free_ports(3)
            record["gcs_port"] = gcs_port
            record["dashboard_port"] = dashboard_port
            record["address"] = f"{C.LOCAL_NODE_IP}:{gcs_port}"
            record["dashboard_url"] = f"http://127.0.0.1:{dashboard_port}"
            labels = {NODE_LABEL: name, ROLE_LABEL: HEAD_ROLE}
            argv = self._ray_start_argv() + [
                "--head",
                f"--port={gcs_port}",
                f"--num-cpus={self.head_cpus}",
                "--num-gpus=0",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard_port}",
            ] + ([f"--ray-client-server-port={client_port}"] if has_client else []) + self._common_args(record, name, "h", labels)
            record["client_server_port"] = client_port if has_client else None
            resources = {"CPU": float(self.head_cpus), "GPU": 0.0}
            node, launcher = self._new_node(record, name, HEAD_ROLE, argv, self._node_env(record, head_env_extra),
                                            resources, labels, [] if record["gpu_kind"] == "physical" else None)
            try:
                self._register(record, {name: launcher})
                return
            except LocalClusterError as exc:
                last_error = exc
                stop_launchers([launcher], 0.0)
                record["nodes"] = [d for d in record["nodes"] if d["name"] != name]
                self._save()
                if "already in use" not in exc.message.lower() and "address in use" not in exc.message.lower():
                    raise
        assert last_error is not None
        raise last_error

    def _register(self, record: dict, launchers: Mapping[str, LocalNodeLauncher]) -> None:
        entries = self._wait_registered(record, launchers, C.LOCAL_NODE_START_TIMEOUT_S)
        for node in self._nodes_from_record():
            entry = entries.get(node.name)
            if entry is not None:
                node.ray_node_id = entry.get("node_id")
                self._put_node(node)
        self._save()

    def _free_gpu_ids(self, record: Mapping[str, Any]) -> list[str]:
        used = set()
        for node in self._nodes_from_record():
            if node.gpu_ids and self._launcher(node).is_alive():
                used.update(node.gpu_ids)
        return [g for g in record.get("gpu_ids", []) if g not in used]

    def _launch_worker(self, record: dict, *, num_cpus: int | None = None, num_gpus: int | None = None,
                       resources: Mapping[str, float] | None = None, labels: Mapping[str, str] | None = None,
                       env: Mapping[str, str] | None = None) -> tuple[LocalNode, LocalNodeLauncher]:
        index = int(record.get("next_worker_index", 1))
        record["next_worker_index"] = index + 1
        name = f"rc-{record['cluster_id']}-w{index}"
        cpus = self.cpus_per_worker if num_cpus is None else int(num_cpus)
        want_gpus = self.gpus_per_worker if num_gpus is None else int(num_gpus)
        extra_env: dict[str, str] = {}
        gpu_ids: list[str] | None = None
        if record["gpu_kind"] == "physical":
            gpu_ids = self._free_gpu_ids(record)[:want_gpus]
            gpus = len(gpu_ids)
            extra_env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
        else:
            gpus = want_gpus
        extra_env.update(env or {})
        node_labels = {NODE_LABEL: name, ROLE_LABEL: WORKER_ROLE, **(labels or {})}
        custom = {WORKER_RESOURCE: 1.0, **{k: float(v) for k, v in (resources or {}).items()}}
        argv = self._ray_start_argv() + [
            f"--address={record['address']}",
            f"--num-cpus={cpus}",
            f"--num-gpus={gpus}",
            f"--resources={json.dumps(custom)}",
        ] + self._common_args(record, name, f"w{index}", node_labels)
        all_resources = {"CPU": float(cpus), "GPU": float(gpus), **custom}
        return self._new_node(record, name, WORKER_ROLE, argv, self._node_env(record, extra_env),
                              all_resources, node_labels, gpu_ids)

    def add_worker(self, num_cpus: int | None = None, num_gpus: int | None = None,
                   resources: Mapping[str, float] | None = None, labels: Mapping[str, str] | None = None,
                   env: Mapping[str, str] | None = None) -> LocalNode:
        """Start one more worker node (defaults: cpus_per_worker / gpus_per_worker; physical GPUs
        are taken from those no live worker holds) and wait until it is registered."""
        with self._locked():
            record = self._require_record()
            node, launcher = self._launch_worker(record, num_cpus=num_cpus, num_gpus=num_gpus,
                                                 resources=resources, labels=labels, env=env)
            try:
                self._register(record, {node.name: launcher})
            except BaseException:
                stop_launchers([launcher], 0.0)
                record["nodes"] = [d for d in record["nodes"] if d["name"] != node.name]
                self._save()
                raise
        return self.node(node.name)

    def kill_node(self, name_or_node_id: str) -> LocalNode:
        """SIGKILL one node's whole process group and process tree now (simulates node loss).
        The node stays in the record, marked ``killed``."""
        with self._locked():
            self._require_record()
            for node in self._nodes_from_record():
                if name_or_node_id in (node.name, node.ray_node_id):
                    break
            else:
                raise LocalClusterError(f"no node {name_or_node_id!r} in the local cluster", field="node")
            launcher = self._launcher(node)
            survivors = _wait_gone(launcher.kill(), [launcher], C.LOCAL_NODE_KILL_WAIT_S)
            node.killed = True
            self._put_node(node)
            self._save()
        if survivors:
            raise LocalClusterError(f"node {node.name}: processes {[p.pid for p in survivors]} survived SIGKILL")
        node.alive = False
        return node

    # ---- stop -------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop exactly the processes of this cluster and remove its record. Idempotent; works
        from any process (via the record)."""
        with self._locked():
            self._stop_locked()

    def _stop_locked(self) -> None:
        record = self._refresh()
        if record is None:
            return
        nodes = self._nodes_from_record()
        # Workers first in the list so that their SIGTERM goes out just before the head's.
        nodes.sort(key=lambda n: n.role == HEAD_ROLE)
        launchers = [self._launcher(n) for n in nodes]
        survivors = stop_launchers(launchers, C.LOCAL_NODE_STOP_GRACE_S) if launchers else []
        for launcher in launchers:
            launcher.reap()
        if survivors:
            raise LocalClusterError(
                f"local cluster {record.get('cluster_id')}: processes {[p.pid for p in survivors]} survived "
                f"SIGKILL; record kept at {self.record_path}")
        if record.get("temp_dir_is_fallback") and record.get("temp_dir"):
            temp_dir = Path(record["temp_dir"])
            if temp_dir.name.startswith("rc-"):
                shutil.rmtree(temp_dir, ignore_errors=True)
        disk = _read_json(self.record_path)
        if disk is not None and disk.get("cluster_id") == record.get("cluster_id"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.record_path)
            token = record.get("auth_token_path")
            if token:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(token)
        self._popens.clear()
        record["removed"] = True

    # ---- context manager --------------------------------------------------------------------
    def __enter__(self) -> "LocalCluster":
        if self._record is None or self._record.get("removed"):
            self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        addr = (self._record or {}).get("address")
        return f"LocalCluster(state_dir={str(self.state_dir)!r}, address={addr!r})"
