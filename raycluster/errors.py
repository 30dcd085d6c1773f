"""Typed exceptions of raycluster, and the one table of how each one is answered.

Owns: every error class with its stable machine-readable ``code``, whether retrying the same call
can help (``retryable``), the HTTP status the API answers with (``http_status``) and the exit code a
command ends with (``exit_code``) — attributes of the classes, so the API, the HTTP client, the CLI
and ``python -m raycluster.submit`` all read one table. ``field`` names the offending input field
where there is one.
"""

from __future__ import annotations

# process exit codes of the command-line entry points (raycluster CLI, raycluster.submit)
EXIT_OK, EXIT_JOB_FAILED, EXIT_INVALID, EXIT_UNAVAILABLE, EXIT_NOT_FOUND, EXIT_ILLEGAL = 0, 1, 2, 3, 4, 5
EXIT_UNAUTHORIZED = 6


class RayClusterError(Exception):
    """Base class. ``retryable`` tells a caller whether the same call may succeed later."""

    code = "internal"
    retryable = False
    http_status = 500
    exit_code = EXIT_JOB_FAILED

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


# The table: each class's code, HTTP status (API) and exit code (CLI, raycluster.submit).
class InvalidJobSpec(RayClusterError):
    """The job spec is malformed; fix the spec, retrying will not help."""
    code, http_status, exit_code = "invalid_spec", 422, EXIT_INVALID


class EntrypointImportError(InvalidJobSpec):
    """The entrypoint cannot be imported or is not callable."""
    code = "entrypoint_not_importable"


class InfeasibleJob(InvalidJobSpec):
    """The gang can never fit on this cluster, however long it waits."""
    code = "infeasible"


class BodyTooLarge(InvalidJobSpec):
    """A request body is larger than the API accepts."""
    code, http_status = "payload_too_large", 413


class JobNotFound(RayClusterError):
    code, http_status, exit_code = "not_found", 404, EXIT_NOT_FOUND


class IllegalTransition(RayClusterError):
    """The job is not in a state that allows this operation (e.g. cancel a finished job)."""
    code, http_status, exit_code = "illegal_transition", 409, EXIT_ILLEGAL


class IdempotencyKeyReused(RayClusterError):
    """An idempotency key already made a job from a different spec: a client bug, nothing created."""
    code, http_status, exit_code = "idempotency_key_reused", 409, EXIT_INVALID


class ClusterUnavailable(RayClusterError):
    """The runtime (Ray cluster or its actors) cannot be reached right now; retry later."""
    code, http_status, exit_code, retryable = "unavailable", 503, EXIT_UNAVAILABLE, True


class Unauthorized(RayClusterError):
    """The HTTP API refused the request's bearer token (missing or wrong); retrying will not help."""
    code, http_status, exit_code = "unauthorized", 401, EXIT_UNAUTHORIZED


class Forbidden(Unauthorized):
    """The token is valid but its role or tenant does not allow this (HTTP 403; the message names what
    was refused and which role would allow it). Retrying with the same token will not help."""
    code, http_status = "forbidden", 403


class ApiDeployError(RayClusterError):
    """The HTTP API could not be deployed or is not reachable where it should be (e.g. its port is
    taken by another program, or a Serve instance started with other options is running)."""
    code, exit_code = "api_deploy", EXIT_INVALID


class NotElastic(RayClusterError):
    """The cluster rents no nodes (it was not started elastic: ray up, or up --local --elastic)."""
    code, http_status, exit_code = "not_elastic", 409, EXIT_UNAVAILABLE


class LocalClusterError(RayClusterError):
    """Starting or stopping the embedded local cluster failed."""
    code = "local_cluster"


class CheckpointError(RayClusterError):
    code = "checkpoint"


class InvalidSetting(RayClusterError):
    """A setting given at run time is invalid (names it); retrying will not help."""
    code, http_status, exit_code = "invalid_setting", 422, EXIT_INVALID


class StorageError(RayClusterError):
    """A call to the checkpoint/log store failed (network, throttling, a missing bucket); it may
    succeed later."""
    code, http_status, retryable = "storage", 503, True


class InvalidStorage(StorageError):
    """The storage URI itself is unusable (unknown protocol, its package missing, no bucket): fix
    the setting, retrying will not help."""
    code, http_status, exit_code, retryable = "invalid_storage", 422, EXIT_INVALID, False


def _all_classes() -> list[type[RayClusterError]]:
    out, todo = [], [RayClusterError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


def error_for_status(status: int, code: str | None, message: str, field: str | None = None) -> RayClusterError:
    """The typed exception for an HTTP error answer: the class with this ``code`` when it answers with
    this status, else the most general class answering with the status, else RayClusterError."""
    classes = [c for c in _all_classes() if c is not RayClusterError]
    if status in (502, 504):
        status = 503
    cls = next((c for c in classes if c.code == code and c.http_status == status), None)
    if cls is None:  # the most general class that answers with this status (fewest ancestors)
        general = [c for c in classes if c.http_status == status and "http_status" in c.__dict__]
        cls = min(general, key=lambda c: (len(c.__mro__), c.__name__)) if general else None
    if cls is None:
        exc = RayClusterError(f"HTTP {status}: {message}", field=field)
        if code:
            exc.code = code
        return exc
    return cls(message, field=field)


def exit_code(exc: BaseException) -> int:
    """The exit code a command ends with when ``exc`` stops it (EXIT_JOB_FAILED for anything else)."""
    return getattr(exc, "exit_code", EXIT_JOB_FAILED) if isinstance(exc, RayClusterError) else EXIT_JOB_FAILED
