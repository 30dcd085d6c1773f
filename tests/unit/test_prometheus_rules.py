"""The alert rules: `promtool check rules` and `promtool test rules` (configs/prometheus/rules_test.yml),
with the promtool that scripts/setup.sh unpacks from Debian's prometheus package into .tools/."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL = ROOT / ".tools" / "prometheus" / "usr" / "bin" / "promtool"
RULES = ROOT / "configs" / "prometheus"


@pytest.fixture(scope="module")
def promtool():
    if not PROMTOOL.exists():
        pytest.fail(f"{PROMTOOL} missing: run scripts/setup.sh (it unpacks Debian's prometheus package there)")
    return str(PROMTOOL)


def test_rules_are_valid(promtool):
    out = subprocess.run([promtool, "check", "rules", "rules.yml"], cwd=RULES, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 7 rules found" in out.stdout


def test_rules_fire_as_specified(promtool):
    out = subprocess.run([promtool, "test", "rules", "rules_test.yml"], cwd=RULES, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_broken_rule_is_caught(promtool, tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text((RULES / "rules.yml").read_text().replace('== 1', '== = 1', 1))
    out = subprocess.run([promtool, "check", "rules", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
