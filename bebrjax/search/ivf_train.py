"""An IVF index's coarse quantizer: the sample it is trained on, and each document's list.

Memory stays bounded by the sample and one chunk, whatever the documents:

* Training draws the sample's row ids first (`sample_ids`, seeded) and
  reads and decodes only those rows, so codes given as int8 planes [N,
  u+1, m] (a memory map, say) are never decoded whole; only the sampled
  rows are checked for +-1 values. The draw depends only on N, the sample
  size and the seed, so it picks the same points as decoding everything
  first and sampling after did.
* Assignment (`assign`) decodes the documents about `_DECODE_BYTES` of
  float32 planes at a time and gives each the list of its nearest
  centroid (`kmeans.assign`).
"""

from __future__ import annotations

import numpy as np

from bebrjax.search import codes as codes_lib
from bebrjax.search import kmeans
from bebrjax.search.index import BinaryIndex

_DECODE_BYTES = 1 << 26  # float32 planes decoded at a time (64 MiB)


def sample_ids(n: int, count: int, seed: int) -> np.ndarray | None:
    """`count` of `n` rows drawn without replacement, ascending; None when count >= n (all)."""
    if count >= n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, count, replace=False))


def training_points(x: np.ndarray | BinaryIndex, m: int, count: int, seed: int) -> np.ndarray:
    """A seeded sample of at most `count` rows of `x`, as float points [n, m] to train on.

    Args:
      x: int8 planes [N, u'+1, m] of +-1 (any u', decoded here), float
        vectors [N, m] in the codes' space, or a `BinaryIndex` of width m
        (its documents' codes, each decoded in its own version).
      m: the codes' width.
      count: the sample's size (all of x when it has fewer rows).
      seed: the draw's seed.

    Raises:
      ValueError: for x of another width or values.
    """
    if isinstance(x, BinaryIndex):  # the sample decoded, then checked as float vectors
        chosen = sample_ids(x.ntotal, count, seed)
        x = x.decoded(np.arange(x.ntotal) if chosen is None else chosen)
    x = np.asarray(x)
    planes = x.ndim == 3 and x.dtype == np.int8 and x.shape[2] == m
    if not planes and (x.ndim != 2 or x.shape[1] != m or not np.issubdtype(x.dtype, np.number)):
        raise ValueError(
            f"training points must be int8 planes [N, u+1, {m}] or float vectors "
            f"[N, {m}] (the index's m={m}); got {x.dtype} {list(x.shape)}"
        )
    chosen = sample_ids(len(x), count, seed)
    points = x if chosen is None else x[chosen]
    if planes:
        u = x.shape[1] - 1
        points = codes_lib.decode(codes_lib.check_planes(points, m, u, "training planes"))
    return points


def assign(codes: BinaryIndex, centroids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The nearest list of documents `ids` of `codes` (each in its own version): int32 [n]."""
    rows = max(1, _DECODE_BYTES // (4 * (codes.u + 1) * codes.m))
    chunks = (codes.decoded(ids[start : start + rows]) for start in range(0, len(ids), rows))
    return kmeans.assign(chunks, centroids).astype(np.int32)
