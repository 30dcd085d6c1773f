"""The FastAPI application of the control API: its OpenAPI schema, handlers and middleware.

Owns: the ``app`` object the ControlAPI deployment serves (``routes.py`` adds the routes), the
OpenAPI document (FastAPI's + the ``JobSpec`` request body, which ``POST /jobs`` parses by hand, +
bearer security, public paths marked public) and the response documentation and id pattern shared by
routes.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from raycluster.api.errors import SafeJSONResponse, install_handlers
from raycluster.api.middleware import PUBLIC_PATHS, Guard
from raycluster import constants as C
from raycluster.api.models import ErrorResponse
from raycluster.policy.budget_types import MAX_CAP_USD_PER_HOUR
from raycluster.spec import ENTRYPOINT_RE, NAME_RE, JobSpec


class _App(FastAPI):
    def openapi(self) -> dict:
        """FastAPI's schema + the JobSpec request body (parsed by hand, see submit) + bearer security."""
        if self.openapi_schema:
            return self.openapi_schema
        schema = get_openapi(title=self.title, version=self.version, description=self.description,
                             routes=self.routes, separate_input_output_schemas=False)
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        spec_schema = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
        for field, regex in (("name", NAME_RE), ("entrypoint", ENTRYPOINT_RE)):  # checked by validators
            spec_schema["properties"][field]["pattern"] = regex.pattern
        comps.update(spec_schema.pop("$defs", {}))
        comps["JobSpec"] = spec_schema
        comps["JobBatchRequest"] = {
            "type": "object", "required": ["jobs"], "additionalProperties": False,
            "properties": {"jobs": {"type": "array", "minItems": 1, "maxItems": C.SUBMIT_BATCH_MAX, "items": {
                "type": "object", "required": ["spec"], "additionalProperties": False,
                "properties": {"spec": {"$ref": "#/components/schemas/JobSpec"},
                               "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 255}}}}}}
        comps["PreemptRequest"] = {
            "type": "object", "additionalProperties": False,
            "properties": {"notice_s": {"type": ["number", "null"], "minimum": 0, "maximum": 86400}}}
        comps["BudgetRequest"] = {
            "type": "object", "additionalProperties": False, "required": ["max_hourly_budget_usd"],
            "properties": {"max_hourly_budget_usd": {"type": ["number", "null"], "minimum": 0,
                                                     "exclusiveMaximum": MAX_CAP_USD_PER_HOUR}}}
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
        for path, ops in schema.get("paths", {}).items():
            if path in PUBLIC_PATHS:
                for op in ops.values():
                    op["security"] = []
        self.openapi_schema = schema
        return schema


app = _App(
    title="raycluster control API",
    version="1",
    description="Submit, list, follow and cancel training jobs; cluster and node status. "
                "Every route except /healthz needs `Authorization: Bearer <token>`: the operator's token "
                "(`<state_dir>/api_token`, an admin) or a per-user token (`raycluster tokens create`: one "
                "tenant, a role — admin, member or viewer). Errors: `{\"error\": {\"code\", \"message\", \"field\"?, \"retryable\"}}`.",
    docs_url="/docs",
    redoc_url=None,
    default_response_class=SafeJSONResponse,
    separate_input_output_schemas=False,
)

E = {"model": ErrorResponse}
AUTH = {401: {**E, "description": "missing or wrong bearer token",
               "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}}},
        403: {**E, "description": "the token's role or tenant does not allow this (the message says which would)"}}
UNAVAILABLE = {503: {**E, "description": "the runtime is restarting or unreachable; retry after Retry-After",
                      "headers": {"Retry-After": {"schema": {"type": "string"}}}},
                500: {**E, "description": "unexpected server error (no details are sent)"}}
COMMON = {**AUTH, **UNAVAILABLE, 422: {**E, "description": "invalid parameter (field names it)"},
          415: {**E, "description": "a request body declared as something other than JSON"}}
NOT_FOUND = {404: {**E, "description": "unknown job"}}
# the path pattern of a job's or a schedule's id
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


install_handlers(app)
app.add_middleware(Guard)
