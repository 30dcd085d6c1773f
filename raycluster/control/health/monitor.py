"""The HealthMonitor actor: one per node, pinned to it (node affinity, not soft), 0 CPUs.

Owns: sampling the node — CPU %, load, memory, free disk where checkpoints and logs live (psutil) and
every GPU through NVML (``nvidia-ml-py``'s ``pynvml``: utilisation, memory, temperature, uncorrected
ECC errors, failed row remaps, clock-throttle reasons, XID errors by NVML's event wait) — every
``HEALTH_INTERVAL_S``, and heartbeating each sample to the Coordinator (fire and forget: a slow
Coordinator never stalls sampling). No NVML or no GPU means no GPUs, not an error. A test hook
(``inject``) adds a fault to the samples, as NVML would report it; ``pause`` stops the heartbeats.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import ray

from raycluster import constants as C

log = logging.getLogger("raycluster.health")

_THROTTLE_BITS = {  # nvmlClocksThrottleReason* bits -> names
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
    0x10: "sync_boost", 0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown", 0x80: "hw_power_brake_slowdown",
}


class Nvml:
    """NVML, if present: GPU readings, XIDs from an event set (waited on without blocking)."""

    def __init__(self):
        self.ok, self.error, self._handles, self._events = False, None, [], None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nv = pynvml
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self.ok = True
        except Exception as exc:  # no driver / no library / no GPU: no GPUs
            log.info("NVML not available (%s): no GPUs reported", type(exc).__name__)
            return
        try:
            self._events = self._nv.nvmlEventSetCreate()
            for h in self._handles:
                self._nv.nvmlDeviceRegisterEvents(h, self._nv.nvmlEventTypeXidCriticalError, self._events)
        except Exception:
            self._events = None  # XID events not supported here (e.g. some virtualised GPUs)

    def _xids(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        if self._events is None:
            return out
        while True:
            try:
                ev = self._nv.nvmlEventSetWait_v2(self._events, 0)
            except Exception:  # NVML_ERROR_TIMEOUT: none waiting
                return out
            idx = next((i for i, h in enumerate(self._handles) if h == ev.device), 0)
            out.setdefault(idx, []).append(int(ev.eventData))

    def gpus(self) -> list[dict[str, Any]]:
        if not self.ok:
            return []
        nv, xids, out = self._nv, self._xids(), []
        for i, h in enumerate(self._handles):
            g: dict[str, Any] = {"index": i, "xids": xids.get(i, [])}
            for key, fn in (("util_pct", lambda: nv.nvmlDeviceGetUtilizationRates(h).gpu),
                            ("temp_c", lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
                            ("ecc_uncorrected", lambda: nv.nvmlDeviceGetTotalEccErrors(
                                h, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC)),
                            ("remap_failed", lambda: bool(nv.nvmlDeviceGetRemappedRows(h)[3]))):
                try:
                    g[key] = fn()
                except Exception:  # not supported on this GPU
                    pass
            try:
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                g["mem_used_mb"], g["mem_total_mb"] = mem.used / 2**20, mem.total / 2**20
            except Exception:
                pass
            try:
                bits = nv.nvmlDeviceGetCurrentClocksThrottleReasons(h)
                g["throttle"] = [name for bit, name in _THROTTLE_BITS.items() if bits & bit]
            except Exception:
                pass
            out.append(g)
        return out


def sample_node(node_id: str, disk_path: str, nvml: Nvml | None) -> dict[str, Any]:
    """One reading of this node (a ``policy.health.NodeSample`` as a dict)."""
    import psutil

    try:
        disk = psutil.disk_usage(disk_path)
        disk_free_pct, disk_free_gb = 100.0 - disk.percent, disk.free / 2**30
    except OSError:
        disk_free_pct, disk_free_gb = 100.0, 0.0
    out = {"node_id": node_id, "at": time.time(), "cpu_pct": psutil.cpu_percent(interval=None),
           "load1": os.getloadavg()[0], "cpus": psutil.cpu_count() or 1, "mem_pct": psutil.virtual_memory().percent,
           "disk_free_pct": disk_free_pct, "disk_free_gb": disk_free_gb, "gpus": []}
    if nvml is not None:
        try:
            out["gpus"] = nvml.gpus()
        except Exception as exc:  # NVML present but failing: a failed check, not a crash
            out["nvml_error"] = f"{type(exc).__name__}: {exc}"
    return out


@ray.remote(num_cpus=0, max_restarts=0)
class HealthMonitor:
    def __init__(self, node_id: str, coordinator, disk_path: str, interval_s: float, settings: dict | None = None):
        from raycluster.settings import of

        of(settings).install()  # the Coordinator's settings, not this node's environment
        self.node_id, self.coord, self.disk_path, self.interval_s = node_id, coordinator, disk_path, interval_s
        self.nvml = Nvml()
        self.fault: dict[str, Any] | None = None
        self.paused = False
        self.samples = 0
        self._stop = threading.Event()
        threading.Thread(target=self._loop, name="health", daemon=True).start()

    def _loop(self) -> None:
        import psutil

        psutil.cpu_percent(interval=None)  # the first reading of cpu_percent is meaningless
        while not self._stop.wait(self.interval_s if self.samples else 0.2):
            try:
                s = self.sample()
                if not self.paused:
                    self.coord.heartbeat.remote(s)
            except Exception:  # never let the monitor die of one bad reading
                log.exception("health sample failed")

    def sample(self) -> dict[str, Any]:
        s = sample_node(self.node_id, self.disk_path, self.nvml)
        self.samples += 1
        fault = self.fault
        if fault:  # the test hook: a fault as NVML / psutil would report it
            gpus = s["gpus"] or [{"index": 0, "util_pct": 0.0, "mem_used_mb": 0.0, "mem_total_mb": 1.0}]
            if "xid" in fault:
                gpus[0] = {**gpus[0], "xids": [int(fault["xid"])]}
            if "ecc_uncorrected" in fault:
                gpus[0] = {**gpus[0], "ecc_uncorrected": int(fault["ecc_uncorrected"])}
            s["gpus"] = gpus
            for key in ("mem_pct", "disk_free_pct", "load1"):
                if key in fault:
                    s[key] = float(fault[key])
        return s

    def inject(self, fault: dict[str, Any] | None) -> None:
        """(Tests, drills.) Report this fault in every sample from now on (None: stop)."""
        self.fault = dict(fault) if fault else None

    def pause(self, paused: bool = True) -> None:
        """(Tests, drills.) Stop (or resume) heartbeating, as a hung monitor would."""
        self.paused = bool(paused)

    def ping(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "samples": self.samples, "nvml": self.nvml.ok, "pid": os.getpid()}

    def stop(self) -> None:
        self._stop.set()


MONITOR_PREFIX = "health-"


def monitor_name(node_id: str) -> str:
    return f"{MONITOR_PREFIX}{node_id[:16]}"


def ensure_monitor(node_id: str, coordinator, disk_path: str, settings: dict | None = None):
    """The node's HealthMonitor (created if missing): pinned to the node, gone with it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return HealthMonitor.options(
        name=monitor_name(node_id), namespace=C.NAMESPACE, lifetime="detached", get_if_exists=True,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
    ).remote(node_id, coordinator, disk_path, C.HEALTH_INTERVAL_S, settings)
