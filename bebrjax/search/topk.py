"""Exact top-k over galleries far larger than a queries x gallery matrix.

The gallery is a pytree of arrays [n_blocks, T, ..., b]: blocks of T tiles of
b documents. A `lax.scan` streams the blocks; each block is scored ([T, Q, b]
floats to maximize), split into groups of `group` consecutive documents, and
only each group's best score joins a running top-k of *groups*. At the end
the documents of the k best groups are scored again and the top k of those
is the answer. Memory is O(block + k * group), whatever the gallery size.

Why it is exact in the float scores, ties to the lower id, as in faiss (bit
for bit when both passes compute the same floats, as the code kernels do; up
to float rounding for float inner products, whose second pass may round
differently): a document in the top k has at most k-1 documents ahead of it,
and every group ranked ahead of its own group (by best score, then by lower
id) holds a distinct one of them, so its group is among the k best. Ties go
to the lower id because `lax.top_k` is stable, the running groups (earlier,
lower ids) come first in every merge, and the final candidates are put back
in id order before the last top k.

Float SDC scores only approximate the exact score ip / sqrt(norm) (see
`bebrjax.search.scoring.SCORE_TOLERANCE`): two codes of equal cosine may get
floats an ulp apart. `exact_topk` turns the float top k + SPARE into the
exact top k on the host, with a proof in its docstring.

Two-level selection is also what makes this fast on XLA:CPU, where
`lax.top_k` costs about 2.7 ns per element on a long row and far more on
short ones: one top k per block over B/group group maxima instead of over
all B scores.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from bebrjax.sharding import DATA_AXIS

ScoreFn = Callable[[Any, Any], jax.Array]
NEG_INF = -jnp.inf
SPARE = 32  # float candidates beyond k that let `exact_topk` certify the exact top k
_F64_TOLERANCE = 2.0**-50  # bounds float64 ip / sqrt(norm) (error < 2^-51.9) with room


def gather_groups(x: jax.Array, block: jax.Array, tile: jax.Array, start: jax.Array, group: int):
    """Slices x [n_blocks, T, ..., b] at [Q, K] (block, tile, start) into [Q, K, ..., group]."""
    middle = x.shape[2:-1]

    def one(bi, ti, si):
        starts = (bi, ti, *([0] * len(middle)), si)
        return lax.dynamic_slice(x, starts, (1, 1, *middle, group))[0, 0]

    return jax.vmap(jax.vmap(one))(block, tile, start)


def local_topk(
    score_fn: ScoreFn,
    queries: Any,
    blocks: Any,
    count: jax.Array,
    *,
    k: int,
    group: int,
    first_block: jax.Array | int = 0,
    axis_name: str | None = None,
    rescore_fn: ScoreFn | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The exact top k of `queries` over `blocks`.

    Args:
      score_fn: (queries, block) -> [T, Q, b] float32 scores to maximize.
      queries: pytree of [Q, ...] arrays.
      blocks: pytree of [n_blocks, T, ..., b] arrays.
      count: documents in the whole gallery; ids >= count are padding.
      k: results per query.
      group: documents per group; divides b.
      first_block: global index of blocks[0] (a shard's offset).
      axis_name: the mesh axis the blocks are split over, inside `shard_map`.
      rescore_fn: what scores the best groups' documents again, called with
        one query and a "block" of K tiles of `group` docs; it must return
        the same floats as `score_fn` (default: `score_fn`).

    Returns:
      (scores [Q, k] descending, ids [Q, k] int32 global document ids); when
      fewer than k documents exist, the rest have score -inf.
    """
    leaf = jax.tree.leaves(blocks)[0]
    n_blocks, tiles, b = leaf.shape[0], leaf.shape[1], leaf.shape[-1]
    num_queries = jax.tree.leaves(queries)[0].shape[0]
    per_tile = b // group
    per_block = tiles * per_tile
    kg = min(k, n_blocks * per_block)
    doc_in_block = jnp.arange(tiles)[:, None] * b + jnp.arange(b)[None, :]

    def scan_block(carry, xs):
        block, index = xs
        block_id = first_block + index
        valid = block_id * tiles * b + doc_in_block < count
        scores = jnp.where(valid[:, None, :], score_fn(queries, block), NEG_INF)
        best = scores.reshape(tiles, num_queries, per_tile, group).max(-1)
        best = best.transpose(1, 0, 2).reshape(num_queries, per_block)
        ids = block_id * per_block + jnp.arange(per_block, dtype=jnp.int32)
        vals = jnp.concatenate([carry[0], best], axis=1)
        gids = jnp.concatenate([carry[1], jnp.broadcast_to(ids, best.shape)], axis=1)
        top, pos = lax.top_k(vals, kg)
        return (top, jnp.take_along_axis(gids, pos, axis=1)), None

    init = (jnp.full((num_queries, kg), NEG_INF), jnp.full((num_queries, kg), -1, jnp.int32))
    if axis_name is not None:  # the running top k differs per shard
        init = jax.tree.map(lambda x: lax.pcast(x, (axis_name,), to="varying"), init)
    (_, groups), _ = lax.scan(scan_block, init, (blocks, jnp.arange(n_blocks)))

    groups = jnp.sort(groups, axis=1)  # candidates back in id order
    local = jnp.maximum(groups, 0) - first_block * per_block
    block_idx, rest = local // per_block, local % per_block
    tile_idx, start = rest // per_tile, (rest % per_tile) * group
    cands = jax.tree.map(lambda x: gather_groups(x, block_idx, tile_idx, start, group), blocks)
    one_query = jax.tree.map(lambda x: x[:, None], queries)
    scores = jax.vmap(rescore_fn or score_fn)(one_query, cands).reshape(num_queries, kg * group)
    doc_ids = (groups[:, :, None] * group + jnp.arange(group)).reshape(num_queries, kg * group)
    valid = (jnp.repeat(groups, group, axis=1) >= 0) & (doc_ids < count)
    scores = jnp.where(valid, scores, NEG_INF)
    top, pos = lax.top_k(scores, min(k, kg * group))
    ids = jnp.take_along_axis(doc_ids, pos, axis=1)
    if top.shape[1] < k:
        pad = k - top.shape[1]
        top = jnp.pad(top, ((0, 0), (0, pad)), constant_values=NEG_INF)
        ids = jnp.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    return top, ids


def merge_topk(scores: jax.Array, ids: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Merges [S, Q, k] partial results (S in id order) into the top k [Q, k]."""
    shards, num_queries, _ = scores.shape
    flat = scores.transpose(1, 0, 2).reshape(num_queries, -1)
    flat_ids = ids.transpose(1, 0, 2).reshape(num_queries, -1)
    top, pos = lax.top_k(flat, k)
    return top, jnp.take_along_axis(flat_ids, pos, axis=1)


def sharded_topk(
    score_fn: ScoreFn,
    queries: Any,
    blocks: Any,
    count: jax.Array,
    *,
    k: int,
    group: int,
    mesh: Mesh,
    rescore_fn: ScoreFn | None = None,
) -> tuple[jax.Array, jax.Array]:
    """`local_topk` with the blocks split over the mesh's `data` axis.

    Each device scans its own contiguous run of blocks under `jax.shard_map`;
    the per-device top k are gathered and merged, lower device (lower ids)
    first, so the answer equals the one-device answer exactly.
    """
    devices = mesh.shape[DATA_AXIS]
    local_blocks = jax.tree.leaves(blocks)[0].shape[0] // devices

    def shard(queries, blocks, count):
        first = lax.axis_index(DATA_AXIS) * local_blocks
        top, ids = local_topk(
            score_fn,
            queries,
            blocks,
            count,
            k=k,
            group=group,
            first_block=first,
            axis_name=DATA_AXIS,
            rescore_fn=rescore_fn,
        )
        return top[None], ids[None]

    top, ids = jax.shard_map(
        shard,
        mesh=mesh,
        in_specs=(P(), P(DATA_AXIS), P()),
        out_specs=(P(DATA_AXIS), P(DATA_AXIS)),
    )(queries, blocks, count)
    return merge_topk(top, ids, k)


# --- exact ranking of approximate scores, on the host -----------------------------------------


class ExactScores(Protocol):
    """Exact scores S of n documents for the host's ranking: float64 estimates and exact keys.

    Attributes:
      approx: float64 [n], |approx - S| <= error.
      error: float64 [n].
    """

    approx: np.ndarray
    error: np.ndarray

    def key(self, i: int) -> Fraction:
        """An exact rational increasing with S_i (S_i itself, or a monotone map of it)."""

    def ties(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """bool: True where S_a == S_b is known without `key` (e.g. equal integers)."""


class SdcScores:
    """SDC scores S = scale * ip / sqrt(norm) from the exact integers (`scoring.exact_ints`).

    The float64 quotient is within 2^-51.9 of ip / sqrt(norm) (a correctly
    rounded root and division); the exact key is sign(ip) ip^2 / norm.

    Args:
      ip: int64 [n].
      norm: int64 [n], positive.
      scale: a positive power of two (2^-u_q).
    """

    def __init__(self, ip: np.ndarray, norm: np.ndarray, scale: float = 1.0):
        self.ip, self.norm = ip, norm
        self.approx = scale * ip / np.sqrt(norm)
        self.error = _F64_TOLERANCE * np.abs(self.approx)

    def key(self, i: int) -> Fraction:
        """sign(ip) ip^2 / norm of document i, exactly."""
        return Fraction(int(self.ip[i]) * abs(int(self.ip[i])), int(self.norm[i]))

    def ties(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Equal (ip, norm): equal scores."""
        return (self.ip[a] == self.ip[b]) & (self.norm[a] == self.norm[b])


def exact_order(scores: ExactScores, ids: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """The permutation sorting documents by segment, exact score descending, then id.

    Estimates further apart than their errors order their documents
    correctly; known ties (`ties`) are left in id order by the sort; any
    other neighbours are compared by their exact keys, and a segment holding
    a pair out of order is sorted again by those keys. Adjacent pairs in
    order make the whole order.

    Args:
      scores: the documents' exact scores [n].
      ids: document ids [n], the tie-break.
      segments: [n] ints; documents are ordered within their segment.

    Returns:
      int [n] indices into the inputs.
    """
    approx, error = scores.approx, scores.error
    order = np.lexsort((ids, -approx, segments))
    a, b = order[:-1], order[1:]
    near = approx[a] - approx[b] <= error[a] + error[b]
    unsure = (segments[a] == segments[b]) & near & ~scores.ties(a, b)
    wrong = {
        segments[a[p]]
        for p in np.flatnonzero(unsure)
        if (scores.key(b[p]), -ids[b[p]]) > (scores.key(a[p]), -ids[a[p]])
    }
    in_order = segments[order]  # sorted: each segment is one span of `order`
    for segment in wrong:
        span = slice(in_order.searchsorted(segment), in_order.searchsorted(segment, "right"))
        order[span] = sorted(order[span], key=lambda i: (-scores.key(i), ids[i]))
    return order


def _whole_gallery_topk(scores: ExactScores, k: int) -> np.ndarray:
    """The positions of the exact top k of one query from the exact scores of its documents."""
    approx, error = scores.approx, scores.error
    kth = np.partition(approx, len(approx) - k)[len(approx) - k]
    # k documents have approx >= kth, so exact scores >= kth - max error; the rest fall below.
    keep = np.flatnonzero(approx + error >= kth - error.max())
    order = exact_order(_Subset(scores, keep), keep, np.zeros(len(keep), np.int64))
    return keep[order][:k]


class _Subset:
    """The exact scores of documents `keep` of `scores`, renumbered from 0."""

    def __init__(self, scores: ExactScores, keep: np.ndarray):
        self._scores, self._keep = scores, keep
        self.approx, self.error = scores.approx[keep], scores.error[keep]

    def key(self, i: int) -> Fraction:
        return self._scores.key(int(self._keep[i]))

    def ties(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._scores.ties(self._keep[a], self._keep[b])


def exact_topk(
    scores: np.ndarray,
    ids: np.ndarray,
    k: int,
    *,
    bound: np.ndarray,
    complete: bool,
    exact: Callable[[np.ndarray, np.ndarray], ExactScores],
    exact_all: Callable[[int], tuple[ExactScores, np.ndarray]],
    shortlist: Callable[[np.ndarray], list[np.ndarray | None]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The exact top k of each query from its float top K (K >= k), ties to the lower id.

    Each row of `scores` holds the first K documents in the order (float
    score f descending, then id), as `local_topk` returns them, and every
    document's exact score S lies in [L(f), H(f)] = [f - B, f + B], with B
    the document's `bound` (computed in float64 from float32 f).

    Why the answer is exact. Certificate: a document outside the K has
    f <= f_K, so S <= H(f_K); if H(f_K) < L(f_k), each of the first k
    documents (f >= f_k) beats every outsider strictly, so the exact top k
    lies within the K. Runs: split the K where L(f_p) > H(f_{p+1}); a document
    of an earlier run then beats every document of a later one strictly, so
    sorting each run by exact score (`exact_order`, exact keys where floats
    cannot tell) sorts the K exactly. Only runs of two or more that start
    within the first k need it: exact ties and near ties. A query without the
    certificate (more than K - k documents tied or near-tied with its k-th)
    is ranked exactly over a bounded `shortlist` that holds its exact top k,
    when one is given and finds one, else over everything it may return
    (`exact_all`).

    Args:
      scores: float32 [Q, K] as above.
      ids: int64 [Q, K] document ids.
      k: results per query.
      bound: float64 [Q, K], the bound on |f - S| of each entry, with
        f + B non-decreasing in f along a row (B proportional to |f|, or
        constant per row), so that H(f_K) bounds every outsider.
      complete: whether the K are all the documents (no outsiders).
      exact: (rows [F], ids [F]) -> the exact scores of those queries (rows
        of `scores`) and documents.
      exact_all: row -> (exact scores, ids int64 [n]) of that query against
        every document it may return (the whole gallery; an IVF query's
        probed lists), ids ascending.
      shortlist: rows -> for each of those queries without the certificate,
        ids ascending (int64) of a set of documents holding its exact top
        k, or None where there is no bounded one (`bebrjax.search.band`).

    Returns:
      (scores float32 [Q, k] non-increasing, ids int64 [Q, k]): the scores are
      float32 roundings of the exact scores' float64 estimates.
    """
    f = scores.astype(np.float64)
    low, high = f - bound, f + bound
    num, width = scores.shape
    certified = np.full(num, complete) | (low[:, k - 1] > high[:, -1])
    starts = np.ones((num, width), bool)
    starts[:, 1:] = low[:, :-1] > high[:, 1:]
    run = np.cumsum(starts).reshape(num, width) - 1  # increasing along each row
    mixed = (np.bincount(run.ravel(), minlength=1)[run] > 1) & (run <= run[:, k - 1 : k])
    rows, cols = np.nonzero(mixed & certified[:, None])  # row-major: each run in place order
    out_scores, out_ids = scores.copy(), ids.copy()
    if rows.size:
        found = exact(rows, ids[rows, cols])
        order = exact_order(found, ids[rows, cols], run[rows, cols])
        out_ids[rows, cols] = ids[rows, cols][order]
        out_scores[rows, cols] = found.approx[order]
    uncertified = np.flatnonzero(~certified)
    lists = [None] * len(uncertified)
    if shortlist is not None and uncertified.size:
        lists = shortlist(uncertified)
    listed = [(r, found) for r, found in zip(uncertified, lists, strict=True) if found is not None]
    if listed:  # one call for every shortlist: `exact` may be a collective (`ShardedIndex`)
        every = np.concatenate([found for _, found in listed])
        sizes = [len(found) for _, found in listed]
        scored = exact(np.repeat([row for row, _ in listed], sizes), every)
        for (row, _), end, size in zip(listed, np.cumsum(sizes), sizes, strict=True):
            span = np.arange(end - size, end)
            top = span[_whole_gallery_topk(_Subset(scored, span), k)]
            out_ids[row, :k], out_scores[row, :k] = every[top], scored.approx[top]
    for row, found in zip(uncertified, lists, strict=True):
        if found is None:
            scored, every = exact_all(row)
            top = _whole_gallery_topk(scored, k)
            out_ids[row, :k], out_scores[row, :k] = every[top], scored.approx[top]
    return np.minimum.accumulate(out_scores[:, :k], axis=1), out_ids[:, :k]
