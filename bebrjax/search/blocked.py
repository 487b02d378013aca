"""The search engine shared by the indexes: host storage, device blocks, batched exact top-k.

An index keeps its documents on the host as per-document arrays [N, ...]; on
the first search after a change they are tiled into blocks [n_blocks, T,
..., tile] (documents last), put on the device(s) (split over a mesh's
`data` axis when one is given) and searched by `bebrjax.search.topk`, with
queries in batches of a few compiled shapes. An index lives in one process:
given a mesh that spans processes it searches on this process's devices of
it (`sharding.process_mesh`); a gallery split over processes is
`bebrjax.search.sharded.ShardedIndex`.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bebrjax.search import topk
from bebrjax.search.compiled import CompiledCache
from bebrjax.sharding import DATA_AXIS, process_mesh


class Scorer(NamedTuple):
    """How a search scores its blocks: equal keys mean equal functions (one compiled search).

    With `ids`, each block also holds its documents' ids ("id", int32 [T, b]),
    numbered from 0 on this process.
    """

    key: Hashable
    score: topk.ScoreFn
    rescore: topk.ScoreFn
    ids: bool = False


# (index type, score key, k, group, mesh) -> the jit'd search; see `BlockedIndex._search_fn`.
_SEARCH_FNS = CompiledCache()


def _with_ids(blocks: dict[str, jax.Array], mesh: Mesh | None) -> dict[str, jax.Array]:
    """`blocks` with their documents' ids, int32 [n_blocks, T, b], laid out as the blocks."""
    leaf = jax.tree.leaves(blocks)[0]
    shape = (leaf.shape[0], leaf.shape[1], leaf.shape[-1])
    ids = jnp.arange(np.prod(shape), dtype=jnp.int32).reshape(shape)
    if mesh is not None:
        ids = jax.lax.with_sharding_constraint(ids, NamedSharding(mesh, P(DATA_AXIS)))
    return {**blocks, "id": ids}


def _make_search_fn(scorer: Scorer, k: int, group: int, mesh: Mesh | None):
    """jit(queries, blocks, count) -> (scores, ids): one device, or the blocks split over `mesh`."""
    kwargs = {"k": k, "group": group, "rescore_fn": scorer.rescore}

    def search(queries, blocks, count):
        if scorer.ids:
            blocks = _with_ids(blocks, mesh)
        if mesh is not None:
            return topk.sharded_topk(scorer.score, queries, blocks, count, mesh=mesh, **kwargs)
        return topk.local_topk(scorer.score, queries, blocks, count, **kwargs)

    return jax.jit(search)


class BlockedIndex:
    """Storage on the host, a tiled copy on the device(s), and batched exact search.

    Subclasses define `ntotal`, `_host_arrays` (a pytree of per-document
    arrays [N, ...]), `_score_fn` (a `topk.ScoreFn` over those arrays),
    optionally `_rescore_fn` (one giving the same floats, for the best
    groups' documents) and `_score_key` (hashable: equal keys mean equal
    score functions, so indexes share one compiled search, as an evaluation
    building many indexes of one shape wants).

    Args:
      block_size: documents per scanned block (memory per query batch is
        O(block_size)); rounded to whole tiles.
      tile: documents per tile (the inner loop's run of contiguous docs).
      group: documents per group of the two-level top-k; divides `tile`.
      query_batch: queries searched at once.
      mesh: optional device mesh: the gallery is split over its `data` axis
        (this process's devices of it).
    """

    def __init__(
        self, *, block_size: int, tile: int, group: int, query_batch: int, mesh: Mesh | None
    ):
        if tile % group:
            raise ValueError(f"group={group} must divide tile={tile}")
        if min(block_size, tile, group, query_batch) <= 0:
            raise ValueError("block_size, tile, group and query_batch must be positive")
        self.block_size, self.tile, self.group = block_size, tile, group
        self.query_batch = query_batch
        self.mesh = None if mesh is None else process_mesh(mesh)
        self._device: tuple[Any, int] | None = None

    def _devices(self) -> int:
        return 1 if self.mesh is None else self.mesh.shape[DATA_AXIS]

    def _layout(self) -> tuple[Any, int]:
        """The gallery as device blocks [n_blocks, T, ..., tile] (cached until the next add)."""
        if self._device is not None:
            return self._device
        n, devices = self.ntotal, self._devices()
        per_device = -(-n // devices)
        block = min(self.block_size, -(-per_device // self.tile) * self.tile)
        block = max(self.tile, block // self.tile * self.tile)
        n_blocks = -(-n // block)
        n_blocks = -(-n_blocks // devices) * devices
        tiles = block // self.tile

        def tiled(x: np.ndarray) -> np.ndarray:
            padded = np.zeros((n_blocks * block, *x.shape[1:]), x.dtype)
            padded[:n] = x
            shaped = padded.reshape(n_blocks, tiles, self.tile, *x.shape[1:])
            return np.ascontiguousarray(np.moveaxis(shaped, 2, -1))

        blocks = jax.tree.map(lambda x: tiled(np.asarray(x)), self._host_arrays())
        if self.mesh is not None:
            blocks = jax.device_put(blocks, NamedSharding(self.mesh, P(DATA_AXIS)))
        else:
            blocks = jax.device_put(blocks)
        self._device = (blocks, n)
        return self._device

    def _search_fn(self, k: int, scorer: Scorer | None = None):
        """The jit'd search, shared by every index that scores alike (compiled once per shape).

        Args:
          k: results per query.
          scorer: scores other than the index's own (e.g. version-aware
            fusion, `bebrjax.search.fusion`) over the same blocks.
        """
        mesh = self.mesh if self._devices() > 1 else None
        if scorer is None:
            scorer = Scorer(self._score_key(), self._score_fn(), self._rescore_fn())
        key = (type(self).__name__, scorer.key, scorer.ids, k, self.group, mesh)
        return _SEARCH_FNS.get(key, lambda: _make_search_fn(scorer, k, self.group, mesh))

    def _rescore_fn(self) -> topk.ScoreFn:
        """What scores the few best groups again (`topk.local_topk`): the scan's `_score_fn`."""
        return self._score_fn()

    def _check_k(self, k: int) -> None:
        """Raises ValueError unless the index has documents and 1 <= k <= ntotal."""
        if self.ntotal == 0:
            raise ValueError("the index is empty: add documents before searching")
        if not isinstance(k, int | np.integer) or not 1 <= k <= self.ntotal:
            raise ValueError(f"k={k} must be an integer in [1, {self.ntotal}] (the index size)")

    def _search(
        self, queries: dict[str, np.ndarray], k: int, scorer: Scorer | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top k under (float score descending, id ascending): float32 and int64 [Q, k].

        `queries` is a flat dict of arrays [Q, ...]; `scorer` as for `_search_fn`.
        """
        self._check_k(k)
        num = len(next(iter(queries.values())))
        if num == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        blocks, count = self._layout()
        search = self._search_fn(int(k), scorer)
        batch = min(self.query_batch, 1 << max(3, (num - 1).bit_length()))  # few compiled shapes
        out_scores, out_ids = [], []
        for start in range(0, num, batch):
            chunk = {key: x[start : start + batch] for key, x in queries.items()}
            rows = len(next(iter(chunk.values())))
            chunk = {
                key: np.pad(x, [(0, batch - rows)] + [(0, 0)] * (x.ndim - 1))
                for key, x in chunk.items()
            }
            scores, ids = search(chunk, blocks, jnp.int32(count))
            out_scores.append(np.asarray(scores)[:rows])
            out_ids.append(np.asarray(ids)[:rows])
        return np.concatenate(out_scores), np.concatenate(out_ids).astype(np.int64)

    def _invalidate(self) -> None:
        self._device = None
