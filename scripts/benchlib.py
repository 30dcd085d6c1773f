"""What the benchmark scripts share: stderr progress lines, percentiles, the JSON result file."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(values, q):
    """The ``q``-th percentile (nearest rank) of ``values``; None when there are none."""
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))] if values else None


def write_result(result: dict, out: str | Path) -> None:
    """Write ``result`` as JSON to ``out`` (creating its folder) and print it on stdout."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2)
    out.write_text(text)
    print(text)
