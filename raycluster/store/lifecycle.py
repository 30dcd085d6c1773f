"""Job lifecycle: states, the legal transitions between them, and the cause of each transition.

Owns: ``JobState`` (the one state enum — also the API's schema), ``TERMINAL_STATES`` /
``ACTIVE_STATES`` (the one set of each), ``LEGAL_TRANSITIONS`` and ``Cause``: a stable
machine-readable code recorded with every transition next to its human-readable reason.
Imports nothing but the standard library, so clients, policies and the store share it.
"""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    PENDING = "PENDING"
    PLACING = "PLACING"
    RUNNING = "RUNNING"
    RECOVERING = "RECOVERING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
ACTIVE_STATES = frozenset({JobState.PLACING, JobState.RUNNING, JobState.RECOVERING})

LEGAL_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.PLACING, JobState.CANCELLED, JobState.FAILED}),
    # PLACING -> PENDING: placement timed out, give the capacity back and queue again (bounded).
    JobState.PLACING: frozenset({JobState.RUNNING, JobState.PENDING, JobState.CANCELLED, JobState.FAILED}),
    # RUNNING -> PENDING: preempted for a higher-priority job (checkpointed first), queued again.
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.RECOVERING,
                                 JobState.PENDING}),
    # RECOVERING -> PLACING: the gang is torn down and placed again from the latest checkpoint.
    JobState.RECOVERING: frozenset({JobState.PLACING, JobState.CANCELLED, JobState.FAILED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


def is_legal(src: JobState, dst: JobState) -> bool:
    return dst in LEGAL_TRANSITIONS[src]


class Cause(str, Enum):
    """Why a transition happened (stable codes; the transition's ``reason`` says it in words)."""

    SUBMITTED = "submitted"  # -> PENDING
    ADMITTED = "admitted"  # PENDING -> PLACING
    PLACED = "placed"  # PLACING -> RUNNING
    RESUMED = "resumed"  # RECOVERING -> PLACING: placed again from the latest checkpoint
    FINISHED = "finished"  # RUNNING -> SUCCEEDED: every rank returned
    CANCELLED = "cancelled"  # by a user
    USER_ERROR = "user_error"  # an exception in user code
    NODE_LOST = "node_lost"  # a rank's node died
    WORKER_CRASHED = "worker_crashed"  # a rank's worker process died
    OOM = "oom"  # a rank was killed for memory
    SYSTEM_ERROR = "system_error"  # any other runtime failure (rendezvous, runtime_env setup, ...)
    COORDINATOR_RESTART = "coordinator_restart"  # the ranks died with the previous Coordinator
    PLACEMENT_TIMEOUT = "placement_timeout"  # PLACING -> PENDING: queued again
    NO_RESOURCES = "no_resources"  # PLACING -> FAILED: placement timed out too many times
    TIMEOUT = "timeout"  # an attempt exceeded max_runtime_s
    NODE_UNHEALTHY = "node_unhealthy"  # RUNNING -> RECOVERING: moved off a node judged unhealthy (no budget spent)
    NODE_DRAINED = "node_drained"  # RUNNING -> RECOVERING: moved off a node drained by hand (no budget spent)
    DEADLINE = "deadline"  # -> FAILED: it can no longer finish by its deadline
    PREEMPTED = "preempted"  # RUNNING -> PENDING: stopped (checkpointed first) for a higher-priority job
    BUDGET = "budget"  # RUNNING -> RECOVERING: its rented node given back for the budget (checkpointed first; no restart spent)
    SPOT_PREEMPTED = "spot_preempted"  # RUNNING -> RECOVERING: the market took its spot node back (no restart spent)
    SPOT_RETURN = "spot_return"  # RUNNING -> RECOVERING: moved from on-demand back to spot for cost (checkpointed first; no restart spent)
    ELASTIC_GROW = "elastic_grow"  # RUNNING -> RECOVERING: an elastic gang placed again larger (checkpointed first; no restart spent)
    CONSOLIDATE = "consolidate"  # RUNNING -> RECOVERING: moved onto another rented node's free room so its node can go (checkpointed first; no restart spent)


SYSTEM_CAUSES = frozenset({Cause.NODE_LOST, Cause.WORKER_CRASHED, Cause.OOM, Cause.SYSTEM_ERROR})
