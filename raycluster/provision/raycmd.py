"""How ``ray up`` / ``ray down`` run commands on our head node: on this machine, as plain processes.

Owns: ``LocalCommandRunner`` (Ray's ``CommandRunnerInterface`` for an external provider): a command
is run with ``bash -c`` here, its output written to a log file (never a pipe a daemon could keep
open) and, once it ends, shown on ``ray up``'s terminal (as Ray's SSH runner shows a remote command's
output: the head start command's API/dashboard URLs and token paths), files "synced up" are copied. ``ray down`` sends ``ray stop`` — which would stop every Ray
process of the user on this machine, other clusters included — so that one command is replaced by
``raycluster down`` for the cluster's state dir: it stops exactly the processes we started and gives
back every rental.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from ray.autoscaler.command_runner import CommandRunnerInterface

_RAY_STOP = re.compile(r"(^|[;&|]\s*|\s)ray stop(\s+--force)?(?=\s*($|[;&|]))")


def _expand(path: str) -> str:
    return os.path.expanduser(os.path.expandvars(path))


class LocalCommandRunner(CommandRunnerInterface):
    def __init__(self, log_prefix: str, node_id: str, state_dir: str, log_dir: Path):
        self.log_prefix, self.node_id = log_prefix, node_id
        self.state_dir = state_dir
        self.log_path = Path(log_dir) / f"ray-up-{node_id}.log"

    def _rewrite(self, cmd: str) -> str:
        down = f"{shlex.quote(sys.executable)} -m raycluster.cli --state-dir {shlex.quote(self.state_dir)} down"
        return _RAY_STOP.sub(lambda m: f"{m.group(1)}{down}", cmd)

    def run(self, cmd: str | None = None, timeout: int = 120, exit_on_fail: bool = False, port_forward=None,
            with_output: bool = False, environment_variables: dict[str, Any] | None = None, run_env: str = "auto",
            ssh_options_override_ssh_key: str = "", shutdown_after_run: bool = False) -> str:
        if not cmd:
            return ""
        env = dict(os.environ)
        # (as Ray's own runners pass them: JSON for anything but a string)
        env.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (environment_variables or {}).items()})
        # our console scripts (raycluster, ray) are where this Python is, activated or not
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n$ {cmd}\n".encode())
            log.flush()
            start = log.tell()
            proc = subprocess.run(["bash", "-c", self._rewrite(cmd)], env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE if with_output else log, stderr=log,
                                  timeout=max(timeout, 600))
        if not with_output:  # shown as Ray's SSH runner shows a remote command's output (the head's URLs)
            with open(self.log_path, "rb") as log:
                log.seek(start)
                out = log.read().decode(errors="replace")
            if out.strip():
                sys.stdout.write(out if out.endswith("\n") else out + "\n")
                sys.stdout.flush()
        if proc.returncode != 0:
            if exit_on_fail:
                sys.exit(proc.returncode)
            raise subprocess.CalledProcessError(proc.returncode, cmd)
        return proc.stdout.decode() if with_output else ""

    def run_rsync_up(self, source: str, target: str, options: dict[str, Any] | None = None) -> None:
        src, dst = _expand(source), _expand(target)
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        if os.path.isdir(src):
            shutil.copytree(src, dst, dirs_exist_ok=True)
        elif os.path.abspath(src) != os.path.abspath(dst):
            shutil.copyfile(src, dst)

    def run_rsync_down(self, source: str, target: str, options: dict[str, Any] | None = None) -> None:
        self.run_rsync_up(source, target, options)

    def remote_shell_command_str(self) -> str:
        return "bash\n"

    def run_init(self, *, as_head: bool, file_mounts: dict[str, str], sync_run_yet: bool) -> bool | None:
        return None
