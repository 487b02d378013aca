r"""RACT (Hot-Refresh): contrastive compatibility with new-model negatives as well.

    bebrjax train --workdir DIR --config configs/upgrade/ract.py:split=extended_class

The recipe and the arguments after ':' are configs/upgrade/common.py's.
"""

from bebrjax.config import config_module

common = config_module(__file__, "common")


def get_config(arg=None):
    """The config."""
    return common.config_for("ract", arg)
