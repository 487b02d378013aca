"""A `BinaryIndex` written to disk batch by batch, resumable after any kill.

    writer = IndexWriter("gallery.bebr", m=512, u=1, count=n, job={...}, version="v2")
    for start in range(writer.rows, n, batch):
        writer.write(planes_of(start))       # the next rows, in order
    writer.finish()                          # gallery.bebr appears, complete

Rows go to `<path>.partial/`, a directory with the final `codes.npy` and
`inv_norms.npy` (their .npy headers already give the full count; rows are
written at their file offsets, so memory stays O(batch)) and
`progress.json`, which names the job and how many rows are safely written.
Each batch is written first and counted second (progress.json is replaced
atomically), so a process killed at any instant leaves a partial directory
whose counted rows are all whole: the same job started again continues at
that row and overwrites whatever a half-written batch left behind. `finish`
writes header.json last, syncs the files and renames the directory to
`path`, the same layout as `BinaryIndex.save` of an index of one version
(named `version`; see `bebrjax.search.storage`; progress.json is deleted
after the rename); before that, `path` does not exist and
`BinaryIndex.load` of the partial directory is refused.

A writer holds the lock of its partial directory from opening to `finish`,
`close` or `discard` (`safe_write.index_lock`), and `finish` renames under the
lock of `path` as well: a second writer of the same partial directory, or
of an index being renamed into place, is refused at once (`IndexLockedError`)
before it writes anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import numpy as np

from bebrjax.errors import PartialIndexError
from bebrjax.search import codes as codes_lib
from bebrjax.search.safe_write import index_lock, move_into_place
from bebrjax.search.storage import CODES, NORMS, PARTIAL, write_header


def _open_array(path: str, shape: tuple[int, ...], dtype: str, create: bool) -> tuple[int, int]:
    """(fd, data offset) of an .npy file of `shape`, created with its header when asked."""
    if create:
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
            )
    fd = os.open(path, os.O_RDWR)
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        offset = f.tell()
    return fd, offset


class IndexWriter:
    """Writes the packed codes of `count` documents to `path`, in order, resumably.

    Args:
      path: the index directory to create.
      m: code width.
      u: loops (u+1 planes per code).
      count: the number of documents the finished index holds.
      metric: "ip" (SDC) or "hamming" (u = 0).
      job: what makes the rows what they are (model, input, batching): a
        partial directory is continued only by the same job.
      restart: discard a partial directory of another job instead of refusing.
      version: the name of the codes' version, recorded in the header.
      query_bits: how the index's queries are served, recorded in the header.

    Raises:
      IndexLockedError: when another writer holds `<path>.partial`.
      PartialIndexError: when `<path>.partial` holds another job's rows and
        `restart` is False.
      ValueError: when `version` is not a non-empty string.
    """

    def __init__(
        self,
        path: str,
        *,
        m: int,
        u: int,
        count: int,
        job: dict,
        metric: str = "ip",
        restart: bool = False,
        version: str = "default",
        query_bits: int = 0,
    ):
        if not isinstance(version, str) or not version:
            raise ValueError(f"version={version!r} must be a non-empty string")
        self.path, self.staging = path, f"{os.path.normpath(path)}.partial"
        self.m, self.u, self.count, self.metric, self.version = m, u, count, metric, version
        self.query_bits = query_bits
        self._record = json.loads(
            json.dumps(
                {"m": m, "u": u, "metric": metric, "count": count, "job": job, "version": version}
            )
        )
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(index_lock(self.staging, "encode"))
        self._files: list[int] = []  # the open fds, closed once
        try:
            self.rows = self._resume(restart)
            create = self.rows == 0
            if create:
                if os.path.lexists(self.staging) and not os.path.isdir(self.staging):
                    raise PartialIndexError(
                        f"{self.staging}: exists and is not a partial index; remove it"
                    )
                shutil.rmtree(self.staging, ignore_errors=True)
                os.makedirs(self.staging)
            words = codes_lib.num_words(m)
            self._codes = _open_array(
                os.path.join(self.staging, CODES), (count, u + 1, words), "<u4", create
            )
            self._files.append(self._codes[0])
            self._norms = _open_array(os.path.join(self.staging, NORMS), (count,), "<f4", create)
            self._files.append(self._norms[0])
            self._code_bytes = (u + 1) * words * 4
            if create:
                self._commit()
        except BaseException:
            self.close()
            raise

    @property
    def resumed_from(self) -> int:
        """Rows found written when this writer opened (0 for a fresh start)."""
        return self._resumed

    def _resume(self, restart: bool) -> int:
        self._resumed = 0
        progress = os.path.join(self.staging, PARTIAL)
        if not os.path.isfile(progress):
            return 0
        try:
            with open(progress) as f:
                saved = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError):
            saved = None
        if isinstance(saved, dict):
            saved.setdefault("version", "default")  # recorded since index format 2
        if not isinstance(saved, dict) or {k: v for k, v in saved.items() if k != "rows"} != (
            self._record
        ):
            if restart:
                return 0
            raise PartialIndexError(
                f"{self.staging}: holds a partial index of another job (other model, input "
                "or batch size); finish that job, remove the directory, or pass --overwrite"
            )
        self._resumed = int(saved["rows"])
        return self._resumed

    def _commit(self) -> None:
        progress = os.path.join(self.staging, PARTIAL)
        with open(f"{progress}.tmp", "w") as f:
            json.dump({**self._record, "rows": self.rows}, f)
        os.replace(f"{progress}.tmp", progress)

    def write(self, planes: np.ndarray) -> None:
        """Appends the next documents, int8 planes [n, u+1, m] of +-1, and counts them."""
        planes = codes_lib.check_planes(planes, self.m, self.u)
        if self.rows + len(planes) > self.count:
            raise ValueError(f"{self.path}: more than the {self.count} documents announced")
        for (fd, offset), row_bytes, data in (
            (self._codes, self._code_bytes, codes_lib.pack(planes).astype("<u4")),
            (self._norms, 4, codes_lib.inverse_norms(planes).astype("<f4")),
        ):
            os.pwrite(fd, data.tobytes(), offset + self.rows * row_bytes)
        self.rows += len(planes)
        self._commit()

    def finish(self) -> None:
        """Writes the header, syncs the files and moves the index to `path`.

        Raises:
          IndexLockedError: when another writer holds `path`.
          ValueError: when fewer documents were written than announced.
        """
        if self.rows != self.count:
            raise ValueError(f"{self.path}: {self.rows} of {self.count} documents written")
        try:
            for fd in self._files:
                os.fsync(fd)
            self._close_files()
            write_header(
                self.staging,
                self.m,
                self.u,
                self.metric,
                self.count,
                versions=[{"name": self.version, "u": self.u}],
                query_bits=self.query_bits,
            )
            with index_lock(self.path, "encode"):
                move_into_place(self.staging, self.path)
                # Last: a kill before this leaves a complete, loadable index (header.json
                # is what load reads) that a re-run finds whole; progress.json is only junk.
                os.remove(os.path.join(self.path, PARTIAL))
        finally:
            self.close()

    def _close_files(self) -> None:
        while self._files:
            with contextlib.suppress(OSError):
                os.close(self._files.pop())

    def close(self) -> None:
        """Closes the files and releases the lock, leaving the partial directory to resume from."""
        self._close_files()
        self._lock.close()

    def discard(self) -> None:
        """Closes the files and deletes the partial directory."""
        self._close_files()
        shutil.rmtree(self.staging, ignore_errors=True)
        self._lock.close()
