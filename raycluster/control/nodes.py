"""The one node-info cache: what Ray says about its nodes, read once and shared for a short while.

Owns: reading Ray's node table (alive or dead, address, labels, total and free base resources —
Ray's per-placement-group and per-node bookkeeping resources dropped) and ``NodeCache``, which
the Coordinator (feasibility at submit, free resources for admission, cluster status) and the API
(``/nodes``, ``/cluster/status``) use with the max age each needs.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from raycluster.util.ttlcache import TTLCache

Resources = dict[str, float]


def base_resources(res: dict[str, float]) -> Resources:
    """Drop Ray's per-placement-group and per-node bookkeeping resources."""
    return {k: v for k, v in res.items() if "_group_" not in k and not k.startswith("node:")
            and k != "object_store_memory"}


def read_nodes() -> list[dict[str, Any]]:
    """Every node Ray knows (dead ones too), head first; blocking GCS calls."""
    import ray

    avail = ray._private.state.state.available_resources_per_node()
    out = []
    for n in ray.nodes():
        nid, alive = n["NodeID"], bool(n.get("Alive"))
        res = n.get("Resources") or {}
        out.append({
            "id": nid, "alive": alive, "is_head": "node:__internal_head__" in res,
            "address": n.get("NodeManagerAddress"), "hostname": n.get("NodeManagerHostname"),
            "labels": {str(k): str(v) for k, v in (n.get("Labels") or {}).items()},
            "resources_total": base_resources(res) if alive else {},
            "resources_free": base_resources(avail.get(nid, {})) if alive else {},
        })
    out.sort(key=lambda d: (not d["alive"], not d["is_head"], d["address"] or "", d["id"]))
    return out


def totals_and_free(nodes: list[dict[str, Any]]) -> tuple[dict[str, Resources], dict[str, Resources]]:
    """(total, free) base resources per alive node id."""
    alive = [n for n in nodes if n["alive"]]
    return ({n["id"]: dict(n["resources_total"]) for n in alive},
            {n["id"]: dict(n["resources_free"]) for n in alive})


class NodeCache:
    """Ray's node table, re-read when older than the max age a caller accepts (0 = now)."""

    def __init__(self, read: Callable[[], list[dict[str, Any]]] = read_nodes, clock=None):
        self._read = read
        self._cache = TTLCache(clock) if clock else TTLCache()

    def nodes(self, max_age_s: float = 0.0) -> list[dict[str, Any]]:
        return self._cache.get("nodes", max_age_s, self._read)

    def forget(self) -> None:
        """Read the table anew at the next call (something changed: a node died, say)."""
        self._cache.drop("nodes")

    async def anodes(self, max_age_s: float) -> list[dict[str, Any]]:
        """The same from asyncio code: the read runs in a thread; concurrent callers share it."""
        return await self._cache.aget("nodes", max_age_s, lambda: asyncio.to_thread(self._read))

    def totals_and_free(self, max_age_s: float = 0.0) -> tuple[dict[str, Resources], dict[str, Resources]]:
        return totals_and_free(self.nodes(max_age_s))
