"""The API token: created once per state dir, found the same way by every caller.

Owns: ``<state_dir>/api_token`` (random, mode 0600, created atomically and never overwriting a
token another process just wrote) and ``resolve_token`` — the one lookup order: an explicit token
file, then ``RAYCLUSTER_API_TOKEN``, then ``<state_dir>/api_token``. Imports nothing from Ray.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from raycluster import constants as C
from raycluster.util.files import atomic_write


def api_token_path(state_dir: Path | str) -> Path:
    return Path(state_dir) / C.API_TOKEN_FILE


def resolve_token(token_file: str | Path | None = None, state_dir: str | Path | None = None) -> str | None:
    """``token_file``, else ``RAYCLUSTER_API_TOKEN``, else ``<state_dir>/api_token``; None if none.

    An explicit ``token_file`` that cannot be read (or is empty) raises OSError."""
    if token_file:
        token = Path(token_file).expanduser().read_text().strip()
        if not token:
            raise OSError(f"token file {token_file} is empty")
        return token
    env = os.environ.get(C.API_TOKEN_ENV, "").strip()
    if env:
        return env
    if state_dir is not None:
        with contextlib.suppress(OSError):
            return api_token_path(state_dir).read_text().strip() or None
    return None


def ensure_api_token(state_dir: Path | str) -> tuple[str, Path]:
    """The token in ``<state_dir>/api_token`` (0600), created atomically if there is none."""
    path = api_token_path(state_dir)
    with contextlib.suppress(FileNotFoundError):
        token = path.read_text().strip()
        if token:
            return token, path
    token = secrets.token_urlsafe(32)
    try:
        atomic_write(path, token + "\n", mode=0o600, overwrite=False)  # never replaces a concurrent writer's
    except FileExistsError:
        existing = path.read_text().strip()
        if existing:
            return existing, path
        atomic_write(path, token + "\n", mode=0o600)  # an empty file (an interrupted writer): replace it
    return token, path
