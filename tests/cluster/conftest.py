"""Every test in tests/cluster/ runs against real local Ray clusters: mark them ``cluster``
(``pytest -m "not cluster"`` or ``pytest tests/unit`` skips them)."""

import os

import pytest


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
    # way the cluster is stopped when the last of them is done (``stop_the_shared_cluster_after...``).
    # (Ordering the other groups longest-first — --no-loadscope-reorder — was tried: on the saturated
    # 2-core box it ran the two heaviest groups side by side and took 17 min instead of 14.)
    xdist = bool(os.environ.get("PYTEST_XDIST_WORKER"))

    def key(item):
        name = item.fspath.basename
        if "/tests/cluster/" in str(item.fspath) and name in SHARED_MODULES:
            return SHARED_MODULES.index(name) + 1 - (100 if xdist else 0)
        return 0
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
