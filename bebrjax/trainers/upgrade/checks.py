"""What an upgrade run checks before it writes anything: config keys, models, data."""

from __future__ import annotations

import ml_collections

from bebrjax import sharding
from bebrjax.config import TRAIN_RULES, check_ks, check_rules
from bebrjax.data.batching import steps_per_epoch
from bebrjax.data.labelled import Labelled
from bebrjax.data.upgrade_splits import UpgradeSplit, load_labelled
from bebrjax.losses import compat
from bebrjax.models.backbones import BACKBONES
from bebrjax.models.heads import CLASSIFIERS
from bebrjax.optim import make_optimizer
from bebrjax.trainers.upgrade.methods import METHODS
from bebrjax.trainers.upgrade.models import check_model


def _model_rules(stage: str) -> tuple:
    return (
        (f"{stage}.model.backbone", lambda v: v in BACKBONES, f"one of {', '.join(BACKBONES)}"),
        (
            f"{stage}.model.classifier",
            lambda v: v in CLASSIFIERS,
            f"one of {', '.join(CLASSIFIERS)}",
        ),
        (f"{stage}.model.embedding_dim", lambda v: v > 0, "> 0"),
        (f"{stage}.model.scale", lambda v: v > 0, "> 0"),
    )


RULES = (
    ("method", lambda v: v in METHODS, f"one of {', '.join(METHODS)}"),
    *_model_rules("old"),
    *_model_rules("new"),
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
    check_rules(config, (*TRAIN_RULES, *RULES))
    make_optimizer(config.optim, 10)


def preflight(config: ml_collections.ConfigDict) -> tuple[Labelled, UpgradeSplit, object]:
    """Everything checked before a run writes anything; returns (data, split, mesh).

    Raises:
      DataError: on bad input data; ConfigError: on a bad config.
    """
    data, split = load_labelled(config)
    validate(config)
    mesh = sharding.make_mesh(config.mesh.num_devices)
    sharding.check_batch_size(config.train.batch_size, mesh)
    check_ks(config.eval.ks, len(split.gallery), "held-out gallery items")
    for part in ("old", "new"):
        steps_per_epoch(len(getattr(split, part)), config.train.batch_size)
        check_model(config[part], data.num_classes, data.x[:1], f"{part}.model")
    return data, split, mesh
