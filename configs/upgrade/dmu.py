r"""DMU: selective backward compatibility plus a forward adapter psi evolving the old gallery.

    bebrjax train --workdir DIR --config configs/upgrade/dmu.py:split=extended_class

The compatibility loss (dmu.loss) is weighted per sample by the old
feature's discriminativeness (dmu.measure); psi is trained with the new
model (dmu.forward_weight, dmu.forward_emphasis, forward.*). The report adds
new -> psi(old). The recipe and the arguments after ':' are
configs/upgrade/common.py's.
"""

from bebrjax.config import config_module

common = config_module(__file__, "common")


def get_config(arg=None):
    """The config."""
    return common.config_for("dmu", arg)
