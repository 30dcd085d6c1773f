"""Node health verdicts (policy/health.py): a parametrized table, no cluster."""

from __future__ import annotations

import pytest

from raycluster.policy.health import (GpuSample, HealthContext, HealthState, HealthThresholds, NodeSample, score,
                                      verdict)

TH = HealthThresholds(heartbeat_timeout_s=11.0, failure_threshold=3)
NOW = 1000.0


def sample(**kw):
    gpus = kw.pop("gpus", ())
    return NodeSample("n1", NOW - 1, **{"cpu_pct": 10.0, "load1": 0.5, "cpus": 4, "mem_pct": 40.0,
                                       "disk_free_pct": 50.0, **kw}, gpus=tuple(gpus))


def gpu(**kw):
    return GpuSample(0, **{"util_pct": 50.0, "mem_used_mb": 4000, "mem_total_mb": 16000, "temp_c": 60.0, **kw})


@pytest.mark.parametrize("name,ctx,state,hard,fragment", [
    ("healthy", dict(sample=sample(gpus=[gpu()])), HealthState.HEALTHY, False, None),
    ("no GPUs is healthy", dict(sample=sample()), HealthState.HEALTHY, False, None),
    ("Ray says dead", dict(ray_alive=False, sample=sample()), HealthState.UNHEALTHY, True, "Ray reports the node dead"),
    ("heartbeat missing", dict(last_heartbeat_at=NOW - 12), HealthState.UNHEALTHY, True, "no heartbeat for 12 s"),
    ("heartbeat just in time", dict(last_heartbeat_at=NOW - 10), HealthState.HEALTHY, False, None),
    # heartbeats that came late lately (a busy host) lengthen the timeout by twice that, capped
    ("late lately: slow, not stuck", dict(last_heartbeat_at=NOW - 12, heartbeat_lag_s=1.0), HealthState.HEALTHY,
     False, None),
    ("late lately, silent past it", dict(last_heartbeat_at=NOW - 14, heartbeat_lag_s=1.0), HealthState.UNHEALTHY,
     True, "no heartbeat for 14 s (timeout 13 s, its heartbeats 1.0 s late lately)"),
    ("very late lately: capped", dict(last_heartbeat_at=NOW - 22, heartbeat_lag_s=30.0), HealthState.UNHEALTHY,
     True, "timeout 21 s"),
    ("never heard from, within grace", dict(last_heartbeat_at=None, started_at=NOW - 5, sample=None),
     HealthState.HEALTHY, False, None),
    ("never heard from, past grace", dict(last_heartbeat_at=None, started_at=NOW - 20, sample=None),
     HealthState.UNHEALTHY, True, "no heartbeat"),
    ("XID", dict(sample=sample(gpus=[gpu(xids=(79,))])), HealthState.UNHEALTHY, True, "XID error 79"),
    ("uncorrected ECC", dict(sample=sample(gpus=[gpu(ecc_uncorrected=2)])), HealthState.UNHEALTHY, True,
     "2 uncorrected ECC"),
    ("row remap failed", dict(sample=sample(gpus=[gpu(remap_failed=True)])), HealthState.UNHEALTHY, True,
     "row remapping failed"),
    ("disk full", dict(sample=sample(disk_free_pct=0.5)), HealthState.UNHEALTHY, True, "disk full"),
    ("one failed check: degraded", dict(sample=sample(mem_pct=97)), HealthState.DEGRADED, False, "memory 97%"),
    ("two failed checks: degraded", dict(sample=sample(mem_pct=99), failures_before=1), HealthState.DEGRADED, False,
     "2/3 failed checks"),
    # issue 20: a busy machine is not a sick one — load never fails a check, on its own host or a shared one
    ("load 8.9 on 2 CPUs is busy, not unhealthy", dict(sample=sample(load1=8.9, cpus=2), failures_before=2),
     HealthState.HEALTHY, False, None),
    ("load on a shared host: shown as the host's", dict(sample=sample(load1=40, cpus=2), failures_before=2,
                                                       host_shared=True), HealthState.HEALTHY, False, None),
    # the host's memory and disk, on a host of several nodes: the host's, never this node's verdict
    ("shared host, memory full", dict(sample=sample(mem_pct=99), failures_before=2, host_shared=True),
     HealthState.HEALTHY, False, None),
    ("shared host, disk full", dict(sample=sample(disk_free_pct=0.5), host_shared=True), HealthState.HEALTHY, False,
     None),
    ("shared host, its own GPU still counts", dict(sample=sample(gpus=[gpu(xids=(79,))]), host_shared=True),
     HealthState.UNHEALTHY, True, "XID error 79"),
    ("its ranks died with it", dict(node_died=True, sample=sample()), HealthState.UNHEALTHY, True,
     "NodeDiedError"),
    ("third failed check: unhealthy", dict(sample=sample(gpus=[gpu(temp_c=95)]), failures_before=2),
     HealthState.UNHEALTHY, False, "3 consecutive failed checks"),
    ("a passing sample resets", dict(sample=sample(), failures_before=2), HealthState.HEALTHY, False, None),
    ("thermal throttle", dict(sample=sample(gpus=[gpu(throttle=("sw_thermal_slowdown",))])), HealthState.DEGRADED,
     False, "throttled"),
    ("idle throttle is fine", dict(sample=sample(gpus=[gpu(throttle=("gpu_idle",))])), HealthState.HEALTHY, False,
     None),
    ("disk low", dict(sample=sample(disk_free_pct=3)), HealthState.DEGRADED, False, "disk 3.0% free"),
    ("NVML failing", dict(sample=sample(nvml_error="NVML_ERROR_GPU_IS_LOST")), HealthState.DEGRADED, False, "NVML"),
])
def test_verdict_table(name, ctx, state, hard, fragment):
    base = dict(node_id="n1", ray_alive=True, last_heartbeat_at=NOW - 1, started_at=NOW - 100, sample=None,
                thresholds=TH)
    v = verdict(HealthContext(**{**base, **ctx}), NOW)
    assert v.state == state, (name, v)
    assert v.hard == hard, name
    if fragment:
        assert any(fragment in r for r in v.reasons), (name, v.reasons)
    else:
        assert v.reasons == ()


@pytest.mark.parametrize("cpu,gpus,expect", [
    (0, [], 0.0),
    (50, [], 50.0),
    (10, [gpu(mem_used_mb=8000)], 10 + 50 * 3),  # GPU memory counts three times CPU load
    (10, [gpu(mem_used_mb=1600), gpu(mem_used_mb=16000)], 10 + 100 * 3),  # the fullest GPU
])
def test_score_is_the_seed_grid_cli_formula(cpu, gpus, expect):
    assert score(sample(cpu_pct=cpu, gpus=gpus), TH) == pytest.approx(expect)


@pytest.mark.parametrize("kw,host,expect", [
    (dict(load1=8.9, cpus=2), True, ["busy: load 8.9 on 2 CPUs"]),
    (dict(mem_pct=99, disk_free_pct=0.5), True, ["memory 99%", "disk full"]),
    (dict(disk_free_pct=3), True, ["disk 3.0% free"]),
    (dict(), True, []),
    (dict(load1=8.9, cpus=2, mem_pct=99), False, []),  # alone on its host: its own checks, no host line
])
def test_host_signals_are_judged_once_for_the_host_and_shown(kw, host, expect):
    v = verdict(HealthContext("n1", True, NOW - 1, NOW - 100, sample(**kw), 0, TH, host_shared=host), NOW)
    assert len(v.host_reasons) == len(expect)
    for fragment, reason in zip(expect, v.host_reasons):
        assert fragment in reason, v.host_reasons
