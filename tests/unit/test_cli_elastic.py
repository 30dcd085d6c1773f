"""``raycluster up --local --elastic FILE`` refuses a bad elastic config before starting anything,
with exit 2 and the offending key named; ``nodes`` / ``market preempt`` without an elastic cluster
say how to start one."""

from __future__ import annotations

import pytest

from raycluster.cli.main import main

GOOD_TYPE = "node_types: {gpu_spot: {market: local, kind: spot, gpu_type: T4, max_workers: 2}}\n"


@pytest.mark.parametrize("text, named", [
    (GOOD_TYPE + "idle_timeout_s: soon\n", "idle_timeout_s"),
    (GOOD_TYPE + "colour: blue\n", "colour"),
    ("node_types: {gpu: {market: moon}}\n", "available_node_types.gpu.market"),
    ("node_types: {gpu: {kind: cheap}}\n", "available_node_types.gpu.kind"),
    ("node_types: {gpu: {max_workers: -1}}\n", "available_node_types.gpu.max_workers"),
    ("node_types: {}\n", "available_node_types"),
    ("- just a list\n", "expected a mapping"),
])
def test_a_bad_elastic_config_is_refused_naming_the_key(tmp_path, capsys, text, named):
    cfg = tmp_path / "elastic.yaml"
    cfg.write_text(text)
    state = tmp_path / "state"
    assert main(["--state-dir", str(state), "up", "--local", "--elastic", str(cfg), "--api-port", "0"]) == 2
    assert named in capsys.readouterr().err
    assert not (state / "local-cluster" / "cluster.json").exists()  # nothing started


def test_nodes_without_an_elastic_cluster_says_how_to_start_one(tmp_path, capsys):
    assert main(["--state-dir", str(tmp_path), "nodes"]) == 3
    assert "raycluster up --local --elastic" in capsys.readouterr().err


def test_market_price_moves_the_local_market_price_and_refuses_bad_input(tmp_path, capsys):
    import json

    from raycluster.provision.local.record import cluster_dir
    from raycluster.provision.market.local import LocalMarket

    assert main(["--state-dir", str(tmp_path), "market", "price", "T4", "0.4"]) == 3  # no elastic cluster
    assert "raycluster up --local --elastic" in capsys.readouterr().err
    cluster_dir(tmp_path).mkdir(parents=True)
    markets = {"local": {"gpu_types": {"T4": {"spot_usd_per_hour": 0.16, "on_demand_usd_per_hour": 0.53}}}}
    (cluster_dir(tmp_path) / "autoscaling.json").write_text(json.dumps(
        {"provider": {"state_dir": str(tmp_path / "prov"), "markets": markets}}))
    assert main(["--state-dir", str(tmp_path), "market", "price", "T4", "0.4"]) == 0
    assert "spot T4: 0.4000 USD/hour from now on" in capsys.readouterr().out
    market = LocalMarket(tmp_path / "prov" / "market-local.db", tmp_path, gpu_types=markets["local"]["gpu_types"])
    assert market.prices()[("T4", "spot")] == 0.4  # the market's own books: every process sees it
    for argv, named in ((["T4"], "usd_per_hour"), (["T4", "0.3", "--reset"], "usd_per_hour"),
                        (["V100", "0.3"], "no GPU type 'V100'"), (["T4", "-1"], "usd_per_hour")):
        assert main(["--state-dir", str(tmp_path), "market", "price", *argv]) == 2, argv
        assert named in capsys.readouterr().err
    assert main(["--state-dir", str(tmp_path), "--json", "market", "price", "T4", "--reset"]) == 0
    assert json.loads(capsys.readouterr().out)["usd_per_hour"] == 0.16
    market.close()
