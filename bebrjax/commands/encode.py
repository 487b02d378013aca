"""`bebrjax encode`: a corpus into a binary index with a trained binarizer, resumably.

    bebrjax encode --workdir W --input PATH [--key doc] --index OUT \
        [--batch-size 8192] [--overwrite] [--version NAME] [--stored-bits B]
    bebrjax encode --workdir W --input PATH --index OUT --ids PATH[:key]  # a backfill step

See `bebrjax.inference.corpus.encode_corpus`: killed at any point, the same
command continues where it stopped; a bad input is one line on stderr, exit
status 2, and leaves nothing behind. On N processes (the start-up flags)
every process encodes its part of each batch and process 0 writes the index.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bebrjax import cli, distributed, report
from bebrjax.commands import command_parser
from bebrjax.inference.corpus import encode_corpus


def parser() -> argparse.ArgumentParser:
    """The command's flags."""
    p = command_parser("encode")
    p.add_argument("--workdir", required=True, help="a finished binarizer run")
    p.add_argument("--input", required=True, help=".npy, .npz, or a directory of <key>.npy")
    p.add_argument("--key", default="doc", help="the array in an .npz or directory (doc)")
    p.add_argument("--index", required=True, help="the index directory to write")
    p.add_argument("--batch-size", type=int, default=8192, help="rows per batch (8192)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index")
    p.add_argument(
        "--ids",
        help="PATH[:key]: a backfill step: the input's rows replace these docs of --index",
    )
    p.add_argument("--version", help="the codes' version name (default: the workdir's name)")
    p.add_argument("--stored-bits", type=int, help="store the codes' first N planes (default: all)")
    distributed.add_arguments(p)
    return p


def print_backfill(summary: dict) -> None:
    """A backfill step's summary as a table and a JSON line."""
    counts = ", ".join(f"{name}: {n}" for name, n in summary["versions"].items())
    head = ["index", "version", "replaced", "docs per version", "seconds"]
    row = [summary["index"], summary["version"], summary["replaced"], counts, summary["seconds"]]
    cli.print_summary(report.table(head, [row]), summary)


def _command(args: argparse.Namespace) -> None:
    distributed.initialize_from(args)
    summary = encode_corpus(
        args.workdir,
        args.input,
        args.index,
        key=args.key,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        ids=args.ids,
        version=args.version,
        stored_bits=args.stored_bits,
    )
    if not distributed.is_primary():
        return
    if args.ids is not None:
        print_backfill(summary)
        return
    head = ["index", "rows", "resumed from", "bits/doc", "MB", "seconds", "rows/s"]
    row = [
        summary["index"],
        summary["rows"],
        summary["resumed_from"],
        summary["m"] * (summary["u"] + 1),
        f"{summary['bytes'] / 1e6:.1f}",
        summary["seconds"],
        f"{summary['rows_per_sec']:.0f}",
    ]
    cli.print_summary(report.table(head, [row]), summary)


def main(argv: Sequence[str]) -> int:
    """`bebrjax encode`; returns the exit status."""
    return cli.run(parser(), _command, argv)
