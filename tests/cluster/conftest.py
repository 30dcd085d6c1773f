"""Every test in tests/cluster/ runs against real local Ray clusters: mark them ``cluster``
(``pytest -m "not cluster"`` or ``pytest tests/unit`` skips them)."""

import os

import pytest


# Under pytest-xdist the groups go to whichever worker is free, in collection order
# (scripts/test.sh passes --no-loadscope-reorder: xdist would otherwise order them by test count),
# so the longest go first (longest-processing-time-first: no long group starts when the rest is
# done). Rough seconds of each module's own cluster work on the 2-core CI box — an ordering hint
# only; a module not listed goes after these, the unit tests last.
GROUP_SECONDS = {"test_cli_e2e.py": 260, "test_budget_local.py": 140, "test_autoscale_local.py": 130,
                 "test_ray_job_submit.py": 120, "test_soak.py": 116, "test_localcluster.py": 110,
                 "test_ray_up.py": 90, "test_storage_s3.py": 60, "test_http_market.py": 50, "test_ssh_market.py": 40}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's worker reads the xdist_group marks: this
def pytest_collection_modifyitems(config, items):  # conftest may load before it (`pytest tests/cluster/x.py`)
    from tests.conftest import SHARED_MODULES

    for item in items:
        if "/tests/cluster/" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)
            # under pytest-xdist (scripts/test.sh: -n 2 --dist loadgroup) a module's tests stay on one
            # worker (its cluster is started once), and the shared cluster's modules all on one
            name = item.fspath.basename
            item.add_marker(pytest.mark.xdist_group("shared" if name in SHARED_MODULES else name))
    # the modules on the one shared cluster run one after another: in one process, last (the cluster
    # is started for the first of them, so it idles beside no other cluster); under pytest-xdist,
    # first (their group is the longest: one worker runs it while the other runs the rest). Either
    # way the cluster is stopped when the last of them is done (``stop_the_shared_cluster_after...``)
    xdist = bool(os.environ.get("PYTEST_XDIST_WORKER"))

    def key(item):
        name = item.fspath.basename
        if "/tests/cluster/" not in str(item.fspath):
            return 0
        if name in SHARED_MODULES:
            return SHARED_MODULES.index(name) + 1 - (1000 if xdist else 0)
        return -GROUP_SECONDS.get(name, 1) if xdist else 0
    items[:] = sorted(items, key=key)  # (stable: the order within a module and of the others is kept)
    shared = [i.fspath.basename for i in items
              if "/tests/cluster/" in str(i.fspath) and i.fspath.basename in SHARED_MODULES]
    config.stash[LAST_SHARED] = shared[-1] if shared else None


LAST_SHARED = pytest.StashKey[str | None]()


@pytest.fixture(scope="module", autouse=True)
def stop_the_shared_cluster_after_its_last_module(request):
    """The shared cluster is stopped as soon as the last module on it is done, not at the end of the
    session: under pytest-xdist its worker goes on with other modules, which should not share the
    two cores with an idle four-node cluster."""
    yield
    if request.module.__file__ and os.path.basename(request.module.__file__) == request.config.stash.get(LAST_SHARED, None):
        from tests.conftest import stop_shared_cluster

        stop_shared_cluster()
