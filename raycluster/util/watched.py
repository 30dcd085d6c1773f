"""A config file re-read when it changes (modification time and size): an operator's edit applies
without a restart, and an edit that does not parse keeps the last good value and says why."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("raycluster.config")


class WatchedFile:
    def __init__(self, path: Path, read: Callable[[Path], Any], empty: Any, what: str):
        self.path, self._read, self.value, self._what = Path(path), read, empty, what
        self._empty = empty
        self.error: str | None = None
        self._stamp: tuple | None = None
        self.version = 0  # grows with every change seen (the file written, removed or fixed)

    def current(self) -> Any:
        try:
            st = self.path.stat()
            stamp: tuple | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self.value = self._read(self.path) if stamp else self._empty
                self.error = None
            except Exception as exc:  # keep the last good value; say why
                self.error = str(exc)
                log.error("%s: %s (keeping the previous one)", self._what, exc)
            self.version += 1
        return self.value
