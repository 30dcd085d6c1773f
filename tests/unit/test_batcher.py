"""SubmitBatcher (api/batcher.py): concurrent single submits share Coordinator calls; each request
gets its own answer, also when the shared call is refused; nothing is made twice."""

from __future__ import annotations

import asyncio

import pytest

from raycluster.api.batcher import SubmitBatcher
from raycluster.api.errors import unavailable
from raycluster.errors import IdempotencyKeyReused, InvalidJobSpec


class FakeCoordinator:
    """Makes one job per new key (as the Coordinator: all or none per batch, a key made once)."""

    def __init__(self, delay_s: float = 0.01):
        self.jobs: dict[str, dict] = {}
        self.calls: list[tuple[str, int]] = []
        self.delay_s = delay_s
        self.down = False

    def _check(self, data, key, where=""):
        if data.get("bad"):
            raise InvalidJobSpec(f"{where}bad spec", field=f"{where}spec.bad")
        if key in self.jobs and self.jobs[key]["spec"] != data:
            raise IdempotencyKeyReused(f"{where}key {key} reused", field=f"{where}idempotency_key")

    def _make(self, data, key, by=None):
        return self.jobs.setdefault(key, {"id": f"job-{len(self.jobs)}", "spec": data, "by": by})

    async def many(self, items, bys):
        self.calls.append(("many", len(items)))
        down = self.down
        await asyncio.sleep(self.delay_s)
        if down:
            raise unavailable("the Coordinator is not reachable")
        for i, it in enumerate(items):
            self._check(it["spec"], it["idempotency_key"], f"jobs[{i}].")
        return [self._make(it["spec"], it["idempotency_key"], by) for it, by in zip(items, bys)]

    async def one(self, data, key, by=None):
        self.calls.append(("one", 1))
        down = self.down
        await asyncio.sleep(self.delay_s)
        if down:
            raise unavailable("the Coordinator is not reachable")
        self._check(data, key)
        return self._make(data, key, by)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


async def in_flight(b, data, key):
    """Submit one request and let its Coordinator call start: the next ones queue behind it."""
    first = asyncio.ensure_future(b.submit(data, key))
    await asyncio.sleep(0.002)
    return first


def test_a_lone_request_goes_out_at_once_alone():
    coord = FakeCoordinator()
    b = SubmitBatcher(coord.many, coord.one, 100)
    out = run(b.submit({"n": 1}, "k1"))
    assert out["id"] == "job-0" and coord.calls == [("one", 1)]


def test_a_burst_shares_calls_and_each_gets_its_own_job():
    coord = FakeCoordinator()
    b = SubmitBatcher(coord.many, coord.one, 100)

    async def burst():
        return await asyncio.gather(*[b.submit({"n": i}, f"k{i}") for i in range(250)])

    out = run(burst())
    assert [o["spec"] for o in out] == [{"n": i} for i in range(250)]
    assert len({o["id"] for o in out}) == 250 and len(coord.jobs) == 250
    # all arrived at once: batches of at most 100
    assert coord.calls == [("many", 100), ("many", 100), ("many", 50)] and b.batched == 250


def test_a_refused_batch_answers_each_request_on_its_own():
    """One bad spec and one reused key in a burst: those two get their own errors (naming their own
    field, not jobs[i]), every other request its job, none made twice."""
    coord = FakeCoordinator()
    coord.jobs["taken"] = {"id": "job-old", "spec": {"other": True}}
    b = SubmitBatcher(coord.many, coord.one, 100)

    async def burst():
        first = asyncio.ensure_future(b.submit({"n": -1}, "first"))  # in flight while the rest queue
        await asyncio.sleep(0.002)  # the first call is in flight
        rest = [b.submit({"n": i, **({"bad": 1} if i == 3 else {})}, "taken" if i == 5 else f"k{i}")
                for i in range(10)]
        return await first, await asyncio.gather(*rest, return_exceptions=True)

    first, out = run(burst())
    assert first["id"] and isinstance(out[3], InvalidJobSpec) and out[3].field == "spec.bad"
    assert isinstance(out[5], IdempotencyKeyReused) and out[5].field == "idempotency_key"
    good = [o for i, o in enumerate(out) if i not in (3, 5)]
    assert all(o["spec"]["n"] == i for i, o in zip([0, 1, 2, 4, 6, 7, 8, 9], good))
    assert len(coord.jobs) == 1 + 1 + 8  # the old one, the first, the 8 good ones: nothing twice


def test_the_same_key_twice_in_a_burst_makes_one_job():
    coord = FakeCoordinator()
    b = SubmitBatcher(coord.many, coord.one, 100)

    async def burst():
        first = await in_flight(b, {"n": 0}, "k0")
        return [await first, *await asyncio.gather(*[b.submit({"n": 1}, "same") for _ in range(3)])]

    out = run(burst())
    assert out[1]["id"] == out[2]["id"] == out[3]["id"] and len(coord.jobs) == 2


def test_an_unreachable_coordinator_is_every_request_s_answer_at_once():
    coord = FakeCoordinator()
    b = SubmitBatcher(coord.many, coord.one, 100)

    async def burst():
        first = await in_flight(b, {"n": 0}, "k0")
        coord.down = True
        return await asyncio.gather(first, *[b.submit({"n": i}, f"k{i}") for i in range(1, 6)],
                                    return_exceptions=True)

    out = run(burst())
    assert out[0]["id"] == "job-0"
    assert all(getattr(o, "status", None) == 503 for o in out[1:])
    assert coord.calls == [("one", 1), ("many", 5)]  # not sent again one by one


@pytest.mark.parametrize("max_batch", [1, 7])
def test_batches_never_exceed_the_limit(max_batch):
    coord = FakeCoordinator(delay_s=0.005)
    b = SubmitBatcher(coord.many, coord.one, max_batch)

    async def burst():
        return await asyncio.gather(*[b.submit({"n": i}, f"k{i}") for i in range(40)])

    out = run(burst())
    assert len({o["id"] for o in out}) == 40 and all(n <= max_batch for _k, n in coord.calls)


def test_each_submit_keeps_its_submitter_in_a_shared_batch():
    """Requests of different users share one Coordinator call; each job records who submitted it."""
    coord = FakeCoordinator(delay_s=0.01)
    b = SubmitBatcher(coord.many, coord.one, 100)

    async def burst():
        return await asyncio.gather(*[b.submit({"n": i}, f"k{i}", f"user{i % 3}@t") for i in range(12)])

    out = run(burst())
    assert [j["by"] for j in out] == [f"user{i % 3}@t" for i in range(12)]
    assert any(kind == "many" and n > 1 for kind, n in coord.calls), coord.calls  # they did share one
