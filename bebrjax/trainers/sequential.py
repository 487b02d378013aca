"""Sequential upgrades phi1 -> phi2 -> phi3, the stored gallery upgraded at each step or not.

The contract of a trainer module: `train_and_evaluate(config, workdir)`.

1. Load the labelled data and draw nested training sets, one per step
   (`sequence.ratios` of the classes or of every class's items,
   `sequence_split`); each step's model has its own backbone arguments and
   embedding width (`sequence.backbone_args`, `sequence.embedding_dims`), so
   a step brings more data, a larger model, or both.
2. Step 1: phi1 trained alone on the first set (workdir/step1). The gallery
   is encoded once, G = phi1(gallery): the only time raw gallery data is used.
3. For each method of `methods` and each step t >= 2: phi_t trained with the
   method against the frozen phi_{t-1} of the same method (always the
   previous model: a model knows only its predecessor), in
   workdir/<method>/step<t> (`upgrade.stages.train_new`). Methods with a forward
   adapter (dmu, bict) replace the stored gallery by psi_t(G); the others
   (bct) leave it as it is, so it stays phi1's.
4. At every step: new/new (phi_t on both sides, the backfilled ideal),
   new -> phi1 gallery, and new -> stored gallery (the one the system
   actually holds), with the stored gallery's version, e.g. psi3(psi2(phi1)).
   Written to results.json (with "train": each stage's training time over
   every call, `workdir.train_time`), results.md (a table) and results.png
   (a plot).
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import os
from collections.abc import Callable

import ml_collections
import numpy as np

from bebrjax import report, sharding
from bebrjax import workdir as wd
from bebrjax.config import check_ks, to_dict
from bebrjax.data.batching import steps_per_epoch
from bebrjax.data.upgrade_splits import labelled_data, sequence_split
from bebrjax.errors import ConfigError
from bebrjax.evaluators.compatibility import retrieval_metrics
from bebrjax.sharding import apply_model
from bebrjax.trainers.loop import Laps, variables_of
from bebrjax.trainers.upgrade import checks
from bebrjax.trainers.upgrade.models import Frozen, build, check_model
from bebrjax.trainers.upgrade.stages import fit_stage, train_new


def stage_config(config: ml_collections.ConfigDict, step: int) -> ml_collections.ConfigDict:
    """The model config of step `step` (0-based): the shared `model` with the step's sizes."""
    seq = config.sequence
    model = dict(
        config.model.to_dict(),
        backbone_args=dict(seq.backbone_args[step]),
        embedding_dim=seq.embedding_dims[step],
    )
    return ml_collections.ConfigDict({"model": model})


def method_config(
    config: ml_collections.ConfigDict, method: str, step: int
) -> ml_collections.ConfigDict:
    """The `upgrade` config of `method` at step `step` (>= 1): old = step - 1, new = step."""
    sub = copy.deepcopy(config)
    with sub.unlocked():
        del sub.methods, sub.sequence, sub.model
        sub.trainer = "upgrade"
        sub.method = method
        sub.old = stage_config(config, step - 1)
        sub.new = stage_config(config, step)
        sub.split.old_ratio = config.sequence.ratios[step - 1]
        sub.split.new_ratio = config.sequence.ratios[step]  # recorded in the stage's record
    return sub


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first unusable key."""
    seq = config.sequence
    lengths = {len(seq.ratios), len(seq.backbone_args), len(seq.embedding_dims)}
    if len(lengths) != 1 or len(seq.ratios) < 2:
        raise ConfigError(
            "config keys 'sequence.ratios', 'sequence.backbone_args' and "
            "'sequence.embedding_dims' must give one entry per step, at least 2 steps; got "
            f"{len(seq.ratios)}, {len(seq.backbone_args)} and {len(seq.embedding_dims)}"
        )
    if not config.methods:
        raise ConfigError("config key 'methods' is empty")
    for method in config.methods:
        for step in range(1, len(seq.ratios)):
            checks.validate(method_config(config, method, step))


@dataclasses.dataclass(frozen=True)
class StoredGallery:
    """The gallery a system holds: its embeddings and how they were made."""

    embeddings: np.ndarray
    version: str

    def upgraded(self, psi: Callable[[np.ndarray], np.ndarray], step: int) -> StoredGallery:
        """The gallery after step `step`'s forward adapter (1-based, as in psi2)."""
        return StoredGallery(psi(self.embeddings), f"psi{step}({self.version})")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains phi1 and, per method, phi2..phiT (with psi for dmu and bict), then evaluates.

    Raises:
      DataError: on bad input data; ConfigError: on a bad config or a workdir
        holding another run. Both before anything is written.
    """
    data = labelled_data(config)
    train_sets, query_rows, gallery_rows = sequence_split(
        data.y,
        config.split.kind,
        config.sequence.ratios,
        eval_fraction=config.split.eval_fraction,
        seed=config.seed,
    )
    validate(config)
    for step in range(len(train_sets)):
        check_model(
            stage_config(config, step),
            data.num_classes,
            data.x[:1],
            f"sequence.backbone_args[{step}]",
        )
    mesh = sharding.make_mesh(config.mesh.num_devices)
    sharding.check_batch_size(config.train.batch_size, mesh)
    for rows in train_sets:
        steps_per_epoch(len(rows), config.train.batch_size)
    check_ks(config.eval.ks, len(gallery_rows), "held-out gallery items")
    wd.prepare(workdir, to_dict(config))

    classes, batch_size = data.num_classes, config.eval.batch_size
    queries, gallery = data.subset(query_rows), data.subset(gallery_rows)
    lap = Laps()

    def search(q, g):
        metrics, _ = retrieval_metrics(
            q,
            queries.y,
            g,
            gallery.y,
            ks=tuple(config.eval.ks),
            fars=tuple(config.eval.fars),
            mesh=mesh,
        )
        return metrics

    first_config = method_config(config, config.methods[0], 1)
    first_stage = stage_config(config, 0)
    first_data = data.subset(train_sets[0])
    first_state = fit_stage(
        first_config, first_stage, first_data, classes, os.path.join(workdir, "step1"), mesh
    )
    first = Frozen(
        first_stage,
        build(first_stage, classes),
        variables_of(first_state),
        np.bincount(first_data.y, minlength=classes) > 0,
    )
    lap("step1")
    first_q, first_g = (first.embed(part.x, mesh, batch_size) for part in (queries, gallery))
    baseline = search(first_q, first_g)
    results = {"steps": len(train_sets), "methods": {}, "seconds": lap.seconds}
    for method in config.methods:
        frozen, stored = first, StoredGallery(first_g, "phi1")
        table = [
            {
                "step": 1,
                "gallery": stored.version,
                "new/new": baseline,
                "new->phi1": baseline,
                "new->stored": baseline,
            }
        ]
        for step in range(1, len(train_sets)):
            sub = method_config(config, method, step)
            step_dir = os.path.join(workdir, method, f"step{step + 1}")
            new, adapter = train_new(
                sub, sub.new, data.subset(train_sets[step]), classes, step_dir, mesh, frozen
            )
            if adapter is not None:
                stored = stored.upgraded(
                    lambda g, a=adapter: apply_model(*a, g, mesh, batch_size), step + 1
                )
            new_q, new_g = (new.embed(part.x, mesh, batch_size) for part in (queries, gallery))
            table.append(
                {
                    "step": step + 1,
                    "gallery": stored.version,
                    "new/new": search(new_q, new_g),
                    "new->phi1": search(new_q, first_g),
                    "new->stored": search(new_q, stored.embeddings),
                }
            )
            frozen = new
        results["methods"][method] = table
        lap(method)
    results["train"] = {
        os.path.relpath(os.path.dirname(path), workdir): wd.train_time(os.path.dirname(path))
        for path in sorted(glob.glob(os.path.join(workdir, "**", "stage.json"), recursive=True))
    }
    results["train_sets"] = [
        {"images": len(rows), "classes": len(np.unique(data.y[rows]))} for rows in train_sets
    ]
    wd.write_json(os.path.join(workdir, "results.json"), results)
    wd.write_atomic(os.path.join(workdir, "results.md"), report.sequence_table(results) + "\n")
    report.plot_sequence(os.path.join(workdir, "results.png"), results)
    return results
