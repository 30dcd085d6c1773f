"""Job traces for the what-if simulator: reading them (JSONL or CSV, one job per line/row) with
errors that name the line and the field, and the shipped day-shaped trace's generator. Pure.

A job: ``arrival_s`` (seconds from the trace's start), ``duration_s`` (work once placed),
``workers`` (gang size), ``gpus``/``cpus`` per worker, ``priority``, ``spot`` (auto|never|only),
``strategy`` (PACK|SPREAD|STRICT_SPREAD|STRICT_PACK), ``family`` (free text), ``job_id``;
``min_workers`` (optional) makes it an elastic gang of ``min_workers``..``workers``; ``tenant``
(optional) whose quotas and budgets it counts against; ``max_runtime_s`` (optional) its spec's limit,
what a move for cost expects it still runs (else as long again as it has run).
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
from pathlib import Path

from raycluster.policy.simulate import TraceJob

FIELDS = ("job_id", "arrival_s", "duration_s", "workers", "gpus", "cpus", "priority", "spot", "strategy", "family",
          "min_workers", "tenant", "max_runtime_s")


class TraceError(ValueError):
    """A trace line is invalid; ``where`` names the line and field. Retrying will not help."""

    def __init__(self, message: str, where: str):
        super().__init__(f"{where}: {message}")
        self.where = where


def _job(row: dict, where: str, index: int) -> TraceJob:
    unknown = set(row) - set(FIELDS)
    if unknown:
        raise TraceError(f"unknown field(s) {sorted(unknown)} (known: {', '.join(FIELDS)})", where)
    out = {"job_id": str(row.get("job_id") or f"t{index:06d}")}
    for key, cast, lo in (("arrival_s", float, 0.0), ("duration_s", float, 1e-9), ("workers", int, 1),
                          ("gpus", float, 0.0), ("cpus", float, 0.0), ("priority", int, -10**9),
                          ("min_workers", int, 1), ("max_runtime_s", float, 1e-9)):
        if row.get(key) in (None, ""):
            if key in ("arrival_s", "duration_s"):
                raise TraceError("is required", f"{where}.{key}")
            continue
        try:
            v = cast(row[key])
        except (TypeError, ValueError):
            raise TraceError(f"must be a number, not {row[key]!r}", f"{where}.{key}") from None
        if isinstance(v, float) and not math.isfinite(v) or v < lo:
            raise TraceError(f"must be >= {lo}", f"{where}.{key}")
        out[key] = v
    if row.get("spot") not in (None, ""):
        if row["spot"] not in ("auto", "never", "only"):
            raise TraceError("must be auto, never or only", f"{where}.spot")
        out["spot"] = row["spot"]
    if row.get("strategy") not in (None, ""):
        if row["strategy"] not in ("PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK"):
            raise TraceError("must be PACK, SPREAD, STRICT_SPREAD or STRICT_PACK", f"{where}.strategy")
        out["strategy"] = row["strategy"]
    if row.get("family"):
        out["family"] = str(row["family"])
    if row.get("tenant"):
        out["tenant"] = str(row["tenant"])
    if out.get("min_workers", 0) > out.get("workers", 1):
        raise TraceError(f"must be <= workers ({out.get('workers', 1)})", f"{where}.min_workers")
    if out.get("min_workers") == out.get("workers", 1):
        out.pop("min_workers")  # (the plain gang)
    return TraceJob(**out)


def load(path: str | Path) -> list[TraceJob]:
    path = Path(path)
    text = path.read_text()
    jobs = []
    if path.suffix.lower() == ".csv":
        for i, row in enumerate(csv.DictReader(io.StringIO(text))):
            jobs.append(_job({k: v for k, v in row.items() if k is not None}, f"{path.name}:{i + 2}", i))
    else:
        for i, line in enumerate(text.splitlines()):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TraceError(f"not JSON ({exc.msg})", f"{path.name}:{i + 1}") from None
            if not isinstance(row, dict):
                raise TraceError("must be a JSON object", f"{path.name}:{i + 1}")
            jobs.append(_job(row, f"{path.name}:{i + 1}", i))
    if not jobs:
        raise TraceError("no jobs", path.name)
    return jobs


# the seed's three model families: (share of jobs, workers, GPUs per worker, duration range in s)
FAMILIES = {"cnn": (0.5, (1, 2), 1.0, (600, 3600)), "transformer": (0.3, (2, 4, 8), 1.0, (1800, 7200)),
            "lstm": (0.2, (1,), 0.5, (300, 1800))}


def day_trace(jobs: int = 400, peak_workers: int = 32, seed: int = 7, days: int = 1) -> list[TraceJob]:
    """A day of jobs shaped like the seed's: arrivals follow a diurnal curve (quiet at night, a peak
    in the afternoon), three model families, demand peaking near ``peak_workers`` GPUs; ``days``
    such days in a row (at most ``jobs`` jobs)."""
    rng = random.Random(seed)
    out = []
    names = list(FAMILIES)
    weights = [FAMILIES[n][0] for n in names]
    t = 0.0
    i = 0
    mean_gpu_h = sum(FAMILIES[n][0] * (sum(FAMILIES[n][1]) / len(FAMILIES[n][1])) * FAMILIES[n][2]
                     * (sum(FAMILIES[n][3]) / 2 / 3600) for n in names)
    # the arrival rate at the afternoon peak that keeps about peak_workers GPUs busy
    peak_rate_per_s = peak_workers / mean_gpu_h / 3600.0
    end_s = 86400.0 * days
    while i < jobs and t < end_s:
        day = (t % 86400.0) / 86400.0
        rate = peak_rate_per_s * (0.15 + 0.85 * max(0.0, math.sin(math.pi * (day - 0.2) / 0.8)) ** 2)
        t += rng.expovariate(max(rate, 1e-6))
        if t >= end_s:
            break
        fam = rng.choices(names, weights)[0]
        _share, workers, gpus, (lo, hi) = FAMILIES[fam]
        w = rng.choice(workers)
        out.append(TraceJob(f"{fam}-{i:04d}", round(t, 1), round(rng.uniform(lo, hi), 1), w, gpus, 1.0,
                            rng.choice((30, 50, 50, 80)), "never" if rng.random() < 0.1 else "auto",
                            "SPREAD" if w > 1 else "PACK", fam))
        i += 1
    return out


def dump_jsonl(jobs: list[TraceJob]) -> str:
    return "".join(json.dumps({k: getattr(j, k) for k in FIELDS}) + "\n" for j in jobs)
