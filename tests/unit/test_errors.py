"""The one error table: every error class's HTTP status and exit code, and the way back from an
HTTP answer to the class (used by the HTTP client)."""

from __future__ import annotations

import pickle

import pytest

from raycluster import errors as E


def _classes():
    return E._all_classes()


@pytest.mark.parametrize("cls, status, code", [
    (E.InvalidJobSpec, 422, E.EXIT_INVALID), (E.EntrypointImportError, 422, E.EXIT_INVALID),
    (E.InfeasibleJob, 422, E.EXIT_INVALID), (E.BodyTooLarge, 413, E.EXIT_INVALID),
    (E.JobNotFound, 404, E.EXIT_NOT_FOUND), (E.IllegalTransition, 409, E.EXIT_ILLEGAL),
    (E.IdempotencyKeyReused, 409, E.EXIT_INVALID),
    (E.ClusterUnavailable, 503, E.EXIT_UNAVAILABLE), (E.Unauthorized, 401, E.EXIT_UNAUTHORIZED),
    (E.ApiDeployError, 500, E.EXIT_INVALID), (E.LocalClusterError, 500, E.EXIT_JOB_FAILED),
    (E.RayClusterError, 500, E.EXIT_JOB_FAILED),
])
def test_table(cls, status, code):
    exc = cls("m", field="f")
    assert (exc.http_status, exc.exit_code, E.exit_code(exc)) == (status, code, code)


def test_every_class_round_trips_through_its_http_answer():
    for cls in _classes():
        if cls is E.RayClusterError or cls.http_status == 500:
            continue  # a 500 is never mapped back to a specific class
        back = E.error_for_status(cls.http_status, cls.code, "msg", "fld")
        assert type(back) is cls, cls
        assert (back.message, back.field, back.retryable) == ("msg", "fld", cls.retryable)


def test_unknown_answers_keep_status_and_code():
    exc = E.error_for_status(418, "teapot", "short and stout")
    assert type(exc) is E.RayClusterError and exc.code == "teapot" and "418" in exc.message
    assert type(E.error_for_status(403, None, "no")) is E.Forbidden and E.Forbidden.exit_code == E.EXIT_UNAUTHORIZED
    assert type(E.error_for_status(504, None, "gateway")) is E.ClusterUnavailable
    assert E.exit_code(ValueError("not ours")) == E.EXIT_JOB_FAILED


def test_errors_keep_their_field_across_processes():
    exc = pickle.loads(pickle.dumps(E.InfeasibleJob("too big", field="num_workers")))
    assert type(exc) is E.InfeasibleJob and exc.field == "num_workers" and exc.to_dict()["code"] == "infeasible"
