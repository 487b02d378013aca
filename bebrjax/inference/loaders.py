"""`load(workdir)`: the loaders of each trainer's workdir, looked up by config.json's `trainer`."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from bebrjax import sharding
from bebrjax.data.upgrade_splits import labelled_data
from bebrjax.errors import LoadError
from bebrjax.models.adapter import split_variables
from bebrjax.trainers import sequential
from bebrjax.trainers.parts import Encoder, Runs, Upgrade, Versions
from bebrjax.trainers.runs import code_upgrade, load_binarizer, read_config, restore
from bebrjax.trainers.upgrade.compare import method_configs
from bebrjax.trainers.upgrade.methods import METHODS
from bebrjax.trainers.upgrade.models import build, build_adapter


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
    old_step, old_vars = restore(old_dir, None, mesh, True, name)  # always its final one
    new_step, new_vars = restore(os.path.join(base, "new"), step, mesh, finished, name)
    old_vars, _ = _model_only(old_vars)  # the previous step of a dmu sequence holds a psi too
    new_vars, psi_vars = _model_only(new_vars)
    psi_step = new_step
    parts = {
        "old": _embedder("old", build(config.old, classes), old_vars, example, old_step, mesh),
        "new": _embedder("new", build(config.new, classes), new_vars, example, new_step, mesh),
    }
    if METHODS[config.method].adapter == "forward":  # psi trained in a stage of its own
        psi_step, psi_vars = restore(os.path.join(base, "forward"), step, mesh, finished, name)
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
    "binarizer": load_binarizer,
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
