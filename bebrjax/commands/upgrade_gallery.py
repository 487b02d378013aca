"""`bebrjax upgrade-gallery`: an index's stored old codes to the new version by psi, no raw data.

    bebrjax upgrade-gallery --workdir W --index OUT [--ids PATH[:key]] \
        [--from old] [--version psi] [--batch-size 8192]

W is a finished compatible-codes run (`configs/bebr/compatible.py`); see
`bebrjax.inference.gallery.upgrade_gallery`. The index is rewritten
crash-safely: killed at any point, OUT holds the old index or the upgraded one.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bebrjax import cli
from bebrjax.commands import command_parser
from bebrjax.commands.encode import print_backfill
from bebrjax.inference.gallery import upgrade_gallery


def parser() -> argparse.ArgumentParser:
    """The command's flags."""
    p = command_parser("upgrade-gallery")
    p.add_argument("--workdir", required=True, help="a finished compatible-codes run")
    p.add_argument("--index", required=True, help="the index to upgrade in place")
    p.add_argument("--ids", help="PATH[:key]: only these documents (default: all of --from)")
    p.add_argument("--from", dest="source", default="old", help="the old codes' version (old)")
    p.add_argument("--version", default="psi", help="the upgraded codes' version (psi)")
    p.add_argument("--batch-size", type=int, default=8192, help="rows per batch (8192)")
    return p


def _command(args: argparse.Namespace) -> None:
    summary = upgrade_gallery(
        args.workdir,
        args.index,
        ids=args.ids,
        source=args.source,
        version=args.version,
        batch_size=args.batch_size,
    )
    print_backfill(summary)


def main(argv: Sequence[str]) -> int:
    """`bebrjax upgrade-gallery`; returns the exit status."""
    return cli.run(parser(), _command, argv)
