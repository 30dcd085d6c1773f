"""The smallest complete job: the example in docs/jobs.md (kept identical to it by a test).

Fits y = 3x + 1 with SGD; every rank trains the same model on its own slice of the data and the
gradients are averaged (torch.distributed is set up by the runtime when num_workers > 1).
"""

import torch
import torch.distributed as dist


def train(ctx):
    steps = int(ctx.config.get("steps", 200))
    torch.manual_seed(ctx.config.get("seed", 0))
    x = torch.linspace(-1, 1, 256)[ctx.rank::ctx.world_size].unsqueeze(1)  # this rank's slice
    y = 3 * x + 1
    model = torch.nn.Linear(1, 1).to(ctx.device)
    opt = torch.optim.SGD(model.parameters(), lr=float(ctx.config.get("lr", 0.1)))
    step = 0
    state = ctx.restore()  # None on a fresh start; after a failure, the newest complete checkpoint
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    print(f"rank {ctx.rank}/{ctx.world_size} attempt {ctx.attempt}: from step {step} of {steps}", flush=True)
    while step < steps:
        loss = torch.nn.functional.mse_loss(model(x.to(ctx.device)), y.to(ctx.device))
        opt.zero_grad()
        loss.backward()
        if ctx.world_size > 1:
            for p in model.parameters():
                dist.all_reduce(p.grad)
                p.grad /= ctx.world_size
        opt.step()
        step += 1
        if step % 20 == 0:
            ctx.report(step=step, loss=loss.item())  # rank 0's reports: `raycluster status JOB`, Prometheus
            if ctx.rank == 0:
                print(f"step {step} loss {loss.item():.5f}", flush=True)  # `raycluster logs -f JOB`
        if ctx.should_checkpoint(step):  # every rank asks at every step: they all get the same answer
            ctx.save_checkpoint({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, step)
    w, b = model.weight.item(), model.bias.item()
    return {"w": round(w, 3), "b": round(b, 3), "resumed_from": ctx.restored_step}  # rank 0's: the job's result
