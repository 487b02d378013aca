"""Hand a `BinaryIndex` to faiss: the same documents, ids 0..ntotal-1, in a faiss index.

    index = BinaryIndex.load("gallery.bebr")
    faiss_index = to_faiss(index, "ivf")       # or "flat", "hnsw"
    distances, ids = faiss_index.search(faiss_queries(index, query_planes), k)

u = 0 (one plane; metric "hamming", or "ip", which ranks as Hamming does):
the packed sign bits go to faiss's binary indexes as they are stored
(`IndexBinaryFlat`, `IndexBinaryIVF`, `IndexBinaryHNSW`), which report Hamming
distances. faiss needs a width that is a multiple of 8: for other m the codes
and queries are padded with zero bits to d = 8 * ceil(m / 8), and two padding
bits XOR to 0, so the distances do not change. IndexBinaryFlat returns what
`BinaryIndex(metric="hamming")` does, distances and ids: both break ties to
the lower id.

u >= 1: each code is stored as its integers 2^u b (odd, in +-(2^(u+1) - 1))
in an int8 scalar quantizer, `ScalarQuantizer.QT_8bit_direct_signed`, with
the inner product metric (`IndexScalarQuantizer`, `IndexIVFScalarQuantizer`
without residuals, `IndexHNSWSQ`). That quantizer stores x as the byte x + 128
and decodes byte - 128: the integers exactly, at one byte per dimension (the
smallest faiss index that keeps them). Scores are float32 sums of products of
integers below 16 in size, m <= 65535 of them: every partial sum is an integer
below 2^24, so the scores are the exact <2^u_q b_q, 2^u b_d>. This ranks by
the raw inner product <b_q, b_d>, NOT by bebrjax's SDC score
<b_q, b_d> / ||b_d||: faiss's int8 indexes cannot divide by each document's
norm, so codes of a larger norm rank higher than in SDC. For SDC's ranking,
take a faiss shortlist of a few times k and rescore it with bebrjax
(`BinaryIndex.exact_ints`). faiss does not break equal scores of these
indexes to the lower id.

`FaissSearch` serves a u = 0 `BinaryIndex` or `IVFIndex` with faiss's
binary kernels and returns bebrjax's answer, scores and ids: an IVF index's
own lists and probes (`IndexBinaryIVF.search_preassigned`), and ties to the
lower id, which faiss's heaps do not keep (see `FaissSearch.search`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from bebrjax.errors import FaissMissingError
from bebrjax.search import codes as codes_lib
from bebrjax.search.index import BinaryIndex
from bebrjax.search.ivf import IVFIndex

if TYPE_CHECKING:
    import faiss

KINDS = ("flat", "ivf", "hnsw")
TRAIN_PER_LIST = 64  # k-means training codes per inverted list (faiss warns below 39)
_CHUNK_BYTES = 1 << 26  # working memory per chunk of documents converted


def import_faiss() -> Any:
    """The faiss module.

    Raises:
      FaissMissingError: when it is not installed, saying how to install it.
    """
    try:
        import faiss
    except ImportError:
        raise FaissMissingError(
            "faiss is not installed: pip install faiss-cpu (bebrjax's bench extra)"
        ) from None
    return faiss


def _codes(index: Any) -> BinaryIndex:
    """`index` if it is a BinaryIndex, else its `codes` attribute if that is one."""
    if isinstance(index, BinaryIndex):
        return index
    codes = getattr(index, "codes", None)
    if isinstance(codes, BinaryIndex):
        return codes
    raise TypeError(f"expected a BinaryIndex (or an index with one as .codes); got {type(index)}")


def _loops(index: BinaryIndex) -> int:
    """The u of every document (the versions holding documents must agree).

    Raises:
      ValueError: for an empty index, or documents of versions with different u.
    """
    if index.ntotal == 0:
        raise ValueError("the index is empty: there are no documents to hand off to faiss")
    held = {name: n for name, n in index.counts().items() if n}
    loops = {index.versions[name] for name in held}
    if len(loops) > 1:
        found = ", ".join(
            f"{name} (u={index.versions[name]}, {n} docs)" for name, n in held.items()
        )
        raise ValueError(
            f"the index holds documents of versions with different u: {found}; faiss scores "
            f"one kind of code (finish the backfill first)"
        )
    return loops.pop()


def _as_bytes(words: np.ndarray, m: int) -> np.ndarray:
    """[n, W] uint32 words of one plane -> [n, ceil(m/8)] uint8 (byte c//8, bit c%8 is c)."""
    data = np.ascontiguousarray(words).astype("<u4", copy=False).view(np.uint8)
    return np.ascontiguousarray(data[:, : -(-m // 8)])


def _as_ints(words: np.ndarray, m: int) -> np.ndarray:
    """[n, u+1, W] uint32 words -> float32 [n, m] of the integers 2^u b."""
    return codes_lib.decode_int(codes_lib.unpack(words, m)).astype(np.float32)


def _convert(index: BinaryIndex, u: int, rows: slice | np.ndarray) -> np.ndarray:
    """The faiss form of documents `rows`: bytes (u = 0) or float32 integers (u >= 1)."""
    if u == 0:
        return _as_bytes(index._words[rows, 0], index.m)
    return _as_ints(index._words[rows, : u + 1], index.m)


def _add_in_chunks(target: Any, index: BinaryIndex, u: int) -> None:
    """Adds every document to `target`, in id order, a bounded chunk at a time."""
    per_row = 4 * codes_lib.num_words(index.m) if u == 0 else 8 * (u + 1) * index.m
    step = max(1, _CHUNK_BYTES // per_row)
    for start in range(0, index.ntotal, step):
        target.add(_convert(index, u, slice(start, start + step)))


def to_faiss(
    index: Any,
    kind: str = "flat",
    *,
    nlist: int | None = None,
    hnsw_m: int = 32,
    seed: int = 0,
) -> faiss.Index | faiss.IndexBinary:
    """A faiss index of the same documents, with the same ids (0..ntotal-1).

    Args:
      index: a `BinaryIndex`, or an index whose attribute `codes` is one.
      kind: "flat" (exact), "ivf" (inverted lists, k-means trained on the
        codes; search `nprobe` lists, 1 by default) or "hnsw" (a graph).
      nlist: the inverted lists of "ivf"; default round(4 sqrt(ntotal)),
        bounded to [1, ntotal].
      hnsw_m: the graph's neighbours per node for "hnsw" (>= 2).
      seed: the seed of the "ivf" training sample and k-means.

    Returns:
      u = 0: `IndexBinaryFlat`, `IndexBinaryIVF` or `IndexBinaryHNSW` of width
      8 ceil(m/8) (zero-bit padding), reporting Hamming distances. u >= 1:
      `IndexScalarQuantizer`, `IndexIVFScalarQuantizer` or `IndexHNSWSQ` of
      width m (QT_8bit_direct_signed, inner product) holding the exact
      integers 2^u b, ranking by the raw inner product (module docstring).
      Queries for it: `faiss_queries`.

    Raises:
      ValueError: naming the problem: an unknown kind, a bad nlist or hnsw_m,
        an empty index, documents of versions with different u.
      TypeError: when `index` is no BinaryIndex and has none as `.codes`.
      FaissMissingError: when faiss is not installed.
    """
    index = _codes(index)
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {', '.join(KINDS)}")
    if kind == "hnsw" and (not isinstance(hnsw_m, int | np.integer) or hnsw_m < 2):
        raise ValueError(f"hnsw_m={hnsw_m} must be an integer >= 2")
    u, n, m = _loops(index), index.ntotal, index.m
    if kind == "ivf":
        if nlist is None:
            nlist = min(max(1, round(4 * math.sqrt(n))), n)
        if not isinstance(nlist, int | np.integer) or not 1 <= nlist <= n:
            raise ValueError(f"nlist={nlist} must be an integer in [1, {n}] (the documents)")
    faiss = import_faiss()
    if u == 0:
        d = 8 * -(-m // 8)
        if kind == "flat":
            target = faiss.IndexBinaryFlat(d)
        elif kind == "ivf":
            target = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(d), d, int(nlist))
        else:
            target = faiss.IndexBinaryHNSW(d, int(hnsw_m))
    else:
        qtype, ip = faiss.ScalarQuantizer.QT_8bit_direct_signed, faiss.METRIC_INNER_PRODUCT
        if kind == "flat":
            target = faiss.IndexScalarQuantizer(m, qtype, ip)
        elif kind == "ivf":
            # Not by residual: the codes are the integers themselves, not their
            # (rounded) differences to float centroids.
            target = faiss.IndexIVFScalarQuantizer(
                faiss.IndexFlatIP(m), m, int(nlist), qtype, ip, False
            )
            target.cp.spherical = True  # centroids of unit norm: an IP assignment ignores length
        else:
            target = faiss.IndexHNSWSQ(m, qtype, int(hnsw_m), ip)
    if kind == "ivf":
        target.cp.seed = int(seed)
        size = min(n, TRAIN_PER_LIST * int(nlist))
        sample = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
        target.train(_convert(index, u, sample))
    _add_in_chunks(target, index, u)
    return target


def faiss_queries(index: Any, query_planes: np.ndarray) -> np.ndarray:
    """Queries as the faiss index of `to_faiss(index)` takes them.

    Args:
      index: what was given to `to_faiss`.
      query_planes: int8 [Q, u_q+1, m_q] of +-1 ([Q, m_q] is u_q = 0), with
        m_q >= m (the first m coordinates are used), as `BinaryIndex.search`.

    Returns:
      u = 0: uint8 [Q, ceil(m/8)], the sign bits zero-padded as the codes
      (u_q must be 0). u >= 1: float32 [Q, m] of the integers 2^u_q b_q (any
      u_q; faiss's scores are then <2^u_q b_q, 2^u b_d>).

    Raises:
      ValueError: for planes of another shape or values, narrower than m, or
        of u_q > 0 for a u = 0 index.
    """
    index = _codes(index)
    queries, u_q = index._queries(query_planes)
    if _loops(index) > 0:
        return queries["ints"].astype(np.float32)
    if u_q:
        raise ValueError(
            f"a u=0 index is handed off as a binary faiss index, which takes one-plane "
            f"queries (u=0); got u={u_q}"
        )
    return _as_bytes(queries["words"][:, 0], index.m)


class FaissSearch:
    """A u = 0 `BinaryIndex` or `IVFIndex` searched by faiss, answering as the index does.

    For u = 0 the SDC score of every document is its integer ip = m - 2 Hamming
    times the one 1/sqrt(m), so faiss's Hamming ranking is bebrjax's, and the
    scores are computed from faiss's distances with the index's own float32
    arithmetic: the same scores and ids as `search` of the index.

    Args:
      index: a `BinaryIndex` or `IVFIndex` of u = 0 codes (metric "ip" or "hamming").

    Raises:
      ValueError: for codes of u >= 1, an empty or untrained index.
      FaissMissingError: when faiss is not installed.
    """

    def __init__(self, index: BinaryIndex | IVFIndex):
        self.ivf = index if isinstance(index, IVFIndex) else None
        self.codes = _codes(index)
        if self.codes.u != 0:
            raise ValueError(
                f"faiss serves codes of u = 0 (one plane); this index holds u = {self.codes.u}"
            )
        _loops(self.codes)  # not empty
        faiss = import_faiss()
        d = 8 * -(-self.codes.m // 8)
        if self.ivf is None:
            self._faiss = faiss.IndexBinaryFlat(d)
            _add_in_chunks(self._faiss, self.codes, 0)
            return
        self.ivf._check_trained()
        self._faiss = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(d), d, self.ivf.nlist)
        self._faiss.is_trained = True  # the lists are the IVF index's: no faiss quantizer
        lists = self.ivf.lists.astype(np.int64)
        step = max(1, _CHUNK_BYTES // (4 * codes_lib.num_words(self.codes.m)))
        for start in range(0, self.codes.ntotal, step):
            rows = slice(start, start + step)
            x, assign = _convert(self.codes, 0, rows), lists[rows]
            self._faiss.add_core(len(x), faiss.swig_ptr(x), None, faiss.swig_ptr(assign))

    @property
    def m(self) -> int:
        """Code width."""
        return self.codes.m

    @property
    def ntotal(self) -> int:
        """Documents in the index."""
        return self.codes.ntotal

    def search(
        self, query_planes: np.ndarray, k: int, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The index's `search` answer (scores, ids) [Q, k], computed by faiss.

        faiss returns a query's `width` nearest in some order of equal
        distances; when the width-th distance exceeds the k-th, every document
        at the k-th distance or nearer is among them, and sorting them by
        (distance, id) gives the top k with ties to the lower id. A query
        whose width-th distance equals its k-th is asked again with twice the
        width, up to all the documents it may return.

        Args:
          query_planes: u = 0 query codes, as `BinaryIndex.search` takes them.
          k: results per query.
          nprobe: an IVF index's lists per query (as `IVFIndex.search`); None
            for a `BinaryIndex`.

        Raises:
          ValueError: as the index's `search`, and for queries of u_q > 0.
        """
        queries, u_q = self.codes._queries(query_planes)
        if u_q:
            raise ValueError(f"faiss serves one-plane (u = 0) queries; got u = {u_q}")
        x = _as_bytes(queries["words"][:, 0], self.m)
        if (self.ivf is None) != (nprobe is None):
            raise ValueError("nprobe goes with an IVF index, and an IVF index needs nprobe")
        if self.ivf is None:
            self.codes._check_k(k)
            available = np.full(len(x), self.ntotal)
            probes = None
        else:
            probes = self.ivf.probes(queries["ints"], nprobe)
            available = self.ivf.list_sizes()[probes].sum(1)
            if len(x) and (k < 1 or available.min() < k):
                raise ValueError(
                    f"k={k} must be in [1, {available.min()}] (the documents of the "
                    f"fewest probed lists of a query at nprobe={nprobe})"
                )
        distances = np.zeros((len(x), k), np.int64)
        ids = np.zeros((len(x), k), np.int64)
        rows, width = np.arange(len(x)), k
        while rows.size:
            width = int(min(2 * width, available[rows].max()))
            if probes is None:
                found_d, found_i = self._faiss.search(x[rows], width)
            else:
                self._faiss.nprobe = probes.shape[1]
                found_d, found_i = self._faiss.search_preassigned(
                    x[rows], width, probes[rows], None
                )
            found_d = np.where(found_i < 0, np.iinfo(np.int64).max, found_d.astype(np.int64))
            done = (available[rows] <= width) | (found_d[:, -1] > found_d[:, k - 1])
            order = np.lexsort((found_i, found_d), axis=1)[:, :k]
            distances[rows[done]] = np.take_along_axis(found_d, order, 1)[done]
            ids[rows[done]] = np.take_along_axis(found_i, order, 1)[done]
            rows = rows[~done]
        if self.codes.metric == "hamming":
            return distances.astype(np.float32), ids
        ip = (self.m - 2 * distances).astype(np.float32)
        return ip * self.codes._inv_norms[ids], ids
