"""Build inverted lists over a saved index, for non-exhaustive search.

    python -m bebrjax.ivf --index OUT --out OUT.ivf --nlist 4096 [--sample 0] \
        [--iters 20] [--seed 0] [--overwrite]

Trains the coarse quantizer (spherical k-means, `bebrjax.search.kmeans`) on
a seeded sample of the index's decoded codes (256 per list unless
`--sample`), assigns every document to its nearest centroid and writes an
IVF index (`bebrjax.search.ivf`): the index's files plus `ivf.json`,
`centroids.npy` and `lists.npy`, written whole or not at all. The result is
still a `BinaryIndex` directory for exhaustive search; `python -m
bebrjax.search --nprobe N` searches its N nearest lists. `--out` may be
`--index` itself (with `--overwrite`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np

from bebrjax import cli, report
from bebrjax import workdir as wd
from bebrjax.data.pairs import DataError
from bebrjax.search import BinaryIndex, IVFIndex


def build_ivf(
    index: str,
    out: str,
    nlist: int,
    *,
    sample: int = 0,
    iters: int = 20,
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    """Builds and saves an IVF index over the documents of the saved index `index`.

    Args:
      index: a saved `BinaryIndex` directory (e.g. what `bebrjax.encode` wrote).
      out: the IVF index directory to write (may be `index`, with overwrite).
      nlist: inverted lists, 1..documents.
      sample: training points (0: 256 per list, or every document if fewer).
      iters: k-means iterations.
      seed: the sample's and the initial centroids' draw.
      overwrite: replace an existing `out`.

    Returns:
      A summary: documents, nlist, list sizes (min, median, max), seconds.

    Raises:
      IndexFormatError: when `index` is not a readable index.
      DataError: for nlist, sample or iters out of range.
      OutputExistsError: when `out` exists and overwrite is False.
    """
    clock = time.perf_counter()
    wd.refuse_existing(out, overwrite, directory=True)
    codes = BinaryIndex.load(index)
    if not isinstance(nlist, int) or not 1 <= nlist <= codes.ntotal:
        raise DataError(f"nlist={nlist} must be in [1, {codes.ntotal}] (the index's documents)")
    if sample < 0 or iters < 0:
        raise DataError(f"sample={sample} and iters={iters} must be >= 0")
    try:
        ivf = IVFIndex.from_index(codes, nlist, iters=iters, seed=seed, sample=sample)
    except ValueError as e:
        raise DataError(f"{index}: {e}") from None
    ivf.save(out)
    sizes = ivf.list_sizes()
    return {
        "index": out,
        "documents": ivf.ntotal,
        "nlist": nlist,
        "list_sizes": [int(sizes.min()), float(np.median(sizes)), int(sizes.max())],
        "seconds": round(time.perf_counter() - clock, 2),
    }


def parser() -> argparse.ArgumentParser:
    """The command's flags."""
    p = argparse.ArgumentParser(prog="python -m bebrjax.ivf", description=__doc__.split("\n", 1)[0])
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


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bebrjax.ivf`; returns the exit status."""
    return cli.run(parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
