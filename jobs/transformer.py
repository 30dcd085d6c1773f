"""Small transformer-encoder text classifier on synthetic token sequences (``jobs.transformer:train``).

Owns: the synthetic text data, the ``TinyTransformer`` model and the job's config keys. Each class
owns a few "keyword" tokens; a sequence of class ``c`` is background noise plus ``num_keywords``
keywords of class ``c`` and one distractor keyword of another class, at random positions, so the
label depends on token content (which class's keywords dominate). Dropout is 0 and the
nested-tensor fast path is disabled, so training is deterministic. The loop lives in
:mod:`jobs.common`. Reports ``loss`` and ``accuracy``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from jobs.common import (COMMON_DEFAULTS, Task, classification_accuracy, make_generator, run_training,
                         synthetic_task)

JOB = "transformer"

DEFAULTS: dict[str, Any] = {
    **COMMON_DEFAULTS,
    "steps": 150,
    "batch_size": 32,
    "lr": 2e-3,
    "vocab_size": 64,
    "seq_len": 24,
    "num_classes": 4,
    "keywords_per_class": 4,  # distinct keyword tokens owned by each class
    "num_keywords": 3,  # keywords of the true class placed in each sequence
    "d_model": 32,
    "nhead": 4,
    "dim_feedforward": 64,
    "num_layers": 2,
}

MINIMUMS = {
    "vocab_size": 4,
    "seq_len": 2,
    "num_classes": 2,
    "keywords_per_class": 1,
    "num_keywords": 2,
    "d_model": 1,
    "nhead": 1,
    "dim_feedforward": 1,
    "num_layers": 1,
}


def _validate(cfg: dict[str, Any]) -> None:
    if cfg["d_model"] % cfg["nhead"]:
        raise ValueError(f"{JOB}: config key 'd_model' ({cfg['d_model']}) must be divisible by nhead ({cfg['nhead']})")
    if cfg["num_classes"] * cfg["keywords_per_class"] >= cfg["vocab_size"]:
        raise ValueError(
            f"{JOB}: config key 'vocab_size' ({cfg['vocab_size']}) must exceed "
            f"num_classes * keywords_per_class ({cfg['num_classes'] * cfg['keywords_per_class']})"
        )
    if cfg["num_keywords"] + 1 > cfg["seq_len"]:
        raise ValueError(f"{JOB}: config key 'seq_len' ({cfg['seq_len']}) must be > num_keywords")


def make_sequences(
    n: int, split: str, *, seed: int, vocab_size: int, seq_len: int, num_classes: int, keywords_per_class: int,
    num_keywords: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``(n, seq_len)`` int64 and labels ``(n,)`` int64. Tokens ``[0, C*K)`` are keywords."""
    gen = make_generator(JOB, split, seed)
    n_kw = num_classes * keywords_per_class
    tokens = torch.randint(n_kw, vocab_size, (n, seq_len), generator=gen)  # background tokens
    labels = torch.randint(num_classes, (n,), generator=gen)
    distractor = (labels + torch.randint(1, num_classes, (n,), generator=gen)) % num_classes
    # Random distinct positions: the first num_keywords + 1 of a random permutation per row.
    positions = torch.rand(n, seq_len, generator=gen).argsort(dim=1)[:, : num_keywords + 1]
    owners = torch.cat([labels[:, None].expand(n, num_keywords), distractor[:, None]], dim=1)
    which = torch.randint(keywords_per_class, (n, num_keywords + 1), generator=gen)
    tokens.scatter_(1, positions, owners * keywords_per_class + which)
    return tokens, labels


class TinyTransformer(nn.Module):
    def __init__(
        self, vocab_size: int, seq_len: int, num_classes: int, d_model: int, nhead: int, dim_feedforward: int,
        num_layers: int,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Parameter(0.02 * torch.randn(1, seq_len, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(tokens) + self.pos[:, : tokens.shape[1]])
        return self.head(self.norm(h.mean(dim=1)))


def _build(cfg: dict[str, Any]) -> Task:
    return synthetic_task(
        cfg, make_sequences, ("seed", "vocab_size", "seq_len", "num_classes", "keywords_per_class", "num_keywords"),
        lambda: TinyTransformer(cfg["vocab_size"], cfg["seq_len"], cfg["num_classes"], cfg["d_model"], cfg["nhead"],
                                cfg["dim_feedforward"], cfg["num_layers"]),
        loss_fn=F.cross_entropy, metric_fn=classification_accuracy, metric_name="accuracy")


def train(ctx: Any) -> dict[str, Any]:
    """Train the transformer; returns final_loss, final_accuracy, steps, weights_sha256, samples_per_s."""
    return run_training(ctx, job=JOB, defaults=DEFAULTS, build=_build, minimums=MINIMUMS, validate=_validate)
