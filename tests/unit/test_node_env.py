"""The environment a local node process starts with (provision/raystart.py: node_env)."""

from raycluster.provision.raystart import node_env


def test_a_local_node_gets_the_quieter_log_monitor_unless_the_user_set_one(monkeypatch):
    monkeypatch.delenv("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", raising=False)
    env = node_env("token", "/t/token")
    assert env["RAY_LOG_MONITOR_MANY_FILES_THRESHOLD"] == "0"
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == "/t/token"
    monkeypatch.setenv("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", "500")
    assert node_env("disabled", None)["RAY_LOG_MONITOR_MANY_FILES_THRESHOLD"] == "500"
    assert "RAY_AUTH_TOKEN_PATH" not in node_env("disabled", "/t/token")
