"""Ray Serve 2.60 compatibility: the settings and the one patch the API's direct ingress needs.

Owns: ``direct_ingress_env`` (the Serve settings, read from the environment of its controller and
replica processes, that make the ingress replica listen on exactly the API port) and
``serve_listener_reuses_address`` (SO_REUSEADDR on the direct-ingress listener, which Serve 2.60
binds without it). Kept alone so that an upgrade of Ray has one place to check; its tests are
beside the API's.
"""

from __future__ import annotations

import logging
import socket

from raycluster import constants as C

log = logging.getLogger("raycluster.api")


class _ReuseAddrSockets:
    """Stands in for the ``socket`` module inside ``ray.serve._private.http_util``: the same, except
    that the sockets it makes have SO_REUSEADDR (what servers normally set; it never lets two
    listeners share a port)."""

    rc_reuse_addr = True

    def __getattr__(self, name: str):
        return getattr(socket, name)

    @staticmethod
    def socket(*args, **kwargs):
        sock = socket.socket(*args, **kwargs)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return sock


def serve_listener_reuses_address() -> bool:
    """Work around Ray Serve 2.60 binding the direct-ingress listener without SO_REUSEADDR.

    Without it, a replica replacing a crashed one cannot bind the API port while the crashed
    replica's connections sit in TIME_WAIT (60 s on Linux): the API stayed down ~60 s after a
    replica crash; with it, as long as Serve takes to start a replica (a few seconds). Only this
    replica process is affected. Returns False (and changes nothing) if Serve's module is not laid
    out as expected — then the only cost is the slower recovery.
    """
    try:
        from ray.serve._private import http_util
    except ImportError:
        return False
    current = getattr(http_util, "socket", None)
    if getattr(current, "rc_reuse_addr", False):
        return True
    if current is None or not hasattr(current, "socket") or not hasattr(http_util, "start_asgi_http_server"):
        log.warning("ray.serve._private.http_util changed: API replica restarts may wait for TIME_WAIT")
        return False
    http_util.socket = _ReuseAddrSockets()
    return True


def direct_ingress_env(port: int) -> dict[str, str]:
    """Ray Serve settings (read from the environment of its controller and replica processes) that
    make the ingress replica listen on exactly ``port``: the port range is that one port, a released
    port is reusable at once (no quarantine: no load balancer holds a stale entry) and a stopping
    replica drains for API_DRAIN_S instead of 30 s."""
    return {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),  # exclusive
            "RAY_SERVE_PORT_QUARANTINE_S": "0",
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(C.API_DRAIN_S)}
