"""Following a job's rank logs as they grow: ``logs -f`` (every rank) and ``submit --wait`` (rank 0).

Owns: the byte offsets read so far per rank log (the API's ``since``, ``rank/logs.py``), printing
only new whole lines, with a ``==> attempt A rank R <==`` header whenever the log printed from
changes (as ``tail -f`` does for several files) — a recovered job's next attempt shows up as a new
header. A client too old to hand back offsets is followed no further than its first answer.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from raycluster.rank.logs import log_key
from raycluster.store.lifecycle import JobState


class LogFollower:
    """Print what a job's rank logs gained since the last ``poll()``.

    ``tail``: the first poll prints the last ``tail`` lines of each log (0 = each log from its start).
    ``ranks``: only these ranks (None = all)."""

    def __init__(self, client, job_id: str, *, tail: int = 0, ranks: set[int] | None = None,
                 out: TextIO | None = None):
        self.client, self.job_id, self.tail, self.ranks = client, job_id, tail, ranks
        self.out = out or sys.stdout
        self.offsets: dict[str, int] = {}
        self._first = True
        self._last_key: str | None = None
        self.lines_printed = 0

    def poll(self) -> int:
        """Print the new lines; how many."""
        if self._first and self.tail > 0:
            entries = self.client.logs(self.job_id, self.tail)
        else:
            entries = self.client.logs(self.job_id, 0, since=dict(self.offsets))
        self._first = False
        n = 0
        for e in entries:
            if self.ranks is not None and e["rank"] not in self.ranks:
                continue
            key = log_key(e["attempt"], e["rank"])
            if e.get("offset") is not None:
                self.offsets[key] = int(e["offset"])
            if e.get("error"):
                print(f"(attempt {e['attempt']} rank {e['rank']}: unreadable: {e['error']})", file=sys.stderr)
            if not e["lines"]:
                continue
            if key != self._last_key:
                print(f"==> attempt {e['attempt']} rank {e['rank']} <==", file=self.out)
                self._last_key = key
            for line in e["lines"]:
                print(line, file=self.out)
            n += len(e["lines"])
        self.out.flush()
        self.lines_printed += n
        return n


def follow_until_done(client, job_id: str, follower: LogFollower, *, poll_s: float = 1.0,
                      sleep: Callable[[float], None] = time.sleep) -> dict:
    """Poll the job and its logs until it ends (every line written before then printed); its last state."""
    while True:
        job = client.get(job_id)  # the state first: lines written before it ended are read after
        follower.poll()
        if JobState(job["state"]).terminal:
            return job
        sleep(poll_s)


__all__ = ["LogFollower", "follow_until_done"]
