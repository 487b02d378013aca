r"""Contrastive compatibility: new anchors, old positives, old negatives of other classes.

    bebrjax train --workdir DIR \
      --config configs/upgrade/contrastive.py:split=extended_class

The recipe and the arguments after ':' are configs/upgrade/common.py's.
"""

from bebrjax.config import config_module

common = config_module(__file__, "common")


def get_config(arg=None):
    """The config."""
    return common.config_for("contrastive", arg)
