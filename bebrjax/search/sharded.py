"""A gallery split over processes: each holds a shard, every query gets the global exact top k.

    index = ShardedIndex.load("gallery.bebr")    # process p keeps docs [p n/N, (p+1) n/N)
    scores, ids = index.search(query_planes, k=100)   # same queries on every process

or, from a `BinaryIndex` each process built from its own documents (ids
follow process order: process 0's docs first), `ShardedIndex(local)`.

Every process runs the same calls with the same queries (SPMD, as under
`bebrjax.distributed`), and every process gets the whole answer. The answer
is, bit for bit, the one a single `BinaryIndex` over all documents gives:

1. each process scans its shard on its own devices for the float top K
   (K = min(N, k + `topk.SPARE`)), as `BinaryIndex` does over a whole
   gallery; a document's float score does not depend on where it lives;
2. the processes exchange their K candidates (scores and global ids) and
   keep the global top K under (score descending, id ascending): the K a
   single index's scan returns, since each shard's K hold every global
   top-K document of that shard;
3. `topk.exact_topk` ranks them exactly, as `BinaryIndex.search` does; the
   exact integers it asks for come from the process holding each document,
   summed over processes (every other process adds zeros).

The exchange is one all-gather of [Q, K] per query batch: about 12 bytes per
candidate per process, whatever the gallery's size. A query whose k-th score
ties past its K (a code stored more than K - k times) takes a second pass,
`bebrjax.search.band`: each process sends at most K + 1 ids of its shard. A gallery that is not
split over processes (one process) works too: the same code, no exchange.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from bebrjax import distributed
from bebrjax.search import band, scoring, topk
from bebrjax.search.index import BinaryIndex

_NO_ID = np.iinfo(np.int64).max  # pads a shard's candidates; ranks last


def _best(scores: np.ndarray, ids: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's first `width` under (score descending, id ascending)."""
    order = np.lexsort((ids, -scores), axis=-1)[:, :width]
    return np.take_along_axis(scores, order, -1), np.take_along_axis(ids, order, -1)


class ShardedIndex:
    """This process's shard of a gallery, searched together with the other processes' shards.

    Args:
      local: this process's documents, as a `BinaryIndex`; every process's
        has the same m, metric and versions. Global ids number process 0's
        documents first, then process 1's, and so on.

    Raises:
      ValueError: when the processes' shards disagree on m, u or metric.
    """

    def __init__(self, local: BinaryIndex):
        self.local = local
        shape = np.array([local.m, local.u, local.metric == "hamming", local.ntotal], np.int64)
        every = distributed.allgather(shape)
        if (every[:, :3] != shape[:3]).any():
            raise ValueError(
                f"the processes' shards differ in (m, u, hamming): {every[:, :3].tolist()}"
            )
        self._counts = every[:, 3]
        self.offset = int(self._counts[: jax.process_index()].sum())
        self.ntotal = int(self._counts.sum())

    def __repr__(self) -> str:
        where = f"process {jax.process_index()} of {jax.process_count()}"
        return f"ShardedIndex(count={self.ntotal}, {where}, local={self.local!r})"

    @property
    def m(self) -> int:
        """Code width (bits per plane)."""
        return self.local.m

    @classmethod
    def load(cls, path: str, **kwargs: Any) -> ShardedIndex:
        """Opens a saved `BinaryIndex`, each process keeping its own part of the documents.

        Process p of N keeps documents [p n/N, (p+1) n/N) (n/N rounded up),
        memory-mapped: it reads only its own rows from disk.

        Args:
          path: an index directory written by `BinaryIndex.save` or `bebrjax encode`.
          **kwargs: as for `BinaryIndex.load` (kernel, layout).

        Raises:
          IndexFormatError: as `BinaryIndex.load`.
        """
        whole = BinaryIndex.load(path, **kwargs)
        per = -(-whole.ntotal // jax.process_count())
        start = min(whole.ntotal, jax.process_index() * per)
        return cls(whole.rows(start, min(whole.ntotal, start + per)))

    def search(self, query_planes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The exact k nearest documents over every process's shard (as `BinaryIndex.search`).

        Every process calls it with the same queries and gets the same answer.

        Raises:
          ValueError: as `BinaryIndex.search` (k is checked against the whole gallery).
        """
        if not isinstance(k, int | np.integer) or not 1 <= k <= self.ntotal:
            raise ValueError(f"k={k} must be an integer in [1, {self.ntotal}] (the index size)")
        queries, u_q = self.local._queries(query_planes)
        if self.local.metric == "hamming" or self.local.u == 0:
            scores, ids = self._candidates(queries, k)
            return (-scores if self.local.metric == "hamming" else scores), ids
        width = min(self.ntotal, k + topk.SPARE)
        scores, ids = self._candidates(queries, width)
        words, scale = queries["words"], 2.0**-u_q
        return topk.exact_topk(
            scores,
            ids,
            k,
            bound=scoring.sdc_bound(scores),
            complete=width == self.ntotal,
            exact=lambda rows, d: topk.SdcScores(*self._exact(words[rows], d), scale),
            exact_all=lambda row: (
                topk.SdcScores(*self._exact_all(words[row]), scale),
                np.arange(self.ntotal),
            ),
            shortlist=band.shortlister(
                self.local, queries, scores, ids, k, u_q, exact_ints=self._exact, run=self._band
            ),
        )

    def _band(self, queries: dict[str, np.ndarray], width: int, scorer: Any):
        """`_candidates` with a `band.band_scorer`, its global ids made this shard's own."""
        local = {key: queries[key] - np.int32(self.offset) for key in ("last_id", "cursor")}
        return self._candidates({**queries, **local}, min(width, self.ntotal), scorer)

    def _candidates(self, queries: dict[str, np.ndarray], width: int, scorer=None):
        """The global float top `width` of each query: float32 scores, int64 global ids.

        `scorer`: as for `BinaryIndex._search` (None: the index's own scores).
        """
        num = len(next(iter(queries.values())))
        mine = min(width, self.local.ntotal)
        scores = np.full((num, width), -np.inf, np.float32)
        ids = np.full((num, width), _NO_ID, np.int64)
        if mine and num:
            scores[:, :mine], local_ids = self.local._search(queries, mine, scorer)
            ids[:, :mine] = local_ids + self.offset
        every_scores, every_ids = distributed.allgather((scores, ids))
        return _best(np.concatenate(every_scores, 1), np.concatenate(every_ids, 1), width)

    @property
    def versions(self) -> dict[str, int]:
        """Version name -> its u (every process's shard has the same versions)."""
        return self.local.versions

    def exact_ints(
        self, query_words: np.ndarray, ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`BinaryIndex.exact_ints` over global ids (None: all); every process calls it."""
        return self._exact_all(query_words) if ids is None else self._exact(query_words, ids)

    def versions_of(self, ids: np.ndarray) -> np.ndarray:
        """Each global document's version (an index into `versions`), from its process."""
        found = np.zeros(len(ids), np.int64)
        here = (ids >= self.offset) & (ids < self.offset + self.local.ntotal)
        if here.any():
            found[here] = self.local.doc_versions[ids[here] - self.offset]
        return distributed.allgather(found).sum(0)

    def _exact(self, query_words: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ip, norm) int64 [F] for global `ids`, each from the process that holds it."""
        ip, norm = np.zeros(len(ids), np.int64), np.zeros(len(ids), np.int64)
        here = (ids >= self.offset) & (ids < self.offset + self.local.ntotal)
        if here.any():
            ip[here], norm[here] = self.local.exact_ints(query_words[here], ids[here] - self.offset)
        every_ip, every_norm = distributed.allgather((ip, norm))
        return every_ip.sum(0), every_norm.sum(0)

    def _exact_all(self, query_words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ip, norm) int64 [ntotal] of one query against every document, in global id order."""
        largest = int(self._counts.max())
        ip, norm = np.zeros(largest, np.int64), np.zeros(largest, np.int64)
        if self.local.ntotal:
            ip[: self.local.ntotal], norm[: self.local.ntotal] = self.local.exact_ints(query_words)
        every_ip, every_norm = distributed.allgather((ip, norm))
        return (
            np.concatenate([x[:c] for x, c in zip(every_ip, self._counts, strict=True)]),
            np.concatenate([x[:c] for x, c in zip(every_norm, self._counts, strict=True)]),
        )
