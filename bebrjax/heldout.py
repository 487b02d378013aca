"""The held-out pairs a binarizer run evaluated on, as files the other commands read.

    python -m bebrjax.heldout --workdir W --out eval.npz [--overwrite]

writes `query` and `doc` (float32 [N, d], the eval split's embeddings as
the run's data loader gave them), `relevant` (int64 [N]: query i's relevant
doc is doc i; for pairs that share items, int64 [N, R]: every doc of query
i's item, padded with -1, as results.json scores them) and, when the data
has them, `labels`. With them, `encode` of `doc` and `search` of `query`
with `--relevant eval.npz:relevant` reproduce the binary row of the run's
results.json from the command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from bebrjax import cli
from bebrjax import workdir as wd
from bebrjax.data import PairedEmbeddings, get_data
from bebrjax.evaluators.retrieval import relevant_docs
from bebrjax.inference import LoadError, read_config
from bebrjax.trainers.binarizer import split_pairs


def held_out(workdir: str) -> PairedEmbeddings:
    """The eval pairs of the binarizer run in `workdir` (its data and split, regenerated).

    Raises:
      LoadError: when `workdir` holds no binarizer run.
      DataError: when its data cannot be read any more.
    """
    config = read_config(workdir)
    if config.get("trainer") != "binarizer":
        raise LoadError(f"{workdir}: not a binarizer run (trainer {config.get('trainer')!r})")
    _, eval_pairs = split_pairs(config, get_data(config.data))
    return eval_pairs


def write_pairs(path: str, pairs: PairedEmbeddings, overwrite: bool = False) -> None:
    """Writes `query`, `doc`, `relevant` (and `labels`) to the .npz `path`, whole.

    Raises:
      OutputExistsError: when `path` exists and `overwrite` is False.
    """
    relevant = np.arange(len(pairs)) if pairs.groups is None else relevant_docs(pairs.groups)
    arrays = {"query": pairs.query, "doc": pairs.doc, "relevant": relevant}
    if pairs.labels is not None:
        arrays["labels"] = pairs.labels
    wd.write_npz(path, arrays, overwrite)


def parser() -> argparse.ArgumentParser:
    """The command's flags."""
    p = argparse.ArgumentParser(
        prog="python -m bebrjax.heldout",
        description="Write the held-out pairs of a binarizer run to an .npz.",
    )
    p.add_argument("--workdir", required=True, help="a binarizer run")
    p.add_argument("--out", required=True, help="the .npz to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return p


def _command(args: argparse.Namespace) -> None:
    pairs = held_out(args.workdir)
    write_pairs(args.out, pairs, args.overwrite)
    print(f"{args.out}: {len(pairs)} pairs of width {pairs.dim} (query, doc, relevant)")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bebrjax.heldout`; returns the exit status."""
    return cli.run(parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
