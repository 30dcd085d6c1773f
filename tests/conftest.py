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
# The modules sharing the second cluster (``aux_cluster``): those whose nodes need an environment of
# their own from the start — `ray job submit`'s short package pin, the object store's AWS_* — one
# cluster instead of one each.
AUX_MODULES = ("test_ray_job_submit.py", "test_storage_s3.py")
AUX_WORKERS = 2
# The modules sharing a head alone (``head_cluster``): the markets', which rent nodes into it through
# the node provider themselves.
MARKET_MODULES = ("test_http_market.py", "test_ssh_market.py")
# each pool of modules sharing one cluster: its xdist group and its modules
CLUSTER_POOLS = {"shared": SHARED_MODULES, "aux": AUX_MODULES, "markets": MARKET_MODULES}
# Ray pins an uploaded working_dir for this long (default 600 s); short on the aux cluster so that a
# package whose only holder was a finished Ray job would be deleted during test_ray_job_submit if the
# Coordinator did not pin it
PIN_ENV = {"RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S": "5"}


def pool_of(module_basename: str) -> str | None:
    """The pool (``CLUSTER_POOLS``) whose cluster a test module shares, if any."""
    return next((pool for pool, mods in CLUSTER_POOLS.items() if module_basename in mods), None)


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

    _POOL_STOP.setdefault("shared", []).append(stop)
    try:
        yield lc
    finally:
        stop_pool_cluster("shared")


@pytest.fixture(scope="session")
def aux_cluster(tmp_path_factory):
    """The second shared cluster — head (no CPUs) + 2 workers (2 CPUs, no GPU each), token auth —
    whose nodes start with TEST_ENV, PIN_ENV and the AWS_* environment of a real S3-compatible
    server on loopback (moto's; ``tests/s3server.py``), which runs as long as the cluster. Yields
    ``SimpleNamespace(lc, s3_base, s3_env)``; each module restarts the runtime on it
    (``runtime_on_shared``)."""
    import ray
    from types import SimpleNamespace

    from raycluster.provision.local.cluster import LocalCluster
    from tests.s3server import s3_server

    stack = contextlib.ExitStack()
    base, s3_env = stack.enter_context(s3_server())
    os.environ.update(TEST_ENV)
    lc = LocalCluster(Path(tmp_path_factory.mktemp("rc-aux")), num_workers=AUX_WORKERS, cpus_per_worker=2,
                      gpus_per_worker=0, env={**TEST_ENV, **PIN_ENV, **s3_env})
    stack.callback(lc.stop)
    stack.callback(ray.shutdown)
    _POOL_STOP.setdefault("aux", []).append(stack.close)
    try:
        lc.start()
        yield SimpleNamespace(lc=lc, s3_base=base, s3_env=s3_env)
    finally:
        stop_pool_cluster("aux")


@pytest.fixture(scope="session")
def head_cluster(tmp_path_factory):
    """A head alone (1 CPU, no GPU, no workers, not elastic) for the market modules: each starts its
    market's server and rents nodes into this cluster through the node provider itself."""
    import ray

    from raycluster.provision.local.cluster import LocalCluster

    lc = LocalCluster(Path(tmp_path_factory.mktemp("rc-markets")), num_workers=0, head_cpus=1)

    def stop() -> None:
        ray.shutdown()
        lc.stop()

    _POOL_STOP.setdefault("markets", []).append(stop)
    try:
        lc.start()
        yield lc
    finally:
        stop_pool_cluster("markets")


_POOL_STOP: dict[str, list] = {}  # how to stop each pool's cluster, while it runs


def stop_pool_cluster(pool: str) -> None:
    """Stop the pool's cluster now if it runs (idempotent; tests/cluster/conftest.py calls it after
    the last module on it, the session's teardown again)."""
    stops = _POOL_STOP.get(pool, [])
    while stops:
        stops.pop()()


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """``reference(entrypoint, config, world_size=1)``: an undisturbed run's result, computed here
    without Ray once per session (tests/reference.py) — what an "identical result" test compares to
    instead of running its baseline on the cluster first; ``reference.start(...)``: the same as a
    Future, computed while the test's job runs."""
    from tests.reference import References

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # (one per xdist session)
    refs = References(shared / "reference")
    yield refs
    refs.close()


@contextlib.contextmanager
def runtime_on_shared(lc, state_dir: Path, settings, workers: int = SHARED_WORKERS, storage_uri: str | None = None):
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
        for _ in range(workers - sum(1 for n in lc.nodes() if n.role == "worker" and n.alive)):
            lc.add_worker()
        yield restart_runtime(state_dir, settings, storage_uri=storage_uri)
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
