"""Trainers: each module exposes `train_and_evaluate(config, workdir)`; `train` runs a config file.

    results = bebrjax.trainers.train("configs/bebr/demo.py:bits=2", "/tmp/run", ["train.epochs=2"])

is what `bebrjax train --config configs/bebr/demo.py:bits=2 --workdir /tmp/run
--config.train.epochs=2` runs.
"""

from __future__ import annotations

from collections.abc import Sequence

from bebrjax import workdir as wd
from bebrjax.config import apply_overrides, import_trainer, load_config
from bebrjax.errors import ConfigError


def train(config_spec: str, workdir: str, overrides: Sequence[str] = ()) -> dict | None:
    """Loads a config file, applies overrides and runs the trainer it names.

    Args:
      config_spec: `path.py[:arg]` (see `bebrjax.config.load_config`).
      workdir: the run's directory; an existing run of the same config resumes.
      overrides: `a.b=value` items, typed by the config's fields.

    Returns:
      The trainer's results (None where its trainer returns none).

    Raises:
      ConfigError: on a bad config, override or workdir path, before anything
        is written; the trainer's own errors (DataError, CheckpointError, ...).
    """
    wd.check_workdir(workdir)
    config = load_config(config_spec)
    apply_overrides(config, overrides)
    if "trainer" not in config:
        raise ConfigError(f"config '{config_spec}' names no trainer (config.trainer)")
    trainer = import_trainer(config.trainer)
    return trainer.train_and_evaluate(config, workdir)
