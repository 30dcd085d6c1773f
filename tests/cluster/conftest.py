"""Every test in tests/cluster/ runs against real local Ray clusters: mark them ``cluster``
(``pytest -m "not cluster"`` or ``pytest tests/unit`` skips them)."""

import os

import pytest


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's worker reads the xdist_group marks: this
def pytest_collection_modifyitems(items):  # conftest may load before it (`pytest tests/cluster/x.py`)
    from tests.conftest import SHARED_MODULES

    for item in items:
        if "/tests/cluster/" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)
            # under pytest-xdist (scripts/test.sh: -n 2 --dist loadgroup) a module's tests stay on one
            # worker (its cluster is started once), and the shared cluster's modules all on one
            name = item.fspath.basename
            item.add_marker(pytest.mark.xdist_group("shared" if name in SHARED_MODULES else name))
    # the modules on the one shared cluster run one after another: in one process, last (the cluster
    # is started for the first of them and stopped at the end of the session, so it idles beside no
    # other cluster); under pytest-xdist, first (their group is the longest: one worker runs it while
    # the other runs the rest, rather than it starting when everything else is done)
    first = bool(os.environ.get("PYTEST_XDIST_WORKER"))

    def key(item):
        name = item.fspath.basename
        if "/tests/cluster/" in str(item.fspath) and name in SHARED_MODULES:
            return SHARED_MODULES.index(name) + 1 - (100 if first else 0)
        return 0
    items[:] = sorted(items, key=key)  # (stable: the order within a module and of the others is kept)
