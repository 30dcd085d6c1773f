"""The runtime's settings as one typed object: ``Settings``.

Owns: the ``Settings`` model — one typed, validated field per tunable of ``constants.py`` (every
``RAYCLUSTER_<NAME>`` there; the declaration there stays the one home of each default and its
comment) — how one is read from the environment (``from_env``: defaults, overridden by
``RAYCLUSTER_<NAME>``, as today), made with overrides (``with_overrides``: an unknown name or a
value of the wrong type is refused with ``InvalidSetting`` naming it, nothing changed), and put in
force in a process (``install``: every field, so a reused worker process never keeps another
runtime's values).

Who passes it: ``start_runtime(settings=...)`` hands it to every runtime actor it creates (each
installs it first thing), the Coordinator to the HealthMonitors it starts and to every rank it
launches. So a test, or an operator, restarts the runtime with other settings on a running cluster
(``restart_runtime``) instead of starting another cluster, and a node's environment no longer decides
what an actor does.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from raycluster import constants as C
from raycluster.errors import InvalidSetting

PREFIX = "RAYCLUSTER_"


class _SettingsBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "_SettingsBase":
        """The defaults, each overridden by its ``RAYCLUSTER_<NAME>`` when set (and not empty)."""
        environ = os.environ if environ is None else environ
        raw = {name: environ[PREFIX + name] for name in cls.model_fields
               if environ.get(PREFIX + name) not in (None, "")}
        return cls.defaults().with_overrides(**{k: _parse(cls, k, v, PREFIX + k) for k, v in raw.items()})

    @classmethod
    def defaults(cls) -> "_SettingsBase":
        return cls.model_construct()

    def with_overrides(self, **overrides: Any) -> "_SettingsBase":
        """A copy with these fields changed, each validated (``InvalidSetting`` names the first bad one)."""
        unknown = sorted(set(overrides) - set(type(self).model_fields))
        if unknown:
            raise InvalidSetting(f"unknown setting {unknown[0]!r} (see raycluster/constants.py)", field=unknown[0])
        try:
            return type(self).model_validate({**self.model_dump(), **overrides})
        except ValidationError as exc:
            err = exc.errors()[0]
            name = str(err["loc"][0]) if err.get("loc") else "?"
            raise InvalidSetting(f"setting {name}: {err['msg']} (got {overrides.get(name)!r})", field=name) from None

    def changed(self) -> dict[str, Any]:
        """The fields that differ from the defaults."""
        defaults = type(self).defaults()
        return {k: v for k, v in self.model_dump().items() if v != getattr(defaults, k)}

    def env(self) -> dict[str, str]:
        """``RAYCLUSTER_<NAME>`` for every changed field (for processes that read the environment)."""
        return {PREFIX + k: _unparse(v) for k, v in self.changed().items()}

    def install(self) -> None:
        """Put every field in force in this process (``constants.<NAME>``, read at call time)."""
        for name, value in self.model_dump().items():
            setattr(C, name, value)


def of(value: "_SettingsBase | Mapping[str, Any] | None") -> "_SettingsBase":
    """A Settings from what crosses a process boundary (a dict of every field), or from the
    environment when none was given (a runtime started before settings were passed)."""
    if value is None:
        return Settings.from_env()
    if isinstance(value, _SettingsBase):
        return value
    return Settings.defaults().with_overrides(**dict(value))


def _parse(cls, name: str, raw: str, where: str) -> Any:
    tp = C.DECLARED[name][0]
    if tp is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise InvalidSetting(f"{where}={raw!r}: expected 1/0, true/false, yes/no or on/off", field=name)
    try:
        return tp(raw)
    except ValueError:
        raise InvalidSetting(f"{where}={raw!r}: expected {tp.__name__}", field=name) from None


def _unparse(v: Any) -> str:
    return ("1" if v else "0") if isinstance(v, bool) else str(v)


Settings = create_model("Settings", __base__=_SettingsBase, __module__=__name__,
                        **{name: (tp, default) for name, (tp, default) in C.DECLARED.items()})
Settings.__doc__ = "Every tunable of raycluster, typed; defaults as declared in ``constants.py``."
