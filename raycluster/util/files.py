"""Files: the one atomic writer and the one tail reader.

Owns: writing a file so that a reader (or a crash) never sees half of it — temp file in the same
directory, fsync, rename (or hard link, to never overwrite), fsync of the directory — with the mode
set before the data is visible; reading the end of a text file; hashing a file; what JSON can
write of a value (`json_safe`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write(path: Path | str, data: bytes | str, *, mode: int | None = None, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` atomically and durably.

    ``mode`` (e.g. 0o600 for secrets) is set on the temp file before it becomes visible.
    ``overwrite=False`` publishes with a hard link, which never replaces an existing file: it raises
    FileExistsError instead (and leaves nothing behind).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: Path | str, obj: Any, *, mode: int | None = 0o600) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", mode=mode)


def tail(path: Path | str, *, lines: int | None = None, max_bytes: int | None = None, chunk: int = 64 * 1024) -> str:
    """The end of a text file: its last ``lines`` lines (no trailing newline), or its last
    ``max_bytes`` bytes. Raises OSError when the file cannot be read."""
    if lines is not None and lines <= 0:
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        pos = f.tell()
        data = b""
        while pos > 0:
            if max_bytes is not None and len(data) >= max_bytes:
                break
            if lines is not None and data.count(b"\n") > lines:
                break
            step = min(chunk if max_bytes is None else min(chunk, max_bytes - len(data)), pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    text = data.decode("utf-8", errors="replace")
    if lines is None:
        return text
    return "\n".join(text.splitlines()[-lines:])


def sha256_file(path: Path | str) -> str | None:
    """sha256 of a file, or None when it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def json_safe(value: Any) -> Any:
    """``value`` if JSON can write it, else its repr (a result a job returned, say)."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)
