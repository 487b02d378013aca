"""Compatible model upgrades: an old model, a new one trained against it, the paragon.

The contract of a trainer module: `train_and_evaluate(config, workdir)`.
The recipe is the config file's (configs/upgrade/common.py and the method's
file); the methods are one table (`methods.METHODS`). Top to bottom:

1. Load and validate the labelled data, draw the universal split
   (`split.kind`), validate the config (`checks`) and record it.
   Nothing is written before the data and config have passed.
2. Stage `old`: phi_old on the old training set with its classifier (cross
   entropy), in `<old_workdir or workdir/old>`; a finished stage is reused
   (`stages`: a stage directory records what its model depends on).
3. Stage `new` (workdir/new): phi_new on the new training set, cross entropy
   plus `compat.weight` x the compatibility term of `method` against the
   frozen old model. A method with a forward adapter psi trains it too:
   jointly (dmu) or in stage `forward` (workdir/forward, bict: psi on the
   new training set's embeddings, both models frozen).
4. Stage `paragon`: phi_new trained independently (the upper bound of
   new/new), in `<paragon_workdir or workdir/paragon>`; the new model itself
   when `method` is independent.
5. Evaluate the compatibility matrix on the held-out queries and gallery
   (with new->psi(old), the upgraded gallery, when there is a psi) and write
   results.json, results.md and results.png (a heatmap). results.json's
   "train" holds each stage's training time over every call that trained it
   (`workdir.train_time`: the total and the parts), "seconds" this call's
   wall time per phase.

Every stage is a jit'd step on the data-parallel mesh, checkpointed with
orbax and resumable, through the shared `train_loop`.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from bebrjax import report
from bebrjax import workdir as wd
from bebrjax.config import to_dict
from bebrjax.evaluators.compatibility import evaluate_upgrade
from bebrjax.trainers.loop import Laps, variables_of
from bebrjax.trainers.upgrade.checks import preflight
from bebrjax.trainers.upgrade.models import Frozen, build
from bebrjax.trainers.upgrade.stages import fit_stage, train_new


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains the old model (unless present), the new one and the paragon, then evaluates.

    Raises:
      DataError: on bad input data; ConfigError: on a bad config or a workdir
        holding another run. Both before anything is written.
    """
    data, split, mesh = preflight(config)
    wd.prepare(workdir, to_dict(config))
    classes, lap = data.num_classes, Laps()

    # 2. The old model, alone on the old training set.
    old_data = data.subset(split.old)
    old_dir = config.old_workdir or os.path.join(workdir, "old")
    old_state = fit_stage(config, config.old, old_data, classes, old_dir, mesh)
    seen = np.bincount(old_data.y, minlength=classes) > 0
    old = Frozen(config.old, build(config.old, classes), variables_of(old_state), seen)
    lap("old")

    # 3. The new model against the frozen old one (and psi, for dmu and bict).
    new_data = data.subset(split.new)
    new, adapter = train_new(config, config.new, new_data, classes, workdir, mesh, old)
    lap("new")

    # 4. The paragon: the new model trained alone.
    paragon, paragon_dir = new.variables, os.path.join(workdir, "new")
    if config.method != "independent":
        paragon_dir = config.paragon_workdir or os.path.join(workdir, "paragon")
        paragon = variables_of(fit_stage(config, config.new, new_data, classes, paragon_dir, mesh))
    lap("paragon")

    # 5. The compatibility matrix on the held-out queries and gallery.
    queries, gallery = data.subset(split.query), data.subset(split.gallery)
    results = evaluate_upgrade(
        {
            "old": (old.model, old.variables),
            "new": (new.model, new.variables),
            "paragon": (new.model, paragon),
        },
        queries.x,
        queries.y,
        gallery.x,
        gallery.y,
        mesh=mesh,
        batch_size=config.eval.batch_size,
        adapter=adapter,
        ks=tuple(config.eval.ks),
        fars=tuple(config.eval.fars),
    )
    lap("evaluation")
    results["method"] = config.method
    results["seconds"] = lap.seconds  # this call's wall time per phase
    stages = {
        "old": old_dir,
        "new": os.path.join(workdir, "new"),
        "forward": os.path.join(workdir, "forward"),  # psi's own stage (bict)
        "paragon": paragon_dir,
    }
    results["train"] = {k: wd.train_time(d) for k, d in stages.items() if os.path.isdir(d)}
    results["split"] = {"kind": split.kind, **split.accounting(data.y)}
    wd.write_json(os.path.join(workdir, "results.json"), results)
    wd.write_atomic(os.path.join(workdir, "results.md"), report.matrix_table(results) + "\n")
    report.plot_matrix(os.path.join(workdir, "results.png"), results)
    return results
