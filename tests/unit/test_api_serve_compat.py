"""The Ray Serve 2.60 compatibility of the API (``raycluster/api/_serve_compat.py``), no cluster.
The API's behaviour on a real cluster is tested in tests/cluster/test_api.py."""

from __future__ import annotations


def test_direct_ingress_env_pins_serve_to_exactly_the_api_port():
    from raycluster.api._serve_compat import direct_ingress_env

    env = direct_ingress_env(8123)
    assert env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
    # Serve allocates from range(MIN, MAX): exactly one port, the API's
    assert list(range(int(env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"]),
                      int(env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]))) == [8123]
    assert float(env["RAY_SERVE_PORT_QUARANTINE_S"]) == 0


def test_serve_listener_gets_so_reuseaddr():
    """The workaround for Serve binding its direct-ingress socket without SO_REUSEADDR applies to
    the Serve version installed here (if Serve's module changes, this fails loudly in CI)."""
    import socket

    from ray.serve._private import http_util

    from raycluster.api._serve_compat import serve_listener_reuses_address

    saved = http_util.socket
    try:
        assert serve_listener_reuses_address() is True
        with http_util.socket.socket(http_util.socket.AF_INET, http_util.socket.SOCK_STREAM) as sock:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        assert serve_listener_reuses_address() is True  # idempotent
    finally:
        http_util.socket = saved
