"""Everything a compatible-codes run checks before it writes anything.

`preflight` loads the old and the new pairs, checks that row i of each is
the same pair (as many rows, one grouping: `shared_groups`), draws one split
for both, resolves and validates every stage's binarizer config
(`stage_config`) and checks an old or independent run given by its workdir
(`check_reused`). See `bebrjax.trainers.compatible` for the stages.
"""

from __future__ import annotations

import copy
import dataclasses
import os

import ml_collections
import numpy as np

from bebrjax import sharding
from bebrjax.config import check_rules, diff_keys, to_dict
from bebrjax.data import PairedEmbeddings, get_data
from bebrjax.data.pairs import grouping_conflict
from bebrjax.errors import ConfigError, DataError
from bebrjax.losses.pair_contrastive import CROSS_DIRECTIONS
from bebrjax.search import plan as plan_lib
from bebrjax.trainers import binarizer
from bebrjax.trainers.runs import read_config

STAGES = ("old", "independent", "new")


def stage_config(
    config: ml_collections.ConfigDict, stage: str, groups_from: str | None = None
) -> ml_collections.ConfigDict:
    """The binarizer-trainer config of stage "old", "independent" or "new" (unresolved).

    The stage's recipe (`config[stage]`) with the run's seed, split, mesh and
    eval; its codes are trained, compared and served as codes (`query_bits`
    0), with no hash baselines. Stage "new" adds the run's `compat`.

    Args:
      config: the compatible run's config.
      stage: the stage.
      groups_from: the part ("old" or "new") whose groups both parts' pairs
        take (`shared_groups`); None: each its own.
    """
    part = "old" if stage == "old" else "new"
    c = ml_collections.ConfigDict()
    c.seed = config.seed
    c.trainer = "binarizer"
    c.split = copy.deepcopy(config.split)
    c.model_name = "binarizer"
    c.model = copy.deepcopy(config[stage].model)
    c.loss = copy.deepcopy(config[stage].loss)
    c.query_bits = 0
    c.optim = copy.deepcopy(config[stage].optim)
    c.train = copy.deepcopy(config[stage].train)
    c.mesh = copy.deepcopy(config.mesh)
    c.hash_model = dict(hidden=0, depth=1)  # unread: no trained hash (eval.trained_hash)
    c.eval = dict(
        ks=config.eval.ks,
        hash=False,
        trained_hash=False,
        float_baseline=False,
        batch_size=config.eval.batch_size,
        kernel=config.eval.kernel,
    )
    c.data = copy.deepcopy(config.data[part])
    if groups_from not in (None, part):
        c.data.groups_from = copy.deepcopy(config.data[groups_from])
    if stage == "new":
        c.compat = copy.deepcopy(config.compat)
    return c


_RULES = (
    ("compat.weight", lambda v: v >= 0, ">= 0"),
    (
        "compat.directions",
        lambda v: len(v) > 0 and set(v) <= set(CROSS_DIRECTIONS),
        f"a non-empty tuple of {', '.join(CROSS_DIRECTIONS)}",
    ),
    ("compat.temperature", lambda v: v > 0, "> 0"),
    ("compat.hard_negatives", lambda v: v >= 0, ">= 0 (0: all)"),
    ("psi.alpha", lambda v: v >= 0, ">= 0"),
    ("backfill.points", lambda v: v >= 2, ">= 2 (f = 0 and f = 1 at least)"),
    (
        "version_aware.calibration",
        lambda v: v in plan_lib.CALIBRATIONS,
        f"one of {', '.join(plan_lib.CALIBRATIONS)}",
    ),
    ("version_aware.cross_weight", lambda v: v >= 0, ">= 0"),
    ("version_aware.pairs", lambda v: v >= 2, ">= 2"),
)


def stage_dir(config: ml_collections.ConfigDict, workdir: str, stage: str) -> str:
    """Where a stage is (or will be) trained: `<stage>_workdir` when given, else workdir/<stage>."""
    return config.get(f"{stage}_workdir") or os.path.join(workdir, stage)


def finished(directory: str) -> bool:
    """Whether the stage run in `directory` has finished (its results are written)."""
    return os.path.isfile(os.path.join(directory, "results.json"))


def check_reused(
    config: ml_collections.ConfigDict, stage: str, resolved: ml_collections.ConfigDict
) -> None:
    """Refuses a given `<stage>_workdir` trained on other data, or unfinished under another recipe.

    A finished binarizer run on the same pairs, split and seed is reused
    whatever its recipe (a model a user already has); an unfinished one is
    resumed only under this run's recipe of the stage.

    Raises:
      ConfigError: naming the directory and what differs.
    """
    key = f"{stage}_workdir"
    directory = config[key]
    if not directory or not os.path.isfile(os.path.join(directory, "config.json")):
        return
    saved = read_config(directory)
    if saved.get("trainer") != "binarizer":
        raise ConfigError(f"{key} {directory}: not a binarizer run")
    want = {"data": to_dict(resolved.data), "split": to_dict(config.split), "seed": config.seed}
    have = {key: to_dict(saved[key]) if key != "seed" else saved[key] for key in want}
    changed = diff_keys(have, want)
    if changed:
        raise ConfigError(
            f"{key} {directory} was trained on other data (differs in: "
            f"{', '.join(changed)}); its held-out pairs would not be this run's"
        )
    if not finished(directory) and diff_keys(to_dict(saved), to_dict(resolved)):
        raise ConfigError(
            f"{key} {directory} holds an unfinished run of another recipe; finish it "
            "or use another directory"
        )


def shared_groups(data: dict[str, PairedEmbeddings]) -> str | None:
    """The part ("old" or "new") whose groups the other's pairs take, so both split alike.

    None when neither has groups, or both have the same. Groups of the same
    items under other ids are the new part's.

    Raises:
      DataError: when both have groups and they group the pairs differently.
    """
    old, new = data["old"].groups, data["new"].groups
    if old is None and new is None:
        return None
    if old is None or new is None:
        return "new" if old is None else "old"
    conflict = grouping_conflict(old, new)
    if conflict:
        raise DataError(
            f"data.old ({data['old'].source}) and data.new ({data['new'].source}) group the "
            f"pairs differently (rows {conflict[0]} and {conflict[1]} show one item in one and "
            "two in the other): row i of each must be the same pair"
        )
    return None if np.array_equal(old, new) else "new"


def preflight(config: ml_collections.ConfigDict, workdir: str):
    """Everything checked before a run writes anything.

    Returns:
      ({"old": (train, eval), "new": (train, eval)}, {stage: resolved config}, mesh).

    Raises:
      DataError: on bad or disagreeing data; ConfigError: on a bad config.
    """
    data = {part: get_data(config.data[part]) for part in ("old", "new")}
    for part, pairs in data.items():
        if not isinstance(pairs, PairedEmbeddings):
            raise ConfigError(
                f"data.{part} gives {type(pairs).__name__}; expected paired embeddings"
            )
    if len(data["old"]) != len(data["new"]):
        raise DataError(
            f"data.old ({data['old'].source}) has {len(data['old'])} pairs and data.new "
            f"({data['new'].source}) {len(data['new'])}: row i of each must be the same pair"
        )
    check_rules(config, _RULES)
    source = shared_groups(data)
    if source:
        other = "new" if source == "old" else "old"
        data[other] = dataclasses.replace(data[other], groups=data[source].groups)
    plain = stage_config(config, "independent")
    splits = {part: binarizer.split_pairs(plain, pairs) for part, pairs in data.items()}
    resolved = {}
    for stage in STAGES:
        train, held_out = splits["old" if stage == "old" else "new"]
        resolved[stage] = binarizer.resolve(stage_config(config, stage, source), train)
        binarizer.validate(resolved[stage], len(train), len(held_out))
    mesh = sharding.make_mesh(config.mesh.num_devices)
    for stage in STAGES:
        sharding.check_batch_size(resolved[stage].train.batch_size, mesh)
    for stage in ("old", "independent"):
        check_reused(config, stage, resolved[stage])
    return splits, resolved, mesh
