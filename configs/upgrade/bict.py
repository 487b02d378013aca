r"""BiCT: BCT at lambda_bc (compat.weight), then psi upgrades the stored old gallery.

    python -m bebrjax.main --workdir DIR --config configs/upgrade/bict.py:split=extended_class

Stage 2 trains psi on embeddings only, both models frozen, through the new
classifier plus forward.l2 x L2. The report adds new -> psi(old).
Arguments after ':': see `bebrjax.trainers.upgrade.config_from_arg`.
"""

from bebrjax.trainers.upgrade import config_from_arg


def get_config(arg=None):
    """The config."""
    return config_from_arg("bict", arg)
