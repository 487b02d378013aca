"""Config files, their `:arg` string and `--config.key=value` overrides.

A config is a Python file with `get_config(arg=None)` returning an
`ml_collections.ConfigDict` (the big_vision convention) that writes out its
whole recipe. The text after `:` in `--config path.py:bits=2,steps=200` is
handed to `get_config`, which types it with `parse_arg` against its defaults.
A trainer declaring `FIELDS` (its keys and their types) has every config
naming it checked against them on loading (`check_fields`). Overrides
`--config.a.b=value` are typed by the existing field. Every mistake raises
`ConfigError` naming the key.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ml_collections

from bebrjax.errors import ConfigError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def coerce(key: str, text: str, default: Any) -> Any:
    """Parses `text` into the type of `default`.

    Args:
      key: the key being set, for error messages.
      text: the value as written on the command line.
      default: the current value; its type decides the parse. `None` accepts a
        Python literal or, failing that, the raw string.

    Returns:
      The typed value.

    Raises:
      ConfigError: when `text` is not a valid value of that type.
    """
    if isinstance(default, str):
        return text
    if isinstance(default, bool):
        low = text.strip().lower()
        if low in _TRUE | _FALSE:
            return low in _TRUE
        raise ConfigError(f"config key '{key}': expected a boolean (true/false), got {text!r}")
    if not (default is None or isinstance(default, int | float | tuple | list)):
        raise ConfigError(f"config key '{key}' holds a {type(default).__name__}; set its fields")
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        if default is None:
            return text
        raise ConfigError(
            f"config key '{key}': expected {type(default).__name__}, got {text!r}"
        ) from None
    if default is None:
        return value
    if isinstance(default, float) and type(value) is int:
        value = float(value)
    if isinstance(default, tuple | list) and isinstance(value, tuple | list):
        value = type(default)(value)
    if type(value) is not type(default):
        raise ConfigError(f"config key '{key}': expected {type(default).__name__}, got {text!r}")
    return value


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses the `:arg` text of a config file against typed defaults.

    Args:
      arg: text like `"bits=2,steps=200"`; `None` or empty keeps the defaults.
      **defaults: every accepted key with its default value (which types it).

    Returns:
      A ConfigDict with one entry per default.

    Raises:
      ConfigError: on an unknown key, a missing `=`, or a badly typed value.
    """
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"config argument {item!r}: expected key=value")
        if key not in defaults:
            raise ConfigError(
                f"config argument '{key}' is unknown; known: {', '.join(sorted(defaults))}"
            )
        out[key] = coerce(key, text, defaults[key])
    return ml_collections.ConfigDict(out)


def in_range(arg: ml_collections.ConfigDict, key: str, low: int, high: int, note: str) -> int:
    """`arg[key]`, a parsed `:arg` value, refused outside [low, high].

    Args:
      arg: the parsed arguments (`parse_arg`).
      key: the argument.
      low: the least value accepted.
      high: the greatest value accepted.
      note: what the value means, for the message (e.g. "u = bits - 1").

    Raises:
      ConfigError: naming the argument, the range and the note.
    """
    value = arg[key]
    if not low <= value <= high:
        raise ConfigError(f"config argument '{key}' = {value}: must be in [{low}, {high}] ({note})")
    return value


Fields = Mapping[str, Any]


def check_fields(config: ml_collections.ConfigDict, fields: Fields, prefix: str = "") -> None:
    """Checks that `config` has exactly the keys of `fields`, each of its type.

    Args:
      config: the config (or a section of it).
      fields: key -> its type (int, float, str, bool or tuple), `dict` for a
        section whose keys are another module's (e.g. a data plug-in's), or a
        nested mapping of the section's own fields.
      prefix: the dotted path of `config`, for messages.

    Raises:
      ConfigError: naming the first key missing, unknown or of another type.
    """
    unknown = sorted(set(config) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"config key '{prefix}{unknown[0]}' is unknown; known here: {known}")
    for key, kind in fields.items():
        name = f"{prefix}{key}"
        if key not in config:
            raise ConfigError(f"config key '{name}' is missing")
        value = config[key]
        if isinstance(kind, Mapping) or kind is dict:
            if not isinstance(value, Mapping | ml_collections.ConfigDict):
                raise ConfigError(f"config key '{name}' = {value!r}: expected a section")
            if kind is not dict:
                check_fields(value, kind, f"{name}.")
        elif type(value) is not kind:
            raise ConfigError(f"config key '{name}' = {value!r}: expected {kind.__name__}")


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads `path.py[:arg]` by calling the file's `get_config(arg)`.

    A config naming a trainer (`trainer`) whose module declares `FIELDS` is
    checked against them (`check_fields`).

    Raises:
      ConfigError: when the file is missing, has no `get_config`, rejects
        `arg`, or returns a config its trainer cannot take.
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file '{path}' does not exist")
    module_spec = importlib.util.spec_from_file_location("bebrjax_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file '{path}' defines no get_config(arg=None)")
    config = module.get_config(arg) if arg else module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"config file '{path}': get_config returned {type(config).__name__}")
    if isinstance(config.get("trainer"), str):
        trainer = import_trainer(config.trainer)
        if hasattr(trainer, "FIELDS"):
            check_fields(config, trainer.FIELDS)
    return config


def config_module(config_file: str, name: str) -> types.ModuleType:
    """The module `<name>.py` beside `config_file`: a config's shared recipe.

    Config files are loaded by path (`load_config`), not imported from a
    package, so a part several configs share (e.g. configs/upgrade/common.py)
    is loaded the same way: `common = config_module(__file__, "common")`.

    Raises:
      ConfigError: when there is no such file.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
    if not os.path.isfile(path):
        raise ConfigError(f"config module '{path}' (beside '{config_file}') does not exist")
    spec = importlib.util.spec_from_file_location(f"bebrjax_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
    """Applies `a.b=value` overrides in place, typed by the existing fields.

    Raises:
      ConfigError: on an unknown key or a value of the wrong type.
    """
    for item in overrides:
        dotted, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"config override {item!r}: expected --config.key=value")
        *parents, leaf = dotted.split(".")
        node = config
        for i, part in enumerate(parents):
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                raise ConfigError(
                    f"config key '{'.'.join(parents[: i + 1])}' is unknown (in override {item!r})"
                )
            node = node[part]
        if leaf not in node:
            known = ", ".join(sorted(node.keys()))
            raise ConfigError(f"config key '{dotted}' is unknown; known here: {known}")
        node[leaf] = coerce(dotted, text, node[leaf])


def import_plugin(package: str, name: str, key: str):
    """Imports the plug-in module `<package>.<name>` that config key `key` names.

    Raises:
      ConfigError: when there is no such module (an import error inside an
        existing module is raised as is).
    """
    module_name = f"{package}.{name}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        raise ConfigError(f"config key '{key}' = {name!r}: no module {module_name}") from None


# Config key `trainer` -> its module under `bebrjax.trainers` where that is not the name itself.
TRAINER_MODULES = {"upgrade_compare": "upgrade.compare"}


def import_trainer(name: str) -> types.ModuleType:
    """The trainer module that config key `trainer` names (`TRAINER_MODULES`).

    Raises:
      ConfigError: when there is no such trainer.
    """
    return import_plugin("bebrjax.trainers", TRAINER_MODULES.get(name, name), "trainer")


def lookup(config: ml_collections.ConfigDict, dotted: str) -> Any:
    """The value at a dotted key, e.g. `lookup(config, "optim.lr")`."""
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


Rule = tuple[str, Callable[[Any], bool], str]

# Rules every trainer shares: the `train` and `eval` sections.
TRAIN_RULES: tuple[Rule, ...] = (
    ("train.batch_size", lambda v: v > 0, "> 0"),
    ("train.epochs", lambda v: v > 0, "> 0"),
    ("train.steps", lambda v: v >= 0, ">= 0 (0: train.epochs epochs)"),
    ("train.log_every", lambda v: v > 0, "> 0"),
    ("train.checkpoint_every", lambda v: v > 0, "> 0"),
    ("train.keep_checkpoints", lambda v: v > 0, "> 0"),
    ("eval.ks", lambda v: len(v) > 0 and min(v) > 0, "positive integers"),
    ("eval.batch_size", lambda v: v > 0, "> 0"),
)


def check_rules(config: ml_collections.ConfigDict, rules: Iterable[Rule]) -> None:
    """Raises ConfigError naming the first key whose value breaks its rule.

    Args:
      config: the config to check.
      rules: (dotted key, predicate, what the value must be).
    """
    for key, ok, need in rules:
        value = lookup(config, key)
        try:
            good = ok(value)
        except TypeError:
            good = False
        if not good:
            raise ConfigError(f"config key '{key}' = {value!r}: must be {need}")


def to_dict(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-ready plain dict of a config (tuples become lists)."""
    plain = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    return json.loads(json.dumps(plain))


def diff_keys(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain nested dicts."""
    keys = []
    for key in sorted(set(a) | set(b)):
        name = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            keys += diff_keys(va, vb, f"{name}.")
        elif va != vb:
            keys.append(name)
    return keys


def check_ks(ks: Iterable[int], gallery: int, items: str) -> None:
    """Refuses a Recall@k whose k reaches the gallery, where it is 1.0 by construction.

    Args:
      ks: the config's eval.ks.
      gallery: the number of items searched.
      items: what they are, for the message (e.g. "held-out pairs").

    Raises:
      ConfigError: naming eval.ks.
    """
    k = max(ks)
    if k >= gallery:
        raise ConfigError(
            f"config key 'eval.ks': Recall@{k} needs more than {gallery} {items} "
            "(at k >= the gallery size every query finds its match)"
        )
