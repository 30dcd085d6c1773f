"""Shared machinery of the example training jobs.

Owns: strict config parsing (unknown keys and bad values raise ``ValueError`` naming the key),
seeding and determinism settings, DDP wrapping, the per-epoch deterministic data sharding, the
weights hash, and :func:`run_training` -- the one training loop (restore, train, report,
checkpoint, evaluate) that every job in this package uses. A job only describes its data, model,
loss and metric as a :class:`Task`.

Determinism contract (CPU, fixed seed and world size): model init comes from the seeded global
torch RNG (identical on all ranks); data comes from private ``torch.Generator`` objects; the batch
of global step ``s`` is a pure function of ``(seed, epoch, rank, world_size, s)``; checkpoints
hold model, optimizer, LR scheduler, the report window and the step, so a run resumed from any
checkpoint continues bit-for-bit like an uninterrupted one. Final metrics come from a fixed
held-out set.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

CHECKPOINT_FORMAT = 1
EVAL_CHUNK = 256

# Keys every job accepts; a job passes its own defaults for these plus its model/data knobs.
COMMON_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "steps": 200,
    "batch_size": 32,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "warmup_steps": 10,
    "grad_clip": 1.0,  # max global grad norm; 0 disables clipping
    "sleep_per_step_s": 0.0,  # pacing for demos/tests (excluded from samples_per_s)
    "report_every": 10,
    "log_every": 100,  # rank 0 prints a progress line at the first report after every N steps (0 = quiet)
    "num_threads": 1,  # torch intra-op threads; >1 may change float reduction order
    "deterministic": True,  # torch.use_deterministic_algorithms
    "num_train": 2048,  # synthetic training samples (all ranks together)
    "num_eval": 512,  # fixed held-out samples for the final metrics
}

# Inclusive lower bounds; keys not listed here only get the type check.
COMMON_MINIMUMS: dict[str, float] = {
    "steps": 1,
    "batch_size": 1,
    "lr": 0.0,
    "weight_decay": 0.0,
    "warmup_steps": 0,
    "grad_clip": 0.0,
    "sleep_per_step_s": 0.0,
    "report_every": 1,
    "log_every": 0,
    "num_threads": 1,
    "num_train": 1,
    "num_eval": 1,
}


# --- config ---------------------------------------------------------------------------------------


def parse_config(
    config: Mapping[str, Any] | None,
    defaults: Mapping[str, Any],
    *,
    job: str,
    minimums: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Merge ``config`` over ``defaults``; reject unknown keys, wrong types and out-of-range values.

    Types follow the defaults: int keys accept ints (and integral floats, as JSON may give),
    float keys accept ints and floats, bool keys accept only bools. Every error is a
    ``ValueError`` whose message names the offending key.
    """
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise ValueError(f"{job}: config must be a mapping, got {type(config).__name__}")
    unknown = sorted(str(k) for k in config if k not in defaults)
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise ValueError(
            f"{job}: unknown config key{'s' if len(unknown) > 1 else ''} {names}; "
            f"allowed keys: {', '.join(sorted(defaults))}"
        )
    mins = dict(minimums or {})
    out: dict[str, Any] = {}
    for key, default in defaults.items():
        value = config.get(key, default)
        out[key] = _coerce(job, key, value, default)
        lo = mins.get(key)
        if lo is not None and out[key] < lo:
            raise ValueError(f"{job}: config key {key!r} must be >= {lo}, got {value!r}")
    return out


def _coerce(job: str, key: str, value: Any, default: Any) -> Any:
    def bad(kind: str) -> ValueError:
        return ValueError(f"{job}: config key {key!r} must be {kind}, got {value!r}")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("a boolean")
        return value
    if isinstance(default, int):
        if isinstance(value, bool):
            raise bad("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            return int(value)
        raise bad("an integer")
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        if not math.isfinite(float(value)):
            raise bad("a finite number")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad("a string")
        return value
    return value


# --- seeding and determinism ------------------------------------------------------------------------


def set_seed(seed: int) -> None:
    """Seed python ``random``, numpy and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed derived from ``parts`` (stable across processes, unlike ``hash()``)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def make_generator(*parts: Any) -> torch.Generator:
    """A private CPU generator seeded from ``parts``; never touches the global RNG."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(derive_seed(*parts))
    return gen


@contextlib.contextmanager
def deterministic_torch(num_threads: int, device: torch.device, deterministic: bool = True) -> Iterator[None]:
    """Set thread count and deterministic algorithms for the duration of a job, then restore them.

    On CUDA, deterministic mode is warn-only (a missing deterministic kernel must not kill a
    job); bitwise reproducibility is only promised on CPU.
    """
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(num_threads)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev_cudnn


# --- distributed helpers -------------------------------------------------------------------------------


def _dist_active(world_size: int) -> bool:
    return world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def make_ddp(model: nn.Module, ctx: Any) -> nn.Module:
    """Wrap ``model`` in DistributedDataParallel when ``ctx.world_size > 1``, else return it."""
    if int(ctx.world_size) <= 1:
        return model
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise RuntimeError(
            f"world_size={ctx.world_size} but torch.distributed is not initialised; "
            "the runtime must init the process group before calling the job"
        )
    device = torch.device(getattr(ctx, "device", "cpu"))
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return nn.parallel.DistributedDataParallel(model, device_ids=[index], output_device=index)
    return nn.parallel.DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def shard_indices(n: int, epoch: int, seed: int, rank: int, world_size: int) -> torch.Tensor:
    """This rank's sample indices for ``epoch``: a permutation seeded from ``(seed, epoch)``, strided by rank.

    The tail that does not divide evenly is dropped so that all ranks get the same length
    (``n // world_size``). Returns an int64 CPU tensor.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad rank/world_size: {rank}/{world_size}")
    perm = torch.randperm(n, generator=make_generator("shuffle", seed, epoch))
    per_rank = n // world_size
    return perm[: per_rank * world_size][rank::world_size].clone()


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the bytes of the floating-point tensors of the (unwrapped) model's state_dict, in key order."""
    h = hashlib.sha256()
    for tensor in unwrap(model).state_dict().values():
        if torch.is_tensor(tensor) and tensor.is_floating_point():
            t = tensor.detach().to("cpu").contiguous().reshape(-1)
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def snapshot(obj: Any) -> Any:
    """Deep copy of a state tree with every tensor detached and cloned to CPU.

    Checkpoints are written in the background by the runtime, while training keeps updating
    parameters and optimizer buffers in place: the state handed over must not alias them.
    """
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [snapshot(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(snapshot(v) for v in obj)
    return obj


# --- the training loop ------------------------------------------------------------------------------------


@dataclass
class Task:
    """What a job trains: a model, its data and how to score it."""

    model: nn.Module
    train_x: torch.Tensor
    train_y: torch.Tensor
    eval_x: torch.Tensor
    eval_y: torch.Tensor
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # batch mean
    metric_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # batch mean
    metric_name: str  # e.g. "accuracy" or "mae"; results carry "final_<metric_name>"


def synthetic_task(cfg: Mapping[str, Any], make_data: Callable[..., tuple[torch.Tensor, torch.Tensor]],
                   data_keys: tuple[str, ...], make_model: Callable[[], nn.Module], *,
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   metric_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], metric_name: str) -> Task:
    """A Task on generated data: ``make_data(n, split, **{k: cfg[k] for k in data_keys})`` gives the
    ``cfg["num_train"]`` training and ``cfg["num_eval"]`` held-out samples (in that order, then the model)."""
    data_args = {k: cfg[k] for k in data_keys}
    train_x, train_y = make_data(cfg["num_train"], "train", **data_args)
    eval_x, eval_y = make_data(cfg["num_eval"], "eval", **data_args)
    return Task(model=make_model(), train_x=train_x, train_y=train_y, eval_x=eval_x, eval_y=eval_y,
                loss_fn=loss_fn, metric_fn=metric_fn, metric_name=metric_name)


class WarmupCosine:
    """LR multiplier: linear warmup, then cosine decay to 10% at the last step (picklable)."""

    def __init__(self, warmup_steps: int, total_steps: int) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, s: int) -> float:
        if self.warmup_steps and s < self.warmup_steps:
            return (s + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (s - self.warmup_steps) / span)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def classification_accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=-1) == target).to(torch.float64).mean()


def run_training(
    ctx: Any,
    *,
    job: str,
    defaults: Mapping[str, Any],
    build: Callable[[dict[str, Any]], Task],
    minimums: Mapping[str, float] | None = None,
    validate: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Parse the config, build the task, restore, train with DDP, checkpoint, report, evaluate.

    ``build(cfg)`` runs right after ``set_seed(cfg["seed"])``: model init may use the global torch
    RNG; data must come from :func:`make_generator`. Returns the job result (same on all ranks).
    """
    cfg = parse_config(ctx.config, defaults, job=job, minimums={**COMMON_MINIMUMS, **(minimums or {})})
    if validate is not None:
        validate(cfg)
    device = torch.device(getattr(ctx, "device", None) or "cpu")
    rank, world = int(ctx.rank), int(ctx.world_size)
    with deterministic_torch(cfg["num_threads"], device, cfg["deterministic"]):
        return _train(ctx, job, cfg, build, device, rank, world)


def _train(ctx, job, cfg, build, device, rank, world) -> dict[str, Any]:
    seed, total, bs = cfg["seed"], cfg["steps"], cfg["batch_size"]
    if device.type == "cuda":
        torch.cuda.set_device(device)
    set_seed(seed)
    task = build(cfg)
    model = task.model.to(device)
    n = int(task.train_x.shape[0])
    per_rank = n // world
    if per_rank < bs:
        raise ValueError(
            f"{job}: config key 'batch_size' ({bs}) exceeds the per-worker share of num_train "
            f"({n} samples / {world} workers = {per_rank})"
        )
    steps_per_epoch = per_rank // bs

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(cfg["warmup_steps"], total))
    # Running sums since the last report: [loss, metric, batches]. Checkpointed, so reports
    # after a resume equal those of an uninterrupted run.
    window = torch.zeros(3, dtype=torch.float64, device=device)
    step = 0

    state = ctx.restore()
    if state is not None:
        if state.get("job") != job or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"{job}: checkpoint belongs to job {state.get('job')!r} format {state.get('format')!r}"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        window.copy_(state["window"].to(device))
        # Resume at the batch after the saved step: (epoch, batch_in_epoch) = divmod(step,
        # steps_per_epoch), which is what the checkpoint recorded when the sharding is unchanged.
        step = int(state["step"])
    start_step = step
    print(f"{job}: rank {rank}/{world} on {device.type}: "
          + (f"resuming at step {step} of {total}" if step else f"starting, {total} steps")
          + f" (batch {bs} per worker)", flush=True)
    log_every = cfg["log_every"]
    next_log = (step // log_every + 1) * log_every if log_every else None

    net = make_ddp(model, ctx)
    train_x, train_y = task.train_x.to(device), task.train_y.to(device)
    net.train()

    idx_epoch, idx = -1, None
    slept = 0.0
    t0 = time.perf_counter()
    while step < total:
        epoch, b = divmod(step, steps_per_epoch)
        if epoch != idx_epoch:
            idx = shard_indices(n, epoch, seed, rank, world).to(device)
            idx_epoch = epoch
        batch = idx[b * bs : (b + 1) * bs]
        x, y = train_x[batch], train_y[batch]

        optimizer.zero_grad(set_to_none=True)
        out = net(x)
        loss = task.loss_fn(out, y)
        loss.backward()
        if cfg["grad_clip"] > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        optimizer.step()
        scheduler.step()
        step += 1
        with torch.no_grad():
            window[0] += loss.detach().to(torch.float64)
            window[1] += task.metric_fn(out.detach(), y).to(torch.float64)
            window[2] += 1

        report = None
        if step % cfg["report_every"] == 0 or step == total:
            stats = window.clone()
            if _dist_active(world):
                torch.distributed.all_reduce(stats)  # sums over ranks, counts included
            window.zero_()
            count = max(1.0, float(stats[2]))
            report = {
                "step": step,
                "epoch": step // steps_per_epoch,
                "loss": float(stats[0]) / count,
                task.metric_name: float(stats[1]) / count,
                "lr": float(scheduler.get_last_lr()[0]),
            }

        if ctx.should_checkpoint(step):
            nxt_epoch, nxt_batch = divmod(step, steps_per_epoch)
            ctx.save_checkpoint(
                snapshot(
                    {
                        "format": CHECKPOINT_FORMAT,
                        "job": job,
                        "step": step,
                        "epoch": nxt_epoch,  # data position of the next batch to train on
                        "batch_in_epoch": nxt_batch,
                        "world_size": world,
                        "rank": rank,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "window": window,
                    }
                ),
                step,
            )

        if report is not None and rank == 0:
            report["samples_per_s"] = _throughput(step - start_step, bs * world, t0, slept, device)
            ctx.report(**report)
            if next_log is not None and (step >= next_log or step == total):
                print(f"{job}: step {step}/{total} loss {report['loss']:.4f} {task.metric_name} "
                      f"{report[task.metric_name]:.4f} lr {report['lr']:.2e} "
                      f"{report['samples_per_s']:.0f} samples/s", flush=True)
                next_log = (step // log_every + 1) * log_every

        if cfg["sleep_per_step_s"] > 0:
            time.sleep(cfg["sleep_per_step_s"])
            slept += cfg["sleep_per_step_s"]

    samples_per_s = _throughput(step - start_step, bs * world, t0, slept, device)
    final_loss, final_metric = evaluate(model, task, device)
    result = {
        "final_loss": final_loss,
        f"final_{task.metric_name}": final_metric,
        "steps": step,
        "weights_sha256": weights_sha256(model),
        "samples_per_s": samples_per_s,
        "resumed_from_step": start_step,
        "world_size": world,
    }
    if rank == 0:
        ctx.report(step=step, final_loss=final_loss, **{f"final_{task.metric_name}": final_metric})
        print(f"{job}: done after {step} steps: eval loss {final_loss:.4f}, {task.metric_name} {final_metric:.4f}",
              flush=True)
    return result


def _throughput(steps_done: int, samples_per_step: int, t0: float, slept: float, device: torch.device) -> float:
    if steps_done <= 0:
        return 0.0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0 - slept
    return steps_done * samples_per_step / elapsed if elapsed > 0 else 0.0


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, device: torch.device) -> tuple[float, float]:
    """Mean loss and metric over the fixed held-out set, in fixed-size chunks (deterministic)."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    n = int(task.eval_x.shape[0])
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    metric_sum = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, n, EVAL_CHUNK):
        x = task.eval_x[start : start + EVAL_CHUNK].to(device)
        y = task.eval_y[start : start + EVAL_CHUNK].to(device)
        out = model(x)
        k = x.shape[0]
        loss_sum += task.loss_fn(out, y).to(torch.float64) * k
        metric_sum += task.metric_fn(out, y).to(torch.float64) * k
    model.train(was_training)
    return float(loss_sum) / n, float(metric_sum) / n
