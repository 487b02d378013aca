"""`bebrjax ivf`: inverted lists over a saved index, for non-exhaustive search.

    bebrjax ivf --index OUT --out OUT.ivf --nlist 4096 [--sample 0] \
        [--iters 20] [--seed 0] [--nprobe N] [--overwrite]

See `bebrjax.search.build.build_ivf`. The index stores a default nprobe,
printed with its measured Recall@10: `--nprobe N`, or the fewest lists (1,
2, 4, ... or nlist) recalling 0.95 of the exhaustive top 10 on 256 of the
index's own codes. `bebrjax search` probes that many lists unless given
`--nprobe` (`--nprobe all`: every document). The result is still an index
directory for exhaustive search. `--out` may be `--index` itself (with
`--overwrite`).
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
    p.add_argument(
        "--nprobe", type=int, help="the default lists per search (default: measured, R@10 0.95)"
    )
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
        nprobe=args.nprobe,
        overwrite=args.overwrite,
    )
    low, median, high = summary["list_sizes"]
    recall = summary["nprobe_recall"]
    table = report.table(
        ["index", "documents", "nlist", "list size min/median/max", "nprobe", "seconds"],
        [
            [
                args.out,
                summary["documents"],
                args.nlist,
                f"{low}/{median:g}/{high}",
                f"{summary['nprobe']} ({'given' if recall is None else f'R@10 {recall:.3f}'})",
                summary["seconds"],
            ]
        ],
    )
    cli.print_summary(table, summary)


def main(argv: Sequence[str]) -> int:
    """`bebrjax ivf`; returns the exit status."""
    return cli.run(parser(), _command, argv)
