"""scripts/test.sh runs the suite on two pytest-xdist workers with ``--dist loadgroup``: the
``xdist_group`` marks tests/cluster/conftest.py adds keep a module's tests (and the shared cluster's
modules) on one worker, so each cluster starts once. Grouping can break silently (pytest 9.2 with
pytest-xdist 3.8: pytest-xdist#1386) — the suite still passes, just with every cluster started on both
workers — and a conftest loaded before xdist's worker plugin (a root conftest, or
``pytest tests/cluster/test_x.py``) must add its marks ``tryfirst``, or xdist has already read them.
This runs a tiny project that way (its conftest at the root: the early case) and checks that the
groups held."""

import re
import subprocess
import sys

CONFTEST = '''
import pytest

@pytest.hookimpl(tryfirst=True)  # as tests/cluster/conftest.py adds them: before xdist reads them
def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.xdist_group(item.fspath.basename))
'''
MODULE = "import os\n\n" + "".join(
    f"def test_{i}():\n    print(os.environ['PYTEST_XDIST_WORKER'])\n\n" for i in range(4))


def test_loadgroup_keeps_a_modules_tests_on_one_worker(tmp_path):
    (tmp_path / "conftest.py").write_text(CONFTEST)
    for name in ("a", "b", "c"):
        (tmp_path / f"test_{name}.py").write_text(MODULE)
    out = subprocess.run([sys.executable, "-m", "pytest", "-v", "-n", "2", "--dist", "loadgroup",
                          "-p", "no:cacheprovider", str(tmp_path)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ran = re.findall(r"\[(gw\d)\] .*PASSED \S*(test_\w)\.py::test_\d(@\S+)?", out.stdout)
    assert len(ran) == 12, out.stdout[-3000:]
    assert all(group for _, _, group in ran), f"no @group on the node ids: grouping is off\n{out.stdout[-3000:]}"
    workers = {}
    for worker, module, _ in ran:
        workers.setdefault(module, set()).add(worker)
    assert all(len(w) == 1 for w in workers.values()), workers
