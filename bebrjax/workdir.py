"""The files of a run's workdir (config.json, metrics.jsonl, results.{json,md}) and outputs.

Every file is written whole or not at all (a temporary file renamed into
place), so an interrupted run never leaves a half-written result. JSON is
strict: a metric that is undefined (NaN) or infinite is written as null.
train_time.json records the training time of every call (`TrainTime`).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import time
from typing import Any

import numpy as np

from bebrjax import distributed
from bebrjax.config import diff_keys
from bebrjax.errors import ConfigError, LoadError, OutputExistsError


def write_atomic(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename.

    On a multi-process run only process 0 writes (`distributed.is_primary`),
    and every process returns once the file is in place, so the others
    never race it and may read it next. Every process makes the call.
    """
    if distributed.is_primary():
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    distributed.barrier("workdir.write_atomic")


def refuse_existing(path: str, overwrite: bool, *, directory: bool = False) -> None:
    """Raises OutputExistsError unless `path` is free, or replaceable with `overwrite`.

    Args:
      path: the output (a trailing slash is ignored).
      overwrite: whether an existing output of the same kind may be replaced.
      directory: the output is a directory (else a file); the other kind is
        never replaced.
    """
    path = os.path.normpath(path)
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
    if os.path.isdir(path) != directory:
        kind = "a directory" if os.path.isdir(path) else "not a directory"
        raise OutputExistsError(f"{path} is {kind}; it is not replaced by this output")


def exists_for_all(path: str) -> bool:
    """Whether `path` exists, as every process sees it before any of them may write it.

    On N processes each looks, then all wait for each other: process 0
    cannot create the file before a slower process has looked, so all take
    the same branch of a check-or-write.
    """
    found = os.path.exists(path)
    distributed.barrier("workdir.exists_for_all")
    return found


def write_npz(path: str, arrays: dict[str, Any], overwrite: bool = False) -> None:
    """Writes `arrays` to the .npz `path` whole: a temporary file renamed into place.

    Only process 0 of a multi-process run writes (every process checks, and
    returns once the file is in place).

    Raises:
      OutputExistsError: when `path` exists and `overwrite` is False.
    """
    refuse_existing(path, overwrite)
    if distributed.is_primary():
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    distributed.barrier("workdir.write_npz")


def to_json(obj: Any, indent: int | None = None) -> str:
    """Strict JSON of `obj`: every non-finite float (NaN, +-inf) becomes null."""
    return json.dumps(_finite(obj), indent=indent, allow_nan=False)


def _finite(obj: Any) -> Any:
    """`obj` with every non-finite float, however deeply nested, replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(value) for value in obj]
    return obj


def write_json(path: str, obj: Any) -> None:
    """Writes `obj` as indented strict JSON (`to_json`), atomically."""
    write_atomic(path, to_json(obj, indent=2) + "\n")


def check_workdir(workdir: str) -> None:
    """Refuses a workdir path that cannot hold a run, before any work starts.

    Raises:
      ConfigError: naming the path when it is a file (or another non-directory),
        or when the directory (or, for a new one, its nearest existing parent)
        cannot be written.
    """
    if os.path.lexists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir {workdir}: exists and is not a directory")
    existing = os.path.abspath(workdir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"--workdir {workdir}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir {workdir}: {existing} is not writable")


_CLAIMED: dict[str, int] = {}  # workdir (real path) -> the locked directory's fd


def claim(workdir: str) -> None:
    """Makes the existing directory `workdir` this process's for as long as it runs.

    An exclusive `flock` on the directory itself (no file is written): a
    second process that claims it is refused at once, and the lock of a
    process that died, however it died, is gone with it. Claiming a
    directory this process already holds is a no-op.

    On a multi-process run, process 0 holds the lock for the run.

    Raises:
      ConfigError: when another running process holds `workdir`.
    """
    key = os.path.realpath(workdir)
    if key in _CLAIMED or not distributed.is_primary():
        return
    fd = os.open(key, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(
            f"workdir '{workdir}' is in use by another running process; wait for it to "
            "finish or use another workdir"
        ) from None
    _CLAIMED[key] = fd


def prepare(workdir: str, config: dict[str, Any]) -> None:
    """Creates `workdir` and records the resolved config, or checks it matches.

    A workdir belongs to one config: resuming into it with different settings
    would mix two runs, so that is an error naming the differing keys. It
    also belongs to one running process (`claim`). On a multi-process run
    every process checks, process 0 writes, and all wait for it.

    Raises:
      ConfigError: when the workdir holds a run with a different config, or
        another running process holds it.
    """
    os.makedirs(workdir, exist_ok=True)
    claim(workdir)
    path = os.path.join(workdir, "config.json")
    if exists_for_all(path):
        with open(path) as f:
            saved = json.load(f)
        changed = diff_keys(saved, config)
        if changed:
            raise ConfigError(
                f"workdir '{workdir}' holds a run with a different config "
                f"(differs in: {', '.join(changed)}); use a new workdir"
            )
    else:
        write_json(path, config)
    distributed.barrier("workdir.prepare")


class MetricsLog:
    """Appends one JSON line per logged step to `metrics.jsonl`.

    On resume from step s it first drops the lines logged after s, so the file
    reads as if the run had never stopped.
    """

    def __init__(self, workdir: str, resume_step: int):
        self.path = os.path.join(workdir, "metrics.jsonl")
        if os.path.exists(self.path):
            kept = [r for r in read_metrics(workdir) if r["step"] <= resume_step]
            write_atomic(self.path, "".join(to_json(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        """Appends one record (on process 0 of a multi-process run)."""
        if not distributed.is_primary():
            return
        with open(self.path, "a") as f:
            f.write(to_json(record) + "\n")


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All records of `workdir`'s metrics.jsonl (empty when there is none).

    A last line without its newline is an append cut short (a kill during
    the write) and is left out; the resumed run logs that step again.

    Raises:
      LoadError: naming the file and line when another line is not JSON.
    """
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.readlines()
    if lines and not lines[-1].endswith("\n"):
        lines.pop()  # torn by a kill mid-append
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise LoadError(f"{path}: line {number} is not JSON ({e})") from None
    return records


TRAIN_TIME = "train_time.json"


def train_time(workdir: str) -> dict[str, Any]:
    """The wall seconds spent training in `workdir`, over every call that trained.

    Returns:
      {"seconds": the total, "parts": [{"start": step, "end": step,
      "seconds": s}, ...]}, one part per call in the order they ran (see
      `TrainTime`); {"seconds": 0.0, "parts": []} when nothing was trained.
    """
    path = os.path.join(workdir, TRAIN_TIME)
    parts = []
    if os.path.exists(path):
        with open(path) as f:
            parts = json.load(f)["parts"]
    return {"seconds": round(sum(p["seconds"] for p in parts), 2), "parts": parts}


class TrainTime:
    """Records one training call's part of `workdir`'s train_time.json.

    The part runs from the step the call resumed at to the last step
    recorded by `update`, which rewrites it (atomically) with the seconds
    since the part began: a process killed mid-call keeps the time up to
    its last update. Parts overlap when a call resumes before the end of an
    earlier one (its last steps were lost), since both took the time.
    """

    def __init__(self, workdir: str, start: int):
        self._path = os.path.join(workdir, TRAIN_TIME)
        self._earlier = train_time(workdir)["parts"]
        self._start, self._clock = start, time.perf_counter()

    def update(self, step: int) -> None:
        """Records this call's part as ending at `step`, now."""
        seconds = round(time.perf_counter() - self._clock, 2)
        part = {"start": self._start, "end": step, "seconds": seconds}
        write_json(self._path, {"parts": [*self._earlier, part]})
