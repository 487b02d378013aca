"""Runs a config: `python -m bebrjax.main --config FILE.py[:ARG] --workdir DIR [--config.k=v]`.

On N processes every process runs the same command with its start-up
flags (`bebrjax.distributed`): `--coordinator HOST:PORT --num_processes N
--process_id I` (or the environment variables JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID), or `--distributed` on a cluster JAX
detects (SLURM, TPU VM, Open MPI); `launch/` has a script for each.

The config names its trainer; `bebrjax.trainers.<config.trainer>` is imported
and its `train_and_evaluate(config, workdir)` runs. A bad config, override
or input file ends the program with a one-line error and exit status 2,
before anything is written to the workdir; so does a workdir whose
checkpoints all fail to read (they are left as they are).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging

from bebrjax import cli, distributed
from bebrjax import workdir as wd
from bebrjax.config import ConfigError, apply_overrides, import_plugin, load_config

_CONFIG = flags.DEFINE_string("config", None, "Config file, optionally with ':arg'.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator", None, "host:port of process 0 (or JAX_COORDINATOR_ADDRESS)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes (or JAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id (or JAX_PROCESS_ID).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Detect the cluster (SLURM, TPU VM, Open MPI) and start on it."
)
flags.mark_flags_as_required(["config", "workdir"])

_OVERRIDE = "--config."


USAGE = (
    "usage: python -m bebrjax.main --config FILE.py[:ARG] --workdir DIR [--config.KEY=VALUE ...]"
    " [--coordinator HOST:PORT --num_processes N --process_id I | --distributed]"
)


def _parse_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """Absl flags, with `--config.a.b=value` overrides taken out first.

    A missing or malformed flag prints the usage line and the problem, exit 2.
    """
    overrides = [a[len(_OVERRIDE) :] for a in argv[1:] if a.startswith(_OVERRIDE)]
    try:
        rest = flags.FLAGS([argv[0], *(a for a in argv[1:] if not a.startswith(_OVERRIDE))])
    except flags.Error as e:
        print(f"{USAGE}\nerror: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    return rest, overrides


def run(config_spec: str, workdir: str, overrides: list[str]) -> dict | None:
    """Loads the config, applies overrides and runs its trainer."""
    wd.check_workdir(workdir)
    config = load_config(config_spec)
    apply_overrides(config, overrides)
    if "trainer" not in config:
        raise ConfigError(f"config '{config_spec}' names no trainer (config.trainer)")
    trainer = import_plugin("bebrjax.trainers", config.trainer, "trainer")
    return trainer.train_and_evaluate(config, workdir)


def main(parsed: tuple[list[str], list[str]]) -> None:
    """Entry point for `app.run`."""
    rest, overrides = parsed
    if len(rest) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(rest[1:])}")
    logging.set_verbosity(logging.WARNING)

    def start_and_run() -> dict | None:
        flags_given = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        distributed.initialize(*flags_given, detect=_DISTRIBUTED.value)
        return run(_CONFIG.value, _WORKDIR.value, overrides)

    status, results = cli.attempt(start_and_run)
    if status:
        sys.exit(status)
    if results is None or not distributed.is_primary():
        return
    print()
    print(open(os.path.join(_WORKDIR.value, "results.md")).read())
    print(f"results: {os.path.join(_WORKDIR.value, 'results.json')}")
    if "train" in results:
        print(json.dumps(results["train"]))


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
