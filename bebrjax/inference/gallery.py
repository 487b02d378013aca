"""Upgrade the stored codes of an index to the new version, from the codes alone.

    upgrade_gallery(W, "gallery.bebr")      # what `bebrjax upgrade-gallery` does

W is a finished compatible-codes run (`configs/bebr/compatible.py`). Every
document of the index whose codes are of version `source` (or only the
given `ids`) gets new-version codes computed from its stored old codes,
with no raw data and no float embeddings: psi maps each decoded old code
to a prediction of the new binarizer's code and requantizes it (see
`bebrjax.models.code_adapter`). The `source` codes must be the codes of
the run's old binarizer: the index records each version's name and loops,
not the model that made it, so only their shape is checked. They are
recorded as version `version` ("psi" by default, so an index tells which
documents were moved this way). The index is rewritten crash-safely
(`bebrjax.search.backfill`): interrupted at any point, it holds either the
old index or the upgraded one.
"""

from __future__ import annotations

import time

import numpy as np

from bebrjax.data.rows import read_ids
from bebrjax.errors import DataError, LoadError
from bebrjax.inference import Versions, load
from bebrjax.inference.corpus import backfill_step
from bebrjax.search import BinaryIndex


def upgrade_gallery(
    model: Versions | str,
    index_path: str,
    *,
    ids: np.ndarray | str | None = None,
    source: str = "old",
    version: str = "psi",
    batch_size: int = 8192,
) -> dict:
    """Replaces stored old-version codes of the index at `index_path` by psi's new-version codes.

    Args:
      model: a loaded compatible-codes run, or its workdir.
      index_path: a saved index holding old-version codes.
      ids: the documents to upgrade (int array or `PATH[:key]`, key default
        "ids"); default: every document of version `source`.
      source: the version name of the stored old codes.
      version: the version name the upgraded codes get.
      batch_size: rows per batch of psi and the new binarizer.

    Returns:
      A summary: documents replaced, the documents per version, seconds.

    Raises:
      LoadError: when `model` is not a finished compatible-codes run;
      DataError: when the index has no version `source`, the ids are not of
        that version, its codes are not the shape psi reads, or the batch
        size is not positive.
    """
    clock = time.perf_counter()
    if batch_size <= 0:
        raise DataError(f"batch size {batch_size}: must be > 0")
    if source == version:
        raise DataError(
            f"{index_path}: the stored codes' version and the new one are both {source!r}"
        )
    loaded = load(model) if isinstance(model, str) else model
    if not isinstance(loaded, Versions):
        raise LoadError(f"{model}: not a compatible-codes run (no psi to upgrade codes with)")
    psi = loaded.part("psi")
    index = BinaryIndex.load(index_path)
    if source not in index.versions:
        raise DataError(
            f"{index_path}: no codes of version {source!r} (versions: {', '.join(index.versions)})"
        )
    kind = list(index.versions).index(source)
    if ids is None:
        ids = np.flatnonzero(index.doc_versions == kind)
    elif isinstance(ids, str):
        ids = read_ids(ids, index.ntotal, key="ids", what="the documents to upgrade")
    ids = np.asarray(ids, np.int64)
    if np.any(index.doc_versions[ids] != kind):
        raise DataError(f"{index_path}: some of the ids are not codes of version {source!r}")
    want = (index.versions[source] + 1, index.m)
    if tuple(psi.input_shape) != want:
        raise DataError(
            f"{index_path}: version {source!r} codes are [u+1, m] = {list(want)}; psi reads "
            f"{list(psi.input_shape)} (the old binarizer of {loaded.workdir})"
        )
    planes = index.planes(ids)[:, : want[0]]
    upgraded = psi(planes, batch_size) if len(ids) else planes  # an empty step writes nothing
    return backfill_step(index, index_path, ids, upgraded, version, clock)
