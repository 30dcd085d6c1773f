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
TAIL_MAX_BYTES = 8 << 20  # a tail reads at most the log's last 8 MiB
MAX_FOLLOW_BYTES = 4 << 20  # one follow poll hands over at most 4 MiB per log


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



def log_key(attempt: int, rank: int) -> str:
    """A rank log's name in ``since`` maps: ``a<attempt>-r<rank>``."""
    return f"a{attempt}-r{rank}"


def parse_since(text: str | None) -> dict[str, int] | None:
    """``"a0-r0:1234,a1-r0:0"`` (the API's ``since`` query) as ``{log_key: byte offset}``; ValueError
    naming the bad item."""
    if text is None:
        return None
    out: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, _, off = item.partition(":")
        if not re.fullmatch(r"a\d+-r\d+", key) or not off.isdigit():
            raise ValueError(f"since: {item!r} is not a<attempt>-r<rank>:<byte offset>")
        out[key] = int(off)
    return out


def format_since(offsets: dict[str, int]) -> str:
    return ",".join(f"{k}:{v}" for k, v in sorted(offsets.items()))


def _read_new(path: str, offset: int) -> tuple[list[str], int]:
    """Whole lines written to a log since byte ``offset`` (at most MAX_FOLLOW_BYTES of them), and
    the offset after them; a line still being written waits for its newline."""
    size = storage.size_of(path)
    if offset > size:  # not the log we read before (truncated/replaced): start again
        offset = 0
    data = storage.read_range(path, offset, min(size, offset + MAX_FOLLOW_BYTES))
    cut = data.rfind(b"\n") + 1
    if cut == 0 and len(data) >= MAX_FOLLOW_BYTES:  # one huge line: hand it over as it is
        cut = len(data)
    return data[:cut].decode("utf-8", errors="replace").splitlines(), offset + cut


def _read_tail(path: str, n: int) -> tuple[list[str], int]:
    """The last ``n`` lines of a log and its size then (where following it goes on from)."""
    size = storage.size_of(path)
    if n <= 0:
        return [], size
    data = storage.read_range(path, max(0, size - TAIL_MAX_BYTES), size)
    return data.decode("utf-8", errors="replace").splitlines()[-n:], size


def read_rank_logs(log_dir: str | Path, job_id: str, tail_lines: int = 200,
                   since: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Every rank log of a job, attempts then ranks ascending: ``[{"attempt": a, "rank": r, "lines":
    [...], "offset": bytes read up to}, ...]``. Without ``since``, the last ``tail_lines`` lines of each;
    with it (``{log_key: offset}``, a log not named there from its start), the lines written since —
    what ``logs --follow`` polls with, handing back the offsets it was given."""
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
            if since is None:
                lines, offset = _read_tail(path, n)
            else:
                lines, offset = _read_new(path, since.get(log_key(attempt, rank), 0))
        except (OSError, StorageError) as exc:  # listed but unreadable: say so rather than hide the rank
            out.append({"attempt": attempt, "rank": rank, "lines": [], "error": f"{type(exc).__name__}: {exc}"})
            continue
        out.append({"attempt": attempt, "rank": rank, "lines": lines, "offset": offset})
    return out
