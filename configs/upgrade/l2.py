r"""The L2 baseline: ||phi_new(x) - phi_old(x)||^2 beside the new model's own loss.

    python -m bebrjax.main --workdir DIR --config configs/upgrade/l2.py:split=extended_class

Arguments after ':': see `bebrjax.trainers.upgrade.config_from_arg`.
"""

from bebrjax.trainers.upgrade import config_from_arg


def get_config(arg=None):
    """The config."""
    return config_from_arg("l2", arg)
