"""Paired float embeddings and their validation.

Row i of `query` pairs with row i of `doc` (e.g. an image and its caption, a
headword and its definition): the paired doc is the relevant result for the
query. Both sides live in one d-dimensional space and are L2-normalized on
load, since the binarizer and every similarity here are cosine based.

Pairs may share an item (MS-COCO has 5 captions per image: 5 pairs with the
same image). Optional `groups` say which: pairs with the same non-negative
group id share an item, and a negative id is an item of its own. A group
stays on one side of a train/eval split, every doc of a query's group is
relevant to it, and the pair loss does not treat the group's other docs as
negatives. `labels` are something else: topics or classes, which many items
share.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from bebrjax.errors import DataError


class NormalizedRows:
    """The rows of a memory-mapped [N, d] float array, L2-normalized to float32 as they are read.

    Only the norms [N] live in memory; `rows[index]` reads just those rows
    from the file (a training batch reads its own rows, and on N processes
    each process reads only its part of it). The values equal normalizing
    the whole array at once. `take(index)` is a subset without reading.
    """

    def __init__(self, array: np.ndarray, norms: np.ndarray, index: np.ndarray | None = None):
        self._array, self._norms, self._index = array, norms, index
        rows = array.shape[0] if index is None else len(index)
        self.shape, self.dtype, self.ndim = (rows, array.shape[1]), np.dtype(np.float32), 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        rows = key if self._index is None else self._index[key]
        chunk = np.asarray(self._array[rows], np.float32)
        return chunk / self._norms[rows][..., None]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.concatenate(
            [self[start : start + _CHUNK] for start in range(0, len(self), _CHUNK)] or [self[:0]]
        )
        return out if dtype is None else out.astype(dtype)

    def take(self, index: np.ndarray) -> NormalizedRows:
        """The rows at `index`, in that order, still unread."""
        index = np.asarray(index)
        return NormalizedRows(
            self._array, self._norms, index if self._index is None else self._index[index]
        )


@dataclasses.dataclass(frozen=True)
class PairedEmbeddings:
    """Paired embeddings, float32 and L2-normalized.

    Attributes:
      query: [N, d] query-side embeddings (`NormalizedRows` when read from
        .npy files: rows are read when used).
      doc: [N, d] doc-side embeddings; doc[i] is the relevant result for query[i].
      labels: optional [N] int labels (negative means unlabelled).
      source: where the data came from, for messages and results.
      groups: optional [N] int32 item ids 0..items-1, equal exactly for the
        pairs of one item (`make_pairs` makes them from the input's groups).
    """

    query: np.ndarray | NormalizedRows
    doc: np.ndarray | NormalizedRows
    labels: np.ndarray | None
    source: str
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return self.query.shape[0]

    @property
    def dim(self) -> int:
        """The embedding width d."""
        return self.query.shape[1]

    def subset(self, index: np.ndarray) -> PairedEmbeddings:
        """The pairs at `index`, in that order."""
        labels = None if self.labels is None else self.labels[index]
        groups = None if self.groups is None else self.groups[index]
        query, doc = (
            x.take(index) if isinstance(x, NormalizedRows) else x[index]
            for x in (self.query, self.doc)
        )
        return PairedEmbeddings(query, doc, labels, self.source, groups)

    def item_ids(self) -> np.ndarray:
        """[N] int ids, equal exactly for the pairs of one item."""
        return np.arange(len(self)) if self.groups is None else self.groups


_CHUNK = 65536


def _check_embeddings(source: str, name: str, array: np.ndarray) -> np.ndarray | NormalizedRows:
    """Validates one [N, d] float array chunk by chunk and returns it normalized float32.

    A memory-mapped array stays on disk: its rows are normalized when read
    (`NormalizedRows`); any other is normalized in memory.
    """
    if array.ndim != 2:
        raise DataError(f"{source}: '{name}' must be 2-D [N, d], got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise DataError(
            f"{source}: '{name}' has dtype {array.dtype}; expected float embeddings "
            "(float16, float32 or float64)"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"{source}: '{name}' is empty (shape {array.shape})")
    lazy = isinstance(array, np.memmap)
    out = np.empty(array.shape[:1] if lazy else array.shape, np.float32)
    for start in range(0, array.shape[0], _CHUNK):
        chunk = np.asarray(array[start : start + _CHUNK], dtype=np.float32)
        norms = row_norms(chunk, f"{source}: '{name}'", start)
        out[start : start + _CHUNK] = norms[:, 0] if lazy else chunk / norms
    return NormalizedRows(array, out) if lazy else out


def row_norms(chunk: np.ndarray, name: str, start: int = 0) -> np.ndarray:
    """The L2 norms [n, 1] of float32 rows that must be finite and non-zero.

    Args:
      chunk: [n, d] float32 rows.
      name: what they are, for messages.
      start: the row number of chunk[0] in the whole array.

    Raises:
      DataError: naming the first non-finite or all-zero row.
    """
    finite = np.isfinite(chunk).all(axis=1)
    if not finite.all():
        raise DataError(f"{name} has non-finite values (first at row {start + np.argmin(finite)})")
    norms = np.linalg.norm(chunk, axis=1, keepdims=True)
    if (norms == 0).any():
        row = start + int(np.argmin(norms[:, 0]))
        raise DataError(f"{name} row {row} is all zeros and cannot be normalized")
    return norms


def _check_ids(source: str, name: str, array: np.ndarray, n: int) -> np.ndarray:
    """Validates [n] integer ids (labels or groups) and returns them as a numpy array."""
    array = np.asarray(array)
    if array.shape != (n,):
        raise DataError(f"{source}: '{name}' has shape {array.shape}; expected ({n},)")
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{source}: '{name}' has dtype {array.dtype}; expected integers")
    return array


def item_ids(groups: np.ndarray) -> np.ndarray:
    """Dense int32 item ids 0..items-1 of [n] group ids, equal exactly within a group.

    A negative group id makes its pair an item of its own.
    """
    keys = np.asarray(groups, np.int64).copy()
    alone = keys < 0
    keys[alone] = max(int(keys.max()), -1) + 1 + np.arange(int(alone.sum()))
    return np.unique(keys, return_inverse=True)[1].astype(np.int32)


def grouping_conflict(a: np.ndarray, b: np.ndarray) -> tuple[int, int] | None:
    """Two rows that one grouping of the same rows puts in one item and the other does not.

    Args:
      a: [n] item ids of the rows under one grouping.
      b: [n] item ids of the same rows under another.

    Returns:
      (i, j), i < j, or None when both group the rows alike (whatever their ids).
    """
    for x, y in ((a, b), (b, a)):
        _, first, inverse = np.unique(x, return_index=True, return_inverse=True)
        first = first[inverse]  # the first row of each row's item
        apart = np.flatnonzero(y != y[first])
        if apart.size:
            return int(first[apart[0]]), int(apart[0])
    return None


def make_pairs(
    query: np.ndarray,
    doc: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    groups: np.ndarray | None = None,
    source: str = "arrays",
    names: tuple[str, str, str, str] = ("query", "doc", "labels", "groups"),
) -> PairedEmbeddings:
    """Validates raw arrays and returns normalized `PairedEmbeddings`.

    Args:
      query: [N, d] floating array (numpy or memory-mapped).
      doc: [N, d] floating array.
      labels: optional [N] integer array.
      groups: optional [N] integer ids of the item each pair shows: pairs with
        the same non-negative id share an item; a negative id is an item of
        its own. Stored as dense ids (`item_ids`).
      source: the file (or other origin) named in error messages.
      names: the names of the four arrays in the source, for messages.

    Raises:
      DataError: on a wrong rank or dtype, empty arrays, mismatched shapes,
        non-finite values or all-zero rows.
    """
    qname, dname, lname, gname = names
    query = _check_embeddings(source, qname, query)
    doc = _check_embeddings(source, dname, doc)
    if query.shape != doc.shape:
        raise DataError(
            f"{source}: '{qname}' {query.shape} and '{dname}' {doc.shape} must have the same "
            "shape (row i of one pairs with row i of the other, in one space)"
        )
    if labels is not None:
        labels = _check_ids(source, lname, labels, query.shape[0]).astype(np.int32)
    if groups is not None:
        groups = item_ids(_check_ids(source, gname, groups, query.shape[0]))
    return PairedEmbeddings(query, doc, labels, source, groups)
