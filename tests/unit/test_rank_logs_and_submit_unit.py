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


class _LogsOnDisk:
    """A client whose ``logs``/``get`` read real rank log files and a state the test moves."""

    def __init__(self, log_dir, job_id):
        self.log_dir, self.job_id, self.state, self.calls = log_dir, job_id, "RUNNING", []

    def logs(self, job_id, tail_lines=200, since=None):
        from raycluster.rank.logs import read_rank_logs

        self.calls.append(since)
        return read_rank_logs(self.log_dir, job_id, tail_lines, since)

    def get(self, job_id):
        return {"id": job_id, "state": self.state}


def test_following_prints_each_whole_line_once_across_ranks_and_attempts(tmp_path):
    from raycluster.cli.follow import LogFollower
    from raycluster.rank.logs import parse_since, read_rank_logs

    logs = tmp_path / "logs"
    r0, r1 = Path(rank_log_path(logs, "job-1", 0, 0)), Path(rank_log_path(logs, "job-1", 0, 1))
    r0.parent.mkdir(parents=True)
    r0.write_text("".join(f"old {i}\n" for i in range(5)))
    client, out = _LogsOnDisk(logs, "job-1"), io.StringIO()
    follower = LogFollower(client, "job-1", tail=2, out=out)
    assert follower.poll() == 2 and out.getvalue() == "==> attempt 0 rank 0 <==\nold 3\nold 4\n"
    with r0.open("a") as f:
        f.write("step 1\nhalf a li")  # a line still being written waits for its newline
    r1.write_text("rank one\n")
    assert follower.poll() == 2
    with r0.open("a") as f:
        f.write("ne\n")
    Path(rank_log_path(logs, "job-1", 1, 0)).write_text("attempt two\n")  # the job recovered
    assert follower.poll() == 2 and follower.poll() == 0
    assert out.getvalue().splitlines()[3:] == ["step 1", "==> attempt 0 rank 1 <==", "rank one",
                                               "==> attempt 0 rank 0 <==", "half a line",
                                               "==> attempt 1 rank 0 <==", "attempt two"]
    assert client.calls[0] is None and client.calls[-1] == {"a0-r0": r0.stat().st_size, "a0-r1": 9, "a1-r0": 12}
    # only rank 0 (submit --wait), every log from its start
    only0 = LogFollower(client, "job-1", ranks={0}, out=io.StringIO())
    assert only0.poll() == 8 and "rank one" not in only0.out.getvalue()
    # the offsets survive the API's query form; a truncated log is read again from its start
    assert parse_since("a0-r0:3, a1-r2:0") == {"a0-r0": 3, "a1-r2": 0}
    r1.write_text("new\n")
    assert read_rank_logs(logs, "job-1", since={"a0-r1": 9})[1]["lines"] == ["new"]


@pytest.mark.parametrize("bad", ["a0-r0", "a0:1", "x:1", "a0-r0:-1", "a0-r0:1x"])
def test_a_bad_since_is_named(bad):
    from raycluster.rank.logs import parse_since

    with pytest.raises(ValueError, match="since"):
        parse_since(bad)


def test_follow_until_done_reads_the_lines_written_before_the_end(tmp_path):
    from raycluster.cli.follow import LogFollower, follow_until_done

    logs = tmp_path / "logs"
    r0 = Path(rank_log_path(logs, "job-2", 0, 0))
    r0.parent.mkdir(parents=True)
    r0.write_text("start\n")
    client, out = _LogsOnDisk(logs, "job-2"), io.StringIO()

    def sleep(_s):  # the rank writes its last line and ends between two polls
        with r0.open("a") as f:
            f.write("done\n")
        client.state = "SUCCEEDED"

    job = follow_until_done(client, "job-2", LogFollower(client, "job-2", out=out), sleep=sleep)
    assert job["state"] == "SUCCEEDED" and out.getvalue().splitlines() == ["==> attempt 0 rank 0 <==", "start", "done"]
