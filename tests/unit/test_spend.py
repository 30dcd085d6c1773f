"""What an elastic cluster spends (provision/spend.py), from the provider's real SQLite books."""

from __future__ import annotations

import json
import time

import pytest

from raycluster.errors import InvalidSetting, NotElastic
from raycluster.provision import spend
from raycluster.provision.local.record import cluster_dir
from raycluster.store.rentals import RentalRecord, RentalState, RentalStore


def _elastic(tmp_path, cap=None):
    cluster_dir(tmp_path).mkdir(parents=True)
    provider = {"state_dir": str(tmp_path / "prov"), "markets": {"local": {"gpu_types": {
        "T4": {"gpus": 1, "cpus": 2, "capacity": 4, "spot_usd_per_hour": 0.2, "on_demand_usd_per_hour": 0.5}}}}}
    if cap is not None:
        provider["max_hourly_budget_usd"] = cap
    (cluster_dir(tmp_path) / "autoscaling.json").write_text(json.dumps({"provider": provider}))
    (tmp_path / "prov").mkdir()
    return RentalStore(tmp_path / "prov" / "rentals.db")


def _rent(store, rid, kind, price, start, end=None):
    store.insert(RentalRecord(id=rid, request_id=rid, market="local", node_type="gpu_" + kind, kind=kind,
                              gpu_type="T4", usd_per_hour=price, created_at=start,
                              state=RentalState.RELEASED if end else RentalState.RUNNING, released_at=end))


def test_cost_adds_every_interval_by_kind_and_what_spot_saved(tmp_path):
    now = time.time()
    store = _elastic(tmp_path, cap=1.0)
    _rent(store, "a", "spot", 0.2, now - 7200, now - 3600)  # 1 h: 0.20, saved 0.30
    _rent(store, "b", "on_demand", 0.5, now - 1800)  # 0.5 h so far: 0.25, running
    c = spend.cost(tmp_path, now)
    assert c["spend_usd"] == pytest.approx(0.45) and c["committed_usd_per_hour"] == pytest.approx(0.5)
    assert c["by_kind_usd"] == {"on_demand": pytest.approx(0.25), "spot": pytest.approx(0.2)}
    assert c["saved_vs_on_demand_usd"] == pytest.approx(0.3) and c["max_hourly_budget_usd"] == 1.0
    assert c["spend_today_usd"] <= c["spend_usd"] + 1e-9


def test_the_cap_set_at_run_time_wins_is_recorded_and_bad_values_are_refused(tmp_path):
    store = _elastic(tmp_path, cap=1.0)
    assert spend.set_budget(tmp_path, 2.5)["max_hourly_budget_usd"] == 2.5
    assert spend.set_budget(tmp_path, None)["max_hourly_budget_usd"] == 1.0
    for bad in (-1, "2", True, float("inf")):
        with pytest.raises(InvalidSetting) as e:
            spend.set_budget(tmp_path, bad)
        assert e.value.field == "max_hourly_budget_usd"
    assert [(e["source"], e["action"]) for e in spend.events(tmp_path)] == [("user", "budget_set")] * 2
    assert store.setting("max_hourly_budget_usd") is None


def test_a_fixed_cluster_has_no_cost(tmp_path):
    with pytest.raises(NotElastic):
        spend.cost(tmp_path)


def test_a_spot_price_move_is_billed_from_the_move_on_and_shown_in_the_savings(tmp_path):
    now = time.time()
    store = _elastic(tmp_path)
    _rent(store, "s", "spot", 0.2, now - 7200)
    assert store.reprice("s", 0.4, now - 3600) is not None  # an hour at 0.2, then an hour at 0.4
    assert store.reprice("s", 0.4, now - 1800) is None  # the same price again: nothing recorded
    c = spend.cost(tmp_path, now)
    assert c["spend_usd"] == pytest.approx(0.6) and c["committed_usd_per_hour"] == pytest.approx(0.4)
    assert c["saved_vs_on_demand_usd"] == pytest.approx(2 * 0.5 - 0.6)
    _rent(store, "gone", "spot", 0.2, now - 7200, now - 3600)
    assert store.reprice("gone", 0.9, now) is None  # a released node is not billed any more


@pytest.mark.parametrize("value,ok", [
    (None, True), (0, True), (0.5, True), (12, True), (999_999_999.0, True),
    (-0.01, False), (float("inf"), False), (float("nan"), False), (1e9, False), (True, False), ("1", False), ([], False),
])
def test_one_check_of_a_cap_for_the_config_the_cli_and_the_api(value, ok):
    from raycluster.policy.budget_types import BudgetConfig, BudgetConfigError, check_cap

    if ok:
        assert check_cap(value) == (None if value is None else float(value))
        return
    with pytest.raises(BudgetConfigError) as e:
        check_cap(value)
    assert e.value.field == "max_hourly_budget_usd" and "must be a number >= 0" in str(e.value)
    with pytest.raises(BudgetConfigError):  # the config's cap: the same check
        BudgetConfig(max_hourly_budget_usd=value)


def test_events_print_a_table_with_counts_and_node_types_and_ray_node_ids_show_in_nodes(tmp_path, capsys):
    from raycluster.cli.main import main

    store = _elastic(tmp_path)
    store.add_event("budget", "scale_up", "2 gangs wait for GPUs", node_type="gpu_spot", count=2)
    store.add_event("budget", "blocked", "budget: 0.50 USD/h would pass the 0.40 cap")
    _rent(store, "rent-a", "spot", 0.2, time.time() - 60)
    store.update("rent-a", ray_node_id="f" * 56)
    store.close()
    assert main(["--state-dir", str(tmp_path), "events"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["TIME", "SOURCE", "ACTION", "COUNT", "NODE_TYPE", "REASON"]
    assert lines[1].split()[3:6] == ["scale_up", "2", "gpu_spot"] and lines[2].split()[3:6] == ["blocked", "-", "-"]
    assert main(["--state-dir", str(tmp_path), "nodes"]) == 0
    out = capsys.readouterr().out
    assert "RAY_NODE" in out and "rent-a" in out and "f" * 16 in out  # one identity: rental -> Ray node
