"""Shared fixtures: a real local multi-node Ray cluster with the raycluster runtime on it."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest

# Settings the cluster tests change from the defaults users get, each for speed alone. Health, load
# and heartbeat settings are NOT among them: every cluster test judges nodes exactly as a user's
# cluster does (tests/cluster/test_health.py runs with no setting changed at all).
TEST_SETTINGS = {
    # the loop is woken by every event (a submit, a rank ending); polling faster only shortens the
    # waits of tests that look at state between events
    "RECONCILE_INTERVAL_S": 0.2,
    # how long the other ranks of a gang whose rank failed get to report before it is recovered
    # (the default 20 s would add 12 s to every injected failure)
    "FAILURE_SETTLE_S": 8.0,
}
# ... as the environment of the clusters a test module starts for itself (their node providers and
# `ray job submit` drivers read the environment; the runtime gets them as Settings as well)
TEST_ENV = {**{f"RAYCLUSTER_{k}": str(v) for k, v in TEST_SETTINGS.items()}, "RAY_DEDUP_LOGS": "0"}


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


@contextlib.contextmanager
def sampled(read, every_s: float):
    """A list that fills with ``read()`` every ``every_s`` seconds (a thread) until the block ends."""
    import threading

    samples, stop = [], threading.Event()

    def run():
        while not stop.is_set():
            samples.append(read())
            time.sleep(every_s)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def local_runtime(state_dir: Path, num_workers: int, storage_uri: str | None = None,
                  env: dict[str, str] | None = None):
    """Head (no CPUs) + ``num_workers`` workers (2 CPUs, 1 logical GPU each) with TEST_ENV, this
    process connected, runtime actors started: yields ``(LocalCluster, Coordinator handle)``.
    Afterwards: Serve (if a test started it) shut down, disconnected, exactly our nodes stopped."""
    import ray

    from raycluster.provision.local.cluster import LocalCluster
    from raycluster.control.actors import start_runtime

    os.environ.update(TEST_ENV)
    lc = LocalCluster(state_dir, num_workers=num_workers, cpus_per_worker=2, gpus_per_worker=1,
                      env={**TEST_ENV, **(env or {})})
    lc.start()
    try:
        lc.connect(namespace="raycluster", log_to_driver=False)
        from raycluster.settings import Settings

        settings = Settings.from_env({**TEST_ENV, **(env or {})})  # (its RAYCLUSTER_* entries)
        yield lc, start_runtime(state_dir, storage_uri=storage_uri, settings=settings)
    finally:
        if ray.is_initialized():
            from ray import serve

            with contextlib.suppress(Exception):
                serve.shutdown()
        ray.shutdown()
        lc.stop()


@contextlib.contextmanager
def runtime_at_defaults(state_dir: Path, **cluster_kwargs):
    """A local cluster (``LocalCluster(state_dir, **cluster_kwargs)``) and the runtime actors with no
    knob changed — as ``raycluster up --local`` makes them: none of TEST_ENV, and none of the knobs
    other modules left in this process's environment (node processes start from it). Yields
    ``(LocalCluster, Client)``; afterwards disconnected, exactly our nodes stopped, the env restored."""
    import ray

    from raycluster.client.ray_client import Client
    from raycluster.control.actors import start_runtime
    from raycluster.provision.local.cluster import LocalCluster

    saved = {k: os.environ.pop(k) for k in list(os.environ)
             if k.startswith("RAYCLUSTER_") and k != "RAYCLUSTER_STATE_DIR"}
    lc = LocalCluster(state_dir, **cluster_kwargs)
    lc.start()
    try:
        lc.connect(namespace="raycluster", log_to_driver=False)
        from raycluster.settings import Settings

        yield lc, Client(start_runtime(state_dir, settings=Settings.defaults()))
    finally:
        ray.shutdown()
        lc.stop()
        os.environ.update(saved)


def settings_for_tests(**more):
    """The runtime's Settings with TEST_SETTINGS (and ``more``) changed from the defaults."""
    from raycluster.settings import Settings

    return Settings.defaults().with_overrides(**{**TEST_SETTINGS, **more})


# The test modules that share one cluster (below), run last (tests/cluster/conftest.py orders them)
# in this order: test_api and test_health first, while no node of the shared cluster has been
# killed yet (they count nodes).
SHARED_MODULES = ("test_api.py", "test_health.py", "test_cluster_integration.py", "test_sharing.py")
SHARED_WORKERS = 3


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory):
    """One local cluster for the modules that need only its shape — head (no CPUs) + 3 workers
    (2 CPUs, 1 logical GPU each) — instead of one each: each module restarts the runtime on it with
    its own settings and state dir (``runtime_on_shared``). Started with no RAYCLUSTER_* knob in its
    nodes' environment: what each runtime does comes from the Settings it is started with."""
    import ray

    from raycluster.provision.local.cluster import LocalCluster

    saved = {k: os.environ.pop(k) for k in list(os.environ)
             if k.startswith("RAYCLUSTER_") and k != "RAYCLUSTER_STATE_DIR"}
    lc = LocalCluster(Path(tmp_path_factory.mktemp("rc-shared")), num_workers=SHARED_WORKERS, cpus_per_worker=2,
                      gpus_per_worker=1, env={"RAY_DEDUP_LOGS": "0"})
    lc.start()

    def stop() -> None:
        ray.shutdown()
        lc.stop()
        os.environ.update(saved)

    _SHARED_STOP.append(stop)
    try:
        yield lc
    finally:
        stop_shared_cluster()


_SHARED_STOP: list = []  # how to stop the shared cluster, while it runs


def stop_shared_cluster() -> None:
    """Stop the shared cluster now if it runs (idempotent; tests/cluster/conftest.py calls it after
    the last module on it, the session's teardown again)."""
    while _SHARED_STOP:
        _SHARED_STOP.pop()()


@contextlib.contextmanager
def runtime_on_shared(lc, state_dir: Path, settings):
    """The shared cluster with this process connected, a node killed by an earlier module replaced,
    and the runtime restarted with ``settings`` in ``state_dir`` (which also finds the cluster: its
    ``local-cluster`` record is linked there, for the CLI). Yields the Coordinator handle;
    afterwards Serve (if started) shut down, the runtime stopped, disconnected — the cluster stays."""
    import ray

    from raycluster.control.actors import restart_runtime, stop_runtime
    from raycluster.provision.local.record import CLUSTER_DIRNAME, cluster_dir

    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / CLUSTER_DIRNAME).symlink_to(cluster_dir(lc.state_dir))
    lc.connect(namespace="raycluster", log_to_driver=False)
    try:
        for _ in range(SHARED_WORKERS - sum(1 for n in lc.nodes() if n.role == "worker" and n.alive)):
            lc.add_worker()
        yield restart_runtime(state_dir, settings)
    finally:
        from ray import serve

        with contextlib.suppress(Exception):
            serve.shutdown()
        with contextlib.suppress(Exception):
            stop_runtime()
        ray.shutdown()


def coordinator_restarted(coord, pid_before: int) -> bool:
    """Whether the Coordinator answers again, from another process than ``pid_before``."""
    import ray

    try:
        return ray.get(coord.ping.remote(), timeout=5)["pid"] != pid_before
    except Exception:
        return False


@pytest.fixture(scope="module")
def cluster(shared_cluster, tmp_path_factory):
    """The shared cluster (head + 3 workers of 2 CPUs, 1 logical GPU), the runtime on it with TEST_SETTINGS."""
    state_dir = Path(tmp_path_factory.mktemp("rc-state"))
    with runtime_on_shared(shared_cluster, state_dir, settings_for_tests()) as coord:
        yield {"lc": shared_cluster, "state_dir": state_dir, "coord": coord}


@pytest.fixture
def client(cluster):
    from raycluster.client.ray_client import Client

    return Client(cluster["coord"])
