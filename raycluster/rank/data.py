"""A data position that survives resharding: ``GlobalSampler`` (``ctx.sampler(...)``).

Owns: the order a gang reads its sample ids in — one seeded permutation of ``range(num_samples)``
per epoch, the same on every rank — and the gang's position in it as one global count of samples
consumed (epoch, offset), the same on every rank and independent of the world size. Each step
takes the next *global* batch from that position and gives rank ``r`` of ``W`` its contiguous
share; every rank advances the position by the whole global batch. So a checkpoint saved at
world size 4 and resumed at 3 (an elastic gang, ``num_workers: {min, max}``) continues at the very
next sample: no sample of an epoch is skipped or seen twice. At an unchanged world size the
resume is exact (the same ids on the same ranks).

Keeping the optimisation the same across sizes is the job's choice, named at each step:

* **keep the global batch** — ``next_batch(global_batch=B)``: ranks share B samples (B/W each,
  the first ``B % W`` ranks one more); the learning rate stays as it is. DDP averages gradients
  over ranks, so weight each rank's mean loss by ``len(ids) * W / B`` when B is not a multiple of W.
* **keep the per-rank batch** — ``next_batch(per_rank_batch=b)``: the global batch is ``b * W``;
  scale the learning rate with it (``lr = base_lr * W / base_W``, the linear scaling rule).

A batch never crosses an epoch's end: the last batch of an epoch may be smaller. No torch import.
"""

from __future__ import annotations

import random
from typing import Any


class GlobalSampler:
    def __init__(self, num_samples: int, *, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        self.num_samples = int(num_samples)
        self.rank, self.world_size = int(rank), int(world_size)
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.epoch = 0
        self.offset = 0  # samples of this epoch already consumed by the whole gang
        self._order: list[int] | None = None
        self._order_epoch = -1

    def order(self, epoch: int | None = None) -> list[int]:
        """The sample ids of ``epoch`` (default: the current one) in reading order."""
        epoch = self.epoch if epoch is None else epoch
        if self._order is None or self._order_epoch != epoch:
            ids = list(range(self.num_samples))
            if self.shuffle:
                random.Random(self.seed * 1_000_003 + epoch).shuffle(ids)
            self._order, self._order_epoch = ids, epoch
        return self._order

    def next_batch(self, global_batch: int | None = None, per_rank_batch: int | None = None) -> list[int]:
        """This rank's sample ids of the next global batch (``global_batch``, or ``per_rank_batch``
        times the world size: give exactly one); the position moves past the whole global batch."""
        if (global_batch is None) == (per_rank_batch is None):
            raise ValueError("give exactly one of global_batch or per_rank_batch")
        size = global_batch if global_batch is not None else per_rank_batch * self.world_size
        if size < 1:
            raise ValueError(f"the global batch must be >= 1, got {size}")
        if self.offset >= self.num_samples:
            self.epoch, self.offset = self.epoch + 1, 0
        order = self.order()
        batch = order[self.offset:self.offset + size]
        self.offset += len(batch)
        base, extra = divmod(len(batch), self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return batch[start:start + base + (1 if self.rank < extra else 0)]

    @property
    def position(self) -> int:
        """Samples consumed by the gang since epoch 0 began."""
        return self.epoch * self.num_samples + self.offset

    def state_dict(self) -> dict[str, Any]:
        return {"num_samples": self.num_samples, "seed": self.seed, "shuffle": self.shuffle,
                "epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a saved position (saved at any world size). The data must be the same."""
        if (state["num_samples"], state["seed"], state["shuffle"]) != (self.num_samples, self.seed, self.shuffle):
            raise ValueError(f"the saved position is over other data: {state['num_samples']} samples, seed "
                             f"{state['seed']}, shuffle {state['shuffle']} (now {self.num_samples}, {self.seed}, "
                             f"{self.shuffle})")
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
