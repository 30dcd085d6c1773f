"""The toy counter's hold: a test paces a job by an event it controls (a file appears), and the
result is the one of an unheld run."""

import threading
import time

from jobs.toy import counter
from raycluster.rank.context import BareContext


class Recording(BareContext):
    def __init__(self, config):
        super().__init__(config)
        self.steps: list[int] = []

    def report(self, **metrics):
        self.steps.append(metrics["step"])


def test_the_counter_holds_after_its_step_until_the_file_exists(tmp_path):
    go = tmp_path / "go"
    ctx = Recording({"steps": 30, "hold_at_step": 12, "hold_until_file": str(go)})
    out = {}
    runner = threading.Thread(target=lambda: out.update(counter(ctx)), daemon=True)
    runner.start()
    deadline = time.monotonic() + 30
    while ctx.steps[-1:] != [12] and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    assert ctx.steps == list(range(1, 13)) and runner.is_alive()  # held after step 12, not before, not past
    go.touch()
    runner.join(30)
    assert not runner.is_alive() and ctx.steps == list(range(1, 31))
    assert out["total"] == counter(Recording({"steps": 30}))["total"]  # holding changes nothing
