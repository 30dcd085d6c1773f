"""Rank logs: each rank's Python output, kept per job, attempt and rank, and read back.

Owns: the layout ``<log_dir>/<job_id>/a<attempt>-r<rank>.log`` (``log_dir`` a path or a storage
URI, ``store/storage.py``: on an object store the rank writes to the node's own disk and the file
is uploaded whole every LOG_UPLOAD_INTERVAL_S and at the rank's end); ``RankLogCapture`` — while a rank
runs, Python-level ``sys.stdout``/``sys.stderr`` writes (``print``, ``logging`` to stderr,
tracebacks) are also appended to its log, and the original streams still get every write, so
Ray's own log capture and the dashboard keep working (output written straight to file
descriptors 1/2 by C extensions or subprocesses is not captured) — and ``read_rank_logs``, the
tails the Coordinator answers ``logs(job)`` with.
"""

from __future__ import annotations

import logging
import re
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, TextIO

from raycluster.errors import StorageError
from raycluster.store import storage

log = logging.getLogger(__name__)

_LOG_NAME_RE = re.compile(r"^a(\d+)-r(\d+)\.log$")
MAX_LOG_TAIL_LINES = 100_000


def rank_log_path(log_dir: str | Path, job_id: str, attempt: int, rank: int) -> str:
    return storage.join(log_dir, job_id, f"a{attempt}-r{rank}.log")


def local_spool_path(job_id: str, attempt: int, rank: int) -> Path:
    """Where a rank whose log goes to an object store writes it first (this node's disk)."""
    import tempfile

    return Path(tempfile.gettempdir()) / "raycluster-rank-logs" / job_id / f"a{attempt}-r{rank}.log"


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

    def __init__(self, path: str | Path | None, spool: Path | None = None):
        """``path``: the log's place (a local path or a storage URI); a remote one is written to
        ``spool`` on this node and uploaded from there."""
        self._uploader = None
        if path is not None and not storage.is_local(path):
            from raycluster import constants as C

            spool = spool or Path(tempfile.mkdtemp(prefix="raycluster-rank-log-")) / "rank.log"
            self._uploader = storage.Uploader(spool, str(path), C.LOG_UPLOAD_INTERVAL_S)
            path = spool
        self.path = None if path is None else storage.local_path(path)
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
            self._uploader = None
            return self
        if self._uploader is not None:
            self._uploader.start()
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
        if self._uploader is not None:
            self._uploader.stop()  # the last upload: the whole log is in the store when the rank ends
            self._uploader = None



def read_rank_logs(log_dir: str | Path, job_id: str, tail_lines: int = 200) -> list[dict[str, Any]]:
    """The last ``tail_lines`` lines of every rank log of a job:
    ``[{"attempt": a, "rank": r, "lines": [...]}, ...]``, attempts then ranks ascending."""
    n = max(0, min(int(tail_lines), MAX_LOG_TAIL_LINES))
    job_dir = storage.join(log_dir, job_id)
    found = []
    for name in storage.list_names(job_dir):  # [] until a rank has started
        m = _LOG_NAME_RE.match(name)
        if m:
            found.append((int(m.group(1)), int(m.group(2)), storage.join(job_dir, name)))
    out = []
    for attempt, rank, path in sorted(found):
        try:
            text = storage.tail_text(path, lines=n)
        except (OSError, StorageError) as exc:  # listed but unreadable: say so rather than hide the rank
            out.append({"attempt": attempt, "rank": rank, "lines": [], "error": f"{type(exc).__name__}: {exc}"})
            continue
        out.append({"attempt": attempt, "rank": rank, "lines": text.splitlines() if n else []})
    return out
