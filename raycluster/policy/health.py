"""Node health verdicts: healthy / degraded / unhealthy, a score and the reasons. Pure, no Ray.

Owns: what a HealthMonitor sample is (``NodeSample``, ``GpuSample``), the thresholds
(``HealthThresholds``, defaults from constants) and ``verdict(HealthContext, now) -> HealthVerdict``.

Rules (documented in the README, "Which signal is judged where"):
* **A node's own hard faults → unhealthy at once**: Ray reports the node dead, or its ranks died
  with it (``node_died``: Ray's NodeDiedError reaches the Coordinator before Ray's node table says
  so); no heartbeat for ``heartbeat_timeout_s`` (1.5 intervals) plus twice the lateness its
  heartbeats (or, on a shared host, its host's) showed lately (``heartbeat_lag_s``, at most
  ``heartbeat_lag_cap_s`` more: a host so busy that heartbeats come seconds late is slow, not
  stuck; a monitor that goes silent on a host whose heartbeats came on time is judged at the
  timeout); in the newest sample an XID error, an uncorrected ECC error, a failed row remap.
* **A node's own soft checks** (each sample either passes all or is a *failed check*): a GPU hotter
  than ``gpu_temp_c_max``, a GPU throttled for heat or power brake, NVML failing.
  ``failure_threshold`` (the seeds' 3) consecutive failed checks → unhealthy; fewer → degraded; a
  passing sample resets the count.
* **Host signals** — memory above ``mem_pct_max``, disk free below ``disk_low_pct`` (full below
  ``disk_full_pct``), CPU load per core above ``load_per_cpu_max`` — belong to the machine, which
  several Ray nodes may share (``raycluster up --local`` and the local market run every node on one
  host). On a host of several nodes they are judged once per host (``host_reasons``) and never move
  work off one of its nodes: another node of the same host would not be better off. On a node alone
  on its host, memory and disk are its own failed checks (a full disk a hard fault). **Load is
  never a failure**: a training machine is busy by design; a stuck node is caught by its heartbeats.
* **Score** (the seed grid CLI's: lower is better, used to pick the best node):
  ``cpu_pct * cpu_weight + max GPU memory % * gpu_weight`` (weights 1 and 3: 0–400).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class HealthState(str, Enum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class GpuSample:
    index: int
    util_pct: float = 0.0
    mem_used_mb: float = 0.0
    mem_total_mb: float = 0.0
    temp_c: float = 0.0
    ecc_uncorrected: int = 0
    remap_failed: bool = False
    throttle: tuple[str, ...] = ()  # clock-throttle reasons (hw_slowdown, sw_thermal, power_brake, ...)
    xids: tuple[int, ...] = ()  # XID errors seen since the last sample

    @property
    def mem_pct(self) -> float:
        return 100.0 * self.mem_used_mb / self.mem_total_mb if self.mem_total_mb else 0.0


@dataclass(frozen=True)
class NodeSample:
    node_id: str
    at: float
    cpu_pct: float = 0.0
    load1: float = 0.0
    cpus: int = 1
    mem_pct: float = 0.0
    disk_free_pct: float = 100.0
    disk_free_gb: float = 0.0
    gpus: tuple[GpuSample, ...] = ()
    nvml_error: str | None = None  # NVML present but failing (no NVML / no GPU is not an error)


@dataclass(frozen=True)
class HealthThresholds:
    heartbeat_timeout_s: float = 7.5
    heartbeat_lag_cap_s: float = 10.0  # the most a recent lateness adds to the timeout
    failure_threshold: int = 3
    mem_pct_max: float = 95.0
    load_per_cpu_max: float = 4.0
    gpu_temp_c_max: float = 90.0
    disk_low_pct: float = 5.0
    disk_full_pct: float = 1.0
    cpu_weight: float = 1.0
    gpu_weight: float = 3.0


@dataclass(frozen=True)
class HealthContext:
    node_id: str
    ray_alive: bool
    last_heartbeat_at: float | None  # None: never heard from (its monitor may be starting)
    started_at: float  # when we started watching it (a node gets a heartbeat timeout's grace)
    sample: NodeSample | None  # the newest
    failures_before: int = 0  # consecutive failed checks up to the previous sample
    thresholds: HealthThresholds = field(default_factory=HealthThresholds)
    host_shared: bool = False  # other alive nodes run on the same host: its signals are the host's
    node_died: bool = False  # its ranks died with it (NodeDiedError) and no heartbeat came since
    heartbeat_lag_s: float = 0.0  # how late its (its host's) heartbeats came lately, beyond the interval


@dataclass(frozen=True)
class HealthVerdict:
    node_id: str
    state: HealthState
    score: float
    reasons: tuple[str, ...]
    failures: int  # consecutive failed checks, this sample included
    hard: bool = False  # unhealthy by a hard fault (not by failed checks)
    host_reasons: tuple[str, ...] = ()  # what is wrong with its host (shown; moves nothing when shared)


_BAD_THROTTLE = ("hw_thermal_slowdown", "sw_thermal_slowdown", "hw_power_brake_slowdown")


def score(sample: NodeSample | None, th: HealthThresholds) -> float:
    if sample is None:
        return 0.0
    gpu_mem = max((g.mem_pct for g in sample.gpus), default=0.0)
    return round(sample.cpu_pct * th.cpu_weight + gpu_mem * th.gpu_weight, 2)


def heartbeat_timeout_s(th: HealthThresholds, lag_s: float) -> float:
    """How long a node may be silent: the timeout plus twice its (host's) recent lateness, capped."""
    return round(th.heartbeat_timeout_s + min(2.0 * max(0.0, lag_s), th.heartbeat_lag_cap_s), 1)


def hard_faults(ctx: HealthContext, now: float) -> list[str]:
    th, s = ctx.thresholds, ctx.sample
    out = []
    if not ctx.ray_alive:
        out.append("Ray reports the node dead")
    elif ctx.node_died:
        out.append("its ranks died with it (NodeDiedError)")
    since = ctx.last_heartbeat_at if ctx.last_heartbeat_at is not None else ctx.started_at
    timeout = heartbeat_timeout_s(th, ctx.heartbeat_lag_s)
    if now - since > timeout:
        late = (f", its heartbeats {ctx.heartbeat_lag_s:.1f} s late lately"
                if timeout > th.heartbeat_timeout_s else "")
        out.append(f"no heartbeat for {now - since:.0f} s (timeout {timeout:g} s{late})")
    if s is not None:
        for g in s.gpus:
            if g.xids:
                out.append(f"GPU {g.index}: XID error {', '.join(map(str, g.xids))}")
            if g.ecc_uncorrected:
                out.append(f"GPU {g.index}: {g.ecc_uncorrected} uncorrected ECC error(s)")
            if g.remap_failed:
                out.append(f"GPU {g.index}: row remapping failed")
        if not ctx.host_shared and s.disk_free_pct < th.disk_full_pct:
            out.append(f"disk full: {s.disk_free_pct:.1f}% free")
    return out


def host_signals(s: NodeSample, th: HealthThresholds) -> list[str]:
    """What the sample says about the machine the node runs on (memory, disk, load)."""
    out = []
    if s.mem_pct > th.mem_pct_max:
        out.append(f"memory {s.mem_pct:.0f}% > {th.mem_pct_max:g}%")
    if s.disk_free_pct < th.disk_full_pct:
        out.append(f"disk full: {s.disk_free_pct:.1f}% free")
    elif s.disk_free_pct < th.disk_low_pct:
        out.append(f"disk {s.disk_free_pct:.1f}% free < {th.disk_low_pct:g}%")
    if s.cpus and s.load1 / s.cpus > th.load_per_cpu_max:
        out.append(f"busy: load {s.load1:.1f} on {s.cpus} CPUs (> {th.load_per_cpu_max:g} per CPU; not a failure)")
    return out


def failed_checks(s: NodeSample, th: HealthThresholds, host_shared: bool = False) -> list[str]:
    """The node's own failed checks in this sample (memory and disk too when it is alone on its host)."""
    out = []
    if not host_shared:
        if s.mem_pct > th.mem_pct_max:
            out.append(f"memory {s.mem_pct:.0f}% > {th.mem_pct_max:g}%")
        if th.disk_full_pct <= s.disk_free_pct < th.disk_low_pct:
            out.append(f"disk {s.disk_free_pct:.1f}% free < {th.disk_low_pct:g}%")
    if s.nvml_error:
        out.append(f"NVML: {s.nvml_error}")
    for g in s.gpus:
        if g.temp_c > th.gpu_temp_c_max:
            out.append(f"GPU {g.index}: {g.temp_c:.0f} C > {th.gpu_temp_c_max:g} C")
        bad = [r for r in g.throttle if r in _BAD_THROTTLE]
        if bad:
            out.append(f"GPU {g.index}: throttled ({', '.join(bad)})")
    return out


def verdict(ctx: HealthContext, now: float) -> HealthVerdict:
    th = ctx.thresholds
    hard = hard_faults(ctx, now)
    soft = failed_checks(ctx.sample, th, ctx.host_shared) if ctx.sample is not None else []
    host = tuple(host_signals(ctx.sample, th)) if ctx.sample is not None and ctx.host_shared else ()
    failures = ctx.failures_before + 1 if soft else 0
    sc = score(ctx.sample, th)
    if hard:
        return HealthVerdict(ctx.node_id, HealthState.UNHEALTHY, sc, tuple(hard + soft), failures, hard=True,
                             host_reasons=host)
    if failures >= th.failure_threshold:
        return HealthVerdict(ctx.node_id, HealthState.UNHEALTHY, sc,
                             (f"{failures} consecutive failed checks", *soft), failures, host_reasons=host)
    if failures:
        return HealthVerdict(ctx.node_id, HealthState.DEGRADED, sc,
                             (f"{failures}/{th.failure_threshold} failed checks", *soft), failures, host_reasons=host)
    return HealthVerdict(ctx.node_id, HealthState.HEALTHY, sc, (), 0, host_reasons=host)
