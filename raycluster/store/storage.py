"""Where checkpoints and rank logs live: a storage URI every node can reach.

Owns: turning a location (a plain path, ``file:///abs/path``, ``s3://bucket/prefix`` or any other
fsspec protocol whose package is installed) into one small set of blob operations — write
atomically, read (whole or a byte range), hash, list, delete a tree — and checking a URI before anything uses it.

Atomicity: on a local disk a blob is written to a temp file, fsynced and renamed
(``util.files.atomic_write``); on an object store one PUT is all-or-nothing, so a reader never sees
half a shard either way. sha256 verification (by the ranks, on restore) is the same for both.
Object stores have no append: a rank's log is written to the node's own disk and uploaded whole
every ``LOG_UPLOAD_INTERVAL_S`` and when the rank ends (``rank/logs.py``).

Credentials and endpoints of object stores come from the standard environment of the Ray
processes (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_ENDPOINT_URL`` for s3), never from
raycluster's config files, and are never logged.
"""

from __future__ import annotations

import hashlib
import os
import threading
from functools import lru_cache
from pathlib import Path

from raycluster.errors import InvalidStorage, StorageError
from raycluster.util.files import atomic_write, sha256_file

_LOCAL = ("", "file", "local")
# the package each remote protocol needs (what to tell a user who lacks it)
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


def _split(uri: str) -> tuple[str, str]:
    uri = str(uri)
    if "://" not in uri:
        return "", uri
    proto, rest = uri.split("://", 1)
    return proto.lower(), rest


def is_local(uri: str | Path) -> bool:
    return _split(str(uri))[0] in _LOCAL


def local_path(uri: str | Path) -> Path:
    """The filesystem path of a local location (``file:///x`` or ``/x``)."""
    proto, rest = _split(str(uri))
    if proto not in _LOCAL:
        raise InvalidStorage(f"{uri} is not a local path")
    return Path(rest if proto == "" else "/" + rest.lstrip("/")).expanduser()


def join(base: str | Path, *parts: str) -> str:
    """``base`` and ``parts`` joined with '/', keeping the scheme (a local base stays a plain path)."""
    base = str(base)
    if is_local(base):
        return str(local_path(base).joinpath(*parts))
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def check_uri(uri: str, key: str = "storage_uri") -> str:
    """``uri`` normalised (local paths made absolute), or InvalidStorage naming ``key`` when its
    protocol is unknown or its package is missing. Makes no call to the store."""
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidStorage(f"{key}: must be a path or a URI such as s3://bucket/prefix")
    uri = uri.strip()
    proto, rest = _split(uri)
    if proto in _LOCAL:
        return str(local_path(uri).resolve())
    if not rest.strip("/"):
        raise InvalidStorage(f"{key}: {uri!r} names no bucket or path")
    import fsspec

    try:
        fsspec.get_filesystem_class(proto)
    except ValueError:
        raise InvalidStorage(f"{key}: unknown storage protocol {proto!r} in {uri!r}") from None
    except ImportError:
        pkg = _PACKAGES.get(proto, f"the fsspec implementation of {proto}")
        raise InvalidStorage(f"{key}: {proto}:// needs {pkg} (pip install {pkg})") from None
    return uri


@lru_cache(maxsize=16)
def _fs(proto: str):
    import fsspec

    return fsspec.filesystem(proto)


class _Remote:
    """Blob operations on an fsspec filesystem (paths without the scheme inside)."""

    def __init__(self, uri: str):
        self.proto, self.path = _split(uri)
        self.fs = _fs(self.proto)

    def call(self, what: str, fn, *args, missing_ok: bool = True, **kwargs):
        """``fn(*args)``; any failure but a missing blob (re-raised as FileNotFoundError when
        ``missing_ok``) becomes a StorageError naming the location (never credentials)."""
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError as exc:
            if missing_ok:
                raise
            raise StorageError(f"{what} {self.proto}://{self.path} failed: {exc}") from exc
        except Exception as exc:  # network, auth, throttling: the caller decides; never the secrets
            raise StorageError(f"{what} {self.proto}://{self.path} failed: {type(exc).__name__}: {exc}") from exc


def write_bytes(uri: str | Path, data: bytes) -> None:
    """Publish ``data`` at ``uri`` all-or-nothing."""
    uri = str(uri)
    if is_local(uri):
        atomic_write(local_path(uri), data)
        return
    r = _Remote(uri)
    r.call("writing", r.fs.pipe_file, r.path, data, missing_ok=False)  # e.g. no such bucket


def read_bytes(uri: str | Path) -> bytes:
    """The blob at ``uri``; FileNotFoundError when there is none."""
    uri = str(uri)
    if is_local(uri):
        return local_path(uri).read_bytes()
    r = _Remote(uri)
    return r.call("reading", r.fs.cat_file, r.path)


def sha256(uri: str | Path) -> str | None:
    """sha256 of the blob at ``uri``, or None when it is missing or cannot be read."""
    uri = str(uri)
    if is_local(uri):
        return sha256_file(local_path(uri))
    try:
        return hashlib.sha256(read_bytes(uri)).hexdigest()
    except (FileNotFoundError, StorageError):
        return None


def size_of(uri: str | Path) -> int:
    """The blob's size in bytes; FileNotFoundError when there is none."""
    uri = str(uri)
    if is_local(uri):
        return local_path(uri).stat().st_size
    r = _Remote(uri)
    r.fs.invalidate_cache(r.path)
    return int(r.call("sizing", r.fs.size, r.path))


def read_range(uri: str | Path, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of the blob (fewer when it is shorter)."""
    uri = str(uri)
    if end <= start:
        return b""
    if is_local(uri):
        with open(local_path(uri), "rb") as f:
            f.seek(start)
            return f.read(end - start)
    r = _Remote(uri)
    return r.call("reading", r.fs.cat_file, r.path, start=start, end=end)


def list_names(uri: str | Path) -> list[str]:
    """Names of the entries directly under ``uri`` ([] when there is nothing)."""
    uri = str(uri)
    if is_local(uri):
        try:
            return os.listdir(local_path(uri))
        except OSError:
            return []
    r = _Remote(uri)
    r.fs.invalidate_cache(r.path.rstrip("/"))  # others write here: never answer from an old listing
    try:
        entries = r.call("listing", r.fs.ls, r.path.rstrip("/"), detail=False, refresh=True)
    except FileNotFoundError:
        return []
    return [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]


def remove_tree(uri: str | Path) -> None:
    """Delete everything under ``uri``; missing is fine (best effort: a leftover is only space)."""
    uri = str(uri)
    if is_local(uri):
        import shutil

        shutil.rmtree(local_path(uri), ignore_errors=True)
        return
    r = _Remote(uri)
    try:
        r.fs.rm(r.path.rstrip("/"), recursive=True)
    except FileNotFoundError:
        pass
    except Exception as exc:
        import logging

        logging.getLogger(__name__).warning("could not delete %s://%s: %s", r.proto, r.path, type(exc).__name__)


def parent(uri: str | Path) -> str:
    uri = str(uri)
    if is_local(uri):
        return str(local_path(uri).parent)
    return uri.rstrip("/").rsplit("/", 1)[0]


class Uploader:
    """Copies a growing local file to a remote blob every ``interval_s`` and once more at ``stop``
    (only when it changed). Failures are logged once and retried on the next round."""

    def __init__(self, local: Path, remote: str, interval_s: float):
        self.local, self.remote, self.interval_s = Path(local), str(remote), interval_s
        self._stop = threading.Event()
        self._sent_size = -1
        self._warned = False
        self._thread = threading.Thread(target=self._run, name="log-upload", daemon=True)

    def start(self) -> "Uploader":
        self._thread.start()
        return self

    def _push(self) -> None:
        try:
            size = self.local.stat().st_size
            if size == self._sent_size:
                return
            write_bytes(self.remote, self.local.read_bytes())
            self._sent_size = size
        except Exception as exc:
            if not self._warned:
                import logging

                logging.getLogger(__name__).warning("log upload to %s failed: %s", self.remote, type(exc).__name__)
                self._warned = True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._push()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=max(5.0, self.interval_s))
        self._push()
