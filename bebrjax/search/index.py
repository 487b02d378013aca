"""faiss-like indexes over recurrent binary codes and float vectors.

    index = BinaryIndex(m=512, u=1)            # metric "ip" (SDC) or "hamming" (u = 0)
    index.add(planes)                          # int8 [N, u+1, m] of +-1, from the binarizer
    scores, ids = index.search(query_planes, k=100)
    index.save("gallery.bebr"); index = BinaryIndex.load("gallery.bebr")

Search is exact (see `bebrjax.search.topk`): scores descending (Hamming:
distances ascending), ties to the lower id, numpy float32 scores and int64 ids.

On-disk format of `BinaryIndex.save(path)`: a directory holding
  * `header.json`: {"format": "bebrjax.BinaryIndex", "version": 1, "m", "u",
    "metric", "count", "words_per_plane"};
  * `codes.npy`: uint32 [count, u+1, words_per_plane], bit c % 32 of word
    c // 32 of plane i set where s_i[c] = -1 (see `bebrjax.search.codes`);
  * `inv_norms.npy`: float32 [count], 1/||b|| of each code.
`load` memory-maps both arrays. A save replaces the directory whole (written
aside, then renamed into place), so an interrupted save never leaves a
half-written index.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bebrjax.search import codes as codes_lib
from bebrjax.search import scoring, topk
from bebrjax.sharding import DATA_AXIS

FORMAT = "bebrjax.BinaryIndex"
VERSION = 1
HEADER, CODES, NORMS = "header.json", "codes.npy", "inv_norms.npy"
PARTIAL = "progress.json"  # in a directory an unfinished incremental write left


def write_header(directory: str, m: int, u: int, metric: str, count: int) -> None:
    """Writes an index directory's header.json (the last file of a save)."""
    header = {
        "format": FORMAT,
        "version": VERSION,
        "m": int(m),
        "u": int(u),
        "metric": metric,
        "count": int(count),
        "words_per_plane": codes_lib.num_words(m),
    }
    with open(os.path.join(directory, HEADER), "w") as f:
        json.dump(header, f, indent=2)


def staging_dir(path: str, prefix: str) -> str:
    """A new empty directory beside `path` to build its replacement in.

    Made by `tempfile.mkdtemp` (a fresh name), then given the permissions
    of an ordinary new directory (mkdtemp's are 0700).
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


def move_into_place(tmp: str, path: str) -> None:
    """Renames the finished directory `tmp` to `path`, replacing whatever was there.

    The old contents are moved aside first and deleted only once the new
    directory is in place, so an interrupted replace never leaves a
    half-written index at `path`.
    """
    parent = os.path.dirname(os.path.abspath(path))
    old = None
    if os.path.lexists(path):
        old = tempfile.mkdtemp(prefix=".old-index-", dir=parent)
        os.replace(path, os.path.join(old, "index"))
    os.replace(tmp, path)
    if old:
        shutil.rmtree(old)


class IndexFormatError(ValueError):
    """A saved index that cannot be read: missing, truncated or foreign."""


class _BlockedIndex:
    """Storage on the host, a tiled copy on the device(s), and batched exact search.

    Subclasses define `ntotal`, `_host_arrays` (a pytree of per-document
    arrays [N, ...]) and `_score_fn` (a `topk.ScoreFn` over those arrays).

    Args:
      block_size: documents per scanned block (memory per query batch is
        O(block_size)); rounded to whole tiles.
      tile: documents per tile (the inner loop's run of contiguous docs).
      group: documents per group of the two-level top-k; divides `tile`.
      query_batch: queries searched at once.
      mesh: optional device mesh: the gallery is split over its `data` axis.
    """

    def __init__(
        self, *, block_size: int, tile: int, group: int, query_batch: int, mesh: Mesh | None
    ):
        if tile % group:
            raise ValueError(f"group={group} must divide tile={tile}")
        if min(block_size, tile, group, query_batch) <= 0:
            raise ValueError("block_size, tile, group and query_batch must be positive")
        self.block_size, self.tile, self.group = block_size, tile, group
        self.query_batch, self.mesh = query_batch, mesh
        self._device: tuple[Any, int] | None = None
        self._compiled: dict[int, Any] = {}

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

    def _search_fn(self, k: int):
        if k not in self._compiled:
            self._compiled[k] = self._make_search_fn(k)
        return self._compiled[k]

    def _make_search_fn(self, k: int):
        score_fn = self._score_fn()
        kwargs = dict(k=k, group=self.group)
        if self.mesh is not None and self._devices() > 1:
            return jax.jit(
                lambda q, blocks, count: topk.sharded_topk(
                    score_fn, q, blocks, count, mesh=self.mesh, **kwargs
                )
            )
        return jax.jit(
            lambda q, blocks, count: topk.local_topk(score_fn, q, blocks, count, **kwargs)
        )

    def _search(self, queries: dict[str, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.ntotal == 0:
            raise ValueError("the index is empty: add documents before searching")
        if not isinstance(k, int | np.integer) or not 1 <= k <= self.ntotal:
            raise ValueError(f"k={k} must be an integer in [1, {self.ntotal}] (the index size)")
        blocks, count = self._layout()
        search = self._search_fn(int(k))
        num = len(next(iter(queries.values())))
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


class BinaryIndex(_BlockedIndex):
    """Recurrent binary codes, packed, searched exactly by SDC or Hamming.

    Args:
      m: code width (bits per plane).
      u: loops; every code has u+1 planes (0..3).
      metric: "ip" ranks by <b_q, b_d> / ||b_d|| (SDC); "hamming" (u = 0
        only) ranks by Hamming distance and reports distances.
      kernel: "auto" (popcount on CPU, int8 matmul on GPU/TPU), "popcount"
        or "matmul"; all give identical scores.
      **layout: block_size, tile, group, query_batch, mesh (see `_BlockedIndex`).
    """

    def __init__(
        self,
        m: int,
        u: int = 1,
        metric: str = "ip",
        *,
        kernel: str = "auto",
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
        if not isinstance(u, int | np.integer) or not 0 <= u <= 3:
            raise ValueError(f"u={u} must be an integer in [0, 3]")
        if metric not in ("ip", "hamming"):
            raise ValueError(f"metric={metric!r}: expected 'ip' or 'hamming'")
        if metric == "hamming" and u != 0:
            raise ValueError(f"metric='hamming' needs u=0 (one plane); got u={u}")
        self.m, self.u, self.metric = int(m), int(u), metric
        self.kernel = scoring.resolve_kernel(kernel)
        words = codes_lib.num_words(self.m)
        self._words = np.zeros((0, u + 1, words), np.uint32)
        self._inv_norms = np.zeros((0,), np.float32)

    @property
    def ntotal(self) -> int:
        """Documents in the index."""
        return len(self._inv_norms)

    @property
    def bytes_per_doc(self) -> int:
        """Stored bytes per document: the packed planes plus a float32 1/||b||."""
        return (self.u + 1) * codes_lib.num_words(self.m) * 4 + 4

    def add(self, planes: np.ndarray) -> None:
        """Appends documents given as int8 bit planes [N, u+1, m] of +-1."""
        planes = codes_lib.check_planes(planes, self.m, self.u)
        self._words = np.concatenate([self._words, codes_lib.pack(planes)])
        self._inv_norms = np.concatenate([self._inv_norms, codes_lib.inverse_norms(planes)])
        self._invalidate()

    def search(self, query_planes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The exact k nearest documents of each query.

        Args:
          query_planes: int8 [Q, u+1, m] of +-1.
          k: results per query, 1 <= k <= ntotal.

        Returns:
          (scores, ids) [Q, k]: float32 <b_q, b_d> / ||b_d|| descending
          (Hamming: distances ascending) and int64 ids; ties to the lower id.
        """
        planes = codes_lib.check_planes(query_planes, self.m, self.u, "query_planes")
        queries = {"words": codes_lib.pack(planes), "ints": codes_lib.decode_int(planes)}
        scores, ids = self._search(queries, k)
        return (-scores if self.metric == "hamming" else scores), ids

    def _host_arrays(self) -> dict[str, Any]:
        scale = self._inv_norms * np.float32(4.0**-self.u)
        return {"planes": [self._words[:, i] for i in range(self.u + 1)], "scale": scale}

    def _score_fn(self):
        m, metric, kernel = self.m, self.metric, self.kernel
        return lambda q, block: scoring.code_scores(q, block, m=m, metric=metric, kernel=kernel)

    def save(self, path: str) -> None:
        """Writes the index to directory `path`, replacing it whole."""
        tmp = staging_dir(path, ".tmp-index-")
        np.save(os.path.join(tmp, CODES), self._words.astype("<u4"))
        np.save(os.path.join(tmp, NORMS), self._inv_norms.astype("<f4"))
        write_header(tmp, self.m, self.u, self.metric, self.ntotal)
        move_into_place(tmp, path)

    @classmethod
    def load(cls, path: str, **kwargs: Any) -> BinaryIndex:
        """Opens a saved index, memory-mapping its arrays; kwargs as for the constructor.

        Raises:
          IndexFormatError: when `path` is missing, foreign, of another
            version, or its arrays are truncated or disagree with the header.
        """
        header_path = os.path.join(path, HEADER)
        if not os.path.isfile(header_path):
            if os.path.isfile(os.path.join(path, PARTIAL)):
                raise IndexFormatError(
                    f"{path}: an unfinished index (an interrupted encode); run the same "
                    "encode command again to finish it"
                )
            raise IndexFormatError(f"{path}: not a saved index (no header.json)")
        try:
            with open(header_path) as f:
                header = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise IndexFormatError(f"{path}: header.json is not valid JSON ({e})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise IndexFormatError(
                f"{path}: not a {FORMAT} (format {header.get('format')!r})"
                if isinstance(header, dict)
                else f"{path}: foreign header"
            )
        if header.get("version") != VERSION:
            raise IndexFormatError(
                f"{path}: format version {header.get('version')} is not "
                f"supported (this bebrjax reads version {VERSION})"
            )
        missing = {"m", "u", "metric", "count", "words_per_plane"} - set(header)
        if missing:
            raise IndexFormatError(f"{path}: header.json lacks {', '.join(sorted(missing))}")
        try:
            index = cls(header["m"], header["u"], header["metric"], **kwargs)
        except ValueError as e:
            raise IndexFormatError(f"{path}: header.json: {e}") from None
        if header["words_per_plane"] != codes_lib.num_words(index.m):
            raise IndexFormatError(
                f"{path}: words_per_plane={header['words_per_plane']} does not fit m={index.m}"
            )
        want = {
            CODES: ((header["count"], header["u"] + 1, header["words_per_plane"]), "<u4"),
            NORMS: ((header["count"],), "<f4"),
        }
        arrays = {}
        for name, (shape, dtype) in want.items():
            try:
                arrays[name] = np.load(os.path.join(path, name), mmap_mode="r")
            except (OSError, ValueError, EOFError) as e:
                raise IndexFormatError(f"{path}: {name} cannot be read ({e})") from None
            if arrays[name].shape != shape:
                raise IndexFormatError(
                    f"{path}: {name} has shape {list(arrays[name].shape)}, "
                    f"the header says {list(shape)} (truncated?)"
                )
            if arrays[name].dtype != np.dtype(dtype):
                raise IndexFormatError(
                    f"{path}: {name} has dtype {arrays[name].dtype}, expected {np.dtype(dtype)}"
                )
        index._words, index._inv_norms = arrays[CODES], arrays[NORMS]
        return index


class FloatIndex(_BlockedIndex):
    """Exact inner-product search over float32 vectors (the reference path).

    Exact up to float32 rounding: the documents of the best groups are scored
    a second time by a differently shaped product, whose last bit can differ
    from the first pass's, so near-ties (within an ulp) may order either way.
    Binary codes have no such caveat: their scores are exact integers.

    Args:
      dim: vector width.
      **layout: block_size, tile, group, query_batch, mesh (see `_BlockedIndex`).
    """

    def __init__(
        self,
        dim: int,
        *,
        block_size: int = 16384,
        tile: int = 128,
        group: int = 32,
        query_batch: int = 256,
        mesh: Mesh | None = None,
    ):
        super().__init__(
            block_size=block_size, tile=tile, group=group, query_batch=query_batch, mesh=mesh
        )
        self.dim = dim
        self._x = np.zeros((0, dim), np.float32)

    def add(self, x: np.ndarray) -> None:
        """Appends float vectors [N, dim]."""
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape [N, {self.dim}]; got {list(x.shape)}")
        self._x = np.concatenate([self._x, x])
        self._invalidate()

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) [Q, k] of the exact top-k inner products; ties to the lower id."""
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"queries must have shape [Q, {self.dim}]; got {list(x.shape)}")
        return self._search({"x": x}, k)

    @property
    def ntotal(self) -> int:
        """Vectors in the index."""
        return len(self._x)

    def _host_arrays(self) -> dict[str, np.ndarray]:
        return {"x": self._x}

    def _score_fn(self):
        return scoring.float_scores
