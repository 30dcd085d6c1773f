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
