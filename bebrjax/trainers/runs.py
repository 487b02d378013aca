"""A finished run read back, as the trainers and `bebrjax.inference.load` both need it.

Its config (`read_config`), a stage's checkpoint (`restore`), a binarizer
run's parts (`load_binarizer`), and psi of compatible codes: written by the
compatible trainer (`save_psi`) and read back as an `Encoder` (`code_upgrade`).
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from bebrjax import checkpoint, sharding
from bebrjax import workdir as wd
from bebrjax.errors import LoadError, read_json
from bebrjax.models.code_adapter import CodeAdapter
from bebrjax.trainers.binarizer import build_model
from bebrjax.trainers.parts import Binarizer, Encoder, l2_normalize_rows


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config of the run in `workdir` (its config.json).

    Raises:
      LoadError: when there is no such directory, no config.json, or bad JSON.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.isdir(workdir):
        raise LoadError(f"{workdir}: no such directory")
    if not os.path.isfile(path):
        raise LoadError(f"{workdir}: not a bebrjax workdir (no config.json)")
    return ml_collections.ConfigDict(read_json(path, LoadError))


def restore(directory: str, step: int | None, mesh: Mesh, finished: bool, workdir: str):
    """(step, flax variables) of a stage directory's checkpoint, replicated on `mesh`.

    Args:
      directory: the stage's directory (its checkpoints/ below it).
      step: a kept step, or None for the latest of a finished run.
      mesh: the devices to hold the variables.
      finished: whether the run has finished (its results.json is written).
      workdir: the run's directory, named in the errors.

    Raises:
      LoadError: an unfinished run without a step, or a step not kept.
    """
    kept = checkpoint.steps(os.path.join(directory, "checkpoints"))
    if step is None:
        if not finished:
            raise LoadError(
                f"{workdir}: the run has not finished (no results.json); pass a step to load "
                f"an intermediate checkpoint (kept: {', '.join(map(str, kept)) or 'none'})"
            )
        if not kept:
            raise LoadError(f"{directory}: no finished checkpoint")
        step = kept[-1]
    elif step not in kept:
        raise LoadError(
            f"{directory}: no checkpoint at step {step} "
            f"(kept: {', '.join(map(str, kept)) or 'none'})"
        )
    state = checkpoint.restore_any(
        os.path.join(directory, "checkpoints"), step, sharding.replicated(mesh)
    )
    return step, {"params": state["params"], "batch_stats": state.get("batch_stats", {})}


def load_binarizer(
    workdir: str, config: ml_collections.ConfigDict, step: int | None, mesh: Mesh, finished: bool
) -> Binarizer:
    """The binarizer run in `workdir` (config: its config.json): its encoder and logits."""
    step, variables = restore(workdir, step, mesh, finished, workdir)
    model = build_model(config)
    first = variables["params"]["w"]  # block W's first Dense reads x (see MLPBlock)
    dim = int(first["Dense_0" if "Dense_0" in first else "linear"]["kernel"].shape[0])

    def forward(v, x):
        return model.apply(v, l2_normalize_rows(x), train=False).planes

    def logits(v, x):
        return model.apply(v, l2_normalize_rows(x), train=False).logits

    def part(name, kind, fn):
        return Encoder(name, kind, fn, variables, (dim,), np.dtype(np.float32), "l2", step, mesh)

    parts = {
        "binarizer": part("binarizer", "binarizer", forward),
        "logits": part("logits", "embedder", logits),
    }
    return Binarizer(workdir, "binarizer", config, parts)


def save_psi(
    directory: str, params: dict[str, np.ndarray], old: Binarizer, new: Binarizer, alpha: float
) -> None:
    """Writes psi (the params of `CodeAdapter`) as an orbax checkpoint in `directory`.

    `directory`/config.json records the old codes psi reads, the new codes
    it writes and the runs it was fitted on.
    """
    wd.prepare(directory, {"alpha": alpha, "old": old.provenance(), "new": new.provenance()})
    mngr = checkpoint.manager(os.path.join(directory, "checkpoints"), every=1, keep=1)
    # Replicated over every device (of every process: orbax writes global arrays).
    on_devices = jax.device_put(params, sharding.replicated(sharding.make_mesh()))
    checkpoint.save(mngr, 0, {"params": {"linear": on_devices}}, force=True)
    mngr.wait_until_finished()
    mngr.close()


def code_upgrade(directory: str, mesh: Mesh) -> Encoder:
    """The psi of `directory`: old bit planes [N, u_old+1, m_old] -> new ones (`CodeAdapter`)."""
    record = read_config(directory)
    step, variables = restore(directory, None, mesh, True, directory)
    adapter = CodeAdapter(int(record.new.m), int(record.new.u))

    def forward(v, planes):
        return adapter.apply(v, planes)

    return Encoder(
        "psi",
        "adapter",
        forward,
        {"params": variables["params"]},
        (int(record.old.u) + 1, int(record.old.m)),
        np.dtype(np.int8),
        "none",
        step,
        mesh,
    )
