"""The local cluster's record on disk: ``<state_dir>/local-cluster/``.

Owns the layout and the record format:

* ``cluster.json`` — address, dashboard URL, auth settings, and for every node its pid/pgid/create
  time, role, Ray node id, log path and resources (written atomically, mode 0600), so that
  ``stop()`` / ``kill_node()`` / ``add_worker()`` work from another process (``raycluster down``);
* ``logs/<node>.log`` — stdout+stderr of each ``ray start`` process;
* ``auth_token`` — the cluster's Ray auth token (0600);
* ``r/<node>/`` — each node's own Ray ``--temp-dir`` when the path is short enough for Unix socket
  names, else a short ``/tmp/rc-XXXX`` recorded and removed at stop. One temp dir per node: Ray picks
  socket names in a shared session dir by "first name that does not exist yet", so two workers
  started together can pick the same ``raylet.1`` socket and one never registers (seen here);
* ``.lock`` — flock taken by every read-modify-write of the record.

``ClusterRecord`` is one cluster's record as a part with its own state: the record read (or made)
by this process, re-read under the lock before a change (another process may have changed it),
saved atomically, and its node entries.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from raycluster.errors import LocalClusterError
from raycluster.util.files import atomic_write_json

HEAD_ROLE = "head"
WORKER_ROLE = "worker"
RECORD_VERSION = 1
CLUSTER_DIRNAME = "local-cluster"
RECORD_NAME = "cluster.json"
TOKEN_NAME = "auth_token"
# Ray puts Unix sockets at <temp_dir>/session_<date>_<time>_<us>_<pid>/sockets/<name>, the longest
# name being dash_MetricsHead / plasma_store.<n>; sun_path holds 107 bytes and that suffix takes up
# to 69 chars (7-digit pid), which leaves this much for a node's temp dir (<base>/w<index>).
_MAX_TEMP_DIR_CHARS = 38
_NODE_TEMP_SUFFIX_CHARS = 5  # "/w123"


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
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def cluster_dir(state_dir: Path | str) -> Path:
    return Path(state_dir).expanduser().resolve() / CLUSTER_DIRNAME


def record_path(state_dir: Path | str) -> Path:
    return cluster_dir(state_dir) / RECORD_NAME


def read_json(path: Path) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LocalClusterError(f"unreadable local cluster record {path}: {exc}") from None


def read_record(state_dir: Path | str) -> dict | None:
    """The local cluster record under ``state_dir``, or None if there is none."""
    return read_json(record_path(state_dir))


def pick_temp_dir(base_dir: Path) -> tuple[str, bool]:
    """(the nodes' temp dir root, whether it is a /tmp fallback to remove at stop)."""
    preferred = base_dir / "r"
    if len(str(preferred)) + _NODE_TEMP_SUFFIX_CHARS <= _MAX_TEMP_DIR_CHARS:
        preferred.mkdir(parents=True, exist_ok=True)
        return str(preferred), False
    base = "/tmp" if os.access("/tmp", os.W_OK) else tempfile.gettempdir()
    return tempfile.mkdtemp(prefix="rc-", dir=base), True


class ClusterRecord:
    """The record of the local cluster under ``cluster_dir``: ``data`` (None until read or made;
    ``removed`` set once it is gone from disk), the lock every read-modify-write takes, its nodes."""

    def __init__(self, cluster_dir: Path):
        self.dir = cluster_dir
        self.path = cluster_dir / RECORD_NAME
        self.data: dict | None = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def refresh(self) -> dict | None:
        """Re-read the record (another process may have changed it) if it is ours."""
        disk = read_json(self.path)
        if disk is None:
            if self.data is not None:
                self.data["removed"] = True
            return self.data
        if self.data is None or disk.get("cluster_id") == self.data.get("cluster_id"):
            self.data = disk
        return self.data

    def save(self) -> None:
        assert self.data is not None
        atomic_write_json(self.path, self.data)

    def require(self) -> dict:
        """The record, re-read; LocalClusterError when no live cluster is recorded."""
        if (data := self.refresh()) is None or data.get("removed"):
            raise LocalClusterError(f"no local cluster is recorded under {self.dir}")
        return data

    def nodes(self) -> list[LocalNode]:
        return [LocalNode.from_dict(d) for d in (self.data or {}).get("nodes", [])]

    def put_node(self, node: LocalNode) -> None:
        d = node.to_dict()
        d.pop("alive", None)
        self.data["nodes"] = [n for n in self.data["nodes"] if n["name"] != node.name] + [d]

    def drop_node(self, name: str) -> None:
        self.data["nodes"] = [d for d in self.data["nodes"] if d["name"] != name]
        self.save()
