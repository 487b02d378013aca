"""Paired float embeddings and their validation.

Row i of `query` pairs with row i of `doc` (e.g. an image and its caption, a
headword and its definition): the paired doc is the relevant result for the
query. Both sides live in one d-dimensional space and are L2-normalized on
load, since the binarizer and every similarity here are cosine based.
"""

from __future__ import annotations

import dataclasses

import numpy as np


class DataError(ValueError):
    """Input data that cannot be used; the message names the source and the problem."""


@dataclasses.dataclass(frozen=True)
class PairedEmbeddings:
    """Paired embeddings, float32 and L2-normalized.

    Attributes:
      query: [N, d] query-side embeddings.
      doc: [N, d] doc-side embeddings; doc[i] is the relevant result for query[i].
      labels: optional [N] int labels (negative means unlabelled).
      source: where the data came from, for messages and results.
    """

    query: np.ndarray
    doc: np.ndarray
    labels: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return self.query.shape[0]

    @property
    def dim(self) -> int:
        """The embedding width d."""
        return self.query.shape[1]

    def subset(self, index: np.ndarray) -> PairedEmbeddings:
        """The pairs at `index`, in that order."""
        labels = None if self.labels is None else self.labels[index]
        return PairedEmbeddings(self.query[index], self.doc[index], labels, self.source)


_CHUNK = 65536


def _check_embeddings(source: str, name: str, array: np.ndarray) -> np.ndarray:
    """Validates one [N, d] float array chunk by chunk and returns it normalized float32."""
    if array.ndim != 2:
        raise DataError(f"{source}: '{name}' must be 2-D [N, d], got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise DataError(
            f"{source}: '{name}' has dtype {array.dtype}; expected float embeddings "
            "(float16, float32 or float64)"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"{source}: '{name}' is empty (shape {array.shape})")
    out = np.empty(array.shape, np.float32)
    for start in range(0, array.shape[0], _CHUNK):
        chunk = np.asarray(array[start : start + _CHUNK], dtype=np.float32)
        out[start : start + _CHUNK] = chunk / row_norms(chunk, f"{source}: '{name}'", start)
    return out


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


def make_pairs(
    query: np.ndarray,
    doc: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    source: str = "arrays",
    names: tuple[str, str, str] = ("query", "doc", "labels"),
) -> PairedEmbeddings:
    """Validates raw arrays and returns normalized `PairedEmbeddings`.

    Args:
      query: [N, d] floating array (numpy or memory-mapped).
      doc: [N, d] floating array.
      labels: optional [N] integer array.
      source: the file (or other origin) named in error messages.
      names: the names of the three arrays in the source, for messages.

    Raises:
      DataError: on a wrong rank or dtype, empty arrays, mismatched shapes,
        non-finite values or all-zero rows.
    """
    qname, dname, lname = names
    query = _check_embeddings(source, qname, query)
    doc = _check_embeddings(source, dname, doc)
    if query.shape != doc.shape:
        raise DataError(
            f"{source}: '{qname}' {query.shape} and '{dname}' {doc.shape} must have the same "
            "shape (row i of one pairs with row i of the other, in one space)"
        )
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (query.shape[0],):
            raise DataError(
                f"{source}: '{lname}' has shape {labels.shape}; expected ({query.shape[0]},)"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{source}: '{lname}' has dtype {labels.dtype}; expected integers")
        labels = labels.astype(np.int32)
    return PairedEmbeddings(query, doc, labels, source)
