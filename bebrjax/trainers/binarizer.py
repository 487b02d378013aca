"""Trains BEBR's recurrent binarizer embedding-to-embedding, then evaluates retrieval.

The contract of a trainer module: `train_and_evaluate(config, workdir)`.

1. Load and validate the data, split it, resolve the config (code width,
   step count) and record it in the workdir. Nothing is written before the
   data has passed validation.
2. Build the model and the optimizer, create the train state already
   replicated on the mesh, and resume from the latest orbax checkpoint.
3. Run the jit'd train step over deterministic batches sharded on `data`,
   logging to metrics.jsonl and a progress bar, checkpointing on schedule.
4. Encode the eval split and write results.json / results.md / results.png:
   raw float, binary codes, a same-bits random hash and, on request, a
   same-bits sign MLP trained with the same loss (the trained hash) and the
   same model trained without the sign (the fine-tuned float baseline).
"""

from __future__ import annotations

import copy
import functools
import os
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from bebrjax import report, sharding
from bebrjax import workdir as wd
from bebrjax.config import TRAIN_RULES, check_ks, check_rules, import_plugin, to_dict
from bebrjax.data import PairedEmbeddings, get_data
from bebrjax.data.batching import batch_indices, steps_per_epoch, total_steps
from bebrjax.data.splits import train_eval_split
from bebrjax.distributed import local_rows
from bebrjax.errors import ConfigError
from bebrjax.evaluators import retrieval
from bebrjax.optim import OPTIM_FIELDS, make_optimizer
from bebrjax.search import codes as codes_lib
from bebrjax.search import scoring
from bebrjax.trainers.baselines import BASELINES, float_baseline_config, trained_hash_config
from bebrjax.trainers.binarizer_step import CrossTerm, make_batch, make_train_step
from bebrjax.trainers.loop import (
    TRAIN_FIELDS,
    State,
    cadence,
    init_state,
    train_loop,
    variables_of,
)

# The keys of a binarizer config and their types (`config.check_fields`); the
# recipe, every value, is the config file's (configs/bebr/*.py). `data` is the
# data plug-in's (`bebrjax.data.get_data`).
FIELDS = dict(
    seed=int,
    trainer=str,
    data=dict,
    split=dict(eval_fraction=float, eval_indices=str),
    model_name=str,
    model=dict(
        code_dim=int, loops=int, hidden=int, depth=int, binarize=bool, skip=bool, center=bool
    ),
    loss=dict(
        pair_weight=float,
        temperature=float,
        hard_negatives=int,
        mask_same_label=bool,
        mask_same_group=bool,
        distill_weight=float,
        teacher_temperature=float,
        student_temperature=float,
        budgets=bool,
        asymmetric=bool,
    ),
    query_bits=int,
    optim=OPTIM_FIELDS,
    train=TRAIN_FIELDS,
    mesh=dict(num_devices=int),
    hash_model=dict(hidden=int, depth=int),
    eval=dict(
        ks=tuple, hash=bool, trained_hash=bool, float_baseline=bool, batch_size=int, kernel=str
    ),
)


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
    """The `Model` of module `bebrjax.models.<config.model_name>`, built from `config.model`."""
    return import_plugin("bebrjax.models", config.model_name, "model_name").Model(**config.model)


def fit(
    config: ml_collections.ConfigDict,
    data: PairedEmbeddings,
    workdir: str,
    mesh,
    *,
    stop_after_steps: int | None = None,
    extra: dict[str, np.ndarray] | None = None,
    cross: CrossTerm | None = None,
) -> State | None:
    """Trains (or resumes) the model of `config` on `data`, checkpointing to `workdir`.

    Args:
      config: the resolved config (`train.steps` set).
      data: the training pairs.
      workdir: where checkpoints/ and metrics.jsonl go.
      mesh: the device mesh.
      stop_after_steps: run at most this many steps in this call, then save
        and return None, as a preempted job would; the schedule still spans
        `train.steps`, and the next call resumes.
      extra: more per-pair arrays [N, ...] batched beside the pairs.
      cross: an extra loss term over the batch (see `make_train_step`).

    Returns:
      The final train state, or None when stopped before the end.
    """
    model = build_model(config)
    tx, schedule = make_optimizer(config.optim, config.train.steps)
    state = init_state(model, tx, jnp.zeros((2, data.dim), jnp.float32), config.seed, mesh)
    extra = extra or {}

    def batch(step):
        rows = local_rows(batch_indices(len(data), config.train.batch_size, step, config.seed))
        return {**make_batch(data, rows), **{k: v[rows] for k, v in extra.items()}}

    return train_loop(
        state,
        make_train_step(model, tx, config.loss, mesh, cross),
        batch,
        workdir=workdir,
        total=config.train.steps,
        schedule=schedule,
        mesh=mesh,
        **cadence(config.train),
        stop_after_steps=stop_after_steps,
    )


def encode(model: nn.Module, state: State, x: np.ndarray, mesh, batch_size: int):
    """The model's output for `x` (codes and bit planes), in eval mode, batch by batch.

    Returns:
      A `BinarizerOutput` of numpy arrays: code [N, m] and planes [N, u+1, m]
      (None for the float baseline).
    """
    return sharding.apply_model(model, variables_of(state), x, mesh, batch_size)


def resolve(config: ml_collections.ConfigDict, data: PairedEmbeddings) -> ml_collections.ConfigDict:
    """A copy of `config` with the values that depend on the data filled in.

    `model.code_dim = 0` becomes the embedding width d; `train.steps = 0`
    becomes `train.epochs` epochs of full batches.
    """
    config = copy.deepcopy(config)
    with config.unlocked():
        if not config.model.code_dim:
            config.model.code_dim = data.dim
        config.train.steps = total_steps(config.train, len(data))
    return config


_RULES = (
    ("model.code_dim", lambda v: 0 < v <= 65535, "in [1, 65535] (the search index's range)"),
    ("model.loops", lambda v: 0 <= v <= 3, "in [0, 3] (bits per dimension 1..4)"),
    ("model.hidden", lambda v: v >= 0, ">= 0 (0: max(d, m))"),
    ("model.depth", lambda v: v >= 0, ">= 0"),
    ("loss.pair_weight", lambda v: v >= 0, ">= 0"),
    ("loss.distill_weight", lambda v: v >= 0, ">= 0"),
    ("loss.temperature", lambda v: v > 0, "> 0"),
    ("loss.teacher_temperature", lambda v: v > 0, "> 0"),
    ("loss.student_temperature", lambda v: v > 0, "> 0"),
    ("loss.hard_negatives", lambda v: v >= 0, ">= 0 (0: all)"),
    (
        "query_bits",
        lambda v: 0 <= v <= codes_lib.MAX_QUERY_PLANES,
        f"in [0, {codes_lib.MAX_QUERY_PLANES}] (0: queries as codes)",
    ),
    ("hash_model.hidden", lambda v: v >= 0, ">= 0 (0: max(d, bits))"),
    ("hash_model.depth", lambda v: v >= 0, ">= 0"),
    (
        "eval.kernel",
        lambda v: v in ("auto", *scoring.KERNELS),
        "'auto' or one of " + ", ".join(scoring.KERNELS),
    ),
)


def validate(config: ml_collections.ConfigDict, train_pairs: int, eval_pairs: int) -> None:
    """Checks a resolved config against the split's sizes, before anything is written.

    Raises:
      ConfigError: naming the first key whose value cannot be used (a Recall@k
        whose k reaches the whole held-out set would be 1.0 by construction).
    """
    check_rules(config, (*TRAIN_RULES, *_RULES))
    check_ks(config.eval.ks, eval_pairs, "held-out pairs")
    for key in ("hash", "trained_hash"):
        if config.eval[key] and config.model.code_dim * (config.model.loops + 1) > 65535:
            raise ConfigError(f"eval.{key}: the same-bits hash needs m(u+1) <= 65535 bits")
    if not (config.loss.pair_weight or config.loss.distill_weight):
        raise ConfigError("loss.pair_weight and loss.distill_weight are both 0: nothing to train")
    steps_per_epoch(train_pairs, config.train.batch_size)
    make_optimizer(config.optim, config.train.steps)


def evaluate(
    config: ml_collections.ConfigDict,
    state: State,
    data: PairedEmbeddings,
    mesh,
    float_state: State | None = None,
    hash_state: State | None = None,
) -> dict[str, dict[str, float]]:
    """Retrieval on the eval pairs, every method through an exact search index.

    Rows: the raw float embeddings (cosine), the binary codes (SDC over their
    packed planes), the same-bits random hash (Hamming, when `eval.hash`),
    given `hash_state` the trained hash (Hamming) and, given `float_state`,
    the float baseline (cosine). Every doc of a query's item is relevant
    (`retrieval.recall_at_k`).
    """
    ks, float_bytes, items = tuple(config.eval.ks), 4 * data.dim, data.item_ids()
    store = functools.partial(retrieval.storage, float_bytes=float_bytes)
    float_search = functools.partial(retrieval.float_recall, ks=ks, mesh=mesh, items=items)
    code_search = functools.partial(
        retrieval.code_recall, ks=ks, mesh=mesh, kernel=config.eval.kernel, items=items
    )

    def encode_pairs(model_config, model_state):
        model = build_model(model_config)
        return [
            encode(model, model_state, x, mesh, config.eval.batch_size)
            for x in (data.query, data.doc)
        ]

    m = config.model.code_dim
    bits = m * (config.model.loops + 1)
    results = {
        "float": {
            **float_search(data.query, data.doc),
            **store(32 * data.dim, float_bytes),
        }
    }
    queries, docs = encode_pairs(config, state)
    # A stored doc is its packed planes plus the 4-byte 1/||b|| that SDC search ranks with.
    # "binary" is the served mode: queries at `query_bits` (`retrieval.served_queries`).
    query_bits = config.get("query_bits", 0)
    results["binary"] = {
        **code_search(retrieval.served_queries(queries, query_bits), docs.planes),
        **store(bits, bits / 8 + 4),
    }
    if query_bits:
        results["binary_symmetric"] = {
            **code_search(queries.planes, docs.planes),
            **store(bits, bits / 8 + 4),
        }

    if config.eval.hash:
        hashes = [retrieval.random_hash(x, bits, config.seed) for x in (data.query, data.doc)]
        results["hash"] = {**code_search(*hashes, metric="hamming"), **store(bits, bits / 8)}
    if hash_state is not None:
        queries, docs = encode_pairs(trained_hash_config(config), hash_state)
        results["trained_hash"] = {
            **code_search(queries.planes, docs.planes, metric="hamming"),
            **store(bits, bits / 8),
        }
    if float_state is not None:
        queries, docs = encode_pairs(float_baseline_config(config), float_state)
        results["float_ft"] = {**float_search(queries.code, docs.code), **store(32 * m, 4 * m)}
    return results


def budgets(
    config: ml_collections.ConfigDict, state: State, data: PairedEmbeddings, mesh
) -> list[dict[str, Any]]:
    """Recall of every stored budget u_d <= u (`retrieval.budgets`), queries as codes and served."""
    model = build_model(config)
    queries, docs = (
        encode(model, state, x, mesh, config.eval.batch_size) for x in (data.query, data.doc)
    )
    return retrieval.budgets(
        queries,
        docs,
        config.get("query_bits", 0),
        tuple(config.eval.ks),
        mesh=mesh,
        kernel=config.eval.kernel,
        items=data.item_ids(),
    )


def split_pairs(
    config: ml_collections.ConfigDict, data: PairedEmbeddings
) -> tuple[PairedEmbeddings, PairedEmbeddings]:
    """The train and eval pairs of `data` under `config.split` and `config.seed`.

    Pairs of one item (`data.groups`) stay on one side.

    Raises:
      DataError: on a split that cannot be drawn.
    """
    train_rows, eval_rows = train_eval_split(
        len(data),
        eval_fraction=config.split.eval_fraction,
        eval_indices=config.split.eval_indices or None,
        seed=config.seed,
        groups=data.groups,
    )
    return data.subset(train_rows), data.subset(eval_rows)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, stop_after_steps: int | None = None
) -> dict[str, Any] | None:
    """Trains the binarizer of `config` in `workdir` and evaluates it.

    Args:
      config: a config as returned by a `configs/bebr/*.py` file.
      workdir: the run's directory; a run found there is resumed.
      stop_after_steps: see `fit`; for preemptible schedules and tests.

    Returns:
      The results dict (also written to results.json), or None when stopped early.

    Raises:
      DataError: on bad input data, before anything is written.
      ConfigError: when `workdir` holds a run with another config.
    """
    data = get_data(config.data)
    if not isinstance(data, PairedEmbeddings):
        raise ConfigError(
            f"data.name={config.data.name!r} gives {type(data).__name__}; "
            "the binarizer trains on paired embeddings"
        )
    train_data, eval_data = split_pairs(config, data)
    config = resolve(config, train_data)
    validate(config, len(train_data), len(eval_data))
    mesh = sharding.make_mesh(config.mesh.num_devices)
    sharding.check_batch_size(config.train.batch_size, mesh)
    wd.prepare(workdir, to_dict(config))

    state = fit(config, train_data, workdir, mesh, stop_after_steps=stop_after_steps)
    if state is None:
        return None
    float_state, hash_state = (
        fit_baseline(config, name, train_data, workdir, mesh) if config.eval[name] else None
        for name in ("float_baseline", "trained_hash")
    )
    return write_results(
        config,
        workdir,
        state,
        (train_data, eval_data),
        mesh,
        float_state,
        hash_state,
    )


def fit_baseline(
    config: ml_collections.ConfigDict, name: str, data: PairedEmbeddings, workdir: str, mesh
) -> State:
    """Trains (or resumes) baseline `name` of `BASELINES` on `data` in `workdir/<name>`."""
    directory = os.path.join(workdir, name)
    os.makedirs(directory, exist_ok=True)
    return fit(BASELINES[name](config), data, directory, mesh)


def write_results(
    config: ml_collections.ConfigDict,
    workdir: str,
    state: State,
    split: tuple[PairedEmbeddings, PairedEmbeddings],
    mesh,
    float_state: State | None = None,
    hash_state: State | None = None,
) -> dict[str, Any]:
    """Evaluates a trained binarizer and writes results.json, results.md and results.png.

    results.json is written last but one (before the plot), and a workdir
    holding it counts as a finished run. Its "train" entry holds the steps,
    the devices, and the wall seconds of training in `workdir` over every
    call that trained (`workdir.train_time`): "seconds" (the total) and
    "parts" (start step, end step and seconds of each call).

    Args:
      config: the run's resolved config.
      workdir: the run's directory.
      state: the trained state.
      split: (train pairs, eval pairs).
      mesh: the device mesh.
      float_state: the float baseline's state, when trained.
      hash_state: the trained hash's state, when trained.
    """
    train_data, eval_data = split
    results = {
        "retrieval": evaluate(config, state, eval_data, mesh, float_state, hash_state),
        "budgets": budgets(config, state, eval_data, mesh),
    }
    results["data"] = {
        "source": eval_data.source,
        "dim": eval_data.dim,
        "train_pairs": len(train_data),
        "eval_pairs": len(eval_data),
        "eval_items": len(np.unique(eval_data.item_ids())),
    }
    results["train"] = {
        "steps": config.train.steps,
        **wd.train_time(workdir),
        "devices": int(mesh.devices.size),
    }
    table = report.retrieval_table(results["retrieval"])
    table += "\n\n" + report.budgets_table(results["budgets"])
    wd.write_atomic(os.path.join(workdir, "results.md"), table + "\n")
    wd.write_json(os.path.join(workdir, "results.json"), results)
    metrics = wd.read_metrics(workdir)
    report.plot_run(os.path.join(workdir, "results.png"), metrics, results["retrieval"])
    return results
