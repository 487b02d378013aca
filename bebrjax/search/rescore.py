"""Rescoring: a code search's shortlist ranked again by float inner products.

    scores, ids = rescore(index, query_planes, queries, k=10, docs="gallery.npy", oversample=4)
    scores, ids = rescore(ivf, query_planes, queries, k=10, nprobe=16)   # asymmetric

The recipe of sentence-transformers' binary quantization and Qdrant's
oversampling, over SDC's shortlist: the index returns the top
k x `oversample` documents by their codes (exhaustive, or within an IVF
index's probed lists), and those are ranked again by

  * `docs` given: the exact inner product of each float query with the
    document's float vector, read from `docs` (an .npy file, read by file
    offset: only the shortlisted rows are read, in increasing row order, and
    nothing is memory-mapped; or an array [N, d]);
  * `docs=None` (asymmetric): the inner product of the float query with the
    document's decoded code b / ||b|| (its cosine; no float gallery needed).
    The query must then live in the codes' space (width m): e.g. the float
    embedding whose signs are the codes, as in sign-of-embedding
    quantization.

Inner products are computed in float64 from the float32 inputs, so the
ranking does not depend on the machine's summation order; ties go to the
lower id. Scores come back as float32, descending. Queries are rescored a
block at a time, so that the float64 shortlist vectors held at once stay
under `BLOCK_BYTES` (Q x k x oversample x d x 8 bytes for all of them: 23 GiB
at Q = 10k, k = 100, d = 768); the results do not depend on the blocks.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from bebrjax.data.rows import RowSource, open_rows
from bebrjax.errors import DataError

BLOCK_BYTES = 1 << 26  # float64 shortlist vectors held at once, [block, k x oversample, d]


def open_docs(docs: str | np.ndarray, count: int) -> RowSource | np.ndarray:
    """`docs` (path of an .npy file, or an array [N, d]), checked.

    Args:
      docs: the documents' float vectors, row i of document i.
      count: the documents in the index: `docs` must have exactly this many
        rows (a longer file is another corpus, or misaligned with the index).

    Returns:
      The array, or for a path the file opened for reading rows by offset
      (`data.rows.RowSource.take`: not memory-mapped, so a shortlist's rows
      add nothing to resident memory beyond themselves).
    """
    name = docs if isinstance(docs, str) else "the float documents"
    if isinstance(docs, str):
        if docs.endswith(".npz"):
            raise ValueError(f"{name}: an .npz archive; give the documents as one .npy file")
        if not os.path.isfile(docs):
            raise ValueError(f"{name}: not a readable .npy file of float vectors (no such file)")
        try:
            docs = open_rows(docs)
        except DataError as e:
            raise ValueError(f"{e} (the float documents)") from None
    if len(docs.shape) != 2 or not np.issubdtype(docs.dtype, np.floating):
        raise ValueError(
            f"{name} must be a 2-D float array [N, d]; got {docs.dtype} {list(docs.shape)}"
        )
    if len(docs) != count:
        raise ValueError(
            f"{name}: {len(docs)} rows, but the index holds {count} documents "
            "(row i must be document i)"
        )
    return docs


def rescore(
    index: Any,
    query_planes: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    docs: str | np.ndarray | None = None,
    oversample: int = 4,
    **search_kwargs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """The top k of each query's shortlist of k x oversample, ranked by float inner products.

    Args:
      index: a `BinaryIndex` or `IVFIndex` (any index whose `search(query_planes, k,
        **search_kwargs)` returns ids, and with `codes` or itself a `BinaryIndex`
        for the asymmetric option).
      query_planes: the queries' codes, as the index's `search` takes them.
      queries: the queries' float vectors [Q, d] (d = m for the asymmetric option).
      k: results per query.
      docs: the documents' float vectors (a .npy path or [N, d]), row i of
        document i; None scores the decoded codes instead.
      oversample: shortlist k x oversample documents (capped by the index size).
      **search_kwargs: passed to `index.search` (e.g. nprobe).

    Returns:
      (scores float32 [Q, k] descending, ids int64 [Q, k]).

    Raises:
      ValueError: naming the problem (oversample < 1, queries or docs of the
        wrong shape, docs of another length than the index, an .npz), or as
        `index.search`.
    """
    if not isinstance(oversample, int | np.integer) or oversample < 1:
        raise ValueError(f"oversample={oversample} must be a positive integer")
    queries = np.asarray(queries)
    codes = getattr(index, "codes", index)
    if queries.ndim != 2 or len(queries) != len(query_planes):
        raise ValueError(
            f"queries must be float vectors [Q={len(query_planes)}, d], one per query code; "
            f"got {list(queries.shape)}"
        )
    if docs is None and queries.shape[1] != codes.m:
        raise ValueError(
            f"asymmetric rescoring compares float queries with decoded codes of width "
            f"m={codes.m}; the queries have width {queries.shape[1]} (give docs= instead)"
        )
    if not isinstance(k, int | np.integer) or not 1 <= k <= codes.ntotal:
        raise ValueError(f"k={k} must be an integer in [1, {codes.ntotal}] (the index size)")
    if docs is not None:
        docs = open_docs(docs, codes.ntotal)
        if docs.shape[1] != queries.shape[1]:
            raise ValueError(
                f"float documents have width {docs.shape[1]}, the queries {queries.shape[1]}"
            )
    try:
        _, shortlist = index.search(
            query_planes, min(codes.ntotal, k * oversample), **search_kwargs
        )
        step = max(1, BLOCK_BYTES // (8 * shortlist.shape[1] * queries.shape[1]))
        parts = [
            _rescore_block(
                codes, docs, queries[start : start + step], shortlist[start : start + step], k
            )
            for start in range(0, len(shortlist), step)
        ]
    finally:
        if isinstance(docs, RowSource):
            docs.close()
    if not parts:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _rescore_block(
    codes: Any, docs: np.ndarray | None, queries: np.ndarray, shortlist: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """`rescore` of a block of queries and their shortlists [B, K]: float32 and int64 [B, k].

    Only the block's shortlisted rows of `docs` are read, in increasing row order.
    """
    unique = np.unique(shortlist)
    if docs is None:
        rows = codes.decoded(unique).astype(np.float64)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    else:
        rows = (docs.take(unique) if isinstance(docs, RowSource) else docs[unique]).astype(
            np.float64
        )
    where = np.searchsorted(unique, shortlist)
    scores = np.einsum("qd,qkd->qk", queries.astype(np.float64), rows[where])
    order = np.lexsort((shortlist, -scores))[:, :k]
    top = np.take_along_axis(scores, order, 1).astype(np.float32)
    return top, np.take_along_axis(shortlist, order, 1)
