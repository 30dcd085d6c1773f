"""``ctx.should_checkpoint`` answering yes once when the control plane asks (a node about to be
given back): rank 0 asks the Coordinator every CHECKPOINT_ASK_INTERVAL_S without blocking, and the
answer is taken once. No cluster: the Coordinator's answers are faked at Ray's ``wait``/``get``."""

from __future__ import annotations

import ray

from raycluster import constants as C
from raycluster.rank.context import TrainContext


class _Ref:
    def __init__(self, value, ready=True):
        self.value, self.ready = value, ready


class FakeCoordinator:
    def __init__(self):
        self.asked = 0
        self.answers: list = []

        class _Method:
            def remote(inner, job_id, attempt):  # noqa: N805
                self.asked += 1
                return self.answers.pop(0) if self.answers else _Ref(False)

        self.checkpoint_wanted = _Method()


def _ctx(coord, policy=None, monkeypatch=None):
    monkeypatch.setattr(ray, "wait", lambda refs, timeout=None: ([r for r in refs if r.ready],
                                                                 [r for r in refs if not r.ready]))
    monkeypatch.setattr(ray, "get", lambda ref, timeout=None: ref.value)
    return TrainContext(job_id="j", attempt=1, rank=0, world_size=1, config={}, checkpoint_root="/tmp/x",
                        checkpoint_policy=policy or {}, checkpoint_manager=object(), coordinator=coord)


def test_a_request_is_answered_yes_once_without_a_checkpoint_policy(monkeypatch):
    coord = FakeCoordinator()
    ctx = _ctx(coord, monkeypatch=monkeypatch)
    clock = [1000.0]
    monkeypatch.setattr("raycluster.rank.context.time.monotonic", lambda: clock[0])
    ctx._asked_at = clock[0]
    assert [ctx.should_checkpoint(s) for s in range(1, 5)] == [False] * 4 and coord.asked == 0  # not due to ask yet
    coord.answers = [_Ref(True, ready=False)]
    clock[0] += C.CHECKPOINT_ASK_INTERVAL_S
    assert ctx.should_checkpoint(5) is False and coord.asked == 1  # asked; the answer has not come
    assert ctx.should_checkpoint(6) is False  # still not come: never waits for it
    coord_ref = ctx._ask_ref
    coord_ref.ready = True
    assert ctx.should_checkpoint(7) is True  # come: yes, once
    assert ctx.should_checkpoint(8) is False and coord.asked == 1  # the next ask only after the interval


def test_the_policy_still_decides_between_requests(monkeypatch):
    coord = FakeCoordinator()
    ctx = _ctx(coord, policy={"every_steps": 3}, monkeypatch=monkeypatch)
    assert [ctx.should_checkpoint(s) for s in range(1, 7)] == [False, False, True, False, False, True]


def test_no_checkpoint_manager_never_checkpoints(monkeypatch):
    ctx = _ctx(FakeCoordinator(), monkeypatch=monkeypatch)
    ctx._cm = None
    assert ctx.should_checkpoint(10) is False
