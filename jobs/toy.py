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
* ``elastic``  — a data-parallel (DDP) linear regression for an elastic gang (``num_workers: {min,
  max}``): each step trains on this rank's share of the next global batch of ``ctx.sampler``
  (the global batch kept at any world size), rank 0 records the sample ids of every rank's batch
  and the world size of every step in its checkpointed state, and returns them: a test checks the
  data was seen exactly once across shrinks and grows. ``sleep_per_step_s`` paces it until
  ``fast_file`` exists (a test's event, not the wall clock); ``sleep_per_sample_s`` stands for
  compute (each rank sleeps it per sample of its share: a step takes less time at a larger size).
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


def elastic(ctx):
    import os

    import torch
    import torch.distributed as dist

    cfg = {"num_samples": 128, "global_batch": 16, "epochs": 4, "lr": 0.05, "seed": 0, "sleep_per_step_s": 0.0,
           "sleep_per_sample_s": 0.0, "fast_file": None, **ctx.config}
    torch.manual_seed(cfg["seed"])
    inner = torch.nn.Linear(4, 1)  # (its state is saved, not DDP's: a resume at world size 1 loads it too)
    model = torch.nn.parallel.DistributedDataParallel(inner) if ctx.world_size > 1 else inner
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
    sampler = ctx.sampler(cfg["num_samples"], seed=cfg["seed"])
    g = torch.Generator().manual_seed(cfg["seed"] + 1)
    xs = torch.randn(cfg["num_samples"], 4, generator=g)  # sample i is (xs[i], ys[i]): the data, by id
    ys = xs @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1
    state = ctx.restore()
    step, seen, sizes = 0, [], []
    if state is not None:
        inner.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sampler.load_state_dict(state["sampler"])
        step, seen, sizes = state["step"], state["seen"], state["sizes"]
    total_steps = cfg["epochs"] * -(-cfg["num_samples"] // cfg["global_batch"])
    loss = torch.tensor(0.0)
    while step < total_steps:
        step += 1
        ids = sampler.next_batch(global_batch=cfg["global_batch"])
        idx = torch.tensor(ids, dtype=torch.long)
        # DDP averages gradients over ranks: weight each rank's mean by its share so the step is the
        # global batch's mean whatever the world size (shares differ by one when it does not divide)
        loss = torch.nn.functional.mse_loss(model(xs[idx]), ys[idx]) * (len(ids) * ctx.world_size
                                                                        / cfg["global_batch"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        batch_ids = [ids]
        if ctx.world_size > 1:
            batch_ids = [None] * ctx.world_size
            dist.all_gather_object(batch_ids, ids)
        seen.extend(i for part in batch_ids for i in part)
        sizes.append(ctx.world_size)
        ctx.report(step=step, loss=float(loss.detach()), world_size=ctx.world_size)
        if ctx.should_checkpoint(step):
            ctx.save_checkpoint({"model": inner.state_dict(), "opt": opt.state_dict(),
                                 "sampler": sampler.state_dict(), "step": step, "seen": list(seen),
                                 "sizes": list(sizes)}, step)
        if cfg["sleep_per_step_s"] and not (cfg["fast_file"] and os.path.exists(cfg["fast_file"])):
            time.sleep(cfg["sleep_per_step_s"])
        if cfg["sleep_per_sample_s"]:
            time.sleep(cfg["sleep_per_sample_s"] * len(ids))
    runs = []  # the world sizes it trained at, in order (run-length)
    for w in sizes:
        if not runs or runs[-1][0] != w:
            runs.append([w, 0])
        runs[-1][1] += 1
    return {"steps": step, "seen": seen, "world_sizes": runs, "loss": float(loss.detach()),
            "resumed_from": ctx.restored_step, "restored_world_size": ctx.restored_world_size}
