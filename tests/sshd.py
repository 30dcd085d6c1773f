"""A real SSH server on loopback for the SSH market's tests: asyncssh's own server, key auth only,
running every command it is sent with ``/bin/sh -c`` on this machine (a real SSH protocol exchange:
host key, client key, channels, exit status — not a mock).

``python -m tests.sshd --dir DIR`` writes DIR/host_key, DIR/client_key (+ .pub), DIR/known_hosts
(this server's key for [127.0.0.1]:PORT), DIR/wrong_known_hosts (another key for it) and DIR/port
once it listens; it serves until killed. ``start(dir)`` / ``stop(proc)`` run it from a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


async def _handle(process) -> None:
    local = await asyncio.create_subprocess_shell(process.command or "true", stdin=asyncio.subprocess.PIPE,
                                                  stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    await process.redirect(stdin=local.stdin, stdout=local.stdout, stderr=local.stderr)
    process.exit(await local.wait())


async def _serve(d: Path) -> None:
    import asyncssh

    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    other_key = asyncssh.generate_private_key("ssh-ed25519")
    host_key.write_private_key(str(d / "host_key"))
    client_key.write_private_key(str(d / "client_key"))
    client_key.write_public_key(str(d / "client_key.pub"))
    os.chmod(d / "client_key", 0o600)
    server = await asyncssh.create_server(
        asyncssh.SSHServer, "127.0.0.1", 0, server_host_keys=[str(d / "host_key")],
        authorized_client_keys=str(d / "client_key.pub"), process_factory=_handle, password_auth=False,
        kbdint_auth=False)
    port = server.sockets[0].getsockname()[1]
    pub = host_key.export_public_key("openssh").decode().strip()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {pub}\n")
    other = other_key.export_public_key("openssh").decode().strip()
    (d / "wrong_known_hosts").write_text(f"[127.0.0.1]:{port} {other}\n")
    (d / "port").write_text(str(port))
    await asyncio.Event().wait()


def start(d: Path, timeout_s: float = 30.0) -> tuple[subprocess.Popen, int]:
    d.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "tests.sshd", "--dir", str(d)],
                            cwd=str(Path(__file__).resolve().parents[1]), start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while not (d / "port").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError("the test SSH server did not start")
        time.sleep(0.1)
    return proc, int((d / "port").read_text())


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    asyncio.run(_serve(Path(ap.parse_args().dir)))
