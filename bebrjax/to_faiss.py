"""Write a saved `BinaryIndex` as a faiss index file.

    python -m bebrjax.to_faiss --index DIR --out FILE [--kind flat|ivf|hnsw] \
        [--nlist N] [--hnsw-m M] [--overwrite]

The faiss index holds the same documents with the same ids (see
`bebrjax.search.handoff` for the index types and how their scores relate to
bebrjax's): codes of u = 0 are written with `faiss.write_index_binary`
(read back with `faiss.read_index_binary`), codes of u >= 1 with
`faiss.write_index` (`faiss.read_index`). FILE is written beside itself and
moved into place when complete, so it is never half-written; an existing
FILE is kept unless `--overwrite` is given. A bad index, flag or output
path, or faiss missing, is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from collections.abc import Sequence

from bebrjax import cli
from bebrjax import workdir as wd
from bebrjax.errors import ConfigError, DataError
from bebrjax.search import BinaryIndex, handoff, safe_write


def write_faiss(
    index_path: str,
    out: str,
    kind: str = "flat",
    *,
    nlist: int | None = None,
    hnsw_m: int = 32,
    overwrite: bool = False,
) -> dict:
    """Builds the faiss index of the saved index at `index_path` and writes it to `out`.

    Args:
      index_path: a saved `BinaryIndex` directory.
      out: the faiss index file to write.
      kind: "flat", "ivf" or "hnsw" (`handoff.to_faiss`).
      nlist: the inverted lists of "ivf" (default: from the documents).
      hnsw_m: the graph's neighbours per node of "hnsw".
      overwrite: replace an existing file `out` (never a directory).

    Returns:
      A summary: out, documents, kind, faiss_class, bytes, seconds.

    Raises:
      ConfigError: for a bad kind, nlist or hnsw_m;
      IndexFormatError: when `index_path` is no readable index;
      DataError: when the index cannot be handed off (empty, mixed u, nlist
        above the documents);
      OutputExistsError: when `out` exists and overwrite is False, or is a directory;
      OSError: when `out` cannot be written;
      FaissMissingError: when faiss is not installed.
    """
    clock = time.perf_counter()
    if kind not in handoff.KINDS:
        raise ConfigError(f"--kind {kind}: expected one of {', '.join(handoff.KINDS)}")
    if nlist is not None and nlist < 1:
        raise ConfigError(f"--nlist {nlist}: must be >= 1")
    if hnsw_m < 2:
        raise ConfigError(f"--hnsw-m {hnsw_m}: must be >= 2")
    faiss = handoff.import_faiss()
    index = BinaryIndex.load(index_path)
    wd.refuse_existing(out, overwrite)
    # The temporary file first (mode as the umask says): an unwritable place fails early.
    parent = os.path.dirname(out) or "."
    tmp = os.path.join(parent, f".{os.path.basename(out)}.{secrets.token_hex(4)}.tmp")
    try:
        open(tmp, "xb").close()
    except OSError as e:
        raise OSError(f"{out}: cannot write the faiss index there: {e.strerror}") from None
    try:
        try:
            built = handoff.to_faiss(index, kind, nlist=nlist, hnsw_m=hnsw_m)
        except ValueError as e:
            raise DataError(f"{index_path}: {e}") from None
        binary = isinstance(built, faiss.IndexBinary)
        try:
            (faiss.write_index_binary if binary else faiss.write_index)(built, tmp)
        except RuntimeError as e:  # faiss's own I/O errors
            raise OSError(f"{out}: cannot write the faiss index: {e}") from None
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
        safe_write.fsync_dir(parent)  # the rename itself survives a crash
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return {
        "out": out,
        "documents": index.ntotal,
        "kind": kind,
        "faiss_class": type(built).__name__,
        "bytes": os.path.getsize(out),
        "seconds": round(time.perf_counter() - clock, 3),
    }


def parser() -> argparse.ArgumentParser:
    """The command's flags."""
    p = argparse.ArgumentParser(
        prog="python -m bebrjax.to_faiss",
        description="Write a saved BinaryIndex as a faiss index file (same documents and ids).",
    )
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


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bebrjax.to_faiss`; returns the exit status."""
    try:
        return cli.run(parser(), _command, argv)
    except handoff.FaissMissingError as e:  # not a USER_ERROR of every command: only this one's
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
