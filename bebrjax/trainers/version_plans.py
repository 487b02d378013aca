"""The scoring plans of a compatible run's version-aware policies (`bebrjax.search.plan`).

Fitted on a seeded sample of `version_aware.pairs` training pairs, each model
encoding its own embeddings of the same pairs; saved as workdir/plans/<policy>.json,
so that `bebrjax search --plan` and `bebrjax export --plan` take them as they are.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from bebrjax import workdir as wd
from bebrjax.search import plan as plan_lib
from bebrjax.trainers.parts import Binarizer


def fit_plans(
    config: ml_collections.ConfigDict,
    splits: dict,
    models: dict[str, Binarizer],
    workdir: str,
) -> dict[str, plan_lib.ScoringPlan]:
    """The scoring plans of the version-aware policies, fitted on training pairs, saved.

    Written to workdir/plans/<policy>.json: "version_aware" (old documents
    scored by the old and the compatible new query, new ones by the new) and
    "version_aware_independent" (re-encoding with the independent binarizer).
    """
    va = config.version_aware
    train = {"old": splits["old"][0], "new": splits["new"][0], "independent": splits["new"][0]}
    rows = np.random.default_rng(config.seed).permutation(len(train["new"]))[: va.pairs]
    rows = np.sort(rows)
    batch = config.eval.batch_size
    codes = {
        name: (
            model.encode(train[name].query[rows], batch),
            model.encode(train[name].doc[rows], batch),
        )
        for name, model in models.items()
    }
    info = {name: model.provenance() for name, model in models.items()}
    old = ("old", {"old": 1.0, "new": va.cross_weight})
    specs = {
        "version_aware": {"old": old, "new": ("new", {"new": 1.0})},
        "version_aware_independent": {
            "old": old,
            "independent": ("independent", {"independent": 1.0}),
        },
    }
    fitted_on = {"source": train["new"].source, "split": "train", "pairs": len(rows)}
    fitted_on["seed"] = config.seed
    plans, folder = {}, os.path.join(workdir, "plans")
    os.makedirs(folder, exist_ok=True)
    for name, spec in specs.items():
        used = {model for encoder, weights in spec.values() for model in (encoder, *weights)}
        plans[name] = plan_lib.fit(
            {m: codes[m] for m in used},
            spec,
            {m: info[m] for m in used},
            calibration=va.calibration,
            fitted_on=fitted_on,
        )
        wd.write_json(os.path.join(folder, f"{name}.json"), plans[name].to_dict())
    return plans
