"""A faiss-like index over recurrent binary codes (`FloatIndex`: float vectors).

    index = BinaryIndex(m=512, u=1)            # metric "ip" (SDC) or "hamming" (u = 0)
    index.add(planes)                          # int8 [N, u+1, m] of +-1, from the binarizer
    scores, ids = index.search(query_planes, k=100)
    index.save("gallery.bebr"); index = BinaryIndex.load("gallery.bebr")

Search is exact (see `bebrjax.search.topk`): ranked by the exact
<b_q, b_d> / ||b_d|| (Hamming: distance), ties to the lower id; numpy float32
scores, descending (distances ascending), and int64 ids.

Versions: one index may hold codes of several named versions (e.g. the
binarizers of an old and a new embedding model), each with its own u (0..3)
and the same width m. Every document is scored with the code of its own
version, and a query of any u meets every document exactly (cross-u SDC,
see `bebrjax.search.scoring`), so a gallery can be backfilled to a new
version a slice at a time while it serves:

    index = BinaryIndex(m=512, u=1, version="v1")
    index.add(old_planes)                      # version "v1"
    index.replace(ids, new_planes, "v2")       # re-encoded docs; "v2" registered, u from the planes

`bebrjax.search.backfill` does a replace on a saved index, crash-safely.
The on-disk format is in `bebrjax.search.storage`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jax.sharding import Mesh

from bebrjax.errors import IndexFormatError
from bebrjax.search import band, code_versions, kernels, scoring, storage, topk
from bebrjax.search import codes as codes_lib
from bebrjax.search.blocked import BlockedIndex
from bebrjax.search.storage import CODES, NORMS, VERSIONS

__all__ = ["BinaryIndex"]


class BinaryIndex(BlockedIndex):
    """Recurrent binary codes of one or more versions, packed, searched exactly.

    Each version has a name and its own loops u; all share the width m.
    Codes are stored with P = U+1 planes (U the largest u); a document of a
    version with fewer planes has zero words in the others, which score
    with weight 0.

    Args:
      m: code width (bits per plane).
      u: loops of the first version (0..3).
      metric: "ip" ranks by <b_q, b_d> / ||b_d|| (SDC); "hamming" (u = 0
        only, every version) ranks by Hamming distance and reports distances.
      version: the first version's name; `add` without a version adds to it.
      kernel: the scan's kernel: "auto" (int8 matmul on GPU/TPU; on CPU the
        fastest xor-popcount kernel for this code shape, measured once, see
        `bebrjax.search.kernels`) or one of `scoring.KERNELS`; all give
        identical scores. The few documents of each query's best groups are
        scored again by popcount.
      query_bits: how its queries are served (0: as codes; B >= 1: a model's
        pre-sign output at B bits, `Binarizer.encode_query`): recorded with
        the index so that it is searched as it was evaluated; `search` takes
        whatever query planes it is given.
      **layout: block_size, tile, group, query_batch, mesh (see `BlockedIndex`).
    """

    def __init__(
        self,
        m: int,
        u: int = 1,
        metric: str = "ip",
        *,
        version: str = "default",
        kernel: str = "auto",
        query_bits: int = 0,
        block_size: int = 65536,
        tile: int = 128,
        group: int = 32,
        query_batch: int = 512,
        mesh: Mesh | None = None,
    ):
        super().__init__(
            block_size=block_size, tile=tile, group=group, query_batch=query_batch, mesh=mesh
        )
        if not isinstance(m, int | np.integer) or not 1 <= m <= 65535:
            raise ValueError(f"m={m} must be an integer in [1, 65535]")
        if metric not in ("ip", "hamming"):
            raise ValueError(f"metric={metric!r}: expected 'ip' or 'hamming'")
        self.m, self.metric, self.query_bits = int(m), metric, int(query_bits)
        self.kernel = kernels.check(kernel)
        self._versions: dict[str, int] = {}
        self._words = np.zeros((0, 0, codes_lib.num_words(self.m)), np.uint32)
        self._inv_norms = np.zeros((0,), np.float32)
        self._doc_versions = np.zeros((0,), np.uint8)
        self.revision = 0  # counts the changes, for what is derived from the codes (IVF lists)
        code_versions.check(version, u, metric, 0)
        self._register(version, int(u))

    @property
    def ntotal(self) -> int:
        """Documents in the index."""
        return len(self._inv_norms)

    @property
    def u(self) -> int:
        """The stored planes - 1: the largest u of the versions."""
        return self._words.shape[1] - 1

    @property
    def versions(self) -> dict[str, int]:
        """Version name -> its u, in the order registered."""
        return dict(self._versions)

    @property
    def doc_versions(self) -> np.ndarray:
        """Each document's version, an index into `versions`: uint8 [ntotal]."""
        return np.array(self._doc_versions, np.uint8)

    def counts(self) -> dict[str, int]:
        """Version name -> how many documents hold a code of that version."""
        found = np.bincount(self._doc_versions, minlength=len(self._versions))
        return {name: int(n) for name, n in zip(self._versions, found, strict=True)}

    def __repr__(self) -> str:
        return (
            f"BinaryIndex(count={self.ntotal}, m={self.m}, u={self.u}, "
            f"metric={self.metric!r}, versions={self.counts()})"
        )

    @property
    def bytes_per_doc(self) -> int:
        """Stored bytes per document: planes, float32 1/||b||, uint8 version if several."""
        return (self.u + 1) * codes_lib.num_words(self.m) * 4 + 4 + (len(self._versions) > 1)

    def _register(self, name: str, u: int) -> None:
        """Adds version `name` of loops `u`, widening the stored planes if it has more."""
        self._versions[name] = u
        if u + 1 > self._words.shape[1]:
            wider = np.zeros((self.ntotal, u + 1, self._words.shape[2]), np.uint32)
            wider[:, : self._words.shape[1]] = self._words
            self._words = wider
        self._invalidate()

    def _stored(self, planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(words [N, U+1, W] with zero words past the code's planes, 1/||b|| [N])."""
        words = codes_lib.pack(planes)
        words = np.pad(words, ((0, 0), (0, self.u + 1 - words.shape[1]), (0, 0)))
        return words, codes_lib.inverse_norms(planes)

    def add(self, planes: np.ndarray, version: str | None = None) -> None:
        """Appends documents given as int8 bit planes [N, u+1, m] of +-1.

        Args:
          planes: the codes, with the u of `version`.
          version: the codes' version; None is the first version. A new name
            registers a version with u = planes.shape[1] - 1.
        """
        name, u, planes = code_versions.resolve(
            self._versions, planes, version, self.m, self.metric
        )
        if name not in self._versions:
            self._register(name, u)
        words, inv_norms = self._stored(planes)
        tag = np.full(len(planes), list(self._versions).index(name), np.uint8)
        self._words = np.concatenate([self._words, words])
        self._inv_norms = np.concatenate([self._inv_norms, inv_norms])
        self._doc_versions = np.concatenate([self._doc_versions, tag])
        self._invalidate()

    def replace(self, ids: np.ndarray, planes: np.ndarray, version: str) -> None:
        """Replaces the codes of documents `ids` with codes of `version` (a backfill step).

        The documents keep their ids; their codes, norms and version change.
        Loaded indexes are mapped copy-on-write: their files are never written.

        Args:
          ids: unique document ids in [0, ntotal), int [n].
          planes: int8 [n, u+1, m] of +-1, row i the new code of ids[i].
          version: the codes' version; a new name registers a version with
            u = planes.shape[1] - 1.

        Raises:
          ValueError: naming the problem (ids not 1-D integers, out of range
            or repeated, planes of the wrong shape or values, or a count
            that differs from the ids'); nothing is changed then.
        """
        ids = self._check_ids(ids)
        name, u, planes = code_versions.resolve(
            self._versions, planes, version, self.m, self.metric
        )
        if len(planes) != len(ids):
            raise ValueError(f"planes hold {len(planes)} codes for {len(ids)} ids")
        if name not in self._versions:
            self._register(name, u)
        self._words[ids], self._inv_norms[ids] = self._stored(planes)
        self._doc_versions[ids] = list(self._versions).index(name)
        self._invalidate()

    def _invalidate(self) -> None:
        super()._invalidate()
        self.revision += 1

    def planes(self, ids: np.ndarray) -> np.ndarray:
        """The stored codes of documents `ids` (ints in [0, ntotal)) as int8 planes [n, U+1, m].

        A document of a version with u < U reads +1 in the planes past its own
        (their zero words): its code is the first u+1 planes.
        """
        return codes_lib.unpack(self._words[self._check_ids(ids, unique=False)], self.m)

    def rows(self, start: int, stop: int) -> BinaryIndex:
        """Documents [start, stop) as an index of their own (ids from 0), sharing their arrays.

        The arrays are views (of a memory map, for a loaded index: only
        these rows are ever read from disk); the versions stay the same.
        """
        (first, u), *_ = self._versions.items()
        part = BinaryIndex(
            self.m,
            u,
            self.metric,
            version=first,
            kernel=self.kernel,
            query_bits=self.query_bits,
            block_size=self.block_size,
            tile=self.tile,
            group=self.group,
            query_batch=self.query_batch,
            mesh=self.mesh,
        )
        part._versions = dict(self._versions)
        part._words = self._words[start:stop]
        part._inv_norms = self._inv_norms[start:stop]
        part._doc_versions = self._doc_versions[start:stop]
        return part

    def _check_ids(self, ids: np.ndarray, unique: bool = True) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(
                f"ids must be a 1-D array of integers; got shape {list(ids.shape)}, "
                f"dtype {ids.dtype}"
            )
        ids = ids.astype(np.int64)
        outside = ids[(ids < 0) | (ids >= self.ntotal)]
        if outside.size:
            raise ValueError(f"ids out of range [0, {self.ntotal}): {outside[:5].tolist()}")
        distinct, seen = np.unique(ids, return_counts=True)
        if unique and (seen > 1).any():
            raise ValueError(f"ids must be unique; repeated: {distinct[seen > 1][:5].tolist()}")
        return ids

    def search(self, query_planes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The exact k nearest documents of each query, each document in its own version.

        Args:
          query_planes: int8 [Q, u_q+1, m_q] of +-1, any u_q in 0..3 ([Q, m_q]
            is u_q = 0). m_q >= m: a wider query (e.g. a new version's code
            against a narrower old gallery) is compared on its first m
            coordinates, the prefix the codes share.
          k: results per query, 1 <= k <= ntotal.

        Returns:
          (scores, ids) [Q, k]: float32 <b_q, b_d> / ||b_d|| descending
          (Hamming: distances ascending) and int64 ids, ranked by the exact
          score (`topk.exact_topk`), ties to the lower id.

        Raises:
          ValueError: for planes of another shape or values, a query
            narrower than m, or u_q > 0 with metric "hamming".
        """
        queries, u_q = self._queries(query_planes)
        if self.metric == "hamming" or self.u == 0:
            # Exact floats: minus integer distances, or f = fl(ip c) for the one norm
            # sqrt(m), which orders as the integers ip (|ip| < 2^20) do.
            scores, ids = self._search(queries, k)
            return (-scores if self.metric == "hamming" else scores), ids
        self._check_k(k)
        width = min(self.ntotal, k + topk.SPARE)
        scores, ids = self._search(queries, width)
        words, scale = queries["words"], 2.0**-u_q
        return topk.exact_topk(
            scores,
            ids,
            k,
            bound=scoring.sdc_bound(scores),
            complete=width == self.ntotal,
            exact=lambda rows, d: topk.SdcScores(*self.exact_ints(words[rows], d), scale),
            exact_all=lambda row: (
                topk.SdcScores(*self.exact_ints(words[row]), scale),
                np.arange(self.ntotal),
            ),
            shortlist=band.shortlister(
                self, queries, scores, ids, k, u_q, exact_ints=self.exact_ints, run=self._run
            ),
        )

    def _run(self, queries: dict[str, np.ndarray], width: int, scorer: Any):
        """`_search` with `scorer` for the top min(width, ntotal) (`band.shortlister`'s run)."""
        return self._search(queries, min(width, self.ntotal), scorer)

    def _queries(self, query_planes: np.ndarray) -> tuple[dict[str, np.ndarray], int]:
        """Checked query planes as the search takes them, and their u (`codes.query_codes`)."""
        return codes_lib.query_codes(query_planes, self.m, self.metric)

    def exact_ints(
        self, query_words: np.ndarray, ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The integers behind "ip" scores (`scoring.exact_ints`), exactly, on the host.

        Args:
          query_words: packed query planes, one per document [F, u_q+1, W], or
            one query [u_q+1, W] for every document.
          ids: the documents [F]; None: every document, in id order.

        Returns:
          (ip, norm) int64 [F] (or [ntotal]): the exact score is ip / (2^u_q sqrt(norm)).
        """
        if ids is None:
            return scoring.exact_ints(query_words, self._words, self._loops(), self.m)
        return scoring.exact_ints(query_words, self._words[ids], self._loops(ids), self.m)

    def _loops(self, ids: np.ndarray | None = None) -> np.ndarray:
        """The loops of documents `ids` (None: every document), uint8."""
        table = np.array(list(self._versions.values()), np.uint8)
        return table[self._doc_versions if ids is None else self._doc_versions[ids]]

    def _host_arrays(self) -> dict[str, Any]:
        arrays = {
            "planes": [self._words[:, j] for j in range(self.u + 1)],
            "scale": self._inv_norms * np.float32(2.0**-self.u),
        }
        loops = self._loops()
        if (loops < self.u).any():  # else every document has U loops: static weights
            arrays["loops"] = loops
        if len(self._versions) > 1:  # for version-aware scores (`bebrjax.search.fusion`)
            arrays["version"] = self._doc_versions
        return arrays

    def _kernel(self) -> str:
        """The kernel the scan runs ("auto" resolved for this backend, CPU and code shape)."""
        return kernels.resolve(self.kernel, self.m, self.u + 1, self.metric, BinaryIndex)

    def _score_key(self) -> tuple:
        return (self.m, self.metric, self._kernel())

    def _score_fn(self, kernel: str | None = None):
        m, metric, kernel = self.m, self.metric, kernel or self._kernel()
        return lambda q, block: scoring.code_scores(q, block, m=m, metric=metric, kernel=kernel)

    def _rescore_fn(self):
        # The same floats as either kernel. Unpacking each query's few candidates for
        # a product took about half of the matmul kernel's search time on XLA:CPU.
        return self._score_fn("popcount")

    def save(self, path: str) -> None:
        """Writes the index to directory `path`, replacing it whole, crash-safely.

        `path` may be the directory this index was loaded from.
        """
        arrays, header = self.saved_parts()
        storage.write_index(path, arrays, **header)

    def saved_parts(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """What `save` writes: (file name -> array, the header's fields)."""
        arrays = {
            CODES: self._words.astype("<u4", copy=False),
            NORMS: self._inv_norms.astype("<f4", copy=False),
        }
        if len(self._versions) > 1:
            arrays[VERSIONS] = self._doc_versions
        versions = [{"name": name, "u": u} for name, u in self._versions.items()]
        header = {
            "m": self.m,
            "u": self.u,
            "metric": self.metric,
            "count": self.ntotal,
            "versions": versions,
            "query_bits": self.query_bits,
        }
        return arrays, header

    def decoded(self, ids: np.ndarray) -> np.ndarray:
        """The codes b = sum_i 2^-i s_i of documents `ids`, each of its own u: float32 [n, m]."""
        ids = self._check_ids(ids, unique=False)
        planes = codes_lib.unpack(self._words[ids], self.m).astype(np.float32)
        loops = self._loops(ids)
        weights = np.where(
            np.arange(self.u + 1) <= loops[:, None], 2.0 ** -np.arange(self.u + 1), 0
        )
        return np.einsum("npm,np->nm", planes, weights.astype(np.float32))

    @classmethod
    def load(cls, path: str, **kwargs: Any) -> BinaryIndex:
        """Opens a saved index, memory-mapping its arrays copy-on-write.

        Args:
          path: the index directory (format version 1 or 2).
          **kwargs: as for the constructor (kernel, layout), not m, u, metric
            or version, which come from the header.

        Raises:
          IndexFormatError: when `path` is missing, foreign, of another
            format version, its header or versions list is bad, or its
            arrays are truncated or disagree with the header.
        """
        stored = storage.read_index(path)
        (first, u), *rest = stored.versions
        try:
            kwargs.setdefault("query_bits", stored.query_bits)
            index = cls(stored.m, u, stored.metric, version=first, **kwargs)
            for name, u in rest:
                code_versions.check(name, u, index.metric, len(index._versions))
                index._register(name, u)
        except ValueError as e:
            raise IndexFormatError(f"{path}: header.json: {e}") from None
        index._words, index._inv_norms = stored.words, stored.inv_norms
        if stored.doc_versions is None:
            index._doc_versions = np.zeros(len(stored.inv_norms), np.uint8)
        else:
            index._doc_versions = stored.doc_versions
        return index
