"""A spec's local runtime_env directories packaged before submit (client/packages.py): named by their
content, uploaded once, excludes honoured, a bad path named. The store is a dict (the Ray and HTTP
stores are exercised by the cluster tests)."""

from __future__ import annotations

import io
import zipfile

import pytest

from raycluster.client.packages import needs_packaging, package_runtime_env
from raycluster.errors import InvalidJobSpec


class DictStore:
    def __init__(self):
        self.blobs: dict[str, bytes] = {}
        self.puts = 0

    def exists(self, uri):
        return uri in self.blobs

    def put(self, uri, data):
        self.puts += 1
        self.blobs[uri] = data


def _names(data: bytes) -> set[str]:
    return set(zipfile.ZipFile(io.BytesIO(data)).namelist())


def test_a_local_working_dir_is_uploaded_once_by_content_with_excludes_honoured(tmp_path):
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    (proj / "mymod.py").write_text("def train(ctx):\n    return 1\n")
    (proj / "data" / "big.bin").write_bytes(b"x" * 1000)
    store = DictStore()
    env = {"working_dir": "proj", "excludes": ["data"], "env_vars": {"A": "1"}}
    assert needs_packaging(env) and not needs_packaging({"working_dir": "gcs://_ray_pkg_ab.zip"})
    out, uploaded = package_runtime_env(env, store, base_dir=tmp_path)
    uri = out["working_dir"]
    assert uri.startswith("gcs://_ray_pkg_") and uri.endswith(".zip") and uploaded == [uri]
    assert out == {"working_dir": uri, "env_vars": {"A": "1"}}  # excludes only matter here
    names = _names(store.blobs[uri])
    assert "mymod.py" in names and not any(n.startswith("data") for n in names)
    again, uploaded = package_runtime_env(env, store, base_dir=tmp_path)
    assert again["working_dir"] == uri and uploaded == [] and store.puts == 1  # unchanged: not sent again
    (proj / "data" / "big.bin").write_bytes(b"y" * 1000)  # an excluded file changed: the same package
    assert package_runtime_env(env, store, base_dir=tmp_path)[0]["working_dir"] == uri
    (proj / "mymod.py").write_text("def train(ctx):\n    return 2\n")  # the code changed: a new package
    changed, uploaded = package_runtime_env(env, store, base_dir=tmp_path)
    assert changed["working_dir"] != uri and uploaded == [changed["working_dir"]] and store.puts == 2


def test_py_modules_keep_their_directory_name_and_uris_pass_through(tmp_path):
    (tmp_path / "helpers").mkdir()
    (tmp_path / "helpers" / "__init__.py").write_text("X = 1\n")
    store = DictStore()
    out, _ = package_runtime_env({"py_modules": ["helpers", "s3://bucket/m.zip"]}, store, base_dir=tmp_path)
    assert out["py_modules"][1] == "s3://bucket/m.zip"
    assert "helpers/__init__.py" in _names(store.blobs[out["py_modules"][0]])


@pytest.mark.parametrize("env, field", [({"working_dir": "nope"}, "runtime_env.working_dir"),
                                        ({"py_modules": ["missing"]}, "runtime_env.py_modules")])
def test_a_path_that_is_no_directory_is_named(tmp_path, env, field):
    store = DictStore()
    with pytest.raises(InvalidJobSpec) as e:
        package_runtime_env(env, store, base_dir=tmp_path)
    assert e.value.field == field and store.puts == 0


class _SubmitRecorder:
    """A client whose server is a list: what ClientBase hands it after validation and packaging."""

    def __new__(cls, store):
        from raycluster.client.base import ClientBase

        class Recorder(ClientBase):
            def __init__(self):
                self.sent = []

            def package_store(self):
                return store

            def _submit(self, spec, idempotency_key):
                self.sent.append(spec)
                return {"id": "job-x", **spec}

        return Recorder()


@pytest.mark.parametrize("typo, field", [({"num_worker": 2}, "num_workers"),
                                         ({"resources": {"gpu": 1}}, "resources.gpus"),
                                         ({"runtime_env_": {}}, "runtime_env")])
def test_a_spec_with_a_typo_is_refused_before_its_directory_is_uploaded(tmp_path, monkeypatch, typo, field):
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "m.py").write_text("def train(ctx):\n    return 1\n")
    store = DictStore()
    client = _SubmitRecorder(store)
    spec = {"name": "t", "entrypoint": "m:train", "runtime_env": {"working_dir": str(tmp_path / "proj")}, **typo}
    with pytest.raises(InvalidJobSpec) as err:
        client.submit(spec)
    assert f"did you mean '{field}'" in str(err.value)
    assert store.puts == 0 and client.sent == []  # nothing uploaded, nothing submitted
    spec = {k: v for k, v in spec.items() if k not in typo}
    client.submit(spec)  # the corrected spec: uploaded, then submitted with the package's URI
    assert store.puts == 1 and client.sent[0]["runtime_env"]["working_dir"].startswith("gcs://_ray_pkg_")
