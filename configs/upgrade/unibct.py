r"""UniBCT: the influence loss on structurally refined old prototypes.

    python -m bebrjax.main --workdir DIR --config configs/upgrade/unibct.py:split=extended_class

Arguments after ':': see `bebrjax.trainers.upgrade.config_from_arg`.
"""

from bebrjax.trainers.upgrade import config_from_arg


def get_config(arg=None):
    """The config."""
    return config_from_arg("unibct", arg)
