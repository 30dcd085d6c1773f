"""Rank logs: each rank's Python output, kept per job, attempt and rank, and read back.

Owns: the layout ``<log_dir>/<job_id>/a<attempt>-r<rank>.log``; ``RankLogCapture`` — while a rank
runs, Python-level ``sys.stdout``/``sys.stderr`` writes (``print``, ``logging`` to stderr,
tracebacks) are also appended to its log, and the original streams still get every write, so
Ray's own log capture and the dashboard keep working (output written straight to file
descriptors 1/2 by C extensions or subprocesses is not captured) — and ``read_rank_logs``, the
tails the Coordinator answers ``logs(job)`` with.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from raycluster.util.files import tail

log = logging.getLogger(__name__)

_LOG_NAME_RE = re.compile(r"^a(\d+)-r(\d+)\.log$")
MAX_LOG_TAIL_LINES = 100_000


def rank_log_path(log_dir: str | Path, job_id: str, attempt: int, rank: int) -> Path:
    return Path(log_dir) / job_id / f"a{attempt}-r{rank}.log"


class _Tee:
    """A text stream that writes to the original stream and to a log file."""

    def __init__(self, original: TextIO, file: TextIO, lock: threading.Lock):
        self._original = original
        self._file = file
        self._lock = lock

    def write(self, data: str) -> int:
        try:
            n = self._original.write(data)
        except Exception:  # a broken original stream must not break training
            n = len(data)
        if data:
            with self._lock:
                try:
                    self._file.write(data)
                    if "\n" in data:
                        self._file.flush()
                except (OSError, ValueError):  # disk full, file closed by restore: keep training
                    pass
        return n

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._original.flush()
        except Exception:
            pass
        with self._lock:
            try:
                self._file.flush()
            except (OSError, ValueError):
                pass

    def __getattr__(self, name: str):  # fileno, isatty, encoding, errors, buffer, ...
        return getattr(self._original, name)


class RankLogCapture:
    """Tee sys.stdout/sys.stderr (and logging handlers bound to them) into the rank's log file."""

    def __init__(self, path: Path | None):
        self.path = path
        self._file: TextIO | None = None
        self._saved: tuple | None = None
        self._handlers: list[tuple[logging.StreamHandler, Any]] = []

    def __enter__(self) -> "RankLogCapture":
        if self.path is None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8", errors="replace")
        except OSError as exc:  # logs are best effort: never fail a rank for them
            log.warning("cannot open rank log %s: %s", self.path, exc)
            return self
        lock = threading.Lock()
        out, err = sys.stdout, sys.stderr
        self._saved = (out, err)
        tees = {}
        if out is not None:
            tees[id(out)] = sys.stdout = _Tee(out, self._file, lock)
        if err is not None:
            tees[id(err)] = sys.stderr = _Tee(err, self._file, lock)
        # handlers created before now (logging.basicConfig in an earlier task of this worker) hold
        # the original stream object: point them at the tee for the duration of the rank
        for lg in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
            if not isinstance(lg, logging.Logger) or lg.name == "ray" or lg.name.startswith("ray."):
                continue
            for h in lg.handlers:
                if type(h) is logging.StreamHandler and id(getattr(h, "stream", None)) in tees:
                    self._handlers.append((h, h.stream))
                    h.stream = tees[id(h.stream)]
        return self

    def __exit__(self, *exc_info) -> None:
        for h, stream in self._handlers:
            if isinstance(h.stream, _Tee):
                h.stream = stream
        self._handlers.clear()
        if self._saved is not None:
            for tee in (sys.stdout, sys.stderr):
                if isinstance(tee, _Tee):
                    tee.flush()
            out, err = self._saved
            if isinstance(sys.stdout, _Tee):
                sys.stdout = out
            if isinstance(sys.stderr, _Tee):
                sys.stderr = err
            self._saved = None
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None



def read_rank_logs(log_dir: str | Path, job_id: str, tail_lines: int = 200) -> list[dict[str, Any]]:
    """The last ``tail_lines`` lines of every rank log of a job:
    ``[{"attempt": a, "rank": r, "lines": [...]}, ...]``, attempts then ranks ascending."""
    n = max(0, min(int(tail_lines), MAX_LOG_TAIL_LINES))
    job_dir = rank_log_path(log_dir, job_id, 0, 0).parent
    try:
        names = os.listdir(job_dir)
    except OSError:  # no rank has started yet
        return []
    found = []
    for name in names:
        m = _LOG_NAME_RE.match(name)
        if m:
            found.append((int(m.group(1)), int(m.group(2)), job_dir / name))
    out = []
    for attempt, rank, path in sorted(found):
        try:
            text = tail(path, lines=n)
        except OSError:
            continue
        out.append({"attempt": attempt, "rank": rank, "lines": text.splitlines() if n else []})
    return out
