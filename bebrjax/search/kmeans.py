"""The coarse quantizer of `bebrjax.search.ivf`: spherical k-means in JAX.

Points and centroids are unit vectors and a point belongs to the centroid
of largest inner product (cosine), the geometry SDC ranks by. Training
(Lloyd's iterations, `train`) is one jit'd loop: assign every point, then
each centroid becomes the normalized sum of its points. Training and
`assign` take the points a block at a time (about `_BLOCK_PRODUCTS`
point-centroid products), so memory never holds all n x nlist products. A
centroid that loses all its points is moved to the point its own centroid
serves worst (the lowest cosine), one per empty centroid, so no list stays
empty while points remain far from their centre. Initialization draws `nlist` distinct
points with a seeded generator: the same points and seed give the same
centroids, on any device count.

Every point-centroid product runs at `Precision.HIGHEST` (full float32, as
the scores are computed): at the default precision a GPU or TPU multiplies
in TF32 or bfloat16 passes, which moves near-ties, so lists built there
would differ from the CPU's. `probe` takes the queries in chunks of at most
`_PROBE_ROWS` (fewer for a large nlist: about `_BLOCK_PRODUCTS` products at
once), each padded to a power of two of at least `_MIN_PROBE_ROWS`: any
number of queries runs a handful of compiled programs, kept in a bounded
`CompiledCache`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from bebrjax.search.compiled import CompiledCache

_ASSIGN_ROWS = 16384  # at most this many points per jit'd assignment step
_PROBE_ROWS = 1024  # at most this many queries per jit'd probe
_MIN_PROBE_ROWS = 8  # the smallest padded probe
_PROBE_GROUP = 32  # lists per group of the two-level probe
_BLOCK_PRODUCTS = 1 << 24  # point-centroid products held at once (64 MiB)
_PROBE_FNS = CompiledCache()  # (queries, padded nlist, m, nprobe, nlist) -> the jit'd probe


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); zero rows stay zero."""
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1).astype(np.float32)


def _products(points: jax.Array, centroids: jax.Array) -> jax.Array:
    """The products points [n, m] @ centroids [c, m].T, full float32 on every backend."""
    return jnp.matmul(points, centroids.T, precision=jax.lax.Precision.HIGHEST)


def _lloyd(points: jax.Array, weights: jax.Array, centroids: jax.Array, iters: int) -> jax.Array:
    """`iters` spherical Lloyd steps from `centroids` [nlist, m] over unit `points`.

    `points` [blocks, rows, m] are assigned a block at a time, so memory
    holds one [rows, nlist] block of products, never all n x nlist of them;
    `weights` [blocks, rows] are 1 for points and 0 for padding rows.
    """
    nlist = centroids.shape[0]
    flat = points.reshape(-1, points.shape[-1])
    real = weights.reshape(-1) > 0

    def step(_, c):
        def nearest(block):
            sims = _products(block, c)
            return jnp.argmax(sims, axis=1), jnp.max(sims, axis=1)

        assign, best = (x.reshape(-1) for x in jax.lax.map(nearest, points))
        sums = jax.ops.segment_sum(flat, assign, num_segments=nlist)  # padding rows are zero
        counts = jax.ops.segment_sum(weights.reshape(-1), assign, num_segments=nlist)
        moved = sums / jnp.maximum(jnp.linalg.norm(sums, axis=1, keepdims=True), 1e-30)
        # Empty centroids take the worst-served points, the i-th empty one the i-th worst.
        empty = counts == 0
        worst = jnp.argsort(jnp.where(real, best, jnp.inf))[:nlist]
        rank = jnp.cumsum(empty) - 1
        return jnp.where(empty[:, None], flat[worst[rank]], moved)

    return jax.lax.fori_loop(0, iters, step, centroids)


def _block_rows(n: int, nlist: int) -> int:
    """Points per assignment block: about `_BLOCK_PRODUCTS` products, at most n."""
    return max(1, min(n, _BLOCK_PRODUCTS // nlist))


_LLOYD = jax.jit(_lloyd, static_argnums=3)


def train(points: np.ndarray, nlist: int, *, iters: int = 20, seed: int = 0) -> np.ndarray:
    """Spherical k-means centroids of `points`.

    Args:
      points: float [n, m], n >= nlist (normalized here).
      nlist: how many centroids.
      iters: Lloyd iterations.
      seed: draws the initial centroids among the points.

    Returns:
      float32 [nlist, m] unit centroids.

    Raises:
      ValueError: when there are fewer points than centroids, or nlist < 1.
    """
    points = normalize(points)
    if not isinstance(nlist, int | np.integer) or nlist < 1:
        raise ValueError(f"nlist={nlist} must be a positive integer")
    if len(points) < nlist:
        raise ValueError(f"k-means needs at least nlist={nlist} points; got {len(points)}")
    start = np.random.default_rng(seed).choice(len(points), nlist, replace=False)
    initial = points[np.sort(start)]
    rows = _block_rows(len(points), nlist)
    blocks = -(-len(points) // rows)
    weights = np.zeros(blocks * rows, np.float32)
    weights[: len(points)] = 1
    points = np.pad(points, ((0, blocks * rows - len(points)), (0, 0)))
    shape = (blocks, rows, points.shape[1])
    centroids = _LLOYD(
        jnp.asarray(points.reshape(shape)),
        jnp.asarray(weights.reshape(shape[:2])),
        jnp.asarray(initial),
        int(iters),
    )
    return np.asarray(centroids, np.float32)


@jax.jit
def _nearest(points: jax.Array, centroids: jax.Array) -> jax.Array:
    return jnp.argmax(_products(points, centroids), axis=1).astype(jnp.int32)


def assign(chunks: Iterator[np.ndarray], centroids: np.ndarray) -> np.ndarray:
    """The nearest centroid (largest cosine, ties to the lower list) of every point.

    Args:
      chunks: float arrays [*, m] in order (e.g. decoded codes, a chunk at a time).
      centroids: float32 [nlist, m] unit vectors.

    Returns:
      int32 [n] list of each point.
    """
    c = jnp.asarray(centroids)
    step = _block_rows(_ASSIGN_ROWS, len(centroids))
    out = []
    for chunk in chunks:
        for start in range(0, len(chunk), step):
            part = normalize(chunk[start : start + step])
            rows = len(part)
            padded = np.pad(part, ((0, step - rows), (0, 0)))  # one compiled shape
            out.append(np.asarray(_nearest(jnp.asarray(padded), c))[:rows])
    return np.concatenate(out) if out else np.zeros(0, np.int32)


def _probe(queries: jax.Array, centroids: jax.Array, *, nprobe: int, nlist: int) -> jax.Array:
    num, groups = len(queries), centroids.shape[0] // _PROBE_GROUP
    sims = _products(queries, centroids)
    sims = jnp.where(jnp.arange(sims.shape[1]) < nlist, sims, -jnp.inf)
    if nprobe < groups:  # the nprobe groups of best maximum, in list order
        best = sims.reshape(num, groups, _PROBE_GROUP).max(-1)
        chosen = jnp.sort(jax.lax.top_k(best, nprobe)[1], axis=1)
        lists = (chosen[:, :, None] * _PROBE_GROUP + jnp.arange(_PROBE_GROUP)).reshape(num, -1)
        sims = jnp.take_along_axis(sims, lists, 1)
    else:
        lists = jnp.broadcast_to(jnp.arange(sims.shape[1]), sims.shape)
    return jnp.take_along_axis(lists, jax.lax.top_k(sims, nprobe)[1], 1)


def probe(queries: np.ndarray, centroids: np.ndarray, nprobe: int) -> np.ndarray:
    """The `nprobe` lists of largest cosine for each query, best first (ties to the lower list).

    A query's length does not change its ranking of the lists, so queries
    need not be normalized. Two levels, as `topk.local_topk` selects: the
    lists are taken 32 at a time, the nprobe groups of best maximum hold
    the nprobe best lists (each group ranked ahead holds a distinct one of
    a list's betters), and only those groups' lists are ranked. One jit'd
    product and two small `top_k`s per chunk of queries; on XLA:CPU about
    half the time of the same in numpy, whose passes over the [Q, nlist]
    products are memory-bound.

    Args:
      queries: float [Q, m].
      centroids: float32 [nlist, m].
      nprobe: lists per query, at most nlist.

    Returns:
      int64 [Q, nprobe].
    """
    nlist, nprobe = len(centroids), int(nprobe)
    padded = -(-nlist // _PROBE_GROUP) * _PROBE_GROUP
    centroids = np.pad(np.asarray(centroids, np.float32), ((0, padded - nlist), (0, 0)))
    on_device = jnp.asarray(centroids)
    queries = np.asarray(queries, np.float32)
    step = 1 << (_block_rows(_PROBE_ROWS, padded).bit_length() - 1)  # a power of two
    out = np.zeros((len(queries), nprobe), np.int64)
    for start in range(0, len(queries), step):
        part = queries[start : start + step]
        rows = min(step, max(_MIN_PROBE_ROWS, 1 << (len(part) - 1).bit_length()))
        key = (rows, padded, centroids.shape[1], nprobe, nlist)
        fn = _PROBE_FNS.get(
            key, lambda: jax.jit(functools.partial(_probe, nprobe=nprobe, nlist=nlist))
        )
        found = fn(np.pad(part, ((0, rows - len(part)), (0, 0))), on_device)
        out[start : start + len(part)] = np.asarray(found)[: len(part)]
    return out
