"""The stages of an upgrade: each trains one model (or psi) in its own directory.

A stage directory holds the orbax checkpoints and metrics of one model and
its stage.json, the record of everything the model depends on. A finished
stage is reused (`train_loop` restores its last checkpoint and has nothing
left to do), an interrupted one resumes, and a directory trained under
another record is refused: that is how the old model and the paragon are
shared between runs (`old_workdir`, `paragon_workdir`, the comparison).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bebrjax import sharding
from bebrjax import workdir as wd
from bebrjax.data.batching import batch_indices, total_steps
from bebrjax.data.labelled import Labelled
from bebrjax.distributed import local_rows
from bebrjax.errors import ConfigError
from bebrjax.losses import compat
from bebrjax.models.adapter import Adapter, WithAdapter, split_variables
from bebrjax.optim import make_optimizer
from bebrjax.sharding import apply_model
from bebrjax.trainers.loop import State, cadence, init_state, train_loop, variables_of
from bebrjax.trainers.upgrade.methods import METHODS, Method
from bebrjax.trainers.upgrade.models import Frozen, build, build_adapter
from bebrjax.trainers.upgrade.step import make_forward_step, make_train_step


def claim_stage(workdir: str, record: dict) -> None:
    """Records a stage's config in workdir/stage.json, or checks the one there.

    Raises:
      ConfigError: when the directory holds a stage trained under another config.
    """
    record = json.loads(json.dumps(record))
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "stage.json")
    if not wd.exists_for_all(path):
        wd.write_json(path, record)
        return
    with open(path) as f:
        if json.load(f) != record:
            raise ConfigError(
                f"stage directory '{workdir}' holds a model trained with "
                "another config; use another directory"
            )


def common_record(config: ml_collections.ConfigDict, **parts) -> dict:
    """What every stage's result depends on, plus `parts`."""
    return {
        "data": config.data.to_dict(),
        "split": config.split.to_dict(),
        "optim": config.optim.to_dict(),
        "train": {k: config.train[k] for k in ("batch_size", "epochs", "steps")},
        "seed": config.seed,
        **parts,
    }


def stage_record(
    config: ml_collections.ConfigDict, stage: ml_collections.ConfigDict, method: str
) -> dict:
    """What a model stage trained with `method` depends on (its stage.json)."""
    sections = METHODS[method].sections
    extra = {name: config[name].to_dict() for name in sections if name != "compat"}
    compat_section = config.compat.to_dict() if "compat" in sections else None
    return common_record(
        config, method=method, stage=stage.to_dict(), compat=compat_section, **extra
    )


def run(
    config: ml_collections.ConfigDict,
    state: State,
    step_fn,
    arrays: dict[str, np.ndarray],
    workdir: str,
    steps: int,
    schedule,
    mesh,
    hook=None,
) -> State:
    """`train_loop` over random batches of `arrays` (rows drawn from (seed, step))."""
    n = len(next(iter(arrays.values())))

    def batch(step):
        rows = local_rows(batch_indices(n, config.train.batch_size, step, config.seed))
        return {k: v[rows] for k, v in arrays.items()}

    return train_loop(
        state,
        step_fn,
        batch,
        workdir=workdir,
        total=steps,
        schedule=schedule,
        mesh=mesh,
        **cadence(config.train),
        hook=hook,
    )


def refresh_hook(config, model, data: Labelled, old_emb, classifier, num_classes, mesh):
    """UniBCT: every compat.refresh_every steps, the classifier's rows become refined prototypes.

    The refined rows live in the state (aux.classifier), so they are
    checkpointed and a resumed run continues with the same ones.
    """
    c = config.compat

    def hook(step: int, state: State) -> State:
        if step % c.refresh_every:
            return state
        new_emb = apply_model(
            model, variables_of(state), data.x, mesh, config.eval.batch_size, "embedding"
        )
        protos, present = compat.refine_prototypes(
            old_emb,
            new_emb,
            data.y,
            num_classes,
            lam=c.unibct_lambda,
            temperature=c.unibct_temperature,
        )
        refined = np.where(present[:, None], protos, classifier).astype(np.float32)
        return {**state, "aux": {"classifier": jax.device_put(refined, sharding.replicated(mesh))}}

    return hook


def fit_stage(
    config: ml_collections.ConfigDict,
    stage: ml_collections.ConfigDict,
    data: Labelled,
    num_classes: int,
    workdir: str,
    mesh,
    frozen: Frozen | None = None,
) -> State:
    """Trains (or resumes, or reuses) one model: with `config.method` against `frozen`, or alone.

    For a method whose psi trains jointly (DMU) the state holds a
    `WithAdapter` (the model and psi).
    """
    name = config.method if frozen else "independent"
    method: Method = METHODS[name]
    claim_stage(workdir, stage_record(config, stage, name))
    model = build(stage, num_classes)
    if method.adapter == "joint":
        psi = build_adapter(config, stage.model.embedding_dim)
        model = WithAdapter(model, psi, old_dim=frozen.width)
    steps = total_steps(config.train, len(data))
    tx, schedule = make_optimizer(config.optim, steps)
    example = jnp.zeros((2, *data.x.shape[1:]), data.x.dtype)
    state = init_state(model, tx, example, config.seed, mesh)
    hook = None
    if method.old_classifier:
        old_emb = frozen.embed(data.x, mesh, config.eval.batch_size)
        classifier = compat.synthesize_classifier(frozen.weights, old_emb, data.y, frozen.seen)
        state["aux"] = {"classifier": jax.device_put(classifier, sharding.replicated(mesh))}
        if method.refresh:
            hook = refresh_hook(config, model, data, old_emb, classifier, num_classes, mesh)
    old = (frozen.model, frozen.variables) if frozen else (None, None)
    step_fn = make_train_step(model, tx, config, method, mesh, *old)
    arrays = {"x": data.x, "y": data.y}
    return run(config, state, step_fn, arrays, workdir, steps, schedule, mesh, hook)


def fit_forward(
    config: ml_collections.ConfigDict,
    old: Frozen,
    new: Frozen,
    data: Labelled,
    workdir: str,
    mesh,
) -> tuple[Adapter, dict]:
    """BiCT stage 2: psi from old to new space, both models frozen.

    psi learns from embeddings alone: phi_old(x) and phi_new(x) of the new
    training set are computed once, then psi is trained on them by the
    forward influence (the new classifier) plus forward.l2 x L2, for the
    same budget as a stage (`train.steps` or `train.epochs`).

    Returns:
      (psi, its variables).
    """
    claim_stage(workdir, common_record(config, stage="forward", forward=config.forward.to_dict()))
    adapter = build_adapter(config, new.width)
    steps = total_steps(config.train, len(data))
    tx, schedule = make_optimizer(config.optim, steps)
    state = init_state(adapter, tx, jnp.zeros((2, old.width), jnp.float32), config.seed, mesh)
    batch_size = config.eval.batch_size
    arrays = {
        "old": old.embed(data.x, mesh, batch_size),
        "new": new.embed(data.x, mesh, batch_size),
        "y": data.y,
    }
    step_fn = make_forward_step(adapter, tx, config, mesh, jnp.asarray(new.weights))
    state = run(config, state, step_fn, arrays, workdir, steps, schedule, mesh)
    return adapter, variables_of(state)


def train_new(
    config: ml_collections.ConfigDict,
    stage: ml_collections.ConfigDict,
    data: Labelled,
    num_classes: int,
    workdir: str,
    mesh,
    frozen: Frozen,
) -> tuple[Frozen, tuple[Adapter, dict] | None]:
    """The new model of `config.method` (in workdir/new) and its psi, if the method has one.

    psi trains jointly (DMU: split off the new model's variables) or in a
    stage of its own, workdir/forward (BiCT).

    Returns:
      (the new model, frozen, and (psi, its variables) or None).
    """
    seen = np.bincount(data.y, minlength=num_classes) > 0
    state = fit_stage(config, stage, data, num_classes, os.path.join(workdir, "new"), mesh, frozen)
    variables, adapter = variables_of(state), None
    adapter_kind = METHODS[config.method].adapter
    if adapter_kind == "joint":
        variables, psi_variables = split_variables(variables)
        adapter = (build_adapter(config, stage.model.embedding_dim), psi_variables)
    new = Frozen(stage, build(stage, num_classes), variables, seen)
    if adapter_kind == "forward":
        adapter = fit_forward(config, frozen, new, data, os.path.join(workdir, "forward"), mesh)
    return new, adapter
