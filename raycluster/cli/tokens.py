"""``raycluster tokens`` (create, list, rotate, revoke per-user API tokens) and ``raycluster audit``
(who did what), for an admin: the operator's token (the state dir's ``api_token``) or an admin token.

Owns: printing a token once — on stdout, alone on its line (``--save FILE`` writes it to FILE, mode
0600, and prints only where) — the tokens table (never a secret), and the audit table. A member or
viewer token is refused by the API (403, exit code 6).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from raycluster.cli.connect import BadArgument
from raycluster.cli.format import print_json, text_table
from raycluster.errors import EXIT_OK


def _utc(ts: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts else "-"


def _hand_over(out: dict, save: str | None, verb: str) -> None:
    """Print (or save) a token that was just made: the one time it is shown."""
    token = out.pop("token")
    who = f"{out['name']}@{out['tenant']}" if out.get("tenant") else out["name"]
    if save:
        path = Path(save).expanduser()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        print(f"token {out['id']} for {who} ({out['role']}) {verb}: saved in {path} (mode 0600); "
              f"use it with --token-file {path}")
        return
    print(f"token {out['id']} for {who} ({out['role']}) {verb}; it is shown this once:", flush=True)
    print(token)


def cmd_tokens(args) -> int:
    from raycluster.cli.connect import client_for

    action = args.action or "list"
    target = args.name_or_id
    if action in ("rotate", "revoke") and not target:
        raise BadArgument(f"tokens {action} needs a token id (see `raycluster tokens list`)")
    if action == "create" and not target:
        raise BadArgument("tokens create needs a NAME (who will hold it): raycluster tokens create alice "
                          "--tenant team-a --role member")
    client = client_for(args)
    if action in ("create", "rotate"):
        if action == "create":
            out, verb = client.tokens_create(target, args.tenant, args.role), "created"
        else:
            out, verb = client.tokens_rotate(target), "rotated (the old one no longer works)"
        if args.json and not args.save:
            print_json(out)
        else:
            _hand_over(out, args.save, verb)
        return EXIT_OK
    if action == "revoke":
        out = client.tokens_revoke(target)
        if args.json:
            print_json(out)
        else:
            print(f"token {out['id']} ({out['name']}) revoked: it no longer works")
        return EXIT_OK
    rows = client.tokens_list(args.all)
    if args.json:
        print_json(rows)
        return EXIT_OK
    print(text_table(("ID", "NAME", "TENANT", "ROLE", "CREATED", "ROTATED", "REVOKED"),
                     [(t["id"], t["name"], t["tenant"] or "(all)", t["role"], _utc(t["created_at"]),
                       _utc(t["rotated_at"]), _utc(t["revoked_at"])) for t in rows]))
    return EXIT_OK


def cmd_audit(args) -> int:
    from raycluster.cli.connect import client_for

    rows = client_for(args).audit_trail(args.limit, args.tenant)
    if args.json:
        print_json(rows)
        return EXIT_OK
    print(text_table(("WHEN", "WHO", "ROLE", "ACTION", "TARGET", "STATUS"),
                     [(_utc(e["ts"]), e["who"], e["role"], e["action"], e["target"] or "-", str(e["status"]))
                      for e in rows]))
    return EXIT_OK
