"""Shared fixtures: a real local multi-node Ray cluster with the raycluster runtime on it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

# knobs that make the control loop react fast in tests; they reach the actors through the node env
TEST_ENV = {
    "RAYCLUSTER_RECONCILE_INTERVAL_S": "0.2",
    "RAYCLUSTER_FAILURE_SETTLE_S": "8",
    "RAY_DEDUP_LOGS": "0",
}


def wait_for(pred, timeout_s: float, what: str, poll_s: float = 0.2):
    """Poll ``pred`` until it returns something truthy; fail the test with ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (no CPUs) + 3 workers (2 CPUs, 1 logical GPU each), runtime actors started."""
    import ray

    from raycluster.localcluster import LocalCluster
    from raycluster.runtime import start_runtime

    state_dir = tmp_path_factory.mktemp("rc-state")
    os.environ.update(TEST_ENV)
    lc = LocalCluster(state_dir, num_workers=3, cpus_per_worker=2, gpus_per_worker=1, env=dict(TEST_ENV))
    lc.start()
    try:
        lc.connect(namespace="raycluster", log_to_driver=False)
        coord = start_runtime(state_dir)
        yield {"lc": lc, "state_dir": Path(state_dir), "coord": coord}
    finally:
        ray.shutdown()
        lc.stop()


@pytest.fixture
def client(cluster):
    from raycluster.runtime import Client

    return Client(cluster["coord"])
