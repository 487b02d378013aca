r"""Model upgrade with the `l2` method.

    python -m bebrjax.main --config configs/upgrade/l2.py:split=extended_class --workdir DIR

Trains the old model (unless DIR/old holds it), the new model with the
`l2` compatibility loss, and the independently trained paragon, then
prints the compatibility matrix (mAP@R, R@k, TAR@FAR), the update gain and
the negative-flip rate.

Arguments after ':':
  split: extended_data, extended_class (default), open_data or open_class.
  data: classes (the synthetic default) or digits (scikit-learn's images).
  steps: training steps of every stage (default 0 = `train.epochs` epochs).
  devices: devices of the mesh (default 0 = all).
"""

from bebrjax.trainers.upgrade import config_from_arg


def get_config(arg=None):
    """The `l2` upgrade config."""
    return config_from_arg("l2", arg)
