"""Free-port helpers (best effort: a port found free can be taken before it is used).

Owns: picking free TCP ports and checking whether one is free — for the local cluster's Ray
ports, the torch.distributed rendezvous, the API and Serve proxy ports, tests and benchmarks.
"""

from __future__ import annotations

import socket


def free_ports(count: int, host: str = "") -> list[int]:
    """``count`` distinct TCP ports free on ``host`` ("" = all interfaces) right now."""
    socks: list[socket.socket] = []
    try:
        while len(socks) < count:
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((host, 0))  # held until all are found, so the ports are distinct
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port(host: str = "") -> int:
    return free_ports(1, host)[0]


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (SO_REUSEADDR, as servers bind)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False
