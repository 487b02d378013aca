"""Top-k over the tiles each query probes: the device half of `bebrjax.search.ivf`.

The inverted lists live on the device as one array of tiles [n_tiles, ...,
tile] (documents last, as in `bebrjax.search.blocked`): each list is a run
of whole tiles, its last tile padded with empty slots (id -1). A query
names the tiles it scans ([Q, S] tile indices, padded with an empty tile),
so every shape is static: S is rounded up to a few compiled sizes and the
padding costs scans of empty tiles, never a recompile per query.

The selection is `topk.local_topk`'s two levels, per query: a `lax.scan`
gathers `chunk` of the query's tiles at a time, scores them and keeps each
group's best score; one `lax.top_k` over all group maxima picks the k best
groups, whose documents are scored again. Where those groups would hold
as many slots as the scan (k large against a short scan), every
slot's score is kept and ranked directly instead. The answer holds every probed
document whose float score beats the k-th returned one (the argument in
`topk`); ties at the k-th score may resolve to any of the tied documents,
so `IVFIndex` asks for spare candidates and ranks them exactly on the host.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from bebrjax.search import topk
from bebrjax.sharding import DATA_AXIS


def probed_topk(
    score_fn: topk.ScoreFn,
    rescore_fn: topk.ScoreFn,
    queries: Any,
    tiles: Any,
    doc_ids: jax.Array,
    tile_lists: jax.Array,
    *,
    k: int,
    group: int,
    chunk: int,
) -> tuple[jax.Array, jax.Array]:
    """The float top k of each query over the tiles it lists.

    Args:
      score_fn: (queries, block) -> [T, Q, b] scores, called per query (Q = 1).
      rescore_fn: the same floats for a block of `group`-document tiles.
      queries: pytree of [Q, ...] arrays.
      tiles: pytree of [n_tiles, ..., tile] arrays.
      doc_ids: int32 [n_tiles, tile] global ids, -1 in empty slots.
      tile_lists: int32 [Q, S] tiles of each query, S a multiple of `chunk`.
      k: results per query.
      group: documents per group; divides the tile.
      chunk: tiles gathered per scan step.

    Returns:
      (scores [Q, k] descending, ids [Q, k] int32); -inf and -1 past the
      probed documents.
    """
    num_queries, width = tile_lists.shape
    tile = doc_ids.shape[1]
    per_tile = tile // group
    one_query = jax.tree.map(lambda x: x[:, None], queries)
    filled = jnp.sum(doc_ids >= 0, axis=1)  # a tile's documents come first, then empty slots
    slot = jnp.arange(tile)

    # Rescoring k groups would score more documents than the scan did: rank them all directly.
    direct = k * group >= width * tile
    kept = tile if direct else per_tile

    def scan_chunk(_, lists):  # lists [Q, chunk]
        block = jax.tree.map(lambda x: x[lists], tiles)  # [Q, chunk, ..., tile]
        scores = jax.vmap(score_fn)(one_query, block)[:, :, 0, :]
        scores = jnp.where(slot < filled[lists][:, :, None], scores, topk.NEG_INF)
        if direct:
            return None, scores.reshape(num_queries, chunk * tile)
        return None, scores.reshape(num_queries, chunk * per_tile, group).max(-1)

    steps = tile_lists.reshape(num_queries, width // chunk, chunk).transpose(1, 0, 2)
    _, best = lax.scan(scan_chunk, None, steps)  # [steps, Q, chunk * kept]
    best = best.transpose(1, 0, 2).reshape(num_queries, width * kept)
    if direct:
        top, pos = lax.top_k(best, min(k, width * tile))
        tile_idx = jnp.take_along_axis(tile_lists, pos // tile, axis=1)
        return _pad(top, doc_ids[tile_idx, pos % tile], k)
    kg = min(k, width * per_tile)
    _, pos = lax.top_k(best, kg)
    tile_idx = jnp.take_along_axis(tile_lists, pos // per_tile, axis=1)
    start = (pos % per_tile) * group
    zeros = jnp.zeros_like(tile_idx)

    def gather(x):
        return topk.gather_groups(x[None], zeros, tile_idx, start, group)  # [Q, kg, ..., group]

    scores = jax.vmap(rescore_fn)(one_query, jax.tree.map(gather, tiles))
    scores = scores.reshape(num_queries, kg * group)
    ids = gather(doc_ids).reshape(num_queries, kg * group)
    scores = jnp.where(ids >= 0, scores, topk.NEG_INF)
    top, pos = lax.top_k(scores, min(k, kg * group))
    return _pad(top, jnp.take_along_axis(ids, pos, axis=1), k)


def _pad(top: jax.Array, ids: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """[Q, k' <= k] results padded to k columns with -inf and id -1."""
    if top.shape[1] < k:
        pad = k - top.shape[1]
        top = jnp.pad(top, ((0, 0), (0, pad)), constant_values=topk.NEG_INF)
        ids = jnp.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    return top, ids


def make_search_fn(
    score_fn: topk.ScoreFn,
    rescore_fn: topk.ScoreFn,
    *,
    k: int,
    group: int,
    chunk: int,
    mesh: Mesh | None,
):
    """jit(queries, tiles, doc_ids, tile_lists) -> (scores, ids) [Q, k].

    Without a mesh, `tile_lists` is [Q, S]. With one, the tiles are split
    over its `data` axis (each device a contiguous run, its last tile empty)
    and `tile_lists` is [devices, Q, S] of each device's local tile indices;
    the devices' top k are merged (`topk.merge_topk`).
    """
    kwargs = {"k": k, "group": group, "chunk": chunk}
    if mesh is None:
        return jax.jit(
            lambda q, tiles, ids, lists: probed_topk(
                score_fn, rescore_fn, q, tiles, ids, lists, **kwargs
            )
        )

    def shard(q, tiles, ids, lists):
        top, found = probed_topk(score_fn, rescore_fn, q, tiles, ids, lists[0], **kwargs)
        return top[None], found[None]

    def search(q, tiles, ids, lists):
        top, found = jax.shard_map(
            shard,
            mesh=mesh,
            in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS), P(DATA_AXIS)),
            out_specs=(P(DATA_AXIS), P(DATA_AXIS)),
        )(q, tiles, ids, lists)
        return topk.merge_topk(top, found, k)

    return jax.jit(search)
