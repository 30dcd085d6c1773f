"""MarketNodeProvider (provision/node_provider.py) against a market in memory (the boundary fake):
renting (every create_node its own rentals, of its own type), refusals raised and explained, tags persisted across
provider instances, release, and the reconcile with the market (lost nodes, leaked rentals). The
local market with real processes and Ray's autoscaler are in tests/cluster/test_autoscale_local.py."""

from __future__ import annotations

import pytest
from ray.autoscaler.tags import (NODE_KIND_HEAD, NODE_KIND_WORKER, TAG_RAY_LAUNCH_REQUEST, TAG_RAY_NODE_KIND,
                                 TAG_RAY_USER_NODE_TYPE)

from raycluster.provision.market.base import CapacityExhausted, MarketConfigError, MarketUnavailable
from raycluster.provision.market.local import parse_gpu_types
from raycluster.provision.market.registry import make_markets
from raycluster.provision.node_provider import MarketNodeProvider
from raycluster.store.rentals import RentalState
from tests.fakes import FakeMarket

WORKER_TAGS = {TAG_RAY_NODE_KIND: NODE_KIND_WORKER, TAG_RAY_USER_NODE_TYPE: "gpu_spot"}


def provider(tmp_path, market=None, **cfg):
    market = market or FakeMarket()
    config = {"state_dir": str(tmp_path), "head_address": "127.0.0.1:6379", "head_node_id": "head-1",
              "head_node_type": "head", **cfg}
    return MarketNodeProvider(config, "test", markets={market.name: market}), market


def test_rents_lists_and_tags_each_node_with_its_market_kind_and_price(tmp_path):
    p, market = provider(tmp_path)
    made = p.create_node({"market": "fake", "kind": "spot", "gpu_type": "T4"},
                         {**WORKER_TAGS, TAG_RAY_LAUNCH_REQUEST: "req-1"}, 2)
    assert len(made) == 2 and set(market.running) == set(made)
    workers = p.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_WORKER})
    assert sorted(workers) == sorted(made)
    assert p.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_HEAD}) == ["head-1"]  # the head is listed
    for node_id in workers:
        tags, launch = p.node_tags(node_id), market.launches[node_id]
        assert (tags["raycluster-market"], tags["raycluster-kind"], tags["raycluster-usd-per-hour"]) == (
            "fake", "spot", "0.2000")
        assert p.is_running(node_id) and not p.is_terminated(node_id)
        # how Ray's autoscaler v2 matches the Ray node to this provider node, and the market labels
        assert launch.env["RAY_CLOUD_INSTANCE_ID"] == node_id and launch.env["RAY_NODE_TYPE_NAME"] == "gpu_spot"
        assert launch.env["RAY_NODE_MARKET_TYPE"] == "spot" and launch.labels["raycluster.io/kind"] == "spot"


SPOT_T4 = {"market": "fake", "kind": "spot", "gpu_type": "T4"}
OD_T4 = {"market": "fake", "kind": "on_demand", "gpu_type": "T4"}


@pytest.mark.parametrize("calls", [
    # Ray's autoscaler v2 launches every node type of a pass under ONE launch request id ...
    [("gpu_spot", SPOT_T4, 1), ("gpu_od", OD_T4, 1)],
    [("gpu_spot", SPOT_T4, 2), ("gpu_od", OD_T4, 1)],
    # ... and a type's nodes in batches (max_launch_batch_per_type), each call with identical arguments
    [("gpu_spot", SPOT_T4, 1), ("gpu_spot", SPOT_T4, 1)],
    [("gpu_spot", SPOT_T4, 1), ("gpu_spot", SPOT_T4, 1), ("gpu_od", OD_T4, 1)],
], ids=["two-types", "two-types-2+1", "two-batches", "two-batches+type"])
def test_every_create_node_of_one_launch_request_gets_its_own_rentals_of_its_own_type(tmp_path, calls):
    """Issue 20: keyed on the launch request alone, the second type's call got the first type's
    rental back and Ray's instance of it stayed REQUESTED for ever (a wedged autoscaler)."""
    p, market = provider(tmp_path, FakeMarket(capacity=8))
    seen: set[str] = set()
    for node_type, node_config, count in calls:
        made = p.create_node(node_config, {**WORKER_TAGS, TAG_RAY_USER_NODE_TYPE: node_type,
                                           TAG_RAY_LAUNCH_REQUEST: "one-pass"}, count)
        assert len(made) == count and not set(made) & seen  # nodes of its own, none handed back twice
        seen |= set(made)
        for node_id in made:
            tags = p.node_tags(node_id)  # what Ray matches its instance by: the type, and its request id
            assert tags[TAG_RAY_USER_NODE_TYPE] == node_type and tags[TAG_RAY_LAUNCH_REQUEST] == "one-pass"
            assert tags["raycluster-kind"] == node_config["kind"]
    assert len(market.launches) == sum(c for _t, _nc, c in calls) == len(seen)
    listed = p.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_WORKER})
    for node_type, _nc, _c in calls:  # Ray counts each type's nodes: every one is there, of its type
        assert sum(p.node_tags(n)[TAG_RAY_USER_NODE_TYPE] == node_type for n in listed) == sum(
            c for t, _nc, c in calls if t == node_type)


def test_a_retried_launch_after_a_failure_rents_anew_and_a_half_done_call_is_rolled_back(tmp_path):
    """A failed call leaves nothing rented (Ray fails all of that call's instances) and the retry —
    the same type under the same request id — gets nodes of its own."""
    p, market = provider(tmp_path, FakeMarket(capacity=8))
    tags = {**WORKER_TAGS, TAG_RAY_LAUNCH_REQUEST: "req-9"}
    real_rent, calls = market.rent, []

    def rent_twice_then_fail(offer, launch):
        calls.append(launch.rental_id)
        if len(calls) == 2:
            raise MarketUnavailable("HTTP 503 from the market")
        return real_rent(offer, launch)

    market.rent = rent_twice_then_fail
    with pytest.raises(MarketUnavailable):
        p.create_node(SPOT_T4, tags, 2)  # the first node was rented, the second refused
    assert market.running == {} and p.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_WORKER}) == []
    assert "rolled back" in p.store.get(calls[0]).reason
    market.rent = real_rent
    again = p.create_node(SPOT_T4, tags, 2)
    assert len(again) == 2 and set(again) == set(market.running) and not set(again) & set(calls)


def test_a_refusal_is_raised_and_nothing_is_left_rented(tmp_path):
    p, market = provider(tmp_path, FakeMarket(capacity=1))
    with pytest.raises(CapacityExhausted, match="has 1 spot node left, 2 asked"):
        p.create_node({"market": "fake", "kind": "spot"}, {**WORKER_TAGS, TAG_RAY_LAUNCH_REQUEST: "r"}, 2)
    assert market.running == {} and p.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_WORKER}) == []
    market.refuse = MarketUnavailable("HTTP 503 from the market")
    with pytest.raises(MarketUnavailable):
        p.create_node({"market": "fake", "kind": "spot"}, {**WORKER_TAGS, TAG_RAY_LAUNCH_REQUEST: "r2"}, 1)
    (rec,) = [r for r in p.store.list(None) if r.market == "fake"]
    assert rec.state == RentalState.RELEASED and "503" in rec.reason  # explained, not listed
    assert p.non_terminated_nodes({}) == ["head-1"]


@pytest.mark.parametrize("node_config, field", [
    ({"market": "nowhere"}, "node_config.market"),
    ({"market": "fake", "kind": "cheap"}, "node_config.kind"),
])
def test_a_bad_node_config_names_its_key(tmp_path, node_config, field):
    p, market = provider(tmp_path)
    with pytest.raises(MarketConfigError) as err:
        p.create_node(node_config, dict(WORKER_TAGS), 1)
    assert err.value.field == field and market.running == {}


def test_tags_are_shared_by_every_provider_instance(tmp_path):
    """The ``ray up`` process and the monitor build separate providers over one state dir."""
    market = FakeMarket()
    a, _ = provider(tmp_path, market)
    (node_id,) = a.create_node({"market": "fake", "kind": "on_demand"}, dict(WORKER_TAGS), 1)
    b, _ = provider(tmp_path, market)
    b.set_node_tags(node_id, {"ray-node-status": "up-to-date"})
    a.set_node_tags(node_id, {"extra": "1"})
    assert a.node_tags(node_id)["ray-node-status"] == "up-to-date" and b.node_tags(node_id)["extra"] == "1"
    b.set_node_tags("head-1", {"ray-node-status": "up-to-date"})
    assert a.node_tags("head-1")[TAG_RAY_NODE_KIND] == NODE_KIND_HEAD


def test_terminate_releases_through_the_market(tmp_path):
    p, market = provider(tmp_path)
    (node_id,) = p.create_node({"market": "fake", "kind": "spot"}, dict(WORKER_TAGS), 1)
    p.terminate_node(node_id)
    assert market.released == [node_id] and p.is_terminated(node_id)
    assert p.store.get(node_id).released_at is not None and p.non_terminated_nodes({}) == ["head-1"]
    p.terminate_node(node_id)  # twice: no error, nothing more
    assert market.released == [node_id]


def test_listing_reconciles_with_the_market(tmp_path):
    """A node the market no longer runs is gone (so the autoscaler replaces it); one whose machine
    stopped is released; a rental the market bills that is no node of ours is released."""
    p, market = provider(tmp_path)
    a, b = p.create_node({"market": "fake", "kind": "spot"}, dict(WORKER_TAGS), 2)
    market.running.pop(a)  # taken back by the market
    market.dead.add(b)  # the machine stopped
    market.running["rent-stranger"] = {"instance": "i-x"}  # billed, not ours
    assert p.non_terminated_nodes({}) == ["head-1"]
    assert p.store.get(a).reason.startswith("lost") and p.store.get(b).reason.startswith("lost")
    assert "rent-stranger" in market.released and market.running == {}


def test_release_all_leaves_nothing_rented(tmp_path):
    p, market = provider(tmp_path)
    p.create_node({"market": "fake", "kind": "spot"}, dict(WORKER_TAGS), 3)
    assert len(p.release_all()) == 3 and market.running == {}
    assert p.non_terminated_nodes({}) == ["head-1"]


@pytest.mark.parametrize("markets, field", [
    ({"moon": {}}, "provider.markets.moon"),
    ({"local": {"gpu_types": {"T4": {"on_demand_usd_per_hour": "cheap"}}}},
     "markets.local.gpu_types.T4.on_demand_usd_per_hour"),
    ({"local": {"gpu_types": {"T4": {"on_demand_usd_per_hour": 1, "vram": 16}}}}, "markets.local.gpu_types.T4.vram"),
    ({"local": {"colour": "blue"}}, "provider.markets.local.colour"),
    ({"local": {"preemption_rate_per_hour": -1}}, "markets.local.preemption_rate_per_hour"),
    ("local", "provider.markets"),
    ({"ssh": {"hosts": [{"host": "h", "user": "u", "password": "hunter2"}]}}, "markets.ssh.hosts[0].password"),
    ({"ssh": {"hosts": [{"host": "h", "user": "u", "key_file": "KEY"}]}}, "markets.ssh.hosts[0].known_hosts"),
    ({"ssh": {"hosts": [{"host": "h", "user": "u", "key_file": "/nonexistent/key", "known_hosts": "KNOWN"}]}},
     "markets.ssh.hosts[0].key_file"),
    ({"ssh": {"hosts": [{"host": "h", "user": "u", "key_file": "KEY", "known_hosts": "KNOWN",
                         "usd_per_hour": "1 dollar"}]}}, "markets.ssh.hosts[0].usd_per_hour"),
    ({"ssh": {"hosts": []}}, "markets.ssh.hosts"),
    ({"ssh": {"hosts": [{"host": "h", "user": "u", "key_file": "KEY", "known_hosts": "KNOWN", "usd_per_hour": 1},
                        {"host": "h", "user": "u", "key_file": "KEY", "known_hosts": "KNOWN", "usd_per_hour": 1}]}},
     "markets.ssh.hosts[1].name"),
])
def test_bad_market_config_names_the_key(tmp_path, markets, field):
    files = {"KEY": tmp_path / "key", "KNOWN": tmp_path / "known"}
    for path in files.values():
        path.write_text("x")

    def fill(obj):  # real files where the table says KEY / KNOWN
        if isinstance(obj, dict):
            return {k: fill(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [fill(v) for v in obj]
        return str(files[obj]) if obj in files else obj

    with pytest.raises(MarketConfigError) as err:
        make_markets({"markets": fill(markets)}, tmp_path)
    assert err.value.field == field


def test_missing_provider_keys_are_named(tmp_path):
    with pytest.raises(MarketConfigError) as err:
        MarketNodeProvider({}, "test", markets={})
    assert err.value.field == "provider.raycluster_state_dir"
    p = MarketNodeProvider({"state_dir": str(tmp_path)}, "test", markets={"fake": FakeMarket()})
    with pytest.raises(MarketConfigError) as err:  # renting a worker needs the head's address
        p.create_node({"market": "fake"}, dict(WORKER_TAGS), 1)
    assert err.value.field == "provider.head_address"


def test_the_default_price_table_is_valid_and_spot_is_optional():
    table = parse_gpu_types({"A100": {"gpus": 1, "cpus": 4, "on_demand_usd_per_hour": 3.0, "capacity": 2}})
    assert table["A100"]["spot_usd_per_hour"] is None and parse_gpu_types(None)["T4"]["capacity"] == 4


def test_the_budget_cap_refuses_a_rent_explains_it_and_rents_nothing(tmp_path):
    """The hard cap: committed USD/h (starting nodes included) + the request <= max_hourly_budget_usd."""
    from raycluster.provision.market.base import BudgetExceeded

    p, market = provider(tmp_path, FakeMarket(capacity=10), max_hourly_budget_usd=0.5)
    spot = {"market": "fake", "kind": "spot"}
    p.create_node(spot, {**WORKER_TAGS, TAG_RAY_LAUNCH_REQUEST: "a"}, 2)  # 0.40 USD/h
    assert p.store.committed_usd_per_hour() == pytest.approx(0.4)
    with pytest.raises(BudgetExceeded) as e:  # a request that only partly fits: none of it is rented
        p.create_node(spot, {**WORKER_TAGS, TAG_RAY_LAUNCH_REQUEST: "b"}, 2)
    assert e.value.retryable and e.value.field == "max_hourly_budget_usd"
    assert str(e.value) == ("refused: budget 0.40/0.50 USD/h: renting 2 spot node at 0.40 USD/h would commit 0.80")
    with pytest.raises(BudgetExceeded):
        p.create_node({"market": "fake", "kind": "on_demand"}, {**WORKER_TAGS, TAG_RAY_LAUNCH_REQUEST: "c"}, 1)
    assert len(market.running) == 2 and len(p.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_WORKER})) == 2
    assert [(ev["source"], ev["action"]) for ev in p.store.events()] == [("provider", "blocked")] * 2
    # a request for nothing rents nothing (and is not refused)
    assert p.create_node(spot, {**WORKER_TAGS, TAG_RAY_LAUNCH_REQUEST: "d"}, 0) == {}
    # a node given back makes room for one, not two
    p.terminate_node(next(iter(market.running)))
    p.create_node(spot, {**WORKER_TAGS, TAG_RAY_LAUNCH_REQUEST: "e"}, 1)
    with pytest.raises(BudgetExceeded):
        p.create_node(spot, {**WORKER_TAGS, TAG_RAY_LAUNCH_REQUEST: "e"}, 1)
    assert p.store.committed_usd_per_hour() == pytest.approx(0.4)


def test_the_cap_holds_across_provider_instances_and_can_be_set_at_run_time(tmp_path):
    """Two provider instances (the `ray up` process and the autoscaler's monitor) share the books:
    together they never commit past the cap; a cap set at run time (SQLite) wins over the config's."""
    import threading

    from raycluster.provision.market.base import BudgetExceeded

    market = FakeMarket(capacity=100)
    a, _ = provider(tmp_path, market, max_hourly_budget_usd=2.0)
    b, _ = provider(tmp_path, market, max_hourly_budget_usd=2.0)
    refused = []

    def rent(p, prefix):
        for i in range(10):
            try:
                p.create_node({"market": "fake", "kind": "spot"}, {**WORKER_TAGS, TAG_RAY_LAUNCH_REQUEST: f"{prefix}{i}"}, 1)
            except BudgetExceeded:
                refused.append(prefix)

    threads = [threading.Thread(target=rent, args=(p, x)) for p, x in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert a.store.committed_usd_per_hour() == pytest.approx(2.0) and len(market.running) == 10 and len(refused) == 10
    a.store.set_setting("max_hourly_budget_usd", "2.5")
    assert b.budget_usd_per_hour() == 2.5
    b.create_node({"market": "fake", "kind": "spot"}, {**WORKER_TAGS, TAG_RAY_LAUNCH_REQUEST: "late"}, 2)
    assert b.store.committed_usd_per_hour() == pytest.approx(2.4)


def test_a_spot_price_move_reprices_held_nodes_from_then_on_and_the_cap_counts_it(tmp_path):
    """Spot prices move: the held nodes are billed at the new price from the move on (every earlier
    stretch at its own price), the committed rate follows, and the hard cap counts the new prices."""
    from raycluster.provision.market.base import BudgetExceeded

    p, market = provider(tmp_path, FakeMarket(capacity=10), max_hourly_budget_usd=1.0)
    spot = {"market": "fake", "kind": "spot"}
    made = list(p.create_node(spot, {**WORKER_TAGS, TAG_RAY_LAUNCH_REQUEST: "a"}, 2))
    od = p.create_node({"market": "fake", "kind": "on_demand"}, {**WORKER_TAGS, TAG_RAY_LAUNCH_REQUEST: "b"}, 1)
    assert p.reprice() == [] and p.store.committed_usd_per_hour() == pytest.approx(0.9)
    rec = p.store.get(made[0])
    t0 = rec.created_at
    market.spot_usd_per_hour = 0.35
    changed = p.reprice(now=t0 + 3600)
    assert sorted(changed) == sorted((m, 0.2, 0.35) for m in made)  # the on-demand node's price stays
    assert p.store.committed_usd_per_hour() == pytest.approx(1.2) and p.store.get(list(od)[0]).usd_per_hour == 0.5
    rec = p.store.get(made[0])
    assert rec.prices == [[t0, 0.2], [t0 + 3600, 0.35]]
    assert rec.cost_usd(t0 + 2 * 3600) == pytest.approx(0.2 + 0.35)  # an hour at each price
    assert rec.cost_usd(t0 + 2 * 3600, since=t0 + 1800) == pytest.approx(0.1 + 0.35)
    events = [e for e in p.store.events() if e["action"] == "price"]
    assert len(events) == 2 and "0.20 -> 0.35 USD/h" in events[0]["reason"]
    with pytest.raises(BudgetExceeded):  # 1.2 held > the 1.0 cap: nothing more is rented
        p.create_node(spot, {**WORKER_TAGS, TAG_RAY_LAUNCH_REQUEST: "c"}, 1)
    assert p.reprice(now=t0 + 7200) == []  # nothing moved: nothing recorded
    market.spot_usd_per_hour = 0.1
    p.reprice(now=t0 + 7200)
    assert p.store.get(made[0]).cost_usd(t0 + 3 * 3600) == pytest.approx(0.2 + 0.35 + 0.1)


def test_a_market_without_current_prices_keeps_the_rented_price(tmp_path):
    market = FakeMarket()
    market.prices = None  # (an SSH host or a marketplace contract: the price is fixed when rented)
    p, _ = provider(tmp_path, market)
    made = list(p.create_node({"market": "fake", "kind": "spot"}, {**WORKER_TAGS, TAG_RAY_LAUNCH_REQUEST: "a"}, 1))
    market.spot_usd_per_hour = 0.9
    assert p.reprice() == [] and p.store.get(made[0]).usd_per_hour == 0.2


def test_the_local_market_moves_a_price_for_offers_and_refuses_bad_ones(tmp_path):
    from raycluster.provision.market.local import LocalMarket

    m = LocalMarket(tmp_path / "m.db", tmp_path, gpu_types={"T4": {"spot_usd_per_hour": 0.16,
                                                                    "on_demand_usd_per_hour": 0.53},
                                                             "A10": {"on_demand_usd_per_hour": 1.0}})
    assert m.prices() == {("T4", "spot"): 0.16, ("T4", "on_demand"): 0.53, ("A10", "on_demand"): 1.0}
    assert m.set_price("T4", "spot", 0.4) == {"gpu_type": "T4", "kind": "spot", "usd_per_hour": 0.4}
    assert {(o.gpu_type, o.kind): o.usd_per_hour for o in m.offers()}[("T4", "spot")] == 0.4
    other = LocalMarket(tmp_path / "m.db", tmp_path, gpu_types={"T4": {"spot_usd_per_hour": 0.16,
                                                                        "on_demand_usd_per_hour": 0.53}})
    assert other.prices()[("T4", "spot")] == 0.4  # every process sees the market's price (its SQLite)
    for args, field in ((("V100", "spot", 1.0), "gpu_type"), (("A10", "spot", 1.0), "kind"),
                        (("T4", "cheap", 1.0), "kind"), (("T4", "spot", -1), "usd_per_hour"),
                        (("T4", "spot", float("nan")), "usd_per_hour"), (("T4", "spot", True), "usd_per_hour")):
        with pytest.raises(MarketConfigError) as e:
            m.set_price(*args)
        assert e.value.field == field
    assert m.prices()[("T4", "spot")] == 0.4  # a refused move changed nothing
    m.set_price("T4", "spot", None)
    assert m.prices()[("T4", "spot")] == 0.16
    m.close()
    other.close()


def test_a_rental_learns_the_ray_node_it_became_once_it_joins(tmp_path, monkeypatch):
    """One node identity: `raycluster nodes`/GET /rentals show each rented node's Ray node id, noted
    by the provider from Ray's node table (node name rc-<rental>) — once, not read again after."""
    from raycluster.labels import rented_node_name

    p, market = provider(tmp_path, dashboard_url="http://127.0.0.1:9")
    a, b = p.create_node({"market": "fake", "kind": "spot"}, dict(WORKER_TAGS), 2)
    joined: dict[str, dict] = {}
    reads = []
    monkeypatch.setattr(p, "_ray_nodes", lambda: reads.append(1) or dict(joined))  # Ray's node table (boundary)
    p.non_terminated_nodes({})
    assert p.store.get(a).ray_node_id is None and len(reads) == 1  # not joined yet
    joined[rented_node_name(a)] = {"node_id": "abc123", "node_name": rented_node_name(a)}
    joined[rented_node_name(b)] = {"node_id": "def456", "node_name": rented_node_name(b)}
    p.non_terminated_nodes({})
    assert (p.store.get(a).ray_node_id, p.store.get(b).ray_node_id) == ("abc123", "def456")
    p.non_terminated_nodes({})
    assert len(reads) == 2  # every running rental knows its node: the table is not read again
