r"""BiCT's lambda_bc (compat.weight) swept: backward against forward compatibility.

    bebrjax train --workdir DIR --config configs/upgrade/bict_sweep.py

One old model and one paragon; BiCT at every lambda_bc of sweep.grid, in
DIR/bict@<value>. The table shows, per lambda_bc, new/new (what backward
compatibility costs the new model), new->old (the gallery left as is) and
new->psi(old) (the gallery upgraded by psi). lambda_bc = 0 is forward
compatibility alone. The rest of the recipe and the arguments after ':' are
configs/upgrade/common.py's.
"""

from bebrjax.config import config_module

common = config_module(__file__, "common")


def get_config(arg=None):
    """The sweep config."""
    config = common.config_for("bict", arg)
    config.trainer = "upgrade_compare"
    config.methods = ("bict",)
    config.sweep = dict(key="compat.weight", grid=(0.0, 0.1, 0.3, 1.0, 3.0))
    return config
