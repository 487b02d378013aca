"""Orbax checkpoints of a train state: save on a schedule, resume the newest readable one.

A checkpoint that is damaged (a truncated data file, an emptied metadata
file, a missing file: an error that decodes nothing, orbax's own format
errors) is skipped with a one-line warning: the run resumes from the newest
one that reads, and the damaged step directories are moved to
`<directory>-unreadable/`, kept for inspection and out of the way of the
manager's own bookkeeping (a later save of the same step, `max_to_keep`).
On N processes process 0 moves them while the others wait. Any other error
(an I/O error, a refused permission, memory) says nothing about the
checkpoint and may pass: it stops the command with one line
(`CheckpointError`) and nothing is moved, rather than rewind the run. When
none can be read, `CheckpointError` says so and nothing is moved.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from bebrjax import distributed
from bebrjax.errors import CheckpointError

# tensorstore's statuses (its ValueError's message starts "STATUS: ") of bad or missing data
_DAMAGE_STATUSES = {
    "DATA_LOSS",
    "NOT_FOUND",
    "OUT_OF_RANGE",
    "INVALID_ARGUMENT",
    "FAILED_PRECONDITION",
}
_STATUS = re.compile(r"([A-Z][A-Z_]+): ")
_MISSING = (FileNotFoundError, NotADirectoryError)
_DAMAGE = (ValueError, KeyError, EOFError, *_MISSING)  # what a file that does not decode raises


def manager(directory: str, *, every: int, keep: int) -> ocp.CheckpointManager:
    """A CheckpointManager saving every `every` steps and keeping the last `keep`."""
    return ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every),
    )


def restore_latest(directory: str, like: Any) -> Any | None:
    """Restores the newest readable checkpoint of `directory` into the shardings of `like`.

    Steps are tried newest first. Those that are damaged are named in one
    warning line and moved to `<directory>-unreadable/` by process 0 (see
    the module docstring); call this before opening a writing `manager` on
    `directory`.

    Args:
      directory: the run's checkpoint directory (it need not exist).
      like: a state (or abstract state) with the target shardings; restoring
        into it reshards on load, so a run can resume on another mesh.

    Returns:
      The restored state, or None when the directory holds no checkpoint.

    Raises:
      CheckpointError: when there are checkpoints and none can be read; each
        step and its error are named, and nothing is moved. Also when a step
        fails to read for a cause other than damage (`_is_damage`), naming
        it; nothing is moved.
    """
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like
    )
    unreadable: dict[int, str] = {}
    for step in reversed(steps(directory)):
        try:
            with _reader(directory) as mngr, _quiet_abandoned_reads():
                state = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # orbax raises a bare Exception for unreadable array data
            if not _is_damage(e):
                raise CheckpointError(
                    f"{directory}: step {step} cannot be read ({_reason(e)}), an error that "
                    "does not say it is damaged; nothing was moved: run again once it is fixed"
                ) from e
            unreadable[step] = _reason(e)
            continue
        if unreadable:
            if distributed.is_primary():
                aside = [_set_aside(directory, s) for s in unreadable]
                logging.warning(
                    "unreadable checkpoint(s) skipped: %s; moved to %s; resuming from step %d",
                    "; ".join(f"step {s}: {why}" for s, why in unreadable.items()),
                    ", ".join(aside),
                    step,
                )
            distributed.barrier("checkpoint.set_aside")
        return state
    if unreadable:
        raise CheckpointError(
            f"{directory}: no checkpoint can be read ("
            + "; ".join(f"step {s}: {why}" for s, why in unreadable.items())
            + "); move the directory aside to train from the start"
        )
    return None


def _is_damage(error: BaseException) -> bool:
    """Whether `error`, from restoring a step, says the step itself is damaged or incomplete.

    Damage is a file that does not decode (a ValueError such as a JSON error,
    a KeyError, an EOFError), a missing file, a tensorstore status of bad or
    missing data (`_DAMAGE_STATUSES`) or orbax's own bare Exception. Any other
    OSError or tensorstore status (PERMISSION_DENIED, UNAVAILABLE, ...) in
    the chain of causes, or any other error, may be transient: not damage.
    """
    chain, e = [], error
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if isinstance(e, OSError) and not isinstance(e, _MISSING):
            return False
        status = _STATUS.match(str(e)) if isinstance(e, ValueError) else None
        if status and status.group(1) not in _DAMAGE_STATUSES:
            return False
    error = _innermost(error)
    return isinstance(error, _DAMAGE) or type(error) is Exception


def _innermost(error: BaseException) -> BaseException:
    """The innermost cause of `error` (orbax wraps the useful one)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _reason(error: BaseException) -> str:
    """The first line of the innermost cause of `error`."""
    error = _innermost(error)
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"


def _set_aside(directory: str, step: int) -> str:
    """Moves the directory of `step` to `<directory>-unreadable/<step>[.n]`; returns where."""
    source = ocp.step.find_step_path(
        directory, ocp.step.standard_name_format(), step=step, include_uncommitted=True
    )
    aside = f"{os.path.abspath(directory)}-unreadable"
    target, n = os.path.join(aside, source.name), 0
    while os.path.lexists(target):
        n += 1
        target = os.path.join(aside, f"{source.name}.{n}")
    os.makedirs(aside, exist_ok=True)
    os.rename(source, target)
    return target


def _is_abandoned_read(report: Any) -> bool:
    """Whether an unraisable-exception report comes from reads a failed restore left running."""
    if isinstance(report.exc_value, RuntimeError):
        return str(report.exc_value) == "Event loop is closed"
    code = getattr(report.object, "cr_code", None)
    return code is not None and "orbax" in code.co_filename


@contextlib.contextmanager
def _quiet_abandoned_reads() -> Iterator[None]:
    """Drops the reports of the reads a failed restore leaves in flight.

    When one array fails to read, orbax closes its event loop while the other
    reads still run; each then reports "Event loop is closed" (or its own
    failure) through `sys.unraisablehook`, during the restore and for a
    while after it, dozens of tracebacks in all. Within the block only those
    reports are dropped (any other goes to the hook installed before); when
    the block fails, the filter stays installed for the reads still running.
    """
    previous = sys.unraisablehook

    def hook(report):
        if not _is_abandoned_read(report):
            previous(report)

    sys.unraisablehook = hook
    yield
    sys.unraisablehook = previous


def save(mngr: ocp.CheckpointManager, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves `state` at `step` when the schedule (or `force`) says so; returns whether it did.

    The schedule is asked first (`should_save`, a local check): on N
    processes `mngr.save` itself syncs them even when it then saves
    nothing, about 2 ms a step with gloo on CPU.
    """
    if not (force or mngr.should_save(step)):
        return False
    return mngr.save(step, args=ocp.args.StandardSave(state), force=force)


def steps(directory: str) -> list[int]:
    """The finished checkpoint steps in `directory`, ascending (empty when there are none)."""
    if not os.path.isdir(directory):
        return []
    return list(_reader(directory).all_steps())


def restore_any(directory: str, step: int, sharding: jax.sharding.Sharding) -> Any:
    """Restores checkpoint `step` of `directory` whatever its tree, every array in `sharding`.

    The tree's structure, shapes and dtypes come from the checkpoint's own
    metadata, so nothing needs to be rebuilt first, and the arrays are laid
    out for the devices present now: a state written on 8 devices restores
    onto 1, and the reverse (a plain restore without target shardings fails
    with a topology mismatch).
    """
    mngr = _reader(directory)
    metadata = mngr.item_metadata(step)
    abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), dict(metadata)
    )
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract))


def _reader(directory: str) -> ocp.CheckpointManager:
    """A manager that reads `directory` and never writes to it."""
    return ocp.CheckpointManager(
        os.path.abspath(directory),
        item_handlers=ocp.StandardCheckpointHandler(),
        options=ocp.CheckpointManagerOptions(create=False),
    )
