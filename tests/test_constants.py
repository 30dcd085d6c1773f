"""Environment overrides of raycluster/constants.py (pure, no cluster)."""

from __future__ import annotations

import pytest

from raycluster import constants as C


@pytest.mark.parametrize("raw,expected", [
    (None, True), ("", True), ("1", True), ("true", True), ("YES", True), (" on ", True),
    ("0", False), ("False", False), ("no", False), ("off", False),
])
def test_env_bool(monkeypatch, raw, expected):
    if raw is None:
        monkeypatch.delenv("RAYCLUSTER_SOME_FLAG", raising=False)
    else:
        monkeypatch.setenv("RAYCLUSTER_SOME_FLAG", raw)
    assert C._env_bool("SOME_FLAG", True) is expected


@pytest.mark.parametrize("raw", ["2", "maybe", "enabled"])
def test_env_bool_rejects_anything_else_naming_the_variable(monkeypatch, raw):
    monkeypatch.setenv("RAYCLUSTER_SOME_FLAG", raw)
    with pytest.raises(ValueError, match="RAYCLUSTER_SOME_FLAG"):
        C._env_bool("SOME_FLAG", False)


def test_direct_ingress_env_pins_serve_to_exactly_the_api_port():
    from raycluster.api import _direct_ingress_env

    env = _direct_ingress_env(8123)
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

    from raycluster.api import _serve_listener_reuses_address

    saved = http_util.socket
    try:
        assert _serve_listener_reuses_address() is True
        with http_util.socket.socket(http_util.socket.AF_INET, http_util.socket.SOCK_STREAM) as sock:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        assert _serve_listener_reuses_address() is True  # idempotent
    finally:
        http_util.socket = saved
