"""Tiny jobs for smoke tests, benchmarks and examples of the ctx contract (no torch model).

* ``noop``     — returns at once (benchmarks the runtime's own overhead).
* ``fail``     — raises in user code (exercises the user-error path).
* ``chatty``   — prints and logs known lines on every rank (exercises rank logs).
* ``trial``    — one tiny trial of a sweep: a few steps of gradient descent on a quadratic with the
  trial's ``lr`` (pure Python); ``fail_trial`` makes that trial raise; ``sleep_s`` slows it;
  ``marker_dir`` leaves one file per run of a trial (tests count reruns with it).
* ``counter``  — a deterministic checkpointing loop: sums pseudo-random numbers drawn from the
  global RNGs for ``steps`` steps, sleeping ``sleep_per_step_s``; the result depends on every
  RNG draw, so a resume that loses RNG state or data position gives a different ``total``; it prints
  a line every ``print_every`` steps (0 = never). ``hold_at_step`` with ``hold_until_file``: after
  that step (reported, checkpointed) the rank waits until the file exists — a test paces a job by
  an event it controls (release the file), not by the wall clock; the result does not change.
"""

from __future__ import annotations

import logging
import random
import sys
import time


def noop(ctx):
    return {"rank": ctx.rank, "world_size": ctx.world_size}


def fail(ctx):
    raise ValueError(f"deliberate failure in user code (rank {ctx.rank})")


def chatty(ctx):
    n = int(ctx.config.get("lines", 3))
    for i in range(n):
        print(f"chatty rank {ctx.rank} attempt {ctx.attempt} line {i}")
    print(f"chatty rank {ctx.rank} to stderr", file=sys.stderr)
    logging.getLogger("chatty").warning("chatty rank %d logged", ctx.rank)
    return {"rank": ctx.rank, "lines": n}


def trial(ctx):
    cfg = {"lr": 0.1, "steps": 20, "target": 3.0, "sleep_s": 0.0, "fail_trial": None, "marker_dir": None, **ctx.config}
    index = getattr(ctx, "trial", 0)
    if cfg["marker_dir"]:
        import os
        import uuid

        with open(os.path.join(cfg["marker_dir"], f"t{index:06d}-a{ctx.attempt}-{uuid.uuid4().hex[:6]}"), "w"):
            pass
    if cfg["sleep_s"]:
        time.sleep(cfg["sleep_s"])
    if cfg["fail_trial"] is not None and index == cfg["fail_trial"]:
        raise ValueError(f"deliberate failure of trial {index}")
    x = 0.0
    for _ in range(int(cfg["steps"])):
        x -= cfg["lr"] * 2 * (x - cfg["target"])
    loss = (x - cfg["target"]) ** 2
    ctx.report(loss=loss)
    return {"loss": loss, "x": x}


def counter(ctx):
    import numpy as np  # imported here so noop/fail stay free of heavy imports
    import torch

    cfg = {"steps": 20, "sleep_per_step_s": 0.0, "seed": 0, "fail_at_step": None, "fail_sleep_s": 0.0,
           "print_every": 0, "hold_at_step": None, "hold_until_file": None, **ctx.config}
    random.seed(cfg["seed"] + ctx.rank)
    np.random.seed(cfg["seed"] + ctx.rank)
    torch.manual_seed(cfg["seed"] + ctx.rank)
    state = ctx.restore() or {"step": 0, "total": 0.0}
    step, total = state["step"], state["total"]
    while step < cfg["steps"]:
        step += 1
        total += random.random() + float(np.random.rand()) + float(torch.rand(1))
        if ctx.world_size > 1:
            import torch.distributed as dist

            t = torch.tensor([total], dtype=torch.float64)
            dist.all_reduce(t)
            total = float(t) / ctx.world_size
        ctx.report(step=step, total=total)
        if cfg["print_every"] and step % cfg["print_every"] == 0:
            print(f"counter rank {ctx.rank} step {step} total {total:.4f}", flush=True)
        if step == cfg["fail_at_step"] and ctx.attempt == 1:
            time.sleep(cfg["fail_sleep_s"])
            raise RuntimeError(f"deliberate failure at step {step}")
        if ctx.should_checkpoint(step):
            ctx.save_checkpoint({"step": step, "total": total}, step)
        if step == cfg["hold_at_step"] and cfg["hold_until_file"]:
            import os

            saved = False
            while not os.path.exists(cfg["hold_until_file"]):
                # asked to (a move): saved once, held on (one rank only: a gang's ranks would call
                # should_checkpoint's collective a different number of times here)
                if ctx.world_size == 1 and not saved and ctx.should_checkpoint(step):
                    ctx.save_checkpoint({"step": step, "total": total}, step)
                    saved = True
                time.sleep(0.05)
        if cfg["sleep_per_step_s"]:
            time.sleep(cfg["sleep_per_step_s"])
    return {"total": total, "steps": step, "resumed_from": ctx.restored_step, "attempt": ctx.attempt}
