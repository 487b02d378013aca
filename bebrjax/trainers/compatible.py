"""Compatible binary codes: a new binarizer whose codes search the old one's, and psi.

The contract of a trainer module: `train_and_evaluate(config, workdir)`.

1. Load the old and the new embeddings of the same pairs (`data.old`,
   `data.new`: row i of each is the same query and doc), check they hold
   as many pairs and group them alike, draw one split for both (from the
   groups of whichever part has them: the other part's stages take them
   through their `data.groups_from`), validate every stage's config and an
   old run given by `old_workdir`. Nothing is written before all of it passes.
2. Stage `old` (`<old_workdir or workdir/old>`): a binarizer run on the old
   pairs (`config.old`); a finished one is reused as it is.
3. Stage `independent` (`<independent_workdir or workdir/independent>`): a
   binarizer run on the new pairs with the plain recipe
   (`config.independent`): the paragon of new/new and the model a user
   without compatible training would deploy; reused like `old`.
4. Stage `new` (workdir/new): the compatible binarizer: the binarizer loss
   of `config.new` plus `compat.weight` x `cross_version_loss` against the
   frozen old binarizer's codes of the same pairs (computed once). It is a
   binarizer run in its own right (config.json, checkpoints, results.json):
   `bebrjax.inference.load`, `encode` and `export` take it like any other.
5. Stage `psi` (workdir/psi): psi from decoded old codes to new codes, by
   ridge regression on the training pairs' docs and requantization (see
   `bebrjax.models.code_adapter`), saved as an orbax checkpoint. The float
   matrix's new->psi(old) cell is the same ridge on float embeddings (old
   doc embeddings -> new ones), for reference.
6. Fit the scoring plans of version-aware search on a sample of the training
   pairs (`version_plans.fit_plans`, `bebrjax.search.plan`), written to workdir/plans/.
7. Evaluate on the held-out pairs (`bebrjax.evaluators.versions`): the binary
   and float compatibility matrices (with the fused "new+old->old" cell),
   the backfill curves (the version-aware policies among them), written to
   results.json, results.md, results.png (the binary matrix) and
   backfill.png. results.json's "train" holds each stage's training time
   over every call that trained it (`workdir.train_time`: "seconds", the
   total, and "parts"); "seconds" the wall time of this call's phases.

The worst-first backfill order is our reading of FastFill (which orders by
a learned uncertainty of each old feature): the documents whose old codes
are the most ambiguous in the old gallery go first, ambiguity being the
cosine of a doc's old code to its nearest other old code
(`versions.ambiguity`). It needs the stored codes only, like the backfill
it orders. A learned alternative, a ridge regression predicting each doc's
cross-version margin from its old code, ordered worse than random on
FOLDOC (AUC 0.381-0.383 against 0.391); ambiguity ordered better (0.404).
"""

from __future__ import annotations

import copy
import functools
import os

import jax.numpy as jnp
import ml_collections
import numpy as np

from bebrjax import checkpoint, report
from bebrjax import workdir as wd
from bebrjax.config import to_dict
from bebrjax.data import PairedEmbeddings
from bebrjax.evaluators import versions
from bebrjax.losses.pair_contrastive import cross_version_loss
from bebrjax.models.code_adapter import fit_ridge
from bebrjax.search import codes as codes_lib
from bebrjax.trainers import binarizer, version_plans
from bebrjax.trainers.compatible_preflight import STAGES, finished, preflight, stage_dir
from bebrjax.trainers.loop import Laps
from bebrjax.trainers.parts import Binarizer
from bebrjax.trainers.runs import code_upgrade, load_binarizer, read_config, save_psi

# A stage's recipe: the binarizer sections it trains with.
_STAGE_FIELDS = {key: binarizer.FIELDS[key] for key in ("model", "loss", "optim", "train")}

# The keys of a compatible-codes config and their types (`config.check_fields`);
# the recipe, every value, is the config file's (configs/bebr/compatible.py).
# `data.old` and `data.new` are the data plug-in's (`bebrjax.data.get_data`).
FIELDS = dict(
    seed=int,
    trainer=str,
    data=dict(new=dict, old=dict),
    split=binarizer.FIELDS["split"],
    mesh=binarizer.FIELDS["mesh"],
    old=_STAGE_FIELDS,
    independent=_STAGE_FIELDS,
    new=_STAGE_FIELDS,
    compat=dict(
        weight=float, directions=tuple, temperature=float, hard_negatives=int, mixed_negatives=bool
    ),
    psi=dict(alpha=float),
    backfill=dict(points=int),
    version_aware=dict(calibration=str, cross_weight=float, pairs=int),
    eval=dict(ks=tuple, batch_size=int, kernel=str),
    old_workdir=str,
    independent_workdir=str,
)


def load_stage(directory: str, mesh) -> Binarizer:
    """The finished binarizer run of a stage, loaded on `mesh`."""
    return load_binarizer(directory, read_config(directory), None, mesh, finished(directory))


def run_stage(stage: ml_collections.ConfigDict, directory: str, mesh) -> Binarizer:
    """A binarizer stage: trained (or resumed) unless finished, then loaded."""
    if not finished(directory):
        binarizer.train_and_evaluate(stage, directory)
    return load_stage(directory, mesh)


def train_new(
    stage: ml_collections.ConfigDict,
    directory: str,
    split: tuple[PairedEmbeddings, PairedEmbeddings],
    old_codes: dict[str, np.ndarray],
    old: Binarizer,
    mesh,
) -> Binarizer:
    """Stage new: the binarizer loss plus compat.weight x the cross-version loss.

    Args:
      stage: the resolved config of stage new (with its `compat` section).
      directory: workdir/new.
      split: the new (train, eval) pairs.
      old_codes: {"old_query", "old_doc"}: the old binarizer's decoded codes b
        of the training pairs (`compact_codes`), batched beside them.
      old: the old binarizer (its workdir and step are recorded).
      mesh: the device mesh.
    """
    if not finished(directory):
        with stage.unlocked():
            stage.compatible_with = dict(
                workdir=os.path.abspath(old.workdir), step=old.encoder.step
            )
        wd.prepare(directory, to_dict(stage))
        compat = stage.compat

        def cross(new_query, new_doc, batch):
            value = cross_version_loss(
                new_query,
                new_doc,
                batch["old_query"].astype(jnp.float32),
                batch["old_doc"].astype(jnp.float32),
                directions=tuple(compat.directions),
                temperature=compat.temperature,
                hard_negatives=compat.hard_negatives,
                mixed_negatives=compat.mixed_negatives,
                labels=batch["labels"] if stage.loss.mask_same_label else None,
                groups=batch["groups"] if stage.loss.mask_same_group else None,
            )
            return compat.weight * value, {"cross": value}

        state = binarizer.fit(stage, split[0], directory, mesh, extra=old_codes, cross=cross)
        binarizer.write_results(stage, directory, state, split, mesh)
    return load_stage(directory, mesh)


def float_psi(splits: dict, alpha: float) -> np.ndarray:
    """The float reference of psi: the same ridge from old to new doc embeddings, on eval docs."""
    (old_train, old_eval), (new_train, _) = splits["old"], splits["new"]
    params = fit_ridge(old_train.doc, new_train.doc, alpha)
    return old_eval.doc @ params["kernel"] + params["bias"]


_BLOCK = 65536  # codes decoded at a time


def compact_codes(planes: np.ndarray) -> np.ndarray:
    """The recurrent vectors b of codes [N, u+1, m] as float16 [N, m], decoded block by block.

    Exact: b is a sum of at most 4 terms +-2^-i (u <= 3), 4 significant bits;
    half the bytes of float32, and no float32 copy of all N is ever made.
    """
    out = np.empty((len(planes), planes.shape[2]), np.float16)
    for start in range(0, len(planes), _BLOCK):
        out[start : start + _BLOCK] = codes_lib.decode(planes[start : start + _BLOCK])
    return out


def _encode(model: Binarizer, x: np.ndarray, config) -> np.ndarray:
    return model.encode(x, config.eval.batch_size)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains the old (unless present), independent and compatible binarizers and psi.

    Raises:
      DataError: on bad or disagreeing input data; ConfigError: on a bad
        config, a workdir holding another run, or an old run of other data.
        All before anything is written.
    """
    config = copy.deepcopy(config)
    with config.unlocked():  # reused stages are found again from any directory
        for key in ("old_workdir", "independent_workdir"):
            config[key] = config[key] and os.path.abspath(config[key])
    splits, stages, mesh = preflight(config, workdir)
    wd.prepare(workdir, to_dict(config))
    lap = Laps()
    encode = functools.partial(_encode, config=config)
    (old_train, old_eval), (new_train, new_eval) = splits["old"], splits["new"]

    old = run_stage(stages["old"], stage_dir(config, workdir, "old"), mesh)
    lap("old")
    independent = run_stage(stages["independent"], stage_dir(config, workdir, "independent"), mesh)
    lap("independent")
    # The old codes of the training pairs, held once: the cross-version term's and psi's inputs.
    old_codes = {
        "old_query": compact_codes(encode(old, old_train.query)),
        "old_doc": compact_codes(encode(old, old_train.doc)),
    }
    new = train_new(
        stages["new"],
        os.path.join(workdir, "new"),
        splits["new"],
        old_codes,
        old,
        mesh,
    )
    lap("new")
    psi_dir = os.path.join(workdir, "psi")
    if not checkpoint.steps(os.path.join(psi_dir, "checkpoints")):  # none, or cut short
        targets = compact_codes(encode(new, new_train.doc))
        params = fit_ridge(old_codes["old_doc"], targets, config.psi.alpha)
        save_psi(psi_dir, params, old, new, config.psi.alpha)
    psi = code_upgrade(psi_dir, mesh)
    lap("psi")

    old_doc = encode(old, old_eval.doc)
    queries = {
        "old": encode(old, old_eval.query),
        "new": encode(new, new_eval.query),
        "independent": encode(independent, new_eval.query),
    }
    docs = {
        "old": old_doc,
        "new": encode(new, new_eval.doc),
        "independent": encode(independent, new_eval.doc),
        "psi": psi(old_doc, config.eval.batch_size),
    }
    kernel = config.eval.kernel
    results = {
        "compatibility": versions.compatibility_matrix(
            queries,
            docs,
            {"old": old_eval.query, "new": new_eval.query},
            {"old": old_eval.doc, "new": new_eval.doc, "psi": float_psi(splits, config.psi.alpha)},
            ks=tuple(config.eval.ks),
            mesh=mesh,
            kernel=kernel,
        )
    }
    models = {"old": old, "new": new, "independent": independent}
    plans = version_plans.fit_plans(config, splits, models, workdir)
    results["compatibility"]["binary"]["new+old->old"] = versions.fused_cell(
        queries, old_doc, plans["version_aware"], ks=tuple(config.eval.ks), mesh=mesh, kernel=kernel
    )
    orders = {
        "random": np.random.default_rng(config.seed).permutation(len(old_doc)),
        "worst_first": np.argsort(
            -versions.ambiguity(old_doc, mesh=mesh, kernel=kernel), kind="stable"
        ),
    }
    results["backfill"] = versions.backfill_curves(
        queries,
        docs,
        orders,
        results["compatibility"]["binary"],
        plans=plans,
        points=config.backfill.points,
        k=max(config.eval.ks),
        mesh=mesh,
        kernel=kernel,
    )
    lap("evaluation")
    results["data"] = {
        "old": old_eval.source,
        "new": new_eval.source,
        "dims": {"old": old_eval.dim, "new": new_eval.dim},
        "train_pairs": len(new_train),
        "eval_pairs": len(new_eval),
    }
    results["codes"] = {
        name: {"m": model.code_dim, "u": model.loops}
        for name, model in (("old", old), ("new", new), ("independent", independent))
    }
    results["seconds"] = lap.seconds
    results["train"] = {stage: wd.train_time(stage_dir(config, workdir, stage)) for stage in STAGES}
    wd.write_atomic(os.path.join(workdir, "results.md"), report.versions_report(results) + "\n")
    wd.write_json(os.path.join(workdir, "results.json"), results)
    report.plot_matrix(
        os.path.join(workdir, "results.png"),
        {"matrix": results["compatibility"]["binary"], "method": "binary codes"},
        metric=f"R@{max(config.eval.ks)}",
    )
    report.plot_backfill(os.path.join(workdir, "backfill.png"), results["backfill"])
    return results
