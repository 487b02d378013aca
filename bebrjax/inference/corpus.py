"""Encode a corpus into a `BinaryIndex` on disk, batch by batch, resumably (`bebrjax encode`).

    encode_corpus(workdir, "docs.npy", "gallery.bebr")              # a new index
    encode_corpus(workdir, "step.npz", "gallery.bebr", ids="step.npz:ids")  # a backfill step

The input is an .npy file, an .npz archive (the array `key`) or a directory
of `<key>.npy` files, of float embeddings [N, d] (any float dtype, any
scale: rows are normalized as in training). Rows are read by file offset a
batch at a time, encoded by the binarizer, packed and written at their
place in the index (see `bebrjax.search.writer`), so memory stays
O(batch) whatever N. Interrupted at any point, the same call continues
where it stopped and ends with the same index as an uninterrupted one;
until it finishes, the index does not exist (the rows are in
`<index>.partial`). An existing index is kept unless `overwrite`. A bad
input (wrong width, a non-finite or all-zero row, no rows) raises
`DataError` and leaves nothing behind.

On N processes (`bebrjax.distributed`) every process encodes its part of
each batch on its devices and process 0 writes the index, which is the
one process's, byte for byte.

The codes are recorded in the index as version `version` (default: the
workdir's name). With `ids`, the input's rows are the new embeddings of
those documents of the existing index (row r is document ids[r]): a
backfill step that replaces their codes by this model's, as a new version
beside the old codes (a compatible binarizer's queries search both,
`configs/bebr/compatible.py`). The step rewrites the index crash-safely:
interrupted at any point, it holds either the old index or the new one.

One writer at a time (`bebrjax.search.safe_write.index_lock`): a second
encode into `<index>.partial`, or a backfill step while another writer (a
step, an encode's final rename, an export's copy) holds the index, raises
`IndexLockedError` naming the holder and its pid, having written nothing.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time

import jax
import numpy as np

from bebrjax import distributed, sharding
from bebrjax import workdir as wd
from bebrjax.data.pairs import row_norms
from bebrjax.data.rows import RowSource, open_rows, read_ids
from bebrjax.errors import DataError, IndexFormatError, LoadError
from bebrjax.inference import Binarizer, Encoder, load
from bebrjax.progress import Bar
from bebrjax.search import BinaryIndex, backfill
from bebrjax.search.writer import IndexWriter


def open_embeddings(path: str, key: str | None, dim: int) -> RowSource:
    """The rows of float embeddings [N, dim] at `path` (and `key`), checked.

    Raises:
      DataError: naming the input when it is missing, not floating point,
        not [N, dim], or empty.
    """
    source = open_rows(path, key)
    if not np.issubdtype(source.dtype, np.floating):
        source.close()
        raise DataError(f"{source.name} has dtype {source.dtype}; expected float embeddings")
    if len(source.shape) != 2 or source.shape[1] != dim:
        source.close()
        raise DataError(
            f"{source.name} has shape {list(source.shape)}; the model encodes rows of width "
            f"d={dim} ([N, {dim}])"
        )
    if len(source) == 0:
        source.close()
        raise DataError(f"{source.name} is empty (no rows)")
    return source


def read_checked(source: RowSource, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of `source` as float32, refused if one is non-finite or all zeros."""
    rows = np.asarray(source.read(start, stop), np.float32)
    row_norms(rows, source.name, start)
    return rows


def as_binarizer(model: Binarizer | str) -> Binarizer:
    """`model`, or the binarizer run loaded from the workdir `model`.

    Raises:
      LoadError: when the workdir holds another kind of run.
    """
    loaded = load(model) if isinstance(model, str) else model
    if not isinstance(loaded, Binarizer):
        raise LoadError(f"{model}: not a binarizer run (its codes are what an index holds)")
    return loaded


def encode_corpus(
    model: Binarizer | str,
    input_path: str,
    index_path: str,
    *,
    key: str | None = "doc",
    batch_size: int = 8192,
    overwrite: bool = False,
    progress: bool = True,
    ids: np.ndarray | str | None = None,
    version: str | None = None,
    stored_bits: int | None = None,
) -> dict:
    """Encodes the embeddings at `input_path` into a `BinaryIndex` written to `index_path`.

    Args:
      model: a loaded binarizer run, or its workdir.
      input_path: .npy, .npz or a directory of .npy files (see `open_rows`).
      index_path: the index directory to write.
      key: the array's name in an .npz or a directory.
      batch_size: rows per batch; memory is O(batch_size). A resumed run
        must use the batch size it started with.
      overwrite: replace an existing index at `index_path`.
      progress: show a progress bar (rows/s, ETA) on stderr when it is a terminal.
      ids: a backfill step instead of a new index: the ids of the existing
        index's documents that the input's rows are (row r is document
        ids[r]), as an int array or `PATH[:key]` (key default "ids"); their
        codes are replaced by this model's, crash-safely (`search.backfill`).
      version: the name of the codes' version in the index (default: the
        model's workdir name, e.g. "new" for `<run>/new`).
      stored_bits: store the first this many planes of each code (a smaller
        budget of the same model: a run trained over every budget serves
        each, docs/quantizers.md); None: all u+1.

    Returns:
      A summary: rows, rows resumed from, seconds, rows/s, code shape, bytes
      (a backfill step: rows replaced and the documents per version).

    Raises:
      DataError, LoadError, OutputExistsError, PartialIndexError: before
      anything is written (a bad row found mid-way deletes what this call
      wrote; rows an earlier, interrupted call wrote are kept).
    """
    if batch_size <= 0:
        raise DataError(f"batch size {batch_size}: must be > 0")
    index_path = os.path.normpath(index_path)
    out, read = os.path.abspath(index_path), os.path.abspath(input_path)
    if read == out or read.startswith(out + os.sep):
        raise DataError(f"{index_path}: the index would replace its own input {input_path}")
    model = as_binarizer(model)
    planes = model.loops + 1 if stored_bits is None else stored_bits
    if not 1 <= planes <= model.loops + 1:
        raise DataError(
            f"stored bits {stored_bits}: the model's codes have {model.loops + 1} planes "
            f"(1..{model.loops + 1})"
        )
    encoder = model.encoder
    if planes < model.loops + 1:  # the code's first planes: a smaller budget
        forward = encoder.forward
        encoder = dataclasses.replace(encoder, forward=lambda v, x: forward(v, x)[:, :planes])
    version = version or os.path.basename(os.path.normpath(model.workdir))
    if ids is not None:
        if jax.process_count() > 1:
            raise DataError("a backfill step (ids) runs on one process")
        if overwrite:
            raise DataError(
                "--overwrite does not go with --ids: a backfill step replaces those ids"
            )
        return _backfill(encoder, model.dim, input_path, key, index_path, ids, version, batch_size)
    source = open_embeddings(input_path, key, model.dim)
    try:
        wd.refuse_existing(index_path, overwrite, directory=True)
        n = len(source)
        job = {
            "model": {"workdir": os.path.abspath(model.workdir), "step": encoder.step},
            "input": source.fingerprint,
            "batch_size": batch_size,
            "devices": int(encoder.mesh.devices.size),  # the batch's split can round differently
            "planes": planes,
        }
        made = _missing_parent(out)
        writer = None
        if distributed.is_primary():  # on N processes, process 0 writes what all encode
            os.makedirs(os.path.dirname(out), exist_ok=True)
            writer = IndexWriter(
                index_path,
                m=model.code_dim,
                u=planes - 1,
                count=n,
                job=job,
                restart=overwrite,
                version=version,
                query_bits=model.query_bits,
            )
        start_rows, clock = distributed.broadcast(writer.rows if writer else 0), time.perf_counter()
        try:
            _encode_rows(encoder, source, writer, start_rows, batch_size, progress)
        except DataError:
            if writer is not None and writer.resumed_from == 0:
                writer.discard()  # nothing of this call's is left behind
                if made:
                    shutil.rmtree(made, ignore_errors=True)
            elif writer is not None:
                writer.close()  # an earlier call's rows stay, to resume from
            raise
        except BaseException:
            if writer is not None:
                writer.close()
            raise
        if writer is not None:
            writer.finish()
        distributed.barrier("encode.finished")
    finally:
        source.close()
    seconds = time.perf_counter() - clock
    return {
        "index": index_path,
        "rows": n,
        "resumed_from": start_rows,
        "seconds": round(seconds, 2),
        "rows_per_sec": round((n - start_rows) / max(seconds, 1e-9), 1),
        "m": model.code_dim,
        "u": planes - 1,
        "bytes": sum(os.path.getsize(os.path.join(index_path, f)) for f in os.listdir(index_path)),
    }


def _backfill(
    encoder: Encoder,
    dim: int,
    input_path: str,
    key: str | None,
    index_path: str,
    ids: np.ndarray | str,
    version: str,
    batch_size: int,
) -> dict:
    """A backfill step: the input's rows re-encoded as documents `ids` of the saved index."""
    clock = time.perf_counter()
    index = BinaryIndex.load(index_path)
    if isinstance(ids, str):
        ids = read_ids(ids, index.ntotal, key="ids", what="one per input row")
    ids = np.asarray(ids)
    source = open_embeddings(input_path, key, dim)
    try:
        if len(source) != len(ids):
            raise DataError(
                f"{source.name} has {len(source)} rows for {len(ids)} ids: row r is document ids[r]"
            )
        planes = encoder(read_checked(source, 0, len(source)), batch_size)
    finally:
        source.close()
    return backfill_step(index, index_path, ids, planes, version, clock)


def backfill_step(
    index: BinaryIndex,
    index_path: str,
    ids: np.ndarray,
    planes: np.ndarray,
    version: str,
    clock: float,
) -> dict:
    """`search.backfill` of the saved index, as a command's summary (started at `clock`).

    Codes wider than the index are stored on its width m (their first m
    coordinates, the shared prefix on which codes of unequal widths are
    compared everywhere); an empty step writes nothing.

    Args:
      index: the index at `index_path`, as loaded.
      index_path: the saved index to update.
      ids: the documents to replace.
      planes: their new codes, int8 [n, u+1, m'] with m' >= m.
      version: the codes' version name.
      clock: `time.perf_counter()` when the step began.

    Raises:
      DataError: naming the index when the ids or the codes cannot replace
        its documents (repeated or out-of-range ids, a version of other loops).
    """
    if len(ids) == 0:
        return _step_summary(index, index_path, 0, version, clock)
    try:
        index = backfill(index_path, ids, np.ascontiguousarray(planes[..., : index.m]), version)
    except IndexFormatError:
        raise
    except ValueError as e:
        raise DataError(f"{index_path}: {e}") from None
    return _step_summary(index, index_path, len(ids), version, clock)


def _step_summary(index: BinaryIndex, path: str, replaced: int, version: str, clock: float):
    return {
        "index": path,
        "version": version,
        "replaced": replaced,
        "versions": index.counts(),
        "seconds": round(time.perf_counter() - clock, 2),
    }


def _missing_parent(path: str) -> str | None:
    """The outermost missing directory above `path`, which writing `path` would create."""
    missing, parent = None, os.path.dirname(path)
    while parent and not os.path.exists(parent):
        missing, parent = parent, os.path.dirname(parent)
    return missing


def _encode_rows(
    encoder, source: RowSource, writer: IndexWriter | None, start: int, batch_size: int, progress
):
    """Encodes rows start.. of `source` in order; the device works while the host writes.

    Each batch is dispatched before the previous one's planes are packed and
    written, so reading, packing and writing overlap the forward pass. On N
    processes every process encodes its part of each batch and process 0
    (the one with a `writer`) writes the whole batch.
    """
    apply = sharding.sharded_apply(encoder.forward, encoder.mesh, batch_size)
    n = len(source)
    bar = Bar(  # its rate and ETA leave out the compiling first batch
        total=n,
        initial=start,
        desc="encode",
        unit="row",
        unit_scale=True,
        dynamic_ncols=True,
        mininterval=1.0,
        disable=None if progress and writer is not None else True,  # None: on a terminal only
    )
    with bar:
        pending = None
        for first in range(start, n, batch_size):
            rows = read_checked(source, first, first + batch_size)
            planes = apply(encoder.variables, rows)
            if pending is not None:
                _write(writer, bar, *pending)
            pending = planes, len(rows)
        if pending is not None:
            _write(writer, bar, *pending)


def _write(writer: IndexWriter | None, bar, planes, rows: int) -> None:
    planes = distributed.to_host(planes)[:rows]
    if writer is not None:
        writer.write(planes)
    bar.update(rows)
