"""The CLI's global options are taken before and after the subcommand; new commands parse."""

from __future__ import annotations

import pytest

from raycluster.cli.main import build_parser, main


@pytest.mark.parametrize("argv,state_dir,as_json", [
    (["--state-dir", "/a", "status", "job-1", "--json"], "/a", True),
    (["status", "job-1", "--state-dir", "/b"], "/b", False),
    (["--state-dir", "/a", "status", "job-1", "--state-dir", "/c"], "/c", False),  # after wins
    (["--json", "health"], None, True),
    (["checkpoints", "job-1", "--json", "--address", "http://127.0.0.1:1"], None, True),
])
def test_global_options_after_the_subcommand(argv, state_dir, as_json):
    a = build_parser().parse_args(argv)
    assert a.json is as_json
    if state_dir:
        assert a.state_dir == state_dir
    if "--address" in argv:
        assert a.address == "http://127.0.0.1:1"


def test_drain_needs_a_node(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["drain"])
    assert exc.value.code == 2 and "node" in capsys.readouterr().err


def test_ray_drivers_cluster_messages_go_to_stderr_not_the_answer(capsys, monkeypatch):
    """A node killed while `raycluster --json health` ran through a Ray driver put Ray's "node marked
    dead" message on stdout after the JSON (seen in the suite): the CLI moves them to stderr."""
    import ray._private.worker as worker

    from raycluster.cli.connect import ray_messages_to_stderr

    monkeypatch.setattr(worker, "print_to_stdstream", worker.print_to_stdstream)  # restored after the test
    ray_messages_to_stderr()
    ray_messages_to_stderr()  # idempotent: wrapped once
    worker.print_to_stdstream({"lines": ["node abc has been marked dead"], "pid": "raylet", "is_err": False},
                              ignore_prefix=False)
    out = capsys.readouterr()
    assert "marked dead" not in out.out and out.err.count("marked dead") == 1


@pytest.mark.parametrize("argv,says", [
    (["tokens", "rotate"], "needs a token id"),
    (["tokens", "revoke"], "needs a token id"),
    (["tokens", "create"], "needs a NAME"),
])
def test_tokens_commands_name_what_they_miss_before_connecting(capsys, argv, says):
    assert main(["--address", "http://127.0.0.1:9", *argv]) == 2  # (nothing listens there: never reached)
    assert says in capsys.readouterr().err
