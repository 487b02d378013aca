import glob
import json
import os
import pathlib

import ml_collections
import pytest

from bebrjax.config import (
    ConfigError,
    apply_overrides,
    check_fields,
    in_range,
    load_config,
    parse_arg,
)
from bebrjax.trainers import compatible_preflight

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every config file resolved with its default and a few `:arg`s (and each stage of the
# compatible configs), as the recipes stood when they moved from the trainers into the
# config files: "spec" or "spec#stage" -> the config, tuples as {"tuple": [...]}.
SNAPSHOT = os.path.join(ROOT, "tests", "data", "config_snapshot.json")
with open(SNAPSHOT) as f:
    RECIPES = json.load(f)


def plain(value):
    """A config as JSON keeps it, tuples told apart from lists."""
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if isinstance(value, dict):
        return {key: plain(x) for key, x in value.items()}
    if isinstance(value, tuple):
        return {"tuple": [plain(x) for x in value]}
    if isinstance(value, list):
        return [plain(x) for x in value]
    return value


def resolve(name: str):
    """The config of a snapshot entry: `spec` or `spec#stage` (`#old<new`: groups from new)."""
    spec, _, stage = name.partition("#")
    config = load_config(os.path.join(ROOT, spec))
    if not stage:
        return config
    stage, _, groups_from = stage.partition("<")
    return compatible_preflight.stage_config(config, stage, groups_from or None)


def dumped(config) -> str:
    """JSON text of a plain config, where 1 and 1.0, or 1 and true, differ."""
    return json.dumps(config, indent=1, sort_keys=True)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_config_files_resolve_to_their_recorded_recipes(name):
    assert dumped(plain(resolve(name))) == dumped(RECIPES[name])


def test_every_config_file_is_in_the_snapshot():
    files = sorted(
        os.path.relpath(path, ROOT)
        for path in glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True)
        if "def get_config" in pathlib.Path(path).read_text()
    )
    assert files == sorted({name.partition(":")[0].partition("#")[0] for name in RECIPES})


@pytest.mark.parametrize(
    "spec",
    sorted({name.partition("#")[0] for name in RECIPES if ":" not in name}),
)
def test_every_config_refuses_misspelled_and_mistyped_overrides(spec):
    config = load_config(os.path.join(ROOT, spec))
    with pytest.raises(ConfigError, match="'eval.batch_sise' is unknown"):
        apply_overrides(config, ["eval.batch_sise=64"])
    with pytest.raises(ConfigError, match="'eval.batch_size': expected int"):
        apply_overrides(config, ["eval.batch_size=64.5"])


@pytest.mark.parametrize(
    "spec, message",
    [
        ("configs/bebr/demo.py:bits=5", "'bits' = 5: must be in [1, 4] (u = bits - 1)"),
        ("configs/bebr/reference.py:bits=0", "'bits' = 0: must be in [1, 4]"),
        ("configs/bebr/compatible.py:old_bits=5", "'old_bits' = 5: must be in [0, 4] (0: bits)"),
        ("configs/upgrade/bct.py:data=cifar", "'data' = 'cifar'"),
        ("configs/upgrade/dmu.py:backbone=vit", "'backbone' = 'vit'"),
    ],
)
def test_config_arguments_out_of_range_are_refused(spec, message):
    with pytest.raises(ConfigError) as info:
        load_config(os.path.join(ROOT, spec))
    assert message in str(info.value)


def test_check_fields_names_the_missing_unknown_or_mistyped_key():
    fields = dict(seed=int, data=dict, optim=dict(lr=float, decay_at=tuple))
    good = dict(seed=0, data=dict(anything="x"), optim=dict(lr=0.1, decay_at=(0.6,)))
    check_fields(ml_collections.ConfigDict(good), fields)
    for bad, message in [
        (dict(good, optim=dict(lr=0.1)), "'optim.decay_at' is missing"),
        (dict(good, optim=dict(good["optim"], lrr=1.0)), "'optim.lrr' is unknown"),
        (dict(good, optim=dict(good["optim"], lr=1)), "'optim.lr' = 1: expected float"),
        (dict(good, seed=True), "'seed' = True: expected int"),
        (dict(good, data=3), "'data' = 3: expected a section"),
    ]:
        with pytest.raises(ConfigError, match=message):
            check_fields(ml_collections.ConfigDict(bad), fields)


def test_a_config_file_missing_a_key_of_its_trainer_is_refused_on_loading(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text(
        "import ml_collections\n\n\ndef get_config():\n"
        "    return ml_collections.ConfigDict(dict(seed=0, trainer='binarizer'))\n"
    )
    with pytest.raises(ConfigError, match="'data' is missing"):
        load_config(str(broken))


def test_parse_arg_types_values_by_their_defaults():
    arg = parse_arg("bits=3,path=a.npz,lr=1,flag=false", bits=2, path="", lr=0.5, flag=True)
    assert arg.to_dict() == {"bits": 3, "path": "a.npz", "lr": 1.0, "flag": False}
    assert parse_arg(None, bits=2).bits == 2
    assert in_range(parse_arg("bits=4", bits=2), "bits", 1, 4, "u = bits - 1") == 4


@pytest.mark.parametrize(
    "arg, message",
    [("nope=1", "'nope' is unknown"), ("bits=two", "'bits': expected int"), ("bits", "key=value")],
)
def test_parse_arg_errors_name_the_key(arg, message):
    with pytest.raises(ConfigError, match=message):
        parse_arg(arg, bits=2)


def test_overrides_are_typed_and_unknown_keys_fail(tiny_config):
    config = tiny_config()
    apply_overrides(config, ["optim.lr=0.5", "eval.ks=(1,2)", "loss.mask_same_label=true"])
    assert config.optim.lr == 0.5 and config.eval.ks == (1, 2) and config.loss.mask_same_label
    with pytest.raises(ConfigError, match="'optim.lrr' is unknown"):
        apply_overrides(config, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="'nothere' is unknown"):
        apply_overrides(config, ["nothere.x=1"])
    with pytest.raises(ConfigError, match="'train.steps': expected int"):
        apply_overrides(config, ["train.steps=1.5"])


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.py"))
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="no get_config"):
        load_config(str(bad))
