"""Scoring plans over finished binarizer runs: fitted on their training pairs; query models loaded.

    plan = fit_runs({"old": "W/old", "independent": "W/independent"})  # each scores its own
    plan = fit_runs(runs, scores={"old": {"new": 0.5}})  # old docs also by the new query
    plan.save("plan.json")
    models = query_models(plan)                           # name -> Binarizer

Any set of finished binarizer runs over the same pairs (the same data rows,
split and seed; each run may read its own embeddings of them, e.g. an old
and a new encoder's) can be planned: an old run and an independently
trained new run, with no compatibility training at all, is the cheapest
upgrade there is. A version is named after the run that encodes it, as
`encode --version` names it by default (the workdir's name).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from jax.sharding import Mesh

from bebrjax.data import get_data
from bebrjax.errors import DataError, LoadError, PlanError
from bebrjax.inference.loaders import load
from bebrjax.search import plan as plan_lib
from bebrjax.trainers.parts import Binarizer
from bebrjax.trainers.runs import read_config


def _binarizer(name: str, workdir: str, mesh: Mesh | None) -> Binarizer:
    loaded = load(workdir, mesh=mesh)
    if not isinstance(loaded, Binarizer):
        raise LoadError(f"model {name!r}: {workdir} is not a binarizer run")
    return loaded


def fit_runs(
    runs: Mapping[str, str],
    scores: Mapping[str, Mapping[str, float]] | None = None,
    *,
    pairs: int = 4000,
    calibration: str = "negatives",
    seed: int = 0,
    batch_size: int = 8192,
    mesh: Mesh | None = None,
) -> plan_lib.ScoringPlan:
    """Fits a scoring plan for binarizer runs on a sample of their training pairs.

    Args:
      runs: model (and version) name -> the run's workdir.
      scores: version -> {another model: weight}: that model's queries score
        the version too (each version is always scored by its own model,
        weight 1).
      pairs: training pairs sampled (seeded) to fit the calibrations.
      calibration: a key of `plan.CALIBRATIONS`.
      seed: the sample's seed.
      batch_size: rows per encoded batch.
      mesh: where to encode.

    Raises:
      LoadError: a workdir that is not a finished binarizer run.
      DataError: runs that are not over the same pairs.
      PlanError: a name in `scores` that names no run, a bad calibration.
    """
    from bebrjax.trainers.binarizer import split_pairs  # the split the runs trained on

    if not runs:
        raise PlanError("a plan needs at least one run")
    if pairs < 2:
        raise PlanError(f"pairs={pairs}: need at least 2 to have negatives")
    for version, weights in (scores or {}).items():
        unknown = sorted({version, *weights} - set(runs))
        if unknown:
            raise PlanError(f"--score {version}: names no run: {unknown} (runs: {sorted(runs)})")
    models = {name: _binarizer(name, workdir, mesh) for name, workdir in runs.items()}
    train = {}
    for name, workdir in runs.items():
        config = read_config(workdir)
        data = get_data(config.data)
        train[name] = (split_pairs(config, data)[0], (len(data), config.seed, str(config.split)))
    first = next(iter(train))
    for name, (_, key) in train.items():
        if key != train[first][1]:
            raise DataError(
                f"runs {first!r} and {name!r} are not over the same pairs (pairs, seed or "
                f"split differ: {train[first][1][:2]} against {key[:2]})"
            )
    count = len(train[first][0])
    rows = np.sort(np.random.default_rng(seed).permutation(count)[:pairs])
    codes = {
        name: (
            models[name].encode(split.query[rows], batch_size),
            models[name].encode(split.doc[rows], batch_size),
        )
        for name, (split, _) in train.items()
    }
    versions = {
        name: (name, {name: 1.0, **{m: float(w) for m, w in (scores or {}).get(name, {}).items()}})
        for name in runs
    }
    fitted_on = {
        "runs": {name: os.path.abspath(w) for name, w in runs.items()},
        "source": train[first][0].source,
        "split": "train",
        "pairs": len(rows),
        "seed": seed,
    }
    info = {name: model.provenance() for name, model in models.items()}
    return plan_lib.fit(codes, versions, info, calibration=calibration, fitted_on=fitted_on)


def query_models(plan: plan_lib.ScoringPlan, mesh: Mesh | None = None) -> dict[str, Binarizer]:
    """The plan's query models, loaded from the runs it records, at the steps it was fitted on.

    Raises:
      LoadError: naming the model, when its run is gone, is not a binarizer
        run, or its checkpoint step, m or u differ from the plan's record.
    """
    out = {}
    for name in plan.fusion().models:
        info = plan.models[name]
        workdir = info.get("workdir")
        if not workdir or not os.path.isdir(workdir):
            raise LoadError(f"query model {name!r}: its run {workdir!r} is gone")
        step = info.get("step")
        model = load(workdir, step=None if step is None else int(step), mesh=mesh)
        if not isinstance(model, Binarizer):
            raise LoadError(f"query model {name!r}: {workdir} is not a binarizer run")
        have = (model.code_dim, model.loops)
        if have != (info.get("m", have[0]), info.get("u", have[1])):
            raise LoadError(
                f"query model {name!r}: {workdir} makes codes m={have[0]}, u={have[1]}; the "
                f"plan was fitted on m={info.get('m')}, u={info.get('u')}"
            )
        out[name] = model
    return out
