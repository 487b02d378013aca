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
