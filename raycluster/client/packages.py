"""Your code, from any way in: a spec's local ``runtime_env.working_dir`` / ``py_modules`` directories
turned into content-addressed packages before it is submitted, as ``ray job submit --working-dir``
does.

Owns: ``package_runtime_env`` — each local directory zipped with Ray's own packaging (``.gitignore``,
``.rayignore``, Ray's default excludes and the spec's ``excludes`` honoured), named by the hash of
its contents (``gcs://_ray_pkg_<hash>.zip``), uploaded through a ``PackageStore`` only when the
cluster does not have it yet, and the spec's path replaced by that URI (``excludes`` dropped: it
matters only here). The stores: ``GcsPackages`` (a process connected to Ray: the CLI) and the HTTP
client's (``PUT /api/packages/gcs/{name}``, when the API is the only way in). The Coordinator pins
every ``gcs://`` package of a job while it is unfinished.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from raycluster.errors import InvalidJobSpec
from raycluster.spec import is_local_path

PACKAGE_KEYS = ("working_dir", "py_modules")


class PackageStore(Protocol):
    def exists(self, uri: str) -> bool:
        """Whether the cluster holds the package already."""

    def put(self, uri: str, data: bytes) -> None:
        """Upload the package (a zip)."""


class GcsPackages:
    """Packages in the Ray cluster this process is connected to (Ray's GCS)."""

    def exists(self, uri: str) -> bool:
        from ray._private.runtime_env.packaging import package_exists

        return package_exists(uri)

    def put(self, uri: str, data: bytes) -> None:
        from ray._private.runtime_env.packaging import upload_package_to_gcs

        upload_package_to_gcs(uri, data)


def needs_packaging(runtime_env: Any) -> bool:
    if not isinstance(runtime_env, dict):
        return False
    mods = runtime_env.get("py_modules")
    return is_local_path(runtime_env.get("working_dir")) or (
        isinstance(mods, list) and any(is_local_path(m) for m in mods))


def package_runtime_env(runtime_env: dict[str, Any], store: PackageStore,
                        base_dir: str | Path | None = None) -> tuple[dict[str, Any], list[str]]:
    """``runtime_env`` with each local directory replaced by its package URI (relative paths from
    ``base_dir``, default the current directory); (the new runtime_env, the URIs uploaded now).
    A path that is no directory raises InvalidJobSpec naming ``runtime_env.<key>``."""
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import create_package, get_uri_for_directory

    base = Path(base_dir) if base_dir is not None else Path.cwd()
    excludes = list(ray_constants.get_runtime_env_default_excludes()) + list(runtime_env.get("excludes") or [])
    out = {k: v for k, v in runtime_env.items() if k != "excludes"}
    uploaded: list[str] = []

    def pack(path: str, field: str, include_parent_dir: bool) -> str:
        directory = (base / path).resolve()
        if not directory.is_dir():
            raise InvalidJobSpec(f"{field}: {path!r} is not a directory (looked in {directory})", field=field)
        uri = get_uri_for_directory(str(directory), include_gitignore=True, excludes=excludes)
        if store.exists(uri):
            return uri
        with tempfile.TemporaryDirectory(prefix="rc-pkg-") as tmp:
            target = Path(tmp) / f"{os.getpid()}.zip"
            create_package(str(directory), target, include_gitignore=True, include_parent_dir=include_parent_dir,
                           excludes=excludes, logger=None)
            store.put(uri, target.read_bytes())
        uploaded.append(uri)
        return uri

    if is_local_path(out.get("working_dir")):
        out["working_dir"] = pack(out["working_dir"], "runtime_env.working_dir", False)
    mods = out.get("py_modules")
    if isinstance(mods, list):
        out["py_modules"] = [pack(m, "runtime_env.py_modules", True) if is_local_path(m) else m for m in mods]
    return out, uploaded
