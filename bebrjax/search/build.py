"""New artifacts from a saved index: its inverted lists, or a faiss index file.

    build_ivf("gallery.bebr", "gallery.ivf", nlist=4096)   # `bebrjax ivf`
    write_faiss("gallery.bebr", "gallery.faiss", "hnsw")   # `bebrjax to-faiss`

`build_ivf` trains the coarse quantizer (spherical k-means,
`bebrjax.search.kmeans`) on a seeded sample of the index's decoded codes
(256 per list unless `sample`), assigns every document to its nearest
centroid and writes an IVF index (`bebrjax.search.ivf`): the index's files
plus `ivf.json`, `centroids.npy` and `lists.npy`, written whole or not at
all. It also chooses and stores the index's default nprobe, the lists a
search probes when given none: the `nprobe` given, or the fewest (1, 2, 4,
... or nlist) whose Recall@10 of the exhaustive answer reaches 0.95 on 256
of the index's own codes as queries (`bebrjax.search.ivf_nprobe`). The
result is still a `BinaryIndex` directory for exhaustive search; `bebrjax
search` probes the default nprobe, `--nprobe N` its N nearest lists. The
output may be the index itself (with `overwrite`).

`write_faiss` writes the same documents with the same ids as a faiss index
(see `bebrjax.search.handoff` for the index types and how their scores
relate to bebrjax's): codes of u = 0 with `faiss.write_index_binary` (read
back with `faiss.read_index_binary`), codes of u >= 1 with
`faiss.write_index` (`faiss.read_index`). The file is written beside
itself and moved into place when complete, so it is never half-written;
an existing file is kept unless `overwrite`.
"""

from __future__ import annotations

import os
import secrets
import time

import numpy as np

from bebrjax import workdir as wd
from bebrjax.errors import ConfigError, DataError
from bebrjax.search import handoff, ivf_nprobe, safe_write
from bebrjax.search.index import BinaryIndex
from bebrjax.search.ivf import IVFIndex


def build_ivf(
    index: str,
    out: str,
    nlist: int,
    *,
    sample: int = 0,
    iters: int = 20,
    seed: int = 0,
    nprobe: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Builds and saves an IVF index over the documents of the saved index `index`.

    Args:
      index: a saved `BinaryIndex` directory (e.g. what `bebrjax encode` wrote).
      out: the IVF index directory to write (may be `index`, with overwrite).
      nlist: inverted lists, 1..documents.
      sample: training points (0: 256 per list, or every document if fewer).
      iters: k-means iterations.
      seed: the sample's and the initial centroids' draw (and the nprobe
        measure's queries').
      nprobe: the default nprobe to store, 1..nlist; None: measured.
      overwrite: replace an existing `out`.

    Returns:
      A summary: documents, nlist, list sizes (min, median, max), nprobe,
      its measured Recall@10 ("nprobe_recall", None when given), seconds.

    Raises:
      IndexFormatError: when `index` is not a readable index.
      DataError: for nlist, sample, iters or nprobe out of range.
      OutputExistsError: when `out` exists and overwrite is False.
    """
    clock = time.perf_counter()
    wd.refuse_existing(out, overwrite, directory=True)
    codes = BinaryIndex.load(index)
    if not isinstance(nlist, int) or not 1 <= nlist <= codes.ntotal:
        raise DataError(f"nlist={nlist} must be in [1, {codes.ntotal}] (the index's documents)")
    if sample < 0 or iters < 0:
        raise DataError(f"sample={sample} and iters={iters} must be >= 0")
    if nprobe is not None and not 1 <= nprobe <= nlist:
        raise DataError(f"nprobe={nprobe} must be in [1, {nlist}] (nlist)")
    try:
        ivf = IVFIndex.from_index(codes, nlist, iters=iters, seed=seed, sample=sample)
    except ValueError as e:
        raise DataError(f"{index}: {e}") from None
    recall = None
    if nprobe is None:
        nprobe, recall = ivf_nprobe.choose(ivf, seed=seed)
    ivf.nprobe = nprobe
    ivf.save(out)
    sizes = ivf.list_sizes()
    return {
        "index": out,
        "documents": ivf.ntotal,
        "nlist": nlist,
        "list_sizes": [int(sizes.min()), float(np.median(sizes)), int(sizes.max())],
        "nprobe": nprobe,
        "nprobe_recall": None if recall is None else round(recall, 4),
        "seconds": round(time.perf_counter() - clock, 2),
    }


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
