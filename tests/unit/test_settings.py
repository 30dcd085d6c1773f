"""The runtime's settings as one typed object (``raycluster.settings.Settings``): made from the
constants' declarations (defaults as today, the environment still overrides), validated (an unknown
name or a bad value is refused naming it, nothing changed), carried across processes as a dict, and
put in force whole (``install``). Plus the guard that makes ``install`` enough: no module reads a
setting at import time."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from raycluster import constants as C
from raycluster.errors import InvalidSetting
from raycluster.settings import Settings, of

PKG = Path(__file__).resolve().parents[2] / "raycluster"


def test_every_declared_constant_is_a_typed_field_with_its_default():
    d = Settings.defaults()
    assert set(Settings.model_fields) == set(C.DECLARED) and len(C.DECLARED) > 80
    for name, (tp, default) in C.DECLARED.items():
        assert getattr(d, name) == default and isinstance(getattr(d, name), tp), name
    assert d.RECONCILE_INTERVAL_S == 1.0 and d.PREEMPT_AFTER_S == 600.0 and d.METRICS_ENABLED is True


def test_the_environment_overrides_and_a_bad_value_names_its_variable():
    s = Settings.from_env({"RAYCLUSTER_PREEMPT_AFTER_S": "5", "RAYCLUSTER_METRICS_ENABLED": "off",
                           "RAYCLUSTER_HEALTH_FAILURE_THRESHOLD": "4", "RAYCLUSTER_NAMESPACE": "",
                           "RAYCLUSTER_STATE_DIR": "/somewhere"})  # (not a runtime setting: ignored here)
    assert (s.PREEMPT_AFTER_S, s.METRICS_ENABLED, s.HEALTH_FAILURE_THRESHOLD, s.NAMESPACE) == (5.0, False, 4,
                                                                                              "raycluster")
    assert s.changed() == {"PREEMPT_AFTER_S": 5.0, "METRICS_ENABLED": False, "HEALTH_FAILURE_THRESHOLD": 4}
    assert Settings.from_env(s.env()) == s  # what a process started from ``env()`` reads back
    for env, field in [({"RAYCLUSTER_PREEMPT_AFTER_S": "soon"}, "PREEMPT_AFTER_S"),
                       ({"RAYCLUSTER_METRICS_ENABLED": "perhaps"}, "METRICS_ENABLED"),
                       ({"RAYCLUSTER_HEALTH_FAILURE_THRESHOLD": "2.5"}, "HEALTH_FAILURE_THRESHOLD")]:
        with pytest.raises(InvalidSetting) as e:
            Settings.from_env(env)
        assert e.value.field == field and f"RAYCLUSTER_{field}" in str(e.value)


@pytest.mark.parametrize("overrides,field", [
    ({"PREEMPT_AFTER_SECONDS": 5}, "PREEMPT_AFTER_SECONDS"),  # a typo
    ({"PREEMPT_AFTER_S": "soon"}, "PREEMPT_AFTER_S"),
    ({"HEALTH_FAILURE_THRESHOLD": 2.5}, "HEALTH_FAILURE_THRESHOLD"),
    ({"METRICS_ENABLED": "perhaps"}, "METRICS_ENABLED"),
])
def test_a_bad_override_is_refused_naming_it_and_nothing_changes(overrides, field):
    base = Settings.defaults().with_overrides(PREEMPT_AFTER_S=7)
    with pytest.raises(InvalidSetting) as e:
        base.with_overrides(**overrides)
    assert e.value.field == field and field in str(e.value)
    assert base.PREEMPT_AFTER_S == 7.0 and base.changed() == {"PREEMPT_AFTER_S": 7.0}
    with pytest.raises(Exception):
        base.PREEMPT_AFTER_S = 1  # frozen: one object is one runtime's settings


def test_it_crosses_processes_as_a_dict_and_install_puts_every_field_in_force(monkeypatch):
    for name in C.DECLARED:  # (restored after the test)
        monkeypatch.setattr(C, name, getattr(C, name))
    s = Settings.defaults().with_overrides(RECONCILE_INTERVAL_S=0.2, PREEMPT_AFTER_S=4)
    assert of(s.model_dump()) == s and of(s) is s
    monkeypatch.setenv("RAYCLUSTER_FAIRSHARE_INTERVAL_S", "0.5")
    assert of(None).FAIRSHARE_INTERVAL_S == 0.5  # none given: this process's environment
    monkeypatch.setattr(C, "HEALTH_INTERVAL_S", 99.0)  # left by another runtime in a reused process
    s.install()
    assert (C.RECONCILE_INTERVAL_S, C.PREEMPT_AFTER_S, C.HEALTH_INTERVAL_S) == (0.2, 4.0, 5.0)
    Settings.defaults().install()
    assert (C.RECONCILE_INTERVAL_S, C.PREEMPT_AFTER_S) == (1.0, 600.0)


def _import_time_reads(tree: ast.Module) -> list[tuple[int, str]]:
    """``C.<SETTING>`` read when the module is imported: in module-level statements (not inside a
    function body) and in function default arguments."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for default in [*node.args.defaults, *node.args.kw_defaults]:
                if default is not None:
                    visit(default, False)
            for child in (node.body if isinstance(node.body, list) else [node.body]):
                visit(child, True)
            return
        if (not in_function and isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id == "C" and node.attr in C.DECLARED):
            found.append((node.lineno, node.attr))
        for child in ast.iter_child_nodes(node):
            visit(child, in_function)

    visit(tree, False)
    return found


# Read at import on purpose, each with why (set them in the environment of every process instead):
IMPORT_TIME = {"MAX_GANG_SIZE": "the job spec's schema bound (JobSpec.num_workers, the API's OpenAPI document)"}


def test_no_module_reads_a_setting_at_import_time():
    """``install`` changes ``constants``' attributes: only reads at call time see it."""
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        if path.name == "constants.py":
            continue
        tree = ast.parse(path.read_text())
        bad += [f"{path.relative_to(PKG.parent)}:{line} C.{name}" for line, name in _import_time_reads(tree)
                if name not in IMPORT_TIME]
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "raycluster.constants":
                bad += [f"{path.relative_to(PKG.parent)}:{node.lineno} from raycluster.constants import {a.name}"
                        for a in node.names if a.name in C.DECLARED]
    assert not bad, "settings read at import time (install() cannot change them):\n" + "\n".join(bad)
