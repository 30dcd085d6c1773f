"""The what-if simulator's vocabulary: a trace's job (``TraceJob``) and the market it is replayed
against (``MarketModel``). Pure, no Ray; ``policy.simulate`` replays, ``policy.sim_bounds`` bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

from raycluster.policy.budget import NodeType


@dataclass(frozen=True)
class TraceJob:
    job_id: str
    arrival_s: float
    duration_s: float
    workers: int = 1
    gpus: float = 1.0
    cpus: float = 1.0
    priority: int = 50
    spot: str = "auto"
    strategy: str = "PACK"
    family: str = ""
    min_workers: int | None = None  # an elastic gang: any size from this to ``workers``
    tenant: str | None = None  # whose it is: its quotas and budgets (``simulate(tenants=...)``)
    max_runtime_s: float | None = None  # its spec's limit: what a move for cost expects it still runs



@dataclass(frozen=True)
class MarketModel:
    types: tuple[NodeType, ...]  # available = the market's capacity of that type
    launch_delay_s: float = 60.0
    preemption_rate_per_hour: float = 0.0
    checkpoint_every_s: float = 300.0
    move_overhead_s: float = 60.0  # a job moved for cost: its checkpoint and restart, as work added
