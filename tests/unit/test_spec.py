"""Job spec validation: every bad field gives an error naming it."""

import json

import pytest

from raycluster.errors import InvalidJobSpec
from raycluster.spec import load_spec, parse_spec

GOOD = {"name": "cnn", "entrypoint": "jobs.cnn:train"}


def test_defaults():
    s = parse_spec(GOOD)
    assert s.num_workers == 1 and s.priority == 50 and s.resources.cpus == 1.0
    assert s.placement_strategy.value == "PACK" and s.checkpoint.keep_last == 3
    assert s.bundles() == [{"CPU": 1.0}]


def test_bundle_shape():
    s = parse_spec({**GOOD, "num_workers": 2, "resources": {"gpus": 0.5, "cpus": 2, "memory_mb": 512}})
    assert s.bundles() == [{"CPU": 2.0, "GPU": 0.5, "memory": 512 * 1024 * 1024}] * 2


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"entrypoint": None}, "entrypoint"),
        ({"entrypoint": "no_colon"}, "entrypoint"),
        ({"entrypoint": "a.b:c d"}, "entrypoint"),
        ({"priority": -1}, "priority"),
        ({"priority": 100000}, "priority"),
        ({"priority": "high"}, "priority"),
        ({"num_workers": -2}, "num_workers"),
        ({"num_workers": 0}, "num_workers"),
        ({"bogus": 1}, "bogus"),
        ({"resources": {"gpus": -1}}, "resources.gpus"),
        ({"resources": {"gpus": 1.5}}, "resources.gpus"),
        ({"resources": {"cpus": 0}}, "resources.cpus"),
        ({"resources": {"tpus": 1}}, "resources.tpus"),
        ({"placement_strategy": "RANDOM"}, "placement_strategy"),
        ({"max_restarts": -1}, "max_restarts"),
        ({"max_user_retries": 99}, "max_user_retries"),
        ({"checkpoint": {"every_steps": 0}}, "checkpoint.every_steps"),
        ({"checkpoint": {"keep_last": 0}}, "checkpoint.keep_last"),
        ({"max_runtime_s": 0}, "max_runtime_s"),
        ({"name": ""}, "name"),
        ({"name": "has space"}, "name"),
        ({"config": {"x": {1, 2}}}, "config"),
    ],
)
def test_invalid_fields_are_named(patch, field):
    data = {**GOOD, **patch}
    if patch.get("entrypoint", "") is None:
        del data["entrypoint"]
    with pytest.raises(InvalidJobSpec) as ei:
        parse_spec(data)
    assert ei.value.field == field
    assert field in str(ei.value)


def test_missing_entrypoint_message():
    with pytest.raises(InvalidJobSpec, match="entrypoint: required field is missing"):
        parse_spec({"name": "x"})


def test_not_a_mapping_and_bad_json():
    with pytest.raises(InvalidJobSpec, match="mapping"):
        parse_spec([1, 2])
    with pytest.raises(InvalidJobSpec, match="not valid JSON"):
        parse_spec("{nope")


def test_load_yaml_and_json(tmp_path):
    y = tmp_path / "a.yaml"
    y.write_text("name: a\nentrypoint: jobs.toy:noop\nnum_workers: 2\n")
    assert load_spec(y).num_workers == 2
    j = tmp_path / "b.json"
    j.write_text(json.dumps({**GOOD, "priority": 7}))
    assert load_spec(j).priority == 7
    bad = tmp_path / "c.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(InvalidJobSpec, match="cannot parse"):
        load_spec(bad)
    with pytest.raises(InvalidJobSpec, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")


def test_shipped_example_specs_are_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs" / "jobs"
    specs = sorted(root.glob("*.yaml"))
    assert len(specs) >= 3
    priorities = {load_spec(p).priority for p in specs}
    assert len(priorities) >= 3  # the demo's jobs have different priorities


@pytest.mark.parametrize("items, want", [
    (["config.lr=0.01"], {"config": {"lr": 0.01, "depth": 2}}),
    (["num_workers=4", "name=other"], {"num_workers": 4, "name": "other"}),
    (["resources.gpus=0.5"], {"resources": {"gpus": 0.5}}),
    (["config.layers=[64, 32]", "config.note=a=b"], {"config": {"layers": [64, 32], "note": "a=b", "depth": 2}}),
])
def test_submit_set_overrides_spec_fields(items, want):
    from raycluster.spec import apply_overrides

    base = {"name": "j", "entrypoint": "m:f", "config": {"depth": 2}}
    out = apply_overrides(base, items)
    assert {k: out[k] for k in want} == want
    assert base["config"] == {"depth": 2}  # the file's spec is left as it was
    parse_spec(out)


@pytest.mark.parametrize("item, says", [("lr", "expected KEY=VALUE"), ("=3", "expected KEY=VALUE"),
                                        ("config..lr=1", "expected KEY=VALUE"), ("name.x=1", "name is not a mapping"),
                                        ("config.lr=[1", "not YAML")])
def test_submit_set_refuses_bad_items_by_name(item, says):
    from raycluster.spec import apply_overrides

    with pytest.raises(InvalidJobSpec, match=says):
        apply_overrides({"name": "j", "entrypoint": "m:f", "config": {}}, [item])


@pytest.mark.parametrize("patch, says", [
    ({"num_worker": 2}, "num_worker: unknown field (did you mean 'num_workers'?)"),
    ({"checkpoint": {"every_step": 2}}, "checkpoint.every_step: unknown field (did you mean 'checkpoint.every_steps'?)"),
    ({"trials": {"config": [{}]}}, "did you mean 'trials.configs'?"),
    ({"runtime_env": {"env_var": {}}}, "did you mean 'env_vars'?"),
    ({"zzzz": 1}, "zzzz: unknown field"),
])
def test_unknown_fields_say_what_was_meant(patch, says):
    with pytest.raises(InvalidJobSpec) as err:
        parse_spec({"name": "j", "entrypoint": "m:f", **patch})
    assert says in str(err.value)
    if "did you mean" not in says:
        assert "did you mean" not in str(err.value)
