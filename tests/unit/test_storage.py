"""Storage URIs (store/storage.py): the same blob operations on a local disk and on a real
S3-compatible server on loopback (moto's server mode), the checkpoint registry pruning there, rank
logs uploaded there and read back, and bad URIs refused naming the key."""

from __future__ import annotations

import hashlib
import importlib.util
import sys

import pytest

from raycluster.errors import InvalidStorage, StorageError
from raycluster.rank.context import shard_path
from raycluster.rank.logs import RankLogCapture, rank_log_path, read_rank_logs
from raycluster.store import storage
from raycluster.store.checkpoints import CheckpointRegistry
from tests.s3server import s3_keys, s3_server


@pytest.fixture(scope="module")
def s3():
    with s3_server() as (base, env):
        yield base, env


@pytest.fixture(params=["file", "s3"])
def base(request, tmp_path):
    if request.param == "file":
        return "file://" + str(tmp_path / "store")
    s3_base, _ = request.getfixturevalue("s3")
    return f"{s3_base}/{request.node.name.replace('[', '-').rstrip(']')}"


@pytest.mark.timeout(60)
def test_blob_operations_are_the_same_everywhere(base):
    a = storage.join(base, "job", "a.txt")
    assert storage.list_names(storage.join(base, "job")) == []
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(a)
    assert storage.sha256(a) is None
    storage.write_bytes(a, b"one\ntwo\nthree\n")
    storage.write_bytes(storage.join(base, "job", "b.txt"), b"x")
    storage.write_bytes(a, b"one\ntwo\nthree\nfour\n")  # replaced whole
    assert storage.read_bytes(a) == b"one\ntwo\nthree\nfour\n"
    assert storage.sha256(a) == hashlib.sha256(b"one\ntwo\nthree\nfour\n").hexdigest()
    assert storage.size_of(a) == 19
    assert storage.read_range(a, 4, 8) == b"two\n" and storage.read_range(a, 14, 100) == b"four\n"
    assert storage.read_range(a, 5, 5) == b""
    assert sorted(storage.list_names(storage.join(base, "job"))) == ["a.txt", "b.txt"]
    assert storage.parent(a) == storage.join(base, "job")
    storage.remove_tree(storage.join(base, "job"))
    storage.remove_tree(storage.join(base, "job"))  # missing is fine
    assert storage.list_names(storage.join(base, "job")) == []


def test_local_paths_and_file_uris_are_one_place(tmp_path):
    assert storage.join(f"file://{tmp_path}", "x") == str(tmp_path / "x")
    assert storage.check_uri(f"file://{tmp_path}/a/../b") == str(tmp_path / "b")
    assert storage.check_uri(str(tmp_path)) == str(tmp_path)
    assert storage.join("s3://b/p/", "j", "/k") == "s3://b/p/j/k"
    assert storage.is_local("/x") and storage.is_local("file:///x") and not storage.is_local("s3://b/x")


@pytest.mark.parametrize("uri,says", [
    ("", "storage_uri: must be a path or a URI"),
    ("nosuch://bucket/x", "unknown storage protocol 'nosuch'"),
    ("s3://", "names no bucket or path"),
    ("gs://bucket/x", "gs:// needs gcsfs (pip install gcsfs)"),
])
def test_bad_uris_are_refused_naming_the_key(uri, says):
    pytest.importorskip("s3fs")
    if uri.startswith("gs://") and importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here")
    with pytest.raises(InvalidStorage) as e:
        storage.check_uri(uri)
    assert says in str(e.value) and str(e.value).startswith("storage_uri")


@pytest.mark.timeout(60)
def test_s3_failures_are_storage_errors_without_secrets(s3):
    base, env = s3
    with pytest.raises(StorageError) as e:
        storage.write_bytes("s3://no-such-bucket-here/x", b"data")
    assert e.value.retryable and not isinstance(e.value, InvalidStorage)
    assert "no-such-bucket-here" in str(e.value) and env["AWS_SECRET_ACCESS_KEY"] not in str(e.value).replace(
        "no-such-bucket-here", "")


@pytest.mark.timeout(60)
def test_checkpoint_registry_prunes_shards_on_s3(s3, tmp_path):
    base, env = s3
    root = f"{base}/ckpt-prune"
    reg = CheckpointRegistry(tmp_path / "c.db")
    for step in (10, 20, 30):
        for rank in (0, 1):
            p = shard_path(root, "j1", step, rank)
            assert p.startswith("s3://")
            blob = bytes([rank, step])
            storage.write_bytes(p, blob)
            reg.commit_shard("j1", step, rank, 2, p, hashlib.sha256(blob).hexdigest(), 2, attempt=1, keep_last=2)
    assert [c["step"] for c in reg.candidates("j1")] == [30, 20]
    keys = s3_keys(env, prefix="rc/ckpt-prune/")
    assert keys == [f"rc/ckpt-prune/j1/step_0000000{s}/rank_{r}.pt" for s in (20, 30) for r in (0, 1)]
    for cand in reg.candidates("j1"):
        assert all(storage.sha256(s["path"]) == s["sha256"] for s in cand["shards"].values())


@pytest.mark.timeout(60)
def test_rank_logs_on_s3_are_uploaded_and_read_back(s3, tmp_path, monkeypatch):
    base, env = s3
    log_dir = f"{base}/logs-up"
    monkeypatch.setattr(sys, "stdout", sys.stdout)
    for attempt, rank, n in ((1, 0, 300), (1, 1, 3)):
        with RankLogCapture(rank_log_path(log_dir, "j9", attempt, rank), tmp_path / f"spool-{rank}.log"):
            for i in range(n):
                print(f"a{attempt} r{rank} line {i}")
    assert s3_keys(env, prefix="rc/logs-up/") == ["rc/logs-up/j9/a1-r0.log", "rc/logs-up/j9/a1-r1.log"]
    out = read_rank_logs(log_dir, "j9", tail_lines=5)
    assert [(e["attempt"], e["rank"]) for e in out] == [(1, 0), (1, 1)]
    assert out[0]["lines"] == [f"a1 r0 line {i}" for i in range(295, 300)]
    assert read_rank_logs(log_dir, "nosuchjob") == []
