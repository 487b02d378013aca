r"""RACT (Hot-Refresh): contrastive compatibility with new-model negatives as well.

    python -m bebrjax.main --workdir DIR --config configs/upgrade/ract.py:split=extended_class

Arguments after ':': see `bebrjax.trainers.upgrade.config_from_arg`.
"""

from bebrjax.trainers.upgrade import config_from_arg


def get_config(arg=None):
    """The config."""
    return config_from_arg("ract", arg)
