r"""BiCT: BCT at lambda_bc (compat.weight), then psi upgrades the stored old gallery.

    bebrjax train --workdir DIR --config configs/upgrade/bict.py:split=extended_class

Stage 2 trains psi on embeddings only, both models frozen, through the new
classifier plus forward.l2 x L2. The report adds new -> psi(old).
The recipe and the arguments after ':' are configs/upgrade/common.py's.
"""

from bebrjax.config import config_module

common = config_module(__file__, "common")


def get_config(arg=None):
    """The config."""
    return common.config_for("bict", arg)
