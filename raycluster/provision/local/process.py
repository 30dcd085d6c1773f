"""Local node processes: start, stop, kill and watch ONE ``ray start --block`` process tree.

Owns: ``LocalNodeLauncher`` — the node is ``argv`` run in its own session (``start_new_session``),
so its process group *is* the node; its output goes to a log file (never a pipe: Ray's daemons
inherit it). Liveness is by PID: ``waitpid(WNOHANG)`` when it is our child (which also reaps it),
psutil (with the recorded create time, so a reused PID is not mistaken for the node, and zombies
count as dead) otherwise. ``tag``, if given, is put in the node's environment as ``TAG_ENV`` so its
descendants can be found after re-parenting (Ray workers inherit the raylet's environment but run
in their own process groups). It only ever signals processes it started: the node's process
group, the descendants of its root process and the processes carrying its tag — never a
cluster-wide stop command and never a kill by process name. Knows nothing about clusters: every
market that runs nodes on this host reuses it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import psutil

from raycluster import constants as C
from raycluster.errors import LocalClusterError
from raycluster.util.files import tail

# Environment tag on every node process (inherited by its Ray workers): "<cluster_id>/<node>".
TAG_ENV = "RAYCLUSTER_LOCAL_NODE"
LOG_TAIL_BYTES = 4000
_CREATE_TIME_TOLERANCE_S = 0.05


def log_tail(path: Path | str | None, max_bytes: int = LOG_TAIL_BYTES) -> str:
    if not path:
        return ""
    try:
        return tail(path, max_bytes=max_bytes)
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
    """Starts / kills ONE local node process and says whether it is alive (see the module doc)."""

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

    def log_tail(self, max_bytes: int = LOG_TAIL_BYTES) -> str:
        return log_tail(self.log_path, max_bytes)


def wait_gone(procs: Iterable[psutil.Process], launchers: Iterable[LocalNodeLauncher], timeout_s: float) -> list[psutil.Process]:
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
    return wait_gone(signalled, launchers, C.LOCAL_NODE_KILL_WAIT_S)
