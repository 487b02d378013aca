r"""No compatibility term: the new model alone (the paragon, the upper bound of new/new).

    python -m bebrjax.main --workdir DIR \
      --config configs/upgrade/independent.py:split=extended_class

Arguments after ':': see `bebrjax.trainers.upgrade.config_from_arg`.
"""

from bebrjax.trainers.upgrade import config_from_arg


def get_config(arg=None):
    """The config."""
    return config_from_arg("independent", arg)
