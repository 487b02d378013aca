r"""The L2 baseline: ||phi_new(x) - phi_old(x)||^2 beside the new model's own loss.

    bebrjax train --workdir DIR --config configs/upgrade/l2.py:split=extended_class

The recipe and the arguments after ':' are configs/upgrade/common.py's.
"""

from bebrjax.config import config_module

common = config_module(__file__, "common")


def get_config(arg=None):
    """The config."""
    return common.config_for("l2", arg)
