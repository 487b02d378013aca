import pytest

from bebrjax.config import ConfigError, apply_overrides, load_config, parse_arg


def test_parse_arg_types_values_by_their_defaults():
    arg = parse_arg("bits=3,path=a.npz,lr=1,flag=false", bits=2, path="", lr=0.5, flag=True)
    assert arg.to_dict() == {"bits": 3, "path": "a.npz", "lr": 1.0, "flag": False}
    assert parse_arg(None, bits=2).bits == 2


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
