"""`bebrjax heldout --workdir W --out eval.npz [--overwrite]`: a run's held-out pairs as a file.

The file holds `query`, `doc`, `relevant` (and `labels`), see
`bebrjax.inference.heldout`: `bebrjax encode` of its `doc` and `bebrjax
search` of its `query` with `--relevant eval.npz:relevant` reproduce the
binary row of the run's results.json.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bebrjax import cli
from bebrjax.commands import command_parser
from bebrjax.inference.heldout import held_out, write_pairs


def parser() -> argparse.ArgumentParser:
    """The command's flags."""
    p = command_parser("heldout")
    p.add_argument("--workdir", required=True, help="a binarizer run")
    p.add_argument("--out", required=True, help="the .npz to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return p


def _command(args: argparse.Namespace) -> None:
    pairs = held_out(args.workdir)
    write_pairs(args.out, pairs, args.overwrite)
    print(f"{args.out}: {len(pairs)} pairs of width {pairs.dim} (query, doc, relevant)")


def main(argv: Sequence[str]) -> int:
    """`bebrjax heldout`; returns the exit status."""
    return cli.run(parser(), _command, argv)
