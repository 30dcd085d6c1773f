"""Draining a Ray node: the one wrapper around ``GcsClient.drain_node`` (an internal Ray API).

Owns: ``drain_node`` — ask the GCS to drain a node (no new work; Ray reports it as draining with the
reason and the deadline) — and the reason names. Everything that drains (the node provider on a
preemption notice, the BudgetAutoscaler giving a node back) goes through here, so a change of that
internal API is fixed in one place.
"""

from __future__ import annotations

import time

REASONS = ("PREEMPTION", "IDLE_TERMINATION")


def drain_node(gcs_address: str, node_id_hex: str, reason: str, message: str, deadline_s: float,
               timeout_s: float = 10.0) -> tuple[bool, str]:
    """Drain the node ``node_id_hex`` (hex, as the state API lists it) until ``deadline_s`` (epoch
    seconds); (accepted, rejection message)."""
    import ray
    from ray.core.generated import autoscaler_pb2

    if reason not in REASONS:
        raise ValueError(f"reason must be one of {REASONS}, not {reason!r}")
    client = ray._raylet.GcsClient(address=gcs_address)
    deadline_ms = int(max(deadline_s, time.time()) * 1000)
    accepted, rejection = client.drain_node(
        node_id_hex, autoscaler_pb2.DrainNodeReason.Value(f"DRAIN_NODE_REASON_{reason}"), message, deadline_ms,
        timeout=timeout_s)
    return bool(accepted), rejection or ""
