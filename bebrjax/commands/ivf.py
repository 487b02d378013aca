"""`bebrjax ivf`: inverted lists over a saved index, for non-exhaustive search.

    bebrjax ivf --index OUT --out OUT.ivf --nlist 4096 [--sample 0] \
        [--iters 20] [--seed 0] [--overwrite]

See `bebrjax.search.build.build_ivf`. The result is still an index directory
for exhaustive search; `bebrjax search --nprobe N` searches its N nearest
lists. `--out` may be `--index` itself (with `--overwrite`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bebrjax import cli, report
from bebrjax.commands import command_parser
from bebrjax.search.build import build_ivf


def parser() -> argparse.ArgumentParser:
    """The command's flags."""
    p = command_parser("ivf")
    p.add_argument("--index", required=True, help="a saved BinaryIndex directory")
    p.add_argument("--out", required=True, help="the IVF index directory to write")
    p.add_argument("--nlist", type=int, required=True, help="inverted lists (e.g. 4 sqrt(N))")
    p.add_argument("--sample", type=int, default=0, help="training points (0: 256 per list)")
    p.add_argument("--iters", type=int, default=20, help="k-means iterations (20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return p


def _command(args: argparse.Namespace) -> None:
    summary = build_ivf(
        args.index,
        args.out,
        args.nlist,
        sample=args.sample,
        iters=args.iters,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    low, median, high = summary["list_sizes"]
    table = report.table(
        ["index", "documents", "nlist", "list size min/median/max", "seconds"],
        [
            [
                args.out,
                summary["documents"],
                args.nlist,
                f"{low}/{median:g}/{high}",
                summary["seconds"],
            ]
        ],
    )
    cli.print_summary(table, summary)


def main(argv: Sequence[str]) -> int:
    """`bebrjax ivf`; returns the exit status."""
    return cli.run(parser(), _command, argv)
