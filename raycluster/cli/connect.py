"""How a CLI command reaches the cluster, and the CLI's own error for an argument that cannot work.

Owns: ``client_for(args)`` — the HTTP control API whenever one is up (``--address http(s)://...``,
or, with no ``--address`` and no ``RAY_ADDRESS``, the API recorded in the state dir by ``raycluster
up`` / ``ray up`` that answers now: ``client.http_client.HttpClient``, which never imports Ray — a
call costs milliseconds and adds no driver to Ray's dashboard), else Ray (``client.ray_client.Client``,
a Ray driver: ``--address`` of the Ray cluster, ``RAY_ADDRESS`` or the local cluster); token from
``--token-file``, ``RAYCLUSTER_API_TOKEN`` or ``<state_dir>/api_token``, in that order — and
``BadArgument`` (exit code 2). Every command module takes both from here.
"""

from __future__ import annotations

import os
from pathlib import Path


class BadArgument(Exception):
    """A command-line argument that cannot work (exit code 2)."""


def client_for(args, ray_only: bool = False, offline_ok: bool = False):
    """The client of this command's cluster. ``ray_only``: the command needs Ray itself (it runs a
    task, or asks an actor the API does not front). ``offline_ok``: a history command — with no
    cluster up it answers from the state on disk (``client/offline.py``), saying so on stderr."""
    from raycluster.api.token import resolve_token
    from raycluster.client.http_client import HttpClient, is_http_address

    address = args.address
    if address is None and not ray_only and not os.environ.get("RAY_ADDRESS"):
        address = recorded_api(args.state_dir)
    if is_http_address(address) and not ray_only:
        try:
            token = resolve_token(args.token_file, args.state_dir)
        except OSError as exc:
            raise BadArgument(f"cannot read the API token: {exc}") from None
        return HttpClient(address, token)
    if is_http_address(address):
        raise BadArgument("this command needs a Ray connection (--address of the Ray cluster, not its HTTP API)")
    from raycluster.client.ray_client import Client, connect

    from raycluster.errors import ClusterUnavailable

    ray_messages_to_stderr()
    try:
        connect(address, Path(args.state_dir))
    except ClusterUnavailable as exc:
        if not offline_ok or address is not None or not (Path(args.state_dir) / "jobs.db").exists():
            raise
        import sys

        from raycluster.client.offline import OfflineClient

        print(f"raycluster: no cluster is up ({exc}); answering from the state on disk in {args.state_dir}",
              file=sys.stderr)
        return OfflineClient(args.state_dir)
    return Client()


def ray_messages_to_stderr() -> None:
    """A Ray driver prints the cluster's error messages ("node ... has been marked dead", a worker
    killed) to *stdout* from a background thread, whatever ``log_to_driver`` says
    (``ray._private.worker.listen_error_messages``). A CLI command's stdout is its answer — ``--json``
    output is parsed by scripts — so this process sends them to stderr instead. Idempotent; a no-op
    if Ray's internals moved (the messages then stay where Ray puts them)."""
    try:
        import ray._private.worker as worker
    except ImportError:
        return
    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "_raycluster_to_stderr", False):
        return

    def to_stderr(data, ignore_prefix):
        return original({**data, "is_err": True}, ignore_prefix)

    to_stderr._raycluster_to_stderr = True
    worker.print_to_stdstream = to_stderr


def recorded_api(state_dir) -> str | None:
    """The URL of the API recorded in ``state_dir`` if it answers now, else None."""
    from raycluster.api.record import answers, read_record

    rec = read_record(state_dir)
    return rec["url"] if rec is not None and answers(rec["url"]) else None
