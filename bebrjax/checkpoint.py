"""Orbax checkpoints of a train state: save on a schedule, resume the latest."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def manager(directory: str, *, every: int, keep: int) -> ocp.CheckpointManager:
    """A CheckpointManager saving every `every` steps and keeping the last `keep`."""
    return ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every),
    )


def restore_latest(mngr: ocp.CheckpointManager, like: Any) -> Any | None:
    """Restores the latest checkpoint into the shapes and shardings of `like`.

    Args:
      mngr: the manager of the run's checkpoint directory.
      like: a state (or abstract state) with the target shardings; restoring
        into it reshards on load, so a run can resume on another mesh.

    Returns:
      The restored state, or None when the directory holds no checkpoint.
    """
    step = mngr.latest_step()
    if step is None:
        return None
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like
    )
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract))


def save(mngr: ocp.CheckpointManager, step: int, state: Any, *, force: bool = False) -> None:
    """Saves `state` at `step` when the schedule (or `force`) says so."""
    mngr.save(step, args=ocp.args.StandardSave(state), force=force)


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
