"""`load(workdir)`: the loaders of each trainer's workdir, looked up by config.json's `trainer`."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from bebrjax import checkpoint, sharding
from bebrjax import workdir as wd
from bebrjax.data.upgrade_splits import labelled_data
from bebrjax.errors import read_json
from bebrjax.inference.parts import (
    Binarizer,
    Encoder,
    LoadError,
    Runs,
    Upgrade,
    Versions,
    l2_normalize_rows,
)
from bebrjax.models.adapter import split_variables
from bebrjax.models.code_adapter import CodeAdapter
from bebrjax.trainers import sequential
from bebrjax.trainers.binarizer import build_model
from bebrjax.trainers.upgrade_compare import method_configs
from bebrjax.trainers.upgrade_methods import METHODS
from bebrjax.trainers.upgrade_models import build, build_adapter


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


def _restore(directory: str, step: int | None, mesh: Mesh, finished: bool, workdir: str):
    """(step, flax variables) of a stage directory's checkpoint."""
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


def _load_binarizer(workdir, config, step, mesh, finished) -> Binarizer:
    step, variables = _restore(workdir, step, mesh, finished, workdir)
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


def _embedder(name, model: nn.Module, variables, example: np.ndarray, step, mesh) -> Encoder:
    def forward(v, x):
        return model.apply(v, x, train=False)["embedding"]

    return Encoder(
        name,
        "embedder",
        forward,
        variables,
        tuple(example.shape[1:]),
        np.dtype(np.float32 if example.dtype.kind == "f" else example.dtype),
        "none",
        step,
        mesh,
    )


def _model_only(variables: dict) -> tuple[dict, dict | None]:
    """(the embedding model's variables, psi's or None) of a stage; dmu stages hold both."""
    if set(variables["params"]) == {"model", "adapter"}:
        return split_variables(variables)
    return variables, None


def _upgrade(
    name: str,
    config,
    example: np.ndarray,
    classes: int,
    old_dir: str,
    base: str,
    step,
    mesh,
    finished: bool,
) -> Upgrade:
    """The parts of one upgrade: old from `old_dir`, new (and psi) from `base`/new, /forward.

    `config` is an `upgrade` trainer config (method, old, new, forward).
    """
    old_step, old_vars = _restore(old_dir, None, mesh, True, name)  # always its final one
    new_step, new_vars = _restore(os.path.join(base, "new"), step, mesh, finished, name)
    old_vars, _ = _model_only(old_vars)  # the previous step of a dmu sequence holds a psi too
    new_vars, psi_vars = _model_only(new_vars)
    psi_step = new_step
    parts = {
        "old": _embedder("old", build(config.old, classes), old_vars, example, old_step, mesh),
        "new": _embedder("new", build(config.new, classes), new_vars, example, new_step, mesh),
    }
    if METHODS[config.method].adapter == "forward":  # psi trained in a stage of its own
        psi_step, psi_vars = _restore(os.path.join(base, "forward"), step, mesh, finished, name)
    if psi_vars is not None:
        adapter = build_adapter(config, config.new.model.embedding_dim)

        def forward(v, x):
            return adapter.apply(v, x.astype(jnp.float32), train=False)

        parts["psi"] = Encoder(
            "psi",
            "adapter",
            forward,
            psi_vars,
            (config.old.model.embedding_dim,),
            np.dtype(np.float32),
            "none",
            psi_step,
            mesh,
        )
    return Upgrade(name, "upgrade", config, parts)


def _load_upgrade(workdir, config, step, mesh, finished) -> Upgrade:
    data = labelled_data(config)
    old_dir = config.old_workdir or os.path.join(workdir, "old")
    return _upgrade(
        workdir, config, data.x[:1], data.num_classes, old_dir, workdir, step, mesh, finished
    )


def _load_sequential(workdir, config, step, mesh, finished) -> Runs:
    """Every upgrade of the sequence as `Runs`: "<method>/step<t>" for t = 2..T.

    Step t's old model is step t-1's new model of the same method (step 1:
    phi1), as in training.
    """
    if not finished:
        raise LoadError(f"{workdir}: the sequence has not finished (no results.json)")
    data = labelled_data(config)
    runs = Runs()
    for method in config.methods:
        old_dir = os.path.join(workdir, "step1")
        for t in range(1, len(config.sequence.ratios)):
            base = os.path.join(workdir, method, f"step{t + 1}")
            sub = sequential.method_config(config, method, t)
            runs[f"{method}/step{t + 1}"] = _upgrade(
                base, sub, data.x[:1], data.num_classes, old_dir, base, step, mesh, True
            )
            old_dir = os.path.join(base, "new")
    return runs


def _load_compare(workdir, config, step, mesh, finished) -> Runs:
    if not finished:
        raise LoadError(f"{workdir}: the comparison has not finished (no results.json)")
    return Runs(
        {
            name: load(path, step, mesh)
            for name, (_, path) in method_configs(config, workdir).items()
        }
    )


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
    step, variables = _restore(directory, None, mesh, True, directory)
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


def _load_compatible(workdir, config, step, mesh, finished) -> Versions:
    """The old, new and independent binarizers (each its own run) and psi."""
    if not finished:
        raise LoadError(f"{workdir}: the run has not finished (no results.json)")
    dirs = {
        "old": config.old_workdir or os.path.join(workdir, "old"),
        "new": os.path.join(workdir, "new"),
        "independent": config.get("independent_workdir") or os.path.join(workdir, "independent"),
    }
    runs = {name: load(path, step if name == "new" else None, mesh) for name, path in dirs.items()}
    psi = code_upgrade(os.path.join(workdir, "psi"), mesh)
    parts = {name: run.encoder for name, run in runs.items()}
    return Versions(workdir, "compatible", config, {**parts, "psi": psi}, runs)


# config.json's `trainer` -> loader(workdir, config, step, mesh, finished).
LOADERS: dict[str, Callable[..., Any]] = {
    "binarizer": _load_binarizer,
    "upgrade": _load_upgrade,
    "upgrade_compare": _load_compare,
    "sequential": _load_sequential,
    "compatible": _load_compatible,
}


def load(workdir: str, step: int | None = None, mesh: Mesh | None = None) -> Any:
    """Loads what the run in `workdir` trained onto the devices present.

    Args:
      workdir: a finished run's directory (config.json, checkpoints, results.json).
      step: a kept checkpoint step to load instead of the final one.
      mesh: the devices to hold the variables and run the encoders on
        (default: all of them, on a `data` axis).

    Returns:
      A `Binarizer`, an `Upgrade` or, for a comparison or a sequence, `Runs`.

    Raises:
      LoadError: naming the workdir and the problem: no such directory, no
        config.json, an unfinished run, a step not kept, a trainer that has
        no loader.
    """
    config = read_config(workdir)
    trainer = config.get("trainer")
    if trainer not in LOADERS:
        raise LoadError(
            f"{workdir}: runs of trainer {trainer!r} cannot be loaded "
            f"(loadable: {', '.join(LOADERS)})"
        )
    finished = os.path.isfile(os.path.join(workdir, "results.json"))
    return LOADERS[trainer](workdir, config, step, mesh or sharding.make_mesh(), finished)
