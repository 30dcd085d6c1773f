"""Typed exceptions of raycluster.

Every error says whether retrying the same call can help (``retryable``) and carries a stable
machine-readable ``code``; ``field`` names the offending input field where there is one.
"""

from __future__ import annotations


class RayClusterError(Exception):
    """Base class. ``retryable`` tells a caller whether the same call may succeed later."""

    code = "internal"
    retryable = False

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict:
        out = {"code": self.code, "message": self.message, "retryable": self.retryable}
        if self.field:
            out["field"] = self.field
        return out

    def __reduce__(self):  # keep ``field`` when pickled across Ray processes
        return (_rebuild, (type(self), self.message, self.field))


def _rebuild(cls, message, field):
    return cls(message, field=field)


class InvalidJobSpec(RayClusterError):
    """The job spec is malformed; fix the spec, retrying will not help."""

    code = "invalid_spec"


class EntrypointImportError(InvalidJobSpec):
    """The entrypoint cannot be imported or is not callable."""

    code = "entrypoint_not_importable"


class InfeasibleJob(InvalidJobSpec):
    """The gang can never fit on this cluster, however long it waits."""

    code = "infeasible"


class JobNotFound(RayClusterError):
    code = "not_found"


class IllegalTransition(RayClusterError):
    """The job is not in a state that allows this operation (e.g. cancel a finished job)."""

    code = "illegal_transition"


class ClusterUnavailable(RayClusterError):
    """The runtime (Ray cluster or its actors) cannot be reached right now; retry later."""

    code = "unavailable"
    retryable = True


class Unauthorized(RayClusterError):
    """The HTTP API refused the request's bearer token (missing or wrong); retrying will not help."""

    code = "unauthorized"


class ApiDeployError(RayClusterError):
    """The HTTP API could not be deployed or is not reachable where it should be (e.g. its port is
    taken by another program, or a Serve instance started with other options is running)."""

    code = "api_deploy"


class LocalClusterError(RayClusterError):
    """Starting or stopping the embedded local cluster failed."""

    code = "local_cluster"


class CheckpointError(RayClusterError):
    code = "checkpoint"


class NoValidCheckpoint(CheckpointError):
    """Every registered checkpoint failed verification."""

    code = "no_valid_checkpoint"


# --- process exit codes of the command-line entry points (raycluster CLI, raycluster.submit) ----
EXIT_OK, EXIT_JOB_FAILED, EXIT_INVALID, EXIT_UNAVAILABLE, EXIT_NOT_FOUND, EXIT_ILLEGAL = 0, 1, 2, 3, 4, 5
EXIT_UNAUTHORIZED = 6
_EXIT_CODES = ((InvalidJobSpec, EXIT_INVALID), (ApiDeployError, EXIT_INVALID), (JobNotFound, EXIT_NOT_FOUND),
               (IllegalTransition, EXIT_ILLEGAL), (ClusterUnavailable, EXIT_UNAVAILABLE),
               (Unauthorized, EXIT_UNAUTHORIZED))


def exit_code(exc: RayClusterError) -> int:
    """The exit code a command ends with when ``exc`` stops it (EXIT_JOB_FAILED for anything else)."""
    return next((code for typ, code in _EXIT_CODES if isinstance(exc, typ)), EXIT_JOB_FAILED)
