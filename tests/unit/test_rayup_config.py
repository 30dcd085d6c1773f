"""``ray up``/``ray down`` configs (provision/rayup.py: validate, elastic_config): the repo's
ray-cluster.yaml is valid and describes the elastic cluster it says; every bad key is refused naming
it, before anything is made."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from raycluster.provision.market.base import MarketConfigError
from raycluster.provision.rayup import elastic_config, validate

ROOT = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((ROOT / "ray-cluster.yaml").read_text())


def test_the_repo_config_is_valid_and_describes_an_elastic_cluster(tmp_path):
    cfg = copy.deepcopy(CONFIG)
    cfg["provider"]["raycluster_state_dir"] = str(tmp_path)
    elastic, state_dir, head_cpus = elastic_config(cfg, "head-abc")
    assert state_dir == tmp_path and head_cpus == 1 and elastic.head_node_id == "head-abc"
    assert elastic.node_types["gpu_spot"]["kind"] == "spot" and elastic.node_types["gpu_spot"]["max_workers"] == 3
    assert elastic.provider_state_dir == str(tmp_path / "local-cluster" / "provider")
    assert elastic.idle_timeout_s == 60.0 and "head" not in elastic.node_types
    assert any("raycluster ray-head" in c for c in cfg["head_start_ray_commands"])


def _with(path: str, value):
    cfg = copy.deepcopy(CONFIG)
    *parents, last = path.split(".")
    node = cfg
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return cfg


_DELETE = object()


@pytest.mark.parametrize("path, value, field", [
    ("provider.markets.moon", {}, "provider.markets.moon"),
    ("provider.markets.local.gpu_types.T4.spot_usd_per_hour", "cheap",
     "provider.markets.local.gpu_types.T4.spot_usd_per_hour"),
    ("provider.markets.local.preemption_notice_s", -5, "provider.markets.local.preemption_notice_s"),
    ("provider.markets.ssh", {"hosts": [{"host": "h", "user": "u", "key_file": "/nonexistent/id_ed25519",
                                         "known_hosts": "/etc/hostname"}]}, "provider.markets.ssh.hosts[0].key_file"),
    ("provider.markets.http", {"url": "ftp://x"}, "markets.http.url"),
    ("available_node_types.gpu_spot.node_config.market", "nowhere",
     "available_node_types.gpu_spot.node_config.market"),
    ("available_node_types.gpu_spot.node_config.kind", "cheap", "available_node_types.gpu_spot.node_config.kind"),
    ("available_node_types.gpu_spot.node_config.gpu_type", "H100",
     "available_node_types.gpu_spot.node_config.gpu_type"),
    ("available_node_types.gpu_spot.resources.GPU", "one", "available_node_types.gpu_spot.resources.GPU"),
    ("provider.storage_uri", "nosuch://bucket/x", "provider.storage_uri"),
    ("provider.max_hourly_budget_usd", "eight", "provider.max_hourly_budget_usd"),
    ("provider.max_hourly_budget_usd", -1, "provider.max_hourly_budget_usd"),
    ("provider.storage_uri", "s3://", "provider.storage_uri"),
    ("head_node_type", "boss", "head_node_type"),
])
def test_a_bad_key_is_refused_naming_it(path, value, field):
    with pytest.raises(MarketConfigError) as err:
        validate(_with(path, value))
    assert err.value.field == field


def test_the_state_dir_follows_the_environment_unless_the_yaml_sets_one(tmp_path, monkeypatch):
    from raycluster.provision.rayup import resolve

    monkeypatch.setenv("RAYCLUSTER_STATE_DIR", str(tmp_path / "env"))
    assert "raycluster_state_dir" not in CONFIG["provider"]  # the repo's config follows the environment
    config, note = resolve(CONFIG)
    assert config["provider"]["raycluster_state_dir"] == str(tmp_path / "env") and note is None
    assert elastic_config(config, None)[1] == tmp_path / "env"
    assert "raycluster_state_dir" not in CONFIG["provider"]  # (the caller's dict is left alone)
    config, note = resolve(_with("provider.raycluster_state_dir", str(tmp_path / "yaml")))
    assert config["provider"]["raycluster_state_dir"] == str(tmp_path / "yaml")
    assert str(tmp_path / "yaml") in note and "RAYCLUSTER_STATE_DIR" in note  # said, not silently ignored


def test_ray_up_refuses_a_bad_key_in_one_line_without_a_traceback(capsys):
    from raycluster.provision.node_provider import MarketNodeProvider

    with pytest.raises(SystemExit) as exit_:
        MarketNodeProvider.bootstrap_config(_with("provider.markets.locl", {}))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert err.startswith("raycluster: invalid cluster config: provider.markets.locl: unknown market 'locl', "
                          "did you mean 'local'?")
    MarketNodeProvider.bootstrap_config(CONFIG)  # a good one passes


@pytest.mark.parametrize("path, value, says", [
    ("provider.markets.local.preemption_notice", 3, "did you mean 'preemption_notice_s'?"),
    ("provider.markets.moon", {}, "provider.markets.moon: unknown market 'moon' (known: local, ssh, http)"),
])
def test_unknown_market_keys_are_named_with_their_path(path, value, says):
    with pytest.raises(MarketConfigError) as err:
        validate(_with(path, value))
    assert says in err.value.message
