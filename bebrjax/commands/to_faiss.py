"""`bebrjax to-faiss`: a saved index as a faiss index file (the same documents and ids).

    bebrjax to-faiss --index DIR --out FILE [--kind flat|ivf|hnsw] \
        [--nlist N] [--hnsw-m M] [--overwrite]

See `bebrjax.search.build.write_faiss`: FILE is never half-written, and an
existing FILE is kept unless `--overwrite`. A bad index, flag or output
path, or faiss missing, is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bebrjax import cli
from bebrjax.commands import command_parser
from bebrjax.search.build import write_faiss


def parser() -> argparse.ArgumentParser:
    """The command's flags."""
    p = command_parser("to-faiss")
    p.add_argument("--index", required=True, help="a saved BinaryIndex directory")
    p.add_argument("--out", required=True, help="the faiss index file to write")
    p.add_argument("--kind", default="flat", help="flat, ivf or hnsw (flat)")
    p.add_argument("--nlist", type=int, help="inverted lists of ivf (default ~4 sqrt(docs))")
    p.add_argument("--hnsw-m", type=int, default=32, help="graph neighbours of hnsw (32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return p


def _command(args: argparse.Namespace) -> None:
    summary = write_faiss(
        args.index,
        args.out,
        args.kind,
        nlist=args.nlist,
        hnsw_m=args.hnsw_m,
        overwrite=args.overwrite,
    )
    line = (
        f"wrote {summary['documents']} documents as faiss {summary['faiss_class']} "
        f"({summary['kind']}) to {summary['out']}: {summary['bytes']} bytes, "
        f"{summary['seconds']} s"
    )
    cli.print_summary(line, summary)


def main(argv: Sequence[str]) -> int:
    """`bebrjax to-faiss`; returns the exit status."""
    return cli.run(parser(), _command, argv)
