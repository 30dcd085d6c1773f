"""CNN image classifier on a synthetic image dataset (entrypoint ``jobs.cnn:train``).

Owns: the synthetic image data (one smooth random pattern per class, randomly shifted, scaled and
noised; all generated from the seed with private generators), the ``SmallCNN`` model and the job's
config keys. The training loop, checkpointing and reporting live in :mod:`jobs.common`.
Reports ``loss`` and ``accuracy``; the result carries ``final_loss`` and ``final_accuracy``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from jobs.common import (COMMON_DEFAULTS, Task, classification_accuracy, make_generator, run_training,
                         synthetic_task)

JOB = "cnn"

DEFAULTS: dict[str, Any] = {
    **COMMON_DEFAULTS,
    "steps": 150,
    "batch_size": 32,
    "lr": 3e-3,
    "num_classes": 10,
    "channels": 1,  # image channels
    "image_size": 16,  # square images; must be divisible by 4
    "width": 16,  # conv channels of the first layer (the second has 2x)
    "noise": 1.0,  # std of the per-pixel Gaussian noise
    "max_shift": 2,  # patterns are rolled by up to this many pixels
}

MINIMUMS = {"num_classes": 2, "channels": 1, "image_size": 4, "width": 1, "noise": 0.0, "max_shift": 0}


def _validate(cfg: dict[str, Any]) -> None:
    if cfg["image_size"] % 4:
        raise ValueError(f"{JOB}: config key 'image_size' must be divisible by 4, got {cfg['image_size']}")
    if cfg["max_shift"] >= cfg["image_size"]:
        raise ValueError(f"{JOB}: config key 'max_shift' must be < image_size, got {cfg['max_shift']}")


def class_patterns(seed: int, num_classes: int, channels: int, size: int) -> torch.Tensor:
    """One smooth, unit-variance pattern per class: (num_classes, channels, size, size)."""
    gen = make_generator(JOB, "patterns", seed)
    coarse = torch.randn(num_classes, channels, 4, 4, generator=gen)
    fine = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    fine = fine - fine.mean(dim=(1, 2, 3), keepdim=True)
    return fine / fine.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


def make_images(
    n: int, split: str, *, seed: int, num_classes: int, channels: int, image_size: int, noise: float, max_shift: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``(n, channels, size, size)`` float32 and labels ``(n,)`` int64 for ``split``."""
    patterns = class_patterns(seed, num_classes, channels, image_size)
    gen = make_generator(JOB, split, seed)
    labels = torch.randint(num_classes, (n,), generator=gen)
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=gen)
    scale = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=gen)
    images = patterns[labels] * scale + noise * torch.randn(n, channels, image_size, image_size, generator=gen)
    if max_shift:
        for i in range(n):
            images[i] = torch.roll(images[i], shifts=(int(shifts[i, 0]), int(shifts[i, 1])), dims=(1, 2))
    return images.contiguous(), labels


class SmallCNN(nn.Module):
    def __init__(self, channels: int, num_classes: int, width: int, image_size: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(2 * width * (image_size // 4) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def _build(cfg: dict[str, Any]) -> Task:
    return synthetic_task(
        cfg, make_images, ("seed", "num_classes", "channels", "image_size", "noise", "max_shift"),
        lambda: SmallCNN(cfg["channels"], cfg["num_classes"], cfg["width"], cfg["image_size"]),
        loss_fn=F.cross_entropy, metric_fn=classification_accuracy, metric_name="accuracy")


def train(ctx: Any) -> dict[str, Any]:
    """Train the CNN; returns final_loss, final_accuracy, steps, weights_sha256, samples_per_s."""
    return run_training(ctx, job=JOB, defaults=DEFAULTS, build=_build, minimums=MINIMUMS, validate=_validate)
