"""The job spec: what a user submits, validated strictly.

Owns: the ``JobSpec`` pydantic model, its defaults and limits, and loading it from YAML/JSON.
Every invalid field raises :class:`raycluster.errors.InvalidJobSpec` naming the field and why;
unknown fields are rejected.
"""

from __future__ import annotations

import json
import re
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raycluster import constants as C
from raycluster.errors import InvalidJobSpec

ENTRYPOINT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class PlacementStrategy(str, Enum):
    PACK = "PACK"
    SPREAD = "SPREAD"
    STRICT_PACK = "STRICT_PACK"
    STRICT_SPREAD = "STRICT_SPREAD"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorkerResources(_Strict):
    """Resources of one gang member (one Ray task, one placement-group bundle)."""

    gpus: float = Field(0.0, ge=0, le=64, description="GPUs per worker; fractions pack small tasks onto one GPU")
    cpus: float = Field(1.0, gt=0, le=512, description="CPUs per worker")
    memory_mb: int = Field(0, ge=0, le=16 * 1024 * 1024, description="memory reserved per worker (0 = none)")

    @field_validator("gpus")
    @classmethod
    def _gpu_fraction(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError("more than one GPU must be a whole number")
        return v

    def bundle(self) -> dict[str, float]:
        out: dict[str, float] = {"CPU": float(self.cpus)}
        if self.gpus:
            out["GPU"] = float(self.gpus)
        if self.memory_mb:
            out["memory"] = float(self.memory_mb) * 1024 * 1024
        return out


class CheckpointPolicy(_Strict):
    every_steps: int | None = Field(None, ge=1, description="checkpoint every N steps")
    every_s: float | None = Field(None, gt=0, description="checkpoint every N seconds")
    keep_last: int = Field(3, ge=1, le=1000, description="complete checkpoints kept per job")


class Trials(_Strict):
    """A sweep: many small trials of the entrypoint run as one job, packed K per bundle (one Ray task
    per bundle, not one per trial). Each trial's config is the job's ``config`` with its own values on top."""

    configs: list[dict[str, Any]] | None = Field(None, description="each trial's config values")
    grid: dict[str, list[Any]] | None = Field(None, description="every combination of these values (keys sorted)")
    per_bundle: int | None = Field(None, ge=1, le=1000, description="K: trials run at once in one bundle")
    gpus_per_trial: float | None = Field(None, gt=0, le=1, description="K = the bundle's GPUs / this")
    cpus_per_trial: float | None = Field(None, gt=0, description="K = the bundle's CPUs / this (without GPUs)")
    metric: str | None = Field(None, description="the result key the best trial is chosen by")
    mode: Literal["min", "max"] = "min"

    @field_validator("grid")
    @classmethod
    def _grid(cls, v):
        if v is not None:
            if not v:
                raise ValueError("must name at least one config key")
            for k, values in v.items():
                if not values:
                    raise ValueError(f"{k}: needs at least one value")
        return v

    def expand(self) -> list[dict[str, Any]]:
        """Every trial's own config values, in trial order."""
        import itertools

        if self.configs is not None:
            return [dict(c) for c in self.configs]
        keys = sorted(self.grid or {})
        return [dict(zip(keys, combo)) for combo in itertools.product(*(self.grid[k] for k in keys))]

    def count(self) -> int:
        if self.configs is not None:
            return len(self.configs)
        n = 1
        for values in (self.grid or {}).values():
            n *= len(values)
        return n

    def per_bundle_for(self, resources: "WorkerResources") -> int:
        """K: trials run at once in one bundle (explicit, else from a trial's declared share of it)."""
        if self.per_bundle:
            return self.per_bundle
        if self.gpus_per_trial and resources.gpus:
            return max(1, int(resources.gpus / self.gpus_per_trial + 1e-9))
        if self.cpus_per_trial:
            return max(1, int(resources.cpus / self.cpus_per_trial + 1e-9))
        return 1


class JobSpec(_Strict):
    name: str = Field(..., description="human-readable job name")
    entrypoint: str = Field(..., description="'package.module:function' called as function(ctx)")
    config: dict[str, Any] = Field(default_factory=dict, description="passed to the entrypoint as ctx.config")
    num_workers: int = Field(1, ge=1, le=C.MAX_GANG_SIZE, description="gang size: all start together or none "
                             "(an elastic gang, ``{min, max}``: its largest size)")
    min_workers: int | None = Field(None, ge=1, le=C.MAX_GANG_SIZE,
                                    description="an elastic gang's smallest size (``num_workers: {min, max}``): it "
                                                "starts with what fits (>= min), shrinks when a node is lost and "
                                                "grows back at a checkpoint")
    resources: WorkerResources = Field(default_factory=WorkerResources)
    placement_strategy: PlacementStrategy = PlacementStrategy.PACK
    priority: int = Field(50, ge=C.MIN_PRIORITY, le=C.MAX_PRIORITY, description="higher runs first")
    max_restarts: int = Field(3, ge=0, le=C.MAX_SYSTEM_RESTARTS, description="restarts after system failures")
    max_user_retries: int = Field(0, ge=0, le=C.MAX_USER_RETRIES, description="retries after user-code errors")
    checkpoint: CheckpointPolicy = Field(default_factory=CheckpointPolicy)
    max_runtime_s: float | None = Field(None, gt=0, description="wall-clock limit of one attempt")
    tenant: str | None = Field(None, max_length=64)
    spot: Literal["auto", "never", "only"] = Field(
        "auto", description="on an elastic cluster, which nodes it runs on and is rented for: spot first then "
                            "on-demand (auto), on-demand only (never), spot only (only)")
    runtime_env: dict[str, Any] | None = Field(None, description="Ray runtime_env for the training tasks")
    trials: Trials | None = Field(None, description="a sweep: many small trials run as one job, K per bundle")
    preemptible: bool = Field(True, description="may be stopped (checkpointed first, queued again) for a "
                                                "higher-priority job that waited too long")
    schedule: str | None = Field(None, description="cron expression (UTC; 5 fields, or 6 with seconds last): "
                                                   "a scheduled job that submits a run of this spec at each tick")
    concurrency_policy: Literal["Forbid", "Allow", "Replace"] = Field(
        "Forbid", description="a schedule's tick while its previous run is unfinished: Forbid skips it, Allow "
                              "runs both, Replace cancels the previous run")
    deadline: float | None = Field(None, gt=0, description="absolute time (UTC epoch seconds, or an ISO 8601 "
                                                           "date-time) the job must finish by, else it FAILS")
    expected_runtime_s: float | None = Field(None, gt=0, description="how long a run takes: with a deadline, a "
                                                                     "queued job fails as soon as it can no longer finish in time")

    @model_validator(mode="after")
    def _elastic(self) -> "JobSpec":
        if self.min_workers is not None:
            if self.min_workers > self.num_workers:
                raise ValueError(f"num_workers: min {self.min_workers} is over max {self.num_workers}")
            if self.min_workers == self.num_workers:
                object.__setattr__(self, "min_workers", None)  # {min: n, max: n} is the plain n
        return self

    @property
    def elastic(self) -> bool:
        """An elastic gang: any size from ``min_workers`` to ``num_workers``."""
        return self.min_workers is not None

    def sizes(self) -> range:
        """The gang sizes it may run at, largest first."""
        return range(self.num_workers, (self.min_workers or self.num_workers) - 1, -1)

    @field_validator("trials", mode="before")
    @classmethod
    def _trials_list(cls, v: Any) -> Any:
        return {"configs": v} if isinstance(v, list) else v  # `trials: [{...}, ...]` is a list of configs

    @field_validator("deadline", mode="before")
    @classmethod
    def _deadline(cls, v: Any) -> Any:
        if isinstance(v, str):
            from datetime import datetime, timezone

            try:
                dt = datetime.fromisoformat(v.strip().replace("Z", "+00:00"))
            except ValueError:
                raise ValueError("must be UTC epoch seconds or an ISO 8601 date-time like 2026-12-01T02:00:00Z") from None
            return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()
        return v

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from croniter import croniter

        v = " ".join(v.split())
        if len(v.split()) not in (5, 6) or not croniter.is_valid(v):
            raise ValueError(f"{v!r} is not a cron expression (5 fields 'min hour day month weekday', UTC, or 6 "
                             "with seconds last; e.g. '0 2 * * *')")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("must be 1-64 characters of letters, digits, '-', '_' or '.', starting with a letter or digit")
        return v

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint(cls, v: str) -> str:
        if not ENTRYPOINT_RE.match(v):
            raise ValueError("must look like 'package.module:function'")
        return v

    @field_validator("config")
    @classmethod
    def _config_json(cls, v: dict) -> dict:
        try:
            json.dumps(v)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"must be JSON-serialisable ({exc})") from None
        return v

    def bundles(self, workers: int | None = None) -> list[dict[str, float]]:
        """The bundles of a gang of ``workers`` (default: its largest size)."""
        return [self.resources.bundle() for _ in range(workers or self.num_workers)]


def _field_of(err: dict) -> str:
    return ".".join(str(p) for p in err.get("loc", ())) or "spec"


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The spec model whose fields sit at ``loc`` (() = JobSpec), or None (a free-form dict)."""
    import typing

    model: type[BaseModel] = JobSpec
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        nxt = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nxt is None:
            return None
        model = nxt
    return model


def _did_you_mean(err: dict) -> str:
    """", did you mean 'x'?" for an unknown field close to a known one at the same place."""
    import difflib

    loc = tuple(err.get("loc", ()))
    model = _model_at(loc[:-1]) if loc else None
    if model is None:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    return f" (did you mean {'.'.join([*map(str, loc[:-1]), close[0]])!r}?)" if close else ""


def apply_overrides(spec: dict[str, Any], items: list[str]) -> dict[str, Any]:
    """``spec`` with each ``KEY=VALUE`` of ``submit --set`` applied: KEY dotted for nested fields
    (``config.lr``), VALUE read as YAML (``4`` an int, ``[1, 2]`` a list, ``abc`` a string)."""
    import copy

    out = copy.deepcopy(spec)
    for item in items:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise InvalidJobSpec(f"--set {item!r}: expected KEY=VALUE (e.g. config.lr=0.01)", field="--set")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise InvalidJobSpec(f"--set {item!r}: the value is not YAML: {exc}", field="--set") from None
        node = out
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InvalidJobSpec(f"--set {item!r}: {'.'.join(parts[:i + 1])} is not a mapping", field=key)
        node[parts[-1]] = value
    return out


_PACKAGE_PLACEHOLDER = "gcs://_ray_pkg_0000000000000000.zip"


def check_before_packaging(spec: dict[str, Any]) -> JobSpec:
    """Validate a spec whose runtime_env may still name local directories (to be packaged and
    uploaded after this): the whole spec is checked first, so a typo costs no upload."""
    env = spec.get("runtime_env")
    if isinstance(env, dict):
        env = dict(env)
        if is_local_path(env.get("working_dir")):
            env["working_dir"] = _PACKAGE_PLACEHOLDER
        if isinstance(env.get("py_modules"), list):
            env["py_modules"] = [_PACKAGE_PLACEHOLDER if is_local_path(m) else m for m in env["py_modules"]]
        spec = {**spec, "runtime_env": env}
    return parse_spec(spec)


def parse_spec(data: Any) -> JobSpec:
    """Validate a dict (or JSON string) into a JobSpec, raising InvalidJobSpec naming the field."""
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise InvalidJobSpec(f"spec is not valid JSON: {exc}") from None
    if isinstance(data, JobSpec):
        return data
    if not isinstance(data, dict):
        raise InvalidJobSpec(f"spec must be a mapping, got {type(data).__name__}")
    data = _elastic_workers(data)
    try:
        spec = JobSpec.model_validate(data)
    except RecursionError:
        raise InvalidJobSpec("spec is nested too deeply") from None
    except ValidationError as exc:
        errors = exc.errors()
        parts = []
        for err in errors:
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown field" + _did_you_mean(err)
            elif err["type"] == "missing":
                msg = "required field is missing"
            parts.append(f"{_field_of(err)}: {msg}")
        raise InvalidJobSpec("invalid job spec: " + "; ".join(parts), field=_field_of(errors[0])) from None
    if spec.trials is not None:
        if (spec.trials.configs is None) == (spec.trials.grid is None):
            raise InvalidJobSpec("trials: give exactly one of configs (a list) or grid", field="trials")
        n = spec.trials.count()
        if not 1 <= n <= C.MAX_TRIALS:
            raise InvalidJobSpec(f"trials: {n} trials; a sweep has 1-{C.MAX_TRIALS}", field="trials")
    if spec.elastic and spec.trials is not None:
        raise InvalidJobSpec("num_workers: a sweep's bundles are independent; give it a plain number, not "
                             "{min, max}", field="num_workers")
    if spec.schedule is not None and spec.deadline is not None:
        raise InvalidJobSpec("deadline: an absolute deadline cannot repeat with a schedule; give its runs "
                             "max_runtime_s instead", field="deadline")
    if spec.runtime_env:
        check_runtime_env(spec.runtime_env)
    return spec


def _elastic_workers(data: dict) -> dict:
    """``num_workers: {min: 2, max: 8}`` (an elastic gang) as ``num_workers: 8, min_workers: 2``."""
    nw = data.get("num_workers")
    if not isinstance(nw, dict):
        return data
    extra = sorted(set(nw) - {"min", "max"})
    if extra or "min" not in nw or "max" not in nw:
        raise InvalidJobSpec("num_workers: a number, or {min: M, max: N} for an elastic gang"
                             + (f" (unknown key(s) {', '.join(map(str, extra))})" if extra else ""),
                             field="num_workers")
    for key in ("min", "max"):
        v = nw[key]
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= C.MAX_GANG_SIZE:
            raise InvalidJobSpec(f"num_workers.{key}: must be a whole number from 1 to {C.MAX_GANG_SIZE}, got {v!r}",
                                 field=f"num_workers.{key}")
    if nw["min"] > nw["max"]:
        raise InvalidJobSpec(f"num_workers: min {nw['min']} is over max {nw['max']}", field="num_workers.min")
    if "min_workers" in data:
        raise InvalidJobSpec("min_workers: give num_workers: {min, max} alone", field="min_workers")
    return {**data, "num_workers": nw["max"], "min_workers": nw["min"]}


# runtime_env keys whose values name code to ship: only package URIs reach a job's tasks
_URI_KEYS = ("working_dir", "py_modules")


def is_local_path(value: Any) -> bool:
    """A runtime_env code location that is a path on the submitting machine, not a package URI."""
    return isinstance(value, str) and "://" not in value


def gcs_uris(runtime_env: dict | None) -> list[str]:
    """The gcs:// package URIs a runtime_env refers to (working_dir, py_modules)."""
    if not runtime_env:
        return []
    out = []
    wd = runtime_env.get("working_dir")
    if isinstance(wd, str) and wd.startswith("gcs://"):
        out.append(wd)
    for m in runtime_env.get("py_modules") or []:
        if isinstance(m, str) and m.startswith("gcs://"):
            out.append(m)
    return out


def check_runtime_env(runtime_env: dict[str, Any]) -> None:
    """Refuse, naming ``runtime_env.<key>``, what Ray would refuse only when the job's tasks start
    (a traceback then): unknown keys, values of the wrong type (Ray's own check, key by key), and
    local directories for ``working_dir``/``py_modules`` — Ray takes those only at the job level."""
    from ray.runtime_env import RuntimeEnv

    known = {k for k in RuntimeEnv.known_fields if not k.startswith("_")}
    for key, value in runtime_env.items():
        field = f"runtime_env.{key}"
        if key not in known:
            import difflib

            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise InvalidJobSpec(f"{field}: unknown runtime_env key ({hint}Ray knows {sorted(known)})", field=field)
        if key in _URI_KEYS:
            for item in (value if key == "py_modules" and isinstance(value, list) else [value]):
                if is_local_path(item):
                    raise InvalidJobSpec(
                        f"{field}: {item!r} is a local path; the server takes only a package URI (gcs://, "
                        "s3://, https://...): `raycluster submit` and the HTTP client upload a local directory "
                        "as one (PUT /api/packages/gcs/{name})", field=field)
        try:
            RuntimeEnv(**{key: value})
        except (TypeError, ValueError) as exc:
            raise InvalidJobSpec(f"{field}: {exc}", field=field) from None


def read_spec_file(path: str | Path) -> Any:
    """A spec file (.yaml/.yml/.json) as read, before validation."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise InvalidJobSpec(f"cannot read spec file {p}: {exc.strerror}") from None
    try:
        return json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise InvalidJobSpec(f"cannot parse {p}: {exc}") from None
    except RecursionError:
        raise InvalidJobSpec(f"cannot parse {p}: nested too deeply") from None


def load_spec(path: str | Path) -> JobSpec:
    """Load a spec from a .yaml/.yml/.json file."""
    return parse_spec(read_spec_file(path))
