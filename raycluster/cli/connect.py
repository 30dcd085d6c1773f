"""How a CLI command reaches the cluster, and the CLI's own error for an argument that cannot work.

Owns: ``client_for(args)`` — ``--address`` as a Ray address (``client.ray_client.Client``, a Ray
driver) or ``http(s)://host:port`` of the HTTP control API (``client.http_client.HttpClient``,
which never imports Ray; token from ``--token-file``, ``RAYCLUSTER_API_TOKEN`` or
``<state_dir>/api_token``, in that order) — and ``BadArgument`` (exit code 2). Every command module
takes both from here.
"""

from __future__ import annotations

from pathlib import Path


class BadArgument(Exception):
    """A command-line argument that cannot work (exit code 2)."""


def client_for(args):
    from raycluster.api.token import resolve_token
    from raycluster.client.http_client import HttpClient, is_http_address

    if is_http_address(args.address):
        try:
            token = resolve_token(args.token_file, args.state_dir)
        except OSError as exc:
            raise BadArgument(f"cannot read the API token: {exc}") from None
        return HttpClient(args.address, token)
    from raycluster.client.ray_client import Client, connect

    connect(args.address, Path(args.state_dir))
    return Client()
