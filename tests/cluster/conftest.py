"""Every test in tests/cluster/ runs against real local Ray clusters: mark them ``cluster``
(``pytest -m "not cluster"`` or ``pytest tests/unit`` skips them)."""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/cluster/" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)
