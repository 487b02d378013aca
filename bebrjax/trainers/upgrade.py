"""Compatible model upgrades: an old model, a new one trained against it, the paragon.

The contract of a trainer module: `train_and_evaluate(config, workdir)`.

1. Load and validate the labelled data, draw the universal split
   (`split.kind`), validate the config and record it. Nothing is written
   before the data and config have passed.
2. Stage `old`: phi_old on the old training set with its classifier (cross
   entropy), in `<old_workdir or workdir/old>`; a finished stage is reused.
3. Stage `new` (workdir/new): phi_new on the new training set, cross entropy plus
   `compat.weight` x the compatibility loss of `method` against the frozen
   old model: `independent` (none), `l2`, `bct`, `contrastive`, `ract`,
   `unibct`.
4. Stage `paragon`: phi_new trained independently (the upper bound of
   new/new), in `<paragon_workdir or workdir/paragon>`; the new model itself
   when `method` is independent.
5. Evaluate the compatibility matrix on the held-out queries and gallery and
   write results.json, results.md and results.png (a heatmap).

Every stage is a jit'd step on the data-parallel mesh, checkpointed with
orbax and resumable, through the shared `train_loop`.
"""

from __future__ import annotations

import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bebrjax import report, sharding
from bebrjax import workdir as wd
from bebrjax.config import TRAIN_RULES, ConfigError, check_rules, parse_arg, to_dict
from bebrjax.data import get_data
from bebrjax.data.batching import batch_indices, steps_per_epoch
from bebrjax.data.labelled import Labelled
from bebrjax.data.upgrade_splits import universal_split
from bebrjax.evaluators.compatibility import compatibility_matrix
from bebrjax.losses import compat
from bebrjax.models.backbones import BACKBONES
from bebrjax.models.embedder import Model
from bebrjax.models.heads import CLASSIFIERS
from bebrjax.optim import make_optimizer, optim_config
from bebrjax.trainers.loop import (
    State,
    batched_apply,
    init_state,
    optimizer_step,
    train_config,
    train_loop,
    variables_of,
)

METHODS = ("independent", "l2", "bct", "contrastive", "ract", "unibct")


def default_config(
    *, method: str = "bct", split: str = "extended_class", steps: int = 0, devices: int = 0
) -> ml_collections.ConfigDict:
    """The upgrade recipe on the synthetic many-class data (the `data` section included).

    Args:
      method: the compatibility method of the new model.
      split: the universal split.
      steps: training steps of every stage; 0 means `train.epochs` epochs.
      devices: devices of the mesh; 0 means all.
    """
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.trainer = "upgrade"
    c.method = method
    c.data = dict(
        name="classes",
        num_classes=100,
        per_class=60,
        dim=64,
        latent_dim=12,
        spread=0.35,
        freq=1.5,
        noise=0.3,
        seed=0,
    )
    c.split = dict(kind=split, old_ratio=0.3, eval_fraction=0.2)
    model = dict(backbone="mlp", classifier="cosine", scale=16.0, margin=0.0, embedding_bn=True)
    c.old = dict(model=dict(model, backbone_args=dict(widths=(128,)), embedding_dim=32))
    c.new = dict(model=dict(model, backbone_args=dict(widths=(512, 512)), embedding_dim=64))
    c.compat = dict(
        weight=1.0,
        temperature=0.01,
        hard_negatives=0,
        unibct_lambda=0.9,
        unibct_temperature=0.05,
        refresh_every=50,
    )
    c.optim = optim_config(name="adamw", lr=2e-3, weight_decay=1e-4, schedule="cosine")
    c.train = train_config(batch_size=256, epochs=30.0, steps=steps)
    c.mesh = dict(num_devices=devices)
    c.eval = dict(ks=(1, 5, 10), fars=(1e-2, 1e-3), batch_size=1024)
    c.old_workdir = ""
    c.paragon_workdir = ""
    return c


def use_resnets(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Small CIFAR-style ResNets for image data: old (1, 1) x 8 wide, new (2, 2) x 16."""
    config.old.model.backbone = "resnet"
    config.old.model.backbone_args = ml_collections.ConfigDict(dict(stage_sizes=(1, 1), width=8))
    config.new.model.backbone = "resnet"
    config.new.model.backbone_args = ml_collections.ConfigDict(dict(stage_sizes=(2, 2), width=16))
    config.train.batch_size = 128
    return config


def configure_data(
    config: ml_collections.ConfigDict, name: str, path: str = ""
) -> ml_collections.ConfigDict:
    """Switches the data set.

    "classes" is the synthetic default; "digits" scikit-learn's 8x8 images,
    with small ResNets; "labelled" a user's .npz of `x` and `y` at `path`
    (with the MLP backbones; pass `backbone=resnet` for images).
    """
    if name == "classes":
        return config
    if name == "labelled":
        config.data = dict(name="labelled", path=path, x_key="x", y_key="y")
        return config
    if name != "digits":
        raise ConfigError(
            f"config argument 'data' = {name!r}: expected 'classes', 'digits' or 'labelled'"
        )
    config.data = dict(name="digits")
    return use_resnets(config)


def config_from_arg(method: str, arg: str | None) -> ml_collections.ConfigDict:
    """The config of `configs/upgrade/<method>.py` for its `:arg` text.

    Each config trains the old model (unless its directory holds it), the new
    model with `method`'s compatibility loss and the paragon, then prints the
    compatibility matrix. Arguments after ':' (e.g. `split=open_class,steps=300`):
      split: extended_data, extended_class (default), open_data or open_class.
      data: classes (the synthetic default), digits (scikit-learn's images) or
        labelled (your .npz of `x` [N, d] or uint8 [N, H, W, C] and int `y` [N]).
      path: the .npz file, with data=labelled.
      backbone: "mlp" or "resnet" (for images); default: the data set's own.
      steps: training steps of every stage (default 0 = `train.epochs` epochs).
      devices: devices of the mesh (default 0 = all).
    """
    parsed = parse_arg(
        arg, split="extended_class", data="classes", path="", backbone="", steps=0, devices=0
    )
    config = default_config(
        method=method, split=parsed.split, steps=parsed.steps, devices=parsed.devices
    )
    config = configure_data(config, parsed.data, parsed.path)
    if parsed.backbone == "resnet":
        use_resnets(config)
    elif parsed.backbone not in ("", "mlp"):
        raise ConfigError(
            f"config argument 'backbone' = {parsed.backbone!r}: expected 'mlp' or 'resnet'"
        )
    return config


_RULES = (
    ("method", lambda v: v in METHODS, f"one of {', '.join(METHODS)}"),
    *(
        rule
        for stage in ("old", "new")
        for rule in (
            (f"{stage}.model.backbone", lambda v: v in BACKBONES, f"one of {', '.join(BACKBONES)}"),
            (
                f"{stage}.model.classifier",
                lambda v: v in CLASSIFIERS,
                f"one of {', '.join(CLASSIFIERS)}",
            ),
            (f"{stage}.model.embedding_dim", lambda v: v > 0, "> 0"),
            (f"{stage}.model.scale", lambda v: v > 0, "> 0"),
        )
    ),
    ("compat.weight", lambda v: v >= 0, ">= 0"),
    ("compat.temperature", lambda v: v > 0, "> 0"),
    ("compat.hard_negatives", lambda v: v >= 0, ">= 0 (0: all)"),
    ("compat.unibct_lambda", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("compat.unibct_temperature", lambda v: v > 0, "> 0"),
    ("compat.refresh_every", lambda v: v > 0, "> 0"),
    ("eval.fars", lambda v: len(v) > 0 and all(0 < f < 1 for f in v), "rates in (0, 1)"),
)


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first unusable key."""
    check_rules(config, (*TRAIN_RULES, *_RULES))
    make_optimizer(config.optim, 10)


def build(stage: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """The embedding model of a stage's config."""
    return Model(num_classes=num_classes, **stage.model.to_dict())


def embed(model: nn.Module, variables: dict, x: np.ndarray, mesh, batch_size: int) -> np.ndarray:
    """Eval-mode embeddings of `x`, batch by batch on the mesh."""
    return batched_apply(
        lambda v, xb: model.apply(v, xb, train=False)["embedding"], variables, x, mesh, batch_size
    )


class Frozen:
    """What a new model trains against: the old model, its classifier, the seen classes."""

    def __init__(self, model: nn.Module, state: State, seen: np.ndarray, kind: str, scale: float):
        self.model, self.variables = model, variables_of(state)
        self.seen, self.kind, self.scale = seen, kind, scale

    def embed(self, x: np.ndarray, mesh, batch_size: int) -> np.ndarray:
        """Old-model embeddings of `x`."""
        return embed(self.model, self.variables, x, mesh, batch_size)

    @property
    def weights(self) -> np.ndarray:
        """The old classifier [C, d_old]."""
        return np.asarray(self.variables["params"]["classifier"]["weights"])


def make_train_step(
    model: nn.Module, tx, method: str, c: ml_collections.ConfigDict, mesh, frozen: Frozen | None
):
    """The jit'd step: cross entropy plus c.weight x `method`'s compatibility term."""

    def step(state: State, batch: dict[str, jax.Array]):
        x, y = batch["x"], batch["y"]
        old_emb = None
        if method in ("l2", "contrastive", "ract"):
            old_emb = frozen.model.apply(frozen.variables, x, train=False)["embedding"]

        def loss_fn(params):
            out, updates = model.apply(
                {"params": params, "batch_stats": state["batch_stats"]},
                x,
                train=True,
                labels=y,
                mutable=["batch_stats"],
            )
            ce = compat.cross_entropy(out["logits"], y)
            emb = out["embedding"]
            if method == "l2":
                term = compat.l2_loss(emb, old_emb)
            elif method in ("contrastive", "ract"):
                term = compat.contrastive_loss(
                    emb,
                    old_emb,
                    y,
                    temperature=c.temperature,
                    hard_negatives=c.hard_negatives,
                    ract=method == "ract",
                )
            elif method in ("bct", "unibct"):
                kind = "cosine" if method == "unibct" else frozen.kind
                term = compat.influence_loss(
                    emb, y, state["aux"]["classifier"], kind=kind, scale=frozen.scale
                )
            else:
                term = jnp.zeros(())
            return ce + c.weight * term, ({"ce": ce, "compat": term}, updates["batch_stats"])

        return optimizer_step(state, tx, loss_fn)

    rep, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    return jax.jit(step, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=0)


def fit_stage(
    config: ml_collections.ConfigDict,
    stage: ml_collections.ConfigDict,
    data: Labelled,
    num_classes: int,
    workdir: str,
    mesh,
    frozen: Frozen | None = None,
) -> State:
    """Trains (or resumes, or reuses) one model; `config.method` picks the compat term.

    A stage directory records its own config in stage.json and refuses to be
    reused by a run whose stage config differs.
    """
    method = config.method if frozen else "independent"
    record = {
        "method": method,
        "stage": stage.to_dict(),
        "data": config.data.to_dict(),
        "split": config.split.to_dict(),
        "optim": config.optim.to_dict(),
        "train": {k: config.train[k] for k in ("batch_size", "epochs", "steps")},
        "compat": config.compat.to_dict() if frozen else None,
        "seed": config.seed,
    }
    record = json.loads(json.dumps(record))
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "stage.json")
    if os.path.exists(path):
        with open(path) as f:
            if json.load(f) != record:
                raise ConfigError(
                    f"stage directory '{workdir}' holds a model trained with "
                    "another config; use another directory"
                )
    else:
        wd.write_json(path, record)

    model = build(stage, num_classes)
    steps = config.train.steps or max(
        1, int(round(config.train.epochs * steps_per_epoch(len(data), config.train.batch_size)))
    )
    tx, schedule = make_optimizer(config.optim, steps)

    example = jnp.zeros((2, *data.x.shape[1:]), data.x.dtype)
    state = init_state(model, tx, example, config.seed, mesh)
    hook = None
    if method in ("bct", "unibct"):
        old_emb = frozen.embed(data.x, mesh, config.eval.batch_size)
        classifier = compat.synthesize_classifier(frozen.weights, old_emb, data.y, frozen.seen)
        state["aux"] = {"classifier": jax.device_put(classifier, sharding.replicated(mesh))}
        if method == "unibct":

            def hook(step, state):
                if step % config.compat.refresh_every:
                    return state
                new_emb = embed(model, variables_of(state), data.x, mesh, config.eval.batch_size)
                protos, present = compat.refine_prototypes(
                    old_emb,
                    new_emb,
                    data.y,
                    num_classes,
                    lam=config.compat.unibct_lambda,
                    temperature=config.compat.unibct_temperature,
                )
                refined = np.where(present[:, None], protos, classifier)
                return {
                    **state,
                    "aux": {
                        "classifier": jax.device_put(
                            refined.astype(np.float32), sharding.replicated(mesh)
                        )
                    },
                }

    return train_loop(
        state,
        make_train_step(model, tx, method, config.compat, mesh, frozen),
        lambda step: _batch(data, config, step),
        workdir=workdir,
        total=steps,
        schedule=schedule,
        mesh=mesh,
        log_every=config.train.log_every,
        checkpoint_every=config.train.checkpoint_every,
        keep_checkpoints=config.train.keep_checkpoints,
        hook=hook,
    )


def _batch(data: Labelled, config: ml_collections.ConfigDict, step: int) -> dict[str, np.ndarray]:
    rows = batch_indices(len(data), config.train.batch_size, step, config.seed)
    return {"x": data.x[rows], "y": data.y[rows]}


def evaluate(
    config, models: dict[str, tuple[nn.Module, State]], data: Labelled, split, mesh
) -> dict:
    """The compatibility matrix of the old, new and paragon models on the held-out split."""
    queries, gallery = data.subset(split.query), data.subset(split.gallery)
    embeddings = {
        name: tuple(
            embed(model, variables_of(state), part.x, mesh, config.eval.batch_size)
            for part in (queries, gallery)
        )
        for name, (model, state) in models.items()
    }
    return compatibility_matrix(
        embeddings,
        queries.y,
        gallery.y,
        ks=tuple(config.eval.ks),
        fars=tuple(config.eval.fars),
        mesh=mesh,
    )


def load_labelled(config: ml_collections.ConfigDict):
    """The labelled data of `config.data` and its universal split, validated.

    Raises:
      DataError: on bad data or a split that leaves a part empty.
      ConfigError: when the data set named is not labelled data.
    """
    data = get_data(config.data)
    if not isinstance(data, Labelled):
        raise ConfigError(
            f"data.name={config.data.name!r} gives {type(data).__name__}; "
            "upgrades train on labelled data"
        )
    split = universal_split(
        data.y,
        config.split.kind,
        old_ratio=config.split.old_ratio,
        eval_fraction=config.split.eval_fraction,
        seed=config.seed,
    )
    return data, split


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains the old model (unless present), the new one and the paragon, then evaluates.

    Raises:
      DataError: on bad input data; ConfigError: on a bad config or a workdir
        holding another run. Both before anything is written.
    """
    data, split = load_labelled(config)
    validate(config)
    mesh = sharding.make_mesh(config.mesh.num_devices)
    sharding.check_batch_size(config.train.batch_size, mesh)
    for part in ("old", "new"):
        steps_per_epoch(len(getattr(split, part)), config.train.batch_size)
    wd.prepare(workdir, to_dict(config))

    classes = data.num_classes
    old_data, new_data = data.subset(split.old), data.subset(split.new)
    seconds, clock = {}, time.perf_counter()

    def lap(name):
        nonlocal clock
        now = time.perf_counter()
        seconds[name], clock = round(now - clock, 1), now

    old_model = build(config.old, classes)
    old_state = fit_stage(
        config,
        config.old,
        old_data,
        classes,
        config.old_workdir or os.path.join(workdir, "old"),
        mesh,
    )
    lap("old")
    seen = np.bincount(old_data.y, minlength=classes) > 0
    frozen = Frozen(old_model, old_state, seen, config.old.model.classifier, config.old.model.scale)
    new_model = build(config.new, classes)
    new_state = fit_stage(
        config, config.new, new_data, classes, os.path.join(workdir, "new"), mesh, frozen
    )
    lap("new")
    if config.method == "independent":
        paragon_state = new_state
    else:
        paragon_state = fit_stage(
            config,
            config.new,
            new_data,
            classes,
            config.paragon_workdir or os.path.join(workdir, "paragon"),
            mesh,
        )
    lap("paragon")
    models = {
        "old": (old_model, old_state),
        "new": (new_model, new_state),
        "paragon": (new_model, paragon_state),
    }
    results = evaluate(config, models, data, split, mesh)
    lap("evaluation")
    results["method"] = config.method
    results["seconds"] = seconds
    results["split"] = {"kind": split.kind, **split.accounting(data.y)}
    wd.write_json(os.path.join(workdir, "results.json"), results)
    wd.write_atomic(os.path.join(workdir, "results.md"), report.matrix_table(results) + "\n")
    report.plot_matrix(os.path.join(workdir, "results.png"), results)
    return results
