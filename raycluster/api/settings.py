"""What an API replica is given besides its code, and where the running replica keeps it.

Owns: ``ApiSettings`` (the deployment's init argument: the token's sha256 — never the token —,
timeouts, limits, and ``version``, the digest ``deploy_api`` computes) and the replica's current
settings, and its access part (``set_access``/``access``: who a per-user token is, the token routes' way to
the Coordinator). ``configure``/``current`` are module-level functions on purpose: the deployment class may
be shipped by value (cloudpickle), so state kept on it would live in a copy of this module.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from raycluster import constants as C


class ApiSettings(BaseModel):
    token_sha256: str
    # (defaults read when a deployment is made, from the settings in force then)
    actor_timeout_s: float = Field(default_factory=lambda: C.API_ACTOR_TIMEOUT_S)
    submit_timeout_s: float = Field(default_factory=lambda: max(C.API_ACTOR_TIMEOUT_S,
                                                                C.ENTRYPOINT_CHECK_TIMEOUT_S + 10))
    max_body_bytes: int = Field(default_factory=lambda: C.API_MAX_BODY_BYTES)
    retry_after_s: int = Field(default_factory=lambda: C.API_RETRY_AFTER_S)
    status_cache_s: float = Field(default_factory=lambda: C.API_STATUS_CACHE_S)
    # A digest of everything above, the deployment options and the API package's code (deploy_api
    # sets it), shown by /healthz so that deploying again can tell whether the running API is this one.
    version: str = ""


_settings: ApiSettings | None = None


def configure(settings: dict) -> ApiSettings:
    global _settings
    _settings = ApiSettings.model_validate(settings)
    return _settings


def current() -> ApiSettings | None:
    return _settings



_access = None


def set_access(part) -> None:
    """The replica's access part (``api/access.py: Access``): the middleware asks it who a token other
    than the operator's is (``await part.identity(sha256)``), the token routes call through it."""
    global _access
    _access = part


def access():
    return _access
