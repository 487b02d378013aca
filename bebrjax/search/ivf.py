"""An inverted-file index over recurrent binary codes: search a few lists, exactly.

    ivf = IVFIndex.from_index(index, nlist=1024)    # k-means on a sample of the codes
    scores, ids = ivf.search(query_planes, k=10, nprobe=16)
    ivf.save("gallery.ivf"); ivf = IVFIndex.load("gallery.ivf")

or from scratch: `IVFIndex(m, u, nlist=...)`, `train(planes)`, `add(planes)`;
`replace(ids, planes, version)` as `BinaryIndex.replace`.

Coarse quantizer: `nlist` unit centroids from spherical k-means
(`bebrjax.search.kmeans`) over decoded codes b = sum_i 2^-i s_i (or float
vectors of width m; `bebrjax.search.ivf_train`). Each document lives in the
list of its nearest centroid by cosine; a query scans the `nprobe` lists
nearest its own decoded code.

Versions and backfill: a replaced document (`replace`, or a backfill step
on a saved IVF index, `bebrjax.search.backfill`) moves to the list of its
new code's nearest centroid; the centroids stay. The codes may be shared
with a `BinaryIndex` (`from_index`): a change made to them directly is seen
by the codes' revision at the next use, which assigns every document again.
The next search builds the device tiles anew, so it equals a fresh IVF
index of the same codes and centroids.

Within the probed lists the answer is exact, as `BinaryIndex.search` is
over the whole gallery: SDC scores (Hamming for metric "hamming"), each
document in its own version, ties to the lower id. With nprobe = nlist the
answer equals `BinaryIndex.search` bit for bit.

Search: the queries' nearest lists are found a chunk of queries at a time
(`kmeans.probe`) and their documents scanned on the device in tiles
(`bebrjax.search.ivf_scan`), in a few compiled shapes; the device returns
each query's float top k + spare candidates (`bebrjax.search.probed`), and
the host ranks them exactly (`bebrjax.search.ivf_exact`).

Default nprobe: `search` without nprobe probes the index's `nprobe` (chosen
by `bebrjax ivf`, `bebrjax.search.ivf_nprobe`; None: every list).

On disk an IVF index is a `BinaryIndex` directory (so `BinaryIndex.load`
still opens it for an exhaustive search) plus `ivf.json`
({"format": "bebrjax.IVFIndex", "version": 1, "nlist", "m", "nprobe"}),
`centroids.npy` float32 [nlist, m] and `lists.npy` int32 [count], written
together crash-safely (`bebrjax.search.storage.write_index`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jax.sharding import Mesh

from bebrjax.errors import IndexFormatError
from bebrjax.search import ivf_exact, ivf_train, kmeans, scoring, storage, topk
from bebrjax.search.index import BinaryIndex
from bebrjax.search.ivf_scan import ListScan


class IVFIndex:
    """Recurrent binary codes in inverted lists; exact SDC / Hamming within the probed lists.

    Args:
      m: code width.
      u: loops of the first version (0..3).
      metric: "ip" (SDC) or "hamming" (u = 0), as `BinaryIndex`.
      nlist: inverted lists (centroids).
      version: the first version's name.
      kernel: "auto", "popcount" or "matmul", as `BinaryIndex`.
      tile: documents per tile; a list's padding is less than one tile.
      group: documents per group of the two-level top-k; divides `tile`.
      chunk: tiles a query gathers per scan step (a power of two).
      query_batch: queries searched at once.
      mesh: optional device mesh; the tiles are split over its `data` axis.

    Attributes:
      nprobe: the lists `search` probes when given none, 1..nlist, saved with
        the index (`bebrjax.search.ivf_nprobe` chooses it); None: every list.
    """

    def __init__(
        self,
        m: int,
        u: int = 1,
        metric: str = "ip",
        *,
        nlist: int,
        version: str = "default",
        kernel: str = "auto",
        tile: int = 64,
        group: int = 32,
        chunk: int = 16,
        query_batch: int = 256,
        mesh: Mesh | None = None,
    ):
        self.codes = BinaryIndex(m, u, metric, version=version, kernel=kernel, mesh=mesh)
        if not isinstance(nlist, int | np.integer) or nlist < 1:
            raise ValueError(f"nlist={nlist} must be a positive integer")
        if min(tile, group, chunk, query_batch) <= 0 or tile % group or chunk & (chunk - 1):
            raise ValueError(
                f"tile={tile}, group={group}, chunk={chunk} and query_batch={query_batch} "
                "must be positive, group must divide tile and chunk be a power of two"
            )
        self.nlist, self.tile, self.group = int(nlist), tile, group
        self.chunk, self.query_batch = chunk, query_batch
        self.centroids: np.ndarray | None = None
        self.nprobe: int | None = None
        self._set_lists(np.zeros(0, np.int32))

    @property
    def m(self) -> int:
        """Code width."""
        return self.codes.m

    @property
    def u(self) -> int:
        """The stored planes - 1 (the largest u of the versions)."""
        return self.codes.u

    @property
    def metric(self) -> str:
        """The metric, "ip" or "hamming"."""
        return self.codes.metric

    @property
    def ntotal(self) -> int:
        """Documents in the index."""
        return self.codes.ntotal

    def counts(self) -> dict[str, int]:
        """Version name -> how many documents hold a code of that version."""
        return self.codes.counts()

    def __repr__(self) -> str:
        return f"IVFIndex(nlist={self.nlist}, codes={self.codes!r})"

    @property
    def default_nprobe(self) -> int:
        """The lists `search` probes when given no nprobe: `nprobe`, or nlist when None."""
        return self.nlist if self.nprobe is None else self.nprobe

    @property
    def lists(self) -> np.ndarray:
        """Each document's list, int32 [ntotal]."""
        return np.array(self._current_lists())

    def list_sizes(self) -> np.ndarray:
        """Documents per list, int64 [nlist]."""
        return np.bincount(self._current_lists(), minlength=self.nlist)

    # --- building ----------------------------------------------------------------------------

    def train(
        self, x: np.ndarray | BinaryIndex, *, iters: int = 20, seed: int = 0, sample: int = 0
    ) -> None:
        """Trains the coarse quantizer (spherical k-means) on codes or float vectors.

        Args:
          x: int8 planes [N, u'+1, m] of +-1 (any u', decoded), float
            vectors [N, m] in the codes' space (e.g. decoded codes of
            another version), or a `BinaryIndex` of width m (its codes,
            each decoded in its own version).
          iters: Lloyd iterations.
          seed: the initial centroids' draw and the sample's.
          sample: train on this many points drawn from x, the only rows read
            and decoded (0: 256 per list, as faiss's default; all of x when
            it has fewer; `ivf_train.training_points`).

        Raises:
          ValueError: for x of another width or values, or fewer points than lists.
        """
        points = ivf_train.training_points(x, self.m, sample or 256 * self.nlist, seed)
        self._set_centroids(kmeans.train(points, self.nlist, iters=iters, seed=seed))

    def _set_centroids(self, centroids: np.ndarray) -> None:
        """Uses `centroids` [nlist, m] and reassigns the documents already held."""
        centroids = np.asarray(centroids, np.float32)
        if centroids.shape != (self.nlist, self.m):
            raise ValueError(
                f"centroids must have shape [nlist={self.nlist}, m={self.m}]; "
                f"got {list(centroids.shape)}"
            )
        self.centroids = kmeans.normalize(centroids)
        self._set_lists(self._assign(np.arange(self.ntotal)))

    def _assign(self, ids: np.ndarray) -> np.ndarray:
        """The nearest list of documents `ids`."""
        return ivf_train.assign(self.codes, self.centroids, ids)

    def _set_lists(self, lists: np.ndarray) -> None:
        """Takes `lists` as the lists of the codes as they are now; drops the device copy."""
        self._lists, self._revision, self._scan = lists, self.codes.revision, None

    def _current_lists(self) -> np.ndarray:
        """Each document's list, every one reassigned if the codes changed behind the index."""
        if self.centroids is not None and self._revision != self.codes.revision:
            self._set_lists(self._assign(np.arange(self.ntotal)))
        return self._lists

    def add(self, planes: np.ndarray, version: str | None = None) -> None:
        """Appends documents (as `BinaryIndex.add`) to the lists of their nearest centroids.

        Raises:
          ValueError: before training, or as `BinaryIndex.add`.
        """
        self._check_trained()
        lists, start = self._current_lists(), self.ntotal
        self.codes.add(planes, version)
        self._set_lists(np.concatenate([lists, self._assign(np.arange(start, self.ntotal))]))

    def replace(self, ids: np.ndarray, planes: np.ndarray, version: str) -> None:
        """Replaces the codes of documents `ids` (as `BinaryIndex.replace`); they change lists.

        Each replaced document moves to the list of its new code's nearest
        centroid; the centroids and the other documents' lists stay.

        Raises:
          ValueError: before training, or as `BinaryIndex.replace` (nothing is changed then).
        """
        self._check_trained()
        lists = self._current_lists()
        self.codes.replace(ids, planes, version)
        ids = np.asarray(ids, np.int64)
        lists[ids] = self._assign(ids)
        self._set_lists(lists)

    @classmethod
    def from_index(
        cls,
        codes: BinaryIndex,
        nlist: int,
        *,
        train_on: np.ndarray | None = None,
        centroids: np.ndarray | None = None,
        iters: int = 20,
        seed: int = 0,
        sample: int = 0,
        **layout: Any,
    ) -> IVFIndex:
        """An IVF index over the documents of `codes` (shared, not copied).

        Args:
          codes: the documents, e.g. `BinaryIndex.load` of what `bebrjax encode` wrote.
          nlist: inverted lists.
          train_on: points to train the quantizer on (see `train`); default
            a sample of the index's own decoded codes.
          centroids: use these [nlist, m] instead of training (e.g. another
            IVF index's, to share its lists).
          iters: as for `train`.
          seed: as for `train`.
          sample: as for `train`.
          **layout: tile, group, chunk, query_batch (the kernel and mesh are the codes').
        """
        ivf = cls._over(codes, nlist, **layout)
        if centroids is not None:
            ivf._set_centroids(centroids)
            return ivf
        ivf.train(codes if train_on is None else train_on, iters=iters, seed=seed, sample=sample)
        return ivf

    @classmethod
    def _over(cls, codes: BinaryIndex, nlist: int, **layout: Any) -> IVFIndex:
        """An untrained IVF index sharing the documents of `codes`."""
        (first, u), *_ = codes.versions.items()
        ivf = cls(codes.m, u, codes.metric, nlist=nlist, version=first, **layout)
        ivf.codes = codes
        return ivf

    def _check_trained(self) -> None:
        if self.centroids is None:
            raise ValueError("the IVF index is not trained: call train(...) before add/search")

    # --- search ------------------------------------------------------------------------------

    def search(
        self, query_planes: np.ndarray, k: int, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The exact k nearest documents of each query within its `nprobe` nearest lists.

        Args:
          query_planes: as for `BinaryIndex.search` (any u_q, m_q >= m).
          k: results per query; at most the documents in a query's probed lists.
          nprobe: lists scanned per query, 1..nlist (nlist: every document);
            None: `default_nprobe`.

        Returns:
          (scores, ids) [Q, k] as `BinaryIndex.search` returns them.

        Raises:
          ValueError: naming the problem: untrained or empty index, nprobe
            outside [1, nlist], k < 1 or more than a query's probed
            documents, or queries as `BinaryIndex.search` refuses them.
        """
        self._check_trained()
        if self.ntotal == 0:
            raise ValueError("the index is empty: add documents before searching")
        if not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k={k} must be a positive integer")
        queries, u_q = self.codes._queries(query_planes)
        nprobe = self.default_nprobe if nprobe is None else nprobe
        probes = self.probes(queries["ints"], nprobe)
        available = self.list_sizes()[probes].sum(1)
        if len(probes) and available.min() < k:
            row = int(available.argmin())
            raise ValueError(
                f"k={k} but query {row}'s {nprobe} probed lists hold only "
                f"{available[row]} documents; raise nprobe or lower k"
            )
        exact_floats = self.metric == "hamming" or self.u == 0
        # Integer scores tie often (k + SPARE candidates left many queries to the host's
        # exact ranking over their lists at k = 100): ask for more where they tie.
        width = min(self.ntotal, k + max(topk.SPARE, k if exact_floats else 0))
        scores, ids = self._list_scan().candidates(queries, probes, width)
        complete = available <= width
        words, members = queries["words"], self._list_scan().placement.members
        if exact_floats:
            scores, ids = ivf_exact.exact_float_topk(
                self.codes, members, scores, ids, k, complete, words, probes, u_q
            )
            return (-scores if self.metric == "hamming" else scores), ids
        scale = 2.0**-u_q
        return topk.exact_topk(
            scores,
            ids,
            k,
            bound=scoring.sdc_bound(scores),
            complete=complete,
            exact=lambda rows, d: topk.SdcScores(*self.codes.exact_ints(words[rows], d), scale),
            exact_all=lambda row: ivf_exact.probed_scores(
                self.codes, members, words[row], probes[row], scale
            ),
        )

    def probes(self, query_ints: np.ndarray, nprobe: int) -> np.ndarray:
        """The lists each query scans: its `nprobe` nearest centroids, int [Q, nprobe].

        Args:
          query_ints: the queries' +-1 codes summed over planes, as
            `codes.query_codes` gives them ("ints").
          nprobe: lists per query, 1..nlist (nlist: every list, unranked).

        Raises:
          ValueError: when nprobe is outside [1, nlist].
        """
        if not isinstance(nprobe, int | np.integer) or not 1 <= nprobe <= self.nlist:
            raise ValueError(f"nprobe={nprobe} must be an integer in [1, {self.nlist}] (nlist)")
        if nprobe == self.nlist:  # every list: no need to rank them
            return np.broadcast_to(np.arange(self.nlist), (len(query_ints), self.nlist))
        return kmeans.probe(query_ints.astype(np.float32), self.centroids, int(nprobe))

    def _list_scan(self) -> ListScan:
        """The documents in the tiles of their lists on the device(s), built after each change."""
        lists = self._current_lists()
        if self._scan is None:
            self._scan = ListScan(
                self.codes,
                lists,
                self.nlist,
                tile=self.tile,
                group=self.group,
                chunk=self.chunk,
                query_batch=self.query_batch,
            )
        return self._scan

    # --- storage -----------------------------------------------------------------------------

    def save(self, path: str) -> None:
        """Writes the index (codes, centroids, lists) to directory `path`, crash-safely."""
        self._check_trained()
        arrays, header = self.codes.saved_parts()
        arrays[storage.CENTROIDS] = self.centroids
        arrays[storage.LISTS] = self._current_lists().astype("<i4")
        meta = {"format": storage.IVF_FORMAT, "version": storage.IVF_VERSION}
        meta.update(nlist=self.nlist, m=self.m, nprobe=self.nprobe)
        storage.write_index(path, arrays, json_files={storage.IVF_FILE: meta}, **header)

    @classmethod
    def load(cls, path: str, **kwargs: Any) -> IVFIndex:
        """Opens a saved IVF index, its arrays memory-mapped copy-on-write.

        Args:
          path: a directory written by `save`.
          **kwargs: kernel and mesh (for the codes), tile, group, chunk, query_batch.

        Raises:
          IndexFormatError: as `BinaryIndex.load`, or when the IVF files are
            missing, foreign or disagree with the codes (another m, count or nlist).
        """
        codes_kwargs = {key: kwargs.pop(key) for key in ("kernel", "mesh") if key in kwargs}
        codes = BinaryIndex.load(path, **codes_kwargs)
        meta = storage.read_ivf_meta(path, codes.m)
        centroids = storage.load_array(path, storage.CENTROIDS, (meta["nlist"], codes.m), "<f4")
        lists = storage.load_array(path, storage.LISTS, (codes.ntotal,), "<i4")
        if codes.ntotal and not 0 <= lists.min() <= lists.max() < meta["nlist"]:
            raise IndexFormatError(
                f"{path}: {storage.LISTS} holds lists outside [0, {meta['nlist']})"
            )
        ivf = cls._over(codes, meta["nlist"], **kwargs)
        ivf.centroids, ivf.nprobe = np.asarray(centroids, np.float32), meta.get("nprobe")
        ivf._set_lists(lists)
        return ivf
