"""The shared helpers: the one atomic writer, the one tail reader, the one TTL cache (no Ray)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat

import pytest

from raycluster.util.files import atomic_write, atomic_write_json, sha256_file, tail
from raycluster.util.ttlcache import TTLCache


def _no_temp_files(d):
    return [f for f in os.listdir(d) if f.endswith(".tmp")] == []


def test_atomic_write_bytes_text_json_and_mode(tmp_path):
    p = tmp_path / "a" / "b.bin"
    atomic_write(p, b"hello")
    assert p.read_bytes() == b"hello" and sha256_file(p) == hashlib.sha256(b"hello").hexdigest()
    atomic_write(p, "replaced", mode=0o600)
    assert p.read_text() == "replaced" and stat.S_IMODE(p.stat().st_mode) == 0o600
    atomic_write_json(tmp_path / "r.json", {"b": 1, "a": [1]})
    assert (tmp_path / "r.json").read_text() == '{\n  "a": [\n    1\n  ],\n  "b": 1\n}\n'
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o600
    assert _no_temp_files(p.parent) and _no_temp_files(tmp_path)
    assert sha256_file(tmp_path / "missing") is None


def test_atomic_write_without_overwrite_never_replaces(tmp_path):
    p = tmp_path / "token"
    atomic_write(p, "first", overwrite=False)
    with pytest.raises(FileExistsError):
        atomic_write(p, "second", overwrite=False)
    assert p.read_text() == "first" and _no_temp_files(tmp_path)


def test_tail_by_lines_and_by_bytes(tmp_path):
    p = tmp_path / "log"
    p.write_text("".join(f"line {i}\n" for i in range(10_000)))
    assert tail(p, lines=3).splitlines() == ["line 9997", "line 9998", "line 9999"]
    assert tail(p, lines=3, chunk=7).splitlines() == ["line 9997", "line 9998", "line 9999"]  # many chunks
    assert tail(p, lines=0) == ""
    assert tail(p, max_bytes=10) == "9\nline 9999\n"[-10:]
    assert tail(p, lines=20_000).count("\n") == 9_999  # the whole file
    (tmp_path / "short").write_text("only\n")
    assert tail(tmp_path / "short", lines=5) == "only"
    with pytest.raises(OSError):
        tail(tmp_path / "missing", lines=1)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_ttl_cache_recomputes_only_when_older_than_the_max_age():
    clock, calls = Clock(), []
    cache = TTLCache(clock)

    def compute():
        calls.append(clock.t)
        return len(calls)

    assert cache.get("k", 2.0, compute) == 1
    clock.t = 1.9
    assert cache.get("k", 2.0, compute) == 1
    assert cache.get("k", 0.0, compute) == 2  # max age 0: always fresh
    clock.t = 4.0
    assert cache.get("k", 2.0, compute) == 3
    assert cache.fresh("k", 1.0) and not cache.fresh("other", 1.0)
    cache.drop("k")
    assert not cache.fresh("k", 100.0)


def test_ttl_cache_async_single_flight_and_errors_are_not_cached():
    cache, calls = TTLCache(), []

    async def compute():
        calls.append(1)
        await asyncio.sleep(0.05)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return len(calls)

    async def main():
        first = await asyncio.gather(*[cache.aget("k", 10.0, compute) for _ in range(20)])
        assert first == [1] * 20 and len(calls) == 1  # twenty callers, one computation
        with pytest.raises(RuntimeError):
            await cache.aget("k", 0.0, compute)
        assert await cache.aget("k", 0.0, compute) == 3  # a failed refresh is not kept

    asyncio.run(main())
