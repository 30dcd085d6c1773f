"""LSTM time-series forecaster on generated sine series (entrypoint ``jobs.lstm:train``).

Owns: the synthetic series (per sample: a sum of two sines with random amplitude, frequency and
phase, plus Gaussian noise; generated from the seed with private generators), the ``Forecaster``
model and the job's config keys. The model reads ``input_len`` values and predicts the next
``horizon``. The loop lives in :mod:`jobs.common`. Reports ``loss`` (MSE) and ``mae``; the result
carries ``final_loss`` (MSE) and ``final_mae`` on a fixed held-out set.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from jobs.common import COMMON_DEFAULTS, Task, make_generator, run_training, synthetic_task

JOB = "lstm"

DEFAULTS: dict[str, Any] = {
    **COMMON_DEFAULTS,
    "steps": 150,
    "batch_size": 32,
    "lr": 1e-2,
    "input_len": 32,
    "horizon": 4,
    "hidden_size": 32,
    "num_layers": 1,
    "noise": 0.05,
}

MINIMUMS = {"input_len": 2, "horizon": 1, "hidden_size": 1, "num_layers": 1, "noise": 0.0}


def make_series(
    n: int, split: str, *, seed: int, input_len: int, horizon: int, noise: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``(n, input_len, 1)`` and targets ``(n, horizon)``, float32."""
    gen = make_generator(JOB, split, seed)
    t = torch.arange(input_len + horizon, dtype=torch.float32)[None, :]
    amp = 0.5 + torch.rand(n, 2, generator=gen)
    amp[:, 1] *= 0.3
    freq = 0.02 + 0.08 * torch.rand(n, 2, generator=gen)  # cycles per step
    freq[:, 1] *= 2.0
    phase = 2 * math.pi * torch.rand(n, 2, generator=gen)
    series = (amp[:, :1] * torch.sin(2 * math.pi * freq[:, :1] * t + phase[:, :1])
              + amp[:, 1:] * torch.sin(2 * math.pi * freq[:, 1:] * t + phase[:, 1:]))
    series = series + noise * torch.randn(series.shape, generator=gen)
    return series[:, :input_len, None].contiguous(), series[:, input_len:].contiguous()


class Forecaster(nn.Module):
    def __init__(self, hidden_size: int, num_layers: int, horizon: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(1, hidden_size, num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, horizon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def mean_abs_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).abs().to(torch.float64).mean()


def _build(cfg: dict[str, Any]) -> Task:
    return synthetic_task(cfg, make_series, ("seed", "input_len", "horizon", "noise"),
                          lambda: Forecaster(cfg["hidden_size"], cfg["num_layers"], cfg["horizon"]),
                          loss_fn=F.mse_loss, metric_fn=mean_abs_error, metric_name="mae")


def train(ctx: Any) -> dict[str, Any]:
    """Train the forecaster; returns final_loss (MSE), final_mae, steps, weights_sha256, samples_per_s."""
    return run_training(ctx, job=JOB, defaults=DEFAULTS, build=_build, minimums=MINIMUMS)
