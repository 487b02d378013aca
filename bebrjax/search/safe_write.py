"""Crash-safe replacement of a directory, and the write lock of an index.

An index (or a bundle) is built in a directory beside its `path`
(`staging_dir`) and swapped into place (`move_into_place`), so a crash at
any instant leaves either the previous index or the new one at `path`,
never a mixture. Where the swap cannot be
atomic and both of its renames fail, the previous index is kept aside and
the error names where it lies.

Writers of one index take turns: a save (`storage.write_index`), a backfill step,
the final rename of an incremental encode and an export's copy each hold
`index_lock(path)`, an advisory `flock` of `<parent>/.<name>.lock` (beside
the index, which is itself swapped), and an incremental encode holds the
lock of its `<path>.partial` for as long as it writes. A second writer is
refused at once (`IndexLockedError`, naming the index and the holder's
`what` and pid) rather than made to wait: an encode can hold a lock for
hours, and a refused command is simply run again. The kernel releases the
lock of a process that dies, however it dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator

from bebrjax.errors import IndexLockedError

_RENAME_EXCHANGE = 2  # renameat2 flag (Linux): swap two paths atomically
_HELD = threading.local()  # .files: the lock files this thread holds (`index_lock`)


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


def fsync_dir(directory: str) -> None:
    """Syncs a directory, so that the renames in it survive a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: str, b: str) -> bool:
    """Atomically swaps paths `a` and `b` (Linux renameat2); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), b)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def move_into_place(tmp: str, path: str) -> None:
    """Renames the finished directory `tmp` to `path`, replacing whatever was there.

    Where the system can (Linux renameat2), `tmp` and an existing `path` are
    swapped atomically and the old contents deleted after: at every instant
    `path` is the old or the new directory, whole. Elsewhere the old
    contents are first moved aside (and moved back if the second rename
    fails), a short window in which `path` is absent; they are deleted only
    once the new directory is in place.

    Raises:
      OSError: when a rename fails. Where moving the old contents back fails
        too, they are kept aside and the error names where they now lie.
    """
    fsync_dir(tmp)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.lexists(path):
        os.replace(tmp, path)
    elif _exchange(tmp, path):
        _remove(tmp)
    else:
        aside = tempfile.mkdtemp(prefix=".old-index-", dir=parent)
        old = os.path.join(aside, "index")
        os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException as error:
            try:
                os.replace(old, path)
            except OSError as again:
                raise OSError(
                    f"{path}: replacing it failed ({error}) and so did restoring it ({again}); "
                    f"its previous contents are kept at {old}"
                ) from error
            os.rmdir(aside)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    fsync_dir(parent)


def index_lock(path: str, what: str) -> contextlib.AbstractContextManager[None]:
    """Holds the advisory lock of the index (or partial index) `path` within a `with` block.

    An exclusive `flock` of `<parent>/.<name>.lock`, which records `what`
    and this process's pid for whoever is refused; the file is deleted on
    release (the kernel releases the lock of a process that dies, and a
    lock file left behind is simply locked again). The thread that holds
    it may take it again (a backfill step's save): the inner block neither
    locks nor releases. Where the parent cannot be written, no lock is taken:
    no one without that right can replace the index there either.

    Args:
      path: the index directory (it need not exist yet).
      what: what the holder is doing, e.g. "backfill", "encode", "export".

    Raises:
      IndexLockedError: on entry, when another process (or thread) holds it;
        one line naming `path` and the holder.
    """
    path = os.path.abspath(path)
    lock = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")
    held = _HELD.__dict__.setdefault("files", set())
    if lock in held:
        return contextlib.nullcontext()
    return _flocked(lock, path, what, held)


@contextlib.contextmanager
def _flocked(lock: str, path: str, what: str, held: set[str]) -> Iterator[None]:
    """`index_lock`'s work: lock the file `lock`, record the holder, and delete it at the end."""
    parent = os.path.dirname(lock)
    os.makedirs(parent, exist_ok=True)
    if not os.access(parent, os.W_OK | os.X_OK):
        yield  # a directory this user cannot change: nothing to guard against
        return
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            raise IndexLockedError(
                f"{path}: in use by {holder or 'another process'}; run this again when it "
                "has finished"
            ) from None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the previous holder deleted this file on release: lock the new one
    held.add(lock)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what} (pid {os.getpid()})".encode(), 0)
        yield
    finally:
        held.discard(lock)
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock)  # still locked: a process that opened it finds it gone and retries
        os.close(fd)
