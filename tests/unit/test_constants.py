"""Environment overrides of raycluster/constants.py (pure, no cluster)."""

from __future__ import annotations

import pytest

from raycluster import constants as C


@pytest.mark.parametrize("raw,expected", [
    (None, True), ("", True), ("1", True), ("true", True), ("YES", True), (" on ", True),
    ("0", False), ("False", False), ("no", False), ("off", False),
])
def test_env_bool(monkeypatch, raw, expected):
    monkeypatch.setattr(C, "DECLARED", dict(C.DECLARED))  # (a declaration: not left behind for other tests)
    if raw is None:
        monkeypatch.delenv("RAYCLUSTER_SOME_FLAG", raising=False)
    else:
        monkeypatch.setenv("RAYCLUSTER_SOME_FLAG", raw)
    assert C._env_bool("SOME_FLAG", True) is expected


@pytest.mark.parametrize("raw", ["2", "maybe", "enabled"])
def test_env_bool_rejects_anything_else_naming_the_variable(monkeypatch, raw):
    monkeypatch.setattr(C, "DECLARED", dict(C.DECLARED))
    monkeypatch.setenv("RAYCLUSTER_SOME_FLAG", raw)
    with pytest.raises(ValueError, match="RAYCLUSTER_SOME_FLAG"):
        C._env_bool("SOME_FLAG", False)
