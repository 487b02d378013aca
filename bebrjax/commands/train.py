"""`bebrjax train --config FILE.py[:ARG] --workdir DIR [--config.KEY=VALUE ...]`: run a config.

The config names its trainer; `bebrjax.trainers.train` imports
`bebrjax.trainers.<config.trainer>` and runs its `train_and_evaluate(config,
workdir)`. Every `--config.a.b=value` is an override, typed by the field it
sets (`bebrjax.config.apply_overrides`). A bad config, override or input
file ends the program with a one-line error and exit status 2, before
anything is written to the workdir; so does a workdir whose checkpoints all
fail to read (they are left as they are).

On N processes every process runs the same command with the start-up
flags of `bebrjax.distributed` (`--coordinator HOST:PORT --num_processes N
--process_id I`, or the environment variables JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID), or `--distributed` on a cluster JAX
detects (SLURM, TPU VM, Open MPI); `launch/` has a script for each.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

from bebrjax import cli, distributed
from bebrjax.commands import command_parser
from bebrjax.trainers import train

OVERRIDE = "--config."


def parser() -> argparse.ArgumentParser:
    """The command's flags (the overrides are taken by `main`)."""
    p = command_parser(
        "train",
        usage="bebrjax train --config FILE.py[:ARG] --workdir DIR [--config.KEY=VALUE ...] "
        "[multi-process start-up flags]",
        epilog="--config.KEY=VALUE overrides any field of the config, typed by its default.",
    )
    p.add_argument("--config", required=True, help="config file, optionally with ':arg'")
    p.add_argument("--workdir", required=True, help="directory for checkpoints, metrics, results")
    distributed.add_arguments(p)
    return p


def _command(args: argparse.Namespace) -> None:
    distributed.initialize_from(args)
    results = train(args.config, args.workdir, args.overrides)
    if results is None or not distributed.is_primary():
        return
    print()
    with open(os.path.join(args.workdir, "results.md")) as f:
        print(f.read())
    print(f"results: {os.path.join(args.workdir, 'results.json')}")
    if "train" in results:
        print(json.dumps(results["train"]))


def main(argv: Sequence[str]) -> int:
    """`bebrjax train`; returns the exit status."""
    p = parser()
    args, extra = p.parse_known_args(argv)
    unknown = [a for a in extra if not a.startswith(OVERRIDE)]
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = [a[len(OVERRIDE) :] for a in extra]
    return cli.execute(_command, args)
