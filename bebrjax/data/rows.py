"""Rows of one large array on disk, read a batch at a time.

`open_rows(path, key)` opens an `.npy` file, one key of an `.npz` archive,
or `<key>.npy` in a directory, and reads rows [start, stop) by file offset.
Only the batch asked for is ever in memory, and the reads do not go through
a memory map: every page of a mapped file that has been touched counts
toward the process's resident memory, so a 7.7 GB corpus read through
`np.load(mmap_mode="r")` ends with 7.7 GB of RSS, while read by offset it
stays at one batch. `take` reads scattered rows the same way (a shortlist's
float vectors: through a map, each row would bring its page and the
kernel's neighbours of it into resident memory). `.npz` members are
streamed (a compressed member can only be read forward: reading rows in
order costs one pass).
"""

from __future__ import annotations

import os
import zipfile
from typing import BinaryIO

import numpy as np

from bebrjax.errors import DataError


class RowSource:
    """Batch-at-a-time access to the rows of one array.

    Attributes:
      name: "PATH" or "PATH:key", for messages.
      shape: the array's shape; rows are along axis 0.
      dtype: its dtype.
    """

    def __init__(self, name: str, stream: BinaryIO, fingerprint: dict):
        self.name, self._stream = name, stream
        try:
            version = np.lib.format.read_magic(stream)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(stream)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{name}: not a readable .npy array ({e})") from None
        if fortran and len(shape) > 1:
            raise DataError(f"{name}: Fortran-ordered arrays are not supported; save it C-ordered")
        if dtype.hasobject:
            raise DataError(f"{name}: holds Python objects, not numbers")
        self.shape, self.dtype = tuple(shape), dtype
        self._offset = self._pos = stream.tell()
        self._row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self.fingerprint = {**fingerprint, "shape": list(shape), "dtype": dtype.str}

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 0

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as an array of their own.

        Raises:
          DataError: when the file ends before those rows (truncated).
        """
        stop = min(stop, len(self))
        at = self._offset + start * self._row_bytes
        if at != self._pos:
            self._stream.seek(at)
        want = (stop - start) * self._row_bytes
        data = self._stream.read(want)
        self._pos = at + len(data)
        if len(data) != want:
            raise DataError(f"{self.name}: the file ends before row {stop} (truncated?)")
        return np.frombuffer(data, self.dtype).reshape(stop - start, *self.shape[1:])

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Rows `ids` (sorted, unique row numbers), each read by its file offset.

        Only those rows are read; a run of consecutive ids is one read.

        Raises:
          DataError: when the file ends before a row (truncated).
        """
        ids = np.asarray(ids, np.int64)
        out = np.empty((len(ids), *self.shape[1:]), self.dtype)
        flat = out.reshape(len(ids), -1).view(np.uint8)
        starts = np.flatnonzero(np.diff(ids, prepend=-2) != 1)  # the first id of each run
        for first, stop in zip(starts, [*starts[1:], len(ids)], strict=True):
            count = stop - first
            self._stream.seek(self._offset + int(ids[first]) * self._row_bytes)
            got = self._stream.readinto(flat[first:stop].reshape(-1))
            if got != count * self._row_bytes:
                raise DataError(f"{self.name}: the file ends before row {ids[stop - 1]}")
        self._pos = -1  # `read` seeks again
        return out

    def close(self) -> None:
        """Closes the file."""
        self._stream.close()


def _file_fingerprint(path: str) -> dict:
    stat = os.stat(path)
    return {"path": os.path.abspath(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def open_rows(path: str, key: str | None = None) -> RowSource:
    """Opens the array at `path`: an .npy file, `key` of an .npz, or `<key>.npy` in a directory.

    Raises:
      DataError: naming the path (and key) when it is missing or unreadable.
    """
    if os.path.isdir(path):
        if not key:
            raise DataError(f"{path}: a directory of <key>.npy files needs a key")
        file = os.path.join(path, f"{key}.npy")
        if not os.path.isfile(file):
            present = sorted(f[:-4] for f in os.listdir(path) if f.endswith(".npy"))
            raise DataError(
                f"{path}: no array '{key}' (arrays present: {', '.join(present) or 'none'})"
            )
        return RowSource(f"{path}:{key}", open(file, "rb"), {**_file_fingerprint(file), "key": key})
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file or directory")
    if path.endswith(".npy"):
        return RowSource(path, open(path, "rb"), _file_fingerprint(path))
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path}: neither an .npy file nor an .npz archive ({e})") from None
    members = {n[:-4]: n for n in archive.namelist() if n.endswith(".npy")}
    if not key or key not in members:
        archive.close()
        raise DataError(
            f"{path}: no array '{key}' (arrays present: {', '.join(sorted(members)) or 'none'})"
        )
    return RowSource(
        f"{path}:{key}", archive.open(members[key]), {**_file_fingerprint(path), "key": key}
    )


def read_ids(spec: str, num_docs: int, *, key: str, what: str, several: bool = False) -> np.ndarray:
    """Document ids from `PATH[:key]` (`key` when the spec names none), as int64 [n] or [n, R].

    Args:
      spec: the file, optionally with ":key" for an .npz or a directory.
      num_docs: ids must lie in [0, num_docs).
      key: the default array name.
      what: what the ids are, for messages (e.g. "one per query").
      several: also take [n, R] ids: row i's ids, padded with -1.

    Raises:
      DataError: naming the file when it is missing, or not 1-D (or, with
        `several`, 2-D) integers in [0, num_docs).
    """
    path = spec
    if not os.path.exists(spec) and ":" in spec:
        path, _, key = spec.rpartition(":")
    source = open_rows(path, key)
    try:
        ids = source.read(0, len(source))
    finally:
        source.close()
    if not np.issubdtype(ids.dtype, np.integer) or ids.ndim not in ((1, 2) if several else (1,)):
        raise DataError(
            f"{source.name}: expected integer doc ids, {what}; got {ids.dtype} {list(ids.shape)}"
        )
    used = ids if ids.ndim == 1 else ids[ids != -1]
    if used.size and (used.min() < 0 or used.max() >= num_docs):
        raise DataError(f"{source.name}: doc ids must lie in [0, {num_docs}) (the index size)")
    return ids.astype(np.int64)
