"""Every test in tests/cluster/ runs against real local Ray clusters: mark them ``cluster``
(``pytest -m "not cluster"`` or ``pytest tests/unit`` skips them)."""

import os

import pytest


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's worker reads the xdist_group marks: this
def pytest_collection_modifyitems(config, items):  # conftest may load before it (`pytest tests/cluster/x.py`)
    from tests.conftest import CLUSTER_POOLS, SHARED_MODULES, pool_of

    for item in items:
        if "/tests/cluster/" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)
            # under pytest-xdist (scripts/test.sh: -n 2 --dist loadgroup) a module's tests stay on one
            # worker (its cluster is started once), and the modules of a shared cluster all on one
            name = item.fspath.basename
            item.add_marker(pytest.mark.xdist_group(pool_of(name) or name))
    # the modules on the one shared cluster run one after another: in one process, last (the cluster
    # is started for the first of them, so it idles beside no other cluster); under pytest-xdist,
    # first (their group is the longest: one worker runs it while the other runs the rest). Either
    # way the cluster is stopped when the last of them is done (``stop_the_shared_cluster_after...``).
    # (Ordering the other groups longest-first — --no-loadscope-reorder — was tried: on the saturated
    # 2-core box it ran the two heaviest groups side by side and took 17 min instead of 14.)
    xdist = bool(os.environ.get("PYTEST_XDIST_WORKER"))

    # The aux cluster's modules run one after another as well (after the others, in one process).
    def key(item):
        name = item.fspath.basename
        if "/tests/cluster/" in str(item.fspath) and name in SHARED_MODULES:
            return SHARED_MODULES.index(name) + 1 - (100 if xdist else 0)
        if "/tests/cluster/" in str(item.fspath) and pool_of(name):
            return 0.5
        return 0
    items[:] = sorted(items, key=key)  # (stable: the order within a module and of the others is kept)
    last = {}
    for i in items:
        if "/tests/cluster/" in str(i.fspath) and (pool := pool_of(i.fspath.basename)):
            last[pool] = i.fspath.basename
    config.stash[LAST_OF_POOL] = {pool: last.get(pool) for pool in CLUSTER_POOLS}


LAST_OF_POOL = pytest.StashKey[dict]()


@pytest.fixture(scope="module", autouse=True)
def stop_a_shared_cluster_after_its_last_module(request):
    """A shared cluster is stopped as soon as the last module on it is done, not at the end of the
    session: under pytest-xdist its worker goes on with other modules, which should not share the
    two cores with an idle cluster."""
    yield
    if not request.module.__file__:
        return
    from tests.conftest import pool_of, stop_pool_cluster

    name = os.path.basename(request.module.__file__)
    pool = pool_of(name)
    if pool and request.config.stash.get(LAST_OF_POOL, {}).get(pool) == name:
        stop_pool_cluster(pool)
