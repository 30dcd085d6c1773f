"""Fast, Ray-free unit tests of the example training jobs in ``jobs/``.

Owns: ``FakeContext`` (an in-memory stand-in for the runtime's job context: rank 0 of 1 on CPU,
checkpoints kept in memory and serialised lazily like a background writer, RNG states captured and
restored like the runtime does) and, for each of the cnn/transformer/lstm jobs: loss decreases,
an interrupted-then-resumed run ends bit-identical to an uninterrupted one, and unknown config keys
are rejected by name. One test runs the CNN on 2 processes with DDP over gloo on 127.0.0.1.
"""

from __future__ import annotations

import importlib
import io
import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from jobs import common  # noqa: E402
from raycluster.util.ports import free_port  # noqa: E402

JOBS = ["cnn", "transformer", "lstm"]
METRIC = {"cnn": "accuracy", "transformer": "accuracy", "lstm": "mae"}

# Small but still learning configs: the whole file stays well under a minute on 2 cores.
SMALL: dict[str, dict[str, Any]] = {
    "cnn": {"steps": 40, "batch_size": 16, "num_train": 512, "num_eval": 128, "width": 8, "report_every": 5},
    "transformer": {"steps": 40, "batch_size": 16, "num_train": 512, "num_eval": 128, "lr": 5e-3,
                    "report_every": 5},
    "lstm": {"steps": 40, "batch_size": 16, "num_train": 512, "num_eval": 128, "hidden_size": 16,
             "report_every": 5},
}
CKPT_EVERY = 10
FAIL_AT = 25  # interrupted after the checkpoint at step 20: steps 21..25 are redone on resume


class Interrupted(RuntimeError):
    """Stands in for a node dying mid-run."""


class FakeContext:
    """The job-facing context of the runtime, in memory.

    Checkpoints keep the state object handed over and serialise it only when restored, like a
    background writer would: a job that hands over tensors aliasing live parameters is caught.
    """

    def __init__(
        self,
        config: dict[str, Any],
        *,
        rank: int = 0,
        world_size: int = 1,
        every_steps: int = CKPT_EVERY,
        fail_on_report_at: int | None = None,
        fail_on_step_at: int | None = None,
    ) -> None:
        self.config = dict(config)
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device("cpu")
        self.job_id = "job-test"
        self.attempt = 0
        self.every_steps = every_steps
        self.fail_on_report_at = fail_on_report_at
        self.fail_on_step_at = fail_on_step_at
        self.reports: list[dict[str, Any]] = []
        self.checkpoints: dict[int, tuple[Any, dict[str, Any]]] = {}
        self.restored_step: int | None = None

    def should_checkpoint(self, step: int) -> bool:
        if self.fail_on_step_at is not None and step >= self.fail_on_step_at:
            self.fail_on_step_at = None
            self.attempt += 1
            raise Interrupted(f"interrupted at step {step}")
        return step % self.every_steps == 0

    def save_checkpoint(self, state: dict, step: int) -> None:
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        self.checkpoints[step] = (state, rng)  # serialised lazily, in restore()

    def restore(self) -> dict | None:
        if not self.checkpoints:
            return None
        step = max(self.checkpoints)
        buf = io.BytesIO()
        torch.save(self.checkpoints[step], buf)
        buf.seek(0)
        state, rng = torch.load(buf, weights_only=False)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        self.restored_step = step
        return state

    def report(self, **metrics: Any) -> None:
        assert "step" in metrics
        for key, value in metrics.items():
            assert isinstance(value, (int, float)), (key, value)
        self.reports.append(metrics)
        if self.fail_on_report_at is not None and metrics["step"] >= self.fail_on_report_at:
            self.fail_on_report_at = None
            self.attempt += 1
            raise Interrupted(f"interrupted at step {metrics['step']}")


def _train(job: str, ctx: FakeContext) -> dict[str, Any]:
    return importlib.import_module(f"jobs.{job}").train(ctx)


def _final(result: dict[str, Any], job: str) -> dict[str, Any]:
    return {k: result[k] for k in ("final_loss", f"final_{METRIC[job]}", "steps", "weights_sha256")}


def _training_reports(ctx: FakeContext, after: int = 0) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in r.items() if k != "samples_per_s"}
        for r in ctx.reports
        if "loss" in r and r["step"] > after
    ]


_BASELINES: dict[str, tuple[FakeContext, dict[str, Any]]] = {}


def _baseline(job: str) -> tuple[FakeContext, dict[str, Any]]:
    if job not in _BASELINES:
        ctx = FakeContext(SMALL[job])
        _BASELINES[job] = (ctx, _train(job, ctx))
    return _BASELINES[job]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("job", JOBS)
def test_trains_and_loss_decreases(job: str) -> None:
    ctx, result = _baseline(job)
    losses = [r["loss"] for r in ctx.reports if "loss" in r]
    assert len(losses) == SMALL[job]["steps"] // SMALL[job]["report_every"]
    assert losses[-1] < 0.7 * losses[0], losses
    assert result["steps"] == SMALL[job]["steps"]
    assert result["resumed_from_step"] == 0
    assert len(result["weights_sha256"]) == 64
    assert result["samples_per_s"] > 0
    assert np.isfinite(result["final_loss"]) and np.isfinite(result[f"final_{METRIC[job]}"])
    if METRIC[job] == "accuracy":
        assert 0.0 <= result["final_accuracy"] <= 1.0
    # Checkpoints were requested at every multiple of CKPT_EVERY.
    assert sorted(ctx.checkpoints) == list(range(CKPT_EVERY, SMALL[job]["steps"] + 1, CKPT_EVERY))
    # The last report carries the final metrics.
    assert ctx.reports[-1]["final_loss"] == result["final_loss"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("job", JOBS)
def test_interrupted_run_resumes_bit_identical(job: str) -> None:
    base_ctx, base = _baseline(job)
    ctx = FakeContext(SMALL[job], fail_on_report_at=FAIL_AT)
    with pytest.raises(Interrupted):
        _train(job, ctx)
    assert max(ctx.checkpoints) == 20
    resumed = _train(job, ctx)
    assert ctx.restored_step == 20
    assert resumed["resumed_from_step"] == 20
    assert _final(resumed, job) == _final(base, job)
    # Every report after the resume point equals the uninterrupted run's, bit for bit.
    assert _training_reports(ctx, after=FAIL_AT) == _training_reports(base_ctx, after=FAIL_AT)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("job", JOBS)
def test_resume_from_final_checkpoint_only_evaluates(job: str) -> None:
    base_ctx, base = _baseline(job)
    ctx = FakeContext(SMALL[job])
    ctx.checkpoints = {SMALL[job]["steps"]: base_ctx.checkpoints[SMALL[job]["steps"]]}
    again = _train(job, ctx)
    assert _final(again, job) == _final(base, job)
    assert again["resumed_from_step"] == SMALL[job]["steps"]
    assert again["samples_per_s"] == 0.0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("job", JOBS)
def test_unknown_config_key_is_rejected_by_name(job: str) -> None:
    with pytest.raises(ValueError, match="bogus_knob"):
        _train(job, FakeContext({"steps": 2, "bogus_knob": 1}))


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "bad, key",
    [({"steps": 0}, "steps"), ({"lr": "fast"}, "lr"), ({"batch_size": 2.5}, "batch_size"),
     ({"deterministic": 1}, "deterministic"), ({"batch_size": 10_000}, "batch_size")],
)
def test_bad_config_values_are_rejected_by_name(bad: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        _train("cnn", FakeContext(bad))


@pytest.mark.timeout(120)
def test_job_specific_validation() -> None:
    with pytest.raises(ValueError, match="d_model"):
        _train("transformer", FakeContext({"d_model": 30, "nhead": 4}))
    with pytest.raises(ValueError, match="image_size"):
        _train("cnn", FakeContext({"image_size": 18}))


@pytest.mark.timeout(120)
def test_global_torch_settings_are_restored() -> None:
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    _train("lstm", FakeContext({**SMALL["lstm"], "steps": 3}))
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == det


def test_shard_indices_are_deterministic_disjoint_and_equal_length() -> None:
    n, world = 103, 3
    shards = [common.shard_indices(n, epoch=2, seed=7, rank=r, world_size=world) for r in range(world)]
    assert {len(s) for s in shards} == {n // world}
    flat = torch.cat(shards).tolist()
    assert len(set(flat)) == len(flat)
    assert all(0 <= i < n for i in flat)
    assert torch.equal(shards[1], common.shard_indices(n, 2, 7, 1, world))
    assert not torch.equal(shards[1], common.shard_indices(n, 3, 7, 1, world))
    assert not torch.equal(shards[1], common.shard_indices(n, 2, 8, 1, world))
    # Independent of the global RNG.
    torch.manual_seed(123)
    a = common.shard_indices(n, 2, 7, 1, world)
    torch.manual_seed(456)
    assert torch.equal(a, common.shard_indices(n, 2, 7, 1, world))


def test_weights_sha256_tracks_weights() -> None:
    model = torch.nn.Linear(3, 2)
    h = common.weights_sha256(model)
    assert h == common.weights_sha256(model)
    with torch.no_grad():
        model.bias[0] += 1.0
    assert h != common.weights_sha256(model)


# --- world_size 2: DDP over gloo on loopback ------------------------------------------------------


def _ddp_worker(rank: int, world: int, port: int, out_dir: str, config: dict[str, Any]) -> None:
    import torch.distributed as dist

    if _ROOT not in sys.path:
        sys.path.insert(0, _ROOT)
    from jobs import cnn

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        plain = cnn.train(FakeContext(config, rank=rank, world_size=world))
        # Interrupt every rank at step 13 (checkpoint at 10), then resume in the same group.
        ctx = FakeContext(config, rank=rank, world_size=world, fail_on_step_at=13)
        try:
            cnn.train(ctx)
            raise AssertionError("not interrupted")
        except Interrupted:
            pass
        resumed = cnn.train(ctx)
        Path(out_dir, f"rank{rank}.json").write_text(
            json.dumps({"plain": plain, "resumed": resumed, "restored_step": ctx.restored_step})
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_cnn_ddp_two_ranks_identical_weights(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    config = {"steps": 20, "batch_size": 16, "num_train": 256, "num_eval": 64, "width": 4, "report_every": 5}
    mp.spawn(_ddp_worker, args=(2, free_port("127.0.0.1"), str(tmp_path), config), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["plain"]["world_size"] == 2
    assert r0["plain"]["weights_sha256"] == r1["plain"]["weights_sha256"]
    assert r0["restored_step"] == r1["restored_step"] == 10
    assert _final(r0["resumed"], "cnn") == _final(r0["plain"], "cnn")
    assert _final(r1["resumed"], "cnn") == _final(r1["plain"], "cnn")
    # A 2-rank run differs from a 1-rank run (each step sees 2x the samples).
    single = _train("cnn", FakeContext(config))
    assert single["weights_sha256"] != r0["plain"]["weights_sha256"]


def test_docs_jobs_md_shows_the_shipped_example_and_names_every_field_and_ctx_member():
    import re
    from pathlib import Path

    from raycluster.rank.context import TrainContext
    from raycluster.rank.sweep import TrialContext
    from raycluster.spec import JobSpec

    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "jobs.md").read_text()
    block = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    assert block == (root / "jobs" / "example.py").read_text()  # the doc's example is the file that runs
    for field in JobSpec.model_fields:
        assert f"| `{field}` |" in doc, field
    public = {n for n in [*vars(TrainContext), *vars(TrainContext(job_id="j", attempt=0, rank=0, world_size=1,
                                                                  config={}, checkpoint_root=None,
                                                                  checkpoint_policy={}))]
              if not n.startswith("_") and n != "flush"}  # (flush: the runtime's, not the job's)
    for name in public | {n for n in vars(TrialContext) if not n.startswith("_")}:
        assert f"ctx.{name}" in doc, name


def test_the_documented_example_trains():
    from jobs.example import train
    from raycluster.rank.context import BareContext

    out = train(BareContext({"steps": 120}))
    assert abs(out["w"] - 3) < 0.01 and abs(out["b"] - 1) < 0.01 and out["resumed_from"] is None
