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
   `unibct`, `dmu`, `bict` (stage 1 of BiCT is BCT at lambda_bc = compat.weight).
   `dmu` trains the forward adapter psi in the same steps (`train_new`).
4. Stage `forward` (workdir/forward, `bict` only): psi on the new training
   set's embeddings, both models frozen (`fit_forward`).
5. Stage `paragon`: phi_new trained independently (the upper bound of
   new/new), in `<paragon_workdir or workdir/paragon>`; the new model itself
   when `method` is independent.
6. Evaluate the compatibility matrix on the held-out queries and gallery
   (with new->psi(old), the upgraded gallery, for dmu and bict) and write
   results.json, results.md and results.png (a heatmap).

DMU and BiCT are public only as abstracts; what they do here is our
reading (see `compat.discriminativeness`, `compat.darwinian_weights`,
`compat.forward_loss` and the README's "Our reading" section):
  * DMU: the per-sample compatibility loss (`dmu.loss`: influence or
    contrastive) weighted by w = d / mean(d), d the old feature's
    discriminativeness (`dmu.measure`); psi trained jointly, through the new
    classifier (stop-gradient, so only psi learns from it; the one optimizer's
    global-norm clip still couples the step sizes), weighted towards poor old
    features (`dmu.forward_emphasis`), at weight `dmu.forward_weight`.
  * BiCT: psi trained after the new model, on embeddings only (no raw data is
    needed once phi_old(x) and phi_new(x) are stored), by the forward
    influence plus `forward.l2` x L2.

Every stage is a jit'd step on the data-parallel mesh, checkpointed with
orbax and resumable, through the shared `train_loop`.
"""

from __future__ import annotations

import functools
import json
import os

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
from bebrjax.models.adapter import Adapter, WithAdapter, split_variables, upgrade_gallery
from bebrjax.models.backbones import BACKBONES
from bebrjax.models.embedder import Model
from bebrjax.models.heads import CLASSIFIERS
from bebrjax.optim import make_optimizer, optim_config
from bebrjax.trainers.loop import (
    Laps,
    State,
    cadence,
    init_state,
    jit_train_step,
    optimizer_step,
    train_config,
    train_loop,
    variables_of,
)

METHODS = ("independent", "l2", "bct", "contrastive", "ract", "unibct", "dmu", "bict")
# Methods whose new model learns through the old classifier (with synthesized rows).
INFLUENCE = ("bct", "unibct", "bict", "dmu")


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
    c.dmu = dict(measure="margin", loss="influence", forward_weight=1.0, forward_emphasis=0.5)
    c.forward = dict(hidden=0, depth=1, blocks=1, l2=1.0)
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
    ("dmu.measure", lambda v: v in compat.MEASURES, f"one of {', '.join(compat.MEASURES)}"),
    ("dmu.loss", lambda v: v in ("influence", "contrastive"), "'influence' or 'contrastive'"),
    ("dmu.forward_weight", lambda v: v >= 0, ">= 0"),
    ("dmu.forward_emphasis", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("forward.hidden", lambda v: v >= 0, ">= 0 (0: twice the wider embedding)"),
    ("forward.depth", lambda v: v >= 0, ">= 0"),
    ("forward.blocks", lambda v: v >= 1, ">= 1"),
    ("forward.l2", lambda v: v >= 0, ">= 0"),
    ("eval.fars", lambda v: len(v) > 0 and all(0 < f < 1 for f in v), "rates in (0, 1)"),
)


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first unusable key."""
    check_rules(config, (*TRAIN_RULES, *_RULES))
    make_optimizer(config.optim, 10)


def build(stage: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """The embedding model of a stage's config."""
    return Model(num_classes=num_classes, **stage.model.to_dict())


def build_adapter(config: ml_collections.ConfigDict, width: int) -> Adapter:
    """The adapter psi to the new embedding width, shaped by `config.forward`."""
    f = config.forward
    return Adapter(width, hidden=f.hidden, depth=f.depth, blocks=f.blocks)


def embed(model: nn.Module, variables: dict, x: np.ndarray, mesh, batch_size: int) -> np.ndarray:
    """Eval-mode embeddings of `x`, batch by batch on the mesh."""
    return sharding.batched_apply(
        lambda v, xb: model.apply(v, xb, train=False)["embedding"], variables, x, mesh, batch_size
    )


class Frozen:
    """A trained model another trains against: its variables, classifier and seen classes."""

    def __init__(
        self,
        stage: ml_collections.ConfigDict,
        model: nn.Module,
        variables: dict,
        seen: np.ndarray | None = None,
    ):
        self.model, self.variables, self.seen = model, variables, seen
        self.kind, self.scale = stage.model.classifier, stage.model.scale
        self.width = stage.model.embedding_dim

    def embed(self, x: np.ndarray, mesh, batch_size: int) -> np.ndarray:
        """The model's embeddings of `x`."""
        return embed(self.model, self.variables, x, mesh, batch_size)

    @property
    def weights(self) -> np.ndarray:
        """The classifier [C, d]."""
        return np.asarray(self.variables["params"]["classifier"]["weights"])


def backward_loss(config: ml_collections.ConfigDict, method: str) -> str:
    """The compatibility loss of `method` (DMU weighs BCT's or the contrastive one).

    BiCT's first stage is BCT.
    """
    if method == "dmu":
        return "bct" if config.dmu.loss == "influence" else "contrastive"
    return "bct" if method == "bict" else method


def compat_term(
    loss: str,
    new: jax.Array,
    old: jax.Array | None,
    labels: jax.Array,
    classifier: jax.Array | None,
    frozen: Frozen | None,
    c: ml_collections.ConfigDict,
    weights: jax.Array | None = None,
) -> jax.Array:
    """The compatibility loss `loss` of new embeddings against the frozen model."""
    if loss == "l2":
        return compat.l2_loss(new, old, weights)
    if loss in ("contrastive", "ract"):
        return compat.contrastive_loss(
            new,
            old,
            labels,
            temperature=c.temperature,
            hard_negatives=c.hard_negatives,
            ract=loss == "ract",
            weights=weights,
        )
    if loss in ("bct", "unibct"):
        kind = "cosine" if loss == "unibct" else frozen.kind
        return compat.influence_loss(
            new, labels, classifier, kind=kind, scale=frozen.scale, weights=weights
        )
    return jnp.zeros(())


def make_train_step(
    model: nn.Module,
    tx,
    config: ml_collections.ConfigDict,
    method: str,
    mesh,
    frozen: Frozen | None,
):
    """The jit'd step: cross entropy plus compat.weight x `method`'s compatibility term.

    For `dmu` the term is weighted per sample by DMU's backward weights and
    `model` is a `WithAdapter`, whose psi learns the forward loss (weighted
    by the forward weights) at dmu.forward_weight.
    """
    loss = backward_loss(config, method)

    def step(state: State, batch: dict[str, jax.Array]):
        x, y = batch["x"], batch["y"]
        old_emb, extra, logged, weights = None, {}, {}, (None, None)
        if loss in ("l2", "contrastive", "ract") or method == "dmu":
            old_emb = frozen.model.apply(frozen.variables, x, train=False)["embedding"]
        if method == "dmu":
            score = compat.discriminativeness(
                old_emb,
                y,
                state["aux"]["classifier"],
                measure=config.dmu.measure,
                kind=frozen.kind,
                scale=frozen.scale,
            )
            weights = compat.darwinian_weights(score, config.dmu.forward_emphasis)
            extra, logged = {"old": old_emb}, {"discriminativeness": jnp.mean(score)}

        def loss_fn(params):
            out, updates = model.apply(
                {"params": params, "batch_stats": state["batch_stats"]},
                x,
                train=True,
                labels=y,
                mutable=["batch_stats"],
                **extra,
            )
            terms = {
                "ce": compat.cross_entropy(out["logits"], y),
                "compat": compat_term(
                    loss,
                    out["embedding"],
                    old_emb,
                    y,
                    state.get("aux", {}).get("classifier"),
                    frozen,
                    config.compat,
                    weights[0],
                ),
            }
            total = terms["ce"] + config.compat.weight * terms["compat"]
            if method == "dmu":
                terms["forward"] = compat.forward_loss(
                    out["adapted"],
                    out["embedding"],
                    y,
                    params["model"]["classifier"]["weights"],
                    kind=model.model.classifier,
                    scale=model.model.scale,
                    l2=config.forward.l2,
                    weights=weights[1],
                )
                total = total + config.dmu.forward_weight * terms["forward"]
            return total, ({**terms, **logged}, updates["batch_stats"])

        return optimizer_step(state, tx, loss_fn)

    return jit_train_step(step, mesh)


def claim_stage(workdir: str, record: dict) -> None:
    """Records a stage's config in workdir/stage.json, or checks the one there.

    Raises:
      ConfigError: when the directory holds a stage trained under another config.
    """
    record = json.loads(json.dumps(record))
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "stage.json")
    if not os.path.exists(path):
        wd.write_json(path, record)
        return
    with open(path) as f:
        if json.load(f) != record:
            raise ConfigError(
                f"stage directory '{workdir}' holds a model trained with "
                "another config; use another directory"
            )


def _stage_record(config: ml_collections.ConfigDict, **parts) -> dict:
    """What a stage's result depends on, besides `parts`."""
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
    extra = {}
    if method == "dmu":
        extra = {"dmu": config.dmu.to_dict(), "forward": config.forward.to_dict()}
    compat_section = None if method == "independent" else config.compat.to_dict()
    return _stage_record(
        config, method=method, stage=stage.to_dict(), compat=compat_section, **extra
    )


def check_model(
    stage: ml_collections.ConfigDict, num_classes: int, example: np.ndarray, key: str
) -> None:
    """Builds a stage's model abstractly on an example batch.

    Raises:
      ConfigError: naming `key` when the model cannot be built (e.g. backbone
        arguments the backbone does not take).
    """
    try:
        jax.eval_shape(
            functools.partial(build(stage, num_classes).init, train=False),
            jax.random.key(0),
            jnp.zeros((2, *example.shape[1:]), example.dtype),
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key '{key}': the model cannot be built: {e}") from None


def _total_steps(config: ml_collections.ConfigDict, examples: int) -> int:
    return config.train.steps or max(
        1, int(round(config.train.epochs * steps_per_epoch(examples, config.train.batch_size)))
    )


def _loop(
    config, state, step_fn, arrays: dict[str, np.ndarray], workdir, steps, schedule, mesh, hook=None
):
    """Runs `train_loop` over random batches of `arrays` (rows drawn from (seed, step))."""
    n = len(next(iter(arrays.values())))

    def batch(step):
        rows = batch_indices(n, config.train.batch_size, step, config.seed)
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

    For `dmu` the state holds a `WithAdapter` (the model and psi). A stage
    directory records its own config in stage.json and refuses to be reused
    by a run whose stage config differs.
    """
    method = config.method if frozen else "independent"
    dmu = method == "dmu"
    claim_stage(workdir, stage_record(config, stage, method))
    model = build(stage, num_classes)
    if dmu:
        model = WithAdapter(
            model, build_adapter(config, stage.model.embedding_dim), old_dim=frozen.width
        )
    steps = _total_steps(config, len(data))
    tx, schedule = make_optimizer(config.optim, steps)

    example = jnp.zeros((2, *data.x.shape[1:]), data.x.dtype)
    state = init_state(model, tx, example, config.seed, mesh)
    hook = None
    if method in INFLUENCE:
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

    step_fn = make_train_step(model, tx, config, method, mesh, frozen)
    arrays = {"x": data.x, "y": data.y}
    return _loop(config, state, step_fn, arrays, workdir, steps, schedule, mesh, hook)


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
    claim_stage(workdir, _stage_record(config, stage="forward", forward=config.forward.to_dict()))
    adapter = build_adapter(config, new.width)
    steps = _total_steps(config, len(data))
    tx, schedule = make_optimizer(config.optim, steps)
    state = init_state(adapter, tx, jnp.zeros((2, old.width), jnp.float32), config.seed, mesh)
    batch_size = config.eval.batch_size
    arrays = {
        "old": old.embed(data.x, mesh, batch_size),
        "new": new.embed(data.x, mesh, batch_size),
        "y": data.y,
    }
    classifier = jnp.asarray(new.weights)

    def step(state: State, batch: dict[str, jax.Array]):
        def loss_fn(params):
            adapted, updates = adapter.apply(
                {"params": params, "batch_stats": state["batch_stats"]},
                batch["old"],
                train=True,
                mutable=["batch_stats"],
            )
            loss = compat.forward_loss(
                adapted,
                batch["new"],
                batch["y"],
                classifier,
                kind=new.kind,
                scale=new.scale,
                l2=config.forward.l2,
            )
            return loss, ({"forward": loss}, updates["batch_stats"])

        return optimizer_step(state, tx, loss_fn)

    state = _loop(config, state, jit_train_step(step, mesh), arrays, workdir, steps, schedule, mesh)
    return adapter, variables_of(state)


def train_new(
    config: ml_collections.ConfigDict,
    stage: ml_collections.ConfigDict,
    data: Labelled,
    num_classes: int,
    workdir: str,
    mesh,
    frozen: Frozen,
) -> tuple[nn.Module, dict, tuple[Adapter, dict] | None]:
    """The new model of `config.method` (in workdir/new) and, for dmu and bict, psi.

    Returns:
      (the new model, its variables, (psi, its variables) or None).
    """
    model = build(stage, num_classes)
    variables = variables_of(
        fit_stage(config, stage, data, num_classes, os.path.join(workdir, "new"), mesh, frozen)
    )
    adapter = None
    if config.method == "dmu":
        variables, adapter_variables = split_variables(variables)
        adapter = (build_adapter(config, stage.model.embedding_dim), adapter_variables)
    elif config.method == "bict":
        new = Frozen(stage, model, variables)
        adapter = fit_forward(config, frozen, new, data, os.path.join(workdir, "forward"), mesh)
    return model, variables, adapter


def evaluate(
    config,
    models: dict[str, tuple[nn.Module, dict]],
    data: Labelled,
    split,
    mesh,
    adapter: tuple[Adapter, dict] | None = None,
) -> dict:
    """The compatibility matrix of the old, new and paragon models on the held-out split.

    With `adapter` (psi and its variables) the old gallery is also upgraded
    to psi(old) and searched by the new queries.
    """
    queries, gallery = data.subset(split.query), data.subset(split.gallery)
    batch_size = config.eval.batch_size
    embeddings = {
        name: tuple(
            embed(model, variables, part.x, mesh, batch_size) for part in (queries, gallery)
        )
        for name, (model, variables) in models.items()
    }
    if adapter is not None:
        upgraded = upgrade_gallery(*adapter, embeddings["old"][1], mesh, batch_size)
        embeddings["adapted"] = (None, upgraded)
    return compatibility_matrix(
        embeddings,
        queries.y,
        gallery.y,
        ks=tuple(config.eval.ks),
        fars=tuple(config.eval.fars),
        mesh=mesh,
    )


def labelled_data(config: ml_collections.ConfigDict) -> Labelled:
    """The labelled data of `config.data`, validated.

    Raises:
      DataError: on bad data.
      ConfigError: when the data set named is not labelled data.
    """
    data = get_data(config.data)
    if not isinstance(data, Labelled):
        raise ConfigError(
            f"data.name={config.data.name!r} gives {type(data).__name__}; "
            "upgrades train on labelled data"
        )
    return data


def load_labelled(config: ml_collections.ConfigDict):
    """The labelled data of `config.data` and its universal split, validated.

    Raises:
      DataError: on bad data or a split that leaves a part empty.
      ConfigError: when the data set named is not labelled data.
    """
    data = labelled_data(config)
    split = universal_split(
        data.y,
        config.split.kind,
        old_ratio=config.split.old_ratio,
        eval_fraction=config.split.eval_fraction,
        seed=config.seed,
    )
    return data, split


def preflight(config: ml_collections.ConfigDict):
    """Everything checked before a run writes anything; returns (data, split, mesh).

    Raises:
      DataError: on bad input data; ConfigError: on a bad config.
    """
    data, split = load_labelled(config)
    validate(config)
    mesh = sharding.make_mesh(config.mesh.num_devices)
    sharding.check_batch_size(config.train.batch_size, mesh)
    for part in ("old", "new"):
        steps_per_epoch(len(getattr(split, part)), config.train.batch_size)
        check_model(config[part], data.num_classes, data.x[:1], f"{part}.model")
    return data, split, mesh


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains the old model (unless present), the new one and the paragon, then evaluates.

    Raises:
      DataError: on bad input data; ConfigError: on a bad config or a workdir
        holding another run. Both before anything is written.
    """
    data, split, mesh = preflight(config)
    wd.prepare(workdir, to_dict(config))

    classes = data.num_classes
    old_data, new_data = data.subset(split.old), data.subset(split.new)
    lap = Laps()
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
    frozen = Frozen(config.old, old_model, variables_of(old_state), seen)
    new_model, new_variables, adapter = train_new(
        config, config.new, new_data, classes, workdir, mesh, frozen
    )
    lap("new")
    if config.method == "independent":
        paragon_variables = new_variables
    else:
        paragon_variables = variables_of(
            fit_stage(
                config,
                config.new,
                new_data,
                classes,
                config.paragon_workdir or os.path.join(workdir, "paragon"),
                mesh,
            )
        )
    lap("paragon")
    models = {
        "old": (old_model, frozen.variables),
        "new": (new_model, new_variables),
        "paragon": (new_model, paragon_variables),
    }
    results = evaluate(config, models, data, split, mesh, adapter)
    lap("evaluation")
    results["method"] = config.method
    results["seconds"] = lap.seconds
    results["split"] = {"kind": split.kind, **split.accounting(data.y)}
    wd.write_json(os.path.join(workdir, "results.json"), results)
    wd.write_atomic(os.path.join(workdir, "results.md"), report.matrix_table(results) + "\n")
    report.plot_matrix(os.path.join(workdir, "results.png"), results)
    return results
