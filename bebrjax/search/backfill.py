"""Backfilling a saved index: re-encoded codes replace old ones, crash-safely.

    backfill("gallery.bebr", ids, new_planes, "v2")   # one step; repeat with the next ids

Each step loads the index copy-on-write (its files are never written),
replaces the codes of `ids` in memory and saves the whole index back over
the same path (built beside it, then swapped in; see
`bebrjax.search.storage`). A crash at any point leaves the previous index at
the path, loadable and unchanged. Which ids to backfill first is the
caller's choice (FastFill: the worst-served old items first beats a random
order).

A directory holding inverted lists (`ivf.json`) is opened and saved as an
`IVFIndex`, so the step keeps its lists: each replaced document moves to
the list of its new code's nearest centroid, and the centroids stay (see
`bebrjax.search.ivf`). Any other directory is a `BinaryIndex`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from bebrjax.search import safe_write, storage
from bebrjax.search.index import BinaryIndex
from bebrjax.search.ivf import IVFIndex


def backfill(
    path: str, ids: np.ndarray, planes: np.ndarray, version: str, **kwargs: Any
) -> BinaryIndex | IVFIndex:
    """Replaces the codes of documents `ids` of the saved index at `path`.

    Args:
      path: a saved `BinaryIndex` or `IVFIndex` directory.
      ids: unique document ids in [0, ntotal), int [n].
      planes: int8 [n, u+1, m] of +-1, row i the new code of ids[i].
      version: the codes' version; a new name registers a version with
        u = planes.shape[1] - 1.
      **kwargs: as for the `load` of the index's kind (kernel, layout).

    Returns:
      The updated index, loaded from `path`, of the kind saved there.

    Raises:
      IndexFormatError: when `path` is not a readable index.
      ValueError: as `BinaryIndex.replace`, before anything is written.
    """
    with safe_write.index_lock(path, "backfill"):
        kind = IVFIndex if os.path.isfile(os.path.join(path, storage.IVF_FILE)) else BinaryIndex
        index = kind.load(path, **kwargs)
        index.replace(ids, planes, version)
        index.save(path)
        return kind.load(path, **kwargs)
