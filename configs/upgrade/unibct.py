r"""Model upgrade with the `unibct` method.

    python -m bebrjax.main --workdir DIR \
      --config configs/upgrade/unibct.py:split=extended_class

Trains the old model (unless DIR/old holds it), the new model with the
`unibct` compatibility loss, and the independently trained paragon, then
prints the compatibility matrix (mAP@R, R@k, TAR@FAR), the update gain and
the negative-flip rate.

Arguments after ':':
  split: extended_data, extended_class (default), open_data or open_class.
  data: classes (the synthetic default), digits (scikit-learn's images) or
    labelled (your .npz of `x` [N, d] or uint8 [N, H, W, C] and int `y` [N]).
  path: the .npz file, with data=labelled.
  steps: training steps of every stage (default 0 = `train.epochs` epochs).
  devices: devices of the mesh (default 0 = all).
"""

from bebrjax.trainers.upgrade import config_from_arg


def get_config(arg=None):
    """The `unibct` upgrade config."""
    return config_from_arg("unibct", arg)
