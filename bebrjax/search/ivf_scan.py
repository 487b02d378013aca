"""An IVF index's documents on the device(s), and each query's float candidates in its lists.

Layout for XLA (static shapes). The documents are sorted by (list, id) and
each list occupies whole tiles of `tile` documents (its last tile padded
with empty slots), all in one device array; with a mesh the tiles are split
over the `data` axis in contiguous runs, each device holding one extra
empty tile (`bebrjax.search.ivf_layout`). A query scans the tiles of its
lists, named by index and padded with the empty tile to S tiles, S rounded
up to 2^j or 3 2^(j-2): a handful of compiled shapes whatever the list
sizes. The queries of a call are batched by how many tiles they scan, so
that a batch's longest scan, which sets its S, is close to the others, and
a batch is padded to a power of two (at least 8, at most `query_batch`).

A `ListScan` is a snapshot: built from the codes and lists of the moment,
it is dropped by its index whenever either changes, and built again at the
next search.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bebrjax.search import probed
from bebrjax.search.blocked import Scorer
from bebrjax.search.compiled import CompiledCache
from bebrjax.search.index import BinaryIndex
from bebrjax.search.ivf_layout import ListLayout
from bebrjax.sharding import DATA_AXIS

PADDING = np.float32(-3.0e38)  # below every score: the host's stand-in for -inf
_SEARCH_FNS = CompiledCache()  # (score key, width, group, chunk, mesh) -> the jit'd search


class ListScan:
    """The documents of `codes` in the tiles of their lists `lists`, on the device(s).

    Args:
      codes: the documents.
      lists: each document's list, int [ntotal].
      nlist: lists.
      tile: documents per tile.
      group: documents per group of the two-level top-k; divides `tile`.
      chunk: tiles a query gathers per scan step (a power of two).
      query_batch: queries searched at once.
    """

    def __init__(
        self,
        codes: BinaryIndex,
        lists: np.ndarray,
        nlist: int,
        *,
        tile: int,
        group: int,
        chunk: int,
        query_batch: int,
    ):
        devices = codes._devices()
        self.placement = ListLayout(lists, nlist, tile, devices)
        self.group, self.chunk, self.query_batch = group, chunk, query_batch
        self._mesh = codes.mesh if devices > 1 else None
        self._scorer = Scorer(codes._score_key(), codes._score_fn(), codes._rescore_fn())
        host = jax.tree.map(lambda x: self.placement.tiled(np.asarray(x)), codes._host_arrays())
        doc_ids = self.placement.doc_ids()
        if self._mesh is None:
            self._tiles, self._doc_ids = jax.device_put((host, doc_ids))
        else:
            sharding = NamedSharding(self._mesh, P(DATA_AXIS))
            self._tiles, self._doc_ids = jax.device_put((host, doc_ids), sharding)

    def candidates(
        self, queries: dict[str, np.ndarray], probes: np.ndarray, width: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each query's float top `width` of its probed lists, sorted by (score desc, id asc).

        Args:
          queries: flat dict of query arrays [Q, ...] (`BinaryIndex._queries`).
          probes: each query's lists, int [Q, nprobe].
          width: candidates per query.

        Returns:
          float32 scores (`PADDING` past the probed documents) and int64 ids, [Q, width].
        """
        num = len(probes)
        if num == 0:
            return np.zeros((0, width), np.float32), np.zeros((0, width), np.int64)
        batch = min(self.query_batch, 1 << max(3, (num - 1).bit_length()))
        # Queries of similar scan lengths share a batch, whose longest sets its padding.
        by_need = np.argsort(self.placement.scan_lengths(probes), kind="stable")
        scores = np.empty((num, width), np.float32)
        ids = np.empty((num, width), np.int64)
        for start in range(0, num, batch):
            rows = by_need[start : start + batch]
            chunk = {
                key: np.pad(x[rows], [(0, batch - len(rows))] + [(0, 0)] * (x.ndim - 1))
                for key, x in queries.items()
            }
            lists = self.placement.tile_lists(probes[rows], batch)
            step = min(self.chunk, lists.shape[-1] & -lists.shape[-1])
            found = self._search_fn(width, step)(chunk, self._tiles, self._doc_ids, lists)
            scores[rows] = np.asarray(found[0])[: len(rows)]
            ids[rows] = np.asarray(found[1])[: len(rows)]
        scores[ids < 0] = PADDING
        order = np.lexsort((ids, -scores))
        return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)

    def _search_fn(self, width: int, chunk: int) -> Any:
        key = (self._scorer.key, width, self.group, chunk, self._mesh)
        return _SEARCH_FNS.get(
            key,
            lambda: probed.make_search_fn(
                self._scorer.score,
                self._scorer.rescore,
                k=width,
                group=self.group,
                chunk=chunk,
                mesh=self._mesh,
            ),
        )
