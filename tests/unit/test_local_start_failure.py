"""How a local node's start failure is read: its last log line is its error, and the head is not
started a third time after the same error twice (a bad setting, not a taken port)."""

import pytest

from raycluster.provision.local.cluster import last_log_line


@pytest.mark.parametrize("message, line", [
    ("local node(s) ['h'] exited during startup:\n--- /x/h.log:\nTraceback\n  File ...\nValueError: too small\n\n",
     "ValueError: too small"),
    ("one line", "one line"),
    ("first\n   \n  indented last  \n", "indented last"),
    ("", None),
    ("\n \n", None),
])
def test_the_last_non_empty_line_is_the_error(message, line):
    assert last_log_line(message) == line
