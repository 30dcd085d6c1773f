"""Request and response models of the HTTP API (what ``/openapi.json`` describes).

Owns: the response shapes. ``Job`` is derived from the store's ``JobRecord`` (one definition of a
job's fields); the request body of ``POST /jobs`` is the ``JobSpec`` itself (``raycluster.spec``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from raycluster.store.jobs import JobRecord
from raycluster.store.lifecycle import Cause


class ErrorDetail(BaseModel):
    code: str = Field(..., description="stable machine-readable code, e.g. invalid_spec, not_found, unavailable")
    message: str
    field: str | None = Field(None, description="the offending input field, where there is one")
    retryable: bool = Field(False, description="whether the same request may succeed later")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: str
    version: str = Field("", description="digest of the deployed API's code and settings")


class Transition(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str | None = Field(None, alias="from")
    to: str
    ts: float
    reason: str | None = None
    cause: Cause | None = None


class Job(JobRecord):
    """A job as the API answers it: the stored record (``store.jobs.JobRecord``, the one definition)
    plus, for ``GET /jobs/{id}``, its audit trail, and on an elastic cluster its cost so far."""

    transitions: list[Transition] | None = Field(None, description="audit trail (GET /jobs/{id} only)")
    cost_usd: float | None = Field(None, description="its share of the rented nodes it ran on, every attempt "
                                                     "(elastic clusters; 0 on nodes that are not rented)")
    sweep: dict[str, Any] | None = Field(None, description="a sweep's counts and best trial so far (GET /jobs/{id})")
    ranks: list[dict[str, Any]] | None = Field(None, description="the node of each rank of the current attempt, "
                                                                 "once placed (GET /jobs/{id}): rank, node_id (Ray's),"
                                                                 " rental (the rented node's id, else null)")


class JobBatch(BaseModel):
    jobs: list[Job] = Field(..., description="the jobs, in the order of the request")


class JobList(BaseModel):
    jobs: list[Job]
    limit: int
    offset: int
    next_offset: int | None = Field(None, description="offset of the next page; null on the last page")
    total: int | None = Field(None, description="not computed (always null); page with next_offset")


class ResourceUsage(BaseModel):
    total: float
    allocated: float
    free: float
    utilization: float = Field(..., description="allocated / total (0 when total is 0)")


class ActorHealth(BaseModel):
    ok: bool
    uptime_s: float | None = None
    error: str | None = None


class RuntimeHealth(BaseModel):
    coordinator: ActorHealth
    checkpoint_manager: ActorHealth


class ClusterStatus(BaseModel):
    nodes: int = Field(..., description="alive nodes")
    gpus: ResourceUsage
    cpus: ResourceUsage
    utilization: float = Field(..., description="GPU utilisation, or CPU utilisation on a cluster without GPUs")
    queue_depth: int = Field(..., description="PENDING jobs")
    queue_depth_by_priority: dict[str, int]
    jobs_by_state: dict[str, int]
    runtime: RuntimeHealth
    as_of: float = Field(..., description="unix time the figures were taken (cached up to API_STATUS_CACHE_S)")


class Node(BaseModel):
    id: str
    alive: bool
    is_head: bool
    address: str | None = None
    hostname: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    resources_total: dict[str, float]
    resources_free: dict[str, float]


class NodeList(BaseModel):
    nodes: list[Node]


class NodeHealth(BaseModel):
    node_id: str
    alive: bool
    is_head: bool
    address: str | None = None
    rental_id: str | None = Field(None, description="its rental, on an elastic cluster")
    state: str = Field(..., description="healthy, degraded, unhealthy, or unknown (no verdict yet)")
    score: float | None = Field(None, description="CPU % x 1 + fullest GPU memory % x 3: lower is better")
    reasons: list[str]
    excluded: bool = Field(..., description="no new gang goes there (unhealthy or drained)")
    drained: bool
    drain_reason: str | None = None
    last_heartbeat_s_ago: float | None = None
    heartbeat_timeout_s: float | None = Field(None, description="how long it may be silent: 1.5 intervals plus twice "
                                                                "how late its (its host's) heartbeats came lately")
    sample: dict[str, Any] | None = Field(None, description="the newest sample: CPU, load, memory, disk, GPUs")


class NodeHealthList(BaseModel):
    nodes: list[NodeHealth]


class Checkpoint(BaseModel):
    step: int
    attempt: int | None = None
    world_size: int | None = None
    state: str
    created_at: float | None = None
    completed_at: float | None = None
    reason: str | None = None
    size_bytes: int = 0


class CheckpointList(BaseModel):
    job_id: str
    checkpoints: list[Checkpoint]


class MetricPoint(BaseModel):
    model_config = ConfigDict(extra="allow")

    attempt: int
    ts: float
    step: int | None = None


class MetricList(BaseModel):
    job_id: str
    metrics: list[MetricPoint] = Field(..., description="reports oldest first: attempt, ts, step + reported values")


class RankLog(BaseModel):
    attempt: int
    rank: int
    lines: list[str]
    error: str | None = Field(None, description="why a listed log could not be read (storage unreachable)")
    offset: int | None = Field(None, description="bytes of this log read so far: pass back as since=a<attempt>-"
                                                 "r<rank>:<offset> to get only what is written after")


class LogList(BaseModel):
    job_id: str
    logs: list[RankLog]


class Rental(BaseModel):
    """A rented node (or the head) of an elastic cluster: ``store.rentals.RentalRecord`` + cost so far."""
    id: str
    market: str
    node_type: str
    kind: str = Field(..., description="spot | on_demand")
    gpu_type: str
    usd_per_hour: float
    state: str = Field(..., description="requested | running | releasing | released")
    created_at: float
    released_at: float | None = None
    preempt_deadline: float | None = None
    reason: str | None = None
    cost_usd: float = Field(..., description="USD billed so far (from the request to the release)")
    ray_node_id: str | None = Field(None, description="the Ray node it is, once it joined (the node id in the "
                                                      "Ray dashboard, `raycluster health`, a job's ranks)")


class RentalList(BaseModel):
    rentals: list[Rental]


class Cost(BaseModel):
    committed_usd_per_hour: float = Field(..., description="spend rate of every rented node now, starting ones included")
    max_hourly_budget_usd: float | None = Field(None, description="the hard cap (None: none)")
    spend_usd: float
    spend_today_usd: float = Field(..., description="since midnight UTC")
    by_kind_usd: dict[str, float]
    by_node_type_usd: dict[str, float]
    saved_vs_on_demand_usd: float = Field(..., description="spot hours priced on-demand minus what they cost")
    rentals: int
    at: float
    jobs_usd: float = Field(..., description="the part of spend_usd held by jobs (their shares of the nodes)")
    unattributed_usd: float = Field(..., description="the part no job held: idle and starting nodes")
    by_tenant_usd: dict[str, float]
    top_jobs_usd: list[dict[str, Any]] = Field(..., description="the ten costliest jobs")


class Trial(BaseModel):
    trial: int
    attempt: int = Field(..., description="the attempt that ran it (a finished trial is never run again)")
    ok: bool
    config: dict[str, Any] = Field(..., description="its whole config (the job's with the trial's values on top)")
    result: Any = None
    error: str | None = Field(None, description="its traceback when it raised")
    duration_s: float | None = None
    finished_at: float


class TrialList(BaseModel):
    job_id: str
    summary: dict[str, Any] = Field(..., description="trials, succeeded, failed, unfinished, best")
    trials: list[Trial]


class ScheduleRun(BaseModel):
    id: str
    state: str
    submitted_at: float
    finished_at: float | None = None
    cause: str | None = None
    reason: str | None = None


class Schedule(BaseModel):
    id: str
    name: str
    spec: dict[str, Any] = Field(..., description="the spec each run is submitted with")
    cron: str = Field(..., description="UTC; 5 fields, or 6 with seconds last")
    concurrency_policy: str = Field(..., description="Forbid, Allow or Replace")
    tenant: str | None = None
    paused: bool
    created_at: float
    updated_at: float
    next_run_at: float
    last_tick_at: float | None = None
    last_job_id: str | None = None
    runs: int
    skipped: int
    last_error: str | None = None
    deleted: bool = False
    run_jobs: list[ScheduleRun] | None = Field(None, description="its newest runs (GET /schedules/{id} only)")


class ScheduleList(BaseModel):
    schedules: list[Schedule]


class TenantHolding(BaseModel):
    gpus: float
    cpus: float
    memory_mb: float
    jobs: int


class TenantSpend(BaseModel):
    usd_per_hour: float = Field(..., description="its jobs' shares of rented nodes, at their prices now")
    today_usd: float = Field(..., description="what its jobs cost this UTC day")
    month_usd: float = Field(..., description="what its jobs cost this UTC month")


class Tenant(BaseModel):
    tenant: str
    listed: bool = Field(..., description="named in the tenants file (else it has the default's quota)")
    quota: dict[str, Any] = Field(..., description="max_gpus, max_cpus, max_memory_mb, max_jobs, shares, "
                                                   "max_usd_per_hour, budget_usd {day, month}, per_job")
    spend: TenantSpend = Field(..., description="what its jobs cost (elastic clusters; 0 where nothing is rented)")
    budget_waiting: str | None = Field(None, description="why its jobs wait on its budget now (None: within it)")
    holding: TenantHolding = Field(..., description="what its PLACING/RUNNING/RECOVERING jobs hold now")
    queued: int
    usage: float = Field(..., description="decayed usage (GPU-seconds + weighted CPU-seconds)")
    fair_share: float = Field(..., description="2^(-usage part / shares part): 1 used nothing, 0.5 its share")


class TenantList(BaseModel):
    file: str = Field(..., description="the tenants file the Coordinator reads")
    error: str | None = Field(None, description="why the file's last edit was not applied (the previous config holds)")
    tenants: list[Tenant]


class ScalingEvent(BaseModel):
    id: int
    ts: float
    source: str = Field(..., description="budget (the BudgetAutoscaler), provider (a refused rent, a price move) "
                                         "or user")
    action: str = Field(..., description="scale_up, scale_down, shed, blocked, fallback, price, budget_set")
    reason: str
    node_type: str | None = None
    count: int = 0


class EventList(BaseModel):
    events: list[ScalingEvent]


class PreemptNotice(BaseModel):
    node: str
    deadline: float = Field(..., description="epoch seconds: the market stops the node then")
    reason: str


class Package(BaseModel):
    uri: str = Field(..., description="the package's URI, for runtime_env.working_dir / py_modules (gcs://...)")


class Token(BaseModel):
    id: str
    name: str = Field(..., description="who holds it")
    tenant: str | None = Field(None, description="the tenant it acts as (None: an admin of every tenant)")
    role: str = Field(..., description="admin, member or viewer")
    created_at: float
    rotated_at: float | None = None
    revoked_at: float | None = None
    revoked: bool = False
    created_by: str | None = None
    token: str | None = Field(None, description="the token itself: only in the answer that creates or rotates "
                                                "it, never again (only its sha256 is kept)")


class TokenList(BaseModel):
    tokens: list[Token]


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., min_length=1, max_length=64, description="who will hold it (a user or a service)")
    tenant: str | None = Field(None, max_length=64, description="the tenant it acts as (required but for admins)")
    role: str = Field(..., description="admin, member or viewer")


class AuditEntry(BaseModel):
    seq: int
    ts: float
    token_id: str
    who: str = Field(..., description="name@tenant (operator: the cluster's own token)")
    tenant: str | None = None
    role: str
    action: str = Field(..., description="the route called, e.g. DELETE /jobs/{job_id}")
    target: str | None = Field(None, description="what it acted on")
    status: int


class AuditList(BaseModel):
    entries: list[AuditEntry]
