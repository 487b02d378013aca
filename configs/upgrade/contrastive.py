r"""Contrastive compatibility: new anchors, old positives, old negatives of other classes.

    python -m bebrjax.main --workdir DIR \
      --config configs/upgrade/contrastive.py:split=extended_class

Arguments after ':': see `bebrjax.trainers.upgrade.config_from_arg`.
"""

from bebrjax.trainers.upgrade import config_from_arg


def get_config(arg=None):
    """The config."""
    return config_from_arg("contrastive", arg)
