"""Exact inner-product search over float32 vectors: the reference path beside `BinaryIndex`."""

from __future__ import annotations

import numpy as np
from jax.sharding import Mesh

from bebrjax.search import scoring
from bebrjax.search.blocked import BlockedIndex


class FloatIndex(BlockedIndex):
    """Exact inner-product search over float32 vectors (the reference path).

    Exact up to float32 rounding: the documents of the best groups are scored
    a second time by a differently shaped product, whose last bit can differ
    from the first pass's, so near-ties (within an ulp) may order either way.
    Binary codes have no such caveat: their scores are exact integers.

    Args:
      dim: vector width.
      **layout: block_size, tile, group, query_batch, mesh (see `BlockedIndex`).
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

    def _score_key(self) -> tuple:
        return ()

    def _score_fn(self):
        return scoring.float_scores
