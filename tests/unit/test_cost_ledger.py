"""The cost ledger: policy/cost.py's arithmetic, and control/elastic/ledger.py over real SQLite books
(usage in jobs.db, rentals in the provider's rentals.db). No cluster."""

from __future__ import annotations

import json

import pytest

from raycluster.control.elastic.ledger import JobLedger
from raycluster.policy.cost import Rental, attribute
from raycluster.provision.local.record import cluster_dir
from raycluster.labels import RENTAL_LABEL
from raycluster.store.rentals import RentalRecord, RentalState, RentalStore

H = 3600.0


def test_jobs_plus_unattributed_is_the_rentals_total_to_the_cent():
    rentals = [Rental("a", 0.16, 0, 2 * H), Rental("b", 0.53, H, None)]
    usage = [
        {"job_id": "j1", "rental_id": "a", "share": 1.0, "start": 0.5 * H, "end": 1.0 * H},  # 0.08
        {"job_id": "j1", "rental_id": "b", "share": 0.5, "start": 1.5 * H, "end": None},  # 0.5*0.53*1.5
        {"job_id": "j2", "rental_id": "a", "share": 0.5, "start": 1.0 * H, "end": 3.0 * H},  # clipped at 2h: 1 h x 0.16 x 0.5 = 0.08
        {"job_id": "j3", "rental_id": "gone", "share": 1.0, "start": 0, "end": H},  # an unknown rental: nothing
    ]
    att = attribute(usage, rentals, now=3 * H)
    assert att.by_job_usd == {"j1": pytest.approx(0.08 + 0.3975), "j2": pytest.approx(0.08)}
    assert att.total_usd == pytest.approx(2 * 0.16 + 2 * 0.53)
    assert round(sum(att.by_job_usd.values()) + att.unattributed_usd, 2) == round(att.total_usd, 2)
    assert att.unattributed_usd == pytest.approx(att.total_usd - 0.5575)


def _elastic(tmp_path):
    cluster_dir(tmp_path).mkdir(parents=True)
    (cluster_dir(tmp_path) / "autoscaling.json").write_text(json.dumps({"provider": {"state_dir": str(tmp_path / "p")}}))
    (tmp_path / "p").mkdir()
    return RentalStore(tmp_path / "p" / "rentals.db")


def _node(nid, rental=None, gpus=1, cpus=2):
    return {"id": nid, "labels": {RENTAL_LABEL: rental} if rental else {},
            "resources_total": {"GPU": float(gpus), "CPU": float(cpus)}}


def test_an_attempt_is_charged_its_share_of_each_rented_node_and_a_preemption_is_recognised(tmp_path):
    rentals = _elastic(tmp_path)
    for rid, price in (("r1", 0.2), ("r2", 0.4)):
        rentals.insert(RentalRecord(id=rid, request_id=rid, market="local", node_type="t", kind="spot", gpu_type="T4",
                                    usd_per_hour=price, created_at=0.0, state=RentalState.RUNNING))
    clock = [0.0]
    ledger = JobLedger(tmp_path, elastic=True, clock=lambda: clock[0])
    nodes = [_node("n1", "r1", gpus=2), _node("n2", "r2"), _node("head")]
    # attempt 1: two 1-GPU bundles on n1 (its 2 GPUs: share 1.0) and one on n2, one on the head
    ledger.placed("job", 1, ["n1", "n1", "n2", "head"], {"GPU": 1.0, "CPU": 1.0}, nodes, now=0.0)
    assert sorted(ledger.usage.rentals_of("job", 1)) == ["r1", "r2"]
    assert not ledger.preempted("job", 1)
    rentals.update("r2", preempt_deadline=1800.0)
    assert ledger.preempted("job", 1)
    ledger.ended("job", 1, now=H / 2)
    rentals.transition("r2", RentalState.RELEASED, released_at=H / 2)
    # attempt 2 on n1 alone, half of it (a CPU-only bundle on a GPU node would use its CPU share)
    ledger.placed("job", 2, ["n1"], {"GPU": 1.0, "CPU": 1.0}, nodes, now=H)
    clock[0] = 2 * H
    costs = ledger.costs(["job", "other"])
    assert costs == {"job": pytest.approx(0.5 * 0.2 + 0.5 * 0.4 + 0.5 * 0.2), "other": 0.0}
    # what it costs now: half of n1 (r1 at 0.2 USD/h); the ended attempt's shares cost nothing any more
    assert ledger.rates(["job", "other"]) == {"job": pytest.approx(0.5 * 0.2), "other": 0.0}
    att = ledger.attribution()
    assert round(sum(att.by_job_usd.values()) + att.unattributed_usd, 2) == round(att.total_usd, 2)
    assert att.total_usd == pytest.approx(2 * 0.2 + 0.5 * 0.4)


def test_a_fixed_cluster_records_nothing_and_costs_nothing(tmp_path):
    ledger = JobLedger(tmp_path, elastic=False, clock=lambda: 0.0)
    ledger.placed("job", 1, ["n1"], {"GPU": 1.0}, [_node("n1", "r1")], now=0.0)
    assert ledger.usage.rows() == [] and ledger.costs(["job"]) == {"job": 0.0} and not ledger.preempted("job", 1)


def test_a_price_move_bills_each_stretch_at_its_price_and_jobs_still_add_up_to_the_total():
    from raycluster.policy.cost import usd_between

    history = ((0.0, 0.2), (H, 0.5), (2 * H, 0.1))
    assert usd_between(0.1, history, 0, 3 * H) == pytest.approx(0.2 + 0.5 + 0.1)
    assert usd_between(0.1, history, 0.5 * H, 1.5 * H) == pytest.approx(0.1 + 0.25)
    assert usd_between(0.1, (), 0, 2 * H) == pytest.approx(0.2)  # no history: one price all along
    assert usd_between(0.1, history, 2 * H, H) == 0.0
    rentals = [Rental("a", 0.1, 0, None, history), Rental("b", 0.53, 0, 3 * H)]
    usage = [{"job_id": "j1", "rental_id": "a", "share": 1.0, "start": 0.5 * H, "end": 1.5 * H},
             {"job_id": "j2", "rental_id": "a", "share": 0.5, "start": H, "end": None},
             {"job_id": "j2", "rental_id": "b", "share": 1.0, "start": 0, "end": H}]
    att = attribute(usage, rentals, now=3 * H)
    assert att.total_usd == pytest.approx(0.8 + 3 * 0.53)
    assert att.by_job_usd["j1"] == pytest.approx(0.35)
    assert att.by_job_usd["j2"] == pytest.approx(0.5 * (0.5 + 0.1) + 0.53)
    assert round(sum(att.by_job_usd.values()) + att.unattributed_usd, 2) == round(att.total_usd, 2)
