"""Pure unit tests (no Ray cluster): the rank log tee of executor.run_rank, and how
raycluster.submit merges the submitting Ray job's runtime_env into the spec's."""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path

import pytest

from raycluster.rank.logs import RankLogCapture, rank_log_path
from raycluster.cli.ray_submit import _invalid, merge_runtime_env
from raycluster.errors import InvalidJobSpec


def test_tee_writes_both_streams_and_restores_them(tmp_path, monkeypatch):
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    pre = logging.getLogger("pre-existing")
    handler = logging.StreamHandler(err)  # bound to the original stderr before the rank started
    pre.addHandler(handler)
    pre.propagate = False
    monkeypatch.setattr(logging.root, "handlers", [])  # as in a Ray worker: no root handler -> lastResort
    path = Path(rank_log_path(tmp_path / "logs", "job-1", 2, 1))
    try:
        with RankLogCapture(path):
            print("hello from print")
            print("to stderr", file=sys.stderr)
            logging.getLogger("fresh").warning("via lastResort")
            pre.warning("via an existing handler")
            sys.stdout.write("partial")
        sys.stdout.write(" after\n")
    finally:
        pre.removeHandler(handler)
    assert path == tmp_path / "logs" / "job-1" / "a2-r1.log"
    assert path.read_text().splitlines() == ["hello from print", "to stderr", "via lastResort",
                                             "via an existing handler", "partial"]
    assert out.getvalue() == "hello from print\npartial after\n"
    assert err.getvalue() == "to stderr\nvia lastResort\nvia an existing handler\n"
    assert sys.stdout is out and sys.stderr is err and handler.stream is err


def test_tee_is_best_effort_when_the_log_cannot_be_opened(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with RankLogCapture(blocker / "sub" / "a1-r0.log"):  # parent is a file: cannot mkdir
        print("still printed")
    assert "still printed" in capsys.readouterr().out


@pytest.mark.parametrize("job_env,spec_env,want", [
    ({}, None, None),
    ({"working_dir": "gcs://_ray_pkg_a.zip"}, None, {"working_dir": "gcs://_ray_pkg_a.zip"}),
    ({"working_dir": "gcs://_ray_pkg_a.zip", "excludes": [".git"], "_ray_internal": 1, "pip": []},
     {"working_dir": "s3://mine.zip"}, {"working_dir": "s3://mine.zip"}),
    ({"env_vars": {"A": "job", "B": "job"}, "py_modules": ["gcs://_ray_pkg_m.zip"]},
     {"env_vars": {"B": "spec"}, "pip": ["tqdm"]},
     {"env_vars": {"A": "job", "B": "spec"}, "py_modules": ["gcs://_ray_pkg_m.zip"], "pip": ["tqdm"]}),
])
def test_merge_runtime_env_spec_wins(job_env, spec_env, want):
    assert merge_runtime_env(job_env, spec_env) == want


def test_invalid_spec_message_is_one_line_naming_the_field():
    msg = _invalid(InvalidJobSpec("invalid job spec: priority: Input should be\nless than or equal to 1000",
                                  field="priority"))
    assert "\n" not in msg and msg.startswith("error: ") and "priority" in msg
    assert _invalid(InvalidJobSpec("spec must be a mapping", field="spec")) == "error: spec must be a mapping"
    assert _invalid(InvalidJobSpec("must be positive", field="resources.cpus")).endswith("(field: resources.cpus)")


def test_submit_exit_codes_without_a_cluster(tmp_path, monkeypatch, capsys):
    from raycluster import errors, submit  # the documented `python -m raycluster.submit` module

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    good = tmp_path / "good.yaml"
    good.write_text("name: g\nentrypoint: jobs.toy:noop\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: g\nentrypoint: jobs.toy:noop\nresources: {cpus: -1}\n")
    assert submit.main([str(bad), "--state-dir", str(tmp_path)]) == errors.EXIT_INVALID
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "resources.cpus" in err and "Traceback" not in err
    assert submit.main([str(tmp_path / "missing.yaml")]) == errors.EXIT_INVALID
    assert submit.main([str(good), "--priority", "5000"]) == errors.EXIT_INVALID
    assert "priority" in capsys.readouterr().err
    assert submit.main([str(good), "--state-dir", str(tmp_path / "empty")]) == errors.EXIT_UNAVAILABLE
    assert "raycluster up --local" in capsys.readouterr().err
