"""Checkpoint registry (no Ray)."""

import hashlib
from pathlib import Path

from raycluster.rank.context import shard_path
from raycluster.store.checkpoints import CheckpointRegistry
from raycluster.util.files import atomic_write


def _commit(reg, root, step, rank, world=2, keep=2, data=b"x"):
    p = shard_path(root, "j1", step, rank)
    blob = data + bytes([rank, step % 256])
    atomic_write(p, blob)
    d = hashlib.sha256(blob).hexdigest()
    return reg.commit_shard("j1", step, rank, world, str(p), d, 3, attempt=1, keep_last=keep)


def test_complete_only_when_every_rank_registered(tmp_path):
    reg = CheckpointRegistry(tmp_path / "c.db")
    assert _commit(reg, tmp_path, 10, 0)["complete"] is False
    assert reg.candidates("j1") == []
    assert _commit(reg, tmp_path, 10, 1)["complete"] is True
    [c] = reg.candidates("j1")
    assert c["step"] == 10 and sorted(c["shards"]) == [0, 1]


def test_keep_last_prunes_files(tmp_path):
    reg = CheckpointRegistry(tmp_path / "c.db")
    for step in (10, 20, 30):
        _commit(reg, tmp_path, step, 0)
        _commit(reg, tmp_path, step, 1)
    assert [c["step"] for c in reg.candidates("j1")] == [30, 20]
    assert not Path(shard_path(tmp_path, "j1", 10, 0)).parent.exists()
    assert Path(shard_path(tmp_path, "j1", 20, 0)).exists()
    states = {c["step"]: c["state"] for c in reg.list("j1")}
    assert states == {10: "PRUNED", 20: "COMPLETE", 30: "COMPLETE"}


def test_partial_older_than_latest_complete_is_dropped(tmp_path):
    reg = CheckpointRegistry(tmp_path / "c.db")
    _commit(reg, tmp_path, 10, 0)  # rank 1 never made it (crashed)
    _commit(reg, tmp_path, 20, 0)
    _commit(reg, tmp_path, 20, 1)
    assert {c["step"]: c["state"] for c in reg.list("j1")}[10] == "PRUNED"


def test_corrupt_is_excluded_and_step_can_be_rewritten(tmp_path):
    reg = CheckpointRegistry(tmp_path / "c.db")
    for r in (0, 1):
        _commit(reg, tmp_path, 10, r, keep=3)
        _commit(reg, tmp_path, 20, r, keep=3)
    reg.mark_corrupt("j1", 20, "sha mismatch")
    assert [c["step"] for c in reg.candidates("j1")] == [10]
    # a later attempt that resumed from 10 writes step 20 again
    _commit(reg, tmp_path, 20, 0, keep=3)
    assert [c["step"] for c in reg.candidates("j1")] == [10]
    _commit(reg, tmp_path, 20, 1, keep=3)
    assert [c["step"] for c in reg.candidates("j1")] == [20, 10]
