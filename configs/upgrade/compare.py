r"""Every compatibility method on one split, in one table.

    bebrjax train --workdir DIR \
      --config configs/upgrade/compare.py:split=extended_class

Trains one old model and one paragon, then a new model per method
(independent, l2, bct, contrastive, ract, unibct, dmu, bict), each in
DIR/<method>, and prints mAP@R of old/old, new/new, new->old,
new->psi(old) (dmu, bict) and the paragon, new->old R@1, the update gain
and the negative-flip rate of every method. `--config.sweep.key=K
--config.sweep.grid=(..)` repeats every method for each value of K.

The recipe and the arguments after ':' (split, data, path, backbone, steps,
devices) are configs/upgrade/common.py's.
"""

from bebrjax.config import config_module

common = config_module(__file__, "common")


def get_config(arg=None):
    """The comparison config."""
    config = common.config_for("independent", arg)
    config.trainer = "upgrade_compare"
    config.methods = ("independent", "l2", "bct", "contrastive", "ract", "unibct", "dmu", "bict")
    config.sweep = dict(key="", grid=())
    return config
