"""Tenants' budgets (issue "Spend less", item 4): the pure rules (budget reason, a job's estimated
rate, the 80 %/100 % alerts), the day/month windows of the cost ledger over real SQLite books, the
Tenancy part through its interface with a fake ledger and notifier, and the Coordinator's loop
driving them with a fake RayOps (no cluster)."""

from __future__ import annotations

import calendar

import pytest

from raycluster.control.core import CoordinatorCore
from raycluster.control.elastic.ledger import JobLedger
from raycluster.control.tenancy import Tenancy
from raycluster.policy.cost import Rental, attribute
from raycluster.policy.tenants import (Demand, QuotaView, TenantQuota, TenantSpend, budget_alerts, budget_reason,
                                       held_by_quota, job_usd_per_hour, parse_tenants, period_keys, period_starts)
from raycluster.store.jobs import JobStore
from raycluster.store.rentals import RentalRecord, RentalState
from tests.fakes import Clock, FakeOps
from tests.unit.test_cost_ledger import _elastic, _node

H = 3600.0
NOON = float(calendar.timegm((2026, 12, 5, 12, 0, 0)))  # a Saturday noon, UTC


# ---------------------------------------------------------------------------------------------- rules
@pytest.mark.parametrize("quota,spend,job_rate,expect", [
    ({}, TenantSpend(9.0, 90.0, 900.0), 5.0, None),
    ({"budget_usd": {"day": 4.0}}, TenantSpend(0.0, 3.99, 3.99), 0.0, None),
    ({"budget_usd": {"day": 4.0}}, TenantSpend(0.0, 4.1, 4.1), 0.0, "tenant budget team-a 4.10/4.00 USD today"),
    ({"budget_usd": {"day": 4.0}}, TenantSpend(0.0, 4.0, 4.0), 0.0, "tenant budget team-a 4.00/4.00 USD today"),
    ({"budget_usd": {"month": 50.0}}, TenantSpend(0.0, 1.0, 50.5), 0.0,
     "tenant budget team-a 50.50/50.00 USD this month"),
    ({"budget_usd": {"day": 4.0, "month": 50.0}}, TenantSpend(0.0, 5.0, 60.0), 0.0,
     "tenant budget team-a 5.00/4.00 USD today"),  # the day's first
    ({"budget_usd": {"day": 0}}, TenantSpend(), 0.0, "tenant budget team-a 0.00/0.00 USD today"),  # frozen
    ({"max_usd_per_hour": 0.5}, TenantSpend(0.32, 0, 0), 0.16, None),
    ({"max_usd_per_hour": 0.5}, TenantSpend(0.32, 0, 0), 0.32, "tenant budget team-a 0.32/0.50 USD/hour"),
    ({"max_usd_per_hour": 0.5}, TenantSpend(0.5, 0, 0), 0.0, "tenant budget team-a 0.50/0.50 USD/hour"),
    ({"budget_usd": {"day": 0.0002}}, TenantSpend(0.0, 0.00031, 0.00031), 0.0,
     "tenant budget team-a 0.00031/0.0002 USD today"),  # small sums keep their digits
])
def test_budget_reason_table(quota, spend, job_rate, expect):
    assert budget_reason("team-a", TenantQuota(**quota), spend, job_rate) == expect
    if expect:
        assert held_by_quota(expect)  # no node is rented for such a job


@pytest.mark.parametrize("demand,prices,expect", [
    (Demand(gpus=1, cpus=1), (), 0.0),  # nothing is rented: nothing costs
    (Demand(gpus=1, cpus=1), ((0.16, 1, 2), (0.53, 1, 2)), 0.16),  # the cheapest type
    (Demand(gpus=0.5, cpus=1), ((0.16, 1, 2),), 0.08),  # its share of the node
    (Demand(gpus=2, cpus=2), ((1.0, 4, 16), (0.3, 1, 4)), 0.5),  # per GPU: 0.25 on the 4-GPU node
    (Demand(gpus=0, cpus=1), ((0.16, 1, 2),), 0.08),  # a CPU job: its CPU share
    (Demand(gpus=1, cpus=1), ((0.05, 0, 8),), 0.0),  # no GPU type fits: no estimate
])
def test_job_usd_per_hour_table(demand, prices, expect):
    assert job_usd_per_hour(demand, prices) == pytest.approx(expect)


def test_budget_alerts_fire_at_80_and_100_percent_once_per_period():
    cfg = parse_tenants({"tenants": {"a": {"budget_usd": {"day": 10.0, "month": 100.0}}, "b": {}}})
    assert budget_alerts(cfg, {"a": TenantSpend(0, 7.9, 7.9), "b": TenantSpend(0, 99, 99)}, NOON, set()) == []
    first = budget_alerts(cfg, {"a": TenantSpend(0, 8.0, 8.0)}, NOON, set())
    assert [(t, p, lv) for t, p, lv, _m in first] == [("a", "day 2026-12-05", 0.8)]
    assert "spent 8.00 of its 10.00 USD budget for the day 2026-12-05 (80%)" in first[0][3]
    fired = {(t, p, lv) for t, p, lv, _m in first}
    assert budget_alerts(cfg, {"a": TenantSpend(0, 9.0, 9.0)}, NOON, fired) == []  # once
    both = budget_alerts(cfg, {"a": TenantSpend(0, 10.5, 95.0)}, NOON, fired)
    assert [(p, lv) for _t, p, lv, _m in both] == [("day 2026-12-05", 1.0), ("month 2026-12", 0.8)]
    # a jump straight past 100 % fires 100 % only; 80 % is not fired afterwards
    jump = budget_alerts(cfg, {"a": TenantSpend(0, 12.0, 12.0)}, NOON, set())
    assert [lv for _t, _p, lv, _m in jump] == [1.0]
    assert budget_alerts(cfg, {"a": TenantSpend(0, 12.0, 12.0)}, NOON, {("a", "day 2026-12-05", 1.0)}) == []
    # the next day is a new period
    assert [p for _t, p, _lv, _m in budget_alerts(cfg, {"a": TenantSpend(0, 9.0, 9.0)}, NOON + 86400, fired)] == [
        "day 2026-12-06"]


def test_periods_are_the_utc_day_and_month():
    day0, month0 = period_starts(NOON)
    assert NOON - day0 == 12 * H and month0 == calendar.timegm((2026, 12, 1, 0, 0, 0))
    assert period_keys(NOON) == {"day": "2026-12-05", "month": "2026-12"}


def test_attribution_since_bills_only_the_window():
    rentals = [Rental("a", 1.0, 0, None), Rental("b", 2.0, 0, H)]
    usage = [{"job_id": "j", "rental_id": "a", "share": 0.5, "start": 0.0, "end": None},
             {"job_id": "k", "rental_id": "b", "share": 1.0, "start": 0.0, "end": H}]
    att = attribute(usage, rentals, now=3 * H, since=2 * H)
    assert att.by_job_usd == {"j": pytest.approx(0.5), "k": 0.0} and att.total_usd == pytest.approx(1.0)


def test_quota_view_refuses_over_budget_and_counts_what_it_starts_in_a_pass():
    cfg = parse_tenants({"tenants": {"a": {"max_usd_per_hour": 0.4}, "b": {"budget_usd": {"day": 1.0}}}})
    view = QuotaView(cfg, {}, {"a": TenantSpend(0.16, 0, 0), "b": TenantSpend(0, 1.2, 1.2)}, ((0.16, 1, 2),))
    job = Demand(gpus=1, cpus=1)
    assert view.refuse("a", job) is None
    view.take("a", job)  # 0.32 committed now
    assert view.refuse("a", job) == "tenant budget a 0.32/0.40 USD/hour"
    assert view.refuse("b", job) == "tenant budget b 1.20/1.00 USD today"
    assert view.refuse("c", job) is None  # the default: no budget


# ---------------------------------------------------------------------------------------------- the ledger
def test_the_ledger_splits_spend_by_tenant_for_the_day_and_the_month(tmp_path):
    rentals = _elastic(tmp_path)
    jobs = JobStore(tmp_path / "jobs.db")
    recs = {name: jobs.insert(name=name, spec={"name": name}, priority=0, tenant=tenant, now=NOON - 10 * 86400)
            for name, tenant in (("a1", "team-a"), ("b1", "team-b"), ("n1", None))}
    rentals.insert(RentalRecord(id="r1", request_id="r1", market="local", node_type="t", kind="spot", gpu_type="T4",
                                usd_per_hour=1.0, created_at=NOON - 10 * 86400, state=RentalState.RUNNING))
    ledger = JobLedger(tmp_path, elastic=True, clock=lambda: NOON)
    nodes = [_node("n1", "r1", gpus=2)]
    ledger.placed(recs["a1"].id, 1, ["n1"], {"GPU": 1.0}, nodes, now=NOON - 10 * 86400)  # half r1, since ten days (November)
    ledger.placed(recs["b1"].id, 1, ["n1"], {"GPU": 1.0}, nodes, now=NOON - H)  # half r1, an hour
    ledger.ended(recs["b1"].id, 1, now=NOON - 0.5 * H)
    spend = ledger.tenant_spend(NOON)
    assert set(spend) == {"team-a", "team-b"}
    assert spend["team-a"].usd_per_hour == pytest.approx(0.5) and spend["team-b"].usd_per_hour == 0.0
    assert spend["team-a"].today_usd == pytest.approx(0.5 * 12)  # since midnight UTC
    assert spend["team-a"].month_usd == pytest.approx(0.5 * (12 + 4 * 24))  # since the 1st
    assert spend["team-b"].today_usd == pytest.approx(0.25) == spend["team-b"].month_usd
    assert JobLedger(tmp_path / "fixed", elastic=False, clock=lambda: NOON).tenant_spend() == {}


# ---------------------------------------------------------------------------------------------- the part
class FakeSpend:
    def __init__(self):
        self.spend: dict[str, TenantSpend] = {}
        self.calls = 0
        self.fail = False

    def __call__(self, now):
        self.calls += 1
        if self.fail:
            raise OSError("books unreadable")
        return dict(self.spend)


def test_tenancy_reads_spend_at_its_interval_alerts_once_and_survives_an_unreadable_ledger(tmp_path):
    (tmp_path / "tenants.yaml").write_text("tenants:\n  team-a:\n    budget_usd: {day: 1.0}\n")
    clock, ledger, sent = Clock(), FakeSpend(), []
    clock.t = NOON

    def tenancy():
        return Tenancy(tmp_path, clock, spend_of=ledger, prices=((0.16, 1, 2),),
                       notify=lambda kind, labels, summary, description: sent.append((kind, labels, description)))

    t = tenancy()
    gangs = [("team-a", [{"GPU": 1.0}])]
    ledger.spend = {"team-a": TenantSpend(0.16, 0.5, 0.5)}
    view, changed = t.quota_view(gangs)
    assert changed and view.refuse("team-a", Demand(gpus=1)) is None and sent == []
    ledger.spend = {"team-a": TenantSpend(0.16, 0.85, 0.85)}
    clock.t += 1.0
    assert t.quota_view(gangs)[1] is False and ledger.calls == 1  # not re-read within the interval
    clock.t += 10.0
    view, changed = t.quota_view(gangs)
    assert changed and ledger.calls == 2 and [s[1]["level"] for s in sent] == ["80%"]
    assert sent[0][0] == "tenant_budget" and sent[0][1]["tenant"] == "team-a"
    ledger.spend = {"team-a": TenantSpend(0.16, 1.05, 1.05)}
    clock.t += 10.0
    view, _ = t.quota_view(gangs)
    assert view.refuse("team-a", Demand(gpus=1)) == "tenant budget team-a 1.05/1.00 USD today"
    assert view.refuse("team-b", Demand(gpus=1)) is None
    assert [s[1]["level"] for s in sent] == ["80%", "100%"]
    row = next(r for r in t.view(gangs, [])["tenants"] if r["tenant"] == "team-a")
    assert row["spend"]["today_usd"] == 1.05 and row["budget_waiting"] == "tenant budget team-a 1.05/1.00 USD today"
    # a restarted Coordinator neither repeats nor loses an alert (recorded in SQLite)
    again = tenancy()
    again.refresh_spend(clock.t)
    assert len(sent) == 2
    # the ledger unreadable: the last reading holds, the pass goes on
    ledger.fail = True
    clock.t += 10.0
    view, _ = again.quota_view(gangs)
    assert view.refuse("team-a", Demand(gpus=1)).startswith("tenant budget team-a 1.05/")


# ---------------------------------------------------------------------------------------------- the loop
def test_loop_a_tenant_over_its_daily_budget_waits_with_the_reason_and_another_tenant_runs(tmp_path):
    ops, clock = FakeOps(), Clock()
    clock.t = NOON
    core = CoordinatorCore(tmp_path, ops, clock=clock)
    spend = FakeSpend()
    spend.spend = {"team-a": TenantSpend(0.0, 4.1, 4.1)}
    core.tenancy._spend_of = spend  # (the fake cluster rents nothing: its ledger is empty)
    (tmp_path / "tenants.yaml").write_text("tenants:\n  team-a:\n    budget_usd: {day: 4.0}\n")
    a = core.submit({"name": "a", "entrypoint": "jobs.toy:noop", "tenant": "team-a",
                     "resources": {"gpus": 1, "cpus": 1}})["id"]
    b = core.submit({"name": "b", "entrypoint": "jobs.toy:noop", "tenant": "team-b",
                     "resources": {"gpus": 1, "cpus": 1}})["id"]
    for _ in range(3):
        clock.t += 0.1
        core.reconcile_once()
    assert core.get(b)["state"] == "RUNNING"
    job = core.get(a)
    assert job["state"] == "PENDING" and job["waiting"] == "tenant budget team-a 4.10/4.00 USD today"
    assert [g["job_id"] for g in core.budget_queue()] == []  # nothing is rented for it
    # the next day: within its budget again, it runs (nothing was lost while it waited)
    spend.spend = {"team-a": TenantSpend(0.0, 0.0, 4.1)}
    clock.t += 86400
    for _ in range(3):
        clock.t += 0.1
        core.reconcile_once()
    assert core.get(a)["state"] == "RUNNING"


def test_a_bad_budget_in_the_tenants_file_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="budget_usd.day"):
        parse_tenants({"tenants": {"a": {"budget_usd": {"day": -1}}}})
    with pytest.raises(ValueError, match="budget_usd.week: unknown field"):
        parse_tenants({"tenants": {"a": {"budget_usd": {"week": 1}}}})
    with pytest.raises(ValueError, match="max_usd_per_hour"):
        parse_tenants({"tenants": {"a": {"max_usd_per_hour": "lots"}}})


def test_the_cli_shows_each_tenants_spend_against_its_budgets(capsys, monkeypatch):
    """`raycluster tenants`: spend / budget columns, and why a tenant's jobs wait on its budget."""
    from raycluster.cli import commands
    from raycluster.cli.main import main

    quota = {"shares": 1.0, "max_usd_per_hour": 0.5, "budget_usd": {"day": 4.0}, "per_job": {}}
    row = {"tenant": "team-a", "listed": True, "quota": quota, "queued": 1, "usage": 10.0, "fair_share": 0.9,
           "holding": {"gpus": 1.0, "cpus": 1.0, "memory_mb": 0.0, "jobs": 1},
           "spend": {"usd_per_hour": 0.16, "today_usd": 4.1, "month_usd": 12.5},
           "budget_waiting": "tenant budget team-a 4.10/4.00 USD today"}
    free = {**row, "tenant": "team-b", "quota": {"shares": 1.0, "budget_usd": {}, "per_job": {}},
            "spend": {"usd_per_hour": 0.0, "today_usd": 0.0, "month_usd": 0.0}, "budget_waiting": None}

    class FakeClient:
        def tenants(self):
            return {"file": "/x/tenants.yaml", "error": None, "tenants": [row, free]}

    monkeypatch.setattr(commands, "client_for", lambda args, **kw: FakeClient())
    assert main(["tenants"]) == 0
    out = capsys.readouterr().out
    a_line = next(ln for ln in out.splitlines() if ln.startswith("team-a "))
    assert "0.16/0.50" in a_line and "4.10/4.00" in a_line and "12.50" in a_line
    b_line = next(ln for ln in out.splitlines() if ln.startswith("team-b "))
    assert "0.00" in b_line and "/" not in b_line.split()[5]
    assert "team-a: its jobs wait — tenant budget team-a 4.10/4.00 USD today" in out
